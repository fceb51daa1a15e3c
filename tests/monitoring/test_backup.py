"""End to end: the real scripts/backup, run against the stack's MariaDB with
BACKUP_PUSHGATEWAY_URL set, reports to a real Pushgateway that the real Prometheus scrapes
with the shipped config. A push that fails warns and keeps the backup."""

import os
import subprocess
import time

import pytest

from conftest import ROOT
from harness import eventually, free_port

BACKUP = ROOT / "scripts" / "backup"
TIMESTAMP = 'messages_backup_last_success_timestamp_seconds{job="messages_backup"}'
SIZE = 'messages_backup_size_bytes{job="messages_backup"}'


def run_backup(stack, backup_dir, pushgateway_url):
    env = {**os.environ, "MYSQL_HOST": "127.0.0.1", "MYSQL_PORT": str(stack.db.port),
           "MYSQL_USER": "messages", "MYSQL_PASSWORD": "messages", "MYSQL_DB": "messages",
           "BACKUP_DIR": str(backup_dir), "BACKUP_PUSHGATEWAY_URL": pushgateway_url}
    run = subprocess.run([str(BACKUP)], env=env, capture_output=True, text=True, timeout=120)
    print(run.stdout, run.stderr)
    return run, list(backup_dir.glob("messages-*.sql.gz"))


def test_backup_reports_its_success_to_prometheus_and_backup_too_old_stays_quiet(stack, tmp_path):
    started = int(time.time())
    run, files = run_backup(stack, tmp_path / "backups", stack.pushgateway_url)
    assert run.returncode == 0 and len(files) == 1
    assert "warning" not in run.stderr
    finished = time.time()

    # The job label is the pushed one (honor_labels), so the alert's selector finds it.
    timestamp = eventually(lambda: [r for r in stack.prometheus.query(TIMESTAMP) if float(r["value"][1]) >= started],
                           15, "Prometheus to scrape the pushed timestamp")
    assert started <= float(timestamp[0]["value"][1]) <= finished
    size = stack.prometheus.query(SIZE)
    assert float(size[0]["value"][1]) == files[0].stat().st_size > 0

    # The alert's expression sees a fresh backup, and the rule is neither pending nor firing.
    assert stack.prometheus.query("time() - messages_backup_last_success_timestamp_seconds < 60")
    time.sleep(2)
    assert not stack.prometheus.alerts("BackupTooOld", state=None)


@pytest.mark.parametrize("pushgateway", ["stopped", "not-a-pushgateway"])
def test_backup_succeeds_and_warns_when_the_push_fails(stack, tmp_path, pushgateway):
    # Nothing listens on a fresh free port, as when the Pushgateway is stopped; Prometheus
    # answers the push with an HTTP error.
    url = f"http://127.0.0.1:{free_port()}" if pushgateway == "stopped" else stack.prometheus.url
    run, files = run_backup(stack, tmp_path / "backups", url)
    assert run.returncode == 0 and len(files) == 1 and files[0].stat().st_size > 0
    assert "warning: could not push the backup's metrics" in run.stderr
