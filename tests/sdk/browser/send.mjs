// Segment's browser SDK (@segment/analytics-next), unchanged, in a jsdom page of a web shop.
//
//   node send.mjs <api url> <write key> <standard|batching> <run id>
//
// Loads the SDK with cdnURL = the API (so it fetches its source settings from us), sends
// identify / track / page (standard) or three tracks (batching, two per request), and prints
// one JSON line: every HTTP request the SDK made (method, url, content type, status) and the
// SDK's own delivery failures. The caller checks what reached Kafka.
import { JSDOM } from 'jsdom'

const [api, writeKey, mode, run] = process.argv.slice(2)
if (!run) {
  console.error('usage: node send.mjs <api url> <write key> <standard|batching> <run id>')
  process.exit(2)
}

const dom = new JSDOM('<!doctype html><html><head><title>购物车</title></head><body></body></html>', {
  url: `https://shop.example.com/cart?utm_source=${run}`,
  referrer: 'https://www.example.org/',
  pretendToBeVisual: true,
})
const page = dom.window
// The browser globals the SDK reads (Node has its own fetch).
for (const name of ['window', 'self', 'document', 'navigator', 'location', 'localStorage',
  'sessionStorage', 'history', 'screen', 'HTMLElement', 'Element', 'Node', 'Event', 'CustomEvent',
  'addEventListener', 'removeEventListener']) {
  const value = name === 'window' || name === 'self' ? page : page[name]
  Object.defineProperty(globalThis, name, { value, configurable: true, writable: true })
}

const requests = []
const realFetch = globalThis.fetch
const recordingFetch = async (input, init = {}) => {
  const url = typeof input === 'string' ? input : input.url
  const headers = new Headers(init.headers || {})
  const seen = { method: (init.method || 'GET').toUpperCase(), url, contentType: headers.get('content-type') }
  requests.push(seen)
  const response = await realFetch(input, init)
  seen.status = response.status
  if (init.body) seen.events = JSON.parse(init.body).batch?.length ?? 1
  return response
}
globalThis.fetch = recordingFetch
page.fetch = recordingFetch

const { AnalyticsBrowser } = await import('@segment/analytics-next')
const options = mode === 'batching'
  ? { integrations: { 'Segment.io': { deliveryStrategy: { strategy: 'batching', config: { size: 2, timeout: 300 } } } } }
  : {}
const [analytics] = await AnalyticsBrowser.load({ writeKey, cdnURL: api }, options)
const failures = []
analytics.on('error', (e) => failures.push(String(e.reason?.message ?? e.reason ?? e.code)))

const sent = []
const note = (ctx) => {
  sent.push(ctx.event.messageId)
  const failed = ctx.failedDelivery?.()
  if (failed) failures.push(String(failed.reason))
}
if (mode === 'standard') {
  note(await analytics.identify(`C-${run}`, { email: ` Zhang.Wei+${run}@Example.com`, phone: '138 0013 8000' }))
  note(await analytics.track('Product Added', { sku: 'A1', price: 99, run }))
  note(await analytics.page('Cart', { run }))
} else {
  const calls = [1, 2, 3].map((n) => analytics.track(`Batch Test ${n}`, { n, run }))
  for (const ctx of await Promise.all(calls)) note(ctx)
}
// Batching flushes on size or after its timeout; give the last request time to finish.
const until = Date.now() + 5000
while (Date.now() < until && requests.some((r) => r.status === undefined)) {
  await new Promise((resolve) => setTimeout(resolve, 50))
}
await new Promise((resolve) => setTimeout(resolve, 600))

console.log(JSON.stringify({
  mode, anonymousId: analytics.user().anonymousId(), messageIds: sent, requests, failures,
}))
page.close()
process.exit(0)
