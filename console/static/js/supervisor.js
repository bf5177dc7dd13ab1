// Supervisor screens: WhatsApp link and webhook, templates, inboxes, users and licences, the live board.
import { attempt, field, h, notify, pill, table, when, who } from "./ui.js";

const MODES = ["round_robin", "manual", "proficiency", "sticky", "longest_idle"];
const LICENSES = ["phone_system", "contact_center", "contact_center_whatsapp"];
const ROLES = ["member", "admin", "owner"];

const base = (ctx) => `/v1/orgs/${ctx.org}`;

function select(name, options, value) {
  return h("select", { name }, options.map(([v, label]) => h("option", { value: v, selected: v === value }, label)));
}

// ------------------------------------------------------------------ WhatsApp: link + webhook

export function setup(view, ctx) {
  const webhook = h("section", { class: "card", "aria-labelledby": "wh-title" }, h("h2", { id: "wh-title" }, "Webhook"));
  const accounts = h("section", { class: "card", "aria-labelledby": "acc-title" },
    h("h2", { id: "acc-title" }, "Linked WhatsApp accounts"));
  const refusal = h("p", { class: "error", role: "alert", id: "link-error" });
  const form = h("form", { class: "card", "aria-labelledby": "link-title" },
    h("h2", { id: "link-title" }, "Link a WhatsApp Business Account"),
    field("WABA id", h("input", { name: "waba_id", required: true, inputmode: "numeric" })),
    field("Access token", h("input", { name: "access_token", type: "password", required: true, autocomplete: "off" })),
    field("App secret", h("input", { name: "app_secret", type: "password", required: true, autocomplete: "off" })),
    h("button", { type: "submit" }, "Link account"), refusal);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    refusal.textContent = "";
    const data = Object.fromEntries(new FormData(form));
    try {
      await ctx.api.post(`${base(ctx)}/whatsapp/accounts`, data);
      notify(`WABA ${data.waba_id} linked`);
      form.reset();
      load();
    } catch (error) {
      refusal.textContent = `Not linked: ${error.message}`;  // Meta's refusal reason, as Meta worded it
    }
  });
  view.append(h("div", { class: "grid" }, form, webhook), accounts);

  async function load() {
    const endpoint = await attempt(() => ctx.api.get(`${base(ctx)}/whatsapp/webhook`));
    if (endpoint) {
      webhook.replaceChildren(h("h2", { id: "wh-title" }, "Webhook"),
        h("p", {}, "Enter these in the Meta app dashboard (WhatsApp → Configuration)."),
        h("h3", {}, "Callback URL"), h("p", { class: "mono", id: "callback-url" }, endpoint.callback_url),
        h("h3", {}, "Verify token"), h("p", { class: "mono", id: "verify-token" }, endpoint.verify_token),
        h("button", { type: "button", class: "secondary", onclick: async () => {
          if (await attempt(() => ctx.api.post(`${base(ctx)}/whatsapp/webhook/rotate`), "verify token rotated")) load();
        } }, "Rotate verify token"));
    }
    const list = await attempt(() => ctx.api.all(`${base(ctx)}/whatsapp/accounts`));
    if (!list) return;
    accounts.replaceChildren(h("h2", { id: "acc-title" }, "Linked WhatsApp accounts"),
      ...(list.length ? list.map((a) => h("div", {},
        h("h3", {}, `${a.name || "WABA"} (${a.waba_id})`),
        table(["Number id", "Number", "Name", "Quality", "Use"], a.phone_numbers.map((n) => [
          h("span", { class: "mono" }, n.phone_number_id), n.display_phone_number || "", n.verified_name || "",
          n.quality_rating || "", n.inbox_id ? `inbox ${n.inbox_id}` : (n.available ? "free" : "used elsewhere")])))) :
        [h("p", { class: "muted" }, "No account linked yet.")]));
  }
  load();
}

// ------------------------------------------------------------------ templates

