// Live updates from the API's Server-Sent Events stream. While the stream is unavailable
// the newest page is polled instead, and the stream is tried again now and then.

const STREAM_URL = '/api/messages/stream';
const POLL_INTERVAL_MS = 5_000;
const STREAM_RETRY_MS = 30_000;

export class LiveUpdates {
  #onEvent;
  #resync;
  #onState;
  #source = null;
  #pollTimer = null;
  #retryTimer = null;

  /**
   * onEvent(type, data): a `created`, `updated` or `deleted` event.
   * resync(): brings the page up to date with the newest page of messages.
   * onState(state): 'connecting', 'live' or 'polling'.
   */
  constructor({ onEvent, resync, onState }) {
    this.#onEvent = onEvent;
    this.#resync = resync;
    this.#onState = onState;
  }

  start() {
    this.#open();
  }

  /** Starts over with a fresh stream, e.g. once the server is back. */
  restart() {
    this.#close();
    this.#open();
  }

  #open() {
    clearTimeout(this.#retryTimer);
    this.#onState('connecting');
    const source = new EventSource(STREAM_URL);
    this.#source = source;
    source.addEventListener('open', () => {
      this.#stopPolling();
      this.#onState('live');
    });
    // A new stream starts from now: what changed before its `ready` is the list's to show,
    // and the page's list may be older (read while the stream was opening, or before an
    // outage or polling), so bring it up to date. The browser's own reconnects resume with
    // Last-Event-ID and replay what they missed instead.
    source.addEventListener('ready', () => this.#resync());
    for (const type of ['created', 'updated', 'deleted']) {
      source.addEventListener(type, (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          return;
        }
        this.#onEvent(type, data);
      });
    }
    // The server could not replay what this stream missed (too far behind): catch up from
    // the newest page instead.
    source.addEventListener('reset', () => this.#resync());
    source.addEventListener('error', () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an error status or a wrong content type): fall back.
        this.#fallBack();
      } else {
        // The browser reconnects by itself and resumes with Last-Event-ID. A resync now
        // finds out whether the whole server is away, which the browser keeps quiet about.
        this.#onState('connecting');
        this.#resync();
      }
    });
  }

  #close() {
    this.#source?.close();
    this.#source = null;
  }

  #fallBack() {
    this.#close();
    this.#onState('polling');
    if (this.#pollTimer === null) {
      this.#pollTimer = setInterval(() => this.#resync(), POLL_INTERVAL_MS);
    }
    this.#retryTimer = setTimeout(() => this.#open(), STREAM_RETRY_MS);
  }

  #stopPolling() {
    clearInterval(this.#pollTimer);
    this.#pollTimer = null;
  }
}
