// The imaging viewer. Without ?study= it is a study picker: QIDO-RS over the studies this user may see, with
// filters and paging. With ?study= it shows the study's series as thumbnails (fetched as they scroll into view)
// and one image of the chosen series at a time, rendered by the server (WADO-RS /rendered) with the chosen
// window. Frames of a multi-frame instance are steps of the same stack. Every image is fetched with the bearer
// token (an <img src> cannot carry it) and shown through an object URL.
//
// Built for a weak link: at most one image request is in flight; while it runs, scrolling or dragging only
// moves the wanted position, and when it ends the latest wanted image is fetched, never the ones skipped over.
// Window changes by dragging are shown as numbers at once and sent to the server when the hand rests.
import {
  ApiError,
  CLINICAL_ROLES,
  accessToken,
  api,
  currentLanguage,
  goToLogin,
  onLanguageChange,
  problemText,
  readJson,
  startSignedInPage,
  t,
} from "/static/js/core.js";

const config = readJson("viewer-config", {});
const DICOMWEB = typeof config.dicomweb === "string" ? config.dicomweb : "/dicomweb";
const PAGE_SIZE = Number(config.pageSize) || 20;
// DICOM JSON tags (PS3.18 F.2) the page reads.
const TAG = {
  studyUid: "0020000D",
  studyDate: "00080020",
  studyTime: "00080030",
  studyDescription: "00081030",
  modalities: "00080061",
  patientName: "00100010",
  patientId: "00100020",
  patientSex: "00100040",
  seriesInStudy: "00201206",
  instancesInStudy: "00201208",
  series: "0020000E",
  sop: "00080018",
  seriesNumber: "00200011",
  modality: "00080060",
  count: "00201209",
  number: "00200013",
  frames: "00280008",
  windowCenter: "00281050",
  windowWidth: "00281051",
  rescaleIntercept: "00281052",
  rescaleSlope: "00281053",
  bitsStored: "00280101",
};
// What the drag starts from needs the stored window; the index does not hold it, the stored documents do.
const INSTANCE_FIELDS = [TAG.windowCenter, TAG.windowWidth, TAG.rescaleIntercept, TAG.rescaleSlope, TAG.bitsStored];
const WINDOW_DEBOUNCE_MS = 250;
const IMAGE_CACHE_LIMIT = 48;
const BACK_FLAG = "telemed.imaging.from_list";
const CJK = /[\u3400-\u9fff\uf900-\ufaff]/;

const study = new URLSearchParams(location.search).get("study") || "";
const $ = (id) => document.getElementById(id);
const errorBox = $("viewer-error");
const errorText = $("viewer-error-text");
const retryButton = $("viewer-retry");

// ---------------------------------------------------------------- requests and errors

class ViewerError extends Error {
  constructor(status) {
    super(`HTTP ${status}`);
    this.status = status;
  }
}

async function request(path, accept) {
  const headers = { Accept: accept, "Accept-Language": currentLanguage() };
  const token = accessToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { headers, cache: "no-store" });
  } catch {
    throw new ViewerError(0);
  }
  if (response.status === 401) {
    goToLogin("error.session");
    throw new ViewerError(401);
  }
  if (!response.ok) throw new ViewerError(response.status);
  return response;
}

async function searchJson(path) {
  const response = await request(path, "application/dicom+json");
  if (response.status === 204) return { items: [], more: false };
  const items = await response.json();
  // PS3.18 §8.3.4.4: a server that stops at its maximum says so in a Warning and takes the rest by offset.
  const more = /offset/i.test(response.headers.get("Warning") || "");
  return { items: Array.isArray(items) ? items : [], more };
}

async function searchAll(path) {
  const all = [];
  for (let page = 0; page < 100; page += 1) {
    const separator = path.includes("?") ? "&" : "?";
    const { items, more } = await searchJson(`${path}${all.length ? `${separator}offset=${all.length}` : ""}`);
    all.push(...items);
    if (!more || !items.length) break;
  }
  return all;
}

/** The text for a failed request, by what the user was doing ("search", "study" or "image"). */
function failureText(error, what) {
  const status = error instanceof ViewerError ? error.status : -1;
  if (status === 0) return t("imaging.error.network");
  if (status === 401) return t("error.session");
  if (status === 403) return t("imaging.error.forbidden");
  if (status === 404) return t(what === "image" ? "imaging.error.image_missing" : "imaging.error.not_found");
  if (status === 400) return t(what === "search" ? "imaging.error.bad_query" : "imaging.error.generic");
  if (status === 406 || status === 501) return t("imaging.error.render");
  if (status === 503) return t("imaging.error.unavailable");
  return t("imaging.error.generic");
}

