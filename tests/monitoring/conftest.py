"""Fixtures of the monitoring tests: the shipped monitoring files, and for the end-to-end
tests a real stack on local ports — a throwaway MariaDB, the API binary, the project's nginx
config, Debian's prometheus-nginx-exporter and prometheus-mysqld-exporter, Alertmanager,
a Pushgateway (Debian's prometheus-pushgateway) for the backup job, Prometheus running
the shipped config with local targets and short intervals, and Alertmanager configured by
monitoring/alertmanager/render to deliver to a local SMTP server and webhook listener
(receivers.py).

Environment: API_BIN (the API binary, built beforehand; default target/debug/messages-api).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

import harness  # noqa: E402
from client import request  # noqa: E402
from harness import ROOT, eventually, free_port  # noqa: E402
from receivers import SmtpReceiver, WebhookReceiver  # noqa: E402

MONITORING = ROOT / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus" / "prometheus.yml"
RULES = MONITORING / "prometheus" / "rules.yml"
RENDER_ALERTMANAGER = MONITORING / "alertmanager" / "render"

# The test Prometheus scrapes and evaluates every second, so alerts fire within their
# `for:` plus a few seconds.
SCRAPE_INTERVAL = 1
EVALUATION_INTERVAL = 1
# Alertmanager's timings for the tests: a notification leaves a second after its alert
# arrives, a resolution at the next flush a second later.
ALERT_TIMINGS = {"ALERT_GROUP_WAIT": "1s", "ALERT_CRITICAL_GROUP_WAIT": "1s", "ALERT_GROUP_INTERVAL": "1s"}
# The bases of the messages' links, as an operator would set them.
RUNBOOK_BASE_URL = "https://git.example.org/messages/blob/main"
DASHBOARD_BASE_URL = "https://grafana.example.org"


def render_alertmanager(out_dir, settings):
    """Runs monitoring/alertmanager/render with exactly `settings` (and PATH) as its
    environment; returns the finished process."""
    env = {"PATH": os.environ["PATH"], **settings}
    return subprocess.run([str(RENDER_ALERTMANAGER), str(out_dir)], env=env, capture_output=True, text=True)


class Process:
    """A background process with its output in LOG_DIR/NAME.log; stopped with SIGTERM."""

    def __init__(self, name, args, log_dir, env=None, cwd=None):
        self.name, self.args, self.env, self.cwd = name, args, env, cwd
        self.log = log_dir / f"{name}.log"
        self.proc = None

    def start(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=self.cwd, start_new_session=True)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class MariaDB:
    """A throwaway MariaDB server that can be stopped and started again on the same data."""

    def __init__(self, run_dir):
        self.dir = run_dir / "mariadb"
        self.port = free_port()
        self.socket = self.dir / "mariadb.sock"
        mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        user = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run(["mariadb-install-db", "--no-defaults", *user, f"--datadir={self.dir}/data",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True)
        self.process = Process("mariadb", [
            mariadbd, "--no-defaults", *user, f"--datadir={self.dir}/data", f"--socket={self.socket}",
            f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
            f"--pid-file={self.dir}/mariadb.pid"], run_dir)

    def start(self):
        self.process.start()
        eventually(lambda: subprocess.run(
            ["mariadb-admin", "--no-defaults", f"--socket={self.socket}", "-uroot", "ping"],
            capture_output=True).returncode == 0, 60, "MariaDB to accept connections")

    def stop(self):
        self.process.stop()

    def sql(self, statement):
        subprocess.run(["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot", "-e", statement],
                       check=True)


class Prometheus:
    def __init__(self, url):
        self.url = url

    def get(self, path, **params):
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr):
        return self.get("/api/v1/query", query=expr)["result"]

    def alerts(self, name, state="firing"):
        return [a for a in self.get("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == name and (state is None or a["state"] == state)]

    def targets(self):
        return self.get("/api/v1/targets")["activeTargets"]


def local_prometheus_config(targets, alertmanager):
    """The shipped config, with each job's service discovery replaced by its local target
    and intervals shortened; everything else (jobs, rule file, alerting) kept."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = f"{SCRAPE_INTERVAL}s"
    config["global"]["evaluation_interval"] = f"{EVALUATION_INTERVAL}s"
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / f) for f in config["rule_files"]]
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == set(targets), f"the shipped jobs {sorted(jobs)} need a local target each"
    for job in config["scrape_configs"]:
        for key in [k for k in job if k.endswith("_sd_configs") or k in ("static_configs", "relabel_configs")]:
            del job[key]
        address, labels = targets[job["job_name"]]
        job["static_configs"] = [{"targets": [address], "labels": labels}]
    return config


def pytest_configure(config):
    config.addinivalue_line("markers", "settings(**given): the operator's settings a test's Alertmanager is rendered with")


api_bin = harness.api_bin
run_dir = harness.run_dir_fixture("messages-monitoring.")
pytest_sessionfinish = harness.remove_run_dir_after_green_run
pytest_terminal_summary = harness.report_kept_run_dir("*.log")


