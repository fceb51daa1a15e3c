// How the page looks: no sideways scrolling at 360 px, the empty state, the API docs
// page under its own Content-Security-Policy, and screenshots for people to look at.

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { assertClean, launch, messageItem, openPage, post, screenshot, waitForFeed } from './lib/browser.js';
import { BASE_URL, RUN_DIR } from './lib/env.js';
import { createMessage } from './lib/http.js';
import { PrivateStack } from './lib/stack.js';

const MOBILE = { width: 360, height: 740 };

let browser;
before(async () => {
  browser = await launch();
});
after(() => browser?.close());

async function horizontalOverflow(page) {
  return page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
}

test('a 360 px wide screen never scrolls sideways, even with long words', async () => {
  await createMessage(`Averyveryverylongwordwithoutanyspaces${'x'.repeat(200)}`);
  await createMessage(`https://example.com/${'path/'.repeat(40)}?query=${'q'.repeat(80)}`);
  const page = await openPage(browser, { viewport: MOBILE });
  await waitForFeed(page);
  assert.equal(await horizontalOverflow(page), 0);

  const mine = await post(page, `Mine, with a long word too: ${'y'.repeat(150)}`);
  await messageItem(page, mine.id).locator('[data-action="edit"]').click();
  assert.equal(await horizontalOverflow(page), 0, 'with an open editor');
  await screenshot(page, 'mobile-editing');
  await page.fill('#composer-input', 'z'.repeat(1200));
  await page.press('#composer-input', 'Enter');
  await page.locator('#composer-error').waitFor();
  assert.equal(await horizontalOverflow(page), 0, 'with a validation error and a full counter');
  await assertClean(page);
});

test('an empty board says so', async () => {
  const stack = await new PrivateStack('empty', { databaseUrl: `sqlite://${join(RUN_DIR, 'empty.db')}` }).start();
  try {
    const page = await openPage(browser, { url: stack.url });
    await page.locator('#feed-empty').waitFor();
    assert.equal(await page.locator('#feed > li').count(), 0);
    assert.ok(await page.locator('#load-older').isHidden());
    await assertClean(page);
  } finally {
    await stack.stop();
  }
});

test('the API docs render under their own Content-Security-Policy', async () => {
  const page = await openPage(browser, { url: `${BASE_URL}/api/docs/` });
  await page.locator('.opblock').first().waitFor({ timeout: 15_000 });
  assert.ok((await page.locator('.opblock').count()) > 3, 'the operations are listed');
  await assertClean(page);
});

test('screenshots: desktop in the light theme, mobile in the dark one', async () => {
  for (const text of [
    'Welcome to the board! Messages appear here live, in every open window.',
    'Tip: Shift+Enter starts a new line.\nEnter sends.',
    'The API is documented at /api/docs — try it from there too.',
  ]) {
    await createMessage(text);
  }
  const desktop = await openPage(browser, { viewport: { width: 1280, height: 860 }, colorScheme: 'light' });
  await waitForFeed(desktop);
  await post(desktop, 'Hello from the browser tier!');
  await desktop.waitForSelector('#live-status[data-state="live"]');
  // The arrival highlight has faded.
  await desktop.waitForSelector('.message--new', { state: 'detached' });
  await screenshot(desktop, 'desktop-light');

  const mobile = await openPage(browser, { viewport: MOBILE, colorScheme: 'dark' });
  await waitForFeed(mobile);
  await mobile.waitForSelector('#live-status[data-state="live"]');
  await screenshot(mobile, 'mobile-dark');
  await assertClean(desktop);
  await assertClean(mobile);
});