let pageFailure = null;

function showFailure(error, what, retry) {
  pageFailure = { error, what, retry };
  errorText.textContent = failureText(error, what);
  errorBox.dataset.status = String(error instanceof ViewerError ? error.status : "");
  // Only a failure that may pass (the network, a busy server) is worth a retry button.
  const status = error instanceof ViewerError ? error.status : -1;
  retryButton.hidden = !(retry && (status === 0 || status >= 500));
  errorBox.hidden = false;
}

function clearFailure() {
  pageFailure = null;
  errorBox.hidden = true;
  errorText.textContent = "";
}

retryButton.addEventListener("click", () => {
  const retry = pageFailure?.retry;
  clearFailure();
  if (retry) retry();
});

// ---------------------------------------------------------------- DICOM JSON values

function values(attributes, tag) {
  const found = attributes?.[tag]?.Value;
  return Array.isArray(found) ? found : [];
}

function first(attributes, tag) {
  const found = values(attributes, tag);
  return found.length ? found[0] : null;
}

function number(attributes, tag) {
  const value = Number(first(attributes, tag));
  return first(attributes, tag) === null || !Number.isFinite(value) ? null : value;
}

/** A Person Name (PS3.5 §6.2.1) as {alphabetic, ideographic}: "Zhang San" and "张三". */
function nameParts(value) {
  let groups = value;
  if (typeof value === "string") {
    const [alphabetic = "", ideographic = ""] = value.split("=");
    groups = { Alphabetic: alphabetic, Ideographic: ideographic };
  }
  // Family^Given^Middle; prefix and suffix are left out of a list line. Chinese names run together (张三), also
  // where a device wrote them in the alphabetic group, as many do.
  const written = (text) => {
    const parts = String(text || "").split("^").slice(0, 3).map((part) => part.trim()).filter(Boolean);
    return parts.join(parts.some((part) => CJK.test(part)) ? "" : " ");
  };
  return { alphabetic: written(groups?.Alphabetic), ideographic: written(groups?.Ideographic) };
}

/** The name to show first in the current language, and the other writing (if any) beside it. */
function displayName(value) {
  const { alphabetic, ideographic } = nameParts(value);
  const chinese = currentLanguage() !== "en";
  const primary = (chinese ? ideographic || alphabetic : alphabetic || ideographic) || t("imaging.picker.unnamed");
  const secondary = alphabetic && ideographic && alphabetic !== ideographic ? (chinese ? alphabetic : ideographic) : "";
  return { primary, secondary };
}

/** A resident ID number used as Patient ID is masked like everywhere else: 331121********1234. */
function maskedPatientId(value) {
  const text = String(value ?? "");
  return /^\d{17}[\dXx]$/.test(text) ? `${text.slice(0, 6)}${"*".repeat(8)}${text.slice(14)}` : text;
}

function formatDate(value) {
  const text = String(value ?? "");
  return /^\d{8}$/.test(text) ? `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6, 8)}` : text;
}

function formatTime(value) {
  const text = String(value ?? "");
  return /^\d{4}/.test(text) ? `${text.slice(0, 2)}:${text.slice(2, 4)}` : "";
}

