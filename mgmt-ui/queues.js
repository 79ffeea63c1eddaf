// Queues: the paged list, and a queue's page with its figures, charts,
// consumers, bindings, unacknowledged messages (who holds them, for how
// long), a peek at ready messages, and publish / get / purge / delete.

import { api, enc, get } from './api.js';
import { argsText, badge, parseKv, el, field, figure, fill, fmtBytes, fmtDuration, fmtNum, fmtRate, fmtTime, kvTable, link, onSubmit, section, status } from './dom.js';
import { LineChart, drawHistory, historyQuery, rangePicker } from './charts.js';
import { PagedTable } from './table.js';
import { bindingForm, bindingsTable, messageList, publishForm } from './messages.js';

/** A channel, by the application's name when the client gave one, linked to its page. */
export function channelLink(ch) {
  if (!ch?.name) return '–';
  const label = ch.user_provided_name ? `${ch.user_provided_name} (${ch.number ?? ''})` : ch.name;
  return el('a', { href: `#/channels/${encodeURIComponent(ch.name)}`, title: ch.name, 'data-role': 'channel-link' }, label);
}

/** A section with an id the page's table of contents links to. */
function anchored(id, node) {
  node.id = `sec-${id}`;
  return node;
}

function toc(items) {
  const go = (id) => (e) => {
    e.preventDefault();
    document.getElementById(`sec-${id}`)?.scrollIntoView();
  };
  return el('nav', { class: 'toc' }, items.map(([id, label]) => el('a', { href: `#sec-${id}`, onclick: go(id) }, label)));
}

export function list(root, ctx) {
  const table = new PagedTable({
    key: 'queues',
    path: () => (ctx.vhost ? `/queues/${enc(ctx.vhost)}` : '/queues'),
    rowKey: (q) => `${q.vhost}/${q.name}`,
    empty: 'No queues.',
    fields: ['name', 'vhost', 'type', 'durable', 'auto_delete', 'exclusive', 'arguments', 'effective_policy_definition', 'state', 'idle_since', 'consumers', 'messages_ready', 'messages_unacknowledged', 'messages', 'message_stats'],
    columns: [
      { label: 'Virtual host', sort: 'vhost', render: (q) => q.vhost },
      { label: 'Name', sort: 'name', render: (q) => link('queues', q.vhost, q.name) },
      { label: 'Type', sort: 'type', render: (q) => q.type },
      { label: 'Features', render: features },
      { label: 'State', sort: 'state', render: queueState },
      { label: 'Consumers', sort: 'consumers', class: 'num', render: (q) => fmtNum(q.consumers) },
      { label: 'Ready', sort: 'messages_ready', class: 'num', render: (q) => fmtNum(q.messages_ready) },
      {
        label: 'Unacked',
        sort: 'messages_unacknowledged',
        class: 'num',
        // To the queue page's unacked view: who holds them.
        render: (q) => (q.messages_unacknowledged > 0 ? el('a', { href: `#/queues/${encodeURIComponent(q.vhost)}/${encodeURIComponent(q.name)}`, 'data-role': 'unacked-link', onclick: () => sessionStorage.setItem('warren.scrollTo', 'unacked') }, fmtNum(q.messages_unacknowledged)) : fmtNum(q.messages_unacknowledged)),
      },
      { label: 'Total', sort: 'messages', class: 'num', render: (q) => fmtNum(q.messages) },
      { label: 'Incoming', sort: 'message_stats.publish_details.rate', class: 'num', render: (q) => fmtRate(q.message_stats?.publish_details?.rate ?? 0) },
      { label: 'Deliver / get', sort: 'message_stats.deliver_get_details.rate', class: 'num', render: (q) => fmtRate(q.message_stats?.deliver_get_details?.rate ?? 0) },
      { label: 'Ack', sort: 'message_stats.ack_details.rate', class: 'num', render: (q) => fmtRate(q.message_stats?.ack_details?.rate ?? 0) },
    ],
  });
  const add = addQueueForm(ctx, () => table.refresh());
  fill(root, el('h2', {}, 'Queues'), table.node, section('Add a queue', add));
  return { refresh: () => table.refresh() };
}

