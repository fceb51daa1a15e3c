// The message list: newest first, older pages on demand, kept in step with live events,
// and edit/delete for the messages this browser posted.

import { api, describeError } from './api.js';
import { countChars, showCount, submitOnEnter } from './composer.js';
import { setTime } from './time.js';
import { tokens } from './tokens.js';

const HUES = 8;

export class Feed {
  #el;
  #announce;
  // id -> { message, element }
  #entries = new Map();
  #cursor = null;
  #loaded = false;
  #loadedOlder = false;
  maxChars = null;

  /**
   * elements: { list, template, editTemplate, title, loading, empty, error, older, end }.
   * announce(text): tells screen-reader users about changes they cannot see happen.
   */
  constructor(elements, { announce }) {
    this.#el = elements;
    this.#announce = announce;
    elements.older.addEventListener('click', () => this.loadOlder());
    elements.list.addEventListener('click', (event) => this.#onClick(event));
    tokens.onChange(() => this.refreshOwnership());
  }

  // The list is kept in id order, newest first, so its ends are the newest and oldest ids.
  get newestId() {
    return Number(this.#el.list.firstElementChild?.dataset.id ?? 0);
  }

  get #oldestId() {
    return Number(this.#el.list.lastElementChild?.dataset.id ?? 0);
  }

  /**
   * Brings the list up to date with the newest page: new messages are added, changed ones
   * updated, and ones missing from the page's id range removed. Returns the messages that
   * are newer than everything shown before (none on the first load).
   */
  async refresh() {
    // Only what was shown before asking can be judged by the answer: a message that a live
    // event adds meanwhile may be newer than the page.
    const judged = [...this.#entries.keys()];
    const previousNewest = this.newestId;
    let page;
    try {
      page = await api.list(null);
    } catch (error) {
      if (!this.#loaded) this.#showLoadError();
      throw error;
    }
    const pageIds = new Set(page.items.map((message) => message.id));
    const oldestOnPage = Math.min(...pageIds);
    const complete = page.next_cursor === null;
    // More new messages than one page holds would leave a hole below this page: start over.
    const gap = this.#loaded && !complete && oldestOnPage > previousNewest;
    const firstLoad = !this.#loaded || gap;
    if (firstLoad) {
      if (gap) this.#clear();
      this.#cursor = page.next_cursor;
      this.#loadedOlder = false;
    } else {
      for (const id of judged) {
        if ((complete || id >= oldestOnPage) && !pageIds.has(id)) this.remove(id);
      }
    }
    this.#loaded = true;
    const added = page.items.filter((message) => this.upsert(message, { highlight: !firstLoad, fromPage: true }));
    this.#updateStates();
    return firstLoad ? [] : added.filter((message) => message.id > previousNewest);
  }

  async loadOlder() {
    const button = this.#el.older;
    if (button.disabled || this.#cursor === null) return;
    button.disabled = true;
    button.textContent = 'Loading…';
    try {
      const page = await api.list(this.#cursor);
      this.#cursor = page.next_cursor;
      this.#loadedOlder = true;
      const added = page.items.filter((message) => this.upsert(message, { highlight: false, fromPage: true }));
      this.#updateStates();
      if (this.#cursor === null && added.length > 0) {
        // The button is gone: keep keyboard users where the new messages start.
        this.#entries.get(added[0].id).element.focus();
      }
    } catch {
      // The outage banner (or nothing, for a client error) says what went wrong; the
      // button stays for another try.
    } finally {
      button.disabled = false;
      button.textContent = 'Load older';
    }
  }

  /**
   * Shows `message`, adding it in id order or updating it in place. Returns true when it
   * was added. A live message older than the loaded pages is left for "Load older".
   */
  upsert(message, { highlight = true, fromPage = false } = {}) {
    const known = this.#entries.get(message.id);
    if (known) {
      if (Date.parse(message.updated_at) >= Date.parse(known.message.updated_at)) {
        known.message = message;
        this.#fill(known.element, message);
      }
      return false;
    }
    if (!fromPage && this.#cursor !== null && message.id < this.#oldestId) return false;

    const element = this.#el.template.content.firstElementChild.cloneNode(true);
    element.dataset.id = String(message.id);
    element.classList.add(`message--hue-${message.id % HUES}`);
    // A list full of plain "Edit" buttons says nothing to a screen reader's button list.
    for (const button of element.querySelectorAll('.message__actions button')) {
      button.setAttribute('aria-label', `${button.textContent} message #${message.id}`);
    }
    this.#fill(element, message);
    this.#el.list.insertBefore(element, this.#firstOlderThan(message.id));
    this.#entries.set(message.id, { message, element });
    if (highlight) {
      element.classList.add('message--new');
      element.addEventListener('animationend', () => element.classList.remove('message--new'), { once: true });
    }
    this.#updateStates();
    return true;
  }

  /** Applies an `updated` event: only messages already shown change. */
  update(message) {
    if (this.#entries.has(message.id)) this.upsert(message);
  }

  remove(id) {
    const entry = this.#entries.get(id);
    if (!entry) return;
    const focusWasInside = entry.element.contains(document.activeElement);
    entry.element.remove();
    this.#entries.delete(id);
    this.#updateStates();
    if (focusWasInside) this.#el.title.focus();
  }

  /** Shows or hides edit controls after this browser's tokens changed. */
  refreshOwnership() {
    for (const { element, message } of this.#entries.values()) this.#fill(element, message);
  }

  /** The shown message right below where `id` belongs, by binary search; null for the end. */
  #firstOlderThan(id) {
    const items = this.#el.list.children;
    let low = 0;
    let high = items.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (Number(items[middle].dataset.id) > id) low = middle + 1;
      else high = middle;
    }
    return items[low] ?? null;
  }

  #clear() {
    this.#el.list.replaceChildren();
    this.#entries.clear();
  }

  #fill(element, message) {
    const own = tokens.get(message.id) !== null;
    element.classList.toggle('message--own', own);
    element.querySelector('.message__text').textContent = message.message;
    element.querySelector('.message__id').textContent = `#${message.id}`;
    element.querySelector('.message__you').hidden = !own;
    setTime(element.querySelector('.message__time'), message.created_at);
    const edited = element.querySelector('.message__edited');
    edited.hidden = message.updated_at === message.created_at;
    if (!edited.hidden) edited.title = `Edited ${new Date(message.updated_at).toLocaleString()}`;
    const editing = element.querySelector('.edit-form') !== null;
    const confirming = !element.querySelector('.message__confirm').hidden;
    element.querySelector('.message__actions').hidden = !own || editing || confirming;
  }

  #updateStates() {
    const { list, loading, empty, error, older, end } = this.#el;
    list.setAttribute('aria-busy', String(!this.#loaded));
    loading.hidden = this.#loaded;
    if (this.#loaded) error.hidden = true;
    empty.hidden = !this.#loaded || this.#entries.size > 0;
    older.hidden = !this.#loaded || this.#cursor === null;
    end.hidden = !this.#loadedOlder || this.#cursor !== null;
  }

  #showLoadError() {
    this.#el.loading.hidden = true;
    this.#el.error.hidden = false;
  }

  #onClick(event) {
    const button = event.target.closest('button[data-action]');
    const element = button?.closest('.message');
    if (!element) return;
    const entry = this.#entries.get(Number(element.dataset.id));
    if (!entry) return;
    switch (button.dataset.action) {
      case 'edit':
        this.#startEdit(entry);
        break;
      case 'cancel-edit':
        this.#endEdit(entry);
        break;
      case 'delete':
        this.#askDelete(entry, true);
        break;
      case 'cancel-delete':
        this.#askDelete(entry, false);
        break;
      case 'confirm-delete':
        this.#delete(entry, button);
        break;
    }
  }

  #showItemError(entry, message) {
    const error = entry.element.querySelector('.message__error');
    error.hidden = message === null;
    error.textContent = message ?? '';
  }

  #startEdit(entry) {
    const { element, message } = entry;
    const form = this.#el.editTemplate.content.firstElementChild.cloneNode(true);
    const input = form.querySelector('textarea');
    const label = form.querySelector('label');
    const counter = form.querySelector('.counter');
    const error = element.querySelector('.message__error');
    input.id = `edit-${message.id}`;
    error.id = `message-error-${message.id}`;
    label.htmlFor = input.id;
    label.textContent = `Edit message #${message.id}`;
    input.setAttribute('aria-describedby', error.id);
    input.value = message.message;

    const updateCount = () => {
      if (this.maxChars !== null) showCount(counter, countChars(input.value), this.maxChars);
    };
    input.addEventListener('input', updateCount);
    updateCount();
    submitOnEnter(input, form);
    input.addEventListener('keydown', (event) => {
      if (event.key === 'Escape') this.#endEdit(entry);
    });
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.#saveEdit(entry, form);
    });

    element.querySelector('.message__text').hidden = true;
    element.querySelector('.message__text').after(form);
    this.#showItemError(entry, null);
    this.#fill(element, message);
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  #endEdit(entry, { focus = true } = {}) {
    const { element } = entry;
    element.querySelector('.edit-form')?.remove();
    element.querySelector('.message__text').hidden = false;
    this.#showItemError(entry, null);
    this.#fill(element, entry.message);
    if (focus) element.querySelector('[data-action="edit"]').focus();
  }

  async #saveEdit(entry, form) {
    const input = form.querySelector('textarea');
    const save = form.querySelector('button[type="submit"]');
    if (save.disabled) return;
    const id = entry.message.id;
    save.disabled = true;
    input.readOnly = true;
    try {
      const updated = await api.update(id, input.value, tokens.get(id));
      entry.message = updated;
      this.#endEdit(entry);
      this.#announce('Message saved.');
    } catch (error) {
      if (!this.#handleLostAccess(entry, error)) {
        this.#showItemError(entry, describeError(error));
        input.setAttribute('aria-invalid', 'true');
      }
    } finally {
      save.disabled = false;
      input.readOnly = false;
    }
  }

