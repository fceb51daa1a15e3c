"""Email through a relay as production has one: a real Alertmanager, configured by
monitoring/alertmanager/render, delivers to an SMTP server (aiosmtpd) that takes mail only
after STARTTLS and a login (LOGIN or PLAIN), its certificate signed by a private CA that
the operator gives as ALERT_SMTP_CA_FILE, the password read from ALERT_SMTP_PASSWORD_FILE.
The alert is posted to Alertmanager's API: the path from Prometheus is test_stack's."""

import json
import re
import ssl
import subprocess
import urllib.request

import pytest
from conftest import ALERT_TIMINGS, DASHBOARD_BASE_URL, RUNBOOK_BASE_URL, Process, render_alertmanager
from harness import eventually, free_port
from receivers import SmtpReceiver

USERNAME = "alertmanager"
PASSWORD = "the relay's password, from its file"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A private CA, and the relay's certificate it signed, for 127.0.0.1 (the smarthost's
    host, which Alertmanager checks the certificate against)."""
    folder = tmp_path_factory.mktemp("smtp-tls")

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test relay CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    openssl("req", *ec, "-keyout", "relay.key", "-out", "relay.csr", "-subj", "/CN=127.0.0.1")
    (folder / "relay.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "relay.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "relay.pem", "-days", "2", "-extfile", "relay.ext")
    return folder


@pytest.fixture
def relay(certificates, request):
    """The SMTP server: STARTTLS required, then AUTH as USERNAME with PASSWORD, by LOGIN or
    PLAIN (Alertmanager takes the first the relay offers), or only the mechanism a test
    names with @pytest.mark.settings(mechanism=...)."""
    marker = request.node.get_closest_marker("settings")
    mechanism = marker.kwargs.get("mechanism") if marker else None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates / "relay.pem", certificates / "relay.key")
    server = SmtpReceiver(free_port(), tls_context=context, logins={USERNAME: PASSWORD},
                          mechanisms=(mechanism,) if mechanism else ("LOGIN", "PLAIN")).start()
    yield server
    server.stop()


class Alertmanager:
    def __init__(self, url, process):
        self.url, self.process = url, process

    def post_alert(self, name):
        alert = [{"labels": {"alertname": name, "severity": "critical", "job": "mysql"},
                  "annotations": {"summary": "The database is unreachable", "description": "Posted by the test.",
                                  "runbook_url": f"docs/monitoring.md#{name.lower()}",
                                  "dashboard": "d/messages-board"}}]
        request = urllib.request.Request(f"{self.url}/api/v2/alerts", data=json.dumps(alert).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    def failed_email_notifications(self):
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        found = re.search(r'^alertmanager_notifications_failed_total\{[^}]*integration="email"[^}]*\} (\S+)$',
                          metrics, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def log(self):
        return self.process.log.read_text(errors="replace")


@pytest.fixture
def alertmanager(run_dir, relay, certificates, request):
    """Alertmanager rendered for `relay` with the operator's settings; a test changes them
    with @pytest.mark.settings(password=..., ca_file=...)."""
    marker = request.node.get_closest_marker("settings")
    given = marker.kwargs if marker else {}
    # Without the brackets of parametrized names: Alertmanager reads its templates by a
    # glob relative to the config, where "[LOGIN]" would be a character class.
    name = "alertmanager-" + re.sub(r"[^\w-]", "-", request.node.name)
    folder = run_dir / name
    folder.mkdir()
    password_file = folder / "smtp_password"
    # Without a final newline: Debian's Alertmanager (0.25) would send it as part of the
    # password; 0.27, the compose file's image, trims it (prometheus/alertmanager#3549).
    password_file.write_text(given.get("password", PASSWORD))
    settings = {"ALERT_EMAIL_TO": "oncall@example.org", "ALERT_EMAIL_FROM": "alertmanager@example.org",
                "ALERT_SMTP_SMARTHOST": relay.smarthost, "ALERT_SMTP_USERNAME": USERNAME,
                "ALERT_SMTP_PASSWORD_FILE": str(password_file),
                "ALERT_SMTP_CA_FILE": given.get("ca_file", str(certificates / "ca.pem")),
                "ALERT_RUNBOOK_BASE_URL": RUNBOOK_BASE_URL, "ALERT_DASHBOARD_BASE_URL": DASHBOARD_BASE_URL,
                **ALERT_TIMINGS}
    rendered = render_alertmanager(folder / "config", settings)
    assert rendered.returncode == 0, rendered.stderr
    port = free_port()
    process = Process(name, [
        "prometheus-alertmanager", f"--config.file={folder}/config/alertmanager.yml",
        f"--storage.path={folder}/data", f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        run_dir).start()
    url = f"http://127.0.0.1:{port}"
    eventually(lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=5).status == 200, 30,
               "Alertmanager to be ready")
    yield Alertmanager(url, process)
    process.stop()


@pytest.mark.parametrize("mechanism", [
    pytest.param("LOGIN", marks=pytest.mark.settings(mechanism="LOGIN")),
    pytest.param("PLAIN", marks=pytest.mark.settings(mechanism="PLAIN")),
])
def test_email_goes_over_starttls_logged_in_with_the_password_from_its_file(alertmanager, relay, mechanism):
    alertmanager.post_alert("DatabaseDown")
    mail = eventually(lambda: relay.mails and relay.mails[0], 30, "the email at the relay")
    assert mail["subject"].startswith("[FIRING:1] DatabaseDown (critical)"), mail
    # session.ssl's protocol: only set once STARTTLS succeeded.
    assert mail["tls"] in ("TLSv1.2", "TLSv1.3"), mail
    assert mail["auth"] == {"login": USERNAME, "mechanism": mechanism}, mail
    assert relay.auth_attempts and all(attempt["success"] for attempt in relay.auth_attempts)
    assert alertmanager.failed_email_notifications() == 0


@pytest.mark.settings(password="not the relay's password")
def test_a_wrong_password_delivers_nothing_and_alertmanager_counts_the_failure(alertmanager, relay):
    alertmanager.post_alert("DatabaseDown")
    eventually(lambda: alertmanager.failed_email_notifications() > 0, 30,
               "alertmanager_notifications_failed_total{integration=\"email\"} to count a failure")
    assert relay.auth_attempts and not any(attempt["success"] for attempt in relay.auth_attempts), relay.auth_attempts
    assert relay.mails == []
    assert "535" in alertmanager.log(), "Alertmanager's log names the relay's refusal (535)"


@pytest.mark.settings(ca_file="")
def test_without_the_ca_file_the_relays_certificate_is_refused_before_the_password_is_sent(alertmanager, relay):
    alertmanager.post_alert("DatabaseDown")
    eventually(lambda: alertmanager.failed_email_notifications() > 0, 30,
               "alertmanager_notifications_failed_total{integration=\"email\"} to count a failure")
    assert relay.auth_attempts == [] and relay.mails == []
    assert "x509" in alertmanager.log() or "certificate" in alertmanager.log()
