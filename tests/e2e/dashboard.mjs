// The dashboard's end-to-end scenario in headless Chromium (playwright-core,
// the system's /usr/bin/chromium), against a running Warren. Run by
// tests/ui_e2e.rs, which starts the broker and creates the AMQP objects
// named in the environment:
//   WARREN_URL        http://127.0.0.1:<management port>
//   E2E_QUEUE         a queue declared over AMQP (empty)
//   E2E_HELD_QUEUE    a queue whose one message a consumer holds unacked
//   E2E_CONSUMER_TAG  that consumer's tag
//   E2E_APP_NAME      a connection's client-given name (connection_name);
//                     its consumer holds a message of E2E_FEATURE_QUEUE
//   E2E_FEATURE_QUEUE a queue with a TTL, a length limit and a DLX
//   E2E_CLOSABLE      the name of another connection, closed from its page
//   E2E_EXCHANGE      a topic exchange bound to E2E_QUEUE with E2E_BINDING_KEY
//   E2E_BINDING_KEY   e.g. orders.*
//   E2E_ROUTE_KEY     a key the binding matches, e.g. orders.created
//   E2E_ARTIFACTS     where the screenshots go (one per step)
//   E2E_ALARM_DIR     where this script asks the test to raise or clear a
//                     memory alarm: it writes `alarm-on` or `alarm-off`
//                     there, the test sets the watermark and removes it
//   CHROMIUM          the browser (default /usr/bin/chromium)
// Every step runs even when an earlier one failed (each failure is listed
// at the end, with the API endpoint it needs); the exit status is 1 if any
// step failed.

import { chromium } from 'playwright-core';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) {
    console.error(`missing environment variable ${k}`);
    process.exit(2);
  }
  return v;
};

const BASE = env('WARREN_URL').replace(/\/$/, '');
const QUEUE = env('E2E_QUEUE');
const HELD = env('E2E_HELD_QUEUE');
const CTAG = env('E2E_CONSUMER_TAG');
const APP = env('E2E_APP_NAME');
const FEATURED = env('E2E_FEATURE_QUEUE');
const CLOSABLE = env('E2E_CLOSABLE');
const EXCHANGE = env('E2E_EXCHANGE');
const BINDING_KEY = env('E2E_BINDING_KEY');
const ROUTE_KEY = env('E2E_ROUTE_KEY');
const ARTIFACTS = env('E2E_ARTIFACTS');
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');
const TIMEOUT = Number(env('E2E_STEP_TIMEOUT_MS', '8000'));
const ALARM_DIR = env('E2E_ALARM_DIR');
const PAYLOAD = `hello from the dashboard ${Date.now()}`;

mkdirSync(ARTIFACTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking'],
});
const page = await browser.newPage({ viewport: { width: 1366, height: 800 } });
page.setDefaultTimeout(TIMEOUT);
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(e.message));
page.on('console', (m) => {
  if (m.type() === 'error') console.log(`  [browser console] ${m.text()}`);
});
// Pages ask before destructive actions; this scenario confirms only where
// a step says so, never by accident.
let acceptDialogs = false;
page.on('dialog', (d) => (acceptDialogs ? d.accept() : d.dismiss()));

const enc = encodeURIComponent;
const results = [];
let n = 0;

/** One step: runs `fn`, screenshots the page either way, records the outcome. */
async function step(name, needs, fn) {
  n += 1;
  const shot = join(ARTIFACTS, `${String(n).padStart(2, '0')}-${name.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}.png`);
  const t0 = Date.now();
  let error = null;
  try {
    await fn();
  } catch (e) {
    error = e;
  }
  try {
    await snapshot(shot);
  } catch (e) {
    console.log(`  (screenshot failed: ${e.message})`);
  }
  const ms = Date.now() - t0;
  results.push({ name, needs, ok: !error, error, shot });
  console.log(`${error ? 'FAIL' : 'ok  '} ${name} (${ms} ms) -> ${shot}`);
  if (error) console.log(`     ${String(error.message).split('\n').slice(0, 6).join('\n     ')}`);
}

