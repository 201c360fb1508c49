// Shared by every page: texts and the language switch, the session (tokens in sessionStorage, refreshed
// before they expire), the API client that speaks problem+json, and the page shell (navigation, sign-out).

const KEYS = Object.freeze({
  access: "telemed.access_token",
  refresh: "telemed.refresh_token",
  expiresAt: "telemed.expires_at",
  role: "telemed.role",
  lang: "telemed.lang",
  notice: "telemed.notice",
});

export const LANGUAGES = Object.freeze(["zh-CN", "en"]);
export const CLINICAL_ROLES = Object.freeze(["village_doctor", "township_doctor", "specialist", "radiologist"]);

// Refresh this long before the access token expires, so that a request never carries a stale one.
const REFRESH_MARGIN_MS = 60_000;

// ---------------------------------------------------------------- texts and language

let messages = readJson("i18n-messages", {});
let lang = document.documentElement.lang || "zh-CN";
const languageListeners = [];
// A domain's page names where its own texts live (``/static-referral/i18n/``); a language switch loads them
// with the shell's, so that its [data-i18n] nodes and t() speak the new language too. Paths on this site only.
const messageSources = readJson("i18n-sources", []).filter(
  (source) => typeof source === "string" && source.startsWith("/") && !source.startsWith("//"),
);

export function readJson(id, fallback) {
  const node = document.getElementById(id);
  if (!node) return fallback;
  try {
    return JSON.parse(node.textContent);
  } catch {
    return fallback;
  }
}

export function t(key, values) {
  let text = Object.prototype.hasOwnProperty.call(messages, key) ? messages[key] : key;
  if (values) {
    for (const [name, value] of Object.entries(values)) text = text.replaceAll(`{${name}}`, String(value));
  }
  return text;
}

export function currentLanguage() {
  return lang;
}

export function onLanguageChange(listener) {
  languageListeners.push(listener);
}

export function applyTranslations(root = document) {
  for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of root.querySelectorAll("[data-i18n-aria-label]")) {
    node.setAttribute("aria-label", t(node.dataset.i18nAriaLabel));
  }
  for (const node of root.querySelectorAll("[data-i18n-placeholder]")) {
    node.setAttribute("placeholder", t(node.dataset.i18nPlaceholder));
  }
  const titleKey = document.body.dataset.titleKey;
  if (titleKey) document.title = `${t(titleKey)} · ${t("app.title")}`;
  for (const button of document.querySelectorAll(".lang-switch [data-lang]")) {
    button.setAttribute("aria-pressed", String(button.dataset.lang === lang));
  }
}

function rememberLanguage(next) {
  try {
    localStorage.setItem(KEYS.lang, next);
  } catch {
    // Private mode: the cookie alone still carries the choice.
  }
  // The server renders pages in this language, and the API answers problem documents in it.
  document.cookie = `lang=${encodeURIComponent(next)}; path=/; max-age=31536000; SameSite=Lax`;
}

