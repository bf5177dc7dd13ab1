// Sign-in, the caller's screens and hash navigation (#/setup, #/board, #/desk ...).
import { Api } from "./api.js";
import { h } from "./ui.js";
import * as supervisor from "./supervisor.js";
import * as desk from "./desk.js";

const TOKEN_KEY = "wa-router-token";
const SUPERVISOR_SCREENS = [
  ["setup", "WhatsApp", supervisor.setup],
  ["templates", "Templates", supervisor.templates],
  ["inboxes", "Inboxes", supervisor.inboxes],
  ["users", "Users", supervisor.users],
  ["board", "Live board", supervisor.board],
];
const AGENT_SCREENS = [["desk", "Desk", desk.desk]];

let cleanup = null;

function takeTokenFromUrl() {
  // Console links carry the token in the fragment (#token=...), which never reaches a server log.
  const match = window.location.hash.match(/token=([^&]+)/);
  if (!match) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
  history.replaceState(null, "", window.location.pathname);
}

function showLogin(message) {
  document.getElementById("login").hidden = false;
  document.getElementById("view").replaceChildren();
  document.getElementById("nav").replaceChildren();
  document.getElementById("who").replaceChildren();
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("login-token").focus();
}

async function start() {
  takeTokenFromUrl();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return showLogin();
  const api = new Api(token);
  let me;
  try {
    me = await api.get("/v1/me");
  } catch (error) {
    sessionStorage.removeItem(TOKEN_KEY);
    return showLogin(error.status === 401 ? "That token is not valid." : error.message);
  }
  document.getElementById("login").hidden = true;
  if (me.platform_admin) {
    document.getElementById("view").replaceChildren(h("section", { class: "card" },
      h("h2", {}, "Platform admin"),
      h("p", {}, "The console is for an organization's supervisors and agents. Create an organization with "
        + "POST /v1/orgs or the command 'wa-router admin create-org', then sign in with its owner's token.")));
    return renderWho(null);
  }
  const ctx = { api, me, org: me.org.id, user: me.user };
  const screens = me.user.is_supervisor ? SUPERVISOR_SCREENS : AGENT_SCREENS;
  renderWho(me);
  const nav = document.getElementById("nav");
  const route = () => {
    const name = (window.location.hash.match(/^#\/(\w+)/) || [])[1];
    const screen = screens.find((s) => s[0] === name) || screens[0];
    nav.replaceChildren(...screens.map(([id, label]) =>
      h("a", { href: `#/${id}`, "aria-current": id === screen[0] ? "page" : false }, label)));
    if (cleanup) cleanup();
    const view = document.getElementById("view");
    view.replaceChildren();
    cleanup = screen[2](view, ctx) || null;
    document.title = `${screen[1]} · wa-router`;
  };
  window.onhashchange = route;
  route();
}

function renderWho(me) {
  const who = document.getElementById("who");
  const signOut = h("button", { type: "button", onclick: () => {
    sessionStorage.removeItem(TOKEN_KEY);
    if (cleanup) cleanup();
    cleanup = null;
    showLogin("Signed out.");
  } }, "Sign out");
  who.replaceChildren(
    h("span", {}, me ? `${me.user.name} · ${me.user.role} · ${me.org.name}` : "platform admin"), signOut);
}

document.getElementById("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("login-token").value.trim());
  document.getElementById("login-token").value = "";
  start();
});

start();
