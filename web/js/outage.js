// The banner shown while the service is unreachable or unavailable. It probes /health
// with a growing pause until the service answers, then hides and reports the recovery.

import { api } from './api.js';

const FIRST_DELAY_MS = 1_000;
const MAX_DELAY_MS = 10_000;

export class Outage {
  #elements;
  #onDown;
  #onRecovered;
  #down = false;
  #delay = FIRST_DELAY_MS;
  #nextAttempt = 0;
  #probeTimer = null;
  #tickTimer = null;

  /**
   * elements: { banner, title, detail, retry }.
   * onDown(): the service just became unavailable. onRecovered(): it is back.
   */
  constructor(elements, { onDown, onRecovered }) {
    this.#elements = elements;
    this.#onDown = onDown;
    this.#onRecovered = onRecovered;
    elements.retry.addEventListener('click', () => this.#probe());
  }

  get down() {
    return this.#down;
  }

  /** Something found the service unavailable (ApiError with `unavailable`). */
  report(error) {
    if (this.#down) return;
    this.#down = true;
    this.#delay = FIRST_DELAY_MS;
    this.#describe(error);
    this.#elements.banner.hidden = false;
    this.#tickTimer = setInterval(() => this.#showCountdown(), 1_000);
    this.#schedule();
    this.#onDown();
  }

  #describe(error) {
    // 503 comes from the API itself (its database is away); anything else means the API
    // did not answer at all.
    this.#elements.title.textContent =
      error.status === 503 ? 'The service is temporarily unavailable.' : 'The server can’t be reached.';
  }

  #schedule() {
    clearTimeout(this.#probeTimer);
    this.#nextAttempt = Date.now() + this.#delay;
    this.#probeTimer = setTimeout(() => this.#probe(), this.#delay);
    this.#showCountdown();
  }

  #showCountdown() {
    const seconds = Math.max(0, Math.ceil((this.#nextAttempt - Date.now()) / 1000));
    this.#elements.detail.textContent = seconds > 0 ? `Retrying in ${seconds} s…` : 'Retrying…';
  }

  async #probe() {
    if (!this.#down) return;
    clearTimeout(this.#probeTimer);
    this.#elements.detail.textContent = 'Retrying…';
    try {
      await api.health();
    } catch (error) {
      this.#describe(error);
      this.#delay = Math.min(this.#delay * 2, MAX_DELAY_MS);
      this.#schedule();
      return;
    }
    this.#down = false;
    clearInterval(this.#tickTimer);
    this.#elements.banner.hidden = true;
    this.#onRecovered();
  }
}