async function fetchMessages(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

export async function setLanguage(next) {
  if (!LANGUAGES.includes(next)) return;
  if (next !== lang) {
    let shell;
    try {
      shell = await fetchMessages(`/static/i18n/${next}.json`);
    } catch {
      return; // offline: stay in the current language rather than half switch
    }
    // A domain file that fails leaves its texts in the previous language, never as bare keys.
    const own = await Promise.all(messageSources.map((source) => fetchMessages(`${source}${next}.json`).catch(() => ({}))));
    messages = Object.assign({}, messages, shell, ...own);
    lang = next;
    document.documentElement.lang = next;
  }
  rememberLanguage(next);
  applyTranslations();
  for (const listener of languageListeners) listener(next);
}

function storedLanguage() {
  try {
    return localStorage.getItem(KEYS.lang);
  } catch {
    return null;
  }
}

function initLanguageSwitch() {
  for (const button of document.querySelectorAll(".lang-switch [data-lang]")) {
    button.addEventListener("click", () => setLanguage(button.dataset.lang));
  }
  const stored = storedLanguage();
  // The cookie went missing (cleared, or another path) but the choice is remembered: honour it.
  if (stored && stored !== lang && LANGUAGES.includes(stored)) setLanguage(stored);
}

// ---------------------------------------------------------------- session

export function hasSession() {
  return Boolean(sessionStorage.getItem(KEYS.access));
}

export function saveTokens(tokens) {
  sessionStorage.setItem(KEYS.access, tokens.access_token);
  sessionStorage.setItem(KEYS.refresh, tokens.refresh_token);
  sessionStorage.setItem(KEYS.expiresAt, String(Date.now() + Number(tokens.expires_in) * 1000));
  if (tokens.role) sessionStorage.setItem(KEYS.role, tokens.role);
  scheduleRefresh();
}

export function accessToken() {
  return sessionStorage.getItem(KEYS.access);
}

export function clearSession() {
  for (const key of [KEYS.access, KEYS.refresh, KEYS.expiresAt, KEYS.role]) sessionStorage.removeItem(key);
  clearTimeout(refreshTimer);
}

export function goToLogin(noticeKey) {
  clearSession();
  if (noticeKey) sessionStorage.setItem(KEYS.notice, noticeKey);
  location.replace("/login");
}

export function takeLoginNotice() {
  const key = sessionStorage.getItem(KEYS.notice);
  sessionStorage.removeItem(KEYS.notice);
  return key;
}

// The server ends a session after 30 idle minutes (MLPS level 3). A page left open must not keep it alive by
// refreshing on a timer, so a due refresh happens only if the user did something since the last one;
// otherwise it waits for the next request, which the server refuses once the session is idle too long.
let lastActivity = Date.now();
let lastRefresh = Date.now();
let refreshTimer = 0;
let refreshing = null;

for (const kind of ["pointerdown", "keydown", "touchstart"]) {
  addEventListener(kind, () => (lastActivity = Date.now()), { passive: true, capture: true });
}

function expiresAt() {
  return Number(sessionStorage.getItem(KEYS.expiresAt) || 0);
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  if (!hasSession()) return;
  const delay = Math.max(expiresAt() - Date.now() - REFRESH_MARGIN_MS, 5_000);
  refreshTimer = setTimeout(async () => {
    if (lastActivity <= lastRefresh) return; // idle: the next request refreshes, or learns the session ended
    try {
      await refreshTokens();
    } catch {
      goToLogin("error.session");
    }
  }, delay);
}

export function refreshTokens() {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    const refreshToken = sessionStorage.getItem(KEYS.refresh);
    if (!refreshToken) throw new ApiError(401, { title: t("error.session") });
    const body = new URLSearchParams({ grant_type: "refresh_token", refresh_token: refreshToken });
    let response;
    try {
      response = await fetch("/api/v1/auth/token", {
        method: "POST",
        body,
        headers: { Accept: "application/json", "Accept-Language": lang },
        cache: "no-store",
      });
    } catch {
      throw new ApiError(0, { title: t("error.network") });
    }
    if (!response.ok) throw new ApiError(response.status, await readProblem(response));
    lastRefresh = Date.now();
    saveTokens(await response.json());
  })();
  refreshing.finally(() => (refreshing = null)).catch(() => {});
  return refreshing;
}

async function ensureFreshToken() {
  if (!hasSession()) return;
  if (expiresAt() - Date.now() > REFRESH_MARGIN_MS / 2) return;
  try {
    await refreshTokens();
  } catch (error) {
    if (error instanceof ApiError && error.status === 0) throw error; // offline: keep the session
    goToLogin("error.session");
    throw error;
  }
}

// ---------------------------------------------------------------- API client

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }

  get fieldErrors() {
    return Array.isArray(this.problem.errors) ? this.problem.errors : [];
  }
}

async function readProblem(response) {
  try {
    return await response.json();
  } catch {
    return { title: t("error.generic") };
  }
}

