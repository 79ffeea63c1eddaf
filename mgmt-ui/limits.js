// Admin → Limits, as RabbitMQ's Admin > Limits: virtual host limits
// (max-connections, max-queues) and user limits (max-connections,
// max-channels), each listed one per row with a Clear button, and a form
// to set one. The broker validates: its reason is shown as it is.

import { api, enc, get } from './api.js';
import { el, field, fill, fmtNum, onSubmit, section, status } from './dom.js';

const KINDS = {
  vhost: { path: 'vhost-limits', owner: 'vhost', label: 'Virtual host', names: ['max-connections', 'max-queues'] },
  user: { path: 'user-limits', owner: 'user', label: 'User', names: ['max-connections', 'max-channels'] },
};

export function mount(root, ctx) {
  if (!ctx.isAdmin()) {
    fill(root, el('h2', {}, 'Limits'), el('p', { class: 'status err' }, 'Only users tagged administrator can manage limits.'));
    return {};
  }
  const lists = { vhost: el('div', { 'data-role': 'vhost-limits' }), user: el('div', { 'data-role': 'user-limits' }) };
  const err = el('div', { class: 'status err', hidden: true });
  fill(
    root,
    el('h2', {}, el('a', { href: '#/admin' }, 'Admin'), ' › Limits'),
    el('p', { class: 'muted' }, 'A negative value means no limit; 0 refuses every new connection, channel or queue.'),
    err,
    section('Virtual host limits', lists.vhost, el('h4', {}, 'Set a virtual host limit'), limitForm(KINDS.vhost, () => refresh())),
    section('User limits', lists.user, el('h4', {}, 'Set a user limit'), limitForm(KINDS.user, () => refresh())),
  );

  async function refresh() {
    for (const [key, kind] of Object.entries(KINDS)) {
      let items;
      try {
        items = await get(`/${kind.path}`);
      } catch (ex) {
        fill(lists[key], el('p', { class: 'status err' }, `Unavailable: ${ex.message}`));
        continue;
      }
      fill(lists[key], limitTable(kind, items, refresh));
    }
  }

  return { refresh, error: (e) => status(err, false, e.message) };
}

/** One row per (owner, limit): RabbitMQ lists `{vhost|user, value: {name: n}}`. */
export function limitTable(kind, items, onChange) {
  const rows = [];
  for (const item of items) {
    for (const [name, value] of Object.entries(item.value || {})) rows.push([item[kind.owner], name, value]);
  }
  if (!rows.length) return el('p', { class: 'muted' }, 'None.');
  return el(
    'table',
    { class: 'list' },
    el('thead', {}, el('tr', {}, [kind.label, 'Limit', 'Value', ''].map((h) => el('th', {}, h)))),
    el(
      'tbody',
      {},
      rows.map(([owner, name, value]) => el('tr', { 'data-limit': `${owner}/${name}` }, el('td', {}, owner), el('td', {}, name), el('td', {}, fmtNum(value)), el('td', {}, clearButton(kind, owner, name, onChange)))),
    ),
  );
}

function clearButton(kind, owner, name, onChange) {
  const out = el('span', { class: 'status', hidden: true });
  const click = async () => {
    if (!confirm(`Clear ${name} of ${owner}?`)) return;
    try {
      await api('DELETE', `/${kind.path}/${enc(owner)}/${enc(name)}`);
      onChange();
    } catch (ex) {
      status(out, false, ex.message);
    }
  };
  return el('span', {}, el('button', { type: 'button', class: 'small danger', onclick: click }, 'Clear'), out);
}

/** The form setting one limit; `fixedOwner` fixes the vhost or user (its own page). */
export function limitForm(kind, onDone, fixedOwner) {
  const owner = el('input', { name: `${kind.owner}-limit-owner`, required: true, value: fixedOwner ?? (kind.owner === 'vhost' ? '/' : '') });
  if (fixedOwner !== undefined) owner.readOnly = true;
  const name = el('select', { name: `${kind.owner}-limit-name` }, kind.names.map((n) => el('option', { value: n }, n)));
  const value = el('input', { name: `${kind.owner}-limit-value`, type: 'number', step: '1', required: true });
  const out = el('div', { class: 'status', hidden: true });
  const form = el(
    'form',
    { class: 'grid-form', 'data-role': `${kind.owner}-limit-form` },
    field(kind.label, owner),
    field('Limit', name),
    field('Value', value),
    el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Set limit'), out),
  );
  onSubmit(form, out, async () => {
    await api('PUT', `/${kind.path}/${enc(owner.value)}/${enc(name.value)}`, { value: Number(value.value) });
    onDone();
    return `${name.value} of ${owner.value} set to ${value.value}.`;
  });
  return form;
}
