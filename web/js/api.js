// The Messages API on this page's own origin. Every failure is thrown as an ApiError
// carrying the API's problem document (RFC 9457), so callers can show its words.

class ApiError extends Error {
  constructor(status, problem, message) {
    super(message);
    this.name = 'ApiError';
    // 0 when no HTTP answer arrived at all.
    this.status = status;
    this.problem = problem;
  }

  /** The service is down or unreachable, as opposed to the request being at fault. */
  get unavailable() {
    return this.status === 0 || this.status === 502 || this.status === 503 || this.status === 504;
  }
}

const unavailableListeners = new Set();

/** Calls `listener(error)` whenever a request finds the service unavailable. */
export function onUnavailable(listener) {
  unavailableListeners.add(listener);
}

async function request(method, path, { body, token, headers = {} } = {}) {
  const init = { method, headers: { Accept: 'application/json', ...headers } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (token) {
    init.headers.Authorization = `Bearer ${token}`;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw fail(new ApiError(0, null, 'The server could not be reached.'));
  }
  if (response.status === 204) {
    return null;
  }
  const isJson = /json/.test(response.headers.get('Content-Type') ?? '');
  const data = isJson ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const detail = typeof data?.detail === 'string' ? data.detail : `The server answered ${response.status}.`;
    throw fail(new ApiError(response.status, data, detail));
  }
  return data;
}

function fail(error) {
  if (error.unavailable) {
    for (const listener of unavailableListeners) listener(error);
  }
  return error;
}

const PAGE_SIZE = 20;

export const api = {
  limits: () => request('GET', '/api/limits'),
  health: () => request('GET', '/health'),
  list: (cursor) => {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (cursor) query.set('cursor', cursor);
    return request('GET', `/api/messages?${query}`);
  },
  create: (text, idempotencyKey) =>
    request('POST', '/api/messages', {
      body: { message: text },
      headers: { 'Idempotency-Key': idempotencyKey },
    }),
  update: (id, text, token) => request('PATCH', `/api/messages/${id}`, { body: { message: text }, token }),
  remove: (id, token) => request('DELETE', `/api/messages/${id}`, { token }),
};

/** The message of a failed request, for showing next to the field it concerns. */
export function describeError(error) {
  if (error instanceof ApiError && error.status !== 0 && !error.unavailable) {
    return error.message.charAt(0).toUpperCase() + error.message.slice(1);
  }
  return 'The server can’t be reached right now. Your text is kept; try again in a moment.';
}
