// A private API + nginx pair for tests that take the API down. It shares the run's
// database, so it serves the same messages as the main stack. Pid files go under RUN_DIR,
// where scripts/test-web finds and ends them should a test not get to.

import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, openSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { API_BIN, DATABASE_URL, ROOT, RUN_DIR } from './env.js';
import { eventually, freePort, request } from './http.js';

const NGINX_SH = join(ROOT, 'scripts/lib/nginx.sh');

function nginx(...args) {
  execFileSync('bash', [NGINX_SH, ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
}

/** Starts nginx in `dir` in front of `upstream` (host:port); returns its base URL. */
export async function startNginx(dir, upstream) {
  const port = await freePort();
  nginx('render', join(dir, 'nginx'), upstream, `127.0.0.1:${port}`);
  nginx('start', join(dir, 'nginx'));
  return {
    url: `http://127.0.0.1:${port}`,
    stop: () => nginx('stop', join(dir, 'nginx')),
  };
}

export class PrivateStack {
  #dir;
  #databaseUrl;
  #api = null;

  /** `databaseUrl` defaults to the run's shared database. */
  constructor(name, { databaseUrl = DATABASE_URL } = {}) {
    this.#dir = join(RUN_DIR, name);
    this.#databaseUrl = databaseUrl;
    mkdirSync(this.#dir, { recursive: true });
  }

  async start() {
    this.apiPort = await freePort();
    this.apiUrl = `http://127.0.0.1:${this.apiPort}`;
    await this.startApi();
    this.nginx = await startNginx(this.#dir, `127.0.0.1:${this.apiPort}`);
    this.url = this.nginx.url;
    return this;
  }

  /** Starts the API (again, on the same port) and waits until it is healthy. */
  async startApi() {
    const log = openSync(join(this.#dir, 'api.log'), 'a');
    const api = spawn(API_BIN, [], {
      env: {
        ...process.env,
        HOST: '127.0.0.1',
        PORT: String(this.apiPort),
        DATABASE_URL: this.#databaseUrl,
        LOG_FORMAT: 'json',
      },
      // Away from the work tree, whose .env (read in development) could change settings.
      cwd: this.#dir,
      stdio: ['ignore', log, log],
    });
    this.#api = api;
    writeFileSync(join(this.#dir, 'api.pid'), String(api.pid));
    await eventually(async () => (await request(`${this.apiUrl}/health`)).status === 200, { timeout: 20_000 });
  }

  /** Kills the API outright, the way a crash would. */
  async killApi() {
    const api = this.#api;
    this.#api = null;
    if (!api || api.exitCode !== null) return;
    const exited = new Promise((resolve) => api.once('exit', resolve));
    api.kill('SIGKILL');
    await exited;
    rmSync(join(this.#dir, 'api.pid'), { force: true });
  }

  async stop() {
    this.nginx?.stop();
    await this.killApi();
  }
}
