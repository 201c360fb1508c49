// A role's home: who is signed in, the cards for what the role does (with the links domains add), and the
// notifications addressed to the user or their facility, pushed live over the WebSocket.
import {
  ApiError,
  CLINICAL_ROLES,
  accessToken,
  api,
  applyTranslations,
  currentLanguage,
  formatDateTime,
  goToLogin,
  onLanguageChange,
  problemText,
  readJson,
  refreshTokens,
  revealForRole,
  roleName,
  startSignedInPage,
  t,
} from "./core.js";

function renderWho() {
  const heading = document.getElementById("welcome-heading");
  heading.removeAttribute("data-i18n");
  heading.textContent = t("home.welcome", { name: me.display_name });
  document.getElementById("me-role").textContent = roleName(me);
  document.getElementById("me-facility").textContent = me.facility_name || "";
  document.getElementById("who").hidden = false;
}

function renderDomainLinks() {
  const list = document.getElementById("home-cards");
  for (const old of list.querySelectorAll("li[data-domain-link]")) old.remove();
  const links = readJson("nav-links", []).filter((link) => link.roles.includes(me.role));
  for (const link of links) {
    const item = document.createElement("li");
    item.dataset.domainLink = link.domain;
    const anchor = document.createElement("a");
    anchor.className = "card card-link";
    anchor.href = link.href;
    const icon = document.createElement("span");
    icon.className = "card-icon";
    icon.setAttribute("aria-hidden", "true");
    const title = document.createElement("span");
    title.className = "card-title";
    title.textContent = currentLanguage() === "en" ? link.label_en : link.label_zh;
    anchor.append(icon, title);
    item.append(anchor);
    list.append(item);
  }
}

// ---------------------------------------------------------------- notifications

const notifications = [];
const seen = new Set();
let socket = null;
let retryDelay = 1_000;
let pingTimer = 0;

// The domains' own texts for their events (DomainPlugin.event_labels), by language; the shell's for its own.
const eventLabels = readJson("event-labels", {});

function eventText(name) {
  const label = (eventLabels[currentLanguage()] || {})[name];
  if (label) return label;
  const key = `event.${name}`;
  const text = t(key);
  return text === key ? t("event.unknown", { name }) : text;
}

function addNotification(item, { fresh = false } = {}) {
  if (seen.has(item.eventId)) return;
  seen.add(item.eventId);
  notifications.push({ ...item, fresh });
  notifications.sort((a, b) => String(b.at).localeCompare(String(a.at)));
  notifications.splice(50);
}

function renderNotifications() {
  const list = document.getElementById("notification-list");
  list.replaceChildren(
    ...notifications.map((item) => {
      const row = document.createElement("li");
      row.dataset.event = item.name;
      if (item.fresh) row.className = "is-new";
      const text = document.createElement("span");
      text.textContent = eventText(item.name);
      const time = document.createElement("time");
      time.dateTime = item.at;
      time.textContent = formatDateTime(item.at);
      row.append(text, time);
      return row;
    }),
  );
  document.getElementById("notifications-empty").hidden = notifications.length > 0;
}

function setLive(live) {
  const status = document.getElementById("live-status");
  status.dataset.state = live ? "live" : "offline";
  status.dataset.i18n = live ? "notifications.live" : "notifications.offline";
  applyTranslations(status.parentElement);
}

async function startNotifications() {
  document.getElementById("notifications").hidden = false;
  try {
    const stored = await api("/api/v1/notifications?limit=20");
    for (const n of stored) addNotification({ eventId: n.event_id, name: n.name, at: n.created_at });
  } catch (error) {
    document.getElementById("notifications-empty").textContent = problemText(error);
  }
  renderNotifications();
  connect();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${location.host}/api/v1/ws`);
  // The token goes in the first message, never the URL, where access logs would keep it.
  socket.addEventListener("open", () => socket.send(JSON.stringify({ type: "auth", token: accessToken() })));
  socket.addEventListener("message", (message) => {
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      return;
    }
    if (data.type === "ready") {
      retryDelay = 1_000;
      setLive(true);
      clearInterval(pingTimer);
      pingTimer = setInterval(() => socket.send(JSON.stringify({ type: "ping" })), 25_000);
    } else if (data.type === "event" && data.event) {
      const event = data.event;
      addNotification({ eventId: event.id, name: event.name, at: event.occurred_at }, { fresh: true });
      renderNotifications();
    }
  });
  socket.addEventListener("close", async (closing) => {
    setLive(false);
    clearInterval(pingTimer);
    if (closing.code === 4401) {
      // The access token expired while connecting: renew it once; if that fails the session is over.
      try {
        await refreshTokens();
      } catch (error) {
        if (!(error instanceof ApiError) || error.status !== 0) {
          goToLogin("error.session");
          return;
        }
      }
    }
    setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 30_000);
  });
}

// ---------------------------------------------------------------- start (last: the state above exists by now)

const me = await startSignedInPage();
if (me) {
  renderWho();
  renderDomainLinks();
  revealForRole(document.getElementById("home-cards"), me.role);
  document.getElementById("tasks").hidden = false;
  onLanguageChange(() => {
    renderWho();
    renderDomainLinks();
    renderNotifications();
  });
  // Notifications concern clinical work; the bureau sees no patient-level events and an admin none here.
  if (CLINICAL_ROLES.includes(me.role)) startNotifications();
}