/**
 * A full-page screenshot. The sticky header is unstuck first, or it would
 * be drawn over the middle of a long page.
 */
async function snapshot(path) {
  await page.addStyleTag({ content: 'header#top { position: static !important; }' }).catch(() => {});
  await page.screenshot({ path, fullPage: true });
}

/** An extra screenshot inside step `n` (e.g. before the step changes the page again). */
async function snap(label) {
  await snapshot(join(ARTIFACTS, `${String(n).padStart(2, '0')}-${label}.png`));
}

/** Waits until an element matching `sel` contains `text`. */
function see(sel, text, root = page) {
  return root.locator(sel, text === undefined ? {} : { hasText: text }).first().waitFor({ state: 'visible' });
}

async function figure(label) {
  const f = page.locator('.figure', { has: page.locator('.label', { hasText: new RegExp(`^${label}$`) }) }).first();
  return (await f.locator('.value').textContent()).replace(/,/g, '');
}

async function waitFigure(label, want) {
  const deadline = Date.now() + TIMEOUT;
  let last;
  while (Date.now() < deadline) {
    last = await figure(label).catch(() => undefined);
    if (last === String(want)) return;
    await page.waitForTimeout(100);
  }
  throw new Error(`figure "${label}" shows ${last}, expected ${want}`);
}

/** Asks the test to raise (`on`) or clear the memory alarm; waits until it did. */
async function alarm(on) {
  const req = join(ALARM_DIR, on ? 'alarm-on' : 'alarm-off');
  writeFileSync(req, '');
  const deadline = Date.now() + TIMEOUT;
  while (existsSync(req)) {
    if (Date.now() > deadline) throw new Error(`the test did not answer ${req}`);
    await page.waitForTimeout(50);
  }
}

async function ensure(cond, message) {
  if (!(await cond)) throw new Error(message);
}

// ---------------------------------------------------------------------------

await step('wrong password shows an error', [], async () => {
  await page.goto(`${BASE}/`);
  await page.fill('input[name=username]', 'guest');
  await page.fill('input[name=password]', 'not-the-password');
  await page.click('#login-form button[type=submit]');
  await see('#login-error', 'Login failed: wrong username or password.');
  const text = await page.locator('#login-error').textContent();
  await ensure(!text.includes('Login failed: Login failed'), `the error repeats itself: ${text}`);
  await ensure(page.locator('header#top').isHidden(), 'the header must stay hidden after a failed login');
});

await step('log in as guest', [], async () => {
  await page.fill('input[name=password]', 'guest');
  await page.click('#login-form button[type=submit]');
  await see('#who', 'guest');
  await see('#tabs a.active', 'Overview');
});

await step('overview shows totals', [], async () => {
  await see('#totals .figure');
  // The test holds connections and declared two queues and one exchange.
  const queues = Number(await figure('Queues'));
  const conns = Number(await figure('Connections'));
  const exchanges = Number(await figure('Exchanges'));
  if (!(queues >= 2 && conns >= 1 && exchanges >= 7)) throw new Error(`totals: queues=${queues} connections=${conns} exchanges=${exchanges}`);
  await see('.chart-title', 'Queued messages');
  await see('.chart-title', 'Message rates');
  // Node health: the nodes table, or the health check before /api/nodes exists.
  await see('#nodes table');
});

await step('node health from /api/nodes', ['GET /api/nodes'], async () => {
  await see('#nodes table.list td', 'running');
});

await step('queue created over AMQP is listed', [], async () => {
  await page.click('#tabs a[data-tab=queues]');
  await page.fill('.toolbar input.filter', QUEUE);
  await see(`table.list a[href="#/queues/%2F/${enc(QUEUE)}"]`);
  await see('.toolbar .info', '1 item');
});

await step('queue page shows figures and bindings', [], async () => {
  await page.click(`table.list a[href="#/queues/%2F/${enc(QUEUE)}"]`);
  await see('[data-role=queue-name]', QUEUE);
  await waitFigure('Ready', 0);
  // The exchange's binding to this queue (and the default exchange's).
  await see('[data-role=queue-bindings] td code', BINDING_KEY);
});