function sexText(value) {
  return value === "M" || value === "F" || value === "O" ? t(`imaging.sex.${value}`) : "";
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// ---------------------------------------------------------------- the study picker

const picker = {
  form: $("study-search"),
  name: $("q-name"),
  patientId: $("q-id"),
  from: $("q-from"),
  to: $("q-to"),
  modality: $("q-modality"),
  dateError: $("q-date-error"),
  status: $("picker-status"),
  list: $("study-list"),
  empty: $("picker-empty"),
  pager: $("pager"),
  prev: $("page-prev"),
  next: $("page-next"),
  pageInfo: $("page-info"),
  filters: {},
  offset: 0,
  items: [],
  more: false,
  loaded: false,
  ticket: 0,
};

/** What the user typed for a name, as a QIDO-RS Person Name pattern (PS3.18 §8.3.4.1, wildcards of C.2.2.2.4).
 *  "张三" matches "张^三" (ideographic names are stored with a caret between family and given name) and
 *  "zhang san" matches "Zhang^San"; a pattern the user wrote with * or ? is sent as written. */
function namePattern(text) {
  const trimmed = text.trim();
  if (!trimmed || /[*?]/.test(trimmed)) return trimmed;
  const pieces = trimmed.split(/[\s^=,，·・]+/).filter(Boolean);
  const parts = pieces.flatMap((piece) => (CJK.test(piece) ? [...piece] : [piece]));
  return `${parts.join("*")}*`;
}

function prefixPattern(text) {
  const trimmed = text.trim();
  return !trimmed || /[*?]/.test(trimmed) ? trimmed : `${trimmed}*`;
}

const compactDate = (value) => String(value || "").replaceAll("-", "");

function readFilters() {
  return {
    name: picker.name.value.trim(),
    patientId: picker.patientId.value.trim(),
    from: picker.from.value,
    to: picker.to.value,
    modality: picker.modality.value,
  };
}

function writeFilters(filters) {
  picker.name.value = filters.name || "";
  picker.patientId.value = filters.patientId || "";
  picker.from.value = filters.from || "";
  picker.to.value = filters.to || "";
  picker.modality.value = filters.modality || "";
}

function studyQuery(filters, offset) {
  const params = new URLSearchParams();
  if (filters.name) params.set("PatientName", namePattern(filters.name));
  if (filters.patientId) params.set("PatientID", prefixPattern(filters.patientId));
  if (filters.from || filters.to) params.set("StudyDate", `${compactDate(filters.from)}-${compactDate(filters.to)}`);
  if (filters.modality) params.set("ModalitiesInStudy", filters.modality);
  // One more than a page tells whether there is a next page without counting the whole index.
  params.set("limit", String(PAGE_SIZE + 1));
  params.set("offset", String(offset));
  return `${DICOMWEB}/studies?${params}`;
}

const hasFilters = (filters) => Object.values(filters).some(Boolean);

async function searchStudies(filters, offset) {
  if (filters.from && filters.to && filters.from > filters.to) {
    picker.dateError.textContent = t("imaging.picker.date_order");
    picker.to.setAttribute("aria-invalid", "true");
    picker.to.focus();
    return;
  }
  picker.dateError.textContent = "";
  picker.to.removeAttribute("aria-invalid");
  picker.filters = filters;
  picker.offset = offset;
  // Back from a study comes to the same search (kept in this history entry, not in the address or storage).
  history.replaceState({ picker: { filters, offset } }, "");
  const ticket = ++picker.ticket;
  picker.status.textContent = t("imaging.picker.loading");
  picker.list.setAttribute("aria-busy", "true");
  clearFailure();
  try {
    const { items } = await searchJson(studyQuery(filters, offset));
    if (ticket !== picker.ticket) return;
    picker.more = items.length > PAGE_SIZE;
    picker.items = items.slice(0, PAGE_SIZE);
    picker.loaded = true;
    renderStudies();
  } catch (error) {
    if (ticket !== picker.ticket) return;
    picker.items = [];
    picker.more = false;
    picker.loaded = false;
    renderStudies();
    picker.status.textContent = "";
    picker.empty.hidden = true;
    showFailure(error, "search", () => searchStudies(filters, offset));
  } finally {
    if (ticket === picker.ticket) picker.list.removeAttribute("aria-busy");
  }
}

function studyItem(attributes) {
  const uid = first(attributes, TAG.studyUid);
  const link = element("a", "study-item");
  link.href = `/imaging/viewer?study=${encodeURIComponent(uid)}`;
  link.dataset.study = uid;
  const name = displayName(first(attributes, TAG.patientName));
  const head = element("span", "study-patient");
  head.append(element("strong", "study-name", name.primary));
  if (name.secondary) head.append(" ", element("span", "muted study-name-other", name.secondary));
  const meta = element("span", "study-meta");
  const patientId = first(attributes, TAG.patientId);
  const when = [formatDate(first(attributes, TAG.studyDate)), formatTime(first(attributes, TAG.studyTime))];
  for (const part of [
    patientId ? `${t("imaging.picker.patient_id_short")} ${maskedPatientId(patientId)}` : "",
    sexText(first(attributes, TAG.patientSex)),
    when.filter(Boolean).join(" "),
    values(attributes, TAG.modalities).join("/"),
  ]) {
    if (part) meta.append(element("span", "", part));
  }
  const description = first(attributes, TAG.studyDescription);
  const counts = t("imaging.picker.counts", {
    series: first(attributes, TAG.seriesInStudy) ?? "?",
    images: first(attributes, TAG.instancesInStudy) ?? "?",
  });
  link.append(
    head,
    meta,
    element("span", description ? "study-desc" : "study-desc muted", description || t("imaging.picker.no_description")),
    element("span", "study-counts muted", counts),
  );
  link.addEventListener("click", (event) => {
    if (event.button === 0 && !event.metaKey && !event.ctrlKey && !event.shiftKey && !event.altKey) {
      sessionStorage.setItem(BACK_FLAG, uid);
    }
  });
  const item = element("li");
  item.append(link);
  return item;
}

function renderStudies() {
  picker.list.replaceChildren(...picker.items.filter((item) => first(item, TAG.studyUid)).map(studyItem));
  const count = picker.items.length;
  picker.empty.hidden = count > 0;
  if (!count) {
    const key = hasFilters(picker.filters) || picker.offset ? "imaging.picker.empty" : "imaging.picker.empty_all";
    picker.empty.querySelector(".picker-empty-title").textContent = t(key);
  }
  picker.status.textContent = count
    ? t("imaging.picker.count", { from: picker.offset + 1, to: picker.offset + count })
    : "";
  picker.pager.hidden = !picker.offset && !picker.more;
  picker.prev.disabled = picker.offset === 0;
  picker.next.disabled = !picker.more;
  picker.pageInfo.textContent = t("imaging.picker.page", { page: Math.floor(picker.offset / PAGE_SIZE) + 1 });
}

function startPicker() {
  $("study-picker").hidden = false;
  picker.form.addEventListener("submit", (event) => {
    event.preventDefault();
    searchStudies(readFilters(), 0);
  });
  picker.form.addEventListener("reset", () => {
    // After the browser has emptied the fields: the whole list again.
    setTimeout(() => searchStudies(readFilters(), 0), 0);
  });
  picker.prev.addEventListener("click", () => searchStudies(picker.filters, Math.max(0, picker.offset - PAGE_SIZE)));
  picker.next.addEventListener("click", () => searchStudies(picker.filters, picker.offset + PAGE_SIZE));
  const kept = history.state?.picker;
  const filters = kept?.filters && typeof kept.filters === "object" ? kept.filters : {};
  writeFilters(filters);
  searchStudies(readFilters(), Number(kept?.offset) || 0);
}

// ---------------------------------------------------------------- the study

const view = {
  summary: $("study-summary"),
  seriesList: $("series-list"),
  image: $("viewer-image"),
  hint: $("viewer-hint"),
  busy: $("viewer-busy"),
  frame: $("viewer-frame"),
  range: $("slice-range"),
  indexOut: $("slice-index"),
  imageError: $("image-error"),
  readout: $("wl-readout"),
  windowHint: $("wl-hint"),
  reset: $("wl-reset"),
  presets: [...document.querySelectorAll("button.preset[data-preset]")],
};

const state = {
  studyAttributes: null,
  series: [],
  current: null,
  instances: [],
  positions: [],
  index: 0,
  window: null, // {center, width} chosen by preset or drag; null: the image's own
  requestWindow: null, // the window images are asked for: follows `window` once a drag rests
  preset: "default",
  hintKey: "imaging.viewer.pick",
  imageFailure: null,
};
const instanceCache = new Map();
const imageCache = new Map();
const loader = { busy: false, shown: "", failed: "" };

const studyPath = () => `${DICOMWEB}/studies/${encodeURIComponent(study)}`;
const seriesPath = (uid) => `${studyPath()}/series/${encodeURIComponent(uid)}`;

function instancesOf(uid) {
  if (!instanceCache.has(uid)) {
    const path = `${seriesPath(uid)}/instances?includefield=${INSTANCE_FIELDS.join(",")}`;
    const loading = searchAll(path).then((items) =>
      items
        .map((item) => ({
          uid: first(item, TAG.sop),
          number: number(item, TAG.number) ?? 0,
          frames: Math.max(1, Math.floor(number(item, TAG.frames) ?? 1)),
          center: number(item, TAG.windowCenter),
          width: number(item, TAG.windowWidth),
          intercept: number(item, TAG.rescaleIntercept) ?? 0,
          slope: number(item, TAG.rescaleSlope) ?? 1,
          bitsStored: number(item, TAG.bitsStored),
        }))
        .filter((item) => item.uid)
        .sort((a, b) => a.number - b.number),
    );
    instanceCache.set(uid, loading);
    loading.catch(() => instanceCache.delete(uid));
  }
  return instanceCache.get(uid);
}

function seriesLabel(info) {
  return t("imaging.viewer.series_label", { number: info.number ?? "–", modality: info.modality ?? "", count: info.count ?? "?" });
}

function renderSummary() {
  const attributes = state.studyAttributes;
  view.summary.replaceChildren();
  if (!attributes) return;
  const name = displayName(first(attributes, TAG.patientName));
  view.summary.append(element("strong", "study-name", name.primary));
  if (name.secondary) view.summary.append(" ", element("span", "muted", name.secondary));
  const patientId = first(attributes, TAG.patientId);
  const parts = [
    patientId ? `${t("imaging.picker.patient_id_short")} ${maskedPatientId(patientId)}` : "",
    sexText(first(attributes, TAG.patientSex)),
    formatDate(first(attributes, TAG.studyDate)),
    values(attributes, TAG.modalities).join("/"),
    first(attributes, TAG.studyDescription) || "",
  ].filter(Boolean);
  for (const part of parts) view.summary.append(element("span", "study-summary-part", part));
}

async function loadThumbnail(info, img) {
  try {
    const instances = await instancesOf(info.uid);
    if (!instances.length) return;
    const middle = instances[Math.floor(instances.length / 2)];
    const blob = await (await request(`${seriesPath(info.uid)}/instances/${encodeURIComponent(middle.uid)}/thumbnail`, "image/jpeg")).blob();
    img.src = URL.createObjectURL(blob);
    img.hidden = false;
  } catch {
    img.classList.add("is-broken");
  }
}

function renderSeries() {
  view.seriesList.replaceChildren();
  const observer =
    "IntersectionObserver" in window
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
    const button = element("button", "series-item");
    button.type = "button";
    button.dataset.position = String(position);
    button.dataset.series = info.uid;
    button.setAttribute("aria-pressed", String(info.uid === state.current));
    const img = element("img", "series-thumb");
    img.alt = "";
    img.width = 96;
    img.height = 96;
    img.hidden = true;
    const label = element("span", "series-label", seriesLabel(info));
    button.append(img, label);
    button.addEventListener("click", () => selectSeries(position));
    item.append(button);
    view.seriesList.append(item);
    if (observer) observer.observe(button);
    else loadThumbnail(info, img);
  });
}

