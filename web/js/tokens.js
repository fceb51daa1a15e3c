// Edit tokens of the messages this browser posted. The API hands each one out only once,
// in the answer to the POST, so losing it means losing the right to edit that message.

const KEY = 'messages.editTokens';

// When storage is unavailable (disabled, or a private window that refuses writes) tokens
// live as long as the page does.
const memory = new Map();

function load() {
  try {
    return new Map(Object.entries(JSON.parse(localStorage.getItem(KEY) ?? '{}')));
  } catch {
    return new Map(memory);
  }
}

function save(map) {
  memory.clear();
  for (const [id, token] of map) memory.set(id, token);
  try {
    localStorage.setItem(KEY, JSON.stringify(Object.fromEntries(map)));
  } catch {
    // Kept in memory above.
  }
}

export const tokens = {
  get(id) {
    return load().get(String(id)) ?? null;
  },
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
