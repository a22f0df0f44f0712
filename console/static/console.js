// Shared by every console page: language, labels, the API through the console's gateway,
// the tag catalog with its bilingual names, and the page header.
(function () {
  "use strict";
  const LANG_KEY = "cdp.console.lang";
  const api = "/console/api";

  function lang() {
    const chosen = localStorage.getItem(LANG_KEY);
    if (chosen === "en" || chosen === "zh") return chosen;
    return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
  }

  function t(key) {
    const labels = window.CDP_LABELS[lang()] || {};
    return key in labels ? labels[key] : (window.CDP_LABELS.en[key] || key);
  }

  function applyLabels(root) {
    (root || document).querySelectorAll("[data-i18n]").forEach((el) => {
      el.textContent = t(el.dataset.i18n);
    });
    (root || document).querySelectorAll("[data-i18n-placeholder]").forEach((el) => {
      el.placeholder = t(el.dataset.i18nPlaceholder);
    });
    document.documentElement.lang = lang() === "zh" ? "zh-CN" : "en";
    document.title = t(document.body.dataset.title || "app.title") + " · " + t("app.title");
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || "HTTP " + status);
      this.status = status;
      this.body = body || {};
    }
  }

  // Calls the API as the signed-in token (the HttpOnly cookie, turned into a bearer token by
  // the console's gateway). A 401 means the session ended: back to sign-in.
  async function call(path, options) {
    const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
    if (opts.json !== undefined) {
      opts.body = JSON.stringify(opts.json);
      opts.headers["Content-Type"] = "application/json";
      delete opts.json;
    }
    const response = await fetch(api + path, opts);
    if (response.status === 401) {
      location.href = "/console/signin?next=" + encodeURIComponent(location.pathname);
      throw new ApiError(401, { message: "signed out" });
    }
    if (opts.raw) {
      if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => ({})));
      return response;
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  let catalog = null;
  async function tagCatalog() {
    if (!catalog) {
      const body = await call("/v1/tags");
      const byId = {};
      body.tags.forEach((tag) => (byId[tag.id] = tag));
      const categories = {};
      body.categories.forEach((c) => (categories[c.id] = c));
      catalog = { tags: body.tags, byId: byId, categories: body.categories, categoryById: categories };
    }
    return catalog;
  }

  function named(item) {
    if (!item) return "";
    return lang() === "zh" ? item.name_zh : item.name_en;
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (v === undefined || v === null) return;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "i18n") { node.dataset.i18n = v; node.textContent = t(v); }
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    });
    (children || []).forEach((c) => node.append(c instanceof Node ? c : document.createTextNode(String(c))));
    return node;
  }

  function table(headers, rows) {
    const head = el("tr", {}, headers.map((h) => el("th", { i18n: h })));
    if (!rows.length) rows = [[t("common.none")].concat(headers.slice(1).map(() => ""))];
    const body = rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, [c instanceof Node ? c : String(c ?? "")]))));
    return el("table", { class: "grid" }, [el("thead", {}, [head]), el("tbody", {}, body)]);
  }

  function problem(target, error) {
    const message = error.status === 403 ? t("common.forbidden") + ": " + error.message : error.message;
    target.replaceChildren(el("p", { class: "error", role: "alert", text: message }));
  }

  function when(iso) {
    if (!iso) return "—";
    // The history's times are UTC, sometimes written without an offset.
    const text = String(iso);
    const d = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : text + "Z");
    return isNaN(d) ? String(iso) : d.toLocaleString(lang() === "zh" ? "zh-CN" : "en-GB");
  }

  // A chart (ECharts, served by the console itself); a note instead when it is not installed.
  function chart(node, option) {
    if (!window.echarts) {
      node.textContent = "charts unavailable: run scripts/install.sh";
      return null;
    }
    let existing = window.echarts.getInstanceByDom(node);
    if (existing && !node.firstElementChild) {
      // The node's content was replaced (a message shown instead): start the chart afresh.
      existing.dispose();
      existing = null;
    }
    const instance = existing || window.echarts.init(node);
    instance.setOption(option, true);
    return instance;
  }
  window.addEventListener("resize", () => {
    if (!window.echarts) return;
    document.querySelectorAll(".chart").forEach((n) => {
      const c = window.echarts.getInstanceByDom(n);
      if (c) c.resize();
    });
  });

  const PAGES = ["customers", "segments", "tags", "ops"];
  let onLanguage = () => {};

  function header(me) {
    const page = document.body.dataset.page;
    const links = PAGES.map((p) =>
      el("a", { href: "/console/" + p, class: p === page ? "active" : "", i18n: "nav." + p, "data-nav": p }));
    const who = el("span", { class: "who" }, [el("span", { i18n: "nav.signed_in" }), " ", el("b", { text: me.name })]);
    const switcher = el("button", { type: "button", id: "lang", class: "link", i18n: "nav.lang", onclick: () => {
      localStorage.setItem(LANG_KEY, lang() === "zh" ? "en" : "zh");
      applyLabels();
      onLanguage();
    } });
    const out = el("form", { method: "post", action: "/console/signout", class: "inline" }, [
      el("button", { type: "submit", class: "link", i18n: "nav.signout" })]);
    const bar = el("header", { class: "top" }, [
      el("span", { class: "brand", i18n: "app.title" }), el("nav", {}, links), el("span", { class: "spacer" }), who, switcher, out]);
    document.body.prepend(bar);
  }

  // Start a page: header, labels, then the page's own code; ``render`` again on a language switch.
  async function start(render) {
    let me;
    try {
      me = await call("/me");
    } catch (e) {
      return;
    }
    header(me);
    applyLabels();
    onLanguage = () => render(me, true);
    await render(me, false);
  }

  window.CDP = { t, lang, applyLabels, call, tagCatalog, named, el, table, problem, when, chart, start, ApiError };
})();
