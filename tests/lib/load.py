"""Load for the tests: `Clients`, threads of HTTP clients that keep every answer, for rules
about each answer, started and stopped on evidence that requests went through. Deploys
use `traffic.Traffic`, which also keeps connections alive, writes idempotently and holds a
live stream."""

from __future__ import annotations

import threading
from collections import Counter

from client import Answer, Tls, request
from harness import eventually


class Clients:
    """Threads sending requests round-robin to `bases` until stopped: `writers` of them
    create messages, the others list them, each pausing `pause` seconds between requests
    (`write_pause` for the writers, when given: nginx limits the rate of writes). Every
    answer is kept with its status and time. `tls` reaches https:// bases."""

    def __init__(self, bases: list[str], threads: int = 8, writers: int = 3, timeout: float = 5,
                 pause: float = 0.01, write_pause: float | None = None, tls: Tls | None = None):
        self.bases = bases
        self.timeout = timeout
        self.tls = tls
        self.pause = pause
        self.write_pause = pause if write_pause is None else write_pause
        self.stop_event = threading.Event()
        self.answers: list[Answer] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i, i < writers), daemon=True)
                        for i in range(threads)]

    def _run(self, index: int, writer: bool) -> None:
        n = 0
        while not self.stop_event.is_set():
            base = self.bases[(index + n) % len(self.bases)]
            if writer:
                answer = request("POST", base + "/api/messages", {"message": f"load {index}-{n}"},
                                 timeout=self.timeout, tls=self.tls)
            else:
                answer = request("GET", base + "/api/messages?limit=20", timeout=self.timeout, tls=self.tls)
            with self.lock:
                self.answers.append(answer)
            n += 1
            self.stop_event.wait(self.write_pause if writer else self.pause)

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(self.timeout + 5)

    def snapshot(self) -> list[Answer]:
        with self.lock:
            return list(self.answers)

    def statuses(self) -> Counter[int]:
        """How many answers came with each status (0: no answer)."""
        return Counter(a.status for a in self.snapshot())

    def created_ids(self) -> list[int]:
        return [a.body["id"] for a in self.snapshot() if a.status == 201]

    def summary(self) -> str:
        answers = self.snapshot()
        statuses = Counter(a.status for a in answers)
        slowest = max((a.seconds for a in answers), default=0)
        return f"{len(answers)} requests, statuses {dict(sorted(statuses.items()))}, slowest {slowest:.3f}s"

    def wait_for_requests(self, count: int, timeout: float = 30) -> None:
        start = len(self.snapshot())
        eventually(lambda: len(self.snapshot()) >= start + count, timeout, f"{count} more requests")