export function templates(view, ctx) {
  const lists = h("div", {});
  const form = h("form", { class: "card", "aria-labelledby": "tpl-title" }, h("h2", { id: "tpl-title" }, "New template"));
  view.append(form, lists);

  function renderForm(accounts) {
    form.replaceChildren(h("h2", { id: "tpl-title" }, "New template"),
      ...field("Account", select("waba_id", accounts.map((a) => [a.waba_id, `${a.name || ""} ${a.waba_id}`]))),
      ...field("Name (lowercase, digits, _)", h("input", { name: "name", required: true, pattern: "[a-z0-9_]+" })),
      ...field("Category", select("category", [["UTILITY", "Utility"], ["MARKETING", "Marketing"],
        ["AUTHENTICATION", "Authentication"]])),
      ...field("Language", h("input", { name: "language", value: "en_US", required: true })),
      ...field("Body ({{1}}, {{2}} ... for parameters)", h("textarea", { name: "body", rows: 3, required: true })),
      h("button", { type: "submit", disabled: !accounts.length }, "Submit for review"));
  }

  async function load() {
    const accounts = await attempt(() => ctx.api.all(`${base(ctx)}/whatsapp/accounts`));
    if (!accounts) return;
    // The periodic refresh must not wipe what the supervisor is typing: the form is built once.
    const known = accounts.map((a) => a.waba_id).join(",");
    if (form.dataset.accounts !== known) {
      form.dataset.accounts = known;
      renderForm(accounts);
    }
    const sections = [];
    for (const account of accounts) {
      const path = `${base(ctx)}/whatsapp/accounts/${account.waba_id}/templates`;
      const items = await attempt(() => ctx.api.all(path)) || [];
      sections.push(h("section", { class: "card" }, h("h2", {}, `Templates of ${account.name || account.waba_id}`),
        table(["Name", "Category", "Body", "Review status per language"], items.map((t) => [
          t.name, t.category, t.body || "",
          h("span", {}, t.languages.map((l) => h("span", {}, `${l.language} `, pill(l.status, `status-${l.status}`),
            l.reason ? ` (${l.reason}) ` : " ")))])),
        h("button", { type: "button", class: "secondary", onclick: async () => {
          if (await attempt(() => ctx.api.post(`${path}/sync`), "templates read from Meta")) load();
        } }, "Sync from Meta")));
    }
    lists.replaceChildren(...sections);  // swapped at once: no flicker, no half-built list
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    const body = { name: data.name, category: data.category, languages: [data.language], body: data.body };
    if (await attempt(() => ctx.api.post(`${base(ctx)}/whatsapp/accounts/${data.waba_id}/templates`, body),
      `template ${data.name} submitted: pending Meta's review`)) load();
  });
  load();
  const timer = setInterval(load, 10000);  // review results arrive by webhook
  return () => clearInterval(timer);
}

// ------------------------------------------------------------------ inboxes