  #askDelete(entry, asking) {
    const { element } = entry;
    element.querySelector('.message__confirm').hidden = !asking;
    this.#showItemError(entry, null);
    this.#fill(element, entry.message);
    const target = asking ? '[data-action="cancel-delete"]' : '[data-action="delete"]';
    element.querySelector(target).focus();
  }

  async #delete(entry, button) {
    if (button.disabled) return;
    const id = entry.message.id;
    button.disabled = true;
    try {
      await api.remove(id, tokens.get(id));
      tokens.forget(id);
      this.remove(id);
      this.#announce('Message deleted.');
    } catch (error) {
      if (!this.#handleLostAccess(entry, error)) this.#showItemError(entry, describeError(error));
    } finally {
      button.disabled = false;
    }
  }

  /** 404: the message is gone; 401/403: this browser's token no longer works. */
  #handleLostAccess(entry, error) {
    const id = entry.message.id;
    if (error.status === 404) {
      tokens.forget(id);
      this.remove(id);
      this.#announce('That message had already been deleted.');
      return true;
    }
    if (error.status === 401 || error.status === 403) {
      tokens.forget(id);
      entry.element.querySelector('.message__confirm').hidden = true;
      this.#endEdit(entry, { focus: false });
      this.#showItemError(entry, 'This browser can no longer change this message.');
      return true;
    }
    return false;
  }
}