await step('bind and unbind from the queue page', ['POST/DELETE /api/bindings/{vhost}/e/{source}/q/{queue}'], async () => {
  const form = page.locator('form[data-role=bind]');
  await form.locator('input[name=source]').fill('amq.topic');
  // A key with characters that need quoting in the binding's URL.
  await form.locator('input[name=routing_key]').fill('audit.* #x');
  await form.locator('button[type=submit]').click();
  const row = page.locator('[data-role=queue-bindings] tr', { has: page.locator('code', { hasText: 'audit.* #x' }) });
  await row.first().waitFor({ state: 'visible' });
  await snap('bound');
  await row.locator('button', { hasText: 'Unbind' }).click();
  await row.first().waitFor({ state: 'detached' });
  await see('[data-role=queue-bindings] td code', BINDING_KEY);
});

await step('publish a message from the queue page', ['POST /api/exchanges/{vhost}/{name}/publish'], async () => {
  const form = page.locator('form[data-role=publish]');
  await form.locator('textarea[name=payload]').fill(PAYLOAD);
  await form.locator('button[type=submit]').click();
  await see('[data-role=publish-status].ok', 'Message published.');
  await waitFigure('Ready', 1);
  // Its body is held in memory (messages_ram).
  await waitFigure('In memory', 1);
});

await step('peek shows the message without marking it redelivered', ['GET /api/queues/{vhost}/{name}/peek'], async () => {
  const form = page.locator('form[data-role=peek]');
  for (let i = 0; i < 2; i++) {
    await form.locator('button[type=submit]').click();
    await see('[data-role=peek-result] [data-role=payload]', PAYLOAD);
  }
  await see('[data-role=peek-result] [data-role=redelivered]', 'Redelivered: no');
  await waitFigure('Ready', 1);
});

await step('get the message back in the UI', ['POST /api/queues/{vhost}/{name}/get'], async () => {
  const form = page.locator('form[data-role=get]');
  // Default ack mode: "Nack message, requeue true".
  await form.locator('button[type=submit]').click();
  await see('[data-role=get-result] [data-role=payload]', PAYLOAD);
  // Peeking twice before left it unmarked; getting with requeue marks it.
  await see('[data-role=get-result] [data-role=redelivered]', 'Redelivered: no');
  await waitFigure('Ready', 1);
  await snap('first-get');
  await form.locator('button[type=submit]').click();
  await see('[data-role=get-result] [data-role=redelivered]', 'Redelivered: yes');
});

await step('consumer and its unacked message are shown', ['GET /api/queues/{vhost}/{name}/unacked'], async () => {
  await page.goto(`${BASE}/#/queues/%2F/${enc(HELD)}`);
  await see('[data-role=queue-name]', HELD);
  await see('[data-role=consumers] code', CTAG);
  await see('[data-role=unacked] table td code', CTAG);
  await see('[data-role=unacked] table td', 'guest');
});

await step('routing tester shows the bound queue', ['POST /api/exchanges/{vhost}/{name}/route-test'], async () => {
  await page.goto(`${BASE}/#/exchanges/%2F/${enc(EXCHANGE)}`);
  await see('[data-role=source-bindings] td code', BINDING_KEY);
  const form = page.locator('form[data-role=route-test]');
  await form.locator('input[name=routing_key]').fill(ROUTE_KEY);
  await form.locator('button[type=submit]').click();
  await see('[data-role=route-queues] a', QUEUE);
  await see('[data-role=route-queues] td.via', BINDING_KEY);
  await snap('routed');
  await form.locator('input[name=routing_key]').fill('nothing.matches.this');
  await form.locator('button[type=submit]').click();
  await see('[data-role=unroutable]', 'Not routed');
});

await step('admin tab lists users and virtual hosts', [], async () => {
  await page.click('#tabs a[data-tab=admin]');
  await see('[data-role=users] td', 'guest');
  await see('[data-role=vhosts] td', '/');
});