/** RabbitMQ's UI shows a running queue that did nothing lately as idle. */
function queueState(q) {
  if (q.state === 'running' && q.idle_since) return el('span', { title: `idle since ${q.idle_since}` }, badge('idle'));
  return q.state === 'running' ? badge('running', 'good') : badge(q.state, 'bad');
}

// What a queue is, from its arguments and effective policy: [label, keys, description].
const FEATURES = [
  ['TTL', ['x-message-ttl', 'message-ttl'], 'message TTL'],
  ['Exp', ['x-expires', 'expires'], 'queue expires when unused'],
  ['Lim', ['x-max-length', 'max-length'], 'length limit'],
  ['Lim B', ['x-max-length-bytes', 'max-length-bytes'], 'length limit in bytes'],
  ['DLX', ['x-dead-letter-exchange', 'dead-letter-exchange'], 'dead-letter exchange'],
  ['DLK', ['x-dead-letter-routing-key', 'dead-letter-routing-key'], 'dead-letter routing key'],
  ['Pri', ['x-max-priority', 'max-priority'], 'priorities'],
  ['SAC', ['x-single-active-consumer'], 'single active consumer'],
  ['Ovfl', ['x-overflow', 'overflow'], 'overflow behaviour'],
];

function features(q) {
  const args = q.arguments || {};
  const pol = q.effective_policy_definition || {};
  const out = [q.durable ? badge('D') : null, q.auto_delete ? badge('AD') : null, q.exclusive ? badge('Excl') : null];
  if (q.type === 'stream' || args['x-queue-type'] === 'stream') out.push(badge('Stream'));
  for (const [label, keys, what] of FEATURES) {
    const key = keys.find((k) => args[k] !== undefined || pol[k] !== undefined);
    if (key === undefined || (key === 'x-single-active-consumer' && args[key] !== true)) continue;
    const v = args[key] ?? pol[key];
    const from = args[key] !== undefined ? 'argument' : 'policy';
    out.push(el('span', { class: 'badge', 'data-feature': label, title: `${what}: ${key}=${JSON.stringify(v)} (${from})` }, label));
  }
  return out;
}

/** A stream queue's log, its consumers' offsets and its groups (none for other queues). */
/**
 * A classic queue's messages held in memory and its persistent ones, with
 * their body bytes (RabbitMQ's `messages_ram`, `messages_persistent`);
 * streams report neither, as in RabbitMQ.
 */
function memoryFigures(q) {
  if (q.messages_ram === undefined) return [];
  const bytes = (n) => el('div', { class: 'label', 'data-role': 'bytes' }, fmtBytes(n));
  return [
    figure('In memory', fmtNum(q.messages_ram), bytes(q.message_bytes_ram)),
    figure('Persistent', fmtNum(q.messages_persistent), bytes(q.message_bytes_persistent)),
  ];
}

function streamRows(st) {
  if (!st) return [];
  const last = st.last_offset ?? '–';
  return [
    ['Offsets', `${fmtNum(st.first_offset)} – ${last === '–' ? last : fmtNum(last)}`],
    ['Segments', `${fmtNum(st.segments)} (${fmtNum(st.bytes_on_disk)} bytes on disk)`],
    ['Consumer offsets', st.consumers.map((c) => `${c.consumer_tag}: ${fmtNum(c.offset)}`).join(', ') || '–'],
    ['Groups', st.groups.map((g) => `${g.name}: committed ${fmtNum(g.committed_offset)}, lag ${fmtNum(g.lag)}`).join('; ') || '–'],
  ];
}

const SOURCES = { argument: 'argument', policy: 'policy', 'operator-policy': 'operator policy' };

/** The queue's effective settings: key, value, and argument / policy / operator policy. */
function effectiveTable(settings) {
  const keys = Object.keys(settings).sort();
  if (keys.length === 0) return el('p', { class: 'muted' }, 'None: no argument or policy sets a limit, TTL or dead-lettering.');
  return el(
    'table',
    { class: 'list' },
    el('thead', {}, el('tr', {}, ['Setting', 'Value', 'From'].map((h) => el('th', {}, h)))),
    el(
      'tbody',
      {},
      keys.map((k) => el('tr', { 'data-key': k }, el('td', {}, el('code', {}, k)), el('td', {}, String(settings[k].value)), el('td', { 'data-role': 'source' }, SOURCES[settings[k].source] || settings[k].source))),
    ),
  );
}

