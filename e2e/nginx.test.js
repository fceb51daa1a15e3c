// The reverse proxy at the HTTP level: headers, caching, compression, request ids, limits,
// error documents and the unbuffered event stream.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { gunzipSync } from 'node:zlib';

import { ACCESS_LOG, API_URL, BASE_URL, ROOT, RUN_DIR } from './lib/env.js';
import { createMessage, eventually, freePort, openStream, request } from './lib/http.js';
import { startNginx } from './lib/stack.js';

function assertProblem(response, status) {
  assert.equal(response.status, status);
  assert.match(response.headers['content-type'], /^application\/problem\+json/);
  assert.equal(response.json.status, status);
  assert.equal(typeof response.json.title, 'string');
  assert.equal(typeof response.json.detail, 'string');
  assert.equal(response.json.request_id, response.headers['x-request-id'], 'the body names the request id');
}

function assertSecurityHeaders(response, where) {
  const csp = response.headers['content-security-policy'];
  assert.ok(csp, `${where}: Content-Security-Policy`);
  assert.match(csp, /default-src 'self'/, where);
  assert.match(csp, /frame-ancestors 'none'/, where);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, `${where}: nothing inline is allowed`);
  assert.equal(response.headers['x-content-type-options'], 'nosniff', where);
  assert.ok(response.headers['referrer-policy'], `${where}: Referrer-Policy`);
  assert.match(response.headers['permissions-policy'] ?? '', /camera=\(\)/, `${where}: Permissions-Policy`);
  assert.equal(response.headers.server, 'nginx', `${where}: no version in Server`);
}

test('security headers are on pages, files, API answers and errors alike', async () => {
  const created = await createMessage('Headers check');
  const cases = {
    'the page': await request(`${BASE_URL}/`),
    'a script': await request(`${BASE_URL}/js/app.js`),
    'an API answer': await request(`${BASE_URL}/api/messages/${created.id}`),
    'an API error': await request(`${BASE_URL}/api/messages/0`),
    'a missing file': await request(`${BASE_URL}/no-such-file.txt`),
    '/metrics': await request(`${BASE_URL}/metrics`),
  };
  assert.equal(cases['the page'].status, 200);
  assert.equal(cases['an API answer'].status, 200);
  assert.equal(cases['an API error'].status, 400);
  assert.equal(cases['a missing file'].status, 404);
  assertProblem(cases['a missing file'], 404);
  for (const [where, response] of Object.entries(cases)) assertSecurityHeaders(response, where);
});

test('the API docs alone may use inline styles, which Swagger UI needs', async () => {
  const docs = await request(`${BASE_URL}/api/docs/`);
  assert.equal(docs.status, 200);
  const csp = docs.headers['content-security-policy'];
  assert.match(csp, /style-src 'self' 'unsafe-inline'/);
  assert.match(csp, /script-src 'self';/, 'scripts stay restricted on the docs page too');
  assert.match(csp, /frame-ancestors 'none'/);
});

test('static files are compressed and revalidated with an ETag', async () => {
  const plain = await request(`${BASE_URL}/styles.css`);
  assert.equal(plain.status, 200);
  assert.match(plain.headers['content-type'], /^text\/css/);
  assert.equal(plain.headers['cache-control'], 'no-cache');
  const etag = plain.headers.etag;
  assert.ok(etag, 'an ETag');

  const again = await request(`${BASE_URL}/styles.css`, { headers: { 'If-None-Match': etag } });
  assert.equal(again.status, 304);
  assert.equal(again.raw.length, 0);

  const gzipped = await request(`${BASE_URL}/styles.css`, { headers: { 'Accept-Encoding': 'gzip' } });
  assert.equal(gzipped.headers['content-encoding'], 'gzip');
  assert.match(gzipped.headers.vary ?? '', /Accept-Encoding/i);
  assert.ok(gzipped.raw.length < plain.raw.length / 2, 'compressed well');
  assert.equal(gunzipSync(gzipped.raw).toString('utf8'), plain.body);

  const script = await request(`${BASE_URL}/js/app.js`);
  assert.match(script.headers['content-type'], /^application\/javascript/, 'modules need a JavaScript type');
});

