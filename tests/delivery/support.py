"""Helpers of the delivery tests: scripts, processes, HTTP, the MySQL client."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from harness import eventually, free_port  # noqa: F401  (re-exported to the tests)

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
HEALTH_TIMEOUT = 15
SHUTDOWN_GRACE = 5


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


class Running:
    """A script running in a session of its own (as over ssh, or as a Jenkins step), its
    output read on a thread with the time each line came, so that a test can act on a line
    (interrupt it at a phase) and time what happened between two lines."""

    def __init__(self, args: list, env: dict[str, str], log: Path):
        self.log = log
        self.started = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self.process = subprocess.Popen([str(a) for a in args], cwd=ROOT, env=env, text=True, start_new_session=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line))

    def when(self, text: str) -> float | None:
        """time.monotonic() when a line holding `text` came, if one did."""
        return next((at for at, line in list(self.lines) if text in line), None)

    def wait_for_line(self, text: str, timeout: float = 120) -> float:
        def seen():
            at = self.when(text)
            assert at is not None or self.reader.is_alive(), \
                f"the script ended before printing {text!r}:\n{self.output()}"
            return at

        return eventually(seen, timeout, f"the line {text!r}", interval=0.01)

    def signal_group(self, sig: int) -> None:
        os.killpg(self.process.pid, sig)

    def output(self) -> str:
        return "".join(line for _, line in list(self.lines))

    def wait(self, timeout: float = 300) -> Run:
        self.process.wait(timeout)
        self.reader.join(10)
        output = self.output()
        self.log.write_text(output)
        return Run(self.process.returncode, output, self.log, time.monotonic() - self.started)


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

    def databases(self) -> list[str]:
        return self.query("SHOW DATABASES").decode().split()

    def hex_snapshot(self, database: str) -> list[bytes]:
        """Every table's definition and every row with each column as HEX (NULL spelled out),
        in the order of all the columns: byte for byte what the tables hold, unambiguously."""
        parts = []
        for table in self.tables(database):
            columns = self.query("SELECT column_name FROM information_schema.columns WHERE "
                                 f"table_schema = '{database}' AND table_name = '{table}' "
                                 "ORDER BY ordinal_position").decode().split()
            hexed = ", ".join(f"IFNULL(HEX(`{column}`), 'NULL')" for column in columns)
            order = ", ".join(str(i) for i in range(1, len(columns) + 1))
            parts.append(self.query(f"SHOW CREATE TABLE `{table}`", database))
            parts.append(self.query(f"SELECT {hexed} FROM `{table}` ORDER BY {order}", database))
        return parts


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
             "--skip-name-resolve", f"--log-error={self.directory}/error.log", "--max-connections=500",
             # Binary logs, for scripts/archive-binlogs and scripts/restore --to.
             "--log-bin=binlog", "--server-id=1"],
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


class ProcessHost:
    """A machine deployed to with the process driver: releases, state and nginx in one folder.
    Each release is the API binary (or a stand-in in releases/) beside the migrations it
    embeds, as the driver expects."""

    RELEASES = {"v1": None, "v2": None, "crashes": HERE / "releases/crashes-at-start",
                "rejects-posts": HERE / "releases/rejects-posts"}

    def __init__(self, directory: Path, api_bin: Path, database_env: dict[str, str], releases: dict | None = None):
        self.dir = directory
        self.state = directory / "state"
        self.releases = directory / "releases"
        self.ports = {"blue": free_port(), "green": free_port()}
        listen = f"127.0.0.1:{free_port()}"
        self.url = f"http://{listen}"
        self.nginx = directory / "nginx"
        self.access_log = self.nginx / "logs/access.log"
        self.runs = itertools.count(1)
        for tag, binary in (releases or self.RELEASES).items():
            (self.releases / tag).mkdir(parents=True)
            (self.releases / tag / "messages-api").symlink_to(binary or api_bin)
            (self.releases / tag / "migrations").symlink_to(ROOT / "migrations")
        # The API takes DATABASE_URL over the MYSQL_* variables: none from the caller's.
        inherited = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        self.env = {
            **inherited, "API_BIN": str(api_bin), **database_env, "LOG_FORMAT": "json",
            # Both colors seal with it: a replay reaches either (required with MySQL).
            "TOKEN_SEALING_KEY": "the delivery tests' token sealing secret, 32+ bytes",
            "SHUTDOWN_GRACE_SECS": str(SHUTDOWN_GRACE), "DEPLOY_DRIVER": "process",
            "DEPLOY_STATE_DIR": str(self.state), "DEPLOY_RELEASES_DIR": str(self.releases),
            "DEPLOY_BLUE_PORT": str(self.ports["blue"]), "DEPLOY_GREEN_PORT": str(self.ports["green"]),
            "DEPLOY_NGINX_LISTEN": listen, "DEPLOY_NGINX_PREFIX": str(self.nginx),
            "DEPLOY_HEALTH_TIMEOUT": str(HEALTH_TIMEOUT),
        }

    def _log(self, *words: str) -> Path:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(words))[-80:]
        return self.dir / f"{next(self.runs):02d}-{name}.out"

    def script(self, name: str, *args: str, **extra_env: str) -> Run:
        """scripts/NAME ARGS from the checkout, on this machine."""
        return run([ROOT / "scripts" / name, *args], env={**self.env, **extra_env}, log=self._log(name, *args))

    def start(self, name: str, *args: str, **extra_env: str) -> Running:
        """scripts/NAME ARGS, left running."""
        return Running([ROOT / "scripts" / name, *args], {**self.env, **extra_env}, self._log(name, *args))

    def remote(self, *args: str, **extra_env: str) -> Running:
        """scripts/remote ARGS as Jenkins runs it, left running; the EC2 host is the folder
        host/ here."""
        env = {**self.env, "PATH": f"{HERE / 'bin'}:{os.environ['PATH']}",
               "DEPLOY_HOST": "deploy@ec2.test", "DEPLOY_DIR": str(self.dir / "host"), **extra_env}
        return Running([ROOT / "scripts/remote", *args], env, self._log("remote", *args))

    def recorded(self, name: str) -> str:
        path = self.state / name
        return path.read_text().strip() if path.exists() else ""

    def live(self) -> tuple[str, str]:
        return self.recorded("current"), self.recorded("previous")

    def pid(self, color: str) -> int | None:
        recorded = self.recorded(f"{color}.pid")
        return int(recorded) if recorded and Path(f"/proc/{recorded}").exists() else None

    def lines(self) -> int:
        """How many requests nginx's access log holds, to count from."""
        with open(self.access_log, "rb") as log:
            return sum(1 for _ in log)

    def upstreams(self, since: int) -> dict[str, int]:
        """How many requests went to each upstream since the access log held `since` lines."""
        counts: dict[str, int] = {}
        with open(self.access_log) as log:
            for line in list(log)[since:]:
                address = json.loads(line)["upstream_addr"]
                counts[address] = counts.get(address, 0) + 1
        return counts

    def assert_consistent(self) -> None:
        """No deploy under way, and the state files, nginx's upstream (the one it actually
        uses: where its last requests went) and the running colors agree."""
        assert not (self.state / "deploying").exists(), (self.state / "deploying").read_text()
        color = self.recorded("color")
        upstream = f"127.0.0.1:{self.ports[color]}"
        assert self.recorded("api-upstream") == upstream
        assert f"server {upstream}" in (self.nginx / "conf.d/default.conf").read_text()
        since = self.lines()
        for _ in range(5):
            assert answers(self.url + "/api/messages?limit=1")
        served = set(self.upstreams(since))
        assert served == {upstream}, f"nginx sent requests to {served}, not only to {color} ({upstream})"
        self.assert_serves(self.recorded("current"))

    def assert_serves(self, tag: str) -> None:
        """nginx answers, the live color runs release TAG and the idle color runs nothing."""
        live = self.recorded("color")
        idle = "green" if live == "blue" else "blue"
        pid = self.pid(live)
        assert pid, f"{live} is live but runs nothing"
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert f"{self.releases}/{tag}/messages-api serve" in command
        assert answers(self.url + "/health")
        assert not answers(f"http://127.0.0.1:{self.ports[idle]}/health"), f"the idle {idle} still answers"

    def stop(self) -> None:
        nginx = self.nginx / "nginx.pid"
        if nginx.exists():
            stop_pid(int(nginx.read_text()), 5)
        for color in ("blue", "green"):
            if pid := self.pid(color):
                stop_pid(pid, 2 * SHUTDOWN_GRACE)
