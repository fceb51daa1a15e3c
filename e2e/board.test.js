// Posting, validation, escaping, editing and deleting, in Chromium through nginx.

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

/** What the API itself answers to `message`, asked directly, without the page. */
async function apiVerdict(message) {
  const response = await request(`${API_URL}/api/messages`, { method: 'POST', body: { message } });
  assert.equal(response.status, 422, `the API should reject ${JSON.stringify(message).slice(0, 40)}`);
  return response.json;
}

test('a posted message appears at the top, keeps its line breaks and survives a reload', async () => {
  const page = await openPage(browser);
  await waitForFeed(page);
  const first = `Hello from Chromium ${Date.now()}`;

  await page.click('#composer-input');
  await page.keyboard.type(first);
  await page.keyboard.press('Shift+Enter');
  await page.keyboard.type('and a second line');
  const response = page.waitForResponse((r) => r.url().endsWith('/api/messages') && r.request().method() === 'POST');
  await page.keyboard.press('Enter');
  assert.equal((await response).status(), 201);
  const key = (await response).request().headers()['idempotency-key'];
  assert.match(key, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a random UUID as Idempotency-Key');
  const created = await (await response).json();
  assert.equal(created.message, `${first}\nand a second line`);

  const item = messageItem(page, created.id);
  await item.waitFor();
  assert.equal(await item.locator('.message__text').textContent(), `${first}\nand a second line`);
  assert.equal((await shownIds(page))[0], created.id, 'the new message is the first one shown');
  assert.equal(await page.inputValue('#composer-input'), '', 'the composer is emptied after sending');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'composer-input', 'focus stays in the composer');
  assert.ok(await item.locator('.message__you').isVisible(), 'marked as this browser’s own');

  await page.reload();
  await waitForFeed(page);
  assert.equal(await messageItem(page, created.id).locator('.message__text').textContent(), `${first}\nand a second line`);
  assert.ok(await messageItem(page, created.id).locator('[data-action="edit"]').isVisible(), 'still editable after reload');
  await assertClean(page);
});

test('the send button is disabled while a message is being sent', async () => {
  const page = await openPage(browser);
  await waitForFeed(page);
  let release;
  const held = new Promise((resolve) => {
    release = resolve;
  });
  await page.route('**/api/messages', async (route) => {
    if (route.request().method() === 'POST') await held;
    await route.continue();
  });
  await page.fill('#composer-input', 'Held back for a moment');
  await page.click('#composer-send');
  await page.waitForSelector('#composer-send:disabled');
  assert.equal(await page.textContent('#composer-send'), 'Sending…');
  release();
  await page.waitForSelector('#composer-send:enabled');
  assert.equal(await page.inputValue('#composer-input'), '');
  await assertClean(page);
});

test('the counter follows the server’s limit, and blank or too long text shows the API’s own message', async () => {
  const page = await openPage(browser);
  await waitForFeed(page);
  const limits = (await request(`${API_URL}/api/limits`)).json;
  const max = limits.max_message_chars;

  await page.fill('#composer-input', 'héllo 👋');
  assert.equal(await page.textContent('#composer-counter'), `7 / ${max.toLocaleString('en-US')}`);

  const blank = await apiVerdict('   ');
  await page.fill('#composer-input', '   ');
  await page.press('#composer-input', 'Enter');
  const error = page.locator('#composer-error');
  await error.waitFor();
  assert.equal((await error.textContent()).toLowerCase(), blank.detail.toLowerCase());
  assert.equal(await page.getAttribute('#composer-input', 'aria-invalid'), 'true');
  assert.equal(await page.inputValue('#composer-input'), '   ', 'the text is kept');

  const tooLong = 'x'.repeat(max + 1);
  const long = await apiVerdict(tooLong);
  await page.fill('#composer-input', tooLong);
  assert.match(await page.getAttribute('#composer-counter', 'class'), /counter--over/);
  await page.press('#composer-input', 'Enter');
  await page.waitForFunction((detail) => {
    const text = document.getElementById('composer-error').textContent.toLowerCase();
    return text === detail.toLowerCase();
  }, long.detail);
  assert.equal(await page.inputValue('#composer-input'), tooLong, 'the text is kept');

  await page.fill('#composer-input', 'Short enough now');
  await page.press('#composer-input', 'Enter');
  await error.waitFor({ state: 'hidden' });
  assert.equal(await page.getAttribute('#composer-input', 'aria-invalid'), null);
  await assertClean(page);
});

test('HTML in a message is shown as text, never run', async () => {
  const payload = '<img src=x onerror=alert(1)> <b>bold?</b> <script>alert(2)</script>';
  const page = await openPage(browser);
  const dialogs = [];
  page.on('dialog', (dialog) => {
    dialogs.push(dialog.message());
    dialog.dismiss();
  });
  await waitForFeed(page);
  const created = await post(page, payload);
  const item = messageItem(page, created.id);
  await item.waitFor();
  assert.equal(await item.locator('.message__text').textContent(), payload);
  assert.equal(await item.locator('img, b, script').count(), 0, 'no element was made from the text');

  // And the same when it comes back from the list endpoint.
  await page.reload();
  await waitForFeed(page);
  assert.equal(await messageItem(page, created.id).locator('.message__text').textContent(), payload);
  assert.equal(await page.locator('#feed img, #feed b, #feed script').count(), 0);
  assert.deepEqual(dialogs, []);
  await assertClean(page);
});

