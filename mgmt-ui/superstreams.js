// Super streams: the list (partitions with their offsets, consumer
// groups with their committed offsets and lag per partition), creating one
// in one step (RabbitMQ's add_super_stream layout) and deleting one
// (its exchange and partitions).

import { api, enc, get } from './api.js';
import { el, field, fill, fmtNum, link, onSubmit, parseKv, section, status } from './dom.js';

export function mount(root, ctx) {
  const listNode = el('div', { 'data-role': 'super-streams' });
  fill(
    root,
    el('h2', {}, 'Super streams'),
    el('p', { class: 'muted' }, 'Partitioned streams: a direct exchange with x-super-stream and stream queues NAME-0 … NAME-(N-1). Consumer groups (x-stream-group with x-super-stream) share the partitions.'),
    listNode,
    section('Add a super stream', addForm(ctx, () => refresh().catch((e) => ctx.flash(e.message)))),
  );

  async function refresh() {
    const all = await get(ctx.vhost ? `/super-streams/${enc(ctx.vhost)}` : '/super-streams');
    if (!all.length) {
      fill(listNode, el('p', { class: 'muted' }, 'No super streams.'));
      return;
    }
    fill(listNode, all.map((ss) => superStream(ss, refresh, ctx)));
  }
  refresh().catch((e) => ctx.flash(e.message));
  return { refresh };
}

function superStream(ss, refresh, ctx) {
  const out = el('div', { class: 'status', hidden: true });
  const del = el('button', { type: 'button', class: 'danger', 'data-action': 'delete-super-stream' }, 'Delete');
  del.addEventListener('click', async () => {
    if (!confirm(`Delete super stream ${ss.name} and its ${ss.partitions.length} partitions (their messages too)?`)) return;
    try {
      await api('DELETE', `/super-streams/${enc(ss.vhost)}/${enc(ss.name)}`);
      ctx.flash(`Super stream ${ss.name} deleted.`, true);
      await refresh();
    } catch (e) {
      status(out, false, e.message);
    }
  });
  const partitions = el(
    'table',
    { class: 'list', 'data-role': 'partitions' },
    el('thead', {}, el('tr', {}, ['#', 'Partition', 'Binding key', 'Messages', 'First offset', 'Tail', 'Consumers'].map((h) => el('th', {}, h)))),
    el('tbody', {}, ss.partitions.map((p) => el('tr', {}, el('td', { class: 'num' }, String(p.index)), el('td', {}, link('queues', ss.vhost, p.name)), el('td', {}, p.binding_key), el('td', { class: 'num' }, fmtNum(p.messages)), el('td', { class: 'num' }, fmtNum(p.first_offset)), el('td', { class: 'num' }, fmtNum(p.committed_offset)), el('td', { class: 'num' }, fmtNum(p.consumers))))),
  );
  const groups = ss.groups.length
    ? el(
        'table',
        { class: 'list', 'data-role': 'groups' },
        el('thead', {}, el('tr', {}, ['Group', 'Partition', 'Committed', 'Tail', 'Lag', 'Reader'].map((h) => el('th', {}, h)))),
        el('tbody', {}, ss.groups.flatMap((g) => g.partitions.map((r) => el('tr', {}, el('td', {}, g.name), el('td', {}, r.partition), el('td', { class: 'num' }, fmtNum(r.committed_offset)), el('td', { class: 'num' }, fmtNum(r.tail)), el('td', { class: 'num' }, fmtNum(r.lag)), el('td', {}, r.active_consumer_tag || '–'))))),
      )
    : el('p', { class: 'muted' }, 'No consumer groups.');
  const lag = ss.groups.map((g) => `${g.name}: lag ${fmtNum(g.lag)}`).join('; ');
  return el(
    'div',
    { class: 'section', 'data-super-stream': ss.name },
    el('h3', {}, link('exchanges', ss.vhost, ss.name), el('small', { class: 'muted' }, ` in ${ss.vhost} · routing by ${ss.routing} · ${ss.partitions.length} partitions${lag ? ` · ${lag}` : ''} `), del),
    out,
    partitions,
    groups,
  );
}

function addForm(ctx, onDone) {
  const vhost = el('input', { name: 'vhost', value: ctx.vhost || '/', size: 12 });
  const name = el('input', { name: 'name', required: true, size: 30 });
  const partitions = el('input', { name: 'partitions', type: 'number', min: 1, value: 3, size: 5 });
  const keys = el('input', { name: 'binding-keys', size: 30, placeholder: 'amer,emea,apac (instead of a count)' });
  const routing = el('select', { name: 'routing' }, el('option', { value: 'key' }, 'By routing key (RabbitMQ)'), el('option', { value: 'hash' }, 'By hash of the routing key'));
  const args = el('textarea', { name: 'arguments', rows: 2, placeholder: 'x-max-age=7D' });
  const out = el('div', { class: 'status', hidden: true });
  const form = el(
    'form',
    { class: 'grid-form', 'data-role': 'add-super-stream' },
    field('Virtual host', vhost),
    field('Name', name),
    field('Partitions', partitions),
    field('Binding keys', keys, 'comma-separated; partitions are NAME-key'),
    field('Routing', routing),
    field('Partition arguments', args),
    el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Add super stream'), out),
  );
  onSubmit(form, out, async () => {
    const body = { routing: routing.value, arguments: parseKv(args.value) };
    const k = keys.value.split(',').map((s) => s.trim()).filter(Boolean);
    if (k.length) body['binding-keys'] = k;
    else body.partitions = Number(partitions.value);
    await api('PUT', `/super-streams/${enc(vhost.value)}/${enc(name.value)}`, body);
    onDone();
    return `Super stream ${name.value} declared.`;
  });
  return form;
}