// ---------------------------------------------------------------- position, window and the image

const currentPosition = () => state.positions[state.index] || null;
const currentInstance = () => {
  const position = currentPosition();
  return position ? state.instances[position.instance] : null;
};

/** Whether an image is shown whose window can be changed (every frame is rendered with the asked window). */
function windowAdjustable() {
  return Boolean(currentInstance());
}

function roundWindowValue(value, width) {
  return width >= 20 ? Math.round(value) : Math.round(value * 100) / 100;
}

/** The window the image is shown with when none is chosen: the stored one (PS3.3 C.11.2), or else the full
 *  range of the stored bits through the rescale (C.11.1), which is what the server falls back to as well. */
function storedWindow(instance) {
  if (!instance) return null;
  if (instance.center !== null && instance.width !== null && instance.width > 0) {
    return { center: instance.center, width: instance.width };
  }
  if (instance.bitsStored) {
    const range = 2 ** instance.bitsStored * instance.slope;
    return { center: instance.intercept + range / 2, width: Math.abs(range) };
  }
  return null;
}

function windowQuery() {
  if (!state.requestWindow) return "";
  const { center, width } = state.requestWindow;
  return `?window=${roundWindowValue(center, width)},${roundWindowValue(width, width)}`;
}

function imagePath(position) {
  const instance = state.instances[position.instance];
  const base = `${seriesPath(state.current)}/instances/${encodeURIComponent(instance.uid)}`;
  if (instance.frames === 1) return `${base}/rendered${windowQuery()}`;
  // Frame n of a multi-frame instance (PS3.18 §10.4.1.1.4), in the same window as any other image.
  return `${base}/frames/${position.frame}/rendered${windowQuery()}`;
}

