// Small DOM helpers: elements are built with textContent only, so API data is never parsed as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

let noticeTimer = null;

export function notify(text, bad = false) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.classList.toggle("bad", bad);
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { box.textContent = ""; }, bad ? 12000 : 5000);
}

// A labelled field: <label for=id> + control.
let fieldCounter = 0;
export function field(labelText, control) {
  const id = control.id || `f${++fieldCounter}`;
  control.id = id;
  return [h("label", { for: id }, labelText), control];
}

export function table(headers, rows, caption) {
  return h("table", {},
    caption ? h("caption", { class: "muted" }, caption) : null,
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.length ? rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))
      : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "nothing yet"))));
}

export function pill(text, cls) {
  return h("span", { class: `pill ${cls || ""}` }, text);
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "";
}

export function who(customer) {
  return customer ? (customer.name || customer.wa_id || customer.username || customer.user_id || `#${customer.id}`) : "";
}

// Runs an async action from a form or button; shows the server's refusal, returns its result.
export async function attempt(action, success) {
  try {
    const result = await action();
    if (success) notify(success);
    return result;
  } catch (error) {
    notify(error.message, true);
    return undefined;
  }
}