// Warren's dead_letter_stats: messages that left the queue unconsumed, by
// reason, republished to the dead-letter exchange or dropped.
function deadLetterTable(st) {
  const reasons = ['expired', 'rejected', 'maxlen', 'delivery_limit'];
  return el(
    'div',
    {},
    el(
      'table',
      { class: 'list' },
      el('thead', {}, el('tr', {}, ['Reason', 'Dead-lettered', 'Dropped'].map((h) => el('th', {}, h)))),
      el(
        'tbody',
        {},
        reasons.map((r) =>
          el('tr', { 'data-reason': r }, el('td', {}, el('code', {}, r)), el('td', { 'data-role': 'dead-lettered' }, fmtNum(st.dead_lettered?.[r] ?? 0)), el('td', { 'data-role': 'dropped' }, fmtNum(st.dropped?.[r] ?? 0))),
        ),
      ),
    ),
    el('p', { class: 'muted' }, `Confirmed (copies made durable before the queue let them go): ${fmtNum(st.confirmed ?? 0)}`),
  );
}

function addQueueForm(ctx, onDone) {
  const vhost = el('input', { name: 'vhost', value: ctx.vhost || '/', size: 12 });
  const name = el('input', { name: 'name', required: true, size: 30 });
  const durable = el('select', { name: 'durable' }, el('option', { value: 'true' }, 'Durable'), el('option', { value: 'false' }, 'Transient'));
  const autoDelete = el('select', { name: 'auto_delete' }, el('option', { value: 'false' }, 'No'), el('option', { value: 'true' }, 'Yes'));
  const args = el('textarea', { name: 'arguments', rows: 2, placeholder: 'x-max-length=1000\nx-message-ttl=60000' });
  const out = el('div', { class: 'status', hidden: true });
  const form = el(
    'form',
    { class: 'grid-form' },
    field('Virtual host', vhost),
    field('Name', name),
    field('Durability', durable),
    field('Auto delete', autoDelete),
    field('Arguments', args),
    el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Add queue'), out),
  );
  onSubmit(form, out, async () => {
    await api('PUT', `/queues/${enc(vhost.value)}/${enc(name.value)}`, { durable: durable.value === 'true', auto_delete: autoDelete.value === 'true', arguments: parseKv(args.value) });
    onDone();
    return `Queue ${name.value} declared.`;
  });
  return form;
}

