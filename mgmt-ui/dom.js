// DOM building and formatting helpers. Text always goes in as text nodes,
// never as HTML, so names and payloads from the broker cannot inject markup.

/** el('div', {class: 'x', onclick: fn}, child, 'text', [more]) */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k === 'value') node.value = v;
    else if (v === true) node.setAttribute(k, '');
    else node.setAttribute(k, String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function fmtNum(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return '–';
  return Number(n).toLocaleString('en-US');
}

export function fmtRate(r) {
  if (r === undefined || r === null) return '–';
  const v = Number(r);
  const digits = v >= 100 ? 0 : v > 0 && v < 1 ? 2 : 1;
  return `${v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })}/s`;
}

export function fmtBytes(n) {
  if (n === undefined || n === null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function fmtDuration(ms) {
  if (ms === undefined || ms === null) return '–';
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

export function fmtTime(ms) {
  if (!ms) return '–';
  return new Date(ms).toLocaleString();
}

/** The hash link to an object's page. */
export function link(kind, vhost, name, label) {
  const href = vhost === null ? `#/${kind}/${encodeURIComponent(name)}` : `#/${kind}/${encodeURIComponent(vhost)}/${encodeURIComponent(name === '' ? 'amq.default' : name)}`;
  return el('a', { href }, label ?? (name === '' ? '(AMQP default)' : name));
}

/** A yes/no flag as a small badge. */
export function badge(text, kind) {
  return el('span', { class: `badge ${kind || ''}` }, text);
}

/** A figure box: big number, small label. */
export function figure(label, value, extra) {
  return el('div', { class: 'figure' }, el('div', { class: 'value' }, value), el('div', { class: 'label' }, label), extra);
}

/** A simple key/value table. */
export function kvTable(rows) {
  return el('table', { class: 'kv' }, el('tbody', {}, rows.filter(Boolean).map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {}, v)))));
}

/** Renders a JSON object of arguments or headers compactly. */
export function argsText(obj) {
  if (!obj || typeof obj !== 'object') return '';
  return Object.entries(obj).map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`).join(', ');
}

/**
 * Parses `key=value` lines (or a JSON object) into an object; numbers and
 * booleans keep their type, as RabbitMQ's forms do for headers.
 */
export function parseKv(text) {
  const t = text.trim();
  if (!t) return {};
  if (t.startsWith('{')) {
    const v = JSON.parse(t);
    if (typeof v !== 'object' || Array.isArray(v)) throw new Error('expected a JSON object');
    return v;
  }
  const out = {};
  for (const line of t.split(/\n|,(?![^{]*})/)) {
    const s = line.trim();
    if (!s) continue;
    const i = s.indexOf('=');
    if (i < 1) throw new Error(`expected key=value, got "${s}"`);
    const k = s.slice(0, i).trim();
    const raw = s.slice(i + 1).trim();
    let v = raw;
    if (/^-?\d+$/.test(raw)) v = Number(raw);
    else if (raw === 'true' || raw === 'false') v = raw === 'true';
    out[k] = v;
  }
  return out;
}

/** A form field with its label. */
export function field(label, input, hint) {
  return el('label', { class: 'field' }, el('span', {}, label), input, hint ? el('small', {}, hint) : null);
}

/** A status line under a form: ok (green) or error (red, with the server's reason). */
export function status(node, ok, text) {
  node.className = `status ${ok ? 'ok' : 'err'}`;
  node.textContent = text;
  node.hidden = false;
}

/**
 * Runs `action` when `form` is submitted: the text it returns is shown in
 * `out` as a success, a thrown error's message as a failure.
 */
export function onSubmit(form, out, action) {
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const text = await action();
      if (text) status(out, true, text);
    } catch (ex) {
      status(out, false, ex.message);
    }
  });
}

/** Collapsible section with a heading. */
export function section(title, ...body) {
  return el('details', { class: 'section', open: true }, el('summary', {}, title), el('div', { class: 'body' }, body));
}