await step('admin adds a user with permissions, then deletes it', ['PUT/DELETE /api/users/{name}', 'PUT /api/permissions/{vhost}/{user}'], async () => {
  const user = `e2e-user-${Date.now()}`;
  await page.fill('input[name=username]', user);
  await page.fill('input[name=new-password]', 'secret-e2e');
  await page.fill('input[name=tags]', 'management');
  await page.click('button:has-text("Save user")');
  const row = page.locator('[data-role=users] tr', { has: page.locator('td', { hasText: new RegExp(`^${user}$`) }) });
  await row.first().waitFor({ state: 'visible' });
  await page.fill('input[name=perm-user]', user);
  await page.click('button:has-text("Set permission")');
  await page.locator('[data-role=permissions] tr', { has: page.locator('td', { hasText: new RegExp(`^${user}$`) }) }).first().waitFor({ state: 'visible' });
  await row.locator('td', { hasText: /^\/$/ }).first().waitFor({ state: 'visible' });
  await snap('user-added');
  acceptDialogs = true;
  try {
    await row.locator('button', { hasText: 'Delete' }).click();
    await row.first().waitFor({ state: 'detached' });
  } finally {
    acceptDialogs = false;
  }
});

await step('policies page adds a policy that the queue page shows, then deletes it', ['PUT/DELETE /api/policies/{vhost}/{name}'], async () => {
  const name = `e2e-policy-${Date.now()}`;
  await page.goto(`${BASE}/#/admin`);
  await page.click('[data-role=policies-link]');
  await page.fill('input[name=policy-name]', name);
  await page.fill('input[name=policy-vhost]', '/');
  await page.fill('input[name=pattern]', `^${QUEUE}$`);
  await page.selectOption('select[name=apply-to]', 'queues');
  await page.fill('input[name=priority]', '7');
  await page.fill('textarea[name=definition]', '{"max-length": 42}');
  await page.click('button:has-text("Save policy")');
  const row = page.locator(`[data-role=policies] tr[data-name="${name}"]`);
  await row.waitFor({ state: 'visible' });
  await ensure((await row.textContent()).includes('max-length'), 'the definition is listed');
  // A bad definition: the broker's reason is shown.
  await page.fill('textarea[name=definition]', '{"max-length": "lots"}');
  await page.click('button:has-text("Save policy")');
  await see('form .status.err', 'is not a valid maximum length');
  // The queue's page shows where its max-length comes from.
  await page.goto(`${BASE}/#/queues/%2F/${enc(QUEUE)}`);
  await see('[data-role=effective-settings] tr[data-key=max-length]', '42');
  await see('[data-role=effective-settings] tr[data-key=max-length] [data-role=source]', 'policy');
  await snap('policy-on-queue-page');
  await page.goto(`${BASE}/#/policies`);
  acceptDialogs = true;
  try {
    await row.locator('button', { hasText: 'Delete' }).click();
    await row.waitFor({ state: 'detached' });
  } finally {
    acceptDialogs = false;
  }
});

await step('editing a user keeps its password unless "No password" is ticked', ['PUT/GET/DELETE /api/users/{name}'], async () => {
  const user = `e2e-pw-${Date.now()}`;
  await page.goto(`${BASE}/#/admin`);
  const row = page.locator('[data-role=users] tr', { has: page.locator('td', { hasText: new RegExp(`^${user}$`) }) });
  const hasPassword = () => row.first().locator('td').nth(2);
  const save = async (password, tags, noPassword) => {
    await page.fill('input[name=username]', user);
    if (noPassword) await page.check('input[name=no-password]');
    else await page.fill('input[name=new-password]', password);
    await page.fill('input[name=tags]', tags);
    await page.click('button:has-text("Save user")');
  };
  // A new user with the password left blank: refused in the form.
  await save('', '', false);
  await see('form .status.err', 'Enter a password');
  await save('secret-e2e', 'management', false);
  await row.first().waitFor({ state: 'visible' });
  await ensure(hasPassword().textContent().then((t) => t === 'yes'), 'a new user with a password shows "yes"');
  // Saved again with the field blank: new tags, the same password.
  await save('', 'monitoring', false);
  await see('[data-role=users] td', 'monitoring');
  await ensure(hasPassword().textContent().then((t) => t === 'yes'), 'a blank password field kept the password');
  const kept = await page.evaluate(async (u) => (await fetch(`api/whoami`, { headers: { Authorization: `Basic ${btoa(`${u}:secret-e2e`)}` } })).status, user);
  await ensure(kept === 200, `the user still logs in to the API with its password (HTTP ${kept})`);
  // Ticked: no password.
  await save('', 'monitoring', true);
  await hasPassword().filter({ hasText: /^no$/ }).waitFor({ state: 'visible' });
  await snap('user-without-password');
  acceptDialogs = true;
  try {
    await row.locator('button', { hasText: 'Delete' }).click();
    await row.first().waitFor({ state: 'detached' });
  } finally {
    acceptDialogs = false;
  }
});

