// Customer 360: find a customer by any identifier or profile id; the unified profile, its
// identity graph, its event timeline and its tickets.
(function () {
  "use strict";
  const { t, el, call, table, problem, when, named, chart, tagCatalog } = CDP;
  const TYPES = ["phone", "email", "member_id", "customer_id", "wechat_openid", "wechat_unionid",
    "platform_user_id", "company_id", "device_id", "profile_id"];
  const TICKET_TYPES = ["ticket_opened", "ticket_resolved", "ticket_updated", "complaint_filed", "follow_up"];
  const state = { profile: null, explain: null, events: null, tickets: null, filters: { channel: "", type: "" }, me: null };

  function searchForm() {
    const type = el("select", { id: "id-type", "aria-label": t("cust.type") },
      TYPES.map((x) => el("option", { value: x, text: t("idtype." + x) })));
    const value = el("input", { id: "id-value", size: 36, required: "", "data-i18n-placeholder": "cust.placeholder", placeholder: t("cust.placeholder") });
    if (state.query) { type.value = state.query.type; value.value = state.query.value; }
    const form = el("form", { class: "row", id: "search" }, [
      el("label", { for: "id-type", i18n: "cust.type" }), type,
      el("label", { for: "id-value", i18n: "cust.value" }), value,
      el("button", { class: "primary", type: "submit", id: "find", i18n: "cust.find" })]);
    form.addEventListener("submit", (e) => { e.preventDefault(); find(type.value, value.value.trim()); });
    return el("section", { class: "card" }, [el("h2", { i18n: "cust.search" }), form]);
  }

  async function find(type, value) {
    state.query = { type, value };
    const out = document.getElementById("result");
    out.replaceChildren(el("p", { class: "muted", i18n: "common.loading" }));
    try {
      state.profile = type === "profile_id"
        ? await call("/v1/profiles/" + encodeURIComponent(value))
        : await call("/v1/profiles/lookup", { method: "POST", json: { type, value } });
    } catch (e) {
      if (e.status === 404) return out.replaceChildren(el("p", { class: "error", id: "not-found", i18n: "cust.not_found" }));
      if (e.status === 409) return out.replaceChildren(el("p", {}, [t("cust.ambiguous") + " "],
        ...(e.body.profile_ids || []).map((p) => el("a", { href: "#", text: p + " ", onclick: (ev) => { ev.preventDefault(); find("profile_id", p); } }))));
      return problem(out, e);
    }
    state.explain = state.events = state.tickets = null;
    state.filters = { channel: "", type: "" };
    await render();
    const pid = state.profile.profile_id;
    const [explain, events, tickets] = await Promise.allSettled([
      call("/v1/identity/explain?profile_id=" + encodeURIComponent(pid)),
      call("/history/timeline?profile_id=" + encodeURIComponent(pid) + "&limit=300"),
      call("/history/timeline?profile_id=" + encodeURIComponent(pid) + "&limit=500&" + TICKET_TYPES.map((x) => "type=" + x).join("&")),
    ]);
    state.explain = explain.status === "fulfilled" ? explain.value : explain.reason;
    state.events = events.status === "fulfilled" ? events.value.events : events.reason;
    state.tickets = tickets.status === "fulfilled" ? tickets.value.events : tickets.reason;
    await render();
  }

  function facts(pairs) {
    return el("dl", { class: "facts" }, pairs.flatMap(([k, v]) => [el("dt", { i18n: k }), el("dd", {}, [v ?? "—"])]));
  }

  function chips(ids, byId, cls) {
    if (!ids.length) return el("span", { class: "muted", i18n: "common.none" });
    return el("span", {}, ids.map((id) => el("span", { class: "chip " + (cls || ""), "data-tag": id, title: id, text: named(byId[id]) || id })));
  }

  function money(n) { return n == null ? "—" : Number(n).toLocaleString(undefined, { maximumFractionDigits: 2 }); }

  function profileCards(p, cat) {
    const tags = p.tags || [];
    const inCat = (c) => tags.filter((id) => cat.byId[id] && cat.byId[id].category === c);
    const rfmClass = tags.filter((id) => /^rfm_(important|general)_/.test(id));
    const rfmScores = tags.filter((id) => /^rfm_[rfm][1-5]$/.test(id)).map((id) => id.slice(4).toUpperCase()).sort().join(" ");
    const cltv = tags.filter((id) => id.startsWith("cltv_"));
    const traits = Object.entries(p.traits || {}).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]);
    const traitList = el("dl", { class: "facts", id: "traits" }, traits.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    const masked = state.me.scopes.includes("pii:read") ? null : el("p", { class: "muted", i18n: "cust.masked" });
    const key = el("section", { class: "card", id: "key-facts" }, [
      el("h2", {}, [t("cust.key") + " · ", el("span", { id: "profile-id", text: p.profile_id })]),
      facts([
        ["cust.tier", chips(inCat("tier"), cat.byId)],
        ["cust.lifecycle", chips(inCat("lifecycle"), cat.byId)],
        ["cust.first_seen", when(p.first_seen)],
        ["cust.last_seen", when(p.last_seen)],
      ]),
      el("h2", { i18n: "cust.traits", style: "margin-top:10px" }), traitList, masked || ""]);
    const value = el("section", { class: "card", id: "value" }, [el("h2", { i18n: "cust.value_figures" }), facts([
      ["cust.orders", String(p.order_count)],
      ["cust.spend", money(p.total_spend)],
      ["cust.avg_spend", money(p.average_spend)],
      ["cust.last_purchase", when(p.last_purchase_at)],
      ["cust.rfm", el("span", {}, [chips(rfmClass, cat.byId), " ", el("span", { class: "muted", text: rfmScores })])],
      ["cust.cltv", chips(cltv, cat.byId)],
      ["cust.csat", `${p.csat_last ?? "—"} / ${p.csat_average == null ? "—" : Number(p.csat_average).toFixed(2)}`],
      ["cust.nps", `${p.nps_last ?? "—"} / ${p.nps_class ?? "—"}`],
      ["cust.points", String(p.points_balance)],
    ])]);
    const consents = Object.entries(p.consent || {});
    const consent = el("section", { class: "card", id: "consents" }, [el("h2", { i18n: "cust.consents" }),
      consents.length ? el("span", {}, consents.map(([k, v]) => el("span", { class: "chip " + (v ? "ok" : "off"), text: `${k}: ${t(v ? "cust.granted" : "cust.refused")}` })))
        : el("span", { class: "muted", i18n: "common.none" })]);
    const channels = el("section", { class: "card" }, [el("h2", { i18n: "cust.channels" }),
      table(["cust.channel_col", "cust.first_seen", "cust.last_seen", "common.count"],
        Object.entries(p.channels || {}).map(([c, a]) => [c, when(a.first_seen), when(a.last_seen), a.events]))]);
    const grouped = cat.categories.map((c) => [c, inCat(c.id)]).filter(([, ids]) => ids.length);
    const tagCard = el("section", { class: "card", id: "tags" }, [el("h2", {}, [t("cust.tags") + ` (${tags.length})`]),
      ...grouped.map(([c, ids]) => el("div", { class: "row", "data-category": c.id }, [el("b", { text: named(c) + ":" }), chips(ids, cat.byId)]))]);
    return [el("div", { class: "cols" }, [key, value]), tagCard, el("div", { class: "cols" }, [consent, channels])];
  }

  function identityCard() {
    const card = el("section", { class: "card", id: "identity" }, [el("h2", { i18n: "cust.identity" })]);
    const x = state.explain;
    if (!x) return card.append(el("p", { class: "muted", i18n: "common.loading" })), card;
    if (x instanceof Error) return problem(card, x), card;
    const graph = el("div", { class: "chart", id: "identity-graph" });
    const decisions = (x.history || []).map((h) => [
      t("decision." + h.decision), h.rule, h.other ?? "—", h.id ?? "—", h.event ?? "—"]);
    card.append(el("div", { class: "cols" }, [graph, el("div", {}, [
      el("h2", { i18n: "cust.identifiers" }),
      el("div", { id: "identifiers" }, x.identifiers.map((i) => el("span", { class: "chip", text: i }))),
      el("h2", { i18n: "cust.decisions", style: "margin-top:10px" }),
      table(["cust.decision", "cust.rule", "cust.other", "cust.via", "cust.event"], decisions)])]));
    setTimeout(() => drawGraph(graph, x), 0);
    return card;
  }

  function drawGraph(node, x) {
    const me = t("graph.profile") + " " + x.profile_id;
    const nodes = [{ name: me, symbolSize: 46, category: 0 }];
    const links = [];
    x.identifiers.forEach((i) => { nodes.push({ name: i, symbolSize: 22, category: 1 }); links.push({ source: me, target: i }); });
    (x.history || []).forEach((h) => {
      if (h.other == null) return;
      const other = t("graph.profile") + " " + h.other;
      if (!nodes.some((n) => n.name === other)) nodes.push({ name: other, symbolSize: 30, category: h.decision === "merged" ? 2 : 3 });
      links.push({ source: me, target: other, label: { show: true, formatter: t("decision." + h.decision) + " · " + h.rule, fontSize: 10 },
        lineStyle: { type: h.decision === "merged" ? "solid" : "dashed", color: h.decision === "merged" ? "#1a8a4a" : "#c0392b" } });
    });
    const names = ["profile", "identifier", "merged", "refused"].map((k) => t("graph." + k));
    chart(node, {
      tooltip: {},
      legend: [{ data: names, bottom: 0 }],
      series: [{ type: "graph", layout: "force", roam: true, draggable: true, force: { repulsion: 220, edgeLength: 90 },
        label: { show: true, fontSize: 10 }, data: nodes, links: links,
        categories: names.map((name) => ({ name })) }],
    });
  }

  function summary(e) {
    const props = Object.entries(e.properties || {}).slice(0, 6).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
    return (e.name && e.name !== e.type ? e.name + " · " : "") + props.join(", ");
  }

  function timelineCard() {
    const card = el("section", { class: "card", id: "timeline" }, [el("h2", { i18n: "cust.timeline" })]);
    const events = state.events;
    if (!events) return card.append(el("p", { class: "muted", i18n: "common.loading" })), card;
    if (events instanceof Error) return problem(card, events), card;
    const channels = [...new Set(events.map((e) => e.channel))].sort();
    const types = [...new Set(events.map((e) => e.type))].sort();
    const pick = (id, all, values, key) => {
      const s = el("select", { id }, [el("option", { value: "", text: t(all) }), ...values.map((v) => el("option", { value: v, text: v }))]);
      s.value = state.filters[key];
      s.addEventListener("change", () => { state.filters[key] = s.value; card.replaceWith(timelineCard()); });
      return s;
    };
    const shown = events.filter((e) => (!state.filters.channel || e.channel === state.filters.channel) && (!state.filters.type || e.type === state.filters.type));
    card.append(el("div", { class: "row" }, [pick("tl-channel", "cust.all_channels", channels, "channel"), pick("tl-type", "cust.all_types", types, "type"),
      el("span", { class: "muted", id: "tl-count", text: `${shown.length} / ${events.length}` })]));
    card.append(table(["common.time", "cust.channel_col", "cust.type_col", "cust.details"],
      shown.map((e) => [when(e.timestamp), e.channel, e.type, summary(e)])));
    return card;
  }

  function ticketsCard() {
    const card = el("section", { class: "card", id: "tickets" }, [el("h2", { i18n: "cust.tickets" })]);
    const events = state.tickets;
    if (!events) return card.append(el("p", { class: "muted", i18n: "common.loading" })), card;
    if (events instanceof Error) return problem(card, events), card;
    const byTicket = new Map();
    [...events].reverse().forEach((e) => {
      const id = (e.properties || {}).ticket_id || e.event_id;
      if (!byTicket.has(id)) byTicket.set(id, []);
      byTicket.get(id).push(e);
    });
    const rows = [...byTicket.entries()].map(([id, list]) => {
      const opened = list.find((e) => e.type === "ticket_opened") || list[0];
      const resolved = list.some((e) => e.type === "ticket_resolved");
      const follow = list.filter((e) => e !== opened).map((e) => `${when(e.timestamp)} ${e.type}`).join("; ");
      return { open: !resolved, cells: [id, (opened.properties || {}).category || opened.type, when(opened.timestamp),
        el("span", { class: resolved ? "chip ok" : "chip off", i18n: resolved ? "cust.resolved" : "cust.open" }), follow || "—"] };
    }).sort((a, b) => Number(b.open) - Number(a.open));
    card.append(table(["cust.ticket", "common.category", "common.time", "cust.status", "cust.followups"], rows.map((r) => r.cells)));
    return card;
  }

  async function render() {
    const out = document.getElementById("result");
    if (!state.profile) return;
    const cat = await tagCatalog();
    out.replaceChildren(...profileCards(state.profile, cat), identityCard(), el("div", { class: "cols" }, [ticketsCard()]), timelineCard());
  }

  CDP.start(async (me, again) => {
    state.me = me;
    const main = document.getElementById("main");
    if (!again) main.replaceChildren(el("h1", { i18n: "cust.title" }), searchForm(), el("div", { id: "result" }));
    else { main.querySelector("section").replaceWith(searchForm()); await render(); }
  });
})();