function wantedPath() {
  const position = currentPosition();
  return position ? imagePath(position) : "";
}

function showHint(key) {
  state.hintKey = key;
  view.hint.textContent = t(key);
  view.hint.hidden = false;
}

function showIndex() {
  const total = state.positions.length;
  const position = currentPosition();
  const instance = currentInstance();
  let text = "";
  if (position && instance) {
    text = `${position.instance + 1} / ${state.instances.length}`;
    if (instance.frames > 1) text += ` · ${t("imaging.viewer.frame_of", { frame: position.frame, frames: instance.frames })}`;
  }
  view.indexOut.textContent = text;
  view.range.max = String(Math.max(total, 1));
  view.range.value = String(state.index + 1);
  view.range.disabled = total < 2;
}

function showWindow() {
  const adjustable = windowAdjustable();
  for (const button of view.presets) {
    button.setAttribute("aria-pressed", String(button.dataset.preset === state.preset));
  }
  view.reset.disabled = !adjustable || !state.window;
  view.frame.classList.toggle("is-adjustable", adjustable);
  view.windowHint.textContent = t("imaging.viewer.drag_hint");
  const shown = state.window || storedWindow(currentInstance());
  view.readout.textContent = shown
    ? t("imaging.viewer.wl", {
        width: roundWindowValue(shown.width, shown.width),
        center: roundWindowValue(shown.center, shown.width),
      })
    : t("imaging.viewer.wl_default");
}

