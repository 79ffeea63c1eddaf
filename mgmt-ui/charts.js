// Small line charts on canvas, redrawn whole on each change (a few hundred
// points: cheaper than a library), drawn from the broker's sampled history
// (`*_details.samples`) for the range picked, or filled live.

import { el } from './dom.js';

const COLORS = ['#2f6fde', '#e0822a', '#2e9b5a', '#b2399e', '#7a5af8', '#c0392b', '#16a2b8', '#8d6e63', '#6b7280', '#d4a017'];

export class LineChart {
  /**
   * `series`: [{label}], `format`: value -> axis text, `points`: samples kept.
   */
  constructor(title, series, { format = (v) => String(v), points = 200 } = {}) {
    this.series = series.map((s, i) => ({ ...s, color: s.color || COLORS[i % COLORS.length], values: [] }));
    this.format = format;
    this.points = points;
    this.times = [];
    this.canvas = el('canvas', { class: 'chart-canvas', height: 140 });
    this.legend = el('div', { class: 'legend' });
    this.node = el('div', { class: 'chart' }, el('div', { class: 'chart-title' }, title), this.canvas, this.legend);
    this.resize = () => this.draw();
    window.addEventListener('resize', this.resize);
  }

  /** Adds one sample (values in series order) and redraws. */
  push(values, t = Date.now()) {
    this.times.push(t);
    this.series.forEach((s, i) => s.values.push(Number(values[i]) || 0));
    if (this.times.length > this.points) {
      this.times.shift();
      for (const s of this.series) s.values.shift();
    }
    this.draw();
  }

  /** Replaces every point with a history: `times` oldest first, `rows` one array of values per time. */
  setHistory(times, rows) {
    this.times = times.slice(-this.points);
    this.series.forEach((s, i) => (s.values = rows.slice(-this.points).map((r) => Number(r[i]) || 0)));
    this.draw();
  }

  destroy() {
    window.removeEventListener('resize', this.resize);
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || 300;
    const h = c.clientHeight || 140;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const left = 52;
    const right = 8;
    const top = 8;
    const bottom = 18;
    const pw = w - left - right;
    const ph = h - top - bottom;
    let max = 0;
    for (const s of this.series) for (const v of s.values) max = Math.max(max, v);
    const scale = niceMax(max);
    g.font = '11px system-ui, sans-serif';
    g.fillStyle = '#6b7280';
    g.strokeStyle = '#e5e7eb';
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (let i = 0; i <= 4; i++) {
      const y = top + ph - (ph * i) / 4;
      g.beginPath();
      g.moveTo(left, Math.round(y) + 0.5);
      g.lineTo(left + pw, Math.round(y) + 0.5);
      g.stroke();
      g.fillText(this.format((scale * i) / 4), left - 6, y);
    }
    const n = this.times.length;
    if (n > 0) {
      const span = Math.max(1, this.times[n - 1] - this.times[0]);
      g.textAlign = 'left';
      g.textBaseline = 'top';
      g.fillText(n > 1 ? `last ${fmtSpan(span)}` : 'collecting…', left, top + ph + 4);
      const xOf = (i) => (n === 1 ? left + pw : left + (pw * (this.times[i] - this.times[0])) / span);
      for (const s of this.series) {
        g.strokeStyle = s.color;
        g.lineWidth = 2;
        g.beginPath();
        s.values.forEach((v, i) => {
          const x = xOf(i);
          const y = top + ph - (ph * v) / scale;
          if (i === 0) g.moveTo(x, y);
          else g.lineTo(x, y);
        });
        g.stroke();
        if (n === 1) {
          g.fillStyle = s.color;
          g.fillRect(xOf(0) - 2, top + ph - (ph * s.values[0]) / scale - 2, 4, 4);
        }
      }
    }
    this.legend.replaceChildren(
      ...this.series.map((s) =>
        el('span', { class: 'item' }, el('i', { style: `background:${s.color}` }), `${s.label} `, el('b', {}, s.values.length ? this.format(s.values[s.values.length - 1]) : '–')),
      ),
    );
  }
}

function fmtSpan(ms) {
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

/** The ranges RabbitMQ's UI offers: [label, age s, increment s]. */
export const RANGES = [
  ['Last minute', 60, 5],
  ['Last 10 minutes', 600, 5],
  ['Last hour', 3600, 60],
  ['Last 8 hours', 28800, 600],
  ['Last day', 86400, 1800],
];

/** The chosen range (kept for the session), as [age, incr]. */
export function chosenRange() {
  const r = RANGES.find((x) => x[0] === sessionStorage.getItem('warren.range')) || RANGES[1];
  return [r[1], r[2]];
}

/** A select for the chart range; `onChange` runs after a change. */
export function rangePicker(onChange) {
  const current = RANGES.find((x) => x[0] === sessionStorage.getItem('warren.range')) || RANGES[1];
  const sel = document.createElement('select');
  sel.setAttribute('data-role', 'range');
  for (const [label] of RANGES) {
    const o = document.createElement('option');
    o.value = label;
    o.textContent = label;
    sel.appendChild(o);
  }
  sel.value = current[0];
  sel.addEventListener('change', () => {
    sessionStorage.setItem('warren.range', sel.value);
    onChange();
  });
  return el('label', { class: 'range' }, 'Charts: ', sel);
}

/** The query string asking the API for history of the chosen range. */
export function historyQuery(families) {
  const [age, incr] = chosenRange();
  return families.map((f) => `${f}_age=${age}&${f}_incr=${incr}`).join('&');
}

/** `samples` (newest first) of a gauge as [times, values] oldest first. */
function gauge(details) {
  const s = (details?.samples || []).slice().reverse();
  return [s.map((x) => x.timestamp), s.map((x) => x.sample)];
}

/** `samples` (newest first) of a counter as per-second rates, oldest first. */
function rate(details) {
  const s = (details?.samples || []).slice().reverse();
  const out = [];
  for (let i = 1; i < s.length; i++) {
    const dt = (s[i].timestamp - s[i - 1].timestamp) / 1000;
    out.push([s[i].timestamp, dt > 0 ? Math.max(0, (s[i].sample - s[i - 1].sample) / dt) : 0]);
  }
  return [out.map((x) => x[0]), out.map((x) => x[1])];
}

/**
 * Draws a chart from `*_details.samples`: `keys` name the details in
 * `obj`, `asRate` turns counters into rates. False when there is no history.
 */
export function drawHistory(chart, obj, keys, asRate) {
  const cols = keys.map((k) => (asRate ? rate : gauge)(obj?.[`${k}_details`]));
  const times = cols[0]?.[0] || [];
  if (times.length === 0) return false;
  chart.setHistory(times, times.map((_, i) => cols.map((c) => c[1][i] ?? 0)));
  return true;
}

/** A round axis maximum above `v` (1, 2, 5 × 10^n), at least 1. */
export function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

/** A horizontal usage bar (memory, disk, descriptors). */
export function usageBar(used, total, { alarm = false, format = String } = {}) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  return el(
    'div',
    { class: `usage ${alarm ? 'alarm' : pct > 80 ? 'warn' : ''}`, title: `${format(used)} of ${format(total)}` },
    el('div', { class: 'fill', style: `width:${pct.toFixed(1)}%` }),
    el('span', {}, `${format(used)} / ${format(total)}`),
  );
}