@pytest.fixture(scope="session")
def stack(run_dir, api_bin):
    """The whole stack, started once for the end-to-end tests, in dependency order."""
    started = []

    def start(process):
        started.append(process)
        return process.start()

    try:
        db = MariaDB(run_dir)
        started.append(db)
        db.start()
        db.sql("CREATE DATABASE messages; CREATE USER 'messages'@'127.0.0.1' IDENTIFIED BY 'messages';"
               " GRANT ALL PRIVILEGES ON messages.* TO 'messages'@'127.0.0.1';"
               " GRANT PROCESS, REPLICATION CLIENT ON *.* TO 'messages'@'127.0.0.1';")

        api_port = free_port()
        api_env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(api_port), "LOG_FORMAT": "json",
                   "DATABASE_URL": f"mysql://messages:messages@127.0.0.1:{db.port}/messages",
                   "TOKEN_SEALING_KEY": "the monitoring tests' token sealing secret, 32+ bytes"}
        # From run_dir, so that no .env of the work tree changes its settings.
        api = start(Process("api", [str(api_bin)], run_dir, env=api_env, cwd=run_dir))
        api_url = f"http://127.0.0.1:{api_port}"
        eventually(lambda: request("GET", f"{api_url}/health").status == 200, 60, "the API to be healthy")

        nginx_prefix, nginx_port = run_dir / "nginx", free_port()
        nginx_lib = ROOT / "scripts/lib/nginx.sh"
        subprocess.run(["bash", nginx_lib, "render", nginx_prefix, f"127.0.0.1:{api_port}",
                        f"127.0.0.1:{nginx_port}"], check=True, env={**os.environ, "STATUS_LISTEN": ""})
        subprocess.run(["bash", nginx_lib, "start", nginx_prefix], check=True)
        started.append(NginxStopper(nginx_lib, nginx_prefix))

        nginx_exporter_port = free_port()
        start(Process("nginx-exporter", [
            "prometheus-nginx-exporter", f"-nginx.scrape-uri=unix:{nginx_prefix}/status.sock:/stub_status",
            f"-web.listen-address=127.0.0.1:{nginx_exporter_port}"], run_dir))
        mysqld_exporter_port = free_port()
        start(Process("mysqld-exporter", [
            "prometheus-mysqld-exporter", f"--web.listen-address=127.0.0.1:{mysqld_exporter_port}"], run_dir,
            env={**os.environ, "DATA_SOURCE_NAME": f"messages:messages@(127.0.0.1:{db.port})/"}))

        smtp = SmtpReceiver(free_port()).start()
        started.append(smtp)
        webhook = WebhookReceiver(free_port()).start()
        started.append(webhook)
        webhook_url_file = run_dir / "alert_webhook_url"
        webhook_url_file.write_text(webhook.url + "\n")
        rendered = render_alertmanager(run_dir / "alertmanager-config", {
            "ALERT_EMAIL_TO": "oncall@example.org", "ALERT_EMAIL_FROM": "alertmanager@example.org",
            "ALERT_SMTP_SMARTHOST": smtp.smarthost, "ALERT_SMTP_REQUIRE_TLS": "false",
            "ALERT_WEBHOOK_URL_FILE": str(webhook_url_file),
            "ALERT_RUNBOOK_BASE_URL": RUNBOOK_BASE_URL, "ALERT_DASHBOARD_BASE_URL": DASHBOARD_BASE_URL,
            **ALERT_TIMINGS})
        assert rendered.returncode == 0, rendered.stderr
        alertmanager_port = free_port()
        start(Process("alertmanager", [
            "prometheus-alertmanager", f"--config.file={run_dir}/alertmanager-config/alertmanager.yml",
            f"--storage.path={run_dir}/alertmanager", f"--web.listen-address=127.0.0.1:{alertmanager_port}",
            "--cluster.listen-address="], run_dir))

        pushgateway_port = free_port()
        start(Process("pushgateway", [
            "prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{pushgateway_port}",
            "--persistence.file="], run_dir))
        pushgateway_url = f"http://127.0.0.1:{pushgateway_port}"
        eventually(lambda: request("GET", f"{pushgateway_url}/-/ready").status == 200, 30,
                   "the Pushgateway to answer")

        prometheus_port = free_port()
        config = local_prometheus_config({
            "api": (f"127.0.0.1:{api_port}", {"service": "api"}),
            "nginx": (f"127.0.0.1:{nginx_exporter_port}", {}),
            "mysql": (f"127.0.0.1:{mysqld_exporter_port}", {}),
            "pushgateway": (f"127.0.0.1:{pushgateway_port}", {}),
            "prometheus": (f"127.0.0.1:{prometheus_port}", {}),
            "alertmanager": (f"127.0.0.1:{alertmanager_port}", {}),
        }, f"127.0.0.1:{alertmanager_port}")
        config_file = run_dir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        start(Process("prometheus", [
            "prometheus", f"--config.file={config_file}", f"--storage.tsdb.path={run_dir}/prometheus-data",
            f"--web.listen-address=127.0.0.1:{prometheus_port}"], run_dir))
        prometheus = Prometheus(f"http://127.0.0.1:{prometheus_port}")
        eventually(lambda: request("GET", f"{prometheus.url}/-/ready").status == 200, 60, "Prometheus to answer")

        yield Stack(db=db, api=api, api_url=api_url, nginx_url=f"http://127.0.0.1:{nginx_port}",
                    nginx_prefix=nginx_prefix, prometheus=prometheus, pushgateway_url=pushgateway_url,
                    alertmanager_url=f"http://127.0.0.1:{alertmanager_port}", config=config,
                    smtp=smtp, webhook=webhook)
    finally:
        for process in reversed(started):
            process.stop()


class NginxStopper:
    def __init__(self, lib, prefix):
        self.lib, self.prefix = lib, prefix

    def stop(self):
        subprocess.run(["bash", self.lib, "stop", self.prefix], check=False)


class Stack:
    def __init__(self, **parts):
        self.__dict__.update(parts)
