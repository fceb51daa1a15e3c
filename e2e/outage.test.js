// The API going away and coming back, seen from the page: a banner, then recovery by itself.
// The test stops its own API instance (behind its own nginx), not the shared one.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { assertClean, launch, messageItem, openPage, post, screenshot, waitForFeed } from './lib/browser.js';
import { PrivateStack } from './lib/stack.js';

let browser;
let stack;
before(async () => {
  browser = await launch();
  stack = await new PrivateStack('outage').start();
});
after(async () => {
  await browser?.close();
  await stack?.stop();
});

test('when the API stops, a banner appears; when it is back, the page recovers by itself', async () => {
  const page = await openPage(browser, { url: stack.url });
  await waitForFeed(page);
  await page.waitForSelector('#live-status[data-state="live"]');
  await post(page, 'Posted before the outage');
  assert.ok(await page.locator('#outage').isHidden());

  await stack.killApi();
  const banner = page.locator('#outage');
  await banner.waitFor({ timeout: 10_000 });
  assert.match(await banner.textContent(), /can’t be reached/);
  assert.equal(await page.getAttribute('#live-status', 'data-state'), 'offline');
  await screenshot(page, 'desktop-outage');

  // Sending now fails visibly, and the text stays for later.
  await page.fill('#composer-input', 'Written during the outage');
  await page.press('#composer-input', 'Enter');
  await page.locator('#composer-error').waitFor();
  assert.equal(await page.inputValue('#composer-input'), 'Written during the outage');

  await stack.startApi();
  await banner.waitFor({ state: 'hidden', timeout: 15_000 });
  await page.waitForSelector('#live-status[data-state="live"]', { timeout: 10_000 });

  const created = await post(page, 'Written during the outage');
  await messageItem(page, created.id).waitFor();
  await page.locator('#composer-error').waitFor({ state: 'hidden' });
  await assertClean(page);
});