await step('a memory alarm shows a banner on every page', ['GET /api/nodes (mem_alarm)'], async () => {
  await ensure(page.locator('#alarms').isHidden(), 'no banner without an alarm');
  await alarm(true);
  // The banner polls every 5 s.
  await page.locator('#alarms', { hasText: 'Memory alarm' }).waitFor({ state: 'visible', timeout: TIMEOUT + 5000 });
  await see('#alarms', 'Publishing connections are blocked');
  await page.click('#tabs a[data-tab=queues]');
  await see('#alarms', 'Memory alarm');
  await snap('alarm-banner');
  await alarm(false);
  await page.locator('#alarms').waitFor({ state: 'hidden', timeout: TIMEOUT + 5000 });
});

await step('overview charts show the broker\'s history at once, with a range picker', ['GET /api/overview?lengths_age&msg_rates_age'], async () => {
  await page.goto(`${BASE}/#/`);
  await see('.chart-title', 'Queued messages');
  const asked = page.waitForRequest((r) => r.url().includes('/api/overview?') && r.url().includes('lengths_age=3600') && r.url().includes('lengths_incr=60'));
  await page.selectOption('select[data-role=range]', 'Last hour');
  await asked;
  // The first answer already carries samples: no "collecting…" wait.
  const r = await page.evaluate(async () => {
    const h = { Authorization: `Basic ${btoa('guest:guest')}` };
    const o = await (await fetch('/api/overview?lengths_age=60&lengths_incr=5&msg_rates_age=60&msg_rates_incr=5', { headers: h })).json();
    return o.queue_totals.messages_details.samples?.length ?? 0;
  });
  await ensure(r >= 1, `overview history has ${r} samples`);
  await page.selectOption('select[data-role=range]', 'Last 10 minutes');
});

await step('connections list the application name and network rates', ['GET /api/connections (user_provided_name, recv_oct)'], async () => {
  await page.goto(`${BASE}/#/connections`);
  await see('table.list a', APP);
  await see('table.list th', 'From client');
});

await step('the channel page shows prefetch, unacked, consumers and rates', ['GET /api/channels/{name}'], async () => {
  await page.goto(`${BASE}/#/channels`);
  await page.locator('[data-role=channel-link]', { hasText: APP }).first().click();
  await see('h2 .name', APP);
  await see('[data-role=channel-details] th', 'Prefetch (per consumer)');
  await see('[data-role=channel-details] tr', 'Unacked');
  await see('[data-role=channel-consumers] code', 'e2e-billing-consumer');
  await see('.chart-title', 'Message rates');
});

await step('queue list shows what a queue is, its state, and links unacked counts', [], async () => {
  await page.goto(`${BASE}/#/queues`);
  await page.fill('.toolbar input.filter', FEATURED);
  await see('.toolbar .info', '1 item');
  for (const f of ['TTL', 'Lim', 'DLX']) await see(`table.list [data-feature="${f}"]`);
  await ensure((await page.locator('table.list .badge', { hasText: /^Args$/ }).count()) === 0, 'the one "Args" badge is gone');
  await ensure((await page.locator('table.list td .badge', { hasText: /^(running|idle)$/ }).count()) === 1, 'a running or idle state badge');
  await page.click('table.list a[data-role=unacked-link]');
  await see('[data-role=queue-name]', FEATURED);
  await see('nav.toc a', 'Unacked');
  // The unacked view names the application that holds the message.
  await see('[data-role=unacked] [data-role=channel-link]', APP);
  await see('[data-role=consumers] [data-role=channel-link]', APP);
  await ensure((await page.locator('[data-role=unacked] th', { hasText: 'Delivery tag' }).count()) === 0, 'no always-empty delivery tag column');
});

