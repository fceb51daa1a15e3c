"""The HTTPS tests' processes: a real ACME CA (Pebble, with pebble-challtestsrv as its DNS
server, which points the test's domain at 127.0.0.1), the project's nginx config rendered
with NGINX_TLS=on in front of the real API on SQLite, and certbot issuing through HTTP-01 into
the same layout the EC2 host uses (tls/, acme/ and scripts/prepare-host's deploy hook).

Run through scripts/test-tls, which installs what these need.

    API_BIN  the API binary (default target/debug/messages-api; not built here)

Everything started is stopped at the end. The run's folder (logs of the API, nginx, Pebble
and certbot) is removed after a green run and kept, with its path printed, after a failed one.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import ssl
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import harness  # noqa: E402
from client import Tls  # noqa: E402
from harness import ROOT, eventually, free_port  # noqa: E402

api_bin = harness.api_bin
run_dir = harness.run_dir_fixture("messages-tls.")
pytest_sessionfinish = harness.remove_run_dir_after_green_run
pytest_terminal_summary = harness.report_kept_run_dir("*.log, nginx/logs/, letsencrypt-logs/")

DOMAIN = "board.test"
# A library with a command mode, run by bash (it has no shebang of its own).
NGINX = ["bash", str(ROOT / "scripts/lib/nginx.sh")]


class Processes:
    """Processes of the session, stopped in reverse order at its end."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.directory / f"{name}.log", "w")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)
        self.started.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture(scope="session")
def processes(run_dir):
    started = Processes(run_dir)
    yield started
    started.stop()


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def self_signed(directory: Path, name: str, subject_alt_name: str) -> tuple[Path, Path]:
    """A self-signed certificate and its key: Pebble's own HTTPS, and the placeholder nginx
    serves before the first certificate is issued (as scripts/prepare-host makes it)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-addext", f"subjectAltName={subject_alt_name}",
            "-keyout", str(key), "-out", str(cert))
    return cert, key


@dataclass
class Pebble:
    directory_url: str
    https_cert: Path  # Pebble's own HTTPS certificate, for certbot to trust its API
    root: Path  # the root its certificates chain to

    def trusting_root(self) -> ssl.SSLContext:
        """A TLS client context that trusts Pebble's root and nothing else."""
        # With a cafile, create_default_context loads no system store: this root only.
        return ssl.create_default_context(cafile=str(self.root))


@dataclass
class Ports:
    http: int
    https: int


@pytest.fixture(scope="session")
def ports() -> Ports:
    return Ports(http=free_port(), https=free_port())


@pytest.fixture(scope="session")
def pebble(run_dir, processes, ports) -> Pebble:
    directory = run_dir / "pebble"
    directory.mkdir()
    cert, key = self_signed(directory, "pebble-https", "IP:127.0.0.1,DNS:localhost")
    dns, api_port, management = free_port(), free_port(), free_port()
    # The challenge test server only answers DNS here: every name is 127.0.0.1, so Pebble's
    # HTTP-01 validation reaches the nginx under test, on the port the config names.
    processes.start("challtestsrv", [
        "pebble-challtestsrv", "-management", f"127.0.0.1:{free_port()}", "-dns01", f"127.0.0.1:{dns}",
        "-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
    config = directory / "pebble.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{api_port}", "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(cert), "privateKey": str(key),
        "httpPort": ports.http, "tlsPort": free_port(), "ocspResponderURL": "",
        "externalAccountBindingRequired": False}}))
    # No artificial validation delay; no nonces rejected at random (Pebble's default 5%
    # exercises clients' retries, which is not what these tests are about).
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    process = processes.start("pebble", ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{dns}"], env=env)
    trust_pebble = ssl.create_default_context(cafile=str(cert))

    def fetch(url: str) -> bytes:
        assert process.poll() is None, f"pebble exited with {process.returncode}: see pebble.log"
        with urllib.request.urlopen(url, context=trust_pebble, timeout=5) as response:
            return response.read()

    directory_url = f"https://127.0.0.1:{api_port}/dir"
    eventually(lambda: fetch(directory_url), 30, "Pebble's ACME directory")
    root = directory / "root.pem"
    root.write_bytes(fetch(f"https://127.0.0.1:{management}/roots/0"))
    return Pebble(directory_url, cert, root)


@pytest.fixture(scope="session")
def api(api_bin, run_dir, processes) -> str:
    port = free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "DATABASE_URL": f"sqlite://{run_dir}/messages.db",
           "LOG_FORMAT": "json"}
    process = processes.start("api", [str(api_bin)], env=env, cwd=run_dir)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, f"the API exited with {process.returncode}: see api.log"
        with urllib.request.urlopen(base + "/health", timeout=2) as response:
            return response.status == 200

    eventually(healthy, 30, "the API's /health")
    return f"127.0.0.1:{port}"


