// Overview: live charts of message rates and queued messages, object
// totals and node health.

import { get } from './api.js';
import { el, figure, fill, fmtBytes, fmtDuration, fmtNum, fmtRate, kvTable, section, badge } from './dom.js';
import { LineChart, drawHistory, historyQuery, rangePicker, usageBar } from './charts.js';

// The overview's rates, as RabbitMQ's overview shows them.
const RATE_KEYS = ['publish', 'confirm', 'deliver_get', 'redeliver', 'ack', 'get_empty', 'return_unroutable', 'drop_unroutable', 'disk_reads', 'disk_writes'];
const RATE_LABELS = ['Publish', 'Confirm', 'Deliver / get', 'Redeliver', 'Ack', 'Get (empty)', 'Unroutable (return)', 'Unroutable (drop)', 'Disk read', 'Disk write'];

export function mount(root) {
  const queued = new LineChart('Queued messages', [{ label: 'Ready' }, { label: 'Unacked' }, { label: 'Total' }], { format: fmtNum });
  const rates = new LineChart('Message rates', RATE_LABELS.map((label) => ({ label })), { format: fmtRate });
  const totals = el('div', { class: 'figures', id: 'totals' });
  const nodes = el('div', { id: 'nodes' });
  const about = el('div');
  fill(
    root,
    el('h2', {}, 'Overview'),
    rangePicker(() => refresh().catch(() => {})),
    el('div', { class: 'charts' }, queued.node, rates.node),
    section('Totals', totals),
    section('Nodes', nodes),
    section('About', about),
  );

  async function refresh() {
    // The broker keeps the history: the charts show the whole range at once.
    const o = await get(`/overview?${historyQuery(['lengths', 'msg_rates'])}`);
    const q = o.queue_totals || {};
    drawHistory(queued, q, ['messages_ready', 'messages_unacknowledged', 'messages'], false);
    drawHistory(rates, o.message_stats, RATE_KEYS, true);
    const t = o.object_totals || {};
    fill(
      totals,
      figure('Connections', fmtNum(t.connections)),
      figure('Channels', fmtNum(t.channels)),
      figure('Exchanges', fmtNum(t.exchanges)),
      figure('Queues', fmtNum(t.queues)),
      figure('Consumers', fmtNum(t.consumers)),
      figure('Messages ready', fmtNum(q.messages_ready)),
      figure('Unacked', fmtNum(q.messages_unacknowledged)),
    );
    fill(
      about,
      kvTable([
        ['Product', `${o.product_name || 'Warren'} ${o.product_version || ''}`],
        ['RabbitMQ compatibility', o.rabbitmq_version],
        ['Cluster', o.cluster_name],
        ['Node', o.node],
        ['Listeners', (o.listeners || []).map((l) => `${l.protocol} ${l.ip_address}:${l.port}`).join(', ')],
      ]),
    );
    await refreshNodes(o);
  }

  async function refreshNodes(o) {
    let list;
    try {
      list = await get('/nodes');
    } catch (e) {
      // Before /api/nodes exists: the health check still says something.
      let health = 'unknown';
      try {
        const h = await get('/health/checks/alarms');
        health = h.status === 'ok' ? 'no alarms' : h.reason || h.status;
      } catch (he) {
        health = he.message;
      }
      fill(nodes, kvTable([['Node', o.node], ['Health check', health], ['Node statistics', `unavailable (${e.message})`]]));
      return;
    }
    fill(
      nodes,
      el(
        'table',
        { class: 'list' },
        el('thead', {}, el('tr', {}, ['Node', 'State', 'Uptime', 'Memory', 'Disk free', 'File descriptors', 'Sockets', 'Processes'].map((h) => el('th', {}, h)))),
        el(
          'tbody',
          {},
          list.map((n) =>
            el(
              'tr',
              {},
              el('td', {}, n.name),
              el('td', {}, n.running === false ? badge('down', 'bad') : badge('running', 'good'), n.mem_alarm ? badge('memory alarm', 'bad') : null, n.disk_free_alarm ? badge('disk alarm', 'bad') : null),
              el('td', {}, fmtDuration(n.uptime)),
              el('td', {}, usageBar(n.mem_used, n.mem_limit, { alarm: n.mem_alarm, format: fmtBytes })),
              el('td', {}, fmtBytes(n.disk_free), el('small', { class: 'muted' }, ` (limit ${fmtBytes(n.disk_free_limit)})`)),
              el('td', {}, usageBar(n.fd_used, n.fd_total, { format: fmtNum })),
              el('td', {}, n.sockets_used === undefined ? '–' : fmtNum(n.sockets_used)),
              el('td', {}, n.proc_used === undefined ? '–' : fmtNum(n.proc_used)),
            ),
          ),
        ),
      ),
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
