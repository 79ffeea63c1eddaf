// Forms and views shared by the queue and exchange pages: publishing a
// message, showing fetched or peeked messages, adding a binding.

import { api, enc } from './api.js';
import { argsText, el, field, parseKv, status } from './dom.js';

/**
 * The publish form. `target`: {vhost, exchange ('' = default)}; with
 * `fixedKey` the routing key is the queue's name and is not editable;
 * `onDone` runs after a publish (the page refreshes its figures).
 */
export function publishForm({ vhost, exchange, fixedKey, onDone }) {
  const key = el('input', { name: 'routing_key', value: fixedKey ?? '', readonly: fixedKey !== undefined, size: 30 });
  const mode = el('select', { name: 'delivery_mode' }, el('option', { value: '1' }, '1 – non-persistent'), el('option', { value: '2', selected: true }, '2 – persistent'));
  const headers = el('textarea', { name: 'headers', rows: 2, placeholder: 'key=value, one per line (or a JSON object)' });
  const props = el('textarea', { name: 'properties', rows: 2, placeholder: 'content_type=text/plain\ncorrelation_id=abc' });
  const payload = el('textarea', { name: 'payload', rows: 4, placeholder: 'Message body' });
  const encoding = el('select', { name: 'payload_encoding' }, el('option', { value: 'string' }, 'String'), el('option', { value: 'base64' }, 'Base64'));
  const out = el('div', { class: 'status', hidden: true, 'data-role': 'publish-status' });
  const form = el(
    'form',
    { class: 'grid-form', 'data-role': 'publish' },
    field('Routing key', key, fixedKey !== undefined ? 'Published via the default exchange to this queue.' : null),
    field('Delivery mode', mode),
    field('Headers', headers),
    field('Properties', props),
    field('Payload', payload),
    field('Payload encoding', encoding),
    el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary' }, 'Publish message'), out),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    let properties;
    try {
      properties = { ...parseKv(props.value), delivery_mode: Number(mode.value) };
      const h = parseKv(headers.value);
      if (Object.keys(h).length) properties.headers = h;
    } catch (ex) {
      status(out, false, `Invalid headers or properties: ${ex.message}`);
      return;
    }
    const body = { properties, routing_key: key.value, payload: payload.value, payload_encoding: encoding.value };
    try {
      const r = await api('POST', `/exchanges/${enc(vhost)}/${enc(exchange || 'amq.default')}/publish`, body);
      if (r && r.routed === false) status(out, false, 'Message published, but not routed to any queue.');
      else status(out, true, 'Message published.');
      onDone?.();
    } catch (ex) {
      status(out, false, ex.message);
    }
  });
  return form;
}

/** Messages from /get or /peek, each as a card. */
export function messageList(msgs, { peek = false } = {}) {
  if (!msgs || msgs.length === 0) return el('p', { class: 'muted', 'data-role': 'no-messages' }, peek ? 'No ready messages.' : 'Queue is empty.');
  return el(
    'div',
    { class: 'messages' },
    msgs.map((m, i) =>
      el(
        'div',
        { class: 'message', 'data-role': 'message' },
        el(
          'div',
          { class: 'meta' },
          el('b', {}, peek ? `Position ${m.position ?? i}` : `Message ${i + 1}`),
          el('span', {}, 'Exchange: ', el('code', {}, m.exchange === '' ? '(AMQP default)' : m.exchange)),
          el('span', {}, 'Routing key: ', el('code', {}, m.routing_key)),
          el('span', { 'data-role': 'redelivered' }, `Redelivered: ${m.redelivered ? 'yes' : 'no'}`),
          m.message_count !== undefined ? el('span', {}, `Messages left: ${m.message_count}`) : null,
          el('span', {}, `${m.payload_bytes} bytes, ${m.payload_encoding}`),
        ),
        propsLine(m.properties),
        el('pre', { class: 'payload', 'data-role': 'payload' }, m.payload),
      ),
    ),
  );
}

function propsLine(p) {
  if (!p || Object.keys(p).length === 0) return null;
  const { headers, ...rest } = p;
  return el('div', { class: 'props' }, argsText(rest), headers && Object.keys(headers).length ? el('div', {}, 'Headers: ', argsText(headers)) : null);
}

/** The "add binding" form on a queue page (from an exchange) or an exchange page (to a queue or exchange). */
export function bindingForm({ vhost, source, queue, onDone }) {
  const other = el('input', { name: queue !== undefined ? 'source' : 'destination', required: true, size: 24 });
  const destType = el('select', { name: 'destination_type' }, el('option', { value: 'q' }, 'To queue'), el('option', { value: 'e' }, 'To exchange'));
  const key = el('input', { name: 'routing_key', size: 24 });
  const args = el('textarea', { name: 'arguments', rows: 2, placeholder: 'x-match=all\nformat=pdf' });
  const out = el('div', { class: 'status', hidden: true });
  const form = el(
    'form',
    { class: 'grid-form', 'data-role': 'bind' },
    queue !== undefined ? field('From exchange', other) : [field('Destination type', destType), field('Destination', other)],
    field('Routing key', key),
    field('Arguments', args),
    el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Bind'), out),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    let a;
    try {
      a = parseKv(args.value);
    } catch (ex) {
      status(out, false, `Invalid arguments: ${ex.message}`);
      return;
    }
    const path = queue !== undefined ? `/bindings/${enc(vhost)}/e/${enc(other.value)}/q/${enc(queue)}` : `/bindings/${enc(vhost)}/e/${enc(source)}/${destType.value}/${enc(other.value)}`;
    try {
      await api('POST', path, { routing_key: key.value, arguments: a });
      status(out, true, 'Binding added.');
      onDone?.();
    } catch (ex) {
      status(out, false, ex.message);
    }
  });
  return form;
}

/** A bindings table with an Unbind button per row (not for the default exchange's implicit ones). */
export function bindingsTable(bindings, { side, onChange, canEdit }) {
  if (!bindings.length) return el('p', { class: 'muted' }, 'No bindings.');
  return el(
    'table',
    { class: 'list', 'data-role': 'bindings' },
    el('thead', {}, el('tr', {}, el('th', {}, side === 'source' ? 'From' : 'To'), el('th', {}, 'Routing key'), el('th', {}, 'Arguments'), el('th', {}, ''))),
    el(
      'tbody',
      {},
      bindings.map((b) => {
        const other = side === 'source' ? el('a', { href: `#/exchanges/${enc(b.vhost)}/${enc(b.source || 'amq.default')}` }, b.source === '' ? '(AMQP default)' : b.source) : el('a', { href: `#/${b.destination_type === 'queue' ? 'queues' : 'exchanges'}/${enc(b.vhost)}/${enc(b.destination)}` }, b.destination);
        const out = el('span', { class: 'status', hidden: true });
        const unbind =
          canEdit && b.source !== ''
            ? el(
                'button',
                {
                  type: 'button',
                  class: 'small',
                  onclick: async () => {
                    const d = b.destination_type === 'queue' ? 'q' : 'e';
                    try {
                      await api('DELETE', `/bindings/${enc(b.vhost)}/e/${enc(b.source)}/${d}/${enc(b.destination)}/${enc(b.properties_key)}`);
                      onChange?.();
                    } catch (ex) {
                      status(out, false, ex.message);
                    }
                  },
                },
                'Unbind',
              )
            : null;
        return el('tr', {}, el('td', {}, other), el('td', {}, el('code', {}, b.routing_key)), el('td', {}, argsText(b.arguments)), el('td', {}, unbind, out));
      }),
    ),
  );
}
