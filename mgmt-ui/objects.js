// Connections and channels: paged lists, and a connection's page with its
// channels and a close button.

import { api, enc, get } from './api.js';
import { el, fill, fmtNum, fmtTime, kvTable, link, section, badge, status } from './dom.js';
import { PagedTable } from './table.js';

/** The vhost filter applies to lists the server does not split by vhost. */
function vhostNote(ctx) {
  return ctx.vhost ? el('p', { class: 'muted' }, `Virtual host filter (${ctx.vhost}) does not apply to this list.`) : null;
}

export function connectionsList(root, ctx) {
  const table = new PagedTable({
    key: 'connections',
    path: () => '/connections',
    empty: 'No connections.',
    columns: [
      { label: 'Name', sort: 'name', render: (c) => link('connections', null, c.name) },
      { label: 'User', sort: 'user', render: (c) => c.user },
      { label: 'Virtual host', sort: 'vhost', render: (c) => c.vhost },
      { label: 'Client', render: (c) => [c.client_properties?.product, c.client_properties?.version].filter(Boolean).join(' ') },
      { label: 'Protocol', render: (c) => c.protocol },
      { label: 'Channels', sort: 'channels', class: 'num', render: (c) => fmtNum(c.channels) },
      { label: 'State', sort: 'state', render: (c) => c.state },
      { label: 'Connected', sort: 'connected_at', render: (c) => fmtTime(c.connected_at) },
    ],
  });
  fill(root, el('h2', {}, 'Connections'), vhostNote(ctx), table.node);
  return { refresh: () => table.refresh() };
}

export function channelsList(root, ctx) {
  const table = new PagedTable({
    key: 'channels',
    path: () => '/channels',
    empty: 'No channels.',
    columns: [
      { label: 'Channel', sort: 'name', render: (c) => link('connections', null, c.connection_details?.name ?? '', c.name) },
      { label: 'User', sort: 'user', render: (c) => c.user },
      { label: 'Virtual host', sort: 'vhost', render: (c) => c.vhost },
      { label: 'Mode', render: (c) => [c.confirm ? badge('confirm') : null, c.transactional ? badge('tx') : null] },
      { label: 'Prefetch', sort: 'prefetch_count', class: 'num', render: (c) => fmtNum(c.prefetch_count) },
      { label: 'Consumers', sort: 'consumer_count', class: 'num', render: (c) => fmtNum(c.consumer_count) },
      { label: 'Unacked', sort: 'messages_unacknowledged', class: 'num', render: (c) => fmtNum(c.messages_unacknowledged) },
      { label: 'State', sort: 'state', render: (c) => c.state },
    ],
  });
  fill(root, el('h2', {}, 'Channels'), vhostNote(ctx), table.node);
  return { refresh: () => table.refresh() };
}

export function connectionPage(root, ctx) {
  const [name] = ctx.params;
  const details = el('div');
  const chans = el('div');
  const closeStatus = el('div', { class: 'status', hidden: true });
  const reason = el('input', { value: 'Closed via management plugin', size: 40 });
  let closed = false;
  const closeForm = el(
    'form',
    {
      class: 'inline',
      onsubmit: async (e) => {
        e.preventDefault();
        if (!confirm(`Close connection ${name}?`)) return;
        try {
          await fetchClose(name, reason.value);
          closed = true;
          status(closeStatus, true, 'Connection closed.');
        } catch (ex) {
          status(closeStatus, false, ex.message);
        }
      },
    },
    el('label', {}, 'Reason ', reason),
    el('button', { type: 'submit', class: 'danger' }, 'Force close'),
    closeStatus,
  );
  fill(root, el('h2', {}, 'Connection ', el('span', { class: 'name' }, name)), section('Details', details), section('Channels', chans), section('Close this connection', closeForm));

  async function refresh() {
    if (closed) return;
    const c = await get(`/connections/${enc(name)}`);
    fill(
      details,
      kvTable([
        ['User', c.user],
        ['Virtual host', c.vhost],
        ['Peer', `${c.peer_host}:${c.peer_port}`],
        ['Protocol', c.protocol],
        ['Client', [c.client_properties?.product, c.client_properties?.version, c.client_properties?.platform].filter(Boolean).join(' · ')],
        ['Connected at', fmtTime(c.connected_at)],
        ['Heartbeat', `${c.timeout}s`],
        ['Frame max', fmtNum(c.frame_max)],
        ['Channel max', fmtNum(c.channel_max)],
        ['State', c.state],
      ]),
    );
    const all = await get('/channels');
    const mine = (Array.isArray(all) ? all : all.items || []).filter((ch) => ch.connection_details?.name === name);
    fill(
      chans,
      mine.length === 0
        ? el('p', { class: 'muted' }, 'No channels.')
        : el(
            'table',
            { class: 'list' },
            el('thead', {}, el('tr', {}, ['Number', 'Prefetch', 'Consumers', 'Unacked', 'Confirm'].map((h) => el('th', {}, h)))),
            el('tbody', {}, mine.map((ch) => el('tr', {}, el('td', {}, ch.number), el('td', {}, fmtNum(ch.prefetch_count)), el('td', {}, fmtNum(ch.consumer_count)), el('td', {}, fmtNum(ch.messages_unacknowledged)), el('td', {}, ch.confirm ? 'yes' : 'no')))),
          ),
    );
  }
  return { refresh };
}

function fetchClose(name, reason) {
  // X-Reason is RabbitMQ's header for the text the client is sent.
  return api('DELETE', `/connections/${enc(name)}`, undefined, { 'X-Reason': reason });
}
