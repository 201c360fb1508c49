// The referral pages' own texts, next to the shell's: core.js translates the shell's [data-i18n] nodes and
// reloads only the shell's messages on a language switch, so the domain keeps its messages here, translates
// its [data-rt] nodes itself and tells the page to re-render once its texts for the new language have arrived.
import { onLanguageChange, readJson, t as shellText } from "/static/js/core.js";

let messages = readJson("referral-messages", {});
const listeners = [];

export function rt(key, values) {
  let text = Object.prototype.hasOwnProperty.call(messages, key) ? messages[key] : shellText(key);
  if (values) {
    for (const [name, value] of Object.entries(values)) text = text.replaceAll(`{${name}}`, String(value));
  }
  return text;
}

export function applyReferralTexts(root = document) {
  for (const node of root.querySelectorAll("[data-rt]")) node.textContent = rt(node.dataset.rt);
  for (const node of root.querySelectorAll("[data-rt-aria-label]")) {
    node.setAttribute("aria-label", rt(node.dataset.rtAriaLabel));
  }
  const titleKey = document.body.dataset.rtTitle;
  if (titleKey) document.title = `${rt(titleKey)} · ${shellText("app.title")}`;
}

export function onReferralLanguageChange(listener) {
  listeners.push(listener);
}

onLanguageChange(async (lang) => {
  try {
    const response = await fetch(`/static-referral/i18n/${lang}.json`, { headers: { Accept: "application/json" } });
    if (response.ok) messages = await response.json();
  } catch {
    // Offline: the texts stay in the previous language rather than turning into keys.
  }
  applyReferralTexts();
  for (const listener of listeners) listener(lang);
});

/** "3 小时 20 分钟" / "3 h 20 min" for a duration in milliseconds (always positive). */
export function duration(ms) {
  const minutes = Math.max(0, Math.round(Math.abs(ms) / 60_000));
  if (minutes < 60) return rt("referral.time.minutes", { m: minutes });
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return rt("referral.time.hours", { h: hours, m: minutes % 60 });
  return rt("referral.time.days", { d: Math.floor(hours / 24), h: hours % 24 });
}

export function element(tag, { className, text, attrs } = {}, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  node.append(...children);
  return node;
}
