// Exchanges: the paged list, and an exchange's page with its rates,
// bindings (both directions), publish, bind, delete, and the routing tester
// (which queues a message would reach, by which bindings, without
// publishing it).

import { api, enc, get } from './api.js';
import { argsText, badge, el, field, fill, fmtRate, kvTable, link, onSubmit, parseKv, section, status } from './dom.js';
import { LineChart, drawHistory, historyQuery, rangePicker } from './charts.js';
import { PagedTable } from './table.js';
import { bindingForm, bindingsTable, publishForm } from './messages.js';

const TYPES = ['direct', 'fanout', 'topic', 'headers', 'x-consistent-hash'];

export function list(root, ctx) {
  const table = new PagedTable({
    key: 'exchanges',
    path: () => (ctx.vhost ? `/exchanges/${enc(ctx.vhost)}` : '/exchanges'),
    rowKey: (x) => `${x.vhost}/${x.name}`,
    empty: 'No exchanges.',
    fields: ['name', 'vhost', 'type', 'durable', 'auto_delete', 'internal', 'arguments', 'message_stats'],
    columns: [
      { label: 'Virtual host', sort: 'vhost', render: (x) => x.vhost },
      { label: 'Name', sort: 'name', render: (x) => link('exchanges', x.vhost, x.name) },
      { label: 'Type', sort: 'type', render: (x) => x.type },
      { label: 'Features', render: (x) => [x.durable ? badge('D') : null, x.auto_delete ? badge('AD') : null, x.internal ? badge('I') : null, Object.keys(x.arguments || {}).length ? el('span', { class: 'badge', title: argsText(x.arguments) }, 'Args') : null] },
      { label: 'Rate in', sort: 'message_stats.publish_in_details.rate', class: 'num', render: (x) => fmtRate(x.message_stats?.publish_in_details?.rate ?? 0) },
      { label: 'Rate out', sort: 'message_stats.publish_out_details.rate', class: 'num', render: (x) => fmtRate(x.message_stats?.publish_out_details?.rate ?? 0) },
    ],
  });
  fill(root, el('h2', {}, 'Exchanges'), table.node, section('Add an exchange', addExchangeForm(ctx, () => table.refresh())));
  return { refresh: () => table.refresh() };
}

function addExchangeForm(ctx, onDone) {
  const vhost = el('input', { name: 'vhost', value: ctx.vhost || '/', size: 12 });
  const name = el('input', { name: 'name', required: true, size: 30 });
  const type = el('select', { name: 'type' }, TYPES.map((t) => el('option', { value: t }, t)));
  const durable = el('select', { name: 'durable' }, el('option', { value: 'true' }, 'Durable'), el('option', { value: 'false' }, 'Transient'));
  const internal = el('select', { name: 'internal' }, el('option', { value: 'false' }, 'No'), el('option', { value: 'true' }, 'Yes'));
  const args = el('textarea', { name: 'arguments', rows: 2, placeholder: 'alternate-exchange=unrouted' });
  const out = el('div', { class: 'status', hidden: true });
  const form = el(
    'form',
    { class: 'grid-form' },
    field('Virtual host', vhost),
    field('Name', name),
    field('Type', type),
    field('Durability', durable),
    field('Internal', internal),
    field('Arguments', args),
    el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Add exchange'), out),
  );
  onSubmit(form, out, async () => {
    await api('PUT', `/exchanges/${enc(vhost.value)}/${enc(name.value)}`, { type: type.value, durable: durable.value === 'true', internal: internal.value === 'true', arguments: parseKv(args.value) });
    onDone();
    return `Exchange ${name.value} declared.`;
  });
  return form;
}