export function page(root, ctx) {
  const [vhost, name] = ctx.params;
  const qpath = `/queues/${enc(vhost)}/${enc(name)}`;
  const queued = new LineChart('Queued messages', [{ label: 'Ready' }, { label: 'Unacked' }, { label: 'Total' }], { format: fmtNum });
  const rates = new LineChart('Message rates', [{ label: 'Publish' }, { label: 'Deliver / get' }, { label: 'Ack' }, { label: 'Redeliver' }], { format: fmtRate });
  const figures = el('div', { class: 'figures', 'data-role': 'figures' });
  const info = el('div');
  const effective = el('div', { 'data-role': 'effective-settings' });
  const deadLetters = el('div', { 'data-role': 'dead-letters' });
  const consumers = el('div', { 'data-role': 'consumers' });
  const bindings = el('div', { 'data-role': 'queue-bindings' });
  const unacked = el('div', { 'data-role': 'unacked' });
  const gone = el('div', { class: 'status err', hidden: true });
  let deleted = false;

  fill(
    root,
    el('h2', {}, 'Queue ', el('span', { class: 'name', 'data-role': 'queue-name' }, name), el('small', { class: 'muted' }, ` in virtual host ${vhost}`)),
    gone,
    el('div', { class: 'figures-row' }, figures),
    toc([
      ['details', 'Details'],
      ['dead-letters', 'Dead letters'],
      ['consumers', 'Consumers'],
      ['bindings', 'Bindings'],
      ['unacked', 'Unacked'],
      ['peek', 'Peek'],
      ['publish', 'Publish'],
      ['get', 'Get'],
      ['delete', 'Purge / delete'],
    ]),
    rangePicker(() => refresh().catch(() => {})),
    el('div', { class: 'charts' }, queued.node, rates.node),
    anchored('details', section('Details', info)),
    section('Effective settings', el('p', { class: 'muted' }, 'What the queue\'s arguments, policy and operator policy give together, and where each value comes from.'), effective),
    anchored('dead-letters', section('Dead letters', el('p', { class: 'muted' }, 'Messages that left unconsumed (TTL, rejection, length limit, delivery limit): republished to the dead-letter exchange, or dropped when there is none (or it does not exist). Since the broker started.'), deadLetters)),
    anchored('consumers', section('Consumers', consumers)),
    anchored('bindings', section('Bindings', bindings, el('h4', {}, 'Add binding to this queue'), bindingForm({ vhost, queue: name, onDone: () => refreshBindings().catch(() => {}) }))),
    anchored('unacked', section('Unacknowledged messages', el('p', { class: 'muted' }, 'Messages delivered and not yet acknowledged: which consumer holds each, and for how long.'), unacked)),
    anchored('peek', section('Peek at ready messages', el('p', { class: 'muted' }, 'Reads messages from the head of the queue without taking them: they are not requeued and not marked redelivered.'), peekForm(qpath))),
    anchored('publish', section('Publish message', publishForm({ vhost, exchange: '', fixedKey: name, onDone: () => refresh().catch(() => {}) }))),
    anchored('get', section('Get messages', el('p', { class: 'muted' }, 'Getting messages is a destructive action: with "Nack, requeue" they go back to the queue marked redelivered.'), getForm(qpath, () => refresh().catch(() => {})))),
    anchored(
      'delete',
      section(
        'Purge or delete',
        el('div', { class: 'inline' }, purgeButton(qpath, () => refresh().catch(() => {})), deleteButton(qpath, name, () => (deleted = true))),
      ),
    ),
  );

  async function refresh() {
    if (deleted) return;
    let q;
    try {
      q = await get(`${qpath}?${historyQuery(['lengths', 'msg_rates'])}`);
    } catch (e) {
      if (e.status === 404) {
        gone.textContent = 'This queue does not exist (any more).';
        gone.hidden = false;
        return;
      }
      throw e;
    }
    gone.hidden = true;
    const ms = q.message_stats || {};
    drawHistory(queued, q, ['messages_ready', 'messages_unacknowledged', 'messages'], false);
    drawHistory(rates, ms, ['publish', 'deliver_get', 'ack', 'redeliver'], true);
    fill(
      figures,
      figure('Ready', fmtNum(q.messages_ready)),
      figure('Unacked', fmtNum(q.messages_unacknowledged)),
      figure('Total', fmtNum(q.messages)),
      figure('Consumers', fmtNum(q.consumers)),
      ...memoryFigures(q),
      figure('Published', fmtNum(ms.publish ?? 0)),
      figure('Delivered / got', fmtNum(ms.deliver_get ?? 0)),
      figure('Acked', fmtNum(ms.ack ?? 0)),
    );
    fill(
      info,
      kvTable([
        ['Type', q.type],
        ['State', q.state],
        ['Features', [q.durable ? 'durable' : 'transient', q.auto_delete ? 'auto-delete' : null, q.exclusive ? 'exclusive' : null, (q.arguments || {})['x-max-priority'] !== undefined ? `priorities 0-${q.arguments['x-max-priority']}` : null].filter(Boolean).join(', ')],
        ['Arguments', argsText(q.arguments) || '–'],
        ['Policy', q.policy || '–'],
        ['Operator policy', q.operator_policy || '–'],
        ['Node', q.node],
        ...streamRows(q.stream),
      ]),
    );
    fill(effective, effectiveTable(q.effective_settings || {}));
    fill(deadLetters, deadLetterTable(q.dead_letter_stats || {}));
    await Promise.all([refreshConsumers(q), refreshBindings(), refreshUnacked()]);
    // Arrived from a list's unacked count: show the unacked view.
    if (sessionStorage.getItem('warren.scrollTo') === 'unacked') {
      sessionStorage.removeItem('warren.scrollTo');
      document.getElementById('sec-unacked')?.scrollIntoView();
    }
  }

  // Single active consumer: which one receives and which wait their turn.
  function activityText(c) {
    if (c.activity_status === 'single_active') return 'yes (single active)';
    if (c.activity_status === 'waiting') return 'waiting';
    return c.active === false ? 'no' : 'yes';
  }

  async function refreshConsumers(q) {
    let list = q.consumer_details;
    if (!Array.isArray(list)) {
      const all = await get('/consumers');
      list = all.filter((c) => c.queue?.name === name && c.queue?.vhost === vhost);
    }
    fill(
      consumers,
      list.length === 0
        ? el('p', { class: 'muted' }, 'No consumers.')
        : el(
            'table',
            { class: 'list' },
            el('thead', {}, el('tr', {}, ['Channel', 'Consumer tag', 'Ack required', 'Exclusive', 'Prefetch', 'Priority', 'Active'].map((h) => el('th', {}, h)))),
            el(
              'tbody',
              {},
              list.map((c) =>
                el(
                  'tr',
                  {},
                  el('td', {}, channelLink(c.channel_details)),
                  el('td', {}, el('code', {}, c.consumer_tag)),
                  el('td', {}, c.ack_required ? 'yes' : 'no'),
                  el('td', {}, c.exclusive ? 'yes' : 'no'),
                  el('td', {}, fmtNum(c.prefetch_count)),
                  el('td', { class: 'num' }, String(c.arguments?.['x-priority'] ?? 0)),
                  el('td', { 'data-role': 'activity' }, activityText(c)),
                ),
              ),
            ),
          ),
    );
  }

  async function refreshBindings() {
    let list;
    try {
      list = await get(`${qpath}/bindings`);
    } catch (e) {
      if (e.status !== 404 && e.status !== 405) throw e;
      // Before the per-queue endpoint exists: the vhost's list, filtered.
      const all = await get(`/bindings/${enc(vhost)}`);
      list = all.filter((b) => b.destination_type === 'queue' && b.destination === name);
    }
    fill(bindings, bindingsTable(list, { side: 'source', onChange: refreshBindings, canEdit: true }));
  }

  async function refreshUnacked() {
    let r;
    try {
      r = await get(`${qpath}/unacked?count=100`);
    } catch (e) {
      fill(unacked, el('p', { class: 'status err' }, `Unavailable: ${e.message}`));
      return;
    }
    const now = Date.now();
    fill(
      unacked,
      r.items.length === 0
        ? el('p', { class: 'muted' }, 'No unacknowledged messages.')
        : [
            el('p', {}, r.total > r.items.length ? `Oldest ${r.items.length} of ${fmtNum(r.total)} unacknowledged messages.` : `${fmtNum(r.total)} unacknowledged message${r.total === 1 ? '' : 's'}.`),
            el(
              'table',
              { class: 'list' },
              el('thead', {}, el('tr', {}, ['Consumer', 'Channel', 'Client', 'Delivered at', 'Held for', 'Routing key', 'Size', 'Redelivered'].map((h) => el('th', {}, h)))),
              el(
                'tbody',
                {},
                r.items.map((m) => {
                  const ch = m.channel_details || {};
                  const held = m.held_for_ms ?? (m.delivered_at ? now - m.delivered_at : null);
                  return el(
                    'tr',
                    { class: held > 60000 ? 'stale' : '' },
                    el('td', {}, m.consumer_tag === null ? el('i', {}, 'basic.get') : el('code', {}, m.consumer_tag)),
                    el('td', {}, ch.connection_name ? channelLink({ ...ch, name: ch.name || `${ch.connection_name} (${ch.number})` }) : '–'),
                    el('td', {}, [ch.user, ch.peer_host ? `${ch.peer_host}:${ch.peer_port}` : null].filter(Boolean).join(' @ ')),
                    el('td', {}, fmtTime(m.delivered_at)),
                    el('td', { class: 'num' }, fmtDuration(held)),
                    el('td', {}, el('code', {}, m.routing_key)),
                    el('td', { class: 'num' }, `${fmtNum(m.payload_bytes)} B`),
                    el('td', {}, m.redelivered ? 'yes' : 'no'),
                  );
                }),
              ),
            ),
          ],
    );
  }

  return {
    refresh,
    destroy() {
      queued.destroy();
      rates.destroy();
    },
  };
}

