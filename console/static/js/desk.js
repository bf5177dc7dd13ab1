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
  const back = h("section", { class: "card", "aria-labelledby": "back-title", id: "whatsapp-back", hidden: true });
  view.append(
    h("section", { class: "card" }, h("h2", {}, "Your status"), presence, h("p", {}, "Live updates: ", live)),
    ring, announcer,
    h("div", { class: "desk" }, h("section", { class: "card" }, h("h2", {}, "Conversations"), chats), conversation), back);

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

  // A template form: name, language and one parameter a line (approved templates only; the server says which is wrong).
  function templateForm(label, submitText, send) {
    const name = h("input", { name: "template", required: true, pattern: "[a-z0-9_]+", autocomplete: "off" });
    const language = h("input", { name: "language", required: true, value: "en_US", class: "small" });
    const params = h("textarea", { name: "parameters", rows: 2 });
    const form = h("form", { "aria-label": label }, ...field("Template name", name), ...field("Language", language),
      ...field("Parameters ({{1}}, {{2}} ...: one a line)", params), h("button", { type: "submit" }, submitText));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const template = { name: name.value.trim(), language: language.value.trim(),
        parameters: params.value.split("\n").map((p) => p.trim()).filter(Boolean) };
      if (await send(template)) { name.value = ""; params.value = ""; }
    });
    return form;
  }

  function windowText(expiresAt) {
    if (!expiresAt || new Date(expiresAt).getTime() <= Date.now()) {
      return "The 24-hour window is closed: only an approved template can reopen it.";
    }
    const minutes = Math.round((new Date(expiresAt).getTime() - Date.now()) / 60000);
    const left = minutes >= 60 ? `${Math.floor(minutes / 60)} h ${minutes % 60} min` : `${minutes} min`;
    return `Free replies until ${new Date(expiresAt).toLocaleString()} (the window closes in ${left}).`;
  }

  let replyTo = null;  // {wamid, summary} of the message being answered

  async function open(tx) {
    if (current !== tx) replyTo = null;
    current = tx;
    renderChats();
    const [detail, messages] = await Promise.all([
      attempt(() => ctx.api.get(`${path}/transactions/${tx}`)),
      attempt(() => ctx.api.all(`${path}/transactions/${tx}/messages`)),
    ]);
    if (!detail || !messages || current !== tx) return;
    const byWamid = new Map(messages.filter((m) => m.wamid).map((m) => [m.wamid, m.summary]));
    const windowOpen = detail.window_expires_at && new Date(detail.window_expires_at).getTime() > Date.now();
    const mine = detail.state === "assigned" && detail.agent_id === me;
    const sendMessage = async (body, success) => {
      if (replyTo) body.reply_to = replyTo.wamid;
      const sent = await attempt(() => ctx.api.post(`${path}/transactions/${tx}/messages`, body), success);
      if (sent) { replyTo = null; open(tx); }
      return sent;
    };
    const text = h("textarea", { name: "text", rows: 2, required: true });
    const replying = replyTo ? h("p", { class: "replying", id: "replying-to" }, `Replying to “${replyTo.summary}” `,
      h("button", { type: "button", class: "secondary", onclick: () => { replyTo = null; open(tx); } }, "Cancel reply")) : null;
    const reply = h("form", { "aria-label": "Reply to the customer" }, replying, ...field("Your reply", text),
      h("button", { type: "submit" }, "Send"),
      h("button", { type: "button", class: "secondary", onclick: () => act(tx, "close") }, "Close conversation"));
    reply.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (await sendMessage({ type: "text", text: text.value })) text.value = "";
    });
    const template = templateForm("Send a template", "Send template",
      (t) => sendMessage({ type: "template", template: t }, `template ${t.name} queued`));
    const templates = h("details", { open: !windowOpen, id: "template-send" },
      h("summary", {}, windowOpen ? "Send an approved template" : "Send an approved template (the window is closed)"),
      template);
    const list = h("ol", { class: "messages", "aria-label": "Messages", id: "messages" }, messages.map((m) => h("li",
      { class: m.direction, "data-state": m.state || "", "data-wamid": m.wamid || "" },
      m.reply_to ? h("span", { class: "quote" }, `↩ ${byWamid.get(m.reply_to) || "an earlier message"}`) : null,
      h("span", {}, m.summary),
      h("span", { class: `ticks ${m.state === "read" ? "read" : ""} ${m.state === "failed" ? "failed" : ""}`,
        title: m.state ? `${m.state}${m.error ? `: ${m.error.title || ""}` : ""}` : "received" },
      ` ${when(m.sent_at)} ${m.direction === "outbound" ? TICKS[m.state] || m.state : ""}`),
      m.direction === "outbound" && m.state ? h("span", { class: "skip" }, ` ${m.state}`) : null,
      mine && m.wamid ? h("button", { type: "button", class: "secondary", "aria-label": `Reply to: ${m.summary}`,
        onclick: () => { replyTo = { wamid: m.wamid, summary: m.summary }; open(tx).then(() => { const box = conversation.querySelector("textarea[name=text]"); if (box) box.focus(); }); } }, "↩ Reply") : null)));
    conversation.replaceChildren(h("h2", { id: "conv-title" }, `Conversation with ${who(detail.customer)}`),
      h("p", { class: "muted", id: "window" }, windowText(detail.window_expires_at)), list,
      ...(mine ? [windowOpen ? reply : h("p", {}, h("button", { type: "button", class: "secondary",
        onclick: () => act(tx, "close") }, "Close conversation")), templates] : [h("p", { class: "muted" }, `This conversation is ${detail.state}.`)]));
    list.scrollTop = list.scrollHeight;
  }

  // ---------------------------------------------------------------- WhatsApp Back: write first, with a template

  async function renderBack() {
    const inboxes = await attempt(() => ctx.api.all(`${path}/inboxes`));
    if (!inboxes || !inboxes.length) return;
    const inbox = h("select", { name: "inbox" }, inboxes.map((i) => h("option", { value: i.id }, i.name)));
    const to = h("input", { name: "to", required: true, autocomplete: "off", placeholder: "4915112345678 or US.1234..." });
    const form = templateForm("WhatsApp Back", "Start conversation", async (template) => {
      const value = to.value.trim();
      const body = { to: /^\d{5,20}$/.test(value) ? { wa_id: value } : { user_id: value }, template };
      const started = await attempt(() => ctx.api.post(`${path}/inboxes/${inbox.value}/outbound`, body),
        "conversation started");
      if (!started) return started;
      to.value = "";
      await refresh();
      open(started.transaction_id);
      return started;
    });
    form.prepend(...field("Inbox", inbox), ...field("Customer's phone number or WhatsApp user id", to));
    back.replaceChildren(h("h2", { id: "back-title" }, "WhatsApp Back"),
      h("p", { class: "muted" }, "Write first to a customer with an approved template. The conversation is yours "
        + "at once, so it needs a free place within your capacity."), form);
    back.hidden = false;
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
      if (event.type === "hello") {
        // A first connection starts from now; a reconnection resumes after the last event seen (the
        // server replays what was missed), and the open conversation is read again.
        const resumed = cursor !== null;
        if (!resumed) cursor = event.cursor;
        update(event.agent);
        if (resumed && current !== null) open(current);
        return;
      }
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
  renderBack();
  connect();
  const poll = setInterval(refresh, 10000);  // should an event be missed while reconnecting
  return () => {
    stopped = true;
    clearInterval(poll);
    clearInterval(countdown);
    if (socket) socket.close();
  };
}
