// Live updates: what one browser does shows up in another without a reload, over the
// event stream through nginx, or by polling when the stream is unavailable.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { assertClean, launch, messageItem, openPage, post, waitForFeed } from './lib/browser.js';
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
