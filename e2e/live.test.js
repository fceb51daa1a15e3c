// Live updates: what one browser does shows up in another without a reload, over the
// event stream through nginx, or by polling when the stream is unavailable.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { assertClean, launch, messageItem, openPage, post, shownIds, waitForFeed } from './lib/browser.js';
import { API_URL, BASE_URL } from './lib/env.js';
import { createMessage, request } from './lib/http.js';

let browser;
before(async () => {
  browser = await launch();
});
after(() => browser?.close());

/** Marks the page so a reload (which would lose the mark) can be detected afterwards. */
async function markPage(page) {
  await page.evaluate(() => {
    window.notReloaded = true;
  });
}

async function assertNotReloaded(page) {
  assert.equal(await page.evaluate(() => window.notReloaded), true, 'the page was reloaded');
}

test('a second browser sees messages posted, edited and deleted in the first, live', async () => {
  const writer = await openPage(browser);
  const reader = await openPage(browser);
  await Promise.all([waitForFeed(writer), waitForFeed(reader)]);
  await reader.waitForSelector('#live-status[data-state="live"]');
  assert.equal(await reader.textContent('#live-status'), 'Live');
  await markPage(reader);

  const created = await post(writer, `Live from the first window ${Date.now()}`);
  const seen = messageItem(reader, created.id);
  await seen.waitFor({ timeout: 5_000 });
  assert.equal(await seen.locator('.message__text').textContent(), created.message);
  assert.equal(await seen.locator('button:visible').count(), 0, 'the reader gets no controls on it');
  await reader.waitForFunction((text) => document.getElementById('announcer').textContent.includes(text), created.message);

  const editing = messageItem(writer, created.id);
  await editing.locator('[data-action="edit"]').click();
  await editing.locator('textarea').fill('Edited while you watched');
  await editing.locator('textarea').press('Enter');
  await reader.waitForFunction(
    (id) => document.querySelector(`#feed > li[data-id="${id}"] .message__text`)?.textContent === 'Edited while you watched',
    created.id,
    { timeout: 5_000 },
  );
  assert.ok(await seen.locator('.message__edited').isVisible());

  await editing.locator('[data-action="delete"]').click();
  await editing.locator('[data-action="confirm-delete"]').click();
  await seen.waitFor({ state: 'detached', timeout: 5_000 });

  await assertNotReloaded(reader);
  await assertClean(reader);
  await assertClean(writer);
});

test('a reader scrolled away from the top gets an "N new" button instead of a jump', async () => {
  for (let i = 0; i < 25; i++) await createMessage(`Filler to scroll past, number ${i + 1}`);
  const reader = await openPage(browser, { viewport: { width: 1024, height: 600 } });
  await waitForFeed(reader);
  await reader.waitForSelector('#live-status[data-state="live"]');
  await reader.evaluate(() => window.scrollTo(0, document.body.scrollHeight));
  assert.ok((await reader.evaluate(() => window.scrollY)) > 400, 'the page is long enough to scroll away from the top');
  // The message the reader is looking at, 200 px below the top of the window.
  const inView = () =>
    reader.evaluate(() => document.elementFromPoint(window.innerWidth / 2, 200).closest('#feed > li')?.dataset.id);
  const lookingAt = await inView();
  assert.ok(lookingAt, 'a message is in view');

  const first = await createMessage('Arrived while you were reading below');
  const button = reader.locator('#new-messages');
  await button.waitFor({ timeout: 5_000 });
  assert.equal(await button.textContent(), '↑ 1 new message');
  await createMessage('And another one');
  await reader.waitForFunction(() => document.getElementById('new-messages').textContent === '↑ 2 new messages');
  assert.equal(await inView(), lookingAt, 'what the reader was looking at stays in place');

  await button.click();
  await reader.waitForFunction(() => window.scrollY === 0);
  await button.waitFor({ state: 'hidden' });
  assert.ok(await messageItem(reader, first.id).isVisible());
  await assertClean(reader);
});