function showImageFailure() {
  const failure = state.imageFailure;
  view.imageError.hidden = !failure;
  view.imageError.textContent = failure ? failureText(failure, "image") : "";
}

async function fetchImage(path) {
  if (imageCache.has(path)) {
    const url = imageCache.get(path);
    imageCache.delete(path);
    imageCache.set(path, url); // most recently used last
    return url;
  }
  const blob = await (await request(path, "image/jpeg")).blob();
  const url = URL.createObjectURL(blob);
  imageCache.set(path, url);
  for (const [key, old] of imageCache) {
    if (imageCache.size <= IMAGE_CACHE_LIMIT) break;
    if (old === view.image.src) continue;
    imageCache.delete(key);
    URL.revokeObjectURL(old);
  }
  return url;
}

/** Fetch the wanted image unless one is in flight; when that one ends, fetch whatever is wanted then. */
async function pump() {
  if (loader.busy) return;
  const path = wantedPath();
  if (!path || path === loader.shown || path === loader.failed) {
    view.busy.hidden = true;
    return;
  }
  loader.busy = true;
  view.busy.hidden = false;
  try {
    const url = await fetchImage(path);
    if (path === wantedPath()) {
      view.image.src = url;
      view.image.hidden = false;
      view.hint.hidden = true;
      loader.shown = path;
      state.imageFailure = null;
      showImageFailure();
    }
  } catch (error) {
    if (path === wantedPath()) {
      loader.failed = path;
      state.imageFailure = error;
      showImageFailure();
    }
  } finally {
    loader.busy = false;
    if (wantedPath() !== loader.shown) pump();
    else view.busy.hidden = true;
  }
}

function show() {
  state.requestWindow = state.window;
  loader.failed = "";
  showIndex();
  showWindow();
  pump();
}

let windowTimer = 0;

function setWindow(next, preset) {
  state.window = next;
  state.preset = preset;
  showWindow();
}

/** Ask for the image in the new window once the hand rests, not on every pixel of a drag. */
function renderWindowSoon() {
  clearTimeout(windowTimer);
  windowTimer = setTimeout(show, WINDOW_DEBOUNCE_MS);
}

function renderWindowNow() {
  clearTimeout(windowTimer);
  show();
}

async function selectSeries(position) {
  const info = state.series[position];
  if (!info) return;
  for (const button of view.seriesList.querySelectorAll(".series-item")) {
    button.setAttribute("aria-pressed", String(button.dataset.position === String(position)));
  }
  state.current = info.uid;
  state.instances = [];
  state.positions = [];
  state.index = 0;
  showIndex();
  showHint("imaging.viewer.loading");
  try {
    const instances = await instancesOf(info.uid);
    if (state.current !== info.uid) return;
    state.instances = instances;
    state.positions = instances.flatMap((instance, index) =>
      Array.from({ length: instance.frames }, (_, frame) => ({ instance: index, frame: frame + 1 })),
    );
    if (!state.positions.length) {
      showHint("imaging.viewer.no_images");
      return;
    }
    show();
  } catch (error) {
    if (state.current === info.uid) showFailure(error, "study", () => selectSeries(position));
  }
}

function step(delta) {
  const total = state.positions.length;
  if (!total) return;
  const next = Math.min(total - 1, Math.max(0, state.index + delta));
  if (next === state.index) return;
  state.index = next;
  show();
}

