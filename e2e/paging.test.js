// "Load older" follows the API's cursor page by page, without duplicates or gaps.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { assertClean, launch, messageItem, openPage, shownIds, waitForFeed } from './lib/browser.js';
import { API_URL } from './lib/env.js';
import { createMessage, request } from './lib/http.js';

const PAGE_SIZE = 20;

let browser;
before(async () => {
  browser = await launch();
});
after(() => browser?.close());

/** Every message id, newest first, read straight from the API. */
async function allIds() {
  const ids = [];
  let cursor = null;
  do {
    const query = cursor ? `?limit=100&cursor=${encodeURIComponent(cursor)}` : '?limit=100';
    const page = (await request(`${API_URL}/api/messages${query}`)).json;
    ids.push(...page.items.map((message) => message.id));
    cursor = page.next_cursor;
  } while (cursor);
  return ids;
}

test('"Load older" pages through every message, newest first, without duplicates', async () => {
  const seeded = [];
  for (let i = 0; i < 2 * PAGE_SIZE + 5; i++) seeded.push(await createMessage(`Paging message ${i + 1}`));
  const expected = await allIds();
  assert.ok(expected.length > 2 * PAGE_SIZE, 'at least three pages exist');

  const page = await openPage(browser);
  await waitForFeed(page);
  assert.deepEqual(await shownIds(page), expected.slice(0, PAGE_SIZE), 'the first page');

  const older = page.locator('#load-older');
  let pages = 1;
  while (await older.isVisible()) {
    await older.click();
    pages += 1;
    const count = Math.min(pages * PAGE_SIZE, expected.length);
    await page.waitForFunction((n) => document.querySelectorAll('#feed > li').length >= n, count);
    const ids = await shownIds(page);
    assert.deepEqual(ids, expected.slice(0, ids.length), `after ${pages} pages`);
  }
  assert.ok(pages >= 3, `went through ${pages} pages`);
  const shown = await shownIds(page);
  assert.equal(new Set(shown).size, shown.length, 'no message is shown twice');
  assert.deepEqual(shown, expected, 'every message is shown, in order');
  assert.ok(await page.locator('#feed-end').isVisible(), 'the end of the board is marked');
  for (const message of seeded) assert.ok(await messageItem(page, message.id).count());
  await assertClean(page);
});
