// Hostile and broken requests through nginx, table-driven: each gets the documented 4xx
// problem document, and none changes anything it should not.

import assert from 'node:assert/strict';
import { before, test } from 'node:test';

import { API_URL, BASE_URL } from './lib/env.js';
import { createMessage, request } from './lib/http.js';

// nginx limits writes to 5 per second per address (burst 20); the suite stays under it.
const WRITE_PACE_MS = 250;
const JSON_TYPE = { 'Content-Type': 'application/json' };

let victim; // a message every case may try, and fail, to change

before(async () => {
  victim = await createMessage('The message bad requests must not change');
});

const bearer = (token) => ({ ...JSON_TYPE, Authorization: `Bearer ${token}` });
const victimPath = () => `/api/messages/${victim.id}`;

// [name, method, path (or function of the victim), headers, body, expected status]
const CASES = [
  ['malformed JSON', 'POST', '/api/messages', JSON_TYPE, '{"message": ', 400],
  ['single-quoted JSON', 'POST', '/api/messages', JSON_TYPE, "{'message': 'hi'}", 400],
  ['trailing garbage', 'POST', '/api/messages', JSON_TYPE, '{"message": "hi"} x', 400],
  ['empty body', 'POST', '/api/messages', JSON_TYPE, '', 400],
  ['invalid UTF-8', 'POST', '/api/messages', JSON_TYPE, Buffer.from([0x7b, 0x22, 0x6d, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]), 400],
  ['raw NUL byte in JSON', 'POST', '/api/messages', JSON_TYPE, Buffer.from('{"message": "a\u0000b"}'), 400],
  ['escaped NUL character', 'POST', '/api/messages', JSON_TYPE, '{"message": "a\\u0000b"}', 422],
  ['number instead of text', 'POST', '/api/messages', JSON_TYPE, '{"message": 42}', 422],
  ['null message', 'POST', '/api/messages', JSON_TYPE, '{"message": null}', 422],
  ['array message', 'POST', '/api/messages', JSON_TYPE, '{"message": ["a"]}', 422],
  ['array body', 'POST', '/api/messages', JSON_TYPE, '["hi"]', 422],
  ['string body', 'POST', '/api/messages', JSON_TYPE, '"hi"', 422],
  ['missing message', 'POST', '/api/messages', JSON_TYPE, '{}', 422],
  ['unknown field', 'POST', '/api/messages', JSON_TYPE, '{"message": "hi", "id": 1}', 422],
  ['blank message', 'POST', '/api/messages', JSON_TYPE, '{"message": "   \\n\\t "}', 422],
  ['10 000-character message', 'POST', '/api/messages', JSON_TYPE, JSON.stringify({ message: 'x'.repeat(10_000) }), 422],
  ['1 MB body', 'POST', '/api/messages', JSON_TYPE, JSON.stringify({ message: 'y'.repeat(1_000_000) }), 413],
  ['text/plain body', 'POST', '/api/messages', { 'Content-Type': 'text/plain' }, '{"message": "hi"}', 415],
  ['form body', 'POST', '/api/messages', { 'Content-Type': 'application/x-www-form-urlencoded' }, 'message=hi', 415],
  ['no content type', 'POST', '/api/messages', {}, '{"message": "hi"}', 415],
  ['bad Idempotency-Key', 'POST', '/api/messages', { ...JSON_TYPE, 'Idempotency-Key': 'has spaces in it' }, '{"message": "hi"}', 400],
  ['overlong Idempotency-Key', 'POST', '/api/messages', { ...JSON_TYPE, 'Idempotency-Key': 'k'.repeat(256) }, '{"message": "hi"}', 400],
  ['guessable Idempotency-Key', 'POST', '/api/messages', { ...JSON_TYPE, 'Idempotency-Key': 'retry-1' }, '{"message": "hi"}', 400],
  ['nil UUID as Idempotency-Key', 'POST', '/api/messages', { ...JSON_TYPE, 'Idempotency-Key': '00000000-0000-0000-0000-000000000000' }, '{"message": "hi"}', 400],
  ['bogus cursor', 'GET', '/api/messages?cursor=not-a-cursor', {}, undefined, 400],
  ['SQL in the cursor', 'GET', "/api/messages?cursor=1'%20OR%20'1'='1", {}, undefined, 400],
  ['limit 0', 'GET', '/api/messages?limit=0', {}, undefined, 400],
  ['negative limit', 'GET', '/api/messages?limit=-5', {}, undefined, 400],
  ['huge limit', 'GET', '/api/messages?limit=100000000000', {}, undefined, 400],
  ['text limit', 'GET', '/api/messages?limit=ten', {}, undefined, 400],
  ['negative id', 'GET', '/api/messages/-1', {}, undefined, 400],
  ['zero id', 'GET', '/api/messages/0', {}, undefined, 400],
  ['id beyond 64 bits', 'GET', '/api/messages/99999999999999999999', {}, undefined, 400],
  ['largest 64-bit id', 'GET', '/api/messages/9223372036854775807', {}, undefined, 404],
  ['SQL as an id', 'GET', '/api/messages/1%20OR%201=1', {}, undefined, 400],
  ['PUT on the collection', 'PUT', '/api/messages', JSON_TYPE, '{"message": "hi"}', 405],
  ['DELETE on the collection', 'DELETE', '/api/messages', {}, undefined, 405],
  ['POST on a message', 'POST', victimPath, JSON_TYPE, '{"message": "hi"}', 405],
  ['PATCH without a token', 'PATCH', victimPath, JSON_TYPE, '{"message": "hijacked"}', 401],
  ['PATCH with an empty bearer', 'PATCH', victimPath, { ...JSON_TYPE, Authorization: 'Bearer ' }, '{"message": "hijacked"}', 401],
  ['PATCH with Basic auth', 'PATCH', victimPath, { ...JSON_TYPE, Authorization: 'Basic YWRtaW46YWRtaW4=' }, '{"message": "hijacked"}', 401],
  ['PATCH with a wrong token', 'PATCH', victimPath, bearer('guessed-token'), '{"message": "hijacked"}', 403],
  ['PATCH with SQL as the token', 'PATCH', victimPath, bearer("' OR '1'='1"), '{"message": "hijacked"}', 403],
  ['PATCH with malformed JSON and no token', 'PATCH', victimPath, JSON_TYPE, '{"message": ', 401],
  ['PATCH with a text body and a wrong token', 'PATCH', victimPath, { 'Content-Type': 'text/plain', Authorization: 'Bearer guessed-token' }, 'hijacked', 403],
  ['DELETE without a token', 'DELETE', victimPath, {}, undefined, 401],
  ['DELETE with a wrong token', 'DELETE', victimPath, bearer('guessed-token'), undefined, 403],
  ['stream with a bogus Last-Event-ID', 'GET', '/api/messages/stream', { 'Last-Event-ID': 'yesterday' }, undefined, 400],
  ['stream with an overflowing Last-Event-ID', 'GET', '/api/messages/stream', { 'Last-Event-ID': '0.1.1x18446744073709551615' }, undefined, 400],
  ['form route without its field', 'POST', '/submit', { 'Content-Type': 'application/x-www-form-urlencoded' }, 'other=1', 422],
  ['form route with JSON', 'POST', '/submit', JSON_TYPE, '{"new_message": "hi"}', 415],
];

