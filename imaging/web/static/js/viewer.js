// The imaging viewer: a study's series as thumbnails (fetched as they scroll into view), then one image of the
// chosen series at a time, rendered by the server (WADO-RS /rendered) with the chosen window. Every image is
// fetched with the bearer token (an <img src> cannot carry it) and shown through an object URL.
import { accessToken, currentLanguage, goToLogin, onLanguageChange, readJson, startSignedInPage } from "/static/js/core.js";

const DICOMWEB = "/dicomweb";
const TAG = { series: "0020000E", sop: "00080018", seriesNumber: "00200011", modality: "00080060", count: "00201209", number: "00200013" };

let texts = readJson("imaging-messages", {});
const study = new URLSearchParams(location.search).get("study") || "";
const seriesList = document.getElementById("series-list");
const errorBox = document.getElementById("viewer-error");
const image = document.getElementById("viewer-image");
const hint = document.getElementById("viewer-hint");
const frame = document.getElementById("viewer-frame");
const range = document.getElementById("slice-range");
const indexOut = document.getElementById("slice-index");
const presetButtons = [...document.querySelectorAll("button.preset[data-preset]")];

const state = { series: [], current: null, instances: [], index: 0, window: "", request: 0, imageUrl: null };
const instanceCache = new Map();

function it(key, values) {
  let text = Object.prototype.hasOwnProperty.call(texts, key) ? texts[key] : key;
  if (values) for (const [name, value] of Object.entries(values)) text = text.replaceAll(`{${name}}`, String(value));
  return text;
}

function applyTexts() {
  for (const node of document.querySelectorAll("[data-it]")) node.textContent = it(node.dataset.it);
  image.alt = it("imaging.viewer.image_alt");
  document.title = document.title.replace(/^[^·]*·/, `${it("imaging.viewer.title")} ·`);
  for (const item of seriesList.querySelectorAll("[data-label]")) item.textContent = seriesLabel(JSON.parse(item.dataset.label));
}

function showError(text) {
  errorBox.textContent = text;
  errorBox.hidden = false;
}

function first(attributes, tag) {
  const values = attributes?.[tag]?.Value;
  return values && values.length ? values[0] : null;
}

async function request(path, accept) {
  const headers = { Accept: accept, "Accept-Language": currentLanguage() };
  const token = accessToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) {
    goToLogin("error.session");
    throw new Error("401");
  }
  if (!response.ok) throw new Error(String(response.status));
  return response;
}

async function searchJson(path) {
  const response = await request(path, "application/dicom+json");
  if (response.status === 204) return [];
  return response.json();
}

async function imageUrl(path) {
  const blob = await (await request(path, "image/jpeg")).blob();
  return URL.createObjectURL(blob);
}

const studyPath = () => `${DICOMWEB}/studies/${encodeURIComponent(study)}`;
const seriesPath = (uid) => `${studyPath()}/series/${encodeURIComponent(uid)}`;

async function instancesOf(uid) {
  if (!instanceCache.has(uid)) {
    const loading = searchJson(`${seriesPath(uid)}/instances`).then((items) =>
      items
        .map((item) => ({ uid: first(item, TAG.sop), number: Number(first(item, TAG.number) ?? 0) }))
        .filter((item) => item.uid)
        .sort((a, b) => a.number - b.number),
    );
    instanceCache.set(uid, loading);
    loading.catch(() => instanceCache.delete(uid));
  }
  return instanceCache.get(uid);
}

function seriesLabel(info) {
  return it("imaging.viewer.series_label", { number: info.number ?? "–", modality: info.modality ?? "", count: info.count ?? "?" });
}

async function loadThumbnail(info, img) {
  try {
    const instances = await instancesOf(info.uid);
    if (!instances.length) return;
    const middle = instances[Math.floor(instances.length / 2)];
    img.src = await imageUrl(`${seriesPath(info.uid)}/instances/${encodeURIComponent(middle.uid)}/thumbnail`);
    img.hidden = false;
  } catch {
    img.classList.add("is-broken");
  }
}

