// Segment builder: a definition built with forms, counted live as it is edited; preview,
// export, save (versions) and saved segments with their sizes over time. The YAML/JSON of what
// was built is shown and can be pasted back.
(function () {
  "use strict";
  const { t, el, call, table, problem, when, named, chart, tagCatalog } = CDP;
  const OPS = { eq: "=", ne: "≠", gt: ">", gte: "≥", lt: "<", lte: "≤", between: "between", in: "in", not_in: "not in",
    exists: "exists", not_exists: "not exists", contains: "contains", within: "within", before: "before" };
  const EVENT_OPS = ["gte", "gt", "eq", "ne", "lt", "lte", "between"];
  const state = { seg: { id: "", name: "", purpose: null, definition: { all: [] } }, words: null, cat: null, seq: 0, timer: null, me: null, saved: null };

  // ---- values typed into forms -------------------------------------------------------------
  function scalar(text) {
    const s = String(text).trim();
    if (s === "true" || s === "false") return s === "true";
    if (s !== "" && !isNaN(Number(s))) return Number(s);
    return s;
  }
  function operand(op, text) {
    if (op === "exists" || op === "not_exists") return undefined;
    if (op === "in" || op === "not_in" || op === "between") return String(text).split(",").map(scalar).filter((v) => v !== "");
    if (op === "within" || op === "before") return String(text).trim();
    return scalar(text);
  }
  function shown(value) { return value === undefined || value === null ? "" : Array.isArray(value) ? value.join(",") : String(value); }

  // ---- the definition as data --------------------------------------------------------------
  function kind(node) { return ["all", "any", "not", "tag", "consent", "attribute", "trait", "event"].find((k) => k in node); }
  function body() {
    const s = state.seg;
    const out = { definition: s.definition };
    if (s.purpose) out.purpose = s.purpose;
    return out;
  }
  function document_() {
    const s = state.seg;
    const out = {};
    if (s.id) out.id = s.id;
    if (s.name) out.name = s.name;
    if (s.purpose) out.purpose = s.purpose;
    out.definition = s.definition;
    return out;
  }
  function complete(node) {
    const k = kind(node);
    if (k === "all" || k === "any") return node[k].length > 0 && node[k].every(complete);
    if (k === "not") return complete(node.not);
    if (k === "tag") return !!node.tag;
    if (k === "consent") return !!node.consent;
    if (k === "event") return !!node.event && node.value !== undefined && node.value !== "";
    return !!node[k];
  }

  // ---- the form ----------------------------------------------------------------------------
  function opSelect(node, ops, onchange) {
    const s = el("select", { class: "op" }, ops.map((o) => el("option", { value: o, text: OPS[o] || o })));
    s.value = node.op || ops[0];
    node.op = s.value;
    s.addEventListener("change", () => { node.op = s.value; onchange(); });
    return s;
  }
  function valueInput(node, size, extra) {
    const i = el("input", Object.assign({ class: "value", size: size || 10, value: shown(node.value) }, extra || {}));
    i.addEventListener("input", () => { node.value = operand(node.op, i.value); if (node.value === undefined) delete node.value; changed(); });
    return i;
  }

  function tagEditor(node) {
    const cat = state.cat;
    const current = cat.byId[node.tag];
    const category = el("select", { class: "tag-category" }, [el("option", { value: "", text: t("tags.all_categories") }),
      ...cat.categories.map((c) => el("option", { value: c.id, text: named(c) }))]);
    category.value = current ? current.category : "";
    const search = el("input", { class: "tag-search", size: 14, placeholder: t("seg.search_tags") });
    const pick = el("select", { class: "tag-pick" });
    const fill = () => {
      const q = search.value.trim().toLowerCase();
      const tags = cat.tags.filter((x) => (!category.value || x.category === category.value) &&
        (!q || x.id.includes(q) || x.name_en.toLowerCase().includes(q) || x.name_zh.includes(q)));
      pick.replaceChildren(...tags.map((x) => el("option", { value: x.id, text: named(x) + " (" + x.id + ")" })));
      if (node.tag && tags.some((x) => x.id === node.tag)) pick.value = node.tag;
      else if (tags.length) { node.tag = tags[0].id; pick.value = node.tag; changed(); }
    };
    category.addEventListener("change", fill);
    search.addEventListener("input", fill);
    pick.addEventListener("change", () => { node.tag = pick.value; changed(); });
    fill();
    return [category, search, pick];
  }

  function traitEditor(node) {
    const list = "traits-list";
    const name = el("input", { class: "trait-name", size: 12, list, value: node.trait || "" });
    name.addEventListener("input", () => { node.trait = name.value.trim(); changed(); });
    const ops = ["eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "not_in", "exists", "not_exists", "contains"];
    let value;
    const op = opSelect(node, ops, () => { node.value = operand(node.op, value.value); if (node.value === undefined) delete node.value; changed(); });
    value = valueInput(node);
    return [name, op, value];
  }

  function attributeEditor(node) {
    const attributes = state.words.attributes;
    const name = el("select", { class: "attribute-name" }, Object.keys(attributes).map((a) => el("option", { value: a, text: a })));
    if (!node.attribute) node.attribute = "order_count";
    name.value = node.attribute;
    name.addEventListener("change", () => { node.attribute = name.value; changed(); });
    const ops = Object.keys(OPS);
    let value;
    const op = opSelect(node, ops, () => { node.value = operand(node.op, value.value); if (node.value === undefined) delete node.value; changed(); });
    value = valueInput(node);
    return [name, op, value];
  }

  function eventEditor(node) {
    const type = el("input", { class: "event-type", size: 16, list: "events-list", value: node.event || "" });
    type.addEventListener("input", () => { node.event = type.value.trim(); changed(); });
    const measure = el("select", { class: "event-measure" }, state.words.measures.map((m) => el("option", { value: m, text: m })));
    measure.value = node.measure || "count";
    const property = el("input", { class: "event-property", size: 8, placeholder: t("seg.property"), value: node.property || "" });
    const syncMeasure = () => {
      if (measure.value === "count") { delete node.measure; delete node.property; property.hidden = true; }
      else { node.measure = measure.value; node.property = property.value.trim() || "amount"; property.value = node.property; property.hidden = false; }
    };
    measure.addEventListener("change", () => { syncMeasure(); changed(); });
    property.addEventListener("input", () => { node.property = property.value.trim(); changed(); });
    syncMeasure();
    let value;
    const op = opSelect(node, EVENT_OPS, () => { node.value = operand(node.op, value.value); changed(); });
    value = valueInput(node, 6);
    const within = el("input", { class: "event-within", size: 5, placeholder: "90d", value: (node.within && node.within.last) || "" });
    within.addEventListener("input", () => {
      const v = within.value.trim();
      if (v) node.within = { last: v }; else delete node.within;
      changed();
    });
    const wheres = el("span", { class: "wheres" });
    const drawWheres = () => {
      wheres.replaceChildren(...(node.where || []).map((w, i) => whereEditor(node, w, i, drawWheres)));
    };
    drawWheres();
    const addWhere = el("button", { type: "button", class: "add-where", i18n: "seg.add_where", onclick: () => {
      node.where = node.where || [];
      node.where.push({ field: "channel", op: "eq", value: "" });
      drawWheres();
    } });
    return [type, el("span", { i18n: "seg.measure" }), measure, property, op, value, el("span", { i18n: "seg.within" }), within, wheres, addWhere];
  }

  function whereEditor(event, w, i, redraw) {
    const target = el("select", { class: "where-target" }, [...state.words.event_fields.map((f) => el("option", { value: "field:" + f, text: f })),
      el("option", { value: "property", text: t("seg.property") + "…" })]);
    target.value = w.field ? "field:" + w.field : "property";
    const prop = el("input", { size: 8, value: w.property || "", hidden: w.field ? "" : null });
    target.addEventListener("change", () => {
      if (target.value === "property") { delete w.field; w.property = prop.value || "category"; prop.value = w.property; prop.hidden = false; }
      else { delete w.property; w.field = target.value.slice(6); prop.hidden = true; }
      changed();
    });
    prop.addEventListener("input", () => { w.property = prop.value.trim(); changed(); });
    let value;
    const op = opSelect(w, ["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "not_exists"], () => { w.value = operand(w.op, value.value); if (w.value === undefined) delete w.value; changed(); });
    value = valueInput(w, 8);
    const drop = el("button", { type: "button", text: "×", onclick: () => { event.where.splice(i, 1); if (!event.where.length) delete event.where; redraw(); changed(); } });
    return el("span", { class: "where" }, [el("span", { i18n: "seg.where" }), target, prop, op, value, drop]);
  }

  function consentEditor(node) {
    const s = el("select", { class: "consent-purpose" }, state.words.purposes.map((p) => el("option", { value: p, text: p })));
    if (!node.consent) node.consent = state.words.purposes[0];
    s.value = node.consent;
    s.addEventListener("change", () => { node.consent = s.value; changed(); });
    return [s];
  }

  const EDITORS = { tag: tagEditor, trait: traitEditor, attribute: attributeEditor, event: eventEditor, consent: consentEditor };
  const FRESH = { tag: () => ({ tag: "" }), trait: () => ({ trait: "", op: "eq", value: "" }), attribute: () => ({ attribute: "order_count", op: "gte", value: 1 }),
    event: () => ({ event: "order_completed", op: "gte", value: 1, within: { last: "90d" } }), consent: () => ({ consent: "" }), group: () => ({ any: [] }) };

  function groupEditor(group, onRemove, negated, onNegate) {
    const k = kind(group);
    const combinator = el("select", { class: "combinator" }, [el("option", { value: "all", text: t("seg.all") }), el("option", { value: "any", text: t("seg.any") })]);
    combinator.value = k;
    const box = el("div", { class: "group" + (negated ? " not" : "") });
    combinator.addEventListener("change", () => {
      const children = group[kind(group)];
      delete group[kind(group)];
      group[combinator.value] = children;
      changed(true);
    });
    const head = el("div", { class: "row" }, [combinator]);
    if (onNegate) head.append(notToggle(negated, onNegate));
    if (onRemove) head.append(el("button", { type: "button", i18n: "seg.remove", onclick: onRemove }));
    box.append(head);
    const children = group[k];
    children.forEach((child, i) => box.append(childEditor(children, i)));
    const adds = el("div", { class: "row adds" }, Object.keys(FRESH).map((what) =>
      el("button", { type: "button", "data-add": what, i18n: "seg.add_" + what, onclick: () => { children.push(FRESH[what]()); changed(true); } })));
    box.append(adds);
    return box;
  }

  function notToggle(negated, onNegate) {
    const box = el("input", { type: "checkbox", class: "negate" });
    box.checked = negated;
    box.addEventListener("change", () => onNegate(box.checked));
    return el("label", {}, [box, " ", el("span", { i18n: "seg.not" })]);
  }

  function childEditor(children, i) {
    const negated = kind(children[i]) === "not";
    const inner = negated ? children[i].not : children[i];
    const k = kind(inner);
    const remove = () => { children.splice(i, 1); changed(true); };
    const negate = (on) => { children[i] = on ? { not: inner } : inner; changed(true); };
    if (k === "all" || k === "any") return groupEditor(inner, remove, negated, negate);
    if (k === "not") return el("div", { class: "cond" }, [el("code", { text: JSON.stringify(inner) }), el("button", { type: "button", i18n: "seg.remove", onclick: remove })]);
    return el("div", { class: "cond", "data-kind": k }, [notToggle(negated, negate), el("span", { class: "kind", i18n: "seg." + k }),
      ...EDITORS[k](inner), el("button", { type: "button", i18n: "seg.remove", onclick: remove })]);
  }

  // ---- live count, code, preview, export, save -----------------------------------------------
  function changed(structural) {
    if (structural) drawForm();
    showCode();
    clearTimeout(state.timer);
    state.timer = setTimeout(count, 400);
  }

  async function count() {
    const out = document.getElementById("live");
    const seq = ++state.seq;
    if (!complete(state.seg.definition)) {
      out.replaceChildren(el("span", { class: "muted", text: "—" }));
      return;
    }
    out.replaceChildren(el("span", { class: "muted", i18n: "seg.counting" }));
    delete out.dataset.count;
    const asked = body();
    const started = performance.now();
    try {
      const answer = await call("/v1/segments/count", { method: "POST", json: asked });
      if (seq !== state.seq) return;
      const ms = Math.round(performance.now() - started);
      out.replaceChildren(el("span", { class: "big", id: "live-count", text: answer.count.toLocaleString() }),
        el("span", { class: "muted" }, [" · " + t("seg.source") + ": ", el("b", { id: "live-source", text: answer.source }),
          " · " + t("seg.query_time") + ": ", el("span", { id: "live-ms", text: ms + " ms" })]));
      // What was counted, so that a reader (or a test) knows which edit this count is for.
      out.dataset.for = JSON.stringify(asked);
      out.dataset.count = answer.count;
    } catch (e) {
      if (seq === state.seq) problem(out, e);
    }
  }

  function showCode() {
    const area = document.getElementById("code");
    if (document.activeElement === area) return;
    const doc = document_();
    area.value = document.getElementById("code-format").value === "json" || !window.jsyaml
      ? JSON.stringify(doc, null, 2) : window.jsyaml.dump(doc, { noRefs: true });
  }

  function load() {
    const msg = document.getElementById("code-error");
    msg.textContent = "";
    let doc;
    try {
      const text = document.getElementById("code").value;
      doc = window.jsyaml ? window.jsyaml.load(text) : JSON.parse(text);
    } catch (e) {
      msg.textContent = e.message;
      return;
    }
    if (!doc || typeof doc !== "object" || !doc.definition) { msg.textContent = "definition: required"; return; }
    const def = doc.definition;
    const k = kind(def);
    state.seg = { id: doc.id || state.seg.id, name: doc.name || "", purpose: doc.purpose || null,
      definition: k === "all" || k === "any" ? def : { all: [def] } };
    document.getElementById("seg-id").value = state.seg.id;
    document.getElementById("seg-name").value = state.seg.name;
    document.getElementById("purpose").value = state.seg.purpose || "";
    document.getElementById("code").blur();
    changed(true);
  }

  async function preview() {
    const out = document.getElementById("preview");
    document.getElementById("preview-card").hidden = false;
    out.replaceChildren(el("p", { class: "muted", i18n: "common.loading" }));
    try {
      const answer = await call("/v1/segments/preview?limit=20&fields=profile_id&fields=order_count&fields=total_spend&fields=last_purchase_at&fields=traits.city", { method: "POST", json: body() });
      const fields = answer.profiles.length ? Object.keys(answer.profiles[0]) : ["profile_id"];
      const head = el("tr", {}, fields.map((f) => el("th", { text: f })));
      const rows = answer.profiles.map((p) => el("tr", {}, fields.map((f) => el("td", { text: shown(p[f]) }))));
      out.replaceChildren(el("table", { class: "grid", id: "preview-table" }, [el("thead", {}, [head]), el("tbody", {}, rows)]));
    } catch (e) { problem(out, e); }
  }

  async function exportFile() {
    const format = document.getElementById("export-format").value;
    const msg = document.getElementById("save-msg");
    try {
      const response = await call("/v1/segments/export?format=" + format, { method: "POST", json: body(), raw: true });
      const blob = await response.blob();
      const a = el("a", { href: URL.createObjectURL(blob), download: (state.seg.id || "segment") + "." + format });
      document.body.append(a);
      a.click();
      a.remove();
      msg.textContent = `${format.toUpperCase()}: ${response.headers.get("X-Segment-Count")} · ${blob.size} B`;
    } catch (e) { problem(msg, e); }
  }

  async function save() {
    const msg = document.getElementById("save-msg");
    msg.textContent = "";
    const doc = document_();
    if (!doc.id) { msg.replaceChildren(el("span", { class: "error", text: t("seg.id") + ": required" })); return; }
    try {
      let saved;
      try {
        saved = await call("/v1/segments", { method: "POST", json: doc });
      } catch (e) {
        if (e.status !== 409) throw e;
        saved = await call("/v1/segments/" + encodeURIComponent(doc.id), { method: "PUT", json: doc });
      }
      msg.replaceChildren(el("span", { class: "status-ok", id: "saved-version", text: `${t("seg.saved_ok")} ${saved.version}` }));
      await drawSaved();
    } catch (e) { problem(msg, e); }
  }

  async function drawSaved() {
    const out = document.getElementById("saved");
    try {
      const list = (await call("/v1/segments")).segments;
      const sizes = await Promise.all(list.map((s) => call("/v1/segments/" + encodeURIComponent(s.id) + "/count").then((c) => c.count, () => "—")));
      const rows = list.map((s, i) => [s.id, s.name, s.version, s.live ? "✓" : "", when(s.updated_at), String(sizes[i]),
        el("span", {}, [el("button", { type: "button", i18n: "seg.open", onclick: () => openSaved(s) }), " ",
          el("button", { type: "button", i18n: "seg.sizes", onclick: () => drawSizes(s.id) })])]);
      out.replaceChildren(table(["seg.id", "seg.name", "seg.version", "seg.live", "seg.updated", "seg.size", ""], rows));
      out.querySelector("table").id = "saved-table";
      if (list.length) await drawSizes(list[0].id);
      else document.getElementById("sizes").textContent = t("seg.no_sizes");
    } catch (e) { problem(out, e); }
  }

  function openSaved(s) {
    document.getElementById("code").value = JSON.stringify({ id: s.id, name: s.name, purpose: s.purpose, definition: s.definition });
    load();
  }

  async function drawSizes(id) {
    const node = document.getElementById("sizes");
    document.getElementById("sizes-title").textContent = t("seg.sizes") + " · " + id;
    try {
      const points = (await call("/history/segments/" + encodeURIComponent(id) + "/sizes")).points;
      const drawn = window.echarts && window.echarts.getInstanceByDom(node);
      if (drawn) drawn.dispose();
      node.textContent = points.length ? "" : t("seg.no_sizes");
      if (!points.length) return;
      chart(node, { tooltip: { trigger: "axis" }, xAxis: { type: "time" }, yAxis: { type: "value", minInterval: 1 },
        series: [{ type: "line", step: "end", name: id, data: points.map((p) => [p.at, p.size]) }] });
    } catch (e) { problem(node, e); }
  }

  function drawForm() {
    document.getElementById("form").replaceChildren(groupEditor(state.seg.definition, null, false, null));
  }

  function layout() {
    const purpose = el("select", { id: "purpose" }, [el("option", { value: "", text: t("seg.no_purpose") }), ...state.words.purposes.map((p) => el("option", { value: p, text: p }))]);
    purpose.value = state.seg.purpose || "";
    purpose.addEventListener("change", () => { state.seg.purpose = purpose.value || null; changed(); });
    const id = el("input", { id: "seg-id", size: 18, value: state.seg.id, placeholder: "vip-sms" });
    id.addEventListener("input", () => { state.seg.id = id.value.trim(); showCode(); });
    const name = el("input", { id: "seg-name", size: 22, value: state.seg.name });
    name.addEventListener("input", () => { state.seg.name = name.value; showCode(); });
    const format = el("select", { id: "code-format" }, [el("option", { value: "yaml", text: "YAML" }), el("option", { value: "json", text: "JSON" })]);
    format.addEventListener("change", showCode);
    const lists = [el("datalist", { id: "traits-list" }, state.words.traits.map((x) => el("option", { value: x }))),
      el("datalist", { id: "events-list" }, state.words.event_types.map((x) => el("option", { value: x })))];
    const builder = el("section", { class: "card" }, [el("h2", { i18n: "seg.definition" }),
      el("div", { class: "row" }, [el("label", { for: "purpose", i18n: "seg.purpose" }), purpose]),
      el("div", { id: "form" }), ...lists]);
    const live = el("section", { class: "card" }, [el("h2", { i18n: "seg.live_count" }), el("div", { id: "live", "aria-live": "polite" }),
      el("div", { class: "row", style: "margin-top:10px" }, [
        el("button", { type: "button", id: "preview-btn", i18n: "seg.preview", onclick: preview }),
        el("select", { id: "export-format" }, ["csv", "jsonl", "parquet"].map((f) => el("option", { value: f, text: f.toUpperCase() }))),
        el("button", { type: "button", id: "export-btn", i18n: "seg.export", onclick: exportFile })]),
      el("div", { class: "row", style: "margin-top:10px" }, [el("label", { for: "seg-id", i18n: "seg.id" }), id,
        el("label", { for: "seg-name", i18n: "seg.name" }), name,
        el("button", { type: "button", class: "primary", id: "save-btn", i18n: "seg.save", onclick: save })]),
      el("p", { id: "save-msg", role: "status" })]);
    const code = el("section", { class: "card" }, [el("div", { class: "row" }, [el("h2", { i18n: "seg.code" }), format,
      el("button", { type: "button", id: "code-load", i18n: "seg.apply", onclick: load })]),
      el("textarea", { id: "code", class: "code", spellcheck: "false" }), el("p", { id: "code-error", class: "error" })]);
    const saved = el("section", { class: "card" }, [el("h2", { i18n: "seg.saved" }), el("div", { id: "saved" }),
      el("h2", { id: "sizes-title", i18n: "seg.sizes", style: "margin-top:12px" }), el("div", { id: "sizes", class: "chart small" })]);
    return [el("h1", { i18n: "seg.title" }), el("div", { class: "cols" }, [builder, el("div", {}, [live, code])]),
      el("section", { class: "card", id: "preview-card", hidden: "" }, [el("h2", { i18n: "seg.preview" }), el("div", { id: "preview" })]), saved];
  }

  CDP.start(async (me) => {
    state.me = me;
    const main = document.getElementById("main");
    try {
      [state.words, state.cat] = await Promise.all([call("/vocabulary"), tagCatalog()]);
    } catch (e) { return problem(main, e); }
    main.replaceChildren(...layout());
    drawForm();
    showCode();
    count();
    drawSaved();
  });
})();