test('without the event stream the page falls back to polling', async () => {
  const reader = await openPage(browser, { url: 'about:blank' });
  // An error status makes EventSource give up for good, as it does when nginx answers 502.
  await reader.route('**/api/messages/stream', (route) =>
    route.fulfill({
      status: 503,
      contentType: 'application/problem+json',
      body: JSON.stringify({ type: '/problems/service-unavailable', title: 'Service Unavailable', status: 503 }),
    }),
  );
  await reader.goto(BASE_URL);
  await waitForFeed(reader);
  await reader.waitForSelector('#live-status[data-state="polling"]');
  await markPage(reader);

  const created = await createMessage('Found by polling');
  await messageItem(reader, created.id).waitFor({ timeout: 10_000 });

  const shortLived = await createMessage('Deleted soon after');
  await messageItem(reader, shortLived.id).waitFor({ timeout: 10_000 });
  const deleted = await request(`${API_URL}/api/messages/${shortLived.id}`, {
    method: 'DELETE',
    headers: { Authorization: `Bearer ${shortLived.edit_token}` },
  });
  assert.equal(deleted.status, 204);
  await messageItem(reader, shortLived.id).waitFor({ state: 'detached', timeout: 10_000 });

  await assertNotReloaded(reader);
  assert.deepEqual(reader.pageErrors, []);
});

test('your own post is not announced as new when its stream event comes before the POST’s answer', async () => {
  for (let i = 0; i < 25; i++) await createMessage(`Filler to scroll past, number ${i + 1}`);
  const page = await openPage(browser, { viewport: { width: 1024, height: 600 } });
  await waitForFeed(page);
  await page.waitForSelector('#live-status[data-state="live"]');
  // Scrolled away from the top, a message taken for someone else's also raises "N new".
  await page.evaluate(() => window.scrollTo(0, document.body.scrollHeight));
  await page.evaluate(() => {
    const announcer = document.getElementById('announcer');
    window.announced = [];
    new MutationObserver(() => window.announced.push(announcer.textContent)).observe(announcer, {
      childList: true,
      characterData: true,
      subtree: true,
    });
  });
  // The POST reaches the API, which commits and streams the event, but its answer is held
  // back from the page until the streamed message is on screen.
  let release;
  const held = new Promise((resolve) => {
    release = resolve;
  });
  await page.route('**/api/messages', async (route) => {
    if (route.request().method() !== 'POST') return route.continue();
    const response = await route.fetch();
    await held;
    return route.fulfill({ response });
  });

  const text = `Mine, streamed before its answer ${Date.now()}`;
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
  const item = page.locator('#feed > li', { hasText: text });
  await item.waitFor({ timeout: 5_000 });
  assert.equal(await page.textContent('#composer-send'), 'Sending…', 'shown from the stream, the POST still unanswered');
  release();
  await page.waitForSelector('#composer-send:enabled');
  await page.waitForFunction(() => document.getElementById('announcer').textContent === 'Message posted.');
  // Room for a late wrong announcement, which would come 100 ms after the answer's.
  await page.waitForTimeout(500);

  assert.equal(await item.count(), 1, 'shown exactly once');
  assert.ok(await item.locator('.message__you').isVisible(), 'marked as this browser’s own');
  assert.ok(await item.locator('[data-action="edit"]').isVisible(), 'with its controls');
  assert.ok(await page.locator('#new-messages').isHidden(), 'no "N new" button for it');
  const announced = (await page.evaluate(() => window.announced)).filter((text) => text !== '');
  assert.deepEqual(announced, ['Message posted.']);
  await assertClean(page);
});

