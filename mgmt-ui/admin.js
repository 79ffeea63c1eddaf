// Admin: users (with tags), virtual hosts and permissions; policies,
// limits, definitions and each virtual host have their own pages
// (policies.js, limits.js, definitions.js, vhost.js), linked from here.

import { api, enc, get } from './api.js';
import { el, field, fill, fmtNum, onSubmit, section, status } from './dom.js';

export function mount(root, ctx) {
  if (!ctx.isAdmin()) {
    fill(root, el('h2', {}, 'Admin'), el('p', { class: 'status err' }, 'Only users tagged administrator can manage users, virtual hosts and permissions.'));
    return {};
  }
  const users = el('div', { 'data-role': 'users' });
  const vhosts = el('div', { 'data-role': 'vhosts' });
  const perms = el('div', { 'data-role': 'permissions' });
  const err = el('div', { class: 'status err', hidden: true });
  fill(
    root,
    el('h2', {}, 'Admin'),
    el(
      'p',
      { class: 'admin-links' },
      el('a', { href: '#/policies', 'data-role': 'policies-link' }, 'Policies and operator policies →'),
      ' ',
      el('a', { href: '#/limits', 'data-role': 'limits-link' }, 'Limits →'),
      ' ',
      el('a', { href: '#/definitions', 'data-role': 'definitions-link' }, 'Export / import definitions →'),
    ),
    err,
    section('Users', users, el('h4', {}, 'Add or update a user'), userForm(() => refresh())),
    section('Virtual hosts', vhosts, el('h4', {}, 'Add a virtual host'), vhostForm(() => refresh())),
    section('Permissions', perms, el('h4', {}, 'Set permissions'), permissionForm(() => refresh())),
  );

  function deleteButton(label, path, question) {
    const out = el('span', { class: 'status', hidden: true });
    return el(
      'span',
      {},
      el(
        'button',
        {
          type: 'button',
          class: 'small danger',
          onclick: async () => {
            if (!confirm(question)) return;
            try {
              await api('DELETE', path);
              refresh();
            } catch (ex) {
              status(out, false, ex.message);
            }
          },
        },
        label,
      ),
      out,
    );
  }

  async function refresh() {
    const [u, v, p] = await Promise.all([get('/users'), get('/vhosts'), get('/permissions').catch((e) => e)]);
    fill(
      users,
      table(
        ['Name', 'Tags', 'Has password', 'Can access virtual hosts', ''],
        u.map((x) => [
          x.name,
          (Array.isArray(x.tags) ? x.tags : String(x.tags || '').split(',')).filter(Boolean).join(', ') || '–',
          // RabbitMQ's user JSON: an empty password_hash is a user that
          // cannot log in with a password.
          x.password_hash ? 'yes' : el('span', { class: 'muted' }, 'no'),
          p instanceof Error ? '?' : p.filter((q) => q.user === x.name).map((q) => q.vhost).join(', ') || 'none',
          x.name === ctx.user.name ? el('span', { class: 'muted' }, 'you') : deleteButton('Delete', `/users/${enc(x.name)}`, `Delete user ${x.name}?`),
        ]),
      ),
    );
    fill(
      vhosts,
      table(
        ['Name', 'Ready', 'Unacked', 'Total', ''],
        v.map((x) => [el('a', { href: `#/vhosts/${enc(x.name)}`, 'data-vhost': x.name }, x.name), fmtNum(x.messages_ready), fmtNum(x.messages_unacknowledged), fmtNum(x.messages), deleteButton('Delete', `/vhosts/${enc(x.name)}`, `Delete virtual host ${x.name} and everything in it?`)]),
      ),
    );
    fill(
      perms,
      p instanceof Error
        ? el('p', { class: 'status err' }, `Unavailable: ${p.message}`)
        : table(
            ['User', 'Virtual host', 'Configure', 'Write', 'Read', ''],
            p.map((x) => [x.user, x.vhost, el('code', {}, x.configure), el('code', {}, x.write), el('code', {}, x.read), deleteButton('Clear', `/permissions/${enc(x.vhost)}/${enc(x.user)}`, `Clear ${x.user}'s permissions in ${x.vhost}?`)]),
          ),
    );
  }

  return { refresh, error: (e) => status(err, false, e.message) };
}

