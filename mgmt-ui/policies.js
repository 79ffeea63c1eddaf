// Admin → Policies: the policies and operator policies of every virtual
// host (or the one chosen in the header), a form to add or replace one, and
// delete buttons. The broker validates: its reason is shown as it is.

import { api, enc, get } from './api.js';
import { el, field, fill, onSubmit, section, status } from './dom.js';

const KINDS = { policies: 'Policy', 'operator-policies': 'Operator policy' };

export function mount(root, ctx) {
  const lists = { policies: el('div', { 'data-role': 'policies' }), 'operator-policies': el('div', { 'data-role': 'operator-policies' }) };
  const err = el('div', { class: 'status err', hidden: true });
  fill(
    root,
    el('h2', {}, el('a', { href: '#/admin' }, 'Admin'), ' › Policies'),
    el('p', { class: 'muted' }, 'A policy sets arguments for every queue or exchange whose name matches its pattern; the highest priority wins. Operator policies cap numeric limits (the lower value wins). Warren applies alternate-exchange; the queue keys are stored and shown on each queue\'s page but not yet enforced.'),
    err,
    section('Policies', lists.policies),
    section('Operator policies', lists['operator-policies']),
    section('Add or update a policy', policyForm(ctx, () => refresh())),
  );

  function deleteButton(kind, p) {
    const out = el('span', { class: 'status', hidden: true });
    const click = async () => {
      if (!confirm(`Delete ${KINDS[kind].toLowerCase()} ${p.name} in ${p.vhost}?`)) return;
      try {
        await api('DELETE', `/${kind}/${enc(p.vhost)}/${enc(p.name)}`);
        refresh();
      } catch (ex) {
        status(out, false, ex.message);
      }
    };
    return el('span', {}, el('button', { type: 'button', class: 'small danger', 'data-delete': p.name, onclick: click }, 'Delete'), out);
  }

  async function refresh() {
    for (const kind of Object.keys(KINDS)) {
      const path = ctx.vhost ? `/${kind}/${enc(ctx.vhost)}` : `/${kind}`;
      let items;
      try {
        items = await get(path);
      } catch (ex) {
        fill(lists[kind], el('p', { class: 'status err' }, `Unavailable: ${ex.message}`));
        continue;
      }
      fill(lists[kind], policyTable(items, (p) => deleteButton(kind, p)));
    }
  }

  return { refresh, error: (e) => status(err, false, e.message) };
}

function policyTable(items, actions) {
  if (!items.length) return el('p', { class: 'muted' }, 'None.');
  const head = ['Virtual host', 'Name', 'Pattern', 'Apply to', 'Definition', 'Priority', ''];
  return el(
    'table',
    { class: 'list' },
    el('thead', {}, el('tr', {}, head.map((h) => el('th', {}, h)))),
    el(
      'tbody',
      {},
      items.map((p) =>
        el(
          'tr',
          { 'data-name': p.name },
          el('td', {}, p.vhost),
          el('td', {}, p.name),
          el('td', {}, el('code', {}, p.pattern)),
          el('td', {}, p['apply-to']),
          el('td', {}, Object.entries(p.definition || {}).map(([k, v]) => el('div', {}, el('code', {}, k), ` = ${JSON.stringify(v)}`))),
          el('td', { class: 'num' }, String(p.priority)),
          el('td', {}, actions(p)),
        ),
      ),
    ),
  );
}

function policyForm(ctx, onDone) {
  const kind = el('select', { name: 'kind' }, Object.entries(KINDS).map(([k, label]) => el('option', { value: k }, label)));
  const vhost = el('input', { name: 'policy-vhost', value: ctx.vhost || '/', required: true });
  const name = el('input', { name: 'policy-name', required: true });
  const pattern = el('input', { name: 'pattern', required: true, placeholder: '^orders\\.' });
  const applyTo = el('select', { name: 'apply-to' }, ['all', 'queues', 'exchanges'].map((a) => el('option', { value: a }, a)));
  const priority = el('input', { name: 'priority', type: 'number', value: '0' });
  const definition = el('textarea', { name: 'definition', rows: 3, placeholder: '{"max-length": 1000, "message-ttl": 60000}' });
  const out = el('div', { class: 'status', hidden: true });
  const form = el(
    'form',
    { class: 'grid-form' },
    field('Kind', kind),
    field('Virtual host', vhost),
    field('Name', name),
    field('Pattern', pattern, 'A regular expression matched against queue and exchange names.'),
    field('Apply to', applyTo),
    field('Priority', priority),
    field('Definition', definition, 'A JSON object, e.g. {"alternate-exchange": "unrouted"}.'),
    el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Save policy'), out),
  );
  onSubmit(form, out, async () => {
    let def;
    try {
      def = JSON.parse(definition.value || '{}');
    } catch (ex) {
      throw new Error(`The definition is not JSON: ${ex.message}`);
    }
    const body = { pattern: pattern.value, definition: def, priority: Number(priority.value || 0), 'apply-to': applyTo.value };
    await api('PUT', `/${kind.value}/${enc(vhost.value)}/${enc(name.value)}`, body);
    onDone();
    return `${KINDS[kind.value]} ${name.value} saved.`;
  });
  return form;
}
