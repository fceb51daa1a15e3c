"""The monitoring profile on the production stack, as the EC2 host runs it (`--profile
monitoring`, docker-compose.yml + docker-compose.prod.yml): Prometheus, Alertmanager, the
Pushgateway and both exporters in containers of the stand-in images
(stand-in-images/prometheus: Debian's packages, older releases than the tags the compose
file names), every scrape target of monitoring/prometheus/prometheus.yml up, and one alert,
DatabaseDown, travelling from the stopped db container through mysqld-exporter, Prometheus
and Alertmanager to an SMTP server (aiosmtpd) on this machine.

Grafana is not run: Debian has no package to build a stand-in from, and no registry can be
reached. Its provisioning and dashboard are checked as files (tests/monitoring/test_files.py).

The stack keeps the compose file's own intervals (15 s scrapes and evaluations, the
critical route's 10 s group wait; the project has no setting for the first two), so the
alert takes its `for:` of a minute plus up to about 40 s.
"""

import json
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from engine import ROOT
from harness import eventually, free_port
from receivers import SmtpReceiver

# Every service of the profile but grafana, started explicitly (see above).
SERVICES = ("prometheus", "alertmanager", "pushgateway", "mysqld-exporter", "nginx-exporter")
PROMETHEUS_CONFIG = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
ALERT_EMAIL_TO = "oncall@example.org"


def network_address(prod, service: str, network: str) -> str:
    return prod.compose.inspect(service)["NetworkSettings"]["Networks"][f"{prod.project}_{network}"]["IPAddress"]


class Prometheus:
    """Prometheus's HTTP API, asked from this machine at the container's address on the
    frontend network (the compose file publishes no monitoring port but Grafana's)."""

    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **params):
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def targets(self) -> list[dict]:
        return self.get("/api/v1/targets", state="active")["activeTargets"]

    def value(self, expr: str) -> list[str]:
        return [sample["value"][1] for sample in self.get("/api/v1/query", query=expr)["result"]]


@pytest.fixture(scope="module")
def monitoring(prod):
    """The profile's services started on the running production stack, with Alertmanager
    sending email, without TLS or login (tests/monitoring tests those), to an SMTP server
    listening on the frontend network's gateway, this machine's address on that bridge."""
    frontend = json.loads(prod.engine.docker("network", "inspect", f"{prod.project}_frontend").stdout)[0]
    gateway = frontend["IPAM"]["Config"][0]["Gateway"]
    try:
        smtp = SmtpReceiver(free_port(), host=gateway).start()
    except OSError as error:
        pytest.skip(f"no SMTP server on {gateway}, the bridge's address, where the containers reach "
                    f"this machine: is the engine ({prod.engine.host}) on another one? {error}")
    with open(prod.path / ".env", "a") as env:
        env.write(f"ALERT_EMAIL_TO={ALERT_EMAIL_TO}\nALERT_EMAIL_FROM=alertmanager@example.org\n"
                  f"ALERT_SMTP_SMARTHOST={smtp.smarthost}\nALERT_SMTP_REQUIRE_TLS=false\n"
                  "ALERT_RUNBOOK_BASE_URL=https://git.example.org/messages/blob/main\n"
                  "ALERT_DASHBOARD_BASE_URL=https://grafana.example.org\n")
    started = time.monotonic()
    # --no-deps: db, edge and web run already, started by the deploys; compose would recreate
    # them if it judged their settings changed.
    prod.compose("--profile", "monitoring", "up", "-d", "--no-deps", *SERVICES)
    prometheus = Prometheus(f"http://{network_address(prod, 'prometheus', 'frontend')}:9090")
    eventually(lambda: urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=5).status == 200, 60,
               what="Prometheus to be ready")
    try:
        yield prometheus, smtp, started
    finally:
        # Stopped here, not at the session's end: the tests after these need the CPU.
        prod.compose("--profile", "monitoring", "rm", "--force", "--stop", *SERVICES, check=False)
        smtp.stop()


def expected_targets(prod) -> set[tuple[str, str]]:
    """(job, what identifies the target) for every target the shipped config defines on this
    stack: each static target's address, and for the API the compose services of the
    colors that run (dns_sd_configs; `service` is the relabelled DNS name)."""
    expected = set()
    for job in PROMETHEUS_CONFIG["scrape_configs"]:
        for static in job.get("static_configs", []):
            expected |= {(job["job_name"], address) for address in static["targets"]}
        for dns in job.get("dns_sd_configs", []):
            expected |= {(job["job_name"], name) for name in dns["names"]
                         if prod.compose.state(name).startswith("running/")}
    return expected


def scraped_targets(prometheus) -> set[tuple[str, str]]:
    """The same pairs for the active targets Prometheus has scraped successfully."""
    return {(t["labels"]["job"], t["labels"].get("service") or t["discoveredLabels"]["__address__"])
            for t in prometheus.targets() if t["health"] == "up"}


def test_every_scrape_target_the_config_defines_is_up(prod, monitoring, results):
    prometheus, _, started = monitoring
    expected = expected_targets(prod)
    # Every job has a target, and the API at least one running color: an empty list, or a
    # job that discovered nothing, cannot pass.
    assert {job for job, _ in expected} == {job["job_name"] for job in PROMETHEUS_CONFIG["scrape_configs"]}
    assert any(job == "api" for job, _ in expected)
    eventually(lambda: scraped_targets(prometheus) == expected and len(prometheus.targets()) == len(expected),
               90, what=f"exactly the targets {sorted(expected)} to be up", interval=1)
    took = time.monotonic() - started
    print(f"every target up {took:.1f}s after `up`: {sorted(expected)}")
    results.setdefault("monitoring", {})["all_targets_up_s"] = round(took, 1)
    # The exporters reach what they export: MySQL through the app's account, nginx's
    # stub_status on the web container's loopback.
    assert prometheus.value('mysql_up{job="mysql"}') == ["1"]
    assert prometheus.value('nginx_up{job="nginx"}') == ["1"]


def test_database_down_reaches_the_smtp_server_through_the_alertmanager_container(prod, monitoring, results):
    prometheus, smtp, _ = monitoring
    eventually(lambda: prometheus.value('mysql_up{job="mysql"}') == ["1"], 60, what="mysql_up to be 1")
    prod.compose("stop", "db")
    stopped = time.monotonic()
    try:
        # `for: 1m`, then at most a scrape and an evaluation (15 s each) on either side,
        # and the critical route's 10 s group wait.
        mail = eventually(lambda: next((m for m in smtp.mails if m["subject"].startswith("[FIRING")
                                        and "] DatabaseDown (" in m["subject"]), None),
                          150, what="DatabaseDown's email", interval=1)
        took = time.monotonic() - stopped
        print(f"DatabaseDown's email arrived {took:.1f}s after db stopped: {mail['subject']}")
        results.setdefault("monitoring", {})["database_down_email_s"] = round(took, 1)
        assert mail["to"] == [ALERT_EMAIL_TO]
        assert "The database is unreachable" in mail["text"]
        assert "Runbook: https://git.example.org/messages/blob/main/docs/monitoring.md#databasedown" in mail["text"]
    finally:
        prod.compose("start", "db")
        prod.compose.wait_healthy("db", timeout=120)
