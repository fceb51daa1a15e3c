// Relative times ("5 minutes ago") that keep themselves current, with the exact time
// in the element's title.

const UNITS = [
  ['year', 365.25 * 24 * 3600],
  ['month', 30.44 * 24 * 3600],
  ['week', 7 * 24 * 3600],
  ['day', 24 * 3600],
  ['hour', 3600],
  ['minute', 60],
];

const relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
const exactFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'long' });

function relativeTime(date, now = Date.now()) {
  // A server clock slightly ahead of this one must not produce "in 3 seconds".
  const seconds = Math.max(0, (now - date.getTime()) / 1000);
  if (seconds < 45) return 'just now';
  for (const [unit, size] of UNITS) {
    if (seconds >= size) return relativeFormat.format(-Math.floor(seconds / size), unit);
  }
  return relativeFormat.format(-1, 'minute');
}

/** Shows `iso` in a <time> element. */
export function setTime(element, iso) {
  const date = new Date(iso);
  element.dateTime = iso;
  element.title = exactFormat.format(date);
  element.textContent = relativeTime(date);
}

/** Keeps every <time datetime> under `root` current. */
export function keepTimesFresh(root, intervalMs = 30_000) {
  setInterval(() => {
    const now = Date.now();
    for (const element of root.querySelectorAll('time[datetime]')) {
      element.textContent = relativeTime(new Date(element.dateTime), now);
    }
  }, intervalMs);
}