/** The text to show for a failed call: the problem's detail, else its title, in the current language. */
export function problemText(error) {
  if (error instanceof ApiError) return error.problem.detail || error.problem.title || t("error.generic");
  return t("error.generic");
}

export async function api(path, { method = "GET", json, form } = {}) {
  await ensureFreshToken();
  const headers = { Accept: "application/json, application/problem+json", "Accept-Language": lang };
  const token = accessToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = new URLSearchParams(form);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: "no-store" });
  } catch {
    throw new ApiError(0, { title: t("error.network") });
  }
  if (response.status === 401 && token) {
    goToLogin("error.session");
    throw new ApiError(401, await readProblem(response));
  }
  if (!response.ok) throw new ApiError(response.status, await readProblem(response));
  if (response.status === 204) return null;
  return response.json();
}

// ---------------------------------------------------------------- forms

export function clearFieldErrors(form) {
  for (const output of form.querySelectorAll("[data-error-for]")) output.textContent = "";
  for (const control of form.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
}

/** Put each problem ``errors[]`` entry next to its field; returns the entries that name no field here. */
export function showFieldErrors(form, errors) {
  const unmatched = [];
  let first = null;
  for (const error of errors) {
    const field = String(error.field || "").split(".")[0];
    const output = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
    const control = form.elements.namedItem(field);
    if (!output || !control) {
      unmatched.push(error);
      continue;
    }
    const message = error.message && error.message !== error.code ? error.message : t("form.invalid");
    output.textContent = output.textContent ? `${output.textContent} ${message}` : message;
    control.setAttribute("aria-invalid", "true");
    first = first || control;
  }
  if (first) first.focus();
  return unmatched;
}

export function showNotice(node, text) {
  node.textContent = text;
  node.hidden = !text;
}

// ---------------------------------------------------------------- the page shell

export function roleName(me) {
  return lang === "en" ? me.role_name_en : me.role_name_zh;
}

export function formatDateTime(value) {
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return "";
  return new Intl.DateTimeFormat(lang, {
    timeZone: "Asia/Shanghai",
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    hour12: false,
  }).format(date);
}

/** Show the elements whose ``data-roles`` list names ``role`` (and hide the others). */
export function revealForRole(root, role) {
  for (const node of root.querySelectorAll("[data-roles]")) {
    node.hidden = !node.dataset.roles.split(/\s+/).includes(role);
  }
}

/**
 * Start a signed-in page: language switch, sign-out, navigation; resolves with ``/api/v1/me``.
 * ``roles`` (optional) lists who may use the page; anyone else sees the #forbidden notice and gets null.
 */
export async function startSignedInPage({ roles } = {}) {
  initLanguageSwitch();
  if (!hasSession()) {
    location.replace("/login");
    return null;
  }
  scheduleRefresh();
  const signOut = document.getElementById("sign-out");
  signOut.hidden = false;
  signOut.addEventListener("click", async () => {
    signOut.disabled = true;
    try {
      await api("/api/v1/auth/logout", { method: "POST" });
    } catch {
      // Signed out locally all the same; the server session expires on its own.
    }
    goToLogin("login.ended");
  });

  let me;
  try {
    me = await api("/api/v1/me");
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) {
      const main = document.getElementById("main");
      const notice = document.createElement("div");
      notice.className = "notice notice-error";
      notice.setAttribute("role", "alert");
      notice.textContent = problemText(error);
      main.prepend(notice);
    }
    return null;
  }

  const nav = document.getElementById("main-nav");
  revealForRole(nav, me.role);
  const page = document.body.dataset.page;
  for (const link of nav.querySelectorAll("a[data-nav]")) {
    if (link.dataset.nav === page) link.setAttribute("aria-current", "page");
  }
  nav.hidden = false;

  if (roles && !roles.includes(me.role)) {
    const forbidden = document.getElementById("forbidden");
    if (forbidden) forbidden.hidden = false;
    return null;
  }
  return me;
}

/** Start the sign-in page (no session needed). */
export function startPublicPage() {
  initLanguageSwitch();
}
