// dashclip web page: plain JavaScript, no framework, no CDN. Talks to /search, /filters, /products/{id}.
"use strict";

const PAGE_SIZE = 24;
const MANY_VALUES = 8;          // a field with more values shows only the ones in the current results
const MAIN_FIELDS = 5;          // filter rows shown before "More filters"
const FIELD_ORDER = ["gender", "category", "articleType", "baseColour", "season", "usage", "masterCategory", "subCategory"];
const SUGGESTIONS = ["red summer dress", "men's black watch", "white sneakers", "blue denim jeans", "leather handbag", "floral kurta"];

const $ = (id) => document.getElementById(id);
const state = { query: "", filters: {}, hybrid: null, fields: {}, results: [], allFields: false,
                photo: null, similar: null };   // photo: a File to search by; similar: a product id
const MAX_PHOTO_BYTES = 10 * 1024 * 1024;      // the service refuses more (HTTP 413)
let inflight = null;

// API key, only when the service has one (`dashclip serve --api-key`): open the page as /#key=..., it is kept
// in sessionStorage (the fragment never reaches the server or its logs) and sent as the X-API-Key header.
// Images then load through fetch too, since an <img> sends no header.
const API_KEY = (() => {
  const m = location.hash.match(/(?:^#|&)key=([^&]*)/);
  if (m) {
    sessionStorage.setItem("dashclip-key", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("dashclip-key") || "";
})();

function api(url, options = {}) {
  if (API_KEY) options.headers = { ...(options.headers || {}), "X-API-Key": API_KEY };
  return fetch(url, options);
}

function setImage(img, url) {
  if (!API_KEY || !url) { img.src = url || ""; return; }
  api(url).then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`HTTP ${r.status}`))))
    .then((b) => { img.src = URL.createObjectURL(b); })
    .catch(() => img.dispatchEvent(new Event("error")));
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function label(field) {
  if (field === "category") return "Category";
  const words = field.replace(/([a-z])([A-Z])/g, "$1 $2").replace(/[_-]+/g, " ").toLowerCase();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

// ------------------------------------------------------------------ URL state (shareable links)
function readUrl() {
  const params = new URLSearchParams(location.search);
  state.query = params.get("q") || "";
  state.hybrid = params.has("hybrid") ? params.get("hybrid") === "true" : null;  // null: the index's default
  state.similar = params.get("similar");
  state.filters = {};
  for (const f of params.getAll("filter")) {
    const cut = f.indexOf(":");
    if (cut > 0) (state.filters[f.slice(0, cut)] ||= []).push(f.slice(cut + 1));
  }
}

function filterParams() {
  const out = [];
  for (const [field, values] of Object.entries(state.filters)) for (const v of values) out.push(["filter", `${field}:${v}`]);
  return out;
}

function writeUrl() {
  const params = new URLSearchParams([["q", state.query], ...filterParams()]);
  if (state.hybrid !== null) params.set("hybrid", String(state.hybrid));
  if (state.similar !== null) params.set("similar", state.similar);
  history.replaceState(null, "", state.query || state.similar !== null ? `/?${params}` : "/");
}

// ------------------------------------------------------------------ search
async function runSearch() {
  writeUrl();
  $("error").hidden = true;
  if (!state.query.trim() && !state.photo && state.similar === null) { showWelcome(); return; }
  $("welcome").hidden = true;
  $("empty").hidden = true;
  showSkeletons();
  $("status").textContent = "Searching…";
  if (inflight) inflight.abort();
  inflight = new AbortController();
  let request;                            // one request per search: similar, photo or words
  if (state.similar !== null) {           // more like this product
    const near = new URLSearchParams([["k", PAGE_SIZE], ...filterParams()]);
    request = api(`/products/${encodeURIComponent(state.similar)}/similar?${near}`, { signal: inflight.signal });
  } else if (state.photo) {               // search by photo, refined by the words typed (if any)
    const near = new URLSearchParams([["k", PAGE_SIZE], ...filterParams()]);
    if (state.query.trim()) near.set("q", state.query);
    const form = new FormData();
    form.append("image", state.photo, "photo");
    request = api(`/search/image?${near}`, { method: "POST", body: form, signal: inflight.signal });
  } else {
    const params = new URLSearchParams([["q", state.query], ["k", PAGE_SIZE], ...filterParams()]);
    if (state.hybrid !== null) params.set("hybrid", String(state.hybrid));
    request = api(`/search?${params}`, { signal: inflight.signal });
  }
  try {
    const response = await request;
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(describeError(body, response.status));
    state.results = body.results;
    renderResults(body);
  } catch (err) {
    if (err.name === "AbortError") return;
    showError(err.message || String(err));
  }
}

function describeError(body, status) {
  if (typeof body.detail === "string") return body.detail;
  if (Array.isArray(body.detail) && body.detail.length) return body.detail.map((d) => d.msg).join("; ");
  return `The search service answered with HTTP ${status}.`;
}

function showWelcome() {
  $("results").replaceChildren();
  $("status").textContent = "";
  $("empty").hidden = true;
  $("welcome").hidden = false;
  document.body.dataset.state = "welcome";
  renderFilters();
}

function showSkeletons() {
  document.body.dataset.state = "loading";
  const cards = Array.from({ length: 8 }, () =>
    el("div", { class: "card skeleton", "aria-hidden": "true" },
      el("div", { class: "photo" }),
      el("div", { class: "info" }, el("div", { class: "line short" }), el("div", { class: "line" }), el("div", { class: "line" }))));
  $("results").replaceChildren(...cards);
}

function showError(message) {
  document.body.dataset.state = "error";
  $("results").replaceChildren();
  $("status").textContent = "";
  $("error").textContent = `Search failed: ${message}`;
  $("error").hidden = false;
}

function renderResults(body) {
  const n = body.results.length;
  if (body.hybrid !== undefined) $("hybrid").checked = body.hybrid;  // as searched (the index's default if not set)
  const status = $("status");
  const what = body.product_id !== undefined ? ` like “${similarTitle(body.product_id)}”`
    : body.image ? (body.query ? ` for your photo + “${body.query}”` : " for your photo") : ` for “${body.query}”`;
  status.replaceChildren(
    el("strong", {}, `${n} ${n === 1 ? "product" : "products"}`), what,
    body.hybrid ? " · keywords + visual" : "", ` · ${Math.round(body.took_ms)} ms`);
  renderFilters();
  if (!n) {
    $("results").replaceChildren();
    const active = Object.keys(state.filters).length > 0;
    $("empty-text").textContent = active ? "Nothing matches these filters. Remove one or clear them all." : "Try other words.";
    $("clear-filters").hidden = !active;
    $("empty").hidden = false;
    document.body.dataset.state = "empty";
    return;
  }
  const top = Math.max(...body.results.map((r) => r.score), 1e-9);
  $("results").replaceChildren(...body.results.map((r) => card(r, top, body.hybrid)));
  document.body.dataset.state = "results";
}

function card(r, top, hybrid) {
  const photo = el("div", { class: "photo" }, el("span", { class: "rank" }, `#${r.rank}`));
  if (r.image_url) {
    const img = el("img", { alt: r.title, loading: "lazy", decoding: "async" });
    img.addEventListener("load", () => img.classList.add("loaded"));
    img.addEventListener("error", () => img.replaceWith(el("span", { class: "no-photo" }, "image unavailable")));
    setImage(img, r.image_url);
    photo.append(img);
  } else {
    photo.append(el("span", { class: "no-photo" }, "no photo"));
  }
  // Cosine scores are shown as they are; fused (hybrid) scores only mean something relative to the best.
  const share = hybrid ? r.score / top : Math.max(0, r.score);
  const scoreText = hybrid ? `fused ${(r.score * 1000).toFixed(1)}‰` : `match ${r.score.toFixed(3)}`;
  // "Similar" sits inside the card's button: a span with the button role, so a click on it is not a click on the card.
  const similar = el("span", { class: "similar", role: "button", tabindex: "0", "data-similar": r.id,
                               title: "Products that look like this one" }, "Similar");
  similar.addEventListener("click", (e) => { e.stopPropagation(); showSimilar(r.id, r.title); });
  similar.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); e.stopPropagation(); showSimilar(r.id, r.title); }
  });
  return el("button", { class: "card", type: "button", "data-id": r.id, title: r.title, onclick: () => openProduct(r.id) },
    photo,
    el("div", { class: "info" },
      el("span", { class: "category" }, r.category || " "),
      el("span", { class: "title" }, r.title),
      similar,
      el("span", { class: "score", title: hybrid ? "Reciprocal-rank fusion score" : "Cosine similarity of query and product" },
        el("span", { class: "score-bar" }, el("span", { style: `width:${Math.round(share * 100)}%` })), scoreText)));
}

