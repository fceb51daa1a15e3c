// Where the stack under test runs. scripts/test-web starts it and sets these; the container
// tests (tests/containers) set only the two URLs, both nginx's, and run the files that need
// nothing else (board, live, paging, bad-input).

import { fileURLToPath } from 'node:url';

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run the suite with scripts/test-web, which starts the stack`);
  }
  return value;
}

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** nginx in front of the API: what a browser talks to. */
export const BASE_URL = required('E2E_BASE_URL');
/** The API itself, for setting up data and for what nginx must hide. */
export const API_URL = required('E2E_API_URL');
/** For starting private API instances that a test may stop (local runs only). */
export const API_BIN = process.env.E2E_API_BIN;
export const DATABASE_URL = process.env.E2E_DATABASE_URL;
/** A scratch folder; every pid file under it is killed when the run ends (local runs only). */
export const RUN_DIR = process.env.E2E_RUN_DIR;
/** The JSON access log of the nginx at BASE_URL (local runs only). */
export const ACCESS_LOG = process.env.E2E_NGINX_ACCESS_LOG;
export const SCREENSHOT_DIR = process.env.E2E_SCREENSHOT_DIR ?? `${ROOT}e2e/screenshots`;
