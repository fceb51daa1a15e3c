"""Helpers of the cluster tests: the Galera nodes, HAProxy's runtime API, API replicas,
HTTP with timing, an SSE reader and a threaded load client."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from harness import eventually, free_port  # noqa: F401  (re-exported to the tests)

ROOT = Path(__file__).resolve().parents[2]
NODES = (1, 2, 3)
# What the API may answer when the database is briefly unavailable or a commit lost a
# certification conflict: documented, retryable, never a 500.
RETRYABLE = {503}
# The replicas' time limit per request (REQUEST_TIMEOUT_SECS): at the limit the API answers
# 503 itself. The client waits longer, so that such an answer is recorded as one, never as
# "no answer".
REQUEST_LIMIT = 10
CLIENT_TIMEOUT = REQUEST_LIMIT + 5
# The state of the nodes that explains a request that waits: sessions, transactions, lock
# waits, and the cluster's replication counters.
STALL_QUERIES = {
    "processlist": "SELECT ID, USER, HOST, DB, COMMAND, TIME_MS, STATE, INFO FROM information_schema.PROCESSLIST "
                   "WHERE COMMAND <> 'Daemon' ORDER BY ID",
    "innodb_trx": "SELECT trx_id, trx_state, trx_started, trx_wait_started, trx_mysql_thread_id, trx_query, "
                  "trx_operation_state, trx_rows_locked, trx_rows_modified FROM information_schema.INNODB_TRX",
    "innodb_lock_waits": "SELECT * FROM information_schema.INNODB_LOCK_WAITS",
    "wsrep": "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_state_comment', 'wsrep_last_committed', "
             "'wsrep_local_recv_queue', 'wsrep_local_send_queue', 'wsrep_flow_control_paused', "
             "'wsrep_local_bf_aborts', 'wsrep_local_cert_failures')",
    "innodb_status": "SHOW ENGINE INNODB STATUS",
}


def pid_alive(pid: int) -> bool:
    """Whether the process runs; a zombie (a node this test restarted, exited but not yet
    reaped) does not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


