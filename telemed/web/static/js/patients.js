// Patients: register one (field errors from the 422 problem shown beside their fields), list them a page at a
// time, and search by name, ID number or phone. Search terms travel in a POST body, never in the URL.
import {
  CLINICAL_ROLES,
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

const PAGE_SIZE = 20;
const ID_NUMBER = /^\d{17}[\dXx]$/;
const MOBILE = /^1[3-9]\d{9}$/;

const registerForm = document.getElementById("register-form");
const registerError = document.getElementById("register-error");
const registerOk = document.getElementById("register-ok");
const searchForm = document.getElementById("search-form");
const clearButton = document.getElementById("search-clear");
const list = document.getElementById("patient-list");
const summary = document.getElementById("list-summary");
const listError = document.getElementById("list-error");
const pager = document.getElementById("pager");
const prevButton = document.getElementById("page-prev");
const nextButton = document.getElementById("page-next");

// What the list shows: a page of all patients, or the results of a search.
const view = { mode: "list", offset: 0, total: 0, items: [] };
let okKey = null;

function patientRow(patient) {
  const row = document.createElement("li");
  row.dataset.patientId = patient.id;
  const name = document.createElement("span");
  name.className = "patient-name";
  name.textContent = patient.name;
  const meta = document.createElement("div");
  meta.className = "patient-meta";
  const parts = [
    `${t(`sex.${patient.sex}`)} · ${t("patients.age", { age: patient.age })}`,
    `${t("patients.id_short")} ${patient.id_number_masked}`,
  ];
  if (patient.phone_masked) parts.push(`${t("patients.phone_short")} ${patient.phone_masked}`);
  if (patient.facility_name) parts.push(patient.facility_name);
  for (const part of parts) {
    const span = document.createElement("span");
    span.className = "mono";
    span.textContent = part;
    meta.append(span);
  }
  row.append(name, meta);
  return row;
}

function render() {
  list.replaceChildren(...view.items.map(patientRow));
  if (view.mode === "search") {
    summary.textContent = t("patients.found", { count: view.items.length });
  } else {
    summary.textContent = view.total ? t("patients.total", { total: view.total }) : t("patients.empty");
  }
  clearButton.hidden = view.mode !== "search";
  const pages = Math.max(1, Math.ceil(view.total / PAGE_SIZE));
  const page = Math.floor(view.offset / PAGE_SIZE) + 1;
  pager.hidden = view.mode !== "list" || pages <= 1;
  prevButton.disabled = page <= 1;
  nextButton.disabled = page >= pages;
  document.getElementById("page-info").textContent = t("patients.page", { page, pages });
  showNotice(registerOk, okKey ? t(okKey) : "");
}

async function loadPage(offset) {
  showNotice(listError, "");
  try {
    const data = await api(`/api/v1/patients?limit=${PAGE_SIZE}&offset=${offset}`);
    Object.assign(view, { mode: "list", offset, total: data.total, items: data.items });
  } catch (error) {
    showNotice(listError, problemText(error));
  }
  render();
}

function searchCriteria(text) {
  const compact = text.replace(/[\s-]/g, "");
  if (ID_NUMBER.test(compact)) return { id_number: compact.toUpperCase() };
  if (MOBILE.test(compact)) return { phone: compact };
  return { name: text };
}

searchForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = searchForm.elements.q.value.trim();
  if (!text) {
    await loadPage(0);
    return;
  }
  showNotice(listError, "");
  try {
    const items = await api("/api/v1/patients/search", {
      method: "POST",
      json: { ...searchCriteria(text), limit: PAGE_SIZE },
    });
    Object.assign(view, { mode: "search", offset: 0, total: items.length, items });
  } catch (error) {
    showNotice(listError, problemText(error));
  }
  render();
});

clearButton.addEventListener("click", () => {
  searchForm.elements.q.value = "";
  loadPage(0);
});
prevButton.addEventListener("click", () => loadPage(Math.max(0, view.offset - PAGE_SIZE)));
nextButton.addEventListener("click", () => loadPage(view.offset + PAGE_SIZE));

registerForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearFieldErrors(registerForm);
  showNotice(registerError, "");
  okKey = null;
  showNotice(registerOk, "");
  const fields = registerForm.elements;
  const data = {
    name: fields.name.value.trim(),
    id_number: fields.id_number.value.trim(),
  };
  const phone = fields.phone.value.trim();
  if (phone) data.phone = phone;
  const missing = ["name", "id_number"]
    .filter((field) => !data[field])
    .map((field) => ({ field, message: t("form.required") }));
  if (missing.length) {
    showFieldErrors(registerForm, missing);
    return;
  }
  const submit = registerForm.querySelector("button[type=submit]");
  submit.disabled = true;
  try {
    await api("/api/v1/patients", { method: "POST", json: data });
    registerForm.reset();
    okKey = "patients.registered";
    searchForm.elements.q.value = "";
    await loadPage(0);
    fields.name.focus();
  } catch (error) {
    const unmatched = error instanceof ApiError ? showFieldErrors(registerForm, error.fieldErrors) : [];
    // A duplicate (409) or any problem without field errors is shown above the button.
    if (!(error instanceof ApiError) || error.fieldErrors.length === 0 || unmatched.length) {
      const extra = unmatched.map((e) => e.message).join(" ");
      showNotice(registerError, [problemText(error), extra].filter(Boolean).join(" "));
    }
  } finally {
    submit.disabled = false;
  }
});

const me = await startSignedInPage({ roles: CLINICAL_ROLES });
if (me) {
  document.getElementById("patients-app").hidden = false;
  onLanguageChange(render);
  await loadPage(0);
}