function peekForm(qpath) {
  const count = el('input', { name: 'count', type: 'number', min: 1, max: 500, value: 10, size: 4 });
  const offset = el('input', { name: 'offset', type: 'number', min: 0, value: 0, size: 4 });
  const out = el('div', { 'data-role': 'peek-result' });
  const err = el('div', { class: 'status', hidden: true });
  const form = el('form', { class: 'inline', 'data-role': 'peek' }, el('label', {}, 'Messages ', count), el('label', {}, 'From position ', offset), el('button', { type: 'submit' }, 'Peek'), err);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.hidden = true;
    try {
      const msgs = await get(`${qpath}/peek?count=${enc(count.value)}&offset=${enc(offset.value)}`);
      fill(out, messageList(msgs, { peek: true }));
    } catch (ex) {
      fill(out);
      status(err, false, ex.message);
    }
  });
  return el('div', {}, form, out);
}

function getForm(qpath, onDone) {
  const ackmode = el(
    'select',
    { name: 'ackmode' },
    el('option', { value: 'ack_requeue_true' }, 'Nack message, requeue true'),
    el('option', { value: 'ack_requeue_false' }, 'Automatic ack'),
    el('option', { value: 'reject_requeue_true' }, 'Reject, requeue true'),
    el('option', { value: 'reject_requeue_false' }, 'Reject, requeue false'),
  );
  const encoding = el('select', { name: 'encoding' }, el('option', { value: 'auto' }, 'Auto string / base64'), el('option', { value: 'base64' }, 'base64'));
  const count = el('input', { name: 'count', type: 'number', min: 1, value: 1, size: 4 });
  const out = el('div', { 'data-role': 'get-result' });
  const err = el('div', { class: 'status', hidden: true });
  const form = el('form', { class: 'inline', 'data-role': 'get' }, el('label', {}, 'Ack mode ', ackmode), el('label', {}, 'Encoding ', encoding), el('label', {}, 'Messages ', count), el('button', { type: 'submit' }, 'Get message(s)'), err);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.hidden = true;
    try {
      const msgs = await api('POST', `${qpath}/get`, { count: Number(count.value), ackmode: ackmode.value, encoding: encoding.value, truncate: 50000 });
      fill(out, messageList(msgs));
      onDone();
    } catch (ex) {
      fill(out);
      status(err, false, ex.message);
    }
  });
  return el('div', {}, form, out);
}

