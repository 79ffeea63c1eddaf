// Admin → one virtual host: its figures, the permissions users hold in it
// (set and clear, as RabbitMQ's virtual host page) and its limits.

import { api, enc, get } from './api.js';
import { el, fill, fmtNum, kvTable, section, status } from './dom.js';
import { permissionForm } from './admin.js';
import { limitForm, limitTable } from './limits.js';

const VHOST_LIMITS = { path: 'vhost-limits', owner: 'vhost', label: 'Virtual host', names: ['max-connections', 'max-queues'] };

export function mount(root, ctx) {
  const [name] = ctx.params;
  if (!ctx.isAdmin()) {
    fill(root, el('h2', {}, 'Virtual host'), el('p', { class: 'status err' }, 'Only users tagged administrator can manage virtual hosts.'));
    return {};
  }
  const figures = el('div', {});
  const perms = el('div', { 'data-role': 'vhost-permissions' });
  const limits = el('div', { 'data-role': 'vhost-limits' });
  const err = el('div', { class: 'status err', hidden: true });
  fill(
    root,
    el('h2', {}, el('a', { href: '#/admin' }, 'Admin'), ' › Virtual host ', el('code', {}, name)),
    err,
    figures,
    section('Permissions', perms, el('h4', {}, 'Set permission'), permissionForm(() => refresh(), name)),
    section('Limits', limits, el('h4', {}, 'Set a limit'), limitForm(VHOST_LIMITS, () => refresh(), name)),
  );

  function clearButton(user) {
    const out = el('span', { class: 'status', hidden: true });
    const click = async () => {
      if (!confirm(`Clear ${user}'s permissions in ${name}?`)) return;
      try {
        await api('DELETE', `/permissions/${enc(name)}/${enc(user)}`);
        refresh();
      } catch (ex) {
        status(out, false, ex.message);
      }
    };
    return el('span', {}, el('button', { type: 'button', class: 'small danger', onclick: click }, 'Clear'), out);
  }

  async function refresh() {
    const [v, p, l] = await Promise.all([get(`/vhosts/${enc(name)}`), get(`/vhosts/${enc(name)}/permissions`), get(`/vhost-limits/${enc(name)}`)]);
    fill(figures, kvTable([['Description', v.description || '–'], ['Ready', fmtNum(v.messages_ready)], ['Unacked', fmtNum(v.messages_unacknowledged)], ['Total', fmtNum(v.messages)]]));
    fill(
      perms,
      p.length
        ? el(
            'table',
            { class: 'list' },
            el('thead', {}, el('tr', {}, ['User', 'Configure', 'Write', 'Read', ''].map((h) => el('th', {}, h)))),
            el('tbody', {}, p.map((x) => el('tr', { 'data-user': x.user }, el('td', {}, x.user), el('td', {}, el('code', {}, x.configure)), el('td', {}, el('code', {}, x.write)), el('td', {}, el('code', {}, x.read)), el('td', {}, clearButton(x.user))))),
          )
        : el('p', { class: 'muted' }, 'No user has permissions here.'),
    );
    fill(limits, limitTable(VHOST_LIMITS, l, refresh));
  }

  return { refresh, error: (e) => status(err, false, e.message) };
}
