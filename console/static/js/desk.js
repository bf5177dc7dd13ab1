// The agent desk: presence, the ringing offer with its countdown, conversations with delivery ticks.
// Live over the agent's WebSocket (token in a subprotocol, never in the URL); a slow poll backs it up.
import { attempt, field, h, notify, when, who } from "./ui.js";

const TICKS = { queued: "🕓", sending: "🕓", accepted: "🕓", sent: "✓", delivered: "✓✓", read: "✓✓", played: "✓✓", failed: "⚠ failed" };

export function desk(view, ctx) {
  const me = ctx.user.id;
  const path = `/v1/orgs/${ctx.org}`;
  let agent = null;
  let current = null;  // the open conversation's id
  let socket = null;
  let cursor = null;
  let stopped = false;
  let countdown = null;

  const presence = h("div", { class: "presence", role: "group", "aria-label": "Presence" });
  const ring = h("section", { class: "card ring", id: "offer", hidden: true, "aria-labelledby": "offer-title" });
  const announcer = h("p", { class: "skip", "aria-live": "assertive" });
  const chats = h("nav", { class: "chats", "aria-label": "Your conversations" });
  const conversation = h("section", { class: "card", "aria-labelledby": "conv-title", id: "conversation" },
    h("h2", { id: "conv-title" }, "Conversation"), h("p", { class: "muted" }, "Accept an offer or pick a conversation."));
  const live = h("span", { class: "muted", id: "live-state" }, "connecting ...");
  view.append(
    h("section", { class: "card" }, h("h2", {}, "Your status"), presence, h("p", {}, "Live updates: ", live)),
    ring, announcer,
    h("div", { class: "desk" }, h("section", { class: "card" }, h("h2", {}, "Conversations"), chats), conversation));

  function renderPresence() {
    presence.replaceChildren(...["available", "away", "offline"].map((status) =>
      h("button", { type: "button", class: agent && agent.status === status ? "" : "secondary",
        "aria-pressed": agent && agent.status === status ? "true" : "false",
        onclick: async () => {
          const view_ = await attempt(() => ctx.api.put(`${path}/agents/${me}/status`, { status }), `you are ${status}`);
          if (view_) update(view_);
        } }, status)),
    h("span", { class: "muted" }, agent && agent.status_reason ? `(${agent.status_reason})` : ""));
  }

  function update(view_) {
    agent = view_;
    renderPresence();
    renderRing(agent.pending_offer);
    renderChats();
  }

  async function refresh() {
    const view_ = await attempt(() => ctx.api.get(`${path}/agents/${me}`));
    if (view_) update(view_);
  }

  // ---------------------------------------------------------------- the ringing offer

  async function renderRing(offer, detail) {
    clearInterval(countdown);
    if (!offer) {
      ring.hidden = true;
      return;
    }
    const tx = offer.transaction_id;
    let info = detail;
    if (!info) {
      try { info = await ctx.api.get(`${path}/transactions/${tx}`); } catch { info = null; }
    }
    const seconds = h("span", { class: "countdown", id: "offer-countdown" });
    const expires = offer.expires_at ? new Date(offer.expires_at).getTime() : null;
    const tick = () => {
      if (!expires) return;
      const left = Math.max(0, Math.round((expires - Date.now()) / 1000));
      seconds.textContent = `${left} s`;
      if (left === 0) clearInterval(countdown);
    };
    const first = info && info.messages && info.messages.length ? info.messages[0].summary : "";
    ring.replaceChildren(
      h("h2", { id: "offer-title" }, "Incoming conversation"),
      h("p", {}, h("strong", {}, info ? who(info.customer) : `conversation ${tx}`), first ? `: “${first}”` : ""),
      h("p", {}, "Answer within ", seconds),
      h("button", { type: "button", id: "accept", onclick: () => act(tx, "accept") }, "Accept"),
      h("button", { type: "button", class: "secondary", id: "decline", onclick: () => act(tx, "decline") }, "Decline"));
    ring.hidden = false;
    tick();
    countdown = setInterval(tick, 250);
    announcer.textContent = `Incoming conversation from ${info ? who(info.customer) : tx}`;
    ring.querySelector("#accept").focus();
  }

  async function act(tx, action) {
    const done = await attempt(() => ctx.api.post(`${path}/transactions/${tx}/${action}`),
      action === "accept" ? "accepted" : action === "decline" ? "declined" : "closed");
    await refresh();
    if (done && action === "accept") open(tx);
    if (done && action === "close" && current === tx) {
      current = null;
      conversation.replaceChildren(h("h2", { id: "conv-title" }, "Conversation"), h("p", { class: "muted" }, `Conversation ${tx} closed.`));
    }
  }

  // ---------------------------------------------------------------- conversations

  function renderChats() {
    const active = agent ? agent.active_transactions : [];
    chats.replaceChildren(...(active.length ? active.map((tx) => h("button", { type: "button",
      "aria-pressed": tx === current ? "true" : "false", onclick: () => open(tx) }, `Conversation ${tx}`))
      : [h("p", { class: "muted" }, "None open.")]));
  }

  async function open(tx) {
    current = tx;
    renderChats();
    const [detail, messages] = await Promise.all([
      attempt(() => ctx.api.get(`${path}/transactions/${tx}`)),
      attempt(() => ctx.api.all(`${path}/transactions/${tx}/messages`)),
    ]);
    if (!detail || !messages || current !== tx) return;
    const text = h("textarea", { name: "text", rows: 2, required: true });
    const reply = h("form", { "aria-label": "Reply to the customer" }, ...field("Your reply", text),
      h("button", { type: "submit" }, "Send"),
      h("button", { type: "button", class: "secondary", onclick: () => act(tx, "close") }, "Close conversation"));
    reply.addEventListener("submit", async (event) => {
      event.preventDefault();
      const sent = await attempt(() => ctx.api.post(`${path}/transactions/${tx}/messages`, { type: "text", text: text.value }));
      if (sent) { text.value = ""; open(tx); }
    });
    const list = h("ol", { class: "messages", "aria-label": "Messages", id: "messages" }, messages.map((m) => h("li",
      { class: m.direction, "data-state": m.state || "" },
      h("span", {}, m.summary),
      h("span", { class: `ticks ${m.state === "read" ? "read" : ""} ${m.state === "failed" ? "failed" : ""}`,
        title: m.state ? `${m.state}${m.error ? `: ${m.error.title || ""}` : ""}` : "received" },
      ` ${when(m.sent_at)} ${m.direction === "outbound" ? TICKS[m.state] || m.state : ""}`),
      m.direction === "outbound" && m.state ? h("span", { class: "skip" }, ` ${m.state}`) : null)));
    conversation.replaceChildren(h("h2", { id: "conv-title" }, `Conversation with ${who(detail.customer)}`),
      h("p", { class: "muted" }, detail.window_expires_at ? `Free replies until ${new Date(detail.window_expires_at).toLocaleString()}`
        : "The 24-hour window is closed: only a template can reopen it."), list, reply);
    list.scrollTop = list.scrollHeight;
  }

  // ---------------------------------------------------------------- live events

  function connect() {
    if (stopped) return;
    const url = new URL(`${path}/agents/${me}/events`, window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (cursor !== null) url.searchParams.set("cursor", cursor);
    socket = new WebSocket(url, ["wa-router.events", `bearer.${ctx.api.token}`]);
    socket.onopen = () => { live.textContent = "connected"; };
    socket.onmessage = (frame) => {
      const event = JSON.parse(frame.data);
      if (event.id) cursor = event.id;
      if (event.type === "hello") { cursor = event.cursor; update(event.agent); return; }
      if (event.type === "offer") {
        renderRing({ transaction_id: event.transaction_id, expires_at: event.expires_at },
          { customer: event.customer, messages: event.first_message ? [event.first_message] : [] });
        return;
      }
      if (["offer_rescinded", "assigned", "transferred", "transaction_closed", "status"].includes(event.type)) refresh();
      if (["message", "message_status"].includes(event.type) && event.transaction_id === current) open(current);
      if (event.type === "offer_rescinded") notify(`offer withdrawn: ${event.reason || ""}`);
    };
    socket.onclose = () => {
      live.textContent = stopped ? "stopped" : "reconnecting ...";
      if (!stopped) setTimeout(connect, 2000);
    };
  }

  refresh();
  connect();
  const poll = setInterval(refresh, 10000);  // should an event be missed while reconnecting
  return () => {
    stopped = true;
    clearInterval(poll);
    clearInterval(countdown);
    if (socket) socket.close();
  };
}
