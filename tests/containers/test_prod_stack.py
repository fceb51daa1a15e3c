"""The production stack (docker-compose.yml + docker-compose.prod.yml) with Compose v2, as
the EC2 host runs it: hardened containers, secrets as files, networks that keep nginx
away from the database, restarts, backups."""

import os
import re
import signal
from pathlib import Path

import checks
from engine import ROOT, compose_db_image
from harness import eventually
from stack import http

HARDENED = ("db", "edge", "web", "backup", "binlog-archiver")


def live_color(prod) -> str:
    return "api-" + prod.state("color")


def test_every_service_is_healthy_and_the_migration_job_succeeded(prod):
    prod.compose.wait_healthy("db", live_color(prod), "web", timeout=60)
    assert prod.compose.state("backup") == "running/"
    assert prod.compose.state("binlog-archiver") == "running/"
    # The job runs with `compose run --rm`, so no container of it is left to ask: its work
    # shows in the database. Every migration the release ships is applied, and not by the
    # API itself, which starts with RUN_MIGRATIONS=false.
    assert "RUN_MIGRATIONS=false" in prod.compose.inspect(live_color(prod))["Config"]["Env"]
    shipped = sorted(path.name.split("_")[0].replace("-", "")
                     for path in (ROOT / "migrations/mysql").iterdir() if path.is_dir())
    applied = sorted(row[0] for row in prod.sql("SELECT version FROM __diesel_schema_migrations"))
    assert shipped and applied == shipped, f"applied {applied}, the release ships {shipped}"


def test_the_db_runs_the_mariadb_the_compose_files_name_with_the_images_own_health_check(prod):
    """The engine shipped is the engine tested: the db is the compose files' image, the server
    answering is that release series of MariaDB, and the backup services' client is of the
    same series."""
    image = compose_db_image()
    series = image.split(":")[1]
    db = prod.compose.inspect("db")
    assert db["Config"]["Image"] == image
    for service in ("backup", "binlog-archiver"):
        assert prod.compose.inspect(service)["Config"]["Image"] == "local/messages-backup:v1", service
    client = prod.compose("exec", "-T", "backup", "mariadb-dump", "--version").stdout
    assert f"Distrib {series}." in client, client
    assert db["Config"]["Healthcheck"]["Test"] == ["CMD", "healthcheck.sh", "--connect", "--innodb_initialized"]
    assert prod.compose.state("db") == "running/healthy"
    [[version]] = prod.sql("SELECT VERSION()")
    assert version.startswith(series + ".") and "MariaDB" in version, version
    checked = prod.compose("exec", "-T", "db", "healthcheck.sh", "--connect", "--innodb_initialized", check=False)
    assert checked.returncode == 0, checked.stderr


def test_the_db_health_check_fails_while_no_server_answers(prod):
    """The check is not vacuous: in a container of the image whose server never started, it
    fails (a bare `mysqladmin ping` without an account would pass once anything answers)."""
    result = prod.engine.docker("run", "--rm", "--entrypoint", "healthcheck.sh", compose_db_image(),
                                "--connect", "--innodb_initialized", check=False)
    assert result.returncode != 0


def test_containers_are_read_only_non_root_without_capabilities_and_limited(prod):
    for service in (*HARDENED, live_color(prod)):
        container = prod.compose.inspect(service)
        host_config = container["HostConfig"]
        assert host_config["ReadonlyRootfs"], service
        assert host_config["CapDrop"] == ["ALL"], service
        assert "no-new-privileges:true" in host_config["SecurityOpt"], service
        assert host_config["Memory"] > 0, service
        # Read from the host: edge's image (pause) has nothing to run `id` with.
        status = Path(f"/proc/{container['State']['Pid']}/status").read_text()
        uid = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE).group(1)
        assert uid != "0", f"{service} runs as root"


