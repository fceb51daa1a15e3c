// The new-message form: a live character counter against the server's limit, Enter to
// send, the API's validation message next to the field, and the text kept on failure.

import { api, describeError } from './api.js';

/** Characters as the API counts them: Unicode scalar values of the trimmed text. */
export function countChars(text) {
  return [...text.trim()].length;
}

/** Shows `used / max` in `counter`, marking the approach to and the crossing of the limit. */
export function showCount(counter, used, max) {
  counter.textContent = `${used.toLocaleString()} / ${max.toLocaleString()}`;
  counter.classList.toggle('counter--near', used > max * 0.9 && used <= max);
  counter.classList.toggle('counter--over', used > max);
}

/** Enter submits `form`; Shift+Enter (or an input method composing text) does not. */
export function submitOnEnter(textarea, form) {
  textarea.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' || event.shiftKey || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.isComposing) return;
    event.preventDefault();
    form.requestSubmit();
  });
}

/**
 * A fresh Idempotency-Key: a random (version 4) UUID. Built from getRandomValues because
 * crypto.randomUUID exists only in secure contexts, and the page may be served over plain
 * http.
 */
function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
  bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 9562 variant
  const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
  return [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20), hex.slice(20)].join('-');
}

export class Composer {
  #form;
  #input;
  #counter;
  #error;
  #send;
  #onPosted;
  #maxChars = null;
  // One key per draft: resending the same text after a lost answer cannot post it twice.
  #draft = { text: null, key: null };
  #idle = Promise.resolve();

  /** elements: { form, input, counter, error, send }; onPosted(messageWithToken). */
  constructor(elements, { onPosted }) {
    this.#form = elements.form;
    this.#input = elements.input;
    this.#counter = elements.counter;
    this.#error = elements.error;
    this.#send = elements.send;
    this.#onPosted = onPosted;
    this.#input.addEventListener('input', () => this.#updateCounter());
    this.#form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.#submit();
    });
    submitOnEnter(this.#input, this.#form);
  }

  /**
   * Resolves once no message is being sent: after onPosted has run for the answer, or after
   * the send failed. Until then a new message may be this browser's own, its token unknown.
   */
  get idle() {
    return this.#idle;
  }

  get maxChars() {
    return this.#maxChars;
  }

  set maxChars(value) {
    this.#maxChars = value;
    this.#counter.hidden = false;
    this.#updateCounter();
  }

  #updateCounter() {
    if (this.#maxChars !== null) {
      showCount(this.#counter, countChars(this.#input.value), this.#maxChars);
    }
  }

  async #submit() {
    if (this.#send.disabled) return;
    const text = this.#input.value;
    if (this.#draft.text !== text) {
      this.#draft = { text, key: newIdempotencyKey() };
    }
    this.#setBusy(true);
    let settle;
    this.#idle = new Promise((resolve) => {
      settle = resolve;
    });
    try {
      const created = await api.create(text, this.#draft.key);
      this.#draft = { text: null, key: null };
      this.#input.value = '';
      this.#updateCounter();
      this.#showError(null);
      this.#onPosted(created);
    } catch (error) {
      this.#showError(describeError(error));
    } finally {
      this.#setBusy(false);
      settle();
    }
  }

  #setBusy(busy) {
    this.#send.disabled = busy;
    this.#send.textContent = busy ? 'Sending…' : 'Send';
    // readOnly rather than disabled, so the field keeps focus and its text stays selectable.
    this.#input.readOnly = busy;
    this.#form.setAttribute('aria-busy', String(busy));
  }

  #showError(message) {
    this.#error.hidden = message === null;
    this.#error.textContent = message ?? '';
    if (message === null) {
      this.#input.removeAttribute('aria-invalid');
    } else {
      this.#input.setAttribute('aria-invalid', 'true');
    }
  }
}