export function inboxes(view, ctx) {
  const list = h("section", { class: "card", "aria-labelledby": "ib-title" }, h("h2", { id: "ib-title" }, "Inboxes"));
  const form = h("form", { class: "card", "aria-labelledby": "ibf-title" });
  view.append(form, list);
  let editing = null;

  async function load() {
    const [items, numbers, candidates] = await Promise.all([
      attempt(() => ctx.api.all(`${base(ctx)}/inboxes`)),
      attempt(() => ctx.api.all(`${base(ctx)}/whatsapp/numbers`)),
      attempt(() => ctx.api.all(`${base(ctx)}/inboxes/agent-candidates`)),
    ]);
    if (!items || !numbers || !candidates) return;
    list.replaceChildren(h("h2", { id: "ib-title" }, "Inboxes"),
      table(["Name", "Number", "Mode", "Reassign after", "Dials", "Agents", ""], items.map((i) => [
        i.name, i.display_phone_number || i.phone_number_id, i.assignment_mode.replace("_", " "),
        `${i.reassign_after_s} s`, String(i.dials_per_agent),
        i.agents.map((a) => `${a.name} (${a.proficiency})`).join(", "),
        h("span", {},
          h("button", { type: "button", class: "secondary", onclick: () => { editing = i; renderForm(numbers, candidates); },
            "aria-label": `Edit inbox ${i.name}` }, "Edit"),
          h("button", { type: "button", class: "danger", "aria-label": `Delete inbox ${i.name}`, onclick: async () => {
            if (!confirm(`Delete inbox ${i.name}?`)) return;
            if (await attempt(() => ctx.api.del(`${base(ctx)}/inboxes/${i.id}`), `inbox ${i.name} deleted`)) load();
          } }, "Delete"))])));
    renderForm(numbers, candidates);
  }

  function renderForm(numbers, candidates) {
    const current = editing;
    const usable = numbers.filter((n) => n.available || (current && n.phone_number_id === current.phone_number_id));
    const members = new Map((current ? current.agents : []).map((a) => [a.user_id, a.proficiency]));
    form.replaceChildren(h("h2", { id: "ibf-title" }, current ? `Edit inbox ${current.name}` : "New inbox"),
      ...field("Name", h("input", { name: "name", required: true, value: current ? current.name : "" })),
      ...field("WhatsApp number", select("phone_number_id", usable.map((n) =>
        [n.phone_number_id, `${n.display_phone_number || ""} (${n.phone_number_id})`]), current && current.phone_number_id)),
      ...field("Assignment mode", select("assignment_mode", MODES.map((m) => [m, m.replace("_", " ")]),
        current ? current.assignment_mode : "round_robin")),
      ...field("Reassign an unanswered offer after (seconds, 1-900)", h("input", { name: "reassign_after_s", type: "number",
        min: 1, max: 900, value: current ? current.reassign_after_s : 30 })),
      ...field("Dials per agent (sticky mode, 1-100)", h("input", { name: "dials_per_agent", type: "number", min: 1, max: 100,
        value: current ? current.dials_per_agent : 1 })),
      h("fieldset", {}, h("legend", {}, "Agents and proficiency (1-100; proficiency mode prefers the highest)"),
        candidates.length ? candidates.map((c) => h("div", {},
          h("label", {}, h("input", { type: "checkbox", name: "agent", value: c.user_id, checked: members.has(c.user_id) }),
            `${c.name} (${c.email})`),
          h("label", {}, "proficiency", h("input", { type: "number", class: "small", name: `prof-${c.user_id}`, min: 1,
            max: 100, value: members.get(c.user_id) || 1, "aria-label": `Proficiency of ${c.name}` }))))
          : h("p", { class: "muted" }, "No user holds the WhatsApp agent licence yet.")),
      h("button", { type: "submit" }, current ? "Save inbox" : "Create inbox"),
      ...(current ? [h("button", { type: "button", class: "secondary",
        onclick: () => { editing = null; renderForm(numbers, candidates); } }, "Cancel")] : []));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = {
      name: data.get("name"), phone_number_id: data.get("phone_number_id"), assignment_mode: data.get("assignment_mode"),
      reassign_after_s: Number(data.get("reassign_after_s")), dials_per_agent: Number(data.get("dials_per_agent")),
      agents: data.getAll("agent").map((id) => ({ user_id: Number(id), proficiency: Number(data.get(`prof-${id}`)) })),
    };
    const done = editing
      ? await attempt(() => ctx.api.patch(`${base(ctx)}/inboxes/${editing.id}`, body), `inbox ${body.name} saved`)
      : await attempt(() => ctx.api.post(`${base(ctx)}/inboxes`, body), `inbox ${body.name} created`);
    if (done) { editing = null; load(); }
  });
  load();
}

// ------------------------------------------------------------------ users and licences

export function users(view, ctx) {
  const list = h("section", { class: "card", "aria-labelledby": "us-title" }, h("h2", { id: "us-title" }, "Users"));
  const issued = h("p", { class: "mono", role: "status" });
  const form = h("form", { class: "card", "aria-labelledby": "usf-title" },
    h("h2", { id: "usf-title" }, "New user"),
    ...field("Name", h("input", { name: "name", required: true })),
    ...field("Email", h("input", { name: "email", type: "email", required: true })),
    ...field("Role", select("role", ROLES.map((r) => [r, r]), "member")),
    h("fieldset", {}, h("legend", {}, "Licences"), LICENSES.map((l) =>
      h("label", {}, h("input", { type: "checkbox", name: "licenses", value: l,
        checked: l === "phone_system" || l === "contact_center_whatsapp" }), l))),
    h("button", { type: "submit" }, "Create user"), issued);
  view.append(h("div", { class: "grid" }, form), list);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = { name: data.get("name"), email: data.get("email"), role: data.get("role"), licenses: data.getAll("licenses") };
    const created = await attempt(() => ctx.api.post(`${base(ctx)}/users`, body), `user ${body.name} created`);
    if (created) {
      issued.textContent = `Token for ${created.name} (shown once): ${created.token}`;
      form.reset();
      load();
    }
  });

  async function load() {
    const items = await attempt(() => ctx.api.all(`${base(ctx)}/users`));
    if (!items) return;
    list.replaceChildren(h("h2", { id: "us-title" }, "Users"),
      table(["Name", "Email", "Role", "Licences", ""], items.map((u) => {
        const boxes = LICENSES.map((l) => h("label", {}, h("input", { type: "checkbox", value: l,
          checked: u.licenses.includes(l), "aria-label": `${l} for ${u.name}` }), l));
        return [u.name, u.email, u.role, h("span", {}, boxes), h("span", {},
          h("button", { type: "button", class: "secondary", onclick: async () => {
            const licenses = boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
            if (await attempt(() => ctx.api.patch(`${base(ctx)}/users/${u.id}`, { licenses }), `licences of ${u.name} saved`)) load();
          } }, "Save licences"),
          u.id === ctx.user.id ? null : h("button", { type: "button", class: "danger", onclick: async () => {
            if (!confirm(`Delete ${u.name}?`)) return;
            if (await attempt(() => ctx.api.del(`${base(ctx)}/users/${u.id}`), `${u.name} deleted`)) load();
          } }, "Delete"))];
      })));
  }
  load();
}

