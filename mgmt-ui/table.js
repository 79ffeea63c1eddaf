// A list table whose paging, sorting and name filter are done by the server
// (RabbitMQ's `page`, `page_size`, `sort`, `sort_reverse`, `name`,
// `use_regex`), so 10,000 queues cost one page of rows in the browser.

import { list } from './api.js';
import { el, fill, fmtNum } from './dom.js';

export class PagedTable {
  /**
   * `columns`: [{label, sort?: dotted field, render: row -> node|string, class?}]
   * `path`: () => API path (may change with the vhost selector).
   * `fields`: dotted paths asked for with `columns=` (fewer bytes per row).
   * `key`: sessionStorage key that keeps the table's state across visits.
   */
  constructor({ key, path, columns, fields, defaultSort = 'name', rowKey = (r) => r.name, empty = 'Nothing here.' }) {
    this.key = `warren.table.${key}`;
    this.path = path;
    this.columns = columns;
    this.fields = fields;
    this.rowKey = rowKey;
    this.empty = empty;
    const saved = JSON.parse(sessionStorage.getItem(this.key) || 'null');
    this.state = saved || { page: 1, pageSize: 100, name: '', regex: false, sort: defaultSort, reverse: false };
    this.nameInput = el('input', { type: 'search', placeholder: 'Filter by name', value: this.state.name, class: 'filter', oninput: () => this.debounced() });
    this.regexBox = el('input', { type: 'checkbox', onchange: () => this.set({ regex: this.regexBox.checked, page: 1 }) });
    this.regexBox.checked = this.state.regex;
    this.sizeSelect = el('select', { onchange: () => this.set({ pageSize: Number(this.sizeSelect.value), page: 1 }) }, [50, 100, 200, 500].map((n) => el('option', { value: n, selected: n === this.state.pageSize }, String(n))));
    this.info = el('span', { class: 'info' });
    this.pager = el('span', { class: 'pager' });
    this.error = el('div', { class: 'status err', hidden: true });
    this.thead = el('thead');
    this.tbody = el('tbody');
    this.node = el(
      'div',
      { class: 'paged' },
      el('div', { class: 'toolbar' }, this.nameInput, el('label', { class: 'check' }, this.regexBox, 'Regex'), el('label', { class: 'check' }, 'Page size ', this.sizeSelect), this.info, this.pager),
      this.error,
      el('div', { class: 'scroll' }, el('table', { class: 'list' }, this.thead, this.tbody)),
    );
    this.renderHead();
  }

  debounced() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.set({ name: this.nameInput.value, page: 1 }), 250);
  }

  set(change) {
    Object.assign(this.state, change);
    sessionStorage.setItem(this.key, JSON.stringify(this.state));
    this.renderHead();
    return this.refresh();
  }

  renderHead() {
    fill(
      this.thead,
      el(
        'tr',
        {},
        this.columns.map((c) => {
          if (!c.sort) return el('th', { class: c.class }, c.label);
          const active = this.state.sort === c.sort;
          const arrow = active ? (this.state.reverse ? ' ▼' : ' ▲') : '';
          return el(
            'th',
            { class: `sortable ${c.class || ''} ${active ? 'active' : ''}`, title: 'Sort', onclick: () => this.set({ sort: c.sort, reverse: active ? !this.state.reverse : false, page: 1 }) },
            c.label + arrow,
          );
        }),
      ),
    );
  }

  async refresh() {
    const seq = (this.seq = (this.seq || 0) + 1);
    let r;
    try {
      r = await list(this.path(), { ...this.state, columns: this.fields });
    } catch (e) {
      if (seq !== this.seq) return;
      // The list shrank under a later page (RabbitMQ answers 400 for a page
      // past the end): go back to the first one.
      if (e.status === 400 && this.state.page > 1) return this.set({ page: 1 });
      this.error.textContent = e.message;
      this.error.hidden = false;
      return;
    }
    // A slower earlier answer must not overwrite a newer one.
    if (seq !== this.seq) return;
    this.error.hidden = true;
    if (r.page !== this.state.page) this.state.page = r.page;
    if (r.items.length === 0) {
      fill(this.tbody, el('tr', {}, el('td', { colspan: this.columns.length, class: 'empty' }, this.empty)));
    } else {
      fill(
        this.tbody,
        r.items.map((row) => el('tr', { dataset: { key: this.rowKey(row) } }, this.columns.map((c) => el('td', { class: c.class }, c.render(row))))),
      );
    }
    const filtered = r.filtered !== r.total ? ` (filtered from ${fmtNum(r.total)})` : '';
    this.info.textContent = `${fmtNum(r.filtered)} item${r.filtered === 1 ? '' : 's'}${filtered}`;
    fill(
      this.pager,
      el('button', { type: 'button', disabled: r.page <= 1, onclick: () => this.set({ page: r.page - 1 }) }, '‹ Prev'),
      ` Page ${r.page} of ${r.pageCount} `,
      el('button', { type: 'button', disabled: r.page >= r.pageCount, onclick: () => this.set({ page: r.page + 1 }) }, 'Next ›'),
    );
  }
}
