// Connections and channels: paged lists (by the application's name when
// the client gave one), a connection's page with its network rates,
// channels and a close button, and a channel's page with its rates,
// prefetch, unacked count and consumers.

import { api, enc, get } from './api.js';
import { el, fill, fmtBytes, fmtNum, fmtRate, fmtTime, kvTable, link, section, badge, status } from './dom.js';
import { LineChart, drawHistory, historyQuery, rangePicker } from './charts.js';
import { channelLink } from './queues.js';

/** A connection's name cell: the application's name above the address. */
function connName(c) {
  const a = link('connections', null, c.name, c.user_provided_name || c.name);
  return c.user_provided_name ? [a, el('div', { class: 'muted small' }, c.name)] : a;
}
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
      { label: 'Name', sort: 'name', render: connName },
      { label: 'User', sort: 'user', render: (c) => c.user },
      { label: 'Virtual host', sort: 'vhost', render: (c) => c.vhost },
      { label: 'Client', render: (c) => [c.client_properties?.product, c.client_properties?.version].filter(Boolean).join(' ') },
      { label: 'Protocol', render: (c) => c.protocol },
      { label: 'Channels', sort: 'channels', class: 'num', render: (c) => fmtNum(c.channels) },
      { label: 'From client', sort: 'recv_oct_details.rate', class: 'num', render: (c) => `${fmtBytes(c.recv_oct_details?.rate ?? 0)}/s` },
      { label: 'To client', sort: 'send_oct_details.rate', class: 'num', render: (c) => `${fmtBytes(c.send_oct_details?.rate ?? 0)}/s` },
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
      { label: 'Channel', sort: 'name', render: (c) => channelLink({ ...c, user_provided_name: c.connection_details?.user_provided_name }) },
      { label: 'User', sort: 'user', render: (c) => c.user },
      { label: 'Virtual host', sort: 'vhost', render: (c) => c.vhost },
      { label: 'Mode', render: (c) => [c.confirm ? badge('confirm') : null, c.transactional ? badge('tx') : null] },
      { label: 'Prefetch', sort: 'prefetch_count', class: 'num', render: (c) => fmtNum(c.prefetch_count) },
      { label: 'Consumers', sort: 'consumer_count', class: 'num', render: (c) => fmtNum(c.consumer_count) },
      { label: 'Unacked', sort: 'messages_unacknowledged', class: 'num', render: (c) => fmtNum(c.messages_unacknowledged) },
      { label: 'Publish', sort: 'message_stats.publish_details.rate', class: 'num', render: (c) => fmtRate(c.message_stats?.publish_details?.rate ?? 0) },
      { label: 'Deliver / get', sort: 'message_stats.deliver_get_details.rate', class: 'num', render: (c) => fmtRate(c.message_stats?.deliver_get_details?.rate ?? 0) },
      { label: 'State', sort: 'state', render: (c) => (c.idle_since ? badge('idle') : c.state) },
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
          showClosed();
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
  const net = new LineChart('Network', [{ label: 'From client' }, { label: 'To client' }], { format: (v) => `${fmtBytes(v)}/s` });
  const title = el('span', { class: 'name' }, name);
  fill(root, el('h2', {}, 'Connection ', title), rangePicker(() => refresh().catch(() => {})), el('div', { class: 'charts' }, net.node), section('Details', details), section('Channels', chans), section('Close this connection', closeForm));

  /** The page of a connection that is gone says so, and stops polling. */
  function showClosed() {
    closed = true;
    if (!details.querySelector('tr[data-key="State"]')) {
      fill(details, kvTable([['State', '']]));
      details.querySelector('tr').dataset.key = 'State';
    }
    for (const td of details.querySelectorAll('[data-key="State"] td')) fill(td, badge('closed', 'bad'));
    fill(chans, el('p', { class: 'muted' }, 'The connection is closed.'));
  }

  async function refresh() {
    if (closed) return;
    let c;
    try {
      c = await get(`/connections/${enc(name)}?${historyQuery(['data_rates'])}`);
    } catch (e) {
      if (e.status === 404) return showClosed();
      throw e;
    }
    if (c.user_provided_name) fill(title, `${c.user_provided_name} `, el('small', { class: 'muted' }, name));
    drawHistory(net, c, ['recv_oct', 'send_oct'], true);
    fill(
      details,
      kvTable([
        ['Application', c.user_provided_name || '–'],
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
        ['Received', `${fmtBytes(c.recv_oct)} in ${fmtNum(c.recv_cnt)} reads`],
        ['Sent', `${fmtBytes(c.send_oct)} in ${fmtNum(c.send_cnt)} writes`],
        ['Client properties', el('code', { class: 'small' }, JSON.stringify(c.client_properties || {}))],
      ]),
    );
    for (const tr of details.querySelectorAll('tr')) tr.dataset.key = tr.firstChild?.textContent || '';
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
            el('tbody', {}, mine.map((ch) => el('tr', {}, el('td', {}, channelLink({ ...ch, user_provided_name: null })), el('td', {}, fmtNum(ch.prefetch_count)), el('td', {}, fmtNum(ch.consumer_count)), el('td', {}, fmtNum(ch.messages_unacknowledged)), el('td', {}, ch.confirm ? 'yes' : 'no')))),
          ),
    );
  }
  return { refresh };
}

