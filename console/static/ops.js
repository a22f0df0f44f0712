// Ops: per-stage throughput and freshness, consumer lag, dead letters by reason (latest first,
// with field and message), health of Kafka, Redis and ClickHouse; refreshes itself.
(function () {
  "use strict";
  const { t, el, call, table, problem, when, chart } = CDP;
  const EVERY_MS = 5000;
  const state = { previous: null, lagHistory: {}, snapshot: null };

  function age(seconds) {
    if (seconds == null) return t("ops.never");
    return seconds < 120 ? `${seconds.toFixed(1)} ${t("ops.ago")}` : when(new Date(Date.now() - seconds * 1000).toISOString());
  }

  function rate(now, before, pick) {
    if (!before) return "…";
    const seconds = (now.at_ms - before.at_ms) / 1000;
    return seconds > 0 ? ((pick(now) - pick(before)) / seconds).toFixed(1) : "…";
  }

  function draw() {
    const s = state.snapshot, before = state.previous;
    const health = el("section", { class: "card", id: "health" }, [el("h2", { i18n: "ops.health" }),
      el("div", { class: "row" }, Object.entries(s.health).map(([name, h]) => el("span", { class: "chip " + (h.ok ? "ok" : "off"), "data-service": name },
        [`${name}: `, el("b", { text: h.ok ? t("ops.ok") : t("ops.down") }), h.used === false ? ` (${t("ops.not_used")})` : "", h.error ? ` ${h.error}` : ""])))]);
    const stageOf = (name) => (snap) => (snap.stages.find((x) => x.stage === name) || { written: 0 }).written;
    const stages = el("section", { class: "card", id: "stages" }, [el("h2", { i18n: "ops.stages" }),
      table(["ops.stage", "ops.topic", "ops.written", "ops.rate", "ops.freshness"],
        s.stages.map((x) => [t("stage." + x.stage), x.topic, x.written.toLocaleString(), rate(s, before, stageOf(x.stage)), age(x.freshness_s)]))]);
    const groupOf = (name) => (snap) => (snap.groups.find((g) => g.group === name) || { consumed: 0 }).consumed;
    const groups = el("section", { class: "card", id: "groups" }, [el("h2", { i18n: "ops.groups" }),
      table(["ops.group", "ops.topic", "ops.lag", "ops.consumed", "ops.rate"],
        s.groups.map((g) => [g.group, g.topics.join(", "), el("b", { class: "lag", "data-group": g.group, text: String(g.lag) }), g.consumed.toLocaleString(), rate(s, before, groupOf(g.group))])),
      el("div", { class: "chart small", id: "lag-chart" })]);
    const d = s.dead_letters;
    const letters = el("section", { class: "card", id: "deadletters" }, [el("h2", { i18n: "ops.deadletters" }),
      el("div", { class: "cols" }, [el("div", { class: "chart small", id: "reasons-chart" }),
        el("div", { style: "max-height:260px;overflow:auto" }, [table(["common.time", "ops.reason", "ops.field", "ops.message", "ops.source"],
          d.latest.map((x) => [when(x.received_at), x.reason, x.field ?? "—", x.message, x.source ?? "—"]))])])]);
    const main = document.getElementById("main");
    main.replaceChildren(el("div", { class: "row" }, [el("h1", { i18n: "ops.title" }), el("span", { class: "muted", i18n: "ops.auto" }),
      el("span", { class: "muted", id: "ops-at", text: " · " + when(new Date(s.at_ms).toISOString()) })]),
      health, el("div", { class: "cols" }, [stages, groups]), letters);
    chart(document.getElementById("reasons-chart"), {
      tooltip: {}, series: [{ type: "pie", radius: ["35%", "65%"], data: Object.entries(d.by_reason).map(([name, value]) => ({ name, value })) }] });
    chart(document.getElementById("lag-chart"), {
      tooltip: { trigger: "axis" }, legend: { bottom: 0, type: "scroll" }, grid: { left: 40, right: 10, top: 10, bottom: 40 },
      xAxis: { type: "time", min: "dataMin", max: "dataMax", splitNumber: 4 }, yAxis: { type: "value", minInterval: 1 },
      series: Object.entries(state.lagHistory).map(([group, points]) => ({ type: "line", name: group, showSymbol: false, data: points })) });
  }

  async function refresh() {
    try {
      const s = await call("/ops");
      state.previous = state.snapshot;
      state.snapshot = s;
      s.groups.forEach((g) => { (state.lagHistory[g.group] = state.lagHistory[g.group] || []).push([s.at_ms, g.lag]); });
      Object.values(state.lagHistory).forEach((points) => points.splice(0, Math.max(0, points.length - 120)));
      draw();
    } catch (e) {
      if (!state.snapshot) problem(document.getElementById("main"), e);
    }
  }

  CDP.start(async (me, again) => {
    if (again) { if (state.snapshot) draw(); return; }
    await refresh();
    setInterval(refresh, EVERY_MS);
  });
})();
