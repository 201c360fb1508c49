// The administrator's policy page: upload a YAML version (errors listed with their line and column; nothing is
// published on error), the versions with the one in force, a diff between two versions, a dry run of one.
import { ApiError, api, formatDateTime, problemText, showNotice, startSignedInPage } from "/static/js/core.js";
import { applyReferralTexts, element, onReferralLanguageChange, rt } from "./referral-i18n.js";

const uploadForm = document.getElementById("upload-form");
const uploadError = document.getElementById("upload-error");
const uploadOk = document.getElementById("upload-ok");
const toolsError = document.getElementById("tools-error");
let versions = [];
let lastDiff = null;
let lastDryRun = null;
let lastUpload = null;

function effective(version) {
  return version.effective_until
    ? rt("referral.policies.range", { from: version.effective_from, until: version.effective_until })
    : rt("referral.policies.from", { from: version.effective_from });
}

function renderVersions() {
  const rows = versions.map((v) => {
    const row = element("tr");
    row.dataset.versionId = v.id;
    const state = element("td");
    if (v.active) state.append(element("span", { className: "badge badge-green", text: rt("referral.policies.active") }), " ");
    state.append(element("span", { className: "badge badge-muted", text: rt(v.builtin ? "referral.policies.builtin" : "referral.policies.stored") }));
    row.append(
      element("td", { className: "mono", text: v.label }),
      element("td", { text: effective(v) }),
      state,
      element("td", { text: v.uploaded_at ? formatDateTime(v.uploaded_at) : "—" }),
      element("td", { text: v.rules }),
    );
    return row;
  });
  document.querySelector("#version-table tbody").replaceChildren(...rows);
  for (const id of ["diff-from", "diff-to", "dryrun-version"]) {
    const select = document.getElementById(id);
    const previous = select.value;
    select.replaceChildren(...versions.map((v) => element("option", { text: v.label, attrs: { value: v.id } })));
    if (versions.some((v) => v.id === previous)) select.value = previous;
  }
  // Sensible defaults: compare the built-in default with the newest upload; dry-run the newest.
  if (versions.length > 1) {
    const newest = versions[versions.length - 1].id;
    if (!document.getElementById("diff-to").dataset.touched) document.getElementById("diff-to").value = newest;
    if (!document.getElementById("dryrun-version").dataset.touched) document.getElementById("dryrun-version").value = newest;
  }
}

async function loadVersions() {
  try {
    versions = await api("/api/v1/referral-policies");
    renderVersions();
  } catch (error) {
    showNotice(document.getElementById("versions-error"), problemText(error));
  }
}

function renderUploadErrors(problem) {
  document.getElementById("upload-error-title").textContent = problem.title || problem.detail || "";
  const items = (problem.errors || []).map((e) => {
    const text = e.line
      ? rt("referral.policies.error.at", { line: e.line, column: e.column || 1, message: e.message })
      : e.message;
    const li = element("li", { text });
    if (e.line) li.dataset.line = e.line;
    return li;
  });
  document.getElementById("upload-errors").replaceChildren(...items);
  uploadError.hidden = false;
}

document.getElementById("policy-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (file) document.getElementById("policy-text").value = await file.text();
});

uploadForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  uploadError.hidden = true;
  showNotice(uploadOk, "");
  lastUpload = null;
  const text = document.getElementById("policy-text").value;
  const button = uploadForm.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const created = await api("/api/v1/referral-policies", { method: "POST", json: { yaml: text } });
    lastUpload = created.label;
    showNotice(uploadOk, rt("referral.policies.published", { label: created.label }));
    await loadVersions();
  } catch (error) {
    if (error instanceof ApiError && error.status === 422) renderUploadErrors(error.problem);
    else renderUploadErrors({ title: problemText(error) });
  } finally {
    button.disabled = false;
  }
});

function renderDiff() {
  if (!lastDiff) return;
  const d = lastDiff;
  const items = [
    ...d.rules_added.map((r) => element("li", { className: "rule-added", text: rt("referral.policies.diff.added", r) })),
    ...d.rules_removed.map((r) => element("li", { className: "rule-removed", text: rt("referral.policies.diff.removed", r) })),
    ...d.rules_changed.map((r) =>
      element("li", { className: "rule-changed", text: rt("referral.policies.diff.changed", { ...r, fields: r.fields.join(", ") }) }),
    ),
  ];
  if (!items.length) items.push(element("li", { text: rt("referral.policies.diff.none") }));
  document.getElementById("diff-rules").replaceChildren(...items);
  document.getElementById("diff-sections").textContent = d.sections_changed.length
    ? rt("referral.policies.diff.sections", { sections: d.sections_changed.join(", ") })
    : "";
  const pre = document.getElementById("diff-text");
  pre.replaceChildren(
    ...d.unified_diff.split("\n").map((line) => {
      const kind = line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : "ctx";
      return element("span", { className: `diff-${kind}`, text: `${line}\n` });
    }),
  );
  document.getElementById("diff-result").hidden = false;
}

document.getElementById("diff-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showNotice(toolsError, "");
  const query = new URLSearchParams({ from: document.getElementById("diff-from").value, to: document.getElementById("diff-to").value });
  try {
    lastDiff = await api(`/api/v1/referral-policies/diff?${query}`);
    renderDiff();
  } catch (error) {
    showNotice(toolsError, problemText(error));
  }
});

function outcomeText(outcome, compliant) {
  return `${rt(`referral.outcome.${outcome}`)} · ${rt(compliant ? "referral.compliant" : "referral.noncompliant")}`;
}

function renderDryRun() {
  if (!lastDryRun) return;
  const r = lastDryRun;
  document.getElementById("dryrun-summary").textContent = rt("referral.policies.dryrun.summary", {
    since: r.since,
    evaluated: r.evaluated,
    changed: r.changed,
    policy: r.policy_version,
  });
  const rows = r.changes.map((c) => {
    const row = element("tr");
    row.dataset.referralId = c.referral_id;
    row.append(
      element("td", { className: "mono", text: `${c.referral_id.slice(0, 8)} · ${formatDateTime(c.created_at)}` }),
      element("td", { text: outcomeText(c.old_outcome, c.old_compliant) }),
      element("td", { text: outcomeText(c.new_outcome, c.new_compliant) }),
    );
    return row;
  });
  document.querySelector("#dryrun-table tbody").replaceChildren(...rows);
  document.getElementById("dryrun-result").hidden = false;
}

document.getElementById("dryrun-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showNotice(toolsError, "");
  const id = document.getElementById("dryrun-version").value;
  const months = document.getElementById("dryrun-months").value || "6";
  try {
    lastDryRun = await api(`/api/v1/referral-policies/${encodeURIComponent(id)}/dry-run?months=${encodeURIComponent(months)}`, { method: "POST" });
    renderDryRun();
  } catch (error) {
    showNotice(toolsError, problemText(error));
  }
});

for (const id of ["diff-to", "dryrun-version"]) {
  document.getElementById(id).addEventListener("change", (event) => (event.target.dataset.touched = "1"));
}

onReferralLanguageChange(() => {
  renderVersions();
  renderDiff();
  renderDryRun();
  if (lastUpload) showNotice(uploadOk, rt("referral.policies.published", { label: lastUpload }));
});

applyReferralTexts();
const me = await startSignedInPage({ roles: ["admin"] });
if (me) {
  document.getElementById("policies-app").hidden = false;
  await loadVersions();
}
