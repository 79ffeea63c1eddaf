// The management API client: every call carries HTTP Basic credentials kept
// in sessionStorage (gone when the tab closes), and every failure becomes an
// ApiError holding the server's `reason`, so pages can show it as it is.

const KEY = 'warren.auth';

export class ApiError extends Error {
  constructor(status, error, reason) {
    super(reason || error || `HTTP ${status}`);
    this.status = status;
    this.error = error;
    this.reason = reason;
  }
}

export function hasCredentials() {
  return sessionStorage.getItem(KEY) !== null;
}

export function setCredentials(user, password) {
  // btoa takes Latin-1 only: encode UTF-8 bytes first so any password works.
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  sessionStorage.setItem(KEY, btoa(bin));
}

export function clearCredentials() {
  sessionStorage.removeItem(KEY);
}

/** `/` is `%2F` in URLs, as every other special character. */
export const enc = encodeURIComponent;

/** One API call; resolves to the parsed JSON body (null when empty). */
export async function api(method, path, body, extraHeaders) {
  const headers = { Accept: 'application/json', ...extraHeaders };
  const auth = sessionStorage.getItem(KEY);
  if (auth) headers.Authorization = `Basic ${auth}`;
  // credentials: 'omit' keeps the browser's own Basic-auth prompt away: the
  // API answers 401 with WWW-Authenticate (as RabbitMQ's), and a prompt
  // would stall the request instead of letting the page show the reason.
  const init = { method, headers, credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(`api${path}`, init);
  } catch (e) {
    throw new ApiError(0, 'network', `Cannot reach the server: ${e.message}`);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!res.ok) {
    const reason = data && typeof data === 'object' ? data.reason : null;
    const error = data && typeof data === 'object' ? data.error : null;
    const err = new ApiError(res.status, error, reason || (typeof data === 'string' && data) || res.statusText);
    if (res.status === 401 && path !== '/whoami') {
      window.dispatchEvent(new CustomEvent('warren:unauthorized', { detail: err }));
    }
    throw err;
  }
  return data;
}

export const get = (path) => api('GET', path);

/** A value at a dotted path such as `message_stats.publish_details.rate`. */
export function pick(obj, dotted) {
  let v = obj;
  for (const k of dotted.split('.')) {
    if (v == null) return undefined;
    v = v[k];
  }
  return v;
}

/**
 * One page of a list, sorted and filtered by the server (RabbitMQ's paging
 * parameters). A server that answers a plain array (no paging support) gets
 * the same done here, so the tables work either way.
 * `opts`: {page, pageSize, name, regex, sort, reverse, columns}.
 * Resolves to {items, page, pageCount, pageSize, filtered, total, paged}.
 */
export async function list(path, opts) {
  const q = new URLSearchParams();
  q.set('page', String(opts.page || 1));
  q.set('page_size', String(opts.pageSize || 100));
  if (opts.name) {
    q.set('name', opts.name);
    q.set('use_regex', opts.regex ? 'true' : 'false');
  }
  if (opts.sort) {
    q.set('sort', opts.sort);
    q.set('sort_reverse', opts.reverse ? 'true' : 'false');
  }
  if (opts.columns) q.set('columns', opts.columns.join(','));
  const data = await get(`${path}?${q}`);
  if (!Array.isArray(data)) {
    return {
      items: data.items || [],
      page: data.page || 1,
      pageCount: data.page_count || 1,
      pageSize: data.page_size || opts.pageSize,
      filtered: data.filtered_count ?? (data.items || []).length,
      total: data.total_count ?? (data.items || []).length,
      paged: true,
    };
  }
  return pageLocally(data, opts);
}

export function pageLocally(all, opts) {
  let rows = all;
  if (opts.name) {
    let test;
    if (opts.regex) {
      let re;
      try {
        re = new RegExp(opts.name);
      } catch (e) {
        throw new ApiError(400, 'bad_request', `Invalid regular expression: ${e.message}`);
      }
      test = (n) => re.test(n);
    } else {
      const needle = opts.name.toLowerCase();
      test = (n) => String(n).toLowerCase().includes(needle);
    }
    rows = rows.filter((r) => test(r.name ?? ''));
  }
  if (opts.sort) {
    const dir = opts.reverse ? -1 : 1;
    rows = [...rows].sort((a, b) => dir * compare(pick(a, opts.sort), pick(b, opts.sort)));
  }
  const pageSize = opts.pageSize || 100;
  const pageCount = Math.max(1, Math.ceil(rows.length / pageSize));
  const page = Math.min(Math.max(1, opts.page || 1), pageCount);
  return {
    items: rows.slice((page - 1) * pageSize, page * pageSize),
    page,
    pageCount,
    pageSize,
    filtered: rows.length,
    total: all.length,
    paged: false,
  };
}

function compare(a, b) {
  if (a === b) return 0;
  if (a === undefined || a === null) return -1;
  if (b === undefined || b === null) return 1;
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return String(a).localeCompare(String(b));
}
