// The village doctor's referral form: patient, target, diagnoses and clinical facts, checked against the
// tiered-diagnosis rules as the form changes (POST /api/v1/referrals/evaluate stores nothing), then sent.
import {
  ApiError,
  api,
  clearFieldErrors,
  currentLanguage,
  problemText,
  showFieldErrors,
  showNotice,
  startSignedInPage,
} from "/static/js/core.js";
import { applyReferralTexts, element, onReferralLanguageChange, rt } from "./referral-i18n.js";

const SENDER_ROLES = ["village_doctor", "township_doctor", "specialist"];
// The facts a village doctor records most often; the policy's other facts sit behind "more".
const COMMON_FACTS = [
  "bp_sys", "bp_dia", "spo2", "rr", "temp", "gcs", "glucose", "consciousness", "pregnant", "severe_headache",
  "vomiting", "chest_back_pain", "suspected_acs", "suspected_stroke", "stable", "diagnosis_confirmed",
  "plan_suitable_for_primary", "complications_stable",
];
const TIER_ORDER = ["province", "city", "county", "township", "village"];
const CHECK_DELAY_MS = 350;

const form = document.getElementById("referral-form");
const checkStatus = document.getElementById("check-status");
const checkResult = document.getElementById("check-result");
const submitError = document.getElementById("submit-error");
const submitOk = document.getElementById("submit-ok");

let spec = null;
let me = null;
let evaluation = null;
let sequence = 0;
let timer = 0;
let statusKey = "referral.check.idle";
// The last payload checked: typing in the notes does not re-run the check (each check audits the patient lookup).
let lastChecked = "";
let statusValues = null;

const byLanguage = (zh, en) => (currentLanguage() === "en" ? en : zh);

function factLabel(fact) {
  const text = byLanguage(fact.label_zh, fact.label_en);
  return fact.unit ? `${text} (${fact.unit})` : text;
}

function option(value, key, text) {
  const node = element("option", { text: key ? rt(key) : text, attrs: { value } });
  if (key) node.dataset.rt = key;
  return node;
}

function factControl(fact) {
  const id = `fact-${fact.name}`;
  let control;
  if (fact.type === "boolean") {
    control = element("select");
    control.append(option("", "referral.fact.unknown"), option("true", "referral.fact.yes"), option("false", "referral.fact.no"));
  } else if (fact.type === "string" && Array.isArray(fact.values)) {
    control = element("select");
    control.append(option("", "referral.fact.unknown"), ...fact.values.map((v) => option(v, null, v)));
  } else if (fact.type === "number") {
    control = element("input", { attrs: { type: "number", step: "any", inputmode: "decimal" } });
    if (fact.min !== null) control.min = String(fact.min);
    if (fact.max !== null) control.max = String(fact.max);
  } else {
    control = element("input", { attrs: { type: "text", maxlength: "200", autocomplete: "off" } });
  }
  control.id = id;
  control.dataset.fact = fact.name;
  control.dataset.type = fact.type;
  const label = element("label", { text: factLabel(fact), attrs: { for: id } });
  label.dataset.factLabel = fact.name;
  return element("div", { className: "field fact" }, label, control);
}

function renderFacts() {
  const common = document.getElementById("facts-common");
  const rest = document.getElementById("facts-rest");
  const facts = spec.facts;
  const first = COMMON_FACTS.map((name) => facts.find((f) => f.name === name)).filter(Boolean);
  common.replaceChildren(...first.map(factControl));
  rest.replaceChildren(...facts.filter((f) => !COMMON_FACTS.includes(f.name)).map(factControl));
}

function relabelFacts() {
  for (const label of form.querySelectorAll("[data-fact-label]")) {
    const fact = spec.facts.find((f) => f.name === label.dataset.factLabel);
    if (fact) label.textContent = factLabel(fact);
  }
  document.getElementById("r-override-hint").textContent = rt("referral.form.override.hint", {
    chars: spec.min_override_chars,
  });
}

function readFacts() {
  const facts = {};
  for (const control of form.querySelectorAll("input[data-fact], select[data-fact]")) {
    const value = control.value.trim();
    if (!value) continue;
    if (control.dataset.type === "boolean") facts[control.dataset.fact] = value === "true";
    else if (control.dataset.type === "number") {
      const number = Number(value);
      if (Number.isFinite(number)) facts[control.dataset.fact] = number;
    } else facts[control.dataset.fact] = value;
  }
  return facts;
}

