"""Alertmanager's config as monitoring/alertmanager/render writes it from the ALERT_*
settings: the routes (checked by amtool itself), the secrets kept in files, and a clear
refusal of settings that cannot work. Delivery itself is tested end to end in test_stack."""

import shutil
import subprocess

import pytest
import yaml

from conftest import DASHBOARD_BASE_URL, RENDER_ALERTMANAGER, RUNBOOK_BASE_URL, render_alertmanager

SMTP_PASSWORD = "the SMTP password, only in its file"
WEBHOOK_URL = "https://chat.example.org/hooks/the-channel-credential"
# The render checks only that a PEM certificate is there; Alertmanager parses it
# (test_smtp_tls gives it a real one).
CA_CERTIFICATE = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def settings(tmp_path):
    """Every setting, as a production host has them."""
    (tmp_path / "smtp_password").write_text(SMTP_PASSWORD + "\n")
    (tmp_path / "webhook_url").write_text(WEBHOOK_URL + "\n")
    (tmp_path / "smtp_ca.pem").write_text(CA_CERTIFICATE)
    return {"ALERT_EMAIL_TO": "oncall@example.org", "ALERT_EMAIL_FROM": "alertmanager@example.org",
            "ALERT_SMTP_SMARTHOST": "smtp.example.org:587", "ALERT_SMTP_USERNAME": "alertmanager",
            "ALERT_SMTP_PASSWORD_FILE": str(tmp_path / "smtp_password"),
            "ALERT_SMTP_CA_FILE": str(tmp_path / "smtp_ca.pem"),
            "ALERT_WEBHOOK_URL_FILE": str(tmp_path / "webhook_url"),
            "ALERT_RUNBOOK_BASE_URL": RUNBOOK_BASE_URL + "/", "ALERT_DASHBOARD_BASE_URL": DASHBOARD_BASE_URL}