await step('the virtual host selector stays below 1100 px', [], async () => {
  await page.setViewportSize({ width: 1000, height: 800 });
  await page.goto(`${BASE}/#/queues`);
  await see('#vhost-select');
  await ensure(page.locator('#vhost-select').isVisible(), 'the selector is visible at 1000 px');
  await snap('narrow');
  await page.setViewportSize({ width: 1366, height: 800 });
});

await step('a closed connection\'s page says closed', ['DELETE /api/connections/{name}'], async () => {
  await page.goto(`${BASE}/#/connections`);
  await page.locator('table.list a', { hasText: CLOSABLE }).first().click();
  await see('h2 .name', CLOSABLE);
  await see('table.kv td', 'running');
  acceptDialogs = true;
  try {
    await page.locator('button.danger', { hasText: 'Force close' }).click();
    await see('.status.ok', 'Connection closed.');
  } finally {
    acceptDialogs = false;
  }
  await see('table.kv tr[data-key=State] .badge', 'closed');
  // A reload finds it gone and says so too.
  await page.reload();
  await see('table.kv tr[data-key=State] .badge', 'closed');
});

await step('a queue page counts expired messages dropped without a DLX', ['GET /api/queues/{vhost}/{name} (dead_letter_stats)'], async () => {
  const q = `e2e-dead-letters-${Date.now()}`;
  const call = (method, path, body) =>
    page.evaluate(
      async ([method, url, body]) => {
        const r = await fetch(url, { method, headers: { authorization: 'Basic ' + btoa('guest:guest'), 'content-type': 'application/json' }, body: body && JSON.stringify(body) });
        if (!r.ok) throw new Error(`${method} ${url}: ${r.status}`);
      },
      [method, `${BASE}/api${path}`, body],
    );
  await call('PUT', `/queues/%2F/${enc(q)}`, { durable: false, arguments: { 'x-message-ttl': 1 } });
  await call('POST', '/exchanges/%2F/amq.default/publish', { routing_key: q, payload: 'short-lived', payload_encoding: 'string', properties: {} });
  await page.goto(`${BASE}/#/queues/%2F/${enc(q)}`);
  // The page refreshes every few seconds: the sweep's count shows up.
  await page
    .locator('[data-role=dead-letters] tr[data-reason=expired] [data-role=dropped]', { hasText: '1' })
    .waitFor({ state: 'visible', timeout: TIMEOUT + 5000 });
  await see('[data-role=dead-letters] tr[data-reason=rejected] [data-role=dead-lettered]', '0');
  await snap('dead-letters');
  await call('DELETE', `/queues/%2F/${enc(q)}`);
});

await step('super streams page creates one with its partitions, then deletes it', ['PUT/GET/DELETE /api/super-streams/{vhost}/{name}'], async () => {
  const name = `e2e-super-${Date.now()}`;
  await page.goto(`${BASE}/#/super-streams`);
  const form = page.locator('form[data-role=add-super-stream]');
  await form.locator('input[name=name]').fill(name);
  await form.locator('input[name=partitions]').fill('3');
  await form.locator('select[name=routing]').selectOption('hash');
  await form.locator('button[type=submit]').click();
  const block = page.locator(`[data-super-stream="${name}"]`);
  await block.waitFor({ state: 'visible' });
  for (let i = 0; i < 3; i++) await see(`[data-super-stream="${name}"] [data-role=partitions] td`, `${name}-${i}`);
  await ensure((await block.textContent()).includes('routing by hash'), 'the routing is shown');
  // A clash is refused with the broker's reason.
  await form.locator('input[name=partitions]').fill('2');
  await form.locator('button[type=submit]').click();
  await see('form[data-role=add-super-stream] .status.err', 'there is already an exchange');
  await snap('super-stream-listed');
  acceptDialogs = true;
  try {
    await block.locator('button[data-action=delete-super-stream]').click();
    await block.waitFor({ state: 'detached' });
  } finally {
    acceptDialogs = false;
  }
  const r = await page.evaluate(async (u) => (await fetch(u, { headers: { Authorization: `Basic ${btoa('guest:guest')}` } })).status, `${BASE}/api/queues/%2F/${enc(name)}-0`);
  await ensure(r === 404, `the partitions are deleted (GET answered ${r})`);
});

