// Plain HTTP on node:http, so tests see exactly what went over the wire: raw headers,
// compressed bodies, a chosen source address.

import http from 'node:http';
import net from 'node:net';

import { API_URL } from './env.js';

/**
 * request(url, { method, headers, body, localAddress }) -> (body: a string or Buffer as is, else JSON)
 *   { status, headers, body (string), json (parsed when JSON, else undefined) }
 */
export function request(url, { method = 'GET', headers = {}, body, localAddress } = {}) {
  return new Promise((resolve, reject) => {
    // Strings and Buffers go out as they are; anything else as JSON.
    const raw = typeof body === 'string' || Buffer.isBuffer(body);
    const payload = body === undefined ? undefined : Buffer.from(raw ? body : JSON.stringify(body));
    const allHeaders = { ...headers };
    if (payload !== undefined) {
      allHeaders['Content-Length'] = payload.length;
      if (!raw) allHeaders['Content-Type'] ??= 'application/json';
    }
    const req = http.request(url, { method, headers: allHeaders, localAddress, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => {
        const raw = Buffer.concat(chunks);
        const text = raw.toString('utf8');
        let json;
        if (/json/.test(res.headers['content-type'] ?? '') && !res.headers['content-encoding']) {
          json = JSON.parse(text);
        }
        resolve({ status: res.statusCode, headers: res.headers, raw, body: text, json });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** Creates a message straight through the API (test set-up, not under test). */
export async function createMessage(text) {
  const response = await request(`${API_URL}/api/messages`, { method: 'POST', body: { message: text } });
  if (response.status !== 201) throw new Error(`creating a message failed: ${response.status} ${response.body}`);
  return response.json;
}

/**
 * Opens an event stream and collects its events: { status, events, headers, waitFor(pred, ms), close() }.
 * Each event is { id, event, data } with data parsed as JSON.
 */
export function openStream(url, headers = {}, { localAddress } = {}) {
  return new Promise((resolve, reject) => {
    const events = [];
    const waiters = new Set();
    const options = { headers: { Accept: 'text/event-stream', ...headers }, localAddress, agent: false };
    const req = http.get(url, options, (res) => {
      let buffer = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        buffer += chunk;
        let end;
        while ((end = buffer.indexOf('\n\n')) !== -1) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = { id: null, event: 'message', data: '' };
          let isComment = true;
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) continue;
            isComment = false;
            const colon = line.indexOf(':');
            const field = colon === -1 ? line : line.slice(0, colon);
            const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
            if (field === 'data') event.data += (event.data ? '\n' : '') + value;
            else if (field === 'id' || field === 'event') event[field] = value;
          }
          if (isComment) continue;
          try {
            event.data = JSON.parse(event.data);
          } catch {
            // Left as text.
          }
          events.push(event);
          for (const waiter of waiters) waiter();
        }
      });
      resolve({
        status: res.statusCode,
        headers: res.headers,
        events,
        waitFor(predicate, ms = 5_000) {
          return new Promise((done, fail) => {
            const check = () => {
              const found = events.find(predicate);
              if (found) {
                waiters.delete(check);
                clearTimeout(timer);
                done(found);
              }
            };
            const timer = setTimeout(() => {
              waiters.delete(check);
              fail(new Error(`no matching event within ${ms} ms; got ${JSON.stringify(events)}`));
            }, ms);
            waiters.add(check);
            check();
          });
        },
        close() {
          req.destroy();
        },
      });
    });
    req.on('error', (error) => {
      if (error.code !== 'ECONNRESET') reject(error);
    });
  });
}

/** A TCP port nothing listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Retries `check` until it neither throws nor returns false; returns its result. */
export async function eventually(check, { timeout = 10_000, interval = 100 } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    let lastError;
    try {
      const result = await check();
      if (result !== false) return result;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      throw lastError ?? new Error(`condition not met within ${timeout} ms: ${check}`);
    }
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}
