// Edit tokens of the messages this browser posted. The API hands each one out only once,
// in the answer to the POST, so losing it means losing the right to edit that message.

const KEY = 'messages.editTokens';

// When storage is unavailable (disabled, or a private window that refuses writes) tokens
// live as long as the page does.
let memory = new Map();

// The stored tokens, parsed once: every message shown asks for its token, and parsing the
// whole store each time made rendering a long feed quadratic. Dropped when another tab
// writes the store.
let cache = null;

function load() {
  try {
    return new Map(Object.entries(JSON.parse(localStorage.getItem(KEY) ?? '{}')));
  } catch {
    return new Map(memory);
  }
}

function save(map) {
  cache = map;
  memory = new Map(map);
  try {
    localStorage.setItem(KEY, JSON.stringify(Object.fromEntries(map)));
  } catch {
    // Kept in memory above.
  }
}

// Registered as the module loads, so it runs before any listener given to onChange.
window.addEventListener('storage', (event) => {
  if (event.key === KEY || event.key === null) cache = null;
});

export const tokens = {
  get(id) {
    cache ??= load();
    return cache.get(String(id)) ?? null;
  },
  // Writes start from the store as it is now, not from the cache, so that a token another
  // tab saved a moment ago (its storage event not yet seen here) is kept.
  set(id, token) {
    const map = load();
    map.set(String(id), token);
    save(map);
  },
  forget(id) {
    const map = load();
    if (map.delete(String(id))) save(map);
  },
  /** Calls `listener()` when another tab of this browser changes the tokens. */
  onChange(listener) {
    window.addEventListener('storage', (event) => {
      if (event.key === KEY || event.key === null) listener();
    });
  },
};