/** An API call as guest from the page (for set-up and checks); resolves to the status. */
function apiCall(method, path, body) {
  return page.evaluate(
    async ([method, url, body]) => {
      const r = await fetch(url, { method, headers: { authorization: 'Basic ' + btoa('guest:guest'), 'content-type': 'application/json' }, body: body && JSON.stringify(body) });
      return r.status;
    },
    [method, `${BASE}/api${path}`, body],
  );
}

await step('definitions are exported to a file and imported from one', ['GET/POST /api/definitions'], async () => {
  await page.goto(`${BASE}/#/admin`);
  await page.click('[data-role=definitions-link]');
  await page.selectOption('select[name=definitions-vhost]', '');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('[data-role=export]')]);
  await ensure(/^warren-definitions-\d{4}-\d\d-\d\d\.json$/.test(download.suggestedFilename()), `file name ${download.suggestedFilename()}`);
  const exported = join(ARTIFACTS, 'definitions-export.json');
  await download.saveAs(exported);
  const defs = JSON.parse(readFileSync(exported, 'utf8'));
  await ensure(defs.vhosts?.some((v) => v.name === '/'), 'the export lists vhost /');
  await ensure(defs.queues?.some((q) => q.name === QUEUE), `the export lists ${QUEUE}`);
  await see('.status.ok', 'Exported');
  // Import: the same file with one more queue, uploaded from the form.
  const imported = `e2e-imported-${Date.now()}`;
  defs.queues.push({ name: imported, vhost: '/', durable: true, auto_delete: false, arguments: { 'x-max-length': 7 } });
  const upload = join(ARTIFACTS, 'definitions-import.json');
  writeFileSync(upload, JSON.stringify(defs));
  await page.setInputFiles('input[name=definitions-file]', upload);
  await page.click('button:has-text("Upload definitions")');
  await see('[data-role=import-result].ok', 'Imported definitions-import.json');
  await ensure((await apiCall('GET', `/queues/%2F/${enc(imported)}`)) === 200, `queue ${imported} was created`);
  await snap('imported');
  // A file that is not JSON is refused before it is sent; one the broker
  // refuses shows its reason.
  await page.setInputFiles('input[name=definitions-file]', { name: 'broken.json', mimeType: 'application/json', buffer: Buffer.from('{"queues": [') });
  await page.click('button:has-text("Upload definitions")');
  await see('[data-role=import-result].err', 'broken.json is not JSON');
  await page.setInputFiles('input[name=definitions-file]', { name: 'refused.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify({ policies: [{ vhost: '/', name: `${imported}-bad`, pattern: '^$', 'apply-to': 'queues', definition: { 'max-length': 'lots' }, priority: 0 }] })) });
  await page.click('button:has-text("Upload definitions")');
  await see('[data-role=import-result].err', 'Import refused: ');
  await see('[data-role=import-result].err', 'is not a valid maximum length');
  await apiCall('DELETE', `/queues/%2F/${enc(imported)}`);
});

