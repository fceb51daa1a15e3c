"""HTTP as the tests' clients speak it: one request on a connection of its own, and its
answer with status, time, headers and body (parsed when it is JSON). No answer is an answer
too: status 0, with the error. https:// URLs need a `Tls`: the trust, and the address the
URL's host name stands for."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Answer:
    method: str
    url: str
    status: int  # 0: no HTTP answer (connection refused or reset, or no answer in time)
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)
    body: object = None
    error: str = ""
    started: float = 0.0  # time.monotonic() when it was sent

    def __repr__(self) -> str:
        detail = self.error or json.dumps(self.body)[:300]
        return f"{self.method} {self.url} -> {self.status} in {self.seconds:.3f}s {detail}"


@dataclass(frozen=True)
class Tls:
    """How an https:// URL is reached: `context` holds the roots trusted (the host name is
    verified against the certificate), `address` is where the URL's host name points, as
    curl's --resolve: the name is sent as SNI and checked, the connection goes to the address."""
    context: ssl.SSLContext
    address: str = "127.0.0.1"

    def connection(self, host: str, port: int, timeout: float) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self.context)
        address = self.address
        conn._create_connection = lambda where, *args, **kwargs: socket.create_connection(
            (address, where[1]), *args, **kwargs)
        return conn


def request(method: str, url: str, body: object = None, headers: dict[str, str] | None = None,
            timeout: float = 10, tls: Tls | None = None) -> Answer:
    parts = urlsplit(url)
    headers = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    started = time.monotonic()
    if parts.scheme == "https":
        assert tls is not None, f"{url}: an https URL needs a Tls"
        conn = tls.connection(parts.hostname, parts.port or 443, timeout)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return Answer(method, url, response.status, time.monotonic() - started, answer_headers, parsed,
                      started=started)
    except OSError as error:
        return Answer(method, url, 0, time.monotonic() - started, error=repr(error), started=started)
    finally:
        conn.close()