def test_the_checks_through_nginx_pass(prod):
    checks.page_is_served(prod.url)
    checks.create_list_edit_and_delete(prod.url)
    checks.new_message_arrives_on_the_stream(prod.url)
    checks.api_docs_are_served(prod.url)
    checks.metrics_are_refused(prod.url)


def test_web_cannot_reach_the_database(prod):
    """curl from inside web, as HTTP: a reached MySQL answers at once with its (non-HTTP)
    greeting, which curl rejects; an unreachable one times out or refuses the connection."""

    def curl(url: str):
        return prod.compose("exec", "-T", "web", "curl", "-sS", "--max-time", "3", "--output", "/dev/null",
                            url, check=False)

    by_name = curl("http://db:3306/")
    # 6 "Could not resolve host", or 28 "Resolving timed out": db's name is unknown to web.
    assert by_name.returncode in (6, 28) and "resolv" in by_name.stderr.lower(), by_name.stderr
    networks = prod.compose.inspect("db")["NetworkSettings"]["Networks"]
    assert networks
    for network in networks.values():
        by_address = curl(f"http://{network['IPAddress']}:3306/")
        # 7 "Failed to connect", or 28 "Connection timed out"; a reached server gives 1 or 8.
        assert by_address.returncode in (7, 28), f"web reached db at {network['IPAddress']}: {by_address.stderr}"


def test_no_secret_value_appears_in_docker_inspect(prod):
    containers = prod.compose("ps", "--all", "-q").stdout.split()
    inspected = prod.engine.docker("inspect", *containers).stdout
    for name, value in prod.secrets.items():
        assert value not in inspected, f"the value of {name} is visible in docker inspect"
    api = prod.compose.inspect(live_color(prod))
    assert "MYSQL_PASSWORD_FILE=/run/secrets/db_password" in api["Config"]["Env"]


def test_a_crashed_container_is_restarted_and_the_stack_serves_again(prod):
    """Each container's main process is killed with SIGKILL from the host, as a crash or
    the kernel's OOM killer would. (`docker kill` would not do: dockerd counts it as a
    manual stop, after which restart policies do not apply.)"""
    for service in ("web", live_color(prod)):
        container = prod.compose.inspect(service)
        before = container["RestartCount"]
        os.kill(container["State"]["Pid"], signal.SIGKILL)
        eventually(lambda s=service: prod.compose.inspect(s)["RestartCount"] > before, 30,
                   what=f"{service} to be restarted", interval=0.5)
        prod.compose.wait_healthy(service, timeout=90)
    assert eventually(lambda: http("GET", prod.url + "/health").status == 200, 30, what="nginx to serve")
    prod.script("smoke-test", prod.url)


def test_the_db_writes_each_commit_to_its_binary_log(prod):
    """What scripts/archive-binlogs and restore --to need, and what makes the log as durable
    as the tables: row events, synced at every commit."""
    [row] = prod.sql("SELECT @@log_bin, @@binlog_format, @@sync_binlog, @@binlog_expire_logs_seconds")
    assert row == ["1", "ROW", "1", "604800"]


def test_the_backup_account_may_dump_and_read_the_binary_logs_and_nothing_else(prod):
    grants = sorted(row[0] for row in prod.sql("SHOW GRANTS FOR 'backup'@'%'"))
    assert [re.sub(r" IDENTIFIED BY PASSWORD '[^']*'", "", grant) for grant in grants] == [
        "GRANT RELOAD, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `backup`@`%`",
        "GRANT SELECT, LOCK TABLES, SHOW VIEW, TRIGGER ON `messages`.* TO `backup`@`%`",
    ]
    # Its password is the host's secret, as the services read it.
    logged_in = prod.compose("exec", "-T", "backup", "sh", "-c",
                             'mariadb -h db -u backup -p"$(cat /run/secrets/db_backup_password)" -N -e "SELECT CURRENT_USER()"')
    assert logged_in.stdout.strip() == "backup@%"