test('every request gets an X-Request-ID, passed to the API and written to the JSON access log', async () => {
  const generated = await request(`${BASE_URL}/api/messages/0`);
  assert.match(generated.headers['x-request-id'], /^[0-9a-f]{32}$/);
  assert.equal(generated.json.request_id, generated.headers['x-request-id'], 'the API saw the same id');

  const id = `e2e-${Date.now()}`;
  const given = await request(`${BASE_URL}/api/messages/0`, { headers: { 'X-Request-ID': id } });
  assert.equal(given.headers['x-request-id'], id);
  assert.equal(given.json.request_id, id);

  const forged = await request(`${BASE_URL}/`, { headers: { 'X-Request-ID': 'not an id; "quoted"' } });
  assert.match(forged.headers['x-request-id'], /^[0-9a-f]{32}$/, 'a malformed id is replaced');

  const line = await eventually(() => {
    const found = readFileSync(ACCESS_LOG, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((text) => JSON.parse(text))
      .find((entry) => entry.request_id === id);
    return found ?? false;
  });
  assert.equal(line.uri, '/api/messages/0');
  assert.equal(line.status, 400);
  assert.equal(line.method, 'GET');
  assert.match(line.upstream_addr, /^127\.0\.0\.1:\d+$/);
});

test('the API routes are proxied: /health, /health/live, /submit, the OpenAPI document', async () => {
  const health = await request(`${BASE_URL}/health`);
  assert.equal(health.status, 200);
  assert.deepEqual(health.json, { status: 'healthy', database: 'connected' });
  assert.equal((await request(`${BASE_URL}/health/live`)).status, 200);
  const openapi = await request(`${BASE_URL}/api/openapi.json`);
  assert.equal(openapi.status, 200);
  assert.match(openapi.json.openapi, /^3\./);

  const submitted = await request(`${BASE_URL}/submit`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: 'new_message=Sent+by+the+old+form',
  });
  assert.equal(submitted.status, 200);
  assert.deepEqual(submitted.json, { message: 'Sent by the old form' });
});

/** Established IPv4 TCP connections whose far end is `port` on this machine. */
function connectionsTo(port) {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  return readFileSync('/proc/net/tcp', 'utf8')
    .split('\n')
    .slice(1)
    .map((line) => line.trim().split(/\s+/))
    .filter((fields) => fields[2]?.endsWith(`:${hexPort}`) && fields[3] === '01').length;
}

test('nginx keeps its connections to the API open for reuse', async () => {
  const apiPort = Number(new URL(API_URL).port);
  // Each request below closes its client connection; only nginx's upstream ones can stay.
  for (let i = 0; i < 5; i++) assert.equal((await request(`${BASE_URL}/api/messages?limit=1`)).status, 200);
  assert.ok(connectionsTo(apiPort) >= 1, 'idle keepalive connections from nginx to the API');
});

test('/metrics is not reachable through nginx', async () => {
  const direct = await request(`${API_URL}/metrics`);
  assert.equal(direct.status, 200, 'the API does serve metrics');
  assertProblem(await request(`${BASE_URL}/metrics`), 404);
  assert.equal((await request(`${BASE_URL}/metrics/`)).status, 404);
});

test("nginx's body limit is the API's: one byte more is refused by nginx with a problem document", async () => {
  const { max_body_bytes: limit } = (await request(`${BASE_URL}/api/limits`)).json;
  // A JSON body of exactly `bytes` bytes: {"message":"xxx…"}.
  const body = (bytes) => JSON.stringify({ message: 'x'.repeat(bytes - '{"message":""}'.length) });
  const post = (bytes) =>
    request(`${BASE_URL}/api/messages`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: body(bytes) });

  const atLimit = await post(limit);
  assertProblem(atLimit, 422);
  assert.match(atLimit.json.errors.message, /at most/, 'the API read it and judged the text too long');
  const over = await post(limit + 1);
  assertProblem(over, 413);
  assert.match(over.json.detail, new RegExp(`larger than ${limit} bytes`), 'nginx refused it itself');
});

test('a burst of writes from one address is answered 429, reads are not limited', async () => {
  // A loopback address of its own, so this burst uses up no other test's allowance.
  const localAddress = '127.0.0.2';
  const burst = await Promise.all(
    Array.from({ length: 40 }, () =>
      request(`${BASE_URL}/api/messages`, { method: 'POST', body: { message: '' }, localAddress }),
    ),
  );
  const statuses = burst.map((response) => response.status);
  assert.ok(statuses.includes(422), 'the first writes reach the API');
  const limited = burst.filter((response) => response.status === 429);
  assert.ok(limited.length >= 10, `many writes are refused: ${statuses.join(' ')}`);
  for (const response of limited) {
    assertProblem(response, 429);
    assert.equal(response.headers['retry-after'], '1');
    assertSecurityHeaders(response, '429');
  }
  const read = await request(`${BASE_URL}/api/messages?limit=1`, { localAddress });
  assert.equal(read.status, 200, 'reads still pass');
});