test('own messages can be edited and deleted; others’ messages have no controls', async () => {
  const others = await createMessage('Posted from another browser');
  const page = await openPage(browser);
  await waitForFeed(page);

  const foreign = messageItem(page, others.id);
  await foreign.waitFor();
  assert.equal(await foreign.locator('button:visible').count(), 0, 'no controls on someone else’s message');
  assert.ok(!(await foreign.locator('.message__you').isVisible()));

  const mine = await post(page, 'Draft with a tpyo');
  const item = messageItem(page, mine.id);
  await item.locator('[data-action="edit"]').click();
  const editor = item.locator('textarea');
  assert.equal(await editor.inputValue(), 'Draft with a tpyo');
  assert.equal(await page.evaluate(() => document.activeElement.tagName), 'TEXTAREA', 'the editor takes focus');

  // A blank edit is refused with the API's message; Escape abandons the edit.
  const blank = await apiVerdict('');
  await editor.fill('');
  await editor.press('Enter');
  await item.locator('.message__error').waitFor();
  assert.equal((await item.locator('.message__error').textContent()).toLowerCase(), blank.detail.toLowerCase());
  await editor.press('Escape');
  assert.equal(await item.locator('.message__text').textContent(), 'Draft with a tpyo');

  await item.locator('[data-action="edit"]').click();
  await item.locator('textarea').fill('Draft with a typo, fixed');
  const patched = page.waitForResponse((r) => r.request().method() === 'PATCH');
  await item.locator('textarea').press('Enter');
  assert.equal((await patched).status(), 200);
  await page.waitForFunction(
    (id) => document.querySelector(`#feed > li[data-id="${id}"] .message__text`).textContent === 'Draft with a typo, fixed',
    mine.id,
  );
  assert.ok(await item.locator('.message__edited').isVisible(), 'marked as edited');
  assert.equal((await request(`${API_URL}/api/messages/${mine.id}`)).json.message, 'Draft with a typo, fixed');

  // Delete asks first; "Keep" keeps it.
  await item.locator('[data-action="delete"]').click();
  await item.locator('[data-action="cancel-delete"]').click();
  assert.equal((await request(`${API_URL}/api/messages/${mine.id}`)).status, 200);
  await item.locator('[data-action="delete"]').click();
  await item.locator('[data-action="confirm-delete"]').click();
  await item.waitFor({ state: 'detached' });
  assert.equal((await request(`${API_URL}/api/messages/${mine.id}`)).status, 404);
  const stored = await page.evaluate(() => JSON.parse(localStorage.getItem('messages.editTokens')));
  assert.ok(!(String(mine.id) in stored), 'the edit token of a deleted message is forgotten');
  await assertClean(page);
});

test('times are relative, with the exact time on hover', async () => {
  const page = await openPage(browser);
  await waitForFeed(page);
  const created = await post(page, 'What time is it?');
  const time = messageItem(page, created.id).locator('time');
  await time.waitFor();
  assert.equal(await time.textContent(), 'just now');
  assert.equal(await time.getAttribute('datetime'), created.created_at);
  const year = new Date(created.created_at).getUTCFullYear();
  assert.match(await time.getAttribute('title'), new RegExp(`${year}`));
  await assertClean(page);
});

test('the page works from the keyboard alone', async () => {
  const page = await openPage(browser);
  await waitForFeed(page);
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.className), 'skip-link');
  await page.keyboard.press('Enter');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'composer-input');
  const text = `Typed without a mouse ${Date.now()}`;
  await page.keyboard.type(text);
  const response = page.waitForResponse((r) => r.request().method() === 'POST');
  await page.keyboard.press('Enter');
  const created = await (await response).json();
  await messageItem(page, created.id).waitFor();

  // Tab reaches the new message's Edit button after the composer's controls.
  const reached = [];
  for (let i = 0; i < 8 && !reached.includes('Edit'); i++) {
    await page.keyboard.press('Tab');
    reached.push(await page.evaluate(() => document.activeElement.textContent.trim()));
  }
  assert.ok(reached.includes('Send'), `Tab order: ${reached.join(' → ')}`);
  assert.ok(reached.includes('Edit'), `Tab order: ${reached.join(' → ')}`);
  await assertClean(page);
});

test('the stored edit tokens are read once, not once per message shown', async () => {
  // Two full pages, whatever the board held before.
  for (let i = 0; i < 40; i++) await createMessage(`One of two full pages, number ${i + 1}`);
  const page = await openPage(browser, { url: 'about:blank' });
  await page.addInitScript(() => {
    window.tokenReads = 0;
    const getItem = Storage.prototype.getItem;
    Storage.prototype.getItem = function (key) {
      if (key === 'messages.editTokens') window.tokenReads += 1;
      return getItem.call(this, key);
    };
  });
  await page.goto(BASE_URL);
  await waitForFeed(page);
  await page.click('#load-older');
  await page.waitForFunction(() => document.querySelectorAll('#feed > li').length >= 40);
  await page.waitForSelector('#live-status[data-state="live"]');
  const live = await createMessage('Arrived live');
  await messageItem(page, live.id).waitFor();
  assert.equal(await page.evaluate(() => window.tokenReads), 1);
  await assertClean(page);
});

test('a message posted in another tab of this browser gets its controls in this one', async () => {
  const first = await openPage(browser);
  const second = await first.context().newPage();
  await second.goto(BASE_URL);
  await Promise.all([waitForFeed(first), waitForFeed(second)]);
  await second.waitForSelector('#live-status[data-state="live"]');
  const created = await post(first, `Posted in the other tab ${Date.now()}`);
  const item = messageItem(second, created.id);
  await item.locator('[data-action="edit"]').waitFor({ timeout: 5_000 });
  assert.ok(await item.locator('.message__you').isVisible());
  await assertClean(first);
});
