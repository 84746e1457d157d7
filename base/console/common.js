// What the base's console and the fleet's share: the API client with the operator's token,
// the token form, messages, formatting and the refresh timer. Plain JavaScript, no build and no
// dependencies; every value from an API is put in the page as text (never as markup). The token
// is kept in this tab's sessionStorage and sent as a bearer token; the console has no other way
// in. A page calls start({ probe, refresh, forget }).
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "pedestal-token";

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  armed: null,         // {key, until}: a destructive button clicked once, waiting for its confirmation
  timer: null,
  page: null,          // {probe, refresh, forget}: what the page is
};

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    // Through the CSSOM: the policy (style-src 'self') refuses style attributes.
    else if (key === "width") node.style.width = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(`${code}: ${message}`);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** Calls the operations API; an error answer becomes an ApiError carrying its code and message. */
async function api(method, path, { json, bytes, signal } = {}) {
  const headers = {};
  if (state.token) headers.authorization = `Bearer ${state.token}`;
  let body;
  if (json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(json);
  } else if (bytes !== undefined) {
    headers["content-type"] = "application/octet-stream";
    body = bytes;
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, signal, cache: "no-store" });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "BASE_UNREACHABLE", `cannot reach the base (${e.message})`);
  }
  let answer = null;
  try { answer = await response.json(); } catch { /* not JSON */ }
  if (response.status === 401) {
    showLogin(answer && answer.message);
  }
  if (!response.ok) {
    throw new ApiError(response.status, (answer && answer.code) || `HTTP_${response.status}`,
      (answer && answer.message) || response.statusText, answer && answer.details);
  }
  return answer;
}

function showMessage(text, isError) {
  const box = $("message");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = false;
}

/** Runs an action, showing what it did or the API's error as it is. */
async function act(what, action) {
  try {
    const done = await action();
    showMessage(done || `${what}: done`, false);
  } catch (e) {
    showMessage(e instanceof ApiError ? e.message : `${what}: ${e}`, true);
  }
  await refresh();
}

// ---- the token ----------------------------------------------------------------------------

function showLogin(reason) {
  stopTimer();
  $("app").hidden = true;
  $("login").hidden = false;
  $("logout").hidden = true;
  const error = $("login-error");
  error.hidden = !state.token;
  if (state.token) error.textContent = reason || "the base refused this token";
  $("token").focus();
}

async function connect() {
  try {
    await api("GET", state.page.probe);
  } catch (e) {
    if (e.status === 401) return;
    // Not a refusal of the token (the base restarting, etcd briefly away): ask again.
    showMessage(e.message, true);
    stopTimer();
    state.timer = setTimeout(connect, REFRESH_MS);
    return;
  }
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = !state.token;
  await refresh();
}

// ---- formatting ---------------------------------------------------------------------------

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit + 1 < units.length) { value /= 1024; unit += 1; }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function micros(us) {
  if (us === null || us === undefined) return "–";
  if (us < 1000) return `${us} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(us < 1e4 ? 1 : 0)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

function since(rfc3339) {
  const seconds = Math.max(0, (Date.now() - Date.parse(rfc3339)) / 1000);
  if (seconds < 60) return `${Math.floor(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h${Math.floor((seconds % 3600) / 60)}m`;
  return `${Math.floor(seconds / 86400)}d`;
}

function number(n, digits = 1) {
  return n === null || n === undefined ? "–" : Number(n).toFixed(digits);
}

function stopTimer() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
}

function scheduleRefresh() {
  stopTimer();
  state.timer = setTimeout(refresh, REFRESH_MS);
}

/** A destructive action's button: the first click arms it, the second (within 4 s) acts. */
function confirmButton(key, label, cls, version, action) {
  const armed = state.armed && state.armed.key === key && state.armed.until > Date.now();
  return el("button", {
    class: `${cls} danger${armed ? " armed" : ""}`, type: "button", "data-version": version,
    onclick: () => {
      if (state.armed && state.armed.key === key && state.armed.until > Date.now()) {
        state.armed = null;
        act(label, action);
      } else {
        state.armed = { key, until: Date.now() + 4000 };
        refresh();
      }
    },
  }, armed ? `Confirm ${label.toLowerCase()}` : label);
}

/** Wires the token form and connects: `page.probe` is the API path that tells whether the token
 * works, `page.refresh` draws the page (and is called again every REFRESH_MS). */
function start(page) {
  state.page = page;
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    $("token").value = "";
    connect();
  });
  $("logout").addEventListener("click", () => {
    state.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    if (page.forget) page.forget();
    showLogin();
  });
  connect();
}

/** Draws the page now, then every REFRESH_MS. */
async function refresh() {
  stopTimer();
  try {
    await state.page.refresh();
    document.body.dataset.refreshed = String(Date.now());
  } catch (e) {
    if (e.status !== 401) showMessage(e.message, true);
    if (e.status === 401) return;
  }
  scheduleRefresh();
}