function table(head, rows) {
  if (!rows.length) return el('p', { class: 'muted' }, 'None.');
  return el('table', { class: 'list' }, el('thead', {}, el('tr', {}, head.map((h) => el('th', {}, h)))), el('tbody', {}, rows.map((r) => el('tr', {}, r.map((c) => el('td', {}, c))))));
}

function userForm(onDone) {
  const name = el('input', { name: 'username', required: true, autocomplete: 'off' });
  const pass = el('input', { name: 'new-password', type: 'password', autocomplete: 'new-password' });
  const none = el('input', { name: 'no-password', type: 'checkbox', onchange: () => (pass.disabled = none.checked) });
  const tags = el('input', { name: 'tags', placeholder: 'administrator, monitoring, management…' });
  const out = el('div', { class: 'status', hidden: true });
  const form = el(
    'form',
    { class: 'grid-form' },
    field('Username', name),
    field('Password', pass, 'Leave empty to keep an existing user\'s password.'),
    el('div', { class: 'field' }, el('span', {}, 'No password'), el('label', { class: 'check' }, none, 'Cannot log in with a password')),
    field('Tags', tags),
    el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Save user'), out),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const body = { tags: tags.value.split(/[\s,]+/).filter(Boolean).join(','), ...(await passwordFields(name.value, pass.value, none.checked)) };
      await api('PUT', `/users/${enc(name.value)}`, body);
      status(out, true, `User ${name.value} saved.`);
      pass.value = '';
      none.checked = false;
      pass.disabled = false;
      onDone();
    } catch (ex) {
      status(out, false, ex.message);
    }
  });
  return form;
}

/**
 * The password part of a user's PUT body. An empty password is never sent
 * (the API refuses it): no password is asked for only with the box ticked,
 * and a blank field on an existing user sends back its current hash, as a
 * PUT without one would clear it (RabbitMQ's rule).
 */
async function passwordFields(user, password, noPassword) {
  if (noPassword) return { password_hash: '' };
  if (password) return { password };
  let existing;
  try {
    existing = await get(`/users/${enc(user)}`);
  } catch (ex) {
    if (ex.status === 404) throw new Error('Enter a password, or tick "No password".');
    throw ex;
  }
  return { password_hash: existing.password_hash, hashing_algorithm: existing.hashing_algorithm };
}

function vhostForm(onDone) {
  const name = el('input', { name: 'vhost-name', required: true });
  const desc = el('input', { name: 'description' });
  const out = el('div', { class: 'status', hidden: true });
  const form = el('form', { class: 'grid-form' }, field('Name', name), field('Description', desc), el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Add virtual host'), out));
  onSubmit(form, out, async () => {
    await api('PUT', `/vhosts/${enc(name.value)}`, { description: desc.value });
    onDone();
    return `Virtual host ${name.value} added.`;
  });
  return form;
}

/** The form setting a user's permissions; `fixedVhost` fixes the vhost (its own page). */
export function permissionForm(onDone, fixedVhost) {
  const user = el('input', { name: 'perm-user', required: true });
  const vhost = el('input', { name: 'perm-vhost', value: fixedVhost ?? '/', required: true });
  if (fixedVhost !== undefined) vhost.readOnly = true;
  const configure = el('input', { name: 'configure', value: '.*' });
  const write = el('input', { name: 'write', value: '.*' });
  const read = el('input', { name: 'read', value: '.*' });
  const out = el('div', { class: 'status', hidden: true });
  const form = el(
    'form',
    { class: 'grid-form' },
    field('User', user),
    field('Virtual host', vhost),
    field('Configure regexp', configure),
    field('Write regexp', write),
    field('Read regexp', read),
    el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Set permission'), out),
  );
  onSubmit(form, out, async () => {
    await api('PUT', `/permissions/${enc(vhost.value)}/${enc(user.value)}`, { configure: configure.value, write: write.value, read: read.value });
    onDone();
    return `Permissions of ${user.value} in ${vhost.value} set.`;
  });
  return form;
}