class Cluster:
    """The cluster scripts/lib/galera.sh started: three nodes and HAProxy in front."""

    def __init__(self):
        self.dir = Path(os.environ["GALERA_DIR"])
        self.ports = dict(zip(NODES, map(int, os.environ["GALERA_NODE_PORTS_LIST"].split())))
        self.haproxy_port = int(os.environ["HAPROXY_PORT"])
        self.haproxy_socket = os.environ["HAPROXY_SOCKET"]

    def url(self, node: int | None = None, database: str = "") -> str:
        """A MySQL URL: through HAProxy, or direct to one node."""
        port = self.haproxy_port if node is None else self.ports[node]
        return f"mysql://messages:messages@127.0.0.1:{port}/{database}".rstrip("/")

    def sql(self, node: int, statement: str, database: str | None = None) -> list[list[str]]:
        """Rows of a statement run as root on one node, through its socket."""
        args = ["mariadb", "--no-defaults", f"--socket={self.dir}/node{node}/mariadb.sock", "-uroot",
                "--batch", "--raw", "--skip-column-names", "-e", statement]
        if database:
            args.append(database)
        out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout
        return [line.split("\t") for line in out.splitlines()]

    def status(self, node: int) -> dict[str, str]:
        try:
            rows = self.sql(node, "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_cluster_size', "
                                  "'wsrep_local_state_comment', 'wsrep_ready')")
        except subprocess.SubprocessError:
            return {}
        return dict(rows)

    def synced(self, node: int) -> bool:
        return self.status(node) == {"wsrep_cluster_size": "3", "wsrep_local_state_comment": "Synced",
                                     "wsrep_ready": "ON"}

    def pid(self, node: int) -> int:
        return int((self.dir / f"node{node}/mariadb.pid").read_text())

    def kill(self, node: int) -> None:
        """kill -9: a crash."""
        pid = self.pid(node)
        os.kill(pid, signal.SIGKILL)
        eventually(lambda: not pid_alive(pid), 10, f"node{node} to die")

    def shutdown(self, node: int) -> None:
        """A graceful stop (SIGTERM, as systemd stops it), waiting until the process is gone."""
        pid = self.pid(node)
        os.kill(pid, signal.SIGTERM)
        eventually(lambda: not pid_alive(pid), 60, f"node{node} to stop")

    def start(self, node: int) -> None:
        """Starts a stopped node as scripts/lib/galera.sh does; it rejoins by IST."""
        subprocess.Popen(["/usr/sbin/mariadbd", f"--defaults-file={self.dir}/node{node}/my.cnf"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
        eventually(lambda: self.synced(node), 120, f"node{node} to rejoin and be Synced")

    def haproxy(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(self.haproxy_socket)
            except OSError as error:
                raise AssertionError(f"HAProxy's runtime socket: {error!r}. {self.haproxy_ended()}") from error
            s.sendall(command.encode() + b"\n")
            return b"".join(iter(lambda: s.recv(65536), b"")).decode()

    def haproxy_ended(self) -> str:
        """How HAProxy ended, from what scripts/lib/galera.sh keeps: its exit status and the
        end of its log; empty while it runs."""
        folder = Path(self.haproxy_socket).parent
        status = folder / "haproxy.exit"
        if not status.exists():
            return ""
        tail = (folder / "haproxy.log").read_text(errors="replace").splitlines()[-12:]
        return f"HAProxy exited with status {status.read_text().strip()}; the end of {folder}/haproxy.log:\n" \
            + "\n".join(tail)

    def servers(self) -> dict[str, dict[str, str]]:
        """HAProxy's view of each node: status (UP, DOWN, DRAIN, MAINT), scur (sessions), bck."""
        lines = self.haproxy("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
        return {r["svname"]: r for r in rows if r["pxname"] == "mysql" and r["svname"].startswith("node")}

    def active_node(self) -> int:
        """The node HAProxy sends new connections to: the first UP server, active before backups."""
        servers = self.servers()
        ordered = sorted(servers.items(), key=lambda kv: (kv[1]["bck"] != "0", kv[0]))
        for name, row in ordered:
            if row["status"] == "UP":
                return int(name.removeprefix("node"))
        raise AssertionError(f"HAProxy has no server UP: {servers}")

    def state(self, nodes=NODES) -> str:
        """The nodes' sessions, transactions, lock waits and wsrep counters, as text."""
        parts = []
        for node in nodes:
            for name, query in STALL_QUERIES.items():
                try:
                    rows = self.sql(node, query)
                except subprocess.SubprocessError as error:
                    rows = [[repr(error)]]
                parts.append(f"== node{node} {name}")
                parts += ["\t".join(row) for row in rows]
        return "\n".join(parts) + "\n"

    def create_database(self, name: str | None = None) -> str:
        name = name or f"cluster_{uuid.uuid4().hex[:12]}"
        node = next(n for n in NODES if self.synced(n))
        self.sql(node, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return name


class Api:
    """One replica of the API (the real binary) on its own port."""

    def __init__(self, binary: Path, database_url: str, workdir: Path, name: str, **env: str):
        self.name = name
        self.database = urlsplit(database_url).path.strip("/")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"{name}.log"
        workdir.mkdir(parents=True, exist_ok=True)
        environment = {
            **os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "DATABASE_URL": database_url,
            "TOKEN_SEALING_KEY": "the cluster tests' token sealing secret, 32+ bytes",
            "LOG_LEVEL": "info,messages_api=info", "LOG_FORMAT": "json",
            "REQUEST_TIMEOUT_SECS": str(REQUEST_LIMIT), **env,
        }
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([str(binary)], cwd=workdir, env=environment,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        assert self.process.poll() is None, f"{self.name} exited with {self.process.returncode}: {self.log}"
        return request("GET", self.base + "/health", timeout=2).status == 200

    def wait_ready(self, timeout: float = 60) -> Api:
        eventually(self.ready, timeout, f"{self.name} to be ready (log: {self.log})")
        return self

    def log_lines(self) -> list[dict]:
        lines = []
        for line in self.log.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def metric(self, name: str) -> float:
        """The sum of a counter's samples on the replica's /metrics."""
        text = request("GET", self.base + "/metrics").body
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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


def request(method: str, url: str, body: object = None, headers: dict[str, str] | None = None,
            timeout: float = CLIENT_TIMEOUT) -> Answer:
    parts = urlsplit(url)
    headers = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    started = time.monotonic()
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


def create(base: str, text: str) -> dict:
    answer = request("POST", base + "/api/messages", {"message": text})
    assert answer.status == 201, answer
    return answer.body


@dataclass
class Event:
    event: str
    id: str | None
    data: object


class Stream:
    """Reads a replica's SSE stream on a thread, keeping every event."""

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


class Load:
    """Threads sending reads and writes round-robin to the replicas until stopped; every
    answer is kept with its status and time."""

    def __init__(self, bases: list[str], threads: int = 8, writers: int = 3, timeout: float = CLIENT_TIMEOUT):
        self.bases = bases
        self.timeout = timeout
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
                                 timeout=self.timeout)
            else:
                answer = request("GET", base + "/api/messages?limit=20", timeout=self.timeout)
            with self.lock:
                self.answers.append(answer)
            n += 1
            time.sleep(0.01)

    def __enter__(self) -> Load:
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

    def created_ids(self) -> list[int]:
        return [a.body["id"] for a in self.snapshot() if a.status == 201]

    def summary(self) -> str:
        answers = self.snapshot()
        statuses: dict[int, int] = {}
        for a in answers:
            statuses[a.status] = statuses.get(a.status, 0) + 1
        slowest = max((a.seconds for a in answers), default=0)
        return f"{len(answers)} requests, statuses {dict(sorted(statuses.items()))}, slowest {slowest:.3f}s"

    def wait_for_requests(self, count: int, timeout: float = 30) -> None:
        start = len(self.snapshot())
        eventually(lambda: len(self.snapshot()) >= start + count, timeout, f"{count} more requests")


class StallWatch:
    """Watches requests in flight. The first time one has waited `after` seconds, it saves
    the nodes' state (Cluster.state) to `path`, taken while the wait lasts."""

    def __init__(self, cluster: Cluster, path: Path, nodes=NODES, after: float = 3.0):
        self.cluster, self.path, self.nodes, self.after = cluster, path, nodes, after
        self.started: dict[object, float] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.saved = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    @contextmanager
    def request(self):
        key = object()
        with self.lock:
            self.started[key] = time.monotonic()
        try:
            yield
        finally:
            with self.lock:
                del self.started[key]

    def _run(self) -> None:
        while not self.saved and not self.stop_event.wait(0.2):
            with self.lock:
                oldest = min(self.started.values(), default=None)
            if oldest is not None and time.monotonic() - oldest > self.after:
                waited = time.monotonic() - oldest
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text(f"A request had waited {waited:.1f}s.\n" + self.cluster.state(self.nodes))
                self.saved = True

    def __enter__(self) -> StallWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(60)

    def evidence(self) -> str:
        return f"; the nodes' state during the wait is in {self.path}" if self.saved else ""


def outcome_unknown(answer: Answer) -> bool:
    """The documented 504 of a commit whose connection died with it: it may or may not have
    been saved, and only a retry with the same Idempotency-Key is safe."""
    return answer.status == 504 and isinstance(answer.body, dict) \
        and answer.body.get("type") == "/problems/outcome-unknown"


def problems(answers: list[Answer], slowest: float = 2.0, allow_outcome_unknown: bool = False) -> list[Answer]:
    """Answers that break the rules under failure: anything but a 2xx or a documented 503
    with Retry-After as problem+json (or, if allowed, the outcome-unknown 504), or an answer
    slower than `slowest` seconds."""
    bad = []
    for a in answers:
        ok_status = 200 <= a.status < 300 or (allow_outcome_unknown and outcome_unknown(a)) or (
            a.status in RETRYABLE and "retry-after" in a.headers
            and a.headers.get("content-type", "").startswith("application/problem+json"))
        if not ok_status or a.seconds > slowest:
            bad.append(a)
    return bad