// Records, while the page handles a stream event, how many items each walk over a
// collection covers: array searches, spreads of element lists, Map iteration, Math.min/max.
function recordScansDuringStreamEvents() {
  window.scans = [];
  let handling = false;
  const record = (size) => {
    if (handling) window.scans.push(size);
  };
  const addEventListener = EventTarget.prototype.addEventListener;
  EventTarget.prototype.addEventListener = function (type, listener, options) {
    if (this instanceof EventSource && typeof listener === 'function') {
      const inner = listener;
      listener = function (event) {
        handling = true;
        try {
          return inner.call(this, event);
        } finally {
          handling = false;
        }
      };
    }
    return addEventListener.call(this, type, listener, options);
  };
  const wrap = (target, name, size) => {
    const original = target[name];
    target[name] = function (...args) {
      record(size(this, args));
      return original.apply(this, args);
    };
  };
  for (const name of ['find', 'findIndex', 'findLast', 'findLastIndex', 'filter', 'some', 'every', 'indexOf', 'includes', 'forEach', 'map']) {
    wrap(Array.prototype, name, (array) => array.length);
  }
  for (const name of ['min', 'max']) wrap(Math, name, (_, args) => args.length);
  for (const name of ['keys', 'values', 'entries', Symbol.iterator]) wrap(Map.prototype, name, (map) => map.size);
  wrap(HTMLCollection.prototype, Symbol.iterator, (list) => list.length);
  wrap(NodeList.prototype, Symbol.iterator, (list) => list.length);
  const querySelectorAll = Element.prototype.querySelectorAll;
  Element.prototype.querySelectorAll = function (selectors) {
    const found = querySelectorAll.call(this, selectors);
    record(found.length);
    return found;
  };
}

test('live events reach a message deep in a long feed without walking the feed', async () => {
  const deep = await createMessage('Deep down in a long feed');
  for (let i = 0; i < 119; i++) await createMessage(`Piled on top, number ${i + 1}`);
  const reader = await openPage(browser, { url: 'about:blank' });
  await reader.addInitScript(recordScansDuringStreamEvents);
  await reader.goto(BASE_URL);
  await waitForFeed(reader);
  await reader.waitForSelector('#live-status[data-state="live"]');
  while ((await messageItem(reader, deep.id).count()) === 0) {
    const shown = await reader.locator('#feed > li').count();
    await reader.click('#load-older');
    await reader.waitForFunction((n) => document.querySelectorAll('#feed > li').length > n, shown);
  }
  const feedLength = await reader.locator('#feed > li').count();
  assert.ok(feedLength >= 120, `a long feed: ${feedLength} messages`);
  await reader.evaluate(() => {
    window.scans = [];
  });

  const created = await createMessage('On top of the long feed');
  await messageItem(reader, created.id).waitFor({ timeout: 5_000 });
  const edited = await request(`${API_URL}/api/messages/${deep.id}`, {
    method: 'PATCH',
    headers: { Authorization: `Bearer ${deep.edit_token}` },
    body: { message: 'Edited deep down' },
  });
  assert.equal(edited.status, 200);
  await reader.waitForFunction(
    (id) => document.querySelector(`#feed > li[data-id="${id}"] .message__text`)?.textContent === 'Edited deep down',
    deep.id,
    { timeout: 5_000 },
  );
  assert.ok(await messageItem(reader, deep.id).locator('.message__edited').isVisible());
  const deleted = await request(`${API_URL}/api/messages/${deep.id}`, {
    method: 'DELETE',
    headers: { Authorization: `Bearer ${deep.edit_token}` },
  });
  assert.equal(deleted.status, 204);
  await messageItem(reader, deep.id).waitFor({ state: 'detached', timeout: 5_000 });

  const ids = await shownIds(reader);
  assert.equal(ids[0], created.id, 'the new message is on top');
  assert.deepEqual(ids, [...ids].sort((a, b) => b - a), 'still newest first');
  assert.equal(ids.length, feedLength, 'one added, one removed');
  const scans = await reader.evaluate(() => window.scans);
  assert.ok(scans.length > 0, 'the recorder saw the events being handled');
  const longest = scans.reduce((a, b) => Math.max(a, b), 0);
  assert.ok(longest < 10, `handling an event walked ${longest} items of a ${feedLength}-message feed`);
  await assertClean(reader);
});