async function listAll() {
  const response = await request(`${API_URL}/api/messages?limit=100`);
  assert.equal(response.status, 200);
  return response.json.items;
}

test('bad requests get their documented problem and change nothing', async () => {
  const before = await listAll();
  for (const [name, method, path, headers, body, status] of CASES) {
    if (method !== 'GET') await new Promise((resolve) => setTimeout(resolve, WRITE_PACE_MS));
    const url = BASE_URL + (typeof path === 'function' ? path() : path);
    const response = await request(url, { method, headers, body });
    assert.equal(response.status, status, `${name}: ${response.body.slice(0, 300)}`);
    assert.match(response.headers['content-type'] ?? '', /^application\/problem\+json/, `${name}: a problem document`);
    assert.equal(response.json.status, status, `${name}: status in the body`);
    assert.ok(response.json.detail, `${name}: a detail`);
    assert.equal(response.json.request_id, response.headers['x-request-id'], `${name}: the request id`);
  }
  assert.deepEqual(await listAll(), before, 'no bad request changed a message');
});

test('SQL and markup are stored as the text they are', async () => {
  for (const text of ["'; DROP TABLE messages; --", '" OR 1=1 --', '<img src=x onerror=alert(1)>', '\\x00 %s %n {{7*7}} ${7*7}']) {
    await new Promise((resolve) => setTimeout(resolve, WRITE_PACE_MS));
    const created = await request(`${BASE_URL}/api/messages`, { method: 'POST', body: { message: text } });
    assert.equal(created.status, 201, text);
    const read = await request(`${BASE_URL}/api/messages/${created.json.id}`);
    assert.equal(read.json.message, text);
  }
  assert.equal((await request(`${BASE_URL}/health`)).status, 200, 'the table is still there');
});
