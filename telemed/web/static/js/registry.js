// The registry for administrators: facilities, staff accounts, creating an account and disabling one.
import {
  ApiError,
  api,
  clearFieldErrors,
  onLanguageChange,
  problemText,
  showFieldErrors,
  showNotice,
  startSignedInPage,
  t,
} from "./core.js";

const staffForm = document.getElementById("staff-form");
const staffError = document.getElementById("staff-error");
const staffOk = document.getElementById("staff-ok");
const facilitySelect = document.getElementById("s-facility");

let facilities = [];
let staff = [];
let okKey = null;

function cell(text, labelKey) {
  const td = document.createElement("td");
  td.textContent = text;
  td.dataset.label = t(labelKey);
  return td;
}

function facilityName(id) {
  const facility = facilities.find((f) => f.id === id);
  return facility ? facility.name : "";
}

function renderFacilities() {
  const body = document.querySelector("#facility-table tbody");
  body.replaceChildren(
    ...facilities.map((facility) => {
      const row = document.createElement("tr");
      row.append(
        cell(facility.code, "registry.code"),
        cell(facility.name, "registry.name"),
        cell(t(`tier.${facility.tier}`), "registry.tier"),
      );
      return row;
    }),
  );
  if (!facilities.length) body.append(emptyRow(3));
  const chosen = facilitySelect.value;
  for (const option of [...facilitySelect.options].slice(1)) option.remove();
  for (const facility of facilities) {
    facilitySelect.add(new Option(`${facility.name} (${facility.code})`, facility.id));
  }
  facilitySelect.value = chosen;
}

function emptyRow(columns) {
  const row = document.createElement("tr");
  const td = document.createElement("td");
  td.colSpan = columns;
  td.className = "muted";
  td.textContent = t("registry.empty");
  row.append(td);
  return row;
}

function renderStaff() {
  const body = document.querySelector("#staff-table tbody");
  body.replaceChildren(
    ...staff.map((account) => {
      const row = document.createElement("tr");
      row.dataset.username = account.username;
      if (account.disabled) row.className = "is-disabled";
      const actions = document.createElement("td");
      actions.dataset.label = t("staff.actions");
      // No one locks themselves out: another administrator disables an administrator.
      if (!account.disabled && account.id !== me.id) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "btn btn-danger";
        button.textContent = t("staff.disable");
        button.addEventListener("click", () => disable(account, button));
        actions.append(button);
      }
      row.append(
        cell(account.username, "staff.username"),
        cell(account.display_name, "staff.display_name"),
        cell(t(`role.${account.role}`), "staff.role"),
        cell(facilityName(account.facility_id), "staff.facility"),
        cell(t(account.disabled ? "staff.disabled" : "staff.active"), "staff.status"),
        actions,
      );
      return row;
    }),
  );
  if (!staff.length) body.append(emptyRow(6));
}

function render() {
  renderFacilities();
  renderStaff();
  showNotice(staffOk, okKey ? t(okKey) : "");
}

async function load() {
  const facilityError = document.getElementById("facility-list-error");
  const staffListError = document.getElementById("staff-list-error");
  showNotice(facilityError, "");
  showNotice(staffListError, "");
  const [facilityResult, staffResult] = await Promise.allSettled([
    api("/api/v1/facilities"),
    api("/api/v1/staff"),
  ]);
  if (facilityResult.status === "fulfilled") facilities = facilityResult.value;
  else showNotice(facilityError, problemText(facilityResult.reason));
  if (staffResult.status === "fulfilled") staff = staffResult.value;
  else showNotice(staffListError, problemText(staffResult.reason));
  render();
}

async function disable(account, button) {
  if (!confirm(t("staff.disable.confirm", { username: account.username }))) return;
  button.disabled = true;
  try {
    await api(`/api/v1/staff/${encodeURIComponent(account.id)}/disable`, { method: "POST" });
    okKey = "staff.disabled.done";
    await load();
  } catch (error) {
    button.disabled = false;
    showNotice(document.getElementById("staff-list-error"), problemText(error));
  }
}

staffForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearFieldErrors(staffForm);
  showNotice(staffError, "");
  okKey = null;
  showNotice(staffOk, "");
  const fields = staffForm.elements;
  const data = {
    username: fields.username.value.trim(),
    display_name: fields.display_name.value.trim(),
    role: fields.role.value,
    facility_id: fields.facility_id.value || null,
    password: fields.password.value,
  };
  const missing = ["username", "display_name", "password"]
    .filter((field) => !data[field])
    .map((field) => ({ field, message: t("form.required") }));
  if (missing.length) {
    showFieldErrors(staffForm, missing);
    return;
  }
  const submit = staffForm.querySelector("button[type=submit]");
  submit.disabled = true;
  try {
    await api("/api/v1/staff", { method: "POST", json: data });
    staffForm.reset();
    okKey = "staff.created";
    await load();
  } catch (error) {
    const unmatched = error instanceof ApiError ? showFieldErrors(staffForm, error.fieldErrors) : [];
    if (!(error instanceof ApiError) || error.fieldErrors.length === 0 || unmatched.length) {
      const extra = unmatched.map((e) => e.message).join(" ");
      showNotice(staffError, [problemText(error), extra].filter(Boolean).join(" "));
    }
  } finally {
    submit.disabled = false;
  }
});

const me = await startSignedInPage({ roles: ["admin"] });
if (me) {
  document.getElementById("registry-app").hidden = false;
  onLanguageChange(render);
  await load();
}
