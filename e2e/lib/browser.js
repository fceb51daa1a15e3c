// Debian's Chromium driven by playwright-core (its own browser downloads do not work here).

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';

import { chromium } from 'playwright-core';

import { BASE_URL, SCREENSHOT_DIR } from './env.js';

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

// --no-sandbox because the suite may run as root; the background-networking flags stop
// Chromium from calling home, which this machine's closed network refuses.
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// Over HTTPS the site is named by its certificate's domain, which Chromium then resolves
// by this rule (scripts/test-tls: "MAP board.test 127.0.0.1"); the certificate is verified
// against the roots of Chromium's NSS database in $HOME.
const HOST_RESOLVER_RULES = process.env.E2E_HOST_RESOLVER_RULES;

export function launch() {
  const args = HOST_RESOLVER_RULES ? [...ARGS, `--host-resolver-rules=${HOST_RESOLVER_RULES}`] : ARGS;
  return chromium.launch({ executablePath: CHROMIUM, args });
}

/**
 * A fresh browser context (its own localStorage, like another person's browser) with one
 * page that records uncaught errors and Content-Security-Policy violations, so every test
 * can also assert the page broke no rule while it ran.
 */
export async function openPage(browser, { url = BASE_URL, viewport = { width: 1280, height: 900 }, colorScheme } = {}) {
  const context = await browser.newContext({ viewport, colorScheme, locale: 'en-US', timezoneId: 'UTC' });
  const page = await context.newPage();
  page.pageErrors = [];
  page.on('pageerror', (error) => page.pageErrors.push(error.message));
  await page.addInitScript(() => {
    window.cspViolations = [];
    document.addEventListener('securitypolicyviolation', (event) => {
      window.cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI}`);
    });
  });
  await page.goto(url);
  return page;
}

/** Fails when the page threw or violated its Content-Security-Policy. */
export async function assertClean(page) {
  assert.deepEqual(page.pageErrors, [], 'uncaught errors in the page');
  assert.deepEqual(await page.evaluate(() => window.cspViolations), [], 'Content-Security-Policy violations');
}

/** Waits for the first page of messages to be shown (or the empty state). */
export async function waitForFeed(page) {
  await page.waitForSelector('#feed[aria-busy="false"]', { state: 'attached' });
}

/** The ids of the messages shown, top to bottom. */
export function shownIds(page) {
  return page.locator('#feed > li').evaluateAll((items) => items.map((item) => Number(item.dataset.id)));
}

/** The <li> of message `id`. */
export function messageItem(page, id) {
  return page.locator(`#feed > li[data-id="${id}"]`);
}

/** Types `text` into the composer and sends it with Enter; resolves to the created message. */
export async function post(page, text) {
  const response = page.waitForResponse((r) => r.url().endsWith('/api/messages') && r.request().method() === 'POST');
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
  return (await response).json();
}

export async function screenshot(page, name) {
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  const path = `${SCREENSHOT_DIR}/${name}.png`;
  await page.screenshot({ path });
  return path;
}