function fetchClose(name, reason) {
  // X-Reason is RabbitMQ's header for the text the client is sent.
  return api('DELETE', `/connections/${enc(name)}`, undefined, { 'X-Reason': reason });
}

/** A channel's page: rates (live: channels keep no history), prefetch, unacked, consumers. */
export function channelPage(root, ctx) {
  const [name] = ctx.params;
  const details = el('div', { 'data-role': 'channel-details' });
  const consumers = el('div', { 'data-role': 'channel-consumers' });
  const rates = new LineChart('Message rates', [{ label: 'Publish' }, { label: 'Confirm' }, { label: 'Deliver / get' }, { label: 'Ack' }, { label: 'Redeliver' }], { format: fmtRate });
  const title = el('span', { class: 'name' }, name);
  let gone = false;
  fill(root, el('h2', {}, 'Channel ', title), rangePicker(() => refresh().catch(() => {})), el('div', { class: 'charts' }, rates.node), section('Details', details), section('Consumers', consumers));

  async function refresh() {
    if (gone) return;
    let c;
    try {
      c = await get(`/channels/${enc(name)}?${historyQuery(['msg_rates'])}`);
    } catch (e) {
      if (e.status !== 404) throw e;
      gone = true;
      fill(details, el('p', { class: 'status err' }, 'This channel is closed.'));
      return;
    }
    const app = c.connection_details?.user_provided_name;
    if (app) fill(title, `${app} (${c.number}) `, el('small', { class: 'muted' }, name));
    const ms = c.message_stats || {};
    // The broker's sampled history, drawn at once for the chosen range;
    // live rates only until the first sample is taken.
    const keys = ['publish', 'confirm', 'deliver_get', 'ack', 'redeliver'];
    if (!drawHistory(rates, ms, keys, true)) rates.push(keys.map((k) => ms[`${k}_details`]?.rate ?? 0));
    fill(
      details,
      kvTable([
        ['Connection', link('connections', null, c.connection_details?.name ?? '', app ? `${app} (${c.connection_details?.name})` : c.connection_details?.name)],
        ['User', c.user],
        ['Virtual host', c.vhost],
        ['State', c.idle_since ? badge('idle') : c.state],
        ['Prefetch (per consumer)', fmtNum(c.prefetch_count)],
        ['Prefetch (channel)', fmtNum(c.global_prefetch_count)],
        ['Unacked', fmtNum(c.messages_unacknowledged)],
        ['Unconfirmed', fmtNum(c.messages_unconfirmed)],
        ['Mode', [c.confirm ? 'confirm' : null, c.transactional ? 'transactional' : null].filter(Boolean).join(', ') || 'plain'],
        ['Published', fmtNum(ms.publish ?? 0)],
        ['Delivered / got', fmtNum(ms.deliver_get ?? 0)],
        ['Acked', fmtNum(ms.ack ?? 0)],
      ]),
    );
    const list = c.consumer_details || [];
    fill(
      consumers,
      list.length === 0
        ? el('p', { class: 'muted' }, 'No consumers.')
        : el(
            'table',
            { class: 'list' },
            el('thead', {}, el('tr', {}, ['Consumer tag', 'Queue', 'Ack required', 'Exclusive', 'Prefetch'].map((h) => el('th', {}, h)))),
            el('tbody', {}, list.map((k) => el('tr', {}, el('td', {}, el('code', {}, k.consumer_tag)), el('td', {}, link('queues', k.queue?.vhost, k.queue?.name)), el('td', {}, k.ack_required ? 'yes' : 'no'), el('td', {}, k.exclusive ? 'yes' : 'no'), el('td', {}, fmtNum(k.prefetch_count))))),
          ),
    );
  }
  return { refresh, destroy: () => rates.destroy() };
}