function bindControls() {
  view.frame.addEventListener(
    "wheel",
    (event) => {
      if (!state.positions.length) return;
      event.preventDefault();
      step(event.deltaY > 0 ? 1 : -1);
    },
    { passive: false },
  );
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement) return;
    const moves = { ArrowDown: 1, ArrowRight: 1, PageDown: 10, ArrowUp: -1, ArrowLeft: -1, PageUp: -10 };
    if (event.key in moves) {
      event.preventDefault();
      step(moves[event.key]);
    } else if (event.key === "Home" || event.key === "End") {
      event.preventDefault();
      step(event.key === "Home" ? -state.positions.length : state.positions.length);
    }
  });
  view.range.addEventListener("input", () => {
    const next = Number(view.range.value) - 1;
    if (next !== state.index && next >= 0 && next < state.positions.length) {
      state.index = next;
      show();
    }
  });
  for (const button of view.presets) {
    button.addEventListener("click", () => {
      const [center, width] = (button.dataset.window || "").split(",").map(Number);
      const chosen = Number.isFinite(center) && width > 0 ? { center, width } : null;
      setWindow(chosen, button.dataset.preset);
      renderWindowNow();
    });
  }
  view.reset.addEventListener("click", () => {
    setWindow(null, "default");
    renderWindowNow();
  });
  bindDrag();
}

/** Drag on the image (mouse, pen or one finger): horizontal changes the width, vertical the centre, as in
 *  most PACS viewers (right: wider, down: higher centre, so darker). The step grows with the window, so a
 *  brain window and a bone window both move at a usable pace. */
function bindDrag() {
  let drag = null;
  view.frame.addEventListener("pointerdown", (event) => {
    if (!event.isPrimary || !state.positions.length || !windowAdjustable()) return;
    if (event.pointerType === "mouse" && event.button !== 0) return;
    const start = state.window || storedWindow(currentInstance()) || { center: 40, width: 400 };
    drag = { id: event.pointerId, x: event.clientX, y: event.clientY, start, moved: false };
    view.frame.setPointerCapture(event.pointerId);
    view.frame.focus({ preventScroll: true });
    event.preventDefault();
  });
  view.frame.addEventListener("pointermove", (event) => {
    if (!drag || event.pointerId !== drag.id) return;
    const dx = event.clientX - drag.x;
    const dy = event.clientY - drag.y;
    if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 3) return;
    drag.moved = true;
    const pace = Math.max(drag.start.width, 1) / 256;
    const width = Math.max(1, drag.start.width + dx * pace);
    const center = drag.start.center + dy * pace;
    setWindow({ center: roundWindowValue(center, width), width: roundWindowValue(width, width) }, "custom");
    renderWindowSoon();
  });
  const end = (event) => {
    if (!drag || event.pointerId !== drag.id) return;
    const moved = drag.moved;
    drag = null;
    if (view.frame.hasPointerCapture(event.pointerId)) view.frame.releasePointerCapture(event.pointerId);
    if (moved) renderWindowNow();
  };
  view.frame.addEventListener("pointerup", end);
  view.frame.addEventListener("pointercancel", end);
}

async function loadStudySummary() {
  try {
    const { items } = await searchJson(`${DICOMWEB}/studies?StudyInstanceUID=${encodeURIComponent(study)}`);
    state.studyAttributes = items[0] || null;
    renderSummary();
  } catch {
    // The series request below reports what went wrong; the summary is a courtesy.
  }
}

async function loadStudy() {
  clearFailure();
  let items;
  try {
    items = await searchAll(`${studyPath()}/series`);
  } catch (error) {
    showFailure(error, "study", loadStudy);
    showHint("imaging.viewer.unavailable");
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
    showHint("imaging.viewer.no_series");
    return;
  }
  renderSeries();
  selectSeries(0);
}

function startStudy() {
  $("study-view").hidden = false;
  const back = $("back-to-list");
  back.addEventListener("click", (event) => {
    // Came from the list in this tab: go back to it, with its search, rather than to an empty one.
    if (sessionStorage.getItem(BACK_FLAG) === study) {
      sessionStorage.removeItem(BACK_FLAG);
      event.preventDefault();
      history.back();
    }
  });
  bindControls();
  showWindow();
  loadStudySummary();
  loadStudy();
}

// ---------------------------------------------------------------- de-identified export