function purgeButton(qpath, onDone) {
  const out = el('span', { class: 'status', hidden: true });
  return el(
    'span',
    {},
    el(
      'button',
      {
        type: 'button',
        'data-role': 'purge',
        onclick: async () => {
          if (!confirm('Purge all ready messages from this queue?')) return;
          try {
            await api('DELETE', `${qpath}/contents`);
            status(out, true, 'Queue purged.');
            onDone();
          } catch (ex) {
            status(out, false, ex.message);
          }
        },
      },
      'Purge messages',
    ),
    out,
  );
}

function deleteButton(qpath, name, onDeleted) {
  const ifUnused = el('input', { type: 'checkbox' });
  const ifEmpty = el('input', { type: 'checkbox' });
  const out = el('span', { class: 'status', hidden: true });
  return el(
    'span',
    {},
    el('label', { class: 'check' }, ifUnused, 'If unused'),
    el('label', { class: 'check' }, ifEmpty, 'If empty'),
    el(
      'button',
      {
        type: 'button',
        class: 'danger',
        'data-role': 'delete',
        onclick: async () => {
          if (!confirm(`Delete queue ${name}?`)) return;
          const q = new URLSearchParams();
          if (ifUnused.checked) q.set('if-unused', 'true');
          if (ifEmpty.checked) q.set('if-empty', 'true');
          try {
            await api('DELETE', `${qpath}${q.size ? `?${q}` : ''}`);
            onDeleted();
            location.hash = '#/queues';
          } catch (ex) {
            status(out, false, ex.message);
          }
        },
      },
      'Delete queue',
    ),
    out,
  );
}
