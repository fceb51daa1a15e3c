// The page and its live stream agree from the start: a change made after the page read the
// list but before its stream opened is still shown, without a reload.

import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';

import { assertClean, launch, messageItem, openPage, waitForFeed } from './lib/browser.js';
import { BASE_URL } from './lib/env.js';
import { createMessage } from './lib/http.js';

let browser;
before(async () => {
  browser = await launch();
});
after(() => browser?.close());

const isList = (response) =>
  new URL(response.url()).pathname === '/api/messages' && response.request().method() === 'GET';

test('a change made between the list and the stream opening is shown without a reload', async () => {
  const page = await openPage(browser, { url: 'about:blank' });
  // The list may be read before the stream opens: then the change lands between the two.
  const listAnswered = page.waitForResponse(isList, { timeout: 0 });
  let changeMade;
  const change = new Promise((resolve) => {
    changeMade = resolve;
  });
  await page.route('**/api/messages/stream', async (route) => {
    await Promise.race([listAnswered, sleep(2_000)]);
    changeMade(await createMessage(`Posted while the page was loading ${Date.now()}`));
    await route.continue();
  });
  await page.goto(BASE_URL);
  await waitForFeed(page);
  const created = await change;
  await page.waitForSelector('#live-status[data-state="live"]');
  await messageItem(page, created.id).waitFor({ timeout: 5_000 });
  assert.equal(await messageItem(page, created.id).locator('.message__text').textContent(), created.message);
  await assertClean(page);
});
