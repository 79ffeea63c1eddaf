// The dashboard's shell: login, hash routes (#/queues/%2F/name), the tab
// bar, the vhost selector, the 5 s polling of the visible page and the
// resource alarm banner shown on every page.

import { api, clearCredentials, get, hasCredentials, setCredentials } from './api.js';
import { el, field, fill, fmtBytes } from './dom.js';
import * as overview from './overview.js';
import * as objects from './objects.js';
import * as queues from './queues.js';
import * as exchanges from './exchanges.js';
import * as admin from './admin.js';
import * as policies from './policies.js';
import * as superStreams from './superstreams.js';
import * as limits from './limits.js';
import * as definitions from './definitions.js';
import * as vhost from './vhost.js';

const POLL_MS = 5000;

const routes = [
  [/^$/, 'overview', overview.mount],
  [/^connections$/, 'connections', objects.connectionsList],
  [/^connections\/([^/]+)$/, 'connections', objects.connectionPage],
  [/^channels$/, 'channels', objects.channelsList],
  [/^channels\/([^/]+)$/, 'channels', objects.channelPage],
  [/^exchanges$/, 'exchanges', exchanges.list],
  [/^exchanges\/([^/]+)\/([^/]*)$/, 'exchanges', exchanges.page],
  [/^queues$/, 'queues', queues.list],
  [/^queues\/([^/]+)\/([^/]+)$/, 'queues', queues.page],
  [/^super-streams$/, 'super-streams', superStreams.mount],
  [/^admin$/, 'admin', admin.mount],
  [/^policies$/, 'admin', policies.mount],
  [/^limits$/, 'admin', limits.mount],
  [/^definitions$/, 'admin', definitions.mount],
  [/^vhosts\/([^/]+)$/, 'admin', vhost.mount],
];

const main = document.getElementById('main');
const ctx = {
  user: null,
  /** The vhost chosen in the header ('' for all). */
  vhost: sessionStorage.getItem('warren.vhost') || '',
  isAdmin: () => (ctx.user?.tags || []).includes('administrator'),
  flash,
};
let current = null;

function flash(text, ok = false) {
  const f = document.getElementById('flash');
  f.textContent = text;
  f.className = ok ? 'ok' : 'err';
  f.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => (f.hidden = true), 8000);
}

// The banner above every page while a node reports a memory or disk
// alarm (publishers are blocked meanwhile). Users without the monitoring
// tag cannot read /api/nodes: no banner for them.
async function checkAlarms() {
  const banner = document.getElementById('alarms');
  if (!ctx.user || document.visibilityState !== 'visible') return;
  let nodes;
  try {
    nodes = await get('/nodes');
  } catch {
    return;
  }
  const lines = [];
  for (const n of nodes || []) {
    if (n.mem_alarm) {
      lines.push(`Memory alarm on ${n.name}: ${fmtBytes(n.mem_used)} used, high watermark ${fmtBytes(n.mem_limit)}.`);
    }
    if (n.disk_free_alarm) {
      lines.push(`Disk alarm on ${n.name}: ${fmtBytes(n.disk_free)} free, limit ${fmtBytes(n.disk_free_limit)}.`);
    }
  }
  if (lines.length) {
    fill(banner, `${lines.join(' ')} Publishing connections are blocked until it clears.`);
  }
  banner.hidden = lines.length === 0;
}
setInterval(checkAlarms, POLL_MS);

function unmount() {
  if (current) {
    clearInterval(current.timer);
    current.view?.destroy?.();
    current = null;
  }
}

function showLogin(message) {
  unmount();
  document.getElementById('top').hidden = true;
  document.getElementById('alarms').hidden = true;
  const user = el('input', { name: 'username', autocomplete: 'username', required: true, autofocus: true });
  const pass = el('input', { name: 'password', type: 'password', autocomplete: 'current-password' });
  const err = el('div', { class: 'status err', id: 'login-error', hidden: !message }, message || '');
  const form = el(
    'form',
    { class: 'login', id: 'login-form' },
    el('h1', {}, 'Warren'),
    el('p', { class: 'muted' }, 'Log in with a broker user that has a management tag.'),
    field('Username', user),
    field('Password', pass),
    el('button', { type: 'submit', class: 'primary' }, 'Log in'),
    err,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    setCredentials(user.value, pass.value);
    try {
      ctx.user = await get('/whoami');
    } catch (ex) {
      clearCredentials();
      // RabbitMQ's reason for a wrong password is "Login failed" itself.
      const why = ex.message && ex.message !== 'Login failed' ? ex.message : 'wrong username or password';
      err.textContent = ex.status === 401 ? `Login failed: ${why}.` : ex.message;
      err.hidden = false;
      return;
    }
    await enter();
  });
  fill(main, form);
}

async function enter() {
  document.getElementById('top').hidden = false;
  document.getElementById('who').textContent = ctx.user.name;
  document.getElementById('admin-tab').hidden = !ctx.isAdmin();
  checkAlarms();
  await loadVhosts();
  if (location.hash === '#/login') location.hash = '#/';
  else route();
}

async function loadVhosts() {
  const sel = document.getElementById('vhost-select');
  try {
    const vs = await get('/vhosts');
    fill(sel, el('option', { value: '' }, 'All'), vs.map((v) => el('option', { value: v.name }, v.name)));
    if (!vs.some((v) => v.name === ctx.vhost)) ctx.vhost = '';
  } catch {
    ctx.vhost = '';
  }
  sel.value = ctx.vhost;
}

function route() {
  if (!ctx.user) return;
  const hash = location.hash.replace(/^#\/?/, '');
  let found = null;
  for (const [re, tab, mount] of routes) {
    const m = hash.match(re);
    if (m) {
      found = { tab, mount, params: m.slice(1).map(decodeURIComponent) };
      break;
    }
  }
  unmount();
  for (const a of document.querySelectorAll('#tabs a')) a.classList.toggle('active', found?.tab === a.dataset.tab);
  if (!found) {
    fill(main, el('h2', {}, 'Not found'), el('p', {}, 'No page at ', el('code', {}, location.hash), '.'));
    return;
  }
  const root = el('div', { class: `page page-${found.tab}` });
  fill(main, root);
  const view = found.mount(root, { ...ctx, params: found.params }) || {};
  const entry = { view, timer: null };
  current = entry;
  const tick = async () => {
    // Only the visible page of a visible tab polls.
    if (current !== entry || document.visibilityState !== 'visible' || !view.refresh) return;
    try {
      await view.refresh();
    } catch (e) {
      if (current === entry) view.error ? view.error(e) : flash(e.message);
    }
  };
  entry.tick = tick;
  tick();
  entry.timer = setInterval(tick, POLL_MS);
}

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') current?.tick?.();
});

window.addEventListener('hashchange', route);
window.addEventListener('warren:unauthorized', () => {
  clearCredentials();
  ctx.user = null;
  showLogin('Your session is no longer valid: log in again.');
});

document.getElementById('logout').addEventListener('click', () => {
  clearCredentials();
  ctx.user = null;
  showLogin();
});

document.getElementById('vhost-select').addEventListener('change', (e) => {
  ctx.vhost = e.target.value;
  sessionStorage.setItem('warren.vhost', ctx.vhost);
  route();
});

async function boot() {
  if (hasCredentials()) {
    try {
      ctx.user = await api('GET', '/whoami');
      await enter();
      return;
    } catch {
      clearCredentials();
    }
  }
  showLogin();
}

boot();