def rendered(out_dir, settings):
    result = render_alertmanager(out_dir, settings)
    assert result.returncode == 0, result.stderr
    config = out_dir / "alertmanager.yml"
    check = subprocess.run(["amtool", "check-config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    return config, result


def receiver_for(config, *labels):
    result = subprocess.run(["amtool", "config", "routes", "test", f"--config.file={config}", *labels],
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


def receivers(config):
    return {r["name"]: r for r in yaml.safe_load(config.read_text())["receivers"]}


def test_critical_alerts_go_by_email_and_webhook_warnings_by_email_resolutions_too(tmp_path, settings):
    config, _ = rendered(tmp_path / "out", settings)
    assert receiver_for(config, "alertname=DatabaseDown", "severity=critical") == "page"
    assert receiver_for(config, "alertname=BackupTooOld", "severity=warning") == "ticket"
    page, ticket = receivers(config)["page"], receivers(config)["ticket"]
    assert set(page) == {"name", "email_configs", "slack_configs"}
    assert set(ticket) == {"name", "email_configs"}
    for integration in page["email_configs"] + page["slack_configs"] + ticket["email_configs"]:
        assert integration["send_resolved"] is True
    (email,) = page["email_configs"]
    assert email["to"] == "oncall@example.org" and email["smarthost"] == "smtp.example.org:587"
    assert email["require_tls"] is True


def test_the_secrets_stay_in_their_files(tmp_path, settings):
    config, _ = rendered(tmp_path / "out", settings)
    text = config.read_text()
    assert SMTP_PASSWORD not in text and WEBHOOK_URL not in text
    page = receivers(config)["page"]
    assert page["email_configs"][0]["auth_password_file"] == settings["ALERT_SMTP_PASSWORD_FILE"]
    assert page["slack_configs"][0]["api_url_file"] == settings["ALERT_WEBHOOK_URL_FILE"]


def test_the_messages_link_to_the_runbook_and_dashboard_bases(tmp_path, settings):
    rendered(tmp_path / "out", settings)
    template = (tmp_path / "out" / "messages.tmpl").read_text()
    # The trailing slash of a base is dropped: one slash between base and annotation.
    assert f"Runbook: {RUNBOOK_BASE_URL}/{{{{ .Annotations.runbook_url }}}}" in template
    assert f"Dashboard: {DASHBOARD_BASE_URL}/{{{{ .Annotations.dashboard }}}}" in template


def test_without_settings_alertmanager_runs_and_says_that_alerts_reach_no_one(tmp_path):
    config, result = rendered(tmp_path / "out", {})
    assert "alerts reach no one" in result.stderr
    assert receivers(config) == {"page": {"name": "page"}, "ticket": {"name": "ticket"}}


def test_an_empty_webhook_file_leaves_the_webhook_out_with_a_warning(tmp_path, settings):
    (tmp_path / "webhook_url").write_text("")
    config, result = rendered(tmp_path / "out", settings)
    assert "critical alerts go to no webhook" in result.stderr
    assert "slack_configs" not in receivers(config)["page"]


def test_without_a_username_there_is_no_smtp_login(tmp_path, settings):
    del settings["ALERT_SMTP_USERNAME"]
    config, _ = rendered(tmp_path / "out", settings)
    (email,) = receivers(config)["page"]["email_configs"]
    assert "auth_username" not in email and "auth_password_file" not in email


@pytest.mark.parametrize("change,says", [
    ({"ALERT_EMAIL_FROM": ""}, "ALERT_EMAIL_FROM"),
    ({"ALERT_SMTP_SMARTHOST": ""}, "ALERT_SMTP_SMARTHOST"),
    ({"ALERT_SMTP_SMARTHOST": "smtp.example.org"}, "must be host:port"),
    ({"ALERT_SMTP_PASSWORD_FILE": "/nonexistent/smtp_password"}, "ALERT_SMTP_PASSWORD_FILE"),
    ({"ALERT_SMTP_REQUIRE_TLS": "yes"}, "ALERT_SMTP_REQUIRE_TLS must be true or false"),
    ({"ALERT_RUNBOOK_BASE_URL": ""}, "ALERT_RUNBOOK_BASE_URL is not set"),
    ({"ALERT_DASHBOARD_BASE_URL": ""}, "ALERT_DASHBOARD_BASE_URL is not set"),
    ({"ALERT_EMAIL_TO": 'oncall@example.org", bcc: "x@example.org'}, "ALERT_EMAIL_TO holds a quote"),
])
def test_settings_that_cannot_work_are_refused_and_nothing_is_written(tmp_path, settings, change, says):
    result = render_alertmanager(tmp_path / "out", {**settings, **change})
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_busybox_alone_renders_the_same_files_as_in_the_alertmanager_image(tmp_path, settings):
    # The prom/alertmanager image has busybox and nothing else: its sh and awk, with no
    # other command on the PATH, must write what the host's tools write.
    busybox = shutil.which("busybox")
    bin_dir = tmp_path / "busybox-bin"
    bin_dir.mkdir()
    for applet in subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split():
        (bin_dir / applet).symlink_to(busybox)
    result = subprocess.run([str(bin_dir / "sh"), str(RENDER_ALERTMANAGER), str(tmp_path / "busybox")],
                            env={"PATH": str(bin_dir), **settings}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rendered(tmp_path / "host", settings)
    for name in ("alertmanager.yml", "messages.tmpl"):
        assert (tmp_path / "busybox" / name).read_text() == (tmp_path / "host" / name).read_text(), name


def test_a_ca_file_makes_the_relays_certificate_checked_against_it(tmp_path, settings):
    config, _ = rendered(tmp_path / "out", settings)
    (email,) = receivers(config)["page"]["email_configs"]
    assert email["tls_config"] == {"ca_file": settings["ALERT_SMTP_CA_FILE"]}


def test_an_empty_ca_file_leaves_the_system_trust_store(tmp_path, settings):
    # What scripts/prepare-host leaves in secrets/alert_smtp_ca until the operator fills it.
    (tmp_path / "smtp_ca.pem").write_text("")
    config, _ = rendered(tmp_path / "out", {**settings, "ALERT_SMTP_CA_FILE": str(tmp_path / "smtp_ca.pem")})
    (email,) = receivers(config)["page"]["email_configs"]
    assert "tls_config" not in email


def test_a_ca_file_without_a_certificate_is_refused(tmp_path, settings):
    (tmp_path / "smtp_ca.pem").write_text("not a certificate\n")
    result = render_alertmanager(tmp_path / "out", {**settings, "ALERT_SMTP_CA_FILE": str(tmp_path / "smtp_ca.pem")})
    assert result.returncode == 2 and "holds no PEM certificate" in result.stderr, result.stderr