@dataclass
class Host:
    """The EC2 host's TLS layout: DIR/tls holds what nginx serves, DIR/acme the challenges."""
    dir: Path
    nginx: Path  # nginx's prefix
    ports: Ports

    @property
    def tls(self) -> Path:
        return self.dir / "tls"

    @property
    def acme(self) -> Path:
        return self.dir / "acme"

    @property
    def https_base(self) -> str:
        return f"https://{DOMAIN}:{self.ports.https}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"


def nginx_env(host: Host, **extra: str) -> dict[str, str]:
    """The template variables of a host with TLS on, as compose gives them to the container;
    writes at a rate the load can keep to without 429s."""
    return {**os.environ, "NGINX_TLS": "on", "NGINX_TLS_LISTEN": f"127.0.0.1:{host.ports.https}",
            "TLS_CERTIFICATE": str(host.tls / "fullchain.pem"), "TLS_CERTIFICATE_KEY": str(host.tls / "privkey.pem"),
            "ACME_WEBROOT": str(host.acme), "WRITE_RATE_LIMIT": "200r/s", "WRITE_BURST": "200", **extra}


def render_nginx(host: Host, upstream: str, **extra: str) -> None:
    subprocess.run([*NGINX, "render", str(host.nginx), upstream, f"127.0.0.1:{host.ports.http}"],
                   env=nginx_env(host, **extra), check=True, capture_output=True)
    subprocess.run([*NGINX, "check", str(host.nginx)], check=True, capture_output=True)


@pytest.fixture(scope="session")
def host(run_dir, api, ports) -> Host:
    """nginx with TLS on, serving a self-signed placeholder until certbot's hook replaces it:
    the bootstrap of a new host, where nginx must start before any certificate is issued."""
    host = Host(run_dir / "host", run_dir / "nginx", ports)
    host.tls.mkdir(parents=True)
    host.acme.mkdir()
    cert, key = self_signed(host.tls, "placeholder", f"DNS:{DOMAIN}")
    cert.rename(host.tls / "fullchain.pem")
    key.rename(host.tls / "privkey.pem")
    render_nginx(host, api)
    subprocess.run([*NGINX, "start", str(host.nginx)], check=True, capture_output=True)
    yield host
    subprocess.run([*NGINX, "stop", str(host.nginx)], check=False, capture_output=True)


@dataclass
class Certbot:
    """certbot with its state in the run's folder, talking to Pebble, with the deploy hook
    scripts/prepare-host installs on the host (reloading this nginx instead of the container's)."""
    run_dir: Path
    host: Host
    pebble: Pebble

    @property
    def config_dir(self) -> Path:
        return self.run_dir / "letsencrypt"

    def hook(self) -> Path:
        hook = self.config_dir / "renewal-hooks/deploy/messages-web"
        if not hook.exists():
            hook.parent.mkdir(parents=True, exist_ok=True)
            text = subprocess.run([str(ROOT / "scripts/prepare-host"), "--print-tls-hook", "--dir", str(self.host.dir)],
                                  check=True, capture_output=True, text=True).stdout
            hook.write_text(text)
            hook.chmod(0o755)
        return hook

    def run(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "REQUESTS_CA_BUNDLE": str(self.pebble.https_cert),
               "MESSAGES_WEB_RELOAD": shlex.join([*NGINX, "reload", str(self.host.nginx)])}
        command = ["certbot", *args, "--non-interactive", "--config-dir", str(self.config_dir),
                   "--work-dir", str(self.run_dir / "letsencrypt-work"), "--logs-dir", str(self.run_dir / "letsencrypt-logs")]
        with open(self.run_dir / "certbot.log", "a") as log:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=120)
        assert result.returncode == 0, f"certbot {args[0]} failed: see certbot.log"
        return result

    def issue(self) -> None:
        """The first certificate, as the host's timer asks for it."""
        self.run("certonly", "--agree-tos", "--email", f"ops@{DOMAIN}", "--server", self.pebble.directory_url,
                 "--webroot", "-w", str(self.host.acme), "-d", DOMAIN, "--keep-until-expiring",
                 "--deploy-hook", str(self.hook()))

    def force_renewal(self) -> None:
        # Without a terminal, certbot renew first sleeps up to 8 minutes, spreading renewals
        # across the CA's clients; here it renews at once.
        self.run("renew", "--force-renewal", "--no-random-sleep-on-renew")


@pytest.fixture(scope="session")
def certbot(run_dir, host, pebble) -> Certbot:
    return Certbot(run_dir, host, pebble)


@pytest.fixture(scope="session")
def issued(certbot) -> Certbot:
    """The host after its first certificate: issued through HTTP-01 and installed by the hook."""
    certbot.issue()
    context = certbot.pebble.trusting_root()

    def served() -> bool:
        with socket.create_connection(("127.0.0.1", certbot.host.ports.https), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=DOMAIN):
                return True

    # The hook's reload returns at once; nginx's new workers follow within moments.
    eventually(served, 10, "the issued certificate served")
    return certbot


@pytest.fixture(scope="session")
def tls(pebble) -> Tls:
    return Tls(pebble.trusting_root())
