"""Helpers of the delivery tests: scripts, processes, HTTP, the MySQL client, wrk load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from harness import eventually, free_port  # noqa: F401  (re-exported to the tests)
from wrk import Wrk

ROOT = Path(__file__).resolve().parents[2]




def serving(process: subprocess.Popen, url: str) -> bool:
    """Whether `process` answers `url`; fails at once when it has exited."""
    assert process.poll() is None, f"{process.args[0]} exited with status {process.returncode}"
    return answers(url)


def answers(url: str) -> bool:
    """Whether anything answers `url` with a 2xx status."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


def post_message(base_url: str, text: str, idempotency_key: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    request = urllib.request.Request(base_url + "/api/messages", method="POST", headers=headers,
                                     data=json.dumps({"message": text}).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201, response.status
        return json.load(response)


@dataclass(repr=False)
class Run:
    """A finished script: its exit status and its output (stdout and stderr interleaved),
    also kept in `log` for the run's logs."""

    returncode: int
    output: str
    log: Path
    seconds: float

    def __repr__(self) -> str:
        return f"exit status {self.returncode} after {self.seconds:.1f}s; output ({self.log}):\n{self.output[-6000:]}"


def run(args: list[str], *, env: dict[str, str], log: Path, cwd: Path = ROOT, timeout: float = 300) -> Run:
    started = time.monotonic()
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, timeout=timeout, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.write_text(result.stdout)
    return Run(result.returncode, result.stdout, log, time.monotonic() - started)


def stop_pid(pid: int, grace: float) -> None:
    """SIGTERM, then SIGKILL when the process still runs after `grace` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass(frozen=True)
class Server:
    """A MySQL server as TEST_MYSQL_URL names it: mysql://user[:password]@host[:port]."""

    user: str
    password: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Server:
        parts = urlsplit(url)
        if parts.scheme != "mysql" or not parts.username or not parts.hostname or parts.path.strip("/"):
            raise ValueError(f"TEST_MYSQL_URL must look like mysql://user[:password]@host[:port], not {url!r}")
        return cls(unquote(parts.username), unquote(parts.password or ""), parts.hostname, parts.port or 3306)

    def url(self, database: str) -> str:
        password = f":{self.password}" if self.password else ""
        return f"mysql://{self.user}{password}@{self.host}:{self.port}/{database}"

    def env(self, database: str) -> dict[str, str]:
        """The variables scripts/backup and scripts/restore connect with."""
        return {"MYSQL_HOST": self.host, "MYSQL_PORT": str(self.port), "MYSQL_USER": self.user,
                "MYSQL_PASSWORD": self.password, "MYSQL_DB": database}


class MySQL:
    """The mariadb client on one server; the password goes in a private option file."""

    def __init__(self, server: Server, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.options = directory / "client.cnf"
        self.options.touch(mode=0o600)
        password = server.password.replace("\\", "\\\\").replace('"', '\\"')
        self.options.write_text(f'[client]\nhost={server.host}\nport={server.port}\n'
                                f'user={server.user}\npassword="{password}"\n')

    def query(self, sql: str, database: str | None = None) -> bytes:
        """The answer as the client prints it: tab-separated, no column names, bytes as stored."""
        # utf8mb4 spelled out: the client otherwise picks its character set from the locale
        # (latin1 under C) and prints every character it cannot convert as '?'.
        args = ["mariadb", f"--defaults-extra-file={self.options}", "--default-character-set=utf8mb4",
                "--batch", "--raw", "--skip-column-names", "-e", sql]
        if database:
            args.append(database)
        return subprocess.run(args, check=True, capture_output=True, timeout=60).stdout

    def tables(self, database: str) -> list[str]:
        return self.query("SELECT table_name FROM information_schema.tables "
                          f"WHERE table_schema = '{database}' ORDER BY table_name").decode().split()

    def exists(self, database: str) -> bool:
        return bool(self.query(f"SHOW DATABASES LIKE '{database}'").strip())

    def snapshot(self, database: str) -> bytes:
        """Every table's definition and rows (ordered by the first column), bytes as stored."""
        parts = []
        for table in self.tables(database):
            parts.append(self.query(f"SHOW CREATE TABLE `{table}`", database))
            parts.append(self.query(f"SELECT * FROM `{table}` ORDER BY 1", database))
        return b"".join(parts)


class MariaDB:
    """A throwaway server, as scripts/lib/mariadb.sh starts one: its own data folder, socket
    and port, a `messages` user over TCP."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.socket = directory / "mariadb.sock"
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        user = ["--user=root"] if os.getuid() == 0 else []
        self.directory.mkdir(parents=True)
        with open(self.directory / "install.log", "w") as log:
            subprocess.run(["mariadb-install-db", "--no-defaults", *user, f"--datadir={self.directory}/data",
                            "--auth-root-authentication-method=normal", "--skip-test-db"],
                           check=True, stdout=log, stderr=subprocess.STDOUT)
        self.process = subprocess.Popen(
            ["/usr/sbin/mariadbd", "--no-defaults", *user, f"--datadir={self.directory}/data",
             f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
             "--skip-name-resolve", f"--log-error={self.directory}/error.log", "--max-connections=500"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        eventually(self._ready, 60, f"MariaDB on port {self.port} (log: {self.directory}/error.log)")
        self._root("CREATE USER 'messages'@'127.0.0.1' IDENTIFIED BY 'messages';"
                   "GRANT ALL PRIVILEGES ON *.* TO 'messages'@'127.0.0.1' WITH GRANT OPTION;")
        return Server("messages", "messages", "127.0.0.1", self.port)

    def _ready(self) -> bool:
        assert self.process.poll() is None, f"mariadbd exited with status {self.process.returncode}"
        ping = ["mariadb-admin", "--no-defaults", f"--socket={self.socket}", "-uroot", "ping"]
        return subprocess.run(ping, capture_output=True).returncode == 0

    def _root(self, sql: str) -> None:
        subprocess.run(["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot", "-e", sql], check=True)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


class Load(Wrk):
    """wrk through the host's nginx, whose JSON access log tells which upstream served each
    request meanwhile."""

    def __init__(self, url: str, access_log: Path, directory: Path, name: str):
        self.access_log = access_log
        self.first_line = self._lines()
        self.last_line: int | None = None
        super().__init__(url, directory, name)

    def _lines(self) -> int:
        with open(self.access_log, "rb") as log:
            return sum(1 for _ in log)

    def stop(self) -> dict:
        summary = super().stop()
        self.last_line = self._lines()
        return summary

    def upstreams(self) -> dict[str, int]:
        """How many requests went to each upstream while the load ran, from nginx's JSON
        access log."""
        counts: dict[str, int] = {}
        end = self.last_line if self.last_line is not None else float("inf")
        with open(self.access_log) as log:
            for number, line in enumerate(log):
                if self.first_line <= number < end:
                    address = json.loads(line)["upstream_addr"]
                    counts[address] = counts.get(address, 0) + 1
        return counts