function renderSeries() {
  seriesList.replaceChildren();
  const observer = "IntersectionObserver" in window
    ? new IntersectionObserver((entries) => {
        for (const entry of entries) {
          if (!entry.isIntersecting) continue;
          observer.unobserve(entry.target);
          const info = state.series[Number(entry.target.dataset.position)];
          loadThumbnail(info, entry.target.querySelector("img"));
        }
      })
    : null;
  state.series.forEach((info, position) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "series-item";
    button.dataset.position = String(position);
    button.dataset.series = info.uid;
    button.setAttribute("aria-pressed", "false");
    const img = document.createElement("img");
    img.className = "series-thumb";
    img.alt = "";
    img.width = 96;
    img.height = 96;
    img.hidden = true;
    const label = document.createElement("span");
    label.className = "series-label";
    label.dataset.label = JSON.stringify(info);
    label.textContent = seriesLabel(info);
    button.append(img, label);
    button.addEventListener("click", () => selectSeries(position));
    item.append(button);
    seriesList.append(item);
    if (observer) observer.observe(button);
    else loadThumbnail(info, img);
  });
}

function showIndex() {
  const total = state.instances.length;
  indexOut.textContent = total ? `${state.index + 1} / ${total}` : "";
  range.max = String(Math.max(total, 1));
  range.value = String(state.index + 1);
  range.disabled = total < 2;
}

async function showImage() {
  const instance = state.instances[state.index];
  if (!instance) return;
  showIndex();
  const ticket = ++state.request;
  const query = state.window ? `?window=${state.window}` : "";
  try {
    const url = await imageUrl(`${seriesPath(state.current)}/instances/${encodeURIComponent(instance.uid)}/rendered${query}`);
    if (ticket !== state.request) {
      URL.revokeObjectURL(url);
      return;
    }
    const previous = state.imageUrl;
    state.imageUrl = url;
    image.src = url;
    image.hidden = false;
    hint.hidden = true;
    if (previous) image.addEventListener("load", () => URL.revokeObjectURL(previous), { once: true });
  } catch {
    if (ticket === state.request) showError(it("imaging.viewer.error"));
  }
}

async function selectSeries(position) {
  const info = state.series[position];
  if (!info) return;
  for (const button of seriesList.querySelectorAll(".series-item")) {
    button.setAttribute("aria-pressed", String(button.dataset.position === String(position)));
  }
  state.current = info.uid;
  state.instances = [];
  state.index = 0;
  hint.textContent = it("imaging.viewer.loading");
  hint.hidden = false;
  try {
    const instances = await instancesOf(info.uid);
    if (state.current !== info.uid) return;
    state.instances = instances;
    await showImage();
  } catch {
    showError(it("imaging.viewer.error"));
  }
}

function step(delta) {
  const total = state.instances.length;
  if (!total) return;
  const next = Math.min(total - 1, Math.max(0, state.index + delta));
  if (next === state.index) return;
  state.index = next;
  showImage();
}

function bindControls() {
  frame.addEventListener(
    "wheel",
    (event) => {
      if (!state.instances.length) return;
      event.preventDefault();
      step(event.deltaY > 0 ? 1 : -1);
    },
    { passive: false },
  );
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement) return;
    if (event.key === "ArrowDown" || event.key === "ArrowRight" || event.key === "PageDown") {
      event.preventDefault();
      step(1);
    } else if (event.key === "ArrowUp" || event.key === "ArrowLeft" || event.key === "PageUp") {
      event.preventDefault();
      step(-1);
    }
  });
  range.addEventListener("input", () => {
    const next = Number(range.value) - 1;
    if (next !== state.index && next >= 0 && next < state.instances.length) {
      state.index = next;
      showImage();
    }
  });
  for (const button of presetButtons) {
    button.addEventListener("click", () => {
      state.window = button.dataset.window || "";
      for (const other of presetButtons) other.setAttribute("aria-pressed", String(other === button));
      showImage();
    });
  }
}

async function start() {
  const me = await startSignedInPage();
  if (!me) return;
  onLanguageChange(async (next) => {
    const response = await fetch(`/static-imaging/i18n/${next}.json`, { headers: { Accept: "application/json" } });
    if (response.ok) texts = await response.json();
    applyTexts();
  });
  bindControls();
  if (!study) {
    hint.textContent = it("imaging.viewer.no_study");
    return;
  }
  let items;
  try {
    items = await searchJson(`${studyPath()}/series`);
  } catch {
    showError(it("imaging.viewer.error"));
    return;
  }
  state.series = items
    .map((item) => ({
      uid: first(item, TAG.series),
      number: first(item, TAG.seriesNumber),
      modality: first(item, TAG.modality),
      count: first(item, TAG.count),
    }))
    .filter((info) => info.uid)
    .sort((a, b) => Number(a.number ?? 0) - Number(b.number ?? 0));
  if (!state.series.length) {
    hint.textContent = it("imaging.viewer.no_series");
    return;
  }
  renderSeries();
  selectSeries(0);
}

start();
