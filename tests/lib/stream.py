"""The live stream (Server-Sent Events) read on a thread, every event kept."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Event:
    event: str
    id: str | None
    data: object  # parsed when it is JSON


class Stream:
    """Reads `base`/api/messages/stream (the API, or nginx in front of it) on a thread."""

    def __init__(self, base: str, last_event_id: str | None = None):
        parts = urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.conn.request("GET", "/api/messages/stream", headers=headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.status
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if "data" in fields or "event" in fields:
                        data = fields.get("data", "")
                        try:
                            data = json.loads(data)
                        except ValueError:
                            pass
                        with self.lock:
                            self.events.append(Event(fields.get("event", "message"), fields.get("id"), data))
                    fields = {}
                elif line.startswith(":"):
                    continue
                else:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value
        except (OSError, ValueError, http.client.HTTPException):
            pass  # closed by close()

    def snapshot(self) -> list[Event]:
        with self.lock:
            return list(self.events)

    def changes(self) -> list[tuple[str, int]]:
        """(event, message id) of every change event received, in order."""
        return [(e.event, e.data["id"]) for e in self.snapshot() if e.event in ("created", "updated", "deleted")]

    def last_id(self) -> str | None:
        ids = [e.id for e in self.snapshot() if e.id is not None]
        return ids[-1] if ids else None

    def close(self) -> None:
        try:
            self.response.fp.raw._sock.shutdown(socket.SHUT_RDWR)  # unblocks the reader
        except (AttributeError, OSError):
            pass
        # The reader ends on the shut-down socket; closing the connection under it would
        # race with its read.
        self.thread.join(5)
        self.conn.close()
