// The referral pages' texts: core.js holds them with the shell's (the page embeds both, and a language switch
// reloads /static-referral/i18n/ too, named in the page's i18n-sources block). Nodes of the domain carry data-rt;
// this module translates them after every switch and then tells the page to re-render what it built itself.
import { onLanguageChange, t } from "/static/js/core.js";

const listeners = [];

export function rt(key, values) {
  return t(key, values);
}

export function applyReferralTexts(root = document) {
  for (const node of root.querySelectorAll("[data-rt]")) node.textContent = rt(node.dataset.rt);
  for (const node of root.querySelectorAll("[data-rt-aria-label]")) {
    node.setAttribute("aria-label", rt(node.dataset.rtAriaLabel));
  }
}

export function onReferralLanguageChange(listener) {
  listeners.push(listener);
}

onLanguageChange((lang) => {
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
