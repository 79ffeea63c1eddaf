// Admin → Definitions: export (a JSON file downloaded from
// GET /api/definitions, or one virtual host's) and import (an uploaded file
// POSTed back), as RabbitMQ's Overview > Export/Import definitions. The
// file is sent as it is; the broker validates and its reason is shown.

import { api, enc, get } from './api.js';
import { el, field, fill, section, status } from './dom.js';

/** What an import file holds, for the result line. */
const COUNTED = ['users', 'vhosts', 'permissions', 'topic_permissions', 'parameters', 'global_parameters', 'policies', 'queues', 'exchanges', 'bindings'];

export function mount(root, ctx) {
  if (!ctx.isAdmin()) {
    fill(root, el('h2', {}, 'Definitions'), el('p', { class: 'status err' }, 'Only users tagged administrator can export and import definitions.'));
    return {};
  }
  const scope = el('select', { name: 'definitions-vhost' }, el('option', { value: '' }, 'All virtual hosts'));
  const err = el('div', { class: 'status err', hidden: true });
  fill(
    root,
    el('h2', {}, el('a', { href: '#/admin' }, 'Admin'), ' › Definitions'),
    el('p', { class: 'muted' }, 'Definitions are the users, virtual hosts, permissions, limits, policies, queues, exchanges and bindings, without messages: the same JSON file RabbitMQ exports and imports.'),
    err,
    field('Virtual host', scope, 'One virtual host\'s file holds its queues, exchanges, bindings and policies only.'),
    section('Export', exportForm(scope)),
    section('Import', importForm(scope)),
  );
  get('/vhosts')
    .then((vs) => {
      for (const v of vs) scope.append(el('option', { value: v.name }, v.name));
      scope.value = ctx.vhost || '';
    })
    .catch((e) => status(err, false, e.message));
  return { error: (e) => status(err, false, e.message) };
}

const pathFor = (vhost) => (vhost ? `/definitions/${enc(vhost)}` : '/definitions');

function exportForm(scope) {
  const out = el('div', { class: 'status', hidden: true });
  const click = async () => {
    try {
      // Fetched with the session's credentials (a plain link would not
      // carry them), then saved from a Blob.
      const defs = await get(pathFor(scope.value));
      const blob = new Blob([JSON.stringify(defs, null, 2)], { type: 'application/json' });
      const a = el('a', { href: URL.createObjectURL(blob), download: fileName(scope.value) });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
      status(out, true, `Exported ${summary(defs)}.`);
    } catch (ex) {
      status(out, false, ex.message);
    }
  };
  return el('div', { class: 'actions' }, el('button', { type: 'button', 'data-role': 'export', onclick: click }, 'Download definitions'), out);
}

function fileName(vhost) {
  const day = new Date().toISOString().slice(0, 10);
  const part = vhost ? `-${vhost.replace(/[^A-Za-z0-9._-]+/g, '_') || 'root'}` : '';
  return `warren-definitions${part}-${day}.json`;
}

function importForm(scope) {
  const file = el('input', { name: 'definitions-file', type: 'file', accept: '.json,application/json', required: true });
  const out = el('div', { class: 'status', hidden: true, 'data-role': 'import-result' });
  const form = el('form', { class: 'grid-form', 'data-role': 'import-form' }, field('Definitions file', file), el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Upload definitions'), out));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = file.files[0];
    if (!f) return status(out, false, 'Choose a file first.');
    let defs;
    try {
      defs = JSON.parse(await f.text());
    } catch (ex) {
      return status(out, false, `${f.name} is not JSON: ${ex.message}`);
    }
    try {
      await api('POST', pathFor(scope.value), defs);
      status(out, true, `Imported ${f.name}: ${summary(defs)}.`);
    } catch (ex) {
      status(out, false, `Import refused: ${ex.message}`);
    }
  });
  return form;
}

function summary(defs) {
  const parts = COUNTED.filter((k) => Array.isArray(defs?.[k]) && defs[k].length).map((k) => `${defs[k].length} ${k.replace('_', ' ')}`);
  return parts.length ? parts.join(', ') : 'nothing';
}