// ------------------------------------------------------------------ filters
async function loadFilters() {
  try {
    const response = await api("/filters");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    state.fields = await response.json();
  } catch (err) {
    state.fields = {};
  }
}

function orderedFields() {
  const names = Object.keys(state.fields).filter((f) => state.fields[f].length > 1);
  const rank = (f) => (FIELD_ORDER.indexOf(f) === -1 ? 99 : FIELD_ORDER.indexOf(f));
  return names.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

function resultCounts(field) {
  const counts = new Map();
  for (const r of state.results) {
    const v = field === "category" ? r.category : r.attributes[field];
    if (v) counts.set(v, (counts.get(v) || 0) + 1);
  }
  return counts;
}

function toggleFilter(field, value) {
  const values = state.filters[field] || [];
  state.filters[field] = values.includes(value) ? values.filter((v) => v !== value) : [...values, value];
  if (!state.filters[field].length) delete state.filters[field];
  runSearch();
}

function chip(field, value, count) {
  const active = (state.filters[field] || []).includes(value);
  return el("button", { class: "chip", type: "button", "aria-pressed": String(active), "data-field": field, "data-value": value,
                        onclick: () => toggleFilter(field, value) },
    value, count ? el("span", { class: "count" }, String(count)) : null);
}

function renderFilters() {
  const box = $("filters");
  const rows = [];
  const fields = orderedFields();
  // Secondary fields stay folded unless asked for, or unless one of them is filtering right now.
  const shownFields = state.allFields ? fields : fields.filter((f, i) => i < MAIN_FIELDS || state.filters[f]);
  for (const field of shownFields) {
    const all = state.fields[field];
    const active = state.filters[field] || [];
    let shown = all;
    const counts = resultCounts(field);
    if (all.length > MANY_VALUES) {
      // Many values (article types, colours): offer the ones in the current results, most common first.
      const common = [...counts.entries()].sort((a, b) => b[1] - a[1]).map(([v]) => v).slice(0, MANY_VALUES);
      shown = [...new Set([...active, ...common])];
    }
    const chips = shown.map((v) => chip(field, v, counts.get(v)));
    if (all.length > shown.length) {
      const select = el("select", { class: "more", "aria-label": `More ${label(field)} values`, "data-field": field },
        el("option", { value: "" }, shown.length ? "More…" : `Any ${label(field).toLowerCase()}…`),
        ...all.filter((v) => !shown.includes(v)).map((v) => el("option", { value: v }, v)));
      select.addEventListener("change", () => select.value && toggleFilter(field, select.value));
      chips.push(select);
    }
    if (chips.length) rows.push(el("div", { class: "filter-row", "data-field": field }, el("span", { class: "filter-name" }, label(field)), ...chips));
  }
  const hidden = fields.length - shownFields.length;
  if (state.allFields || hidden > 0) {
    rows.push(el("div", { class: "filter-row" }, el("span", { class: "filter-name" }),
      el("button", { class: "link-button", type: "button", id: "more-filters",
                     onclick: () => { state.allFields = !state.allFields; renderFilters(); } },
        state.allFields ? "Fewer filters" : `More filters (${hidden})`)));
  }
  if (Object.keys(state.filters).length) {
    rows.push(el("div", { class: "filter-row active-row" },
      el("span", { class: "filter-name" }, "Active"),
      ...Object.entries(state.filters).flatMap(([f, vs]) => vs.map((v) => chip(f, v))),
      el("button", { class: "link-button", type: "button", onclick: clearFilters }, "Clear all")));
  }
  box.replaceChildren(...rows);
  box.hidden = rows.length === 0;
}

function clearFilters() {
  state.filters = {};
  runSearch();
}

// ------------------------------------------------------------------ photo and "more like this"
const titles = new Map();   // product id -> title, for the status line of "more like this"
function similarTitle(id) { return titles.get(String(id)) || `product ${id}`; }

function showSimilar(id, title) {
  if (title) titles.set(String(id), title);
  clearPhoto(false);
  state.similar = String(id);
  state.query = "";
  $("q").value = "";
  if ($("product-dialog").open) $("product-dialog").close();
  runSearch();
}

function setPhoto(file) {
  $("error").hidden = true;
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) { showError(`${file.name} is not an image`); return; }
  if (file.size > MAX_PHOTO_BYTES) { showError(`the photo is ${(file.size / 1048576).toFixed(1)} MB; the limit is 10 MB`); return; }
  state.photo = file;
  state.similar = null;
  const thumb = $("photo-thumb");
  if (thumb.src) URL.revokeObjectURL(thumb.src);
  thumb.src = URL.createObjectURL(file);
  $("photo-chip").hidden = false;
  runSearch();
}