await step('limits page sets and clears virtual host and user limits', ['GET/PUT/DELETE /api/vhost-limits, /api/user-limits'], async () => {
  await page.goto(`${BASE}/#/admin`);
  await page.click('[data-role=limits-link]');
  await see('h2', 'Limits');
  const vform = page.locator('[data-role=vhost-limit-form]');
  await vform.locator('input[name=vhost-limit-owner]').fill('/');
  await vform.locator('select[name=vhost-limit-name]').selectOption('max-connections');
  await vform.locator('input[name=vhost-limit-value]').fill('250');
  await vform.locator('button:has-text("Set limit")').click();
  const vrow = page.locator('[data-role=vhost-limits] tr[data-limit="//max-connections"]');
  await see('[data-role=vhost-limits] tr[data-limit="//max-connections"] td', '250');
  const uform = page.locator('[data-role=user-limit-form]');
  await uform.locator('input[name=user-limit-owner]').fill('guest');
  await uform.locator('select[name=user-limit-name]').selectOption('max-channels');
  await uform.locator('input[name=user-limit-value]').fill('64');
  await uform.locator('button:has-text("Set limit")').click();
  const urow = page.locator('[data-role=user-limits] tr[data-limit="guest/max-channels"]');
  await see('[data-role=user-limits] tr[data-limit="guest/max-channels"] td', '64');
  // The broker's reason for a bad one is shown (no such user).
  await uform.locator('input[name=user-limit-owner]').fill(`nobody-${Date.now()}`);
  await uform.locator('button:has-text("Set limit")').click();
  await see('[data-role=user-limit-form] .status.err');
  await snap('limits-set');
  acceptDialogs = true;
  try {
    await vrow.locator('button', { hasText: 'Clear' }).click();
    await vrow.waitFor({ state: 'detached' });
    await urow.locator('button', { hasText: 'Clear' }).click();
    await urow.waitFor({ state: 'detached' });
  } finally {
    acceptDialogs = false;
  }
});

await step('a virtual host page lists its permissions and limits', ['GET /api/vhosts/{vhost}/permissions', 'GET /api/vhost-limits/{vhost}'], async () => {
  await page.goto(`${BASE}/#/admin`);
  await page.click('a[data-vhost="/"]');
  await see('[data-role=vhost-permissions] tr[data-user=guest] code', '.*');
  const form = page.locator('form[data-role=vhost-limit-form]');
  await form.locator('select[name=vhost-limit-name]').selectOption('max-queues');
  await form.locator('input[name=vhost-limit-value]').fill('900');
  await form.locator('button:has-text("Set limit")').click();
  const row = page.locator('[data-role=vhost-limits] tr[data-limit="//max-queues"]');
  await see('[data-role=vhost-limits] tr[data-limit="//max-queues"] td', '900');
  await snap('vhost-page');
  acceptDialogs = true;
  try {
    await row.locator('button', { hasText: 'Clear' }).click();
    await row.waitFor({ state: 'detached' });
  } finally {
    acceptDialogs = false;
  }
});

await step('the channel page charts the broker\'s history at once, with a range picker', ['GET /api/channels/{name}?msg_rates_age&msg_rates_incr'], async () => {
  await page.goto(`${BASE}/#/channels`);
  const asked = page.waitForRequest((r) => /\/api\/channels\/[^?]+\?/.test(r.url()) && r.url().includes('msg_rates_age=3600') && r.url().includes('msg_rates_incr=60'));
  await page.locator('[data-role=channel-link]', { hasText: APP }).first().click();
  await see('.chart-title', 'Message rates');
  await page.selectOption('select[data-role=range]', 'Last hour');
  await asked;
  const name = decodeURIComponent(new URL(page.url()).hash.replace(/^#\/channels\//, ''));
  const n = await page.evaluate(async (name) => {
    const h = { Authorization: `Basic ${btoa('guest:guest')}` };
    const c = await (await fetch(`/api/channels/${encodeURIComponent(name)}?msg_rates_age=60&msg_rates_incr=5`, { headers: h })).json();
    return c.message_stats?.deliver_get_details?.samples?.length ?? 0;
  }, name);
  await ensure(n >= 1, `channel history has ${n} samples`);
  await page.selectOption('select[data-role=range]', 'Last 10 minutes');
});

await step('no uncaught script errors', [], async () => {
  if (pageErrors.length) throw new Error(pageErrors.join('\n'));
});

await browser.close();

const failed = results.filter((r) => !r.ok);
console.log(`\ndashboard e2e: ${results.length - failed.length} of ${results.length} steps ok`);
for (const f of failed) {
  console.log(`  failed: ${f.name}${f.needs.length ? ` (needs ${f.needs.join(', ')})` : ''}`);
}
process.exit(failed.length ? 1 : 0);