function splitList(text, separator) {
  return text
    .split(separator)
    .map((part) => part.trim())
    .filter(Boolean);
}

function checkPayload() {
  const fields = form.elements;
  const data = {
    icd10: splitList(fields.icd10.value.toUpperCase(), /[,，;；\s]+/),
    facts: readFacts(),
  };
  if (fields.patient_id.value) data.patient_id = fields.patient_id.value;
  if (fields.to_facility_id.value) data.to_facility_id = fields.to_facility_id.value;
  if (fields.priority.value) data.priority = fields.priority.value;
  if (fields.onset_at.value) data.onset_at = fields.onset_at.value;
  const override = fields.override_reason.value.trim();
  if (override) data.override_reason = override;
  return data;
}

function setStatus(key, values) {
  statusKey = key;
  statusValues = values || null;
  checkStatus.textContent = key ? rt(key, values) : "";
}

function scheduleCheck() {
  clearTimeout(timer);
  timer = setTimeout(runCheck, CHECK_DELAY_MS);
}

async function runCheck() {
  const data = checkPayload();
  const key = JSON.stringify(data);
  if (key === lastChecked) return;
  lastChecked = key;
  const mine = ++sequence;
  if (!data.patient_id && data.icd10.length === 0 && Object.keys(data.facts).length === 0) {
    evaluation = null;
    checkResult.hidden = true;
    setStatus("referral.check.idle");
    return;
  }
  setStatus("referral.check.running");
  try {
    const result = await api("/api/v1/referrals/evaluate", { method: "POST", json: data });
    if (mine !== sequence) return; // a newer check is on its way
    evaluation = result;
    renderCheck();
  } catch (error) {
    if (mine !== sequence) return;
    lastChecked = ""; // try again on the next change
    evaluation = null;
    checkResult.hidden = true;
    statusKey = null;
    checkStatus.textContent = problemText(error);
  }
}

function focusFact(name) {
  const control = document.getElementById(`fact-${name}`);
  if (!control) return;
  const details = control.closest("details");
  if (details) details.open = true;
  control.focus();
}

function renderCheck() {
  if (!evaluation) return;
  const d = evaluation.decision;
  setStatus("referral.check.done", { policy: d.policy_version });
  const outcome = document.getElementById("check-outcome");
  outcome.dataset.outcome = d.outcome;
  outcome.textContent = rt(`referral.outcome.${d.outcome}`);
  if (d.override_applied) outcome.append(element("span", { className: "outcome-note", text: rt("referral.check.override_applied") }));

  const direction = document.getElementById("check-direction");
  direction.textContent = d.direction ? rt(`referral.direction.${d.direction}`) + (d.skip_level ? rt("referral.check.skip") : "") : rt("referral.check.none");
  if (d.green_channel) direction.append(" ", element("span", { className: "badge badge-green", text: rt("referral.check.green") }));
  const priority = document.getElementById("check-priority");
  priority.textContent = rt(`referral.priority.${d.priority}`);
  priority.dataset.priority = d.priority;
  document.getElementById("check-target").textContent = evaluation.to_facility ? evaluation.to_facility.name : rt("referral.check.none");
  document.getElementById("check-sla").textContent = rt("referral.check.sla.value", { minutes: d.sla.ack_within_minutes });
  document.getElementById("check-valid").textContent = d.valid_until || rt("referral.check.none");
  document.getElementById("check-policy").textContent = d.policy_version;

  const reasons = [
    ...d.matched.map((m) => element("li", { className: "reason-ok", text: `${m.id}${byLanguage("：", ": ")}${byLanguage(m.reason_zh, m.reason_en)}` })),
    ...d.failed.map((f) =>
      element("li", {
        className: f.severity === "info" ? "reason-info" : "reason-fail",
        text: byLanguage(f.reason_zh, f.reason_en),
        attrs: { "data-code": f.code },
      }),
    ),
  ];
  document.getElementById("check-reasons").replaceChildren(...reasons);

  const missing = document.getElementById("check-missing");
  missing.replaceChildren(
    ...d.missing_facts.map((m) => {
      const button = element("button", { className: "link-button", text: byLanguage(m.label_zh, m.label_en), attrs: { type: "button" } });
      button.dataset.fact = m.name;
      button.addEventListener("click", () => focusFact(m.name));
      return element("li", {}, button);
    }),
  );
  document.getElementById("check-missing-block").hidden = d.missing_facts.length === 0;

  const suggestedBlock = document.getElementById("check-suggested-block");
  const suggested = d.suggested_target;
  suggestedBlock.hidden = !suggested;
  if (suggested) {
    document.getElementById("check-suggested").textContent = `${suggested.facility_name}${byLanguage("：", ": ")}${byLanguage(suggested.reason_zh, suggested.reason_en)}`;
    document.getElementById("use-suggested").hidden = form.elements.to_facility_id.value === suggested.facility_id;
  }
  document.getElementById("check-insurance").textContent = byLanguage(d.insurance.note_zh, d.insurance.note_en);
  document.getElementById("override-field").classList.toggle("is-needed", d.outcome === "needs_override");
  checkResult.hidden = false;
}

