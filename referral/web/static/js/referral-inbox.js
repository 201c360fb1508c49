// The referral desk: referrals received (with the clock for acknowledging each), sent, and awaiting this
// township's review; each with the actions the server says this user may take now.
import { CLINICAL_ROLES, api, problemText, revealForRole, showNotice, startSignedInPage } from "/static/js/core.js";
import { applyReferralTexts, duration, element, onReferralLanguageChange, rt } from "./referral-i18n.js";

const REASONS = ["capacity-full", "outside-capability", "incomplete-info", "wrong-tier", "patient-declined"];
const CLOCK_EVERY_MS = 30_000;

const list = document.getElementById("referral-list");
const summary = document.getElementById("inbox-summary");
const errorBox = document.getElementById("inbox-error");
const okBox = document.getElementById("inbox-ok");
const statusFilter = document.getElementById("status-filter");
const state = { box: "inbox", items: [], total: 0, okAction: null };

function patientText(referral) {
  const p = referral.patient;
  if (!p) return rt("referral.item.unknown_patient");
  return `${p.name} · ${rt(`referral.sex.${p.sex}`)} · ${rt("referral.item.age", { age: p.age })}`;
}

function clockText(node) {
  const due = Date.parse(node.dataset.due);
  const left = due - Date.now();
  node.classList.toggle("is-overdue", left < 0);
  node.textContent = left >= 0 ? rt("referral.sla.left", { time: duration(left) }) : rt("referral.sla.overdue", { time: duration(left) });
}

function updateClocks() {
  for (const node of list.querySelectorAll(".sla-clock[data-due]")) clockText(node);
}

function actionForm(referral, action, container) {
  const formNode = element("form", { className: "action-form" });
  formNode.noValidate = true;
  const idBase = `${action}-${referral.id}`;
  if (action === "reject" || action === "return") {
    const select = element("select", { attrs: { id: `${idBase}-reason`, name: "reason_code" } });
    const codes = action === "return" ? ["incomplete-info", ...REASONS.filter((c) => c !== "incomplete-info")] : REASONS;
    select.append(...codes.map((code) => element("option", { text: rt(`referral.reason.${code}`), attrs: { value: code } })));
    const note = element("input", { attrs: { id: `${idBase}-note`, name: "note", type: "text", maxlength: "2000" } });
    formNode.append(
      element("label", { text: rt("referral.action.reason"), attrs: { for: select.id } }), select,
      element("label", { text: rt("referral.action.note"), attrs: { for: note.id } }), note,
    );
  } else if (action === "complete") {
    const text = element("textarea", { attrs: { id: `${idBase}-summary`, name: "summary", rows: "3", maxlength: "8000", required: "" } });
    formNode.append(element("label", { text: rt("referral.action.summary"), attrs: { for: text.id } }), text);
  }
  const confirm = element("button", { className: "btn btn-primary", text: rt("referral.action.confirm"), attrs: { type: "submit" } });
  const cancel = element("button", { className: "btn btn-quiet", text: rt("referral.action.cancel"), attrs: { type: "button" } });
  cancel.addEventListener("click", () => formNode.remove());
  formNode.append(element("div", { className: "form-actions" }, confirm, cancel));
  formNode.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {};
    for (const name of ["reason_code", "note", "summary"]) {
      const control = formNode.elements.namedItem(name);
      if (control && control.value.trim()) body[name] = control.value.trim();
    }
    await perform(referral, action, body);
  });
  container.replaceChildren(formNode);
  formNode.querySelector("select, input, textarea")?.focus();
}

async function perform(referral, action, body) {
  showNotice(errorBox, "");
  showNotice(okBox, "");
  try {
    await api(`/api/v1/referrals/${referral.id}/${action}`, { method: "POST", json: body });
    state.okAction = action;
    showNotice(okBox, rt("referral.action.done", { action: rt(`referral.action.${action}`) }));
    await load();
  } catch (error) {
    showNotice(errorBox, problemText(error));
  }
}

