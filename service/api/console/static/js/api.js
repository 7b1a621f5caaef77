// Every call the console makes goes through `api()`: same origin, the admin key as a bearer
// token, JSON in and out, and the API's error body ({"error": {"code", "message"}}) turned into
// an ApiError a tab can show. A 401 anywhere means the stored key is wrong or was rotated: the
// key is dropped and the app returns to the login form (the "ospo:unauthorized" event).

const STORAGE_KEY = "ospo.console.adminKey";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// sessionStorage: the key lives as long as the tab, never in a cookie the browser would send
// on its own, never on disk after the browser closes.
export const adminKey = {
  get: () => sessionStorage.getItem(STORAGE_KEY),
  set: (key) => sessionStorage.setItem(STORAGE_KEY, key),
  clear: () => sessionStorage.removeItem(STORAGE_KEY),
};

/** Call the API. `query` becomes the query string; `body` is sent as JSON. Returns the parsed
 *  answer (null for 204) or throws ApiError. */
export async function api(path, { method = "GET", query, body, key } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json" };
  const token = key ?? adminKey.get();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, "network", `the API did not answer (${e.message})`);
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const detail = data && data.error ? data.error : {};
    const err = new ApiError(
      response.status,
      detail.code || `http_${response.status}`,
      detail.message || response.statusText || "request failed",
    );
    if (response.status === 401 && key === undefined) {
      window.dispatchEvent(new CustomEvent("ospo:unauthorized", { detail: err.message }));
    }
    throw err;
  }
  return data;
}

let openapi = null;

/** The API's OpenAPI document (fetched once): tabs use it to find optional features, e.g.
 *  whether /v1/search takes filters yet. Null when it cannot be read. */
export async function apiSchema() {
  if (openapi === null) {
    openapi = api("/openapi.json").catch(() => ({}));
  }
  return openapi;
}

/** Whether the OpenAPI document names `path` with `method` (an endpoint may be newer than the
 *  console, or older). */
export async function hasOperation(path, method = "get") {
  const spec = await apiSchema();
  return Boolean(spec.paths && spec.paths[path] && spec.paths[path][method]);
}
