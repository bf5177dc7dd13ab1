// The HTTP API, with the caller's bearer token; errors carry the server's message (and Meta's, if any).

export class ApiError extends Error {
  constructor(status, body) {
    super(errorText(status, body));
    this.status = status;
    this.body = body;
  }
}

export function errorText(status, body) {
  if (!body) return `request failed (${status})`;
  let text;
  if (Array.isArray(body.detail)) {
    text = body.detail.map((d) => (d.loc ? `${d.loc.filter((p) => p !== "body").join(".")}: ` : "") + d.msg).join("; ");
  } else {
    text = String(body.detail ?? `request failed (${status})`);
  }
  if (body.meta_error && body.meta_error.message && !text.includes(body.meta_error.message)) {
    text += ` — Meta: ${body.meta_error.message} (code ${body.meta_error.code})`;
  }
  return text;
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  async request(method, path, { body, params } = {}) {
    const url = new URL(path, window.location.origin);
    for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null) url.searchParams.set(k, v);
    const headers = { Authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  get(path, params) { return this.request("GET", path, { params }); }
  post(path, body) { return this.request("POST", path, { body }); }
  patch(path, body) { return this.request("PATCH", path, { body }); }
  put(path, body) { return this.request("PUT", path, { body }); }
  del(path) { return this.request("DELETE", path); }

  // Every item of a paged list (follows next_cursor).
  async all(path, params = {}) {
    const items = [];
    let cursor = null;
    do {
      const page = await this.get(path, { ...params, limit: 200, cursor });
      items.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor);
    return items;
  }
}
