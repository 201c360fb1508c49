// Sign-in: OAuth2 password grant (RFC 6749 §4.3) against /api/v1/auth/token; tokens go to sessionStorage,
// which ends with the tab, so a shared clinic computer does not keep a doctor signed in.
import {
  currentLanguage,
  hasSession,
  problemText,
  ApiError,
  saveTokens,
  showNotice,
  startPublicPage,
  t,
  takeLoginNotice,
  onLanguageChange,
} from "./core.js";

startPublicPage();

if (hasSession()) {
  location.replace("/home");
}

const form = document.getElementById("login-form");
const submit = document.getElementById("login-submit");
const errorBox = document.getElementById("login-error");
const infoBox = document.getElementById("login-info");
let infoKey = takeLoginNotice();

function renderInfo() {
  showNotice(infoBox, infoKey ? t(infoKey) : "");
}
renderInfo();
onLanguageChange(renderInfo);

async function signIn(username, password) {
  let response;
  try {
    response = await fetch("/api/v1/auth/token", {
      method: "POST",
      body: new URLSearchParams({ grant_type: "password", username, password }),
      headers: { Accept: "application/json", "Accept-Language": currentLanguage() },
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, { title: t("error.network") });
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) throw new ApiError(response.status, body || { title: t("error.generic") });
  return body;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  infoKey = null;
  renderInfo();
  showNotice(errorBox, "");
  const username = form.elements.username.value.trim();
  const password = form.elements.password.value;
  if (!username || !password) {
    showNotice(errorBox, `${t("login.username")} / ${t("login.password")}: ${t("form.required")}`);
    (username ? form.elements.password : form.elements.username).focus();
    return;
  }
  submit.disabled = true;
  submit.textContent = t("login.busy");
  try {
    saveTokens(await signIn(username, password));
    location.assign("/home");
  } catch (error) {
    const first = error instanceof ApiError ? error.fieldErrors[0] : null;
    showNotice(errorBox, first && !error.problem.detail ? first.message : problemText(error));
    form.elements.password.value = "";
    form.elements.password.focus();
    submit.disabled = false;
    submit.textContent = t("login.submit");
  }
});