/** A template variable as nginx/template-defaults.envsh sets it: the one source of its default. */
function templateVariable(name) {
  const script = `. nginx/template-defaults.envsh && printf %s "$${name}"`;
  return execFileSync('sh', ['-c', script], { cwd: ROOT, encoding: 'utf8' });
}

test('one address may hold STREAM_CONN_LIMIT live streams open; one more is answered 429', async () => {
  const limit = Number(templateVariable('STREAM_CONN_LIMIT'));
  assert.ok(limit > 0 && limit <= Number(templateVariable('STREAM_BURST')), 'the rate allows the streams first');
  const url = `${BASE_URL}/api/messages/stream`;
  // A loopback address of its own, so these streams use up no other test's allowance.
  const localAddress = '127.0.0.3';
  const streams = await Promise.all(Array.from({ length: limit }, () => openStream(url, {}, { localAddress })));
  try {
    assert.deepEqual(streams.map((stream) => stream.status), Array(limit).fill(200));
    const refused = await openStream(url, {}, { localAddress });
    refused.close();
    assert.equal(refused.status, 429);
    assert.equal(refused.headers['retry-after'], '1');
    const problem = await request(url, { localAddress });
    assertProblem(problem, 429);
    assert.match(problem.json.detail, /live streams/);
    assertSecurityHeaders(problem, '429 on the stream');

    const elsewhere = await openStream(url);
    elsewhere.close();
    assert.equal(elsewhere.status, 200, 'another address is not limited by these');
    streams.pop().close();
    await eventually(async () => {
      const again = await openStream(url, {}, { localAddress });
      again.close();
      return again.status === 200;
    });
  } finally {
    for (const stream of streams) stream.close();
  }
});

test('opening live streams faster than STREAM_RATE_LIMIT beyond STREAM_BURST is answered 429', async () => {
  const burst = Number(templateVariable('STREAM_BURST'));
  const url = `${BASE_URL}/api/messages/stream`;
  const localAddress = '127.0.0.4';
  const statuses = [];
  for (let i = 0; i < burst + 10; i++) {
    const stream = await openStream(url, {}, { localAddress });
    stream.close();
    statuses.push(stream.status);
  }
  assert.ok(statuses.slice(0, burst).every((status) => status === 200), `the burst passes: ${statuses.join(' ')}`);
  assert.ok(statuses.filter((status) => status === 429).length >= 5, `then openings are refused: ${statuses.join(' ')}`);
});

test('with the API down, /api answers a JSON 502 problem document', async () => {
  // nginx in front of a port where nothing listens.
  const nginx = await startNginx(join(RUN_DIR, 'no-upstream'), `127.0.0.1:${await freePort()}`);
  try {
    for (const path of ['/api/messages', '/api/messages/stream', '/health']) {
      const response = await request(`${nginx.url}${path}`);
      assertProblem(response, 502);
      assertSecurityHeaders(response, `502 on ${path}`);
    }
    assert.equal((await request(`${nginx.url}/`)).status, 200, 'the page itself is still served');
  } finally {
    nginx.stop();
  }
});

test('stream events pass through nginx unbuffered, and Last-Event-ID resumes', async () => {
  const stream = await openStream(`${BASE_URL}/api/messages/stream`);
  try {
    assert.equal(stream.status, 200);
    assert.match(stream.headers['content-type'], /^text\/event-stream/);
    assert.equal(stream.headers['content-encoding'], undefined, 'not compressed');
    const created = await createMessage('Streamed through nginx');
    // One small event: a buffering proxy would sit on it until its buffer filled.
    const event = await stream.waitFor((e) => e.event === 'created' && e.data.id === created.id, 3_000);
    assert.deepEqual(event.data, {
      id: created.id,
      message: created.message,
      created_at: created.created_at,
      updated_at: created.updated_at,
    });
    assert.ok(event.id, 'events carry an id');

    const second = await createMessage('Missed while disconnected');
    await stream.waitFor((e) => e.event === 'created' && e.data.id === second.id, 3_000);
    const resumed = await openStream(`${BASE_URL}/api/messages/stream`, { 'Last-Event-ID': event.id });
    try {
      await resumed.waitFor((e) => e.event === 'created' && e.data.id === second.id, 3_000);
      assert.ok(!resumed.events.some((e) => e.data.id === created.id), 'nothing before Last-Event-ID again');
    } finally {
      resumed.close();
    }
  } finally {
    stream.close();
  }
});