function referralItem(referral) {
  const item = element("li", { className: "referral-item" });
  item.dataset.referralId = referral.id;
  item.dataset.priority = referral.priority;
  item.dataset.status = referral.status;
  const head = element(
    "div",
    { className: "referral-head" },
    element("strong", { className: "referral-patient", text: patientText(referral) }),
    element("span", { className: `badge priority-${referral.priority}`, text: rt(`referral.priority.${referral.priority}`) }),
    element("span", { className: "badge badge-muted referral-status", text: rt(`referral.status.${referral.status}`) }),
  );
  if (referral.green_channel) head.append(element("span", { className: "badge badge-green", text: rt("referral.item.green") }));
  if (!referral.compliant) head.append(element("span", { className: "badge badge-warn", text: rt("referral.item.noncompliant") }));
  const route = `${referral.from_facility.name} → ${referral.to_facility.name} · ${rt(`referral.direction.${referral.direction}`)}`;
  const meta = element("div", { className: "referral-meta" }, element("span", { text: route }));
  if (referral.icd10.length) meta.append(element("span", { className: "mono", text: referral.icd10.join(", ") }));
  item.append(head, meta);
  if (referral.ack_due_at) {
    const clock = element("span", { className: "sla-clock" });
    clock.dataset.due = referral.ack_due_at;
    clockText(clock);
    const line = element("div", { className: "referral-sla" }, clock);
    if (referral.escalated_at) line.append(element("span", { className: "badge badge-warn", text: rt("referral.sla.escalated") }));
    item.append(line);
  }
  if (referral.status_reason) {
    item.append(element("p", { className: "muted", text: rt("referral.item.reason", { reason: rt(`referral.reason.${referral.status_reason}`) }) }));
  }
  const actions = element("div", { className: "referral-actions" });
  const formSlot = element("div", { className: "action-slot" });
  for (const action of referral.actions) {
    const button = element("button", { className: "btn btn-quiet", text: rt(`referral.action.${action}`), attrs: { type: "button" } });
    button.dataset.action = action;
    button.addEventListener("click", () => {
      if (["reject", "return", "complete"].includes(action)) actionForm(referral, action, formSlot);
      else perform(referral, action, {});
    });
    actions.append(button);
  }
  if (referral.actions.length) item.append(actions, formSlot);
  return item;
}

function render() {
  list.replaceChildren(...state.items.map(referralItem));
  summary.textContent = state.total ? rt("referral.inbox.total", { total: state.total }) : rt("referral.inbox.empty");
  for (const tab of document.querySelectorAll("[role=tab][data-box]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.box === state.box));
  }
  if (state.okAction) showNotice(okBox, rt("referral.action.done", { action: rt(`referral.action.${state.okAction}`) }));
}

async function load() {
  showNotice(errorBox, "");
  const query = new URLSearchParams({ box: state.box, limit: "100" });
  if (statusFilter.value) query.append("status", statusFilter.value);
  try {
    const page = await api(`/api/v1/referrals?${query}`);
    state.items = page.items;
    state.total = page.total;
  } catch (error) {
    state.items = [];
    state.total = 0;
    showNotice(errorBox, problemText(error));
  }
  render();
}

for (const tab of document.querySelectorAll("[role=tab][data-box]")) {
  tab.addEventListener("click", () => {
    state.box = tab.dataset.box;
    state.okAction = null;
    showNotice(okBox, "");
    load();
  });
}
statusFilter.addEventListener("change", load);
document.getElementById("refresh").addEventListener("click", load);
onReferralLanguageChange(render);

applyReferralTexts();
const me = await startSignedInPage({ roles: [...CLINICAL_ROLES] });
if (me) {
  const app = document.getElementById("inbox-app");
  revealForRole(app, me.role);
  const wanted = new URLSearchParams(location.search).get("box");
  if (["inbox", "outbox", "review"].includes(wanted)) state.box = wanted;
  app.hidden = false;
  await load();
  setInterval(updateClocks, CLOCK_EVERY_MS);
}