function clearPhoto(search = true) {
  state.photo = null;
  $("photo").value = "";
  $("photo-chip").hidden = true;
  if (search) runSearch();
}

// ------------------------------------------------------------------ product dialog
async function openProduct(id) {
  const dialog = $("product-dialog");
  try {
    const response = await api(`/products/${encodeURIComponent(id)}`);
    const p = await response.json();
    if (!response.ok) throw new Error(describeError(p, response.status));
    $("dialog-title").textContent = p.title;
    $("dialog-category").textContent = p.category || "";
    setImage($("dialog-image"), p.image_url);
    $("dialog-image").alt = p.title;
    $("dialog-image").hidden = !p.image_url;
    $("dialog-attributes").replaceChildren(...Object.entries(p.attributes).filter(([, v]) => v)
      .flatMap(([k, v]) => [el("dt", {}, label(k)), el("dd", {}, v)]));
    $("dialog-id").textContent = `Product ${p.id}`;
    $("dialog-similar").onclick = () => showSimilar(p.id, p.title);
    dialog.showModal();
  } catch (err) {
    showError(err.message);
  }
}

// ------------------------------------------------------------------ start
function start() {
  $("suggestions").replaceChildren(...SUGGESTIONS.map((s) =>
    el("button", { class: "chip", type: "button", onclick: () => { $("q").value = s; state.query = s; runSearch(); } }, s)));
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.query = $("q").value;
    state.similar = null;
    runSearch();
  });
  $("photo").addEventListener("change", () => setPhoto($("photo").files[0]));
  $("photo-clear").addEventListener("click", () => clearPhoto());
  $("photo-clear").addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); clearPhoto(); } });
  document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) document.body.classList.remove("dragging"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) setPhoto(file);
  });
  $("hybrid").addEventListener("change", () => { state.hybrid = $("hybrid").checked; if (state.query) runSearch(); });
  $("clear-filters").addEventListener("click", clearFilters);
  $("product-dialog").addEventListener("click", (e) => { if (e.target === e.currentTarget) e.currentTarget.close(); });
  readUrl();
  $("q").value = state.query;
  $("hybrid").checked = !!state.hybrid;
  loadFilters().then(() => (state.query || state.similar !== null ? runSearch() : showWelcome()));
}

start();