async function loadChoices() {
  const [patients, facilities] = await Promise.all([
    api("/api/v1/patients?limit=100"),
    api("/api/v1/facilities?limit=1000"),
  ]);
  const patientSelect = form.elements.patient_id;
  for (const patient of patients.items) {
    const sex = rt(`referral.sex.${patient.sex}`);
    patientSelect.append(option(patient.id, null, `${patient.name}（${sex}，${rt("referral.item.age", { age: patient.age })}）`));
  }
  const targetSelect = form.elements.to_facility_id;
  const others = facilities
    .filter((f) => f.id !== me.facility_id)
    .sort((a, b) => TIER_ORDER.indexOf(a.tier) - TIER_ORDER.indexOf(b.tier) || a.code.localeCompare(b.code));
  for (const facility of others) targetSelect.append(option(facility.id, null, facility.name));
  const wanted = new URLSearchParams(location.search).get("patient");
  if (wanted && [...patientSelect.options].some((o) => o.value === wanted)) patientSelect.value = wanted;
}

document.getElementById("use-suggested").addEventListener("click", () => {
  if (!evaluation || !evaluation.decision.suggested_target) return;
  form.elements.to_facility_id.value = evaluation.decision.suggested_target.facility_id;
  scheduleCheck();
});

form.addEventListener("input", scheduleCheck);
form.addEventListener("change", scheduleCheck);

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearFieldErrors(form);
  showNotice(submitError, "");
  showNotice(submitOk, "");
  const fields = form.elements;
  if (!fields.patient_id.value) {
    showFieldErrors(form, [{ field: "patient_id", message: rt("referral.form.required_patient") }]);
    return;
  }
  const data = {
    ...checkPayload(),
    study_uids: splitList(fields.study_uids.value, /\s+/),
    consult_refs: splitList(fields.consult_refs.value, /[,，;；\s]+/),
  };
  for (const name of ["reason", "notes"]) {
    const value = fields[name].value.trim();
    if (value) data[name] = value;
  }
  const button = document.getElementById("submit-button");
  button.disabled = true;
  try {
    const referral = await api("/api/v1/referrals", { method: "POST", json: data });
    showNotice(submitOk, rt("referral.form.submitted", { status: rt(`referral.status.${referral.status}`) }));
    submitOk.dataset.referralId = referral.id;
  } catch (error) {
    const unmatched = error instanceof ApiError ? showFieldErrors(form, error.fieldErrors) : [];
    const reasons = error instanceof ApiError && Array.isArray(error.problem.reasons)
      ? error.problem.reasons.map((r) => byLanguage(r.reason_zh, r.reason_en))
      : [];
    const extra = unmatched.map((e) => e.message);
    showNotice(submitError, [problemText(error), ...reasons, ...extra].filter(Boolean).join(" "));
  } finally {
    button.disabled = false;
  }
});

onReferralLanguageChange(() => {
  if (!spec) return;
  relabelFacts();
  if (statusKey) setStatus(statusKey, statusValues);
  renderCheck();
});

applyReferralTexts();
me = await startSignedInPage({ roles: SENDER_ROLES });
if (me) {
  try {
    spec = await api("/api/v1/referrals/form-spec");
    renderFacts();
    relabelFacts();
    await loadChoices();
  } catch (error) {
    showNotice(submitError, problemText(error));
  }
  document.getElementById("referral-app").hidden = false;
  scheduleCheck();
}
