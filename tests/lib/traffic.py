"""`Traffic`: what users do while a deploy runs, for deploys that must fail none of it.

- readers list the messages on keep-alive connections, as browsers do;
- visitors list them on a new connection each time, as new page loads do: a connection
  refused, or reset before its answer, while nginx changes shows there;
- writers post with an Idempotency-Key, each acknowledged write (201) is kept and read back
  at the end;
- one live stream is held open and, when it ends, resumed with Last-Event-ID; at the end it
  must have had every acknowledged write exactly once, with no `reset` (nothing missed).

A request sent on a reused keep-alive connection that the server closed meanwhile gets no
answer at all; HTTP clients send it again on a new connection (RFC 9112, 9.3.1), and so do
these, once, with the same Idempotency-Key for a write. Anything else counts as failed: no
answer on a new connection, an answer of 400 or more, a stream that cannot be resumed.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from harness import eventually
from stream import Stream

# What a server closing a kept-alive connection looks like to a client that sent on it.
CLOSED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.BadStatusLine)


@dataclass
class Sent:
    method: str
    path: str
    started: float  # time.monotonic()
    seconds: float
    status: int  # 0: no answer
    error: str = ""
    retried: bool = False


@dataclass
class Report:
    requests: int
    failed: list[Sent]
    retried: int
    writes: int
    stream_resumed: int
    p99_ms: float
    window_p99_ms: float | None
    window_requests: int
    problems: list[str] = field(default_factory=list)
    # Attempts to resume the stream that got no answer during the outage stop() was told of.
    stream_retries_in_outage: int = 0
    # Every request, for figures over a stretch of the run.
    sent: list[Sent] = field(default_factory=list, repr=False)

    @property
    def unanswered_span(self) -> tuple[float, float] | None:
        """From the start of the first request that got no answer to the end of the last
        (time.monotonic()): how long new connections found no server."""
        unanswered = [s for s in self.failed if s.status == 0]
        if not unanswered:
            return None
        return min(s.started for s in unanswered), max(s.started + s.seconds for s in unanswered)

    def __str__(self) -> str:
        window = (f", {self.window_requests} during the switch with p99 {self.window_p99_ms:.0f} ms"
                  if self.window_p99_ms is not None else "")
        return (f"{self.requests} requests ({self.writes} acknowledged writes), {len(self.failed)} failed, "
                f"{self.retried} sent again after a kept-alive connection closed, p99 {self.p99_ms:.0f} ms"
                f"{window}; stream resumed {self.stream_resumed} times; problems: {self.problems or 'none'}"
                + "".join(f"\n  failed: {s}" for s in self.failed[:10]))


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000 if ordered else 0.0


class Connection:
    """One keep-alive connection that is made again when the server has closed it."""

    def __init__(self, base: str, timeout: float):
        parts = urlsplit(base)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self.conn: http.client.HTTPConnection | None = None
        self.used = False

    def send(self, method: str, path: str, body: object = None, headers: dict | None = None) -> tuple[Sent, object]:
        started = time.monotonic()
        retried = False
        while True:
            reused = self.conn is not None and self.used
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                    self.used = False
                data = json.dumps(body).encode() if body is not None else None
                all_headers = {**(headers or {}), **({"Content-Type": "application/json"} if data else {})}
                self.conn.request(method, path, body=data, headers=all_headers)
                response = self.conn.getresponse()
                raw = response.read()
                self.used = True
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = raw
                return Sent(method, path, started, time.monotonic() - started, response.status,
                            retried=retried), parsed
            except CLOSED as error:
                self.close()
                if reused and not retried:
                    retried = True
                    continue
                return Sent(method, path, started, time.monotonic() - started, 0, repr(error), retried), None
            except OSError as error:
                self.close()
                return Sent(method, path, started, time.monotonic() - started, 0, repr(error), retried), None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None


class ResumingStream:
    """The live stream, resumed with Last-Event-ID each time it ends, as EventSource does: a
    moment later (`RESUME_AFTER`; browsers wait about as long), so that writes are made
    meanwhile that only Last-Event-ID brings back."""

    RESUME_AFTER = 1.0

    def __init__(self, base: str):
        self.base = base
        self.done: list = []  # events of the streams that ended
        self.current: Stream | None = None
        self.resumed = 0
        self.failures: list[tuple[float, str]] = []  # (time.monotonic(), what)
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.current = Stream(base)
        eventually(lambda: self.current.last_id() is not None, 10, "the stream's ready event")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            stream = self.current
            stream.thread.join(0.2)
            if stream.thread.is_alive() or self.stop_event.is_set():
                continue
            # One step under the lock: a reader never sees the ended stream's events both
            # in `done` and as the current stream's.
            with self.lock:
                self.done.extend(stream.snapshot())
                self.current = None
            last = [e.id for e in self.done if e.id is not None][-1]
            self.stop_event.wait(self.RESUME_AFTER)
            while not self.stop_event.is_set():
                try:
                    resumed = Stream(self.base, last_event_id=last)
                except (AssertionError, OSError, http.client.HTTPException) as error:
                    self.failures.append((time.monotonic(), f"resuming the stream from {last}: {error!r}"))
                    self.stop_event.wait(0.5)
                    continue
                with self.lock:
                    self.current = resumed
                self.resumed += 1
                break

    def events(self) -> list:
        with self.lock:
            return self.done + (self.current.snapshot() if self.current else [])

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(5)
        if self.current:
            self.current.close()


class Traffic:
    """Readers, visitors, writers and a live stream against `base` (nginx) until stopped."""

    def __init__(self, base: str, readers: int = 4, writers: int = 2, visitors: int = 2, read_pause: float = 0.02,
                 write_pause: float = 0.5, visit_pause: float = 0.05, timeout: float = 10):
        # write_pause: nginx limits writes to 5 per second from one address (WRITE_RATE_LIMIT).
        self.base = base
        self.timeout = timeout
        self.sent: list[Sent] = []
        self.acknowledged: dict[int, str] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.stream = ResumingStream(base)
        self.threads = [threading.Thread(target=self._read, args=(read_pause,), daemon=True) for _ in range(readers)]
        self.threads += [threading.Thread(target=self._write, args=(i, write_pause), daemon=True)
                         for i in range(writers)]
        self.threads += [threading.Thread(target=self._visit, args=(visit_pause,), daemon=True)
                         for _ in range(visitors)]
        for thread in self.threads:
            thread.start()
        eventually(lambda: self._count(201) >= writers and self._count(200) >= 20, 30, "the first reads and writes")

    def _count(self, status: int) -> int:
        with self.lock:
            return sum(1 for s in self.sent if s.status == status)

    def _keep(self, sent: Sent) -> None:
        with self.lock:
            self.sent.append(sent)

    def _read(self, pause: float) -> None:
        connection = Connection(self.base, self.timeout)
        while not self.stop_event.is_set():
            self._keep(connection.send("GET", "/api/messages?limit=20")[0])
            self.stop_event.wait(pause)
        connection.close()

    def _visit(self, pause: float) -> None:
        while not self.stop_event.is_set():
            connection = Connection(self.base, self.timeout)
            self._keep(connection.send("GET", "/api/messages?limit=20", headers={"Connection": "close"})[0])
            connection.close()
            self.stop_event.wait(pause)

    def _write(self, writer: int, pause: float) -> None:
        connection = Connection(self.base, self.timeout)
        n = 0
        while not self.stop_event.is_set():
            text = f"traffic {writer}-{n} {uuid.uuid4().hex[:8]}"
            sent, body = connection.send("POST", "/api/messages", {"message": text},
                                         {"Idempotency-Key": str(uuid.uuid4())})
            self._keep(sent)
            if sent.status == 201:
                with self.lock:
                    self.acknowledged[body["id"]] = text
            n += 1
            self.stop_event.wait(pause)
        connection.close()

    def stop(self, window: tuple[float, float] | None = None,
             outage: tuple[float, float] | None = None) -> Report:
        """Stops the clients, checks every acknowledged write (read back through `base`, and
        had by the stream), and reports; `window` (monotonic start, end) picks the requests
        whose p99 is reported apart (those started during the switch). During `outage`, when
        the server is known not to listen, a failed attempt to resume the stream is counted,
        not a problem: EventSource tries again, as the stream here does."""
        self.stop_event.set()
        for thread in self.threads:
            thread.join(self.timeout + 5)
        in_outage = [what for at, what in self.stream.failures if outage and outage[0] <= at <= outage[1]]
        problems = [what for at, what in self.stream.failures if not (outage and outage[0] <= at <= outage[1])]
        wanted = set(self.acknowledged)

        def streamed() -> set[int]:
            return {e.data["id"] for e in self.stream.events() if e.event == "created"}

        try:
            eventually(lambda: wanted <= streamed(), 20, "every acknowledged write on the stream")
        except AssertionError:
            problems.append(f"the stream missed acknowledged writes {sorted(wanted - streamed())[:20]}")
        created = [e.data["id"] for e in self.stream.events() if e.event == "created"]
        if len(created) != len(set(created)):
            problems.append("the stream had a write twice")
        if any(e.event == "reset" for e in self.stream.events()):
            problems.append("the stream was reset: it could not resume where it ended")
        self.stream.close()
        reader = Connection(self.base, self.timeout)
        for id_, text in sorted(self.acknowledged.items()):
            sent, body = reader.send("GET", f"/api/messages/{id_}")
            if sent.status != 200 or body.get("message") != text:
                problems.append(f"acknowledged write {id_} reads back as {sent.status} {body!r}")
        reader.close()
        failed = [s for s in self.sent if s.status == 0 or s.status >= 400]
        in_window = [s for s in self.sent if window and window[0] <= s.started <= window[1]]
        return Report(
            requests=len(self.sent), failed=failed, retried=sum(s.retried for s in self.sent),
            writes=len(self.acknowledged), stream_resumed=self.stream.resumed,
            p99_ms=p99([s.seconds for s in self.sent]),
            window_p99_ms=p99([s.seconds for s in in_window]) if window else None,
            window_requests=len(in_window), problems=problems, stream_retries_in_outage=len(in_outage),
            sent=list(self.sent),
        )

    def kill(self) -> None:
        """Stops the clients without checking anything (a test that failed early)."""
        self.stop_event.set()
        self.stream.stop_event.set()