// Radiologists and specialists may hand a study on for teaching or a second opinion as a de-identified copy
// (PS3.15 basic profile). The server builds it in the background; the page shows its progress and, once it is
// ready, fetches it with the bearer token and saves it. The copy is the requester's alone and expires in days.
const EXPORT_ROLES = Object.freeze(["radiologist", "specialist"]);
const EXPORT_POLL_MS = 1_500;
const exportView = {
  form: $("study-export"),
  purpose: $("export-purpose"),
  start: $("export-start"),
  download: $("export-download"),
  status: $("export-status"),
};
const exporting = { job: null, status: null, timer: 0 };

function showExportStatus(key, values) {
  exporting.status = key ? { key, values } : null;
  exportView.status.textContent = key ? t(key, values) : "";
}

function showExportFailure(text) {
  exporting.status = { text };
  exportView.status.textContent = text;
}

function showExport(job) {
  exporting.job = job;
  const busy = job.status === "queued" || job.status === "running";
  exportView.start.disabled = busy;
  exportView.download.hidden = job.status !== "done";
  if (job.status === "queued") showExportStatus("imaging.export.queued");
  else if (job.status === "running") {
    showExportStatus("imaging.export.running", { done: job.progress.done, total: job.progress.total });
  } else if (job.status === "done") {
    showExportStatus("imaging.export.done", { count: job.progress.done - job.progress.skipped });
  } else if (job.status === "expired") showExportStatus("imaging.export.expired");
  else showExportFailure(t("imaging.export.failed", { reason: job.reason_message || job.reason || "" }));
  clearTimeout(exporting.timer);
  if (busy) exporting.timer = setTimeout(followExport, EXPORT_POLL_MS);
}

async function followExport() {
  if (!exporting.job) return;
  try {
    showExport(await api(`/api/v1/imaging/exports/${exporting.job.id}`));
  } catch (error) {
    if (error instanceof ApiError && error.status === 0) {
      exporting.timer = setTimeout(followExport, EXPORT_POLL_MS * 4); // offline for now: keep following
      return;
    }
    exportView.start.disabled = false;
    showExportFailure(problemText(error));
  }
}

async function startExport(event) {
  event.preventDefault();
  exportView.start.disabled = true;
  exportView.download.hidden = true;
  showExportStatus("imaging.export.queued");
  try {
    showExport(await api("/api/v1/imaging/exports", { method: "POST", json: { study_uid: study, purpose: exportView.purpose.value } }));
  } catch (error) {
    exportView.start.disabled = false;
    showExportFailure(problemText(error));
  }
}

async function downloadExport() {
  const job = exporting.job;
  if (!job || job.status !== "done") return;
  exportView.download.disabled = true;
  try {
    const response = await request(`/api/v1/imaging/exports/${job.id}/download`, "application/zip");
    const disposition = response.headers.get("Content-Disposition") || "";
    const name = /filename="([^"]+)"/.exec(disposition)?.[1] || "telemed-deid.zip";
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    showExportFailure(failureText(error, "study"));
  } finally {
    exportView.download.disabled = false;
  }
}

function startExportPanel(me) {
  if (!EXPORT_ROLES.includes(me.role)) return;
  exportView.form.hidden = false;
  exportView.form.addEventListener("submit", startExport);
  exportView.download.addEventListener("click", downloadExport);
}

// ---------------------------------------------------------------- start

function retranslate() {
  if (exporting.status) {
    const { key, values, text } = exporting.status;
    if (key) exportView.status.textContent = t(key, values);
    else if (exporting.job) showExport(exporting.job);
    else exportView.status.textContent = text;
  }
  if (pageFailure) errorText.textContent = failureText(pageFailure.error, pageFailure.what);
  if (!study) {
    if (picker.loaded) renderStudies();
    return;
  }
  renderSummary();
  for (const label of view.seriesList.querySelectorAll(".series-item")) {
    const info = state.series[Number(label.dataset.position)];
    if (info) label.querySelector(".series-label").textContent = seriesLabel(info);
  }
  if (!view.hint.hidden) view.hint.textContent = t(state.hintKey);
  showIndex();
  showWindow();
  showImageFailure();
}

async function start() {
  const me = await startSignedInPage({ roles: CLINICAL_ROLES });
  if (!me) return;
  onLanguageChange(retranslate);
  if (study) {
    startStudy();
    startExportPanel(me);
  } else startPicker();
}

start();
