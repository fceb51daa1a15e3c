"""Compose stacks on the test engine, and the HTTP requests made through their nginx."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from engine import ROOT, Engine, log, run
from harness import eventually, free_port

# The database container's user (docker-compose.prod.yml, db's `user:`).
DB_UID = 999


def delivery_files() -> list[str]:
    """What scripts/remote copies to the EC2 host (its `delivery_files`): everything
    scripts/deploy and its drivers read, and what the monitoring profile mounts."""
    found = re.search(r"^delivery_files=\(([^)]*)\)", (ROOT / "scripts/remote").read_text(), re.MULTILINE)
    if not found:
        raise RuntimeError("scripts/remote: no delivery_files=(...)")
    return found.group(1).split()


# scripts/images labels the web image with a hash of its content; the deploy compares it.
WEB_CONTENT_LABEL = "io.github.two-tier-rs.messages.web-content"
# What v2 adds to the page (conftest.py): the page a user gets tells which web image serves.
V2_PAGE_MARKER = '<meta name="release" content="v2">'


def derive_web_image(engine: Engine, registry: str, base: str, tag: str, instructions: str) -> None:
    """messages-web:TAG made from messages-web:BASE by one more layer (run as root), with its
    own web-content label, as scripts/images would give changed content."""
    label = engine.image_label(f"{registry}/messages-web:{base}", WEB_CONTENT_LABEL)
    engine.docker("build", "--tag", f"{registry}/messages-web:{tag}", "-",
                  input=f"FROM {registry}/messages-web:{base}\nUSER root\n{instructions}\nUSER 101\n"
                        f"LABEL {WEB_CONTENT_LABEL}={label}-{tag}\n")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)


def http(method: str, url: str, body=None, headers=None, timeout: float = 10) -> Response:
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


class Compose:
    """One compose project: its command (Compose v2 `docker compose`, or Debian's
    docker-compose 1.29), its files and its .env."""

    def __init__(self, engine: Engine, project: str, directory: Path, files: list[str],
                 env_file: Path, v2: bool = True):
        self.engine = engine
        self.project = project
        self.directory = directory
        self.files = files
        self.env_file = env_file
        self.v2 = v2

    def command(self) -> list[str]:
        base = ["docker", "compose"] if self.v2 else ["/usr/bin/docker-compose"]
        args = base + ["--project-name", self.project, "--env-file", str(self.env_file)]
        if self.v2:
            args += ["--project-directory", str(self.directory)]
        for file in self.files:
            args += ["-f", str(self.directory / file)]
        return args

    def __call__(self, *args: str, check: bool = True, timeout: float = 600, **kwargs):
        kwargs.setdefault("capture_output", True)
        result = subprocess.run(
            self.command() + list(args), env=self.engine.env, cwd=self.directory,
            text=True, timeout=timeout, **kwargs,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)} exited {result.returncode}\n{result.stdout}{result.stderr}")
        return result

    def container(self, service: str) -> str:
        # --all: a container that is restarting or has exited is listed too.
        return self("ps", "--all", "-q", service).stdout.strip()

    def inspect(self, service: str) -> dict:
        return json.loads(self.engine.docker("inspect", self.container(service)).stdout)[0]

    def state(self, service: str) -> str:
        """running/healthy, running/starting, exited/, ... for the service's container."""
        container = self.container(service)
        if not container:
            return "absent/"
        return self.engine.docker(
            "inspect", "-f", "{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}", container
        ).stdout.strip()

    def wait_healthy(self, *services: str, timeout: float = 180):
        for service in services:
            eventually(lambda s=service: self.state(s) == "running/healthy", timeout,
                       what=f"{service} to turn healthy", interval=0.5)

    def logs(self, service: str) -> str:
        result = self("logs", "--no-color", service, check=False)
        return result.stdout + result.stderr

    def profiles(self) -> list[str]:
        """Every profile the compose files name (monitoring)."""
        import yaml

        return sorted({profile for file in self.files
                       for service in (yaml.safe_load((self.directory / file).read_text()).get("services") or {}).values()
                       for profile in (service or {}).get("profiles", [])})

    def down(self):
        log(f"compose down -v ({self.project})")
        # With every profile: `down` leaves the containers and volumes of a profile that is
        # not on, and the engine keeps them for the next run.
        profiles = [arg for profile in self.profiles() for arg in ("--profile", profile)]
        self(*profiles, "down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)


class Host:
    """A folder laid out like the EC2 host's /srv/messages: the delivery files, .env,
    secrets/, backups/, db-data/ and the deploy state, with the prod stack run from it by Compose v2
    exactly as scripts/deploy runs it there."""

    def __init__(self, engine: Engine, path: Path, project: str, registry: str, tag: str):
        self.engine = engine
        self.path = path
        self.project = project
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        files = run("git", "ls-files", "-z", "--", *delivery_files(), cwd=ROOT, capture_output=True).stdout
        for name in filter(None, files.split("\0")):
            target = path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Published even with TLS off: two stacks up at once (a module's and a test's own)
        # must not both ask for the default 127.0.0.1:8443.
        self.https_port = free_port()
        # The deploy user owns backups/ and runs the backup service as itself.
        self.backup_uid = 1000
        (path / ".env").write_text(
            f"COMPOSE_PROJECT_NAME={project}\nREGISTRY={registry}\nIMAGE_TAG={tag}\n"
            f"HTTP_PORT=127.0.0.1:{self.port}\nHTTPS_PORT=127.0.0.1:{self.https_port}\n"
            f"MYSQL_DATABASE=messages\nMYSQL_USER=messages\n"
            f"BACKUP_UID={self.backup_uid}\nBACKUP_GID={self.backup_uid}\n"
            # Each stack's own offsite bridge: two stacks may be up at once on this engine.
            f"OFFSITE_BRIDGE=offsite{secrets.token_hex(3)}\n"
        )
        (path / "secrets").mkdir(mode=0o700)
        self.secrets = {}
        for name in ("db_password", "db_root_password", "admin_token", "token_sealing_key", "db_backup_password"):
            value = secrets.token_hex(32)
            (path / "secrets" / name).write_text(value + "\n")
            (path / "secrets" / name).chmod(0o444)
            self.secrets[name] = value
        # The alert receivers' secrets, empty as scripts/prepare-host leaves them for the operator.
        # The backup services' AWS credentials too: empty on EC2, where the instance role serves.
        for name in ("alert_smtp_password", "alert_smtp_ca", "alert_webhook_url", "backup_aws_credentials"):
            (path / "secrets" / name).touch(mode=0o644)
        (path / "backups").mkdir(mode=0o700)
        shutil.chown(path / "backups", self.backup_uid, self.backup_uid)
        # The database's folder, the database container's user's (as scripts/prepare-host
        # makes it).
        (path / "db-data").mkdir(mode=0o700)
        shutil.chown(path / "db-data", DB_UID, DB_UID)
        (path / ".deploy").mkdir(mode=0o755)
        self.compose = Compose(engine, project, path, ["docker-compose.yml", "docker-compose.prod.yml"],
                               path / ".env")

    @property
    def env(self) -> dict[str, str]:
        """The host scripts' environment. DEPLOY_PULL=never: this engine reaches no registry;
        the images were built into it (the EC2 host pulls every deploy's images)."""
        return {**self.engine.env, "DEPLOY_HEALTH_TIMEOUT": "60", "DEPLOY_PULL": "never"}

    def script(self, *args: str, check: bool = True, timeout: float = 600, **env: str):
        """Runs one of the host's scripts (scripts/deploy, scripts/rollback, ...) from the host
        folder, as Jenkins does over ssh."""
        result = subprocess.run(
            [str(self.path / "scripts" / args[0]), *args[1:]],
            env={**self.env, **env},
            cwd=self.path, capture_output=True, text=True, timeout=timeout,
        )
        log(f"{' '.join(args)} exited {result.returncode}")
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n{result.stdout}{result.stderr}")
        return result

    def state(self, name: str) -> str:
        path = self.path / ".deploy" / name
        return path.read_text().strip() if path.exists() else ""

    def sql(self, query: str, database: str = "messages") -> list[list[str]]:
        """Runs SQL as root inside the db container; returns the rows as lists of strings."""
        result = self.compose(
            "exec", "-T", "db", "sh", "-c",
            'mariadb -uroot -p"$(cat /run/secrets/db_root_password)" --default-character-set=utf8mb4 --batch --raw --skip-column-names "$0"',
            database, input=query,
        )
        return [line.split("\t") for line in result.stdout.splitlines()]

    def down(self):
        self.compose.down()


def snapshot(prod) -> list:
    """Every table of the live database: its definition and its rows with each column as HEX
    (NULL spelled out), in the order of all the columns."""
    parts = []
    tables = prod.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'messages' "
                      "AND table_type = 'BASE TABLE' ORDER BY table_name")
    for (table,) in tables:
        columns = [c for (c,) in prod.sql("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                                          f"'messages' AND table_name = '{table}' ORDER BY ordinal_position")]
        hexed = ", ".join(f"IFNULL(HEX(`{c}`), 'NULL')" for c in columns)
        order = ", ".join(str(i) for i in range(1, len(columns) + 1))
        parts.append(prod.sql(f"SHOW CREATE TABLE `{table}`"))
        parts.append(prod.sql(f"SELECT {hexed} FROM `{table}` ORDER BY {order}"))
    return parts