// ------------------------------------------------------------------ live board

export function board(view, ctx) {
  const stamp = h("p", { class: "muted" });
  const conversations = h("div", {});
  const agents = h("div", {});
  // Transfer: a form of its own (the polled tables are redrawn every 2 s, a form inside them would lose its input).
  const txInput = h("input", { name: "transaction", type: "number", min: 1, required: true, class: "small" });
  const target = h("select", { name: "target" }, h("option", { value: "queue" }, "back to the queue"));
  const transfer = h("form", { "aria-label": "Transfer a conversation", class: "inline" },
    ...field("Conversation #", txInput), ...field("Transfer to", target), h("button", { type: "submit" }, "Transfer"));
  transfer.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = target.value === "queue" ? { to_queue: true } : { user_id: Number(target.value) };
    if (await attempt(() => ctx.api.post(`${base(ctx)}/transactions/${txInput.value}/transfer`, body),
      `conversation ${txInput.value} transferred`)) poll();
  });
  view.append(h("section", { class: "card", "aria-labelledby": "bd-title" }, h("h2", { id: "bd-title" }, "Live board"), stamp,
    h("h3", {}, "Agents"), agents, h("h3", {}, "Conversations (newest first)"), conversations,
    h("h3", {}, "Transfer"), h("p", { class: "muted" },
      "Move a queued, ringing or assigned conversation to another agent of its inbox, or back to its queue."), transfer));
  let stopped = false;
  let known = "";

  async function poll() {
    try {
      const [page, inboxList, candidates] = await Promise.all([
        ctx.api.get(`${base(ctx)}/transactions`, { limit: 50 }),
        ctx.api.all(`${base(ctx)}/inboxes`),
        ctx.api.all(`${base(ctx)}/inboxes/agent-candidates`),
      ]);
      const inboxNames = new Map(inboxList.map((i) => [i.id, i.name]));
      const names = new Map(candidates.map((c) => [c.user_id, c.name]));
      const listed = candidates.map((c) => `${c.user_id}:${c.name}`).join("|");
      if (listed !== known) {  // only when the agents change: the supervisor's choice stays
        known = listed;
        const chosen = target.value;
        target.replaceChildren(h("option", { value: "queue" }, "back to the queue"),
          ...candidates.map((c) => h("option", { value: c.user_id, selected: String(c.user_id) === chosen }, c.name)));
      }
      const views = await Promise.all(candidates.slice(0, 50).map((c) =>
        ctx.api.get(`${base(ctx)}/agents/${c.user_id}`).catch(() => null)));
      agents.replaceChildren(table(["Agent", "Status", "Conversations", "Ringing"], views.filter(Boolean).map((a) => [
        names.get(a.user_id) || `#${a.user_id}`, a.status + (a.status_reason ? ` (${a.status_reason})` : ""),
        String(a.active_transactions.length), a.pending_offer ? `conversation ${a.pending_offer.transaction_id}` : ""])));
      conversations.replaceChildren(table(["#", "Inbox", "Customer", "State", "Agent", "Since"], page.items.map((t) => [
        String(t.id), inboxNames.get(t.inbox_id) || String(t.inbox_id), who(t.customer),
        h("span", { "data-tx": t.id, "data-state": t.state }, pill(t.state, `state-${t.state}`),
          t.state === "offered" && t.offered_to ? ` to ${names.get(t.offered_to) || t.offered_to}` : ""),
        t.agent_id ? names.get(t.agent_id) || String(t.agent_id) : "",
        when(t.closed_at || t.assigned_at || t.waiting_since)])));
      stamp.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      stamp.textContent = `Not updated: ${error.message}`;
    }
    if (!stopped) timer = setTimeout(poll, 2000);
  }
  let timer = setTimeout(poll, 0);
  return () => { stopped = true; clearTimeout(timer); };
}