export function page(root, ctx) {
  const [vhost, rawName] = ctx.params;
  const name = rawName === 'amq.default' ? '' : rawName;
  const xpath = `/exchanges/${enc(vhost)}/${enc(name || 'amq.default')}`;
  const rates = new LineChart('Message rates', [{ label: 'Publish in' }, { label: 'Publish out' }], { format: fmtRate });
  const info = el('div');
  const asSource = el('div', { 'data-role': 'source-bindings' });
  const asDest = el('div', { 'data-role': 'destination-bindings' });
  const gone = el('div', { class: 'status err', hidden: true });
  let deleted = false;
  const isDefault = name === '';

  fill(
    root,
    el('h2', {}, 'Exchange ', el('span', { class: 'name' }, isDefault ? '(AMQP default)' : name), el('small', { class: 'muted' }, ` in virtual host ${vhost}`)),
    gone,
    rangePicker(() => refresh().catch(() => {})),
    el('div', { class: 'charts' }, rates.node, el('div', { class: 'chart' }, el('div', { class: 'chart-title' }, 'Details'), info)),
    section('Routing tester', el('p', { class: 'muted' }, 'Which queues would a message reach, and through which bindings? Nothing is published.'), routeTester(vhost, name, xpath)),
    isDefault ? section('Bindings', el('p', { class: 'muted' }, 'The default exchange is implicitly bound to every queue, with the queue name as routing key.')) : [section('Bindings from this exchange', asSource, el('h4', {}, 'Add binding from this exchange'), bindingForm({ vhost, source: name, onDone: () => refreshBindings().catch(() => {}) })), section('Bindings to this exchange', asDest)],
    section('Publish message', publishForm({ vhost, exchange: name })),
    isDefault ? null : section('Delete this exchange', deleteButton(xpath, name, () => (deleted = true))),
  );

  async function refresh() {
    if (deleted) return;
    let x;
    try {
      x = await get(`${xpath}?${historyQuery(['msg_rates'])}`);
    } catch (e) {
      if (e.status === 404) {
        gone.textContent = 'This exchange does not exist (any more).';
        gone.hidden = false;
        return;
      }
      throw e;
    }
    gone.hidden = true;
    drawHistory(rates, x.message_stats, ['publish_in', 'publish_out'], true);
    fill(
      info,
      kvTable([
        ['Type', x.type],
        ['Features', [x.durable ? 'durable' : 'transient', x.auto_delete ? 'auto-delete' : null, x.internal ? 'internal' : null].filter(Boolean).join(', ')],
        ['Arguments', argsText(x.arguments) || '–'],
        ['Policy', x.policy || '–'],
      ]),
    );
    if (!isDefault) await refreshBindings();
  }

  async function refreshBindings() {
    let src;
    let dst;
    try {
      [src, dst] = await Promise.all([get(`${xpath}/bindings/source`), get(`${xpath}/bindings/destination`)]);
    } catch (e) {
      if (e.status !== 404 && e.status !== 405) throw e;
      // Before the per-exchange endpoints exist: the vhost's list, filtered.
      const all = await get(`/bindings/${enc(vhost)}`);
      src = all.filter((b) => b.source === name);
      dst = all.filter((b) => b.destination_type === 'exchange' && b.destination === name);
    }
    fill(asSource, bindingsTable(src, { side: 'destination', onChange: refreshBindings, canEdit: true }));
    fill(asDest, bindingsTable(dst, { side: 'source', onChange: refreshBindings, canEdit: true }));
  }

  return {
    refresh,
    destroy() {
      rates.destroy();
    },
  };
}

function routeTester(vhost, name, xpath) {
  const key = el('input', { name: 'routing_key', size: 30, placeholder: 'e.g. orders.eu.created' });
  const headers = el('textarea', { name: 'headers', rows: 2, placeholder: 'key=value, one per line (for headers exchanges)' });
  const out = el('div', { 'data-role': 'route-result' });
  const err = el('div', { class: 'status', hidden: true });
  const form = el('form', { class: 'grid-form', 'data-role': 'route-test' }, field('Routing key', key), field('Headers', headers), el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary' }, 'Test routing'), err));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.hidden = true;
    let h;
    try {
      h = parseKv(headers.value);
    } catch (ex) {
      status(err, false, `Invalid headers: ${ex.message}`);
      return;
    }
    try {
      const r = await api('POST', `${xpath}/route-test`, { routing_key: key.value, headers: h });
      fill(out, routeResult(r, vhost, name));
    } catch (ex) {
      fill(out);
      status(err, false, ex.message);
    }
  });
  return el('div', {}, form, out);
}

function routeResult(r, vhost, name) {
  if (!r.routed || !r.queues?.length) {
    return el('p', { class: 'status err', 'data-role': 'unroutable' }, 'Not routed: no queue would receive this message', r.exchanges?.length > 1 ? ` (exchanges visited: ${r.exchanges.map(exName).join(', ')})` : '', '.');
  }
  return el(
    'div',
    {},
    el('p', { class: 'status ok' }, `Would reach ${r.queues.length} queue${r.queues.length === 1 ? '' : 's'}.`),
    el(
      'table',
      { class: 'list', 'data-role': 'route-queues' },
      el('thead', {}, el('tr', {}, el('th', {}, 'Queue'), el('th', {}, 'Via'))),
      el(
        'tbody',
        {},
        r.queues.map((q) =>
          el(
            'tr',
            {},
            el('td', {}, link('queues', q.vhost || vhost, q.name)),
            el(
              'td',
              { class: 'via' },
              (q.via || []).length === 0
                ? el('span', { class: 'muted' }, name === '' ? 'default exchange (routing key = queue name)' : 'direct')
                : q.via.map((s, i) =>
                    el(
                      'span',
                      { class: 'step' },
                      i === 0 ? el('code', {}, exName(s.source)) : null,
                      s.alternate ? ' → alternate exchange → ' : ` → [${s.routing_key === '' ? '""' : s.routing_key}${s.arguments && Object.keys(s.arguments).length ? ` ${argsText(s.arguments)}` : ''}] → `,
                      el('code', {}, s.destination_type === 'queue' ? s.destination : exName(s.destination)),
                    ),
                  ),
            ),
          ),
        ),
      ),
    ),
  );
}

function exName(n) {
  return n === '' ? '(AMQP default)' : n;
}

function deleteButton(xpath, name, onDeleted) {
  const ifUnused = el('input', { type: 'checkbox' });
  const out = el('span', { class: 'status', hidden: true });
  return el(
    'div',
    { class: 'inline' },
    el('label', { class: 'check' }, ifUnused, 'If unused'),
    el(
      'button',
      {
        type: 'button',
        class: 'danger',
        onclick: async () => {
          if (!confirm(`Delete exchange ${name}?`)) return;
          try {
            await api('DELETE', `${xpath}${ifUnused.checked ? '?if-unused=true' : ''}`);
            onDeleted();
            location.hash = '#/exchanges';
          } catch (ex) {
            status(out, false, ex.message);
          }
        },
      },
      'Delete exchange',
    ),
    out,
  );
}
