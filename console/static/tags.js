// Tag catalog: every tag with its bilingual name, category, rule, description and current
// count; a distribution chart per category.
(function () {
  "use strict";
  const { t, el, call, problem, named, chart, tagCatalog } = CDP;
  const state = { counts: null, category: "", query: "" };

  function rows(cat) {
    const q = state.query.toLowerCase();
    return cat.tags.filter((x) => (!state.category || x.category === state.category) &&
      (!q || x.id.includes(q) || x.name_en.toLowerCase().includes(q) || x.name_zh.includes(q) || x.rule.toLowerCase().includes(q)));
  }

  function drawTable(cat) {
    const head = el("tr", {}, ["common.id", "common.name", "common.category", "tags.rule", "tags.description", "tags.count"].map((h) => el("th", { i18n: h })));
    const body = rows(cat).map((x) => el("tr", { "data-tag": x.id }, [
      el("td", {}, [el("code", { text: x.id })]),
      el("td", {}, [el("b", { text: named(x) }), el("div", { class: "muted", text: CDP.lang() === "zh" ? x.name_en : x.name_zh })]),
      el("td", { text: named(cat.categoryById[x.category]) }),
      el("td", {}, [el("code", { text: x.rule })]),
      el("td", { text: x.description }),
      el("td", { class: "count", text: state.counts ? String(state.counts[x.id] ?? 0) : "…" })]));
    document.getElementById("tag-table").replaceChildren(el("table", { class: "grid" }, [el("thead", {}, [head]), el("tbody", {}, body)]));
    document.getElementById("tag-total").textContent = `${body.length} / ${cat.tags.length}`;
  }

  function drawCharts(cat) {
    const box = document.getElementById("charts");
    box.querySelectorAll(".chart").forEach((n) => window.echarts && window.echarts.getInstanceByDom(n) && window.echarts.getInstanceByDom(n).dispose());
    box.replaceChildren();
    if (!state.counts) return;
    // Every card is laid out first, then drawn: a chart takes its size from its card.
    const drawn = cat.categories.filter((c) => !state.category || c.id === state.category).map((c) => {
      const tags = cat.tags.filter((x) => x.category === c.id);
      const node = el("div", { class: "chart", id: "chart-" + c.id, style: `height:${Math.max(160, 18 * tags.length + 30)}px` });
      box.append(el("section", { class: "card" }, [el("h2", { text: `${named(c)} · ${t("tags.distribution")}` }), node]));
      return [node, tags];
    });
    drawn.forEach(([node, tags]) => chart(node, {
      grid: { left: 8, right: 24, top: 8, bottom: 8, containLabel: true },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
      xAxis: { type: "value", minInterval: 1 },
      yAxis: { type: "category", inverse: true, data: tags.map((x) => named(x)), axisLabel: { fontSize: 10 } },
      series: [{ type: "bar", data: tags.map((x) => state.counts[x.id] || 0), itemStyle: { color: "#3b7ddd" } }],
    }));
  }

  CDP.start(async () => {
    const main = document.getElementById("main");
    let cat;
    try {
      cat = await tagCatalog();
    } catch (e) { return problem(main, e); }
    const category = el("select", { id: "category" }, [el("option", { value: "", text: t("tags.all_categories") }),
      ...cat.categories.map((c) => el("option", { value: c.id, text: named(c) }))]);
    category.value = state.category;
    const search = el("input", { id: "tag-query", size: 30, value: state.query, placeholder: t("tags.search") });
    const redraw = () => { drawTable(cat); drawCharts(cat); };
    category.addEventListener("change", () => { state.category = category.value; redraw(); });
    search.addEventListener("input", () => { state.query = search.value; drawTable(cat); });
    main.replaceChildren(el("h1", { i18n: "tags.title" }),
      el("section", { class: "card" }, [el("div", { class: "row" }, [category, search, el("span", { class: "muted", id: "tag-total" })])]),
      el("div", { class: "cols", id: "charts" }),
      el("section", { class: "card", id: "tag-table" }));
    drawTable(cat);
    try {
      state.counts = (await call("/v1/tags/counts")).counts;
    } catch (e) { return problem(document.getElementById("charts"), e); }
    redraw();
  });
})();
