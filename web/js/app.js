// Wires the page together: the feed, the composer, live updates and the outage banner.

import { api, onUnavailable } from './api.js';
import { Composer } from './composer.js';
import { Feed } from './feed.js';
import { LiveUpdates } from './live.js';
import { Outage } from './outage.js';
import { keepTimesFresh } from './time.js';
import { tokens } from './tokens.js';

const $ = (id) => document.getElementById(id);

// Scrolled further than this from the top, the reader no longer sees new messages arrive.
const AWAY_FROM_TOP_PX = 160;
const LIVE_STATES = {
  connecting: ['Connecting…', 'Connecting to live updates'],
  live: ['Live', 'New messages appear as they are posted'],
  polling: ['Polling', 'Live updates are unavailable; checking for new messages every few seconds'],
  offline: ['Offline', 'The server can’t be reached'],
};

const announcer = $('announcer');
function announce(text) {
  // Emptying first makes screen readers repeat an announcement identical to the last one.
  announcer.textContent = '';
  setTimeout(() => {
    announcer.textContent = text;
  }, 100);
}

const liveStatus = $('live-status');
function showLiveState(state) {
  const [label, description] = LIVE_STATES[state];
  liveStatus.dataset.state = state;
  liveStatus.textContent = label;
  liveStatus.title = description;
}

const feed = new Feed(
  {
    list: $('feed'),
    template: $('message-template'),
    editTemplate: $('edit-template'),
    title: $('feed-title'),
    loading: $('feed-loading'),
    empty: $('feed-empty'),
    error: $('feed-error'),
    older: $('load-older'),
    end: $('feed-end'),
  },
  { announce },
);

// The "N new" button, for readers scrolled away from the top when messages arrive.
const newButton = $('new-messages');
let unseen = 0;
const isAwayFromTop = () => window.scrollY > AWAY_FROM_TOP_PX;

function resetUnseen() {
  unseen = 0;
  newButton.hidden = true;
}

async function noteArrivals(messages) {
  // This browser's own post can come back on the stream (or in a refresh) before the POST's
  // answer tells its id and token: judge whose messages these are once that answer is in.
  await composer.idle;
  const others = messages.filter((message) => tokens.get(message.id) === null);
  if (others.length === 0) return;
  if (isAwayFromTop()) {
    unseen += others.length;
    newButton.textContent = `↑ ${unseen} new message${unseen === 1 ? '' : 's'}`;
    newButton.hidden = false;
  }
  const first = others[0].message;
  announce(others.length === 1 ? `New message: ${first.slice(0, 140)}` : `${others.length} new messages`);
}

window.addEventListener('scroll', () => {
  if (unseen > 0 && !isAwayFromTop()) resetUnseen();
}, { passive: true });

newButton.addEventListener('click', () => {
  const reduceMotion = window.matchMedia('(prefers-reduced-motion: reduce)').matches;
  window.scrollTo({ top: 0, behavior: reduceMotion ? 'auto' : 'smooth' });
  resetUnseen();
  $('feed-title').focus({ preventScroll: true });
});

// One refresh at a time, and one more for any asked for meanwhile: an answer read earlier
// must not land after a later one (the first load and the stream's `ready` often overlap).
let refreshing = null;
let refreshAgain = false;
function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    do {
      refreshAgain = false;
      try {
        noteArrivals(await feed.refresh());
      } catch {
        // Unavailability raises the outage banner, whose recovery refreshes again.
      }
    } while (refreshAgain);
    refreshing = null;
  })();
  return refreshing;
}

async function loadLimits() {
  try {
    const limits = await api.limits();
    composer.maxChars = limits.max_message_chars;
    feed.maxChars = limits.max_message_chars;
  } catch {
    // Without the limit the counter stays hidden; the API still enforces it.
  }
}

const composer = new Composer(
  {
    form: $('composer'),
    input: $('composer-input'),
    counter: $('composer-counter'),
    error: $('composer-error'),
    send: $('composer-send'),
  },
  {
    onPosted(created) {
      const { edit_token: editToken, ...message } = created;
      tokens.set(message.id, editToken);
      // The stream may have shown it already, without controls: upsert refreshes those.
      feed.upsert(message);
      announce('Message posted.');
    },
  },
);

const live = new LiveUpdates({
  onEvent(type, data) {
    if (type === 'created') {
      if (feed.upsert(data)) noteArrivals([data]);
    } else if (type === 'updated') {
      feed.update(data);
    } else if (type === 'deleted') {
      feed.remove(data.id);
    }
  },
  // While the banner is up its probe watches the server; recovery refreshes anyway.
  resync: () => {
    if (!outage.down) refresh();
  },
  onState(state) {
    if (!outage.down) showLiveState(state);
  },
});

const outage = new Outage(
  { banner: $('outage'), title: $('outage-title'), detail: $('outage-detail'), retry: $('outage-retry') },
  {
    onDown() {
      showLiveState('offline');
    },
    onRecovered() {
      announce('Connection restored.');
      if (composer.maxChars === null) loadLimits();
      refresh();
      live.restart();
    },
  },
);
onUnavailable((error) => outage.report(error));

keepTimesFresh($('feed'));
loadLimits();
refresh();
live.start();
