"""Facts that several deployment files state, each in its own syntax: where one file cannot
name another's value, a test holds them together."""

from __future__ import annotations

import re
from pathlib import Path

from manifests import ROOT, render
from test_compose_agreement import API_SERVICE, COMPOSE, PROD, template_variables


def seconds(duration: str) -> int:
    """A compose duration ("30s", "1m") in seconds."""
    match = re.fullmatch(r"(\d+)([sm])", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_the_web_content_label_is_the_one_the_deploy_reads():
    dockerfile = (ROOT / "docker/web.Dockerfile").read_text()
    (label,) = re.findall(r"([\w.-]+\.web-content)=", dockerfile)
    deploy = (ROOT / "scripts/lib/deploy-compose.sh").read_text()
    # The deploy reads other labels too (compose's config hash); every read of web content
    # must use the label the image carries.
    read = {name for name in re.findall(r'Labels "([^"]+)"', deploy) if "web-content" in name}
    assert read == {label}


def test_the_production_web_publishes_tls_and_mounts_the_certificate_where_nginx_reads_them():
    defaults = template_variables()
    web = PROD["services"]["web"]
    # edge holds the ports of nginx's network namespace.
    assert [p.rsplit(":", 1)[1] for p in PROD["services"]["edge"]["ports"]] == [defaults["NGINX_TLS_LISTEN"]]
    assert "ports" not in web
    mounts = {volume.split(":")[1] for volume in web["volumes"]}
    assert {str(Path(defaults["TLS_CERTIFICATE"]).parent), str(Path(defaults["TLS_CERTIFICATE_KEY"]).parent),
            defaults["ACME_WEBROOT"]} <= mounts
    # The host keeps them where scripts/prepare-host writes them and its deploy hook copies.
    host = (ROOT / "scripts/prepare-host").read_text()
    assert "./tls:/etc/nginx/tls:ro" in web["volumes"] and '"$dir/tls"' in host
    assert "./acme:/var/www/acme:ro" in web["volumes"] and "-w $dir/acme" in host


def test_the_nginx_exporter_scrapes_where_stub_status_listens():
    (argument,) = COMPOSE["services"]["nginx-exporter"]["command"]
    assert COMPOSE["services"]["nginx-exporter"]["network_mode"] == COMPOSE["services"]["web"]["network_mode"]
    assert argument == f"--nginx.scrape-uri=http://{template_variables()['STATUS_LISTEN']}/stub_status"


def test_the_stop_grace_outlasts_the_api_shutdown_grace_and_the_pre_stop_pause():
    shutdown = int(re.search(r"SHUTDOWN_GRACE_SECS:-(\d+)", API_SERVICE["environment"]["SHUTDOWN_GRACE_SECS"]).group(1))
    default = int(re.search(r'env = "SHUTDOWN_GRACE_SECS", default_value_t = (\d+)',
                            (ROOT / "api/src/config.rs").read_text()).group(1))
    assert shutdown == default
    assert seconds(API_SERVICE["stop_grace_period"]) > shutdown
    for overlay in ("local", "production"):
        rendered = render(overlay)
        pod = rendered.get("Deployment", "api")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = int(rendered.environment(container).get("SHUTDOWN_GRACE_SECS", default))
        assert pod["terminationGracePeriodSeconds"] > pause + grace, overlay


def test_nginx_waits_longer_than_the_api_limit_and_the_runbook_says_how_long():
    template = (ROOT / "nginx/templates/default.conf.template").read_text()
    # The first one is the API's; the live stream's own comes later, in its location.
    proxy = int(re.search(r"proxy_read_timeout (\d+)s;", template).group(1))
    limit = int(re.search(r'env = "REQUEST_TIMEOUT_SECS", default_value_t = (\d+)',
                          (ROOT / "api/src/config.rs").read_text()).group(1))
    assert proxy > limit
    runbook = (ROOT / "docs/deployment.md").read_text()
    assert re.findall(r"nginx's (\d+) s `proxy_read_timeout`", runbook) == [str(proxy)]
    assert f"answers 503 after {limit} s" in runbook


def test_backup_too_old_waits_longer_than_the_backup_interval():
    prod = (ROOT / "docker-compose.prod.yml").read_text()
    interval = re.search(r'"--every", "\$\{BACKUP_INTERVAL:-(\d+)h\}"', prod).group(1)
    assert re.search(rf"^# BACKUP_INTERVAL={interval}h$", (ROOT / ".env.example").read_text(), re.MULTILINE)
    rules = (ROOT / "monitoring/prometheus/rules.yml").read_text()
    hours = re.search(r"messages_backup_last_success_timestamp_seconds\{[^}]*\} > (\d+) \* 3600", rules).group(1)
    # One missed run is the alarm; a run that merely takes its time is not.
    assert int(interval) < int(hours) < 2 * int(interval)


def test_the_compose_files_ship_the_mariadb_every_test_runs_and_nothing_names_another_engine():
    """One database image: compose's db, the README's "Database engine" and the stand-in the
    container tests build all name the same MariaDB series (the backup services' client, Debian's,
    is checked to be of it in the container tests), and
    no tracked file but the guides (which tell hosts of the former one how to move) names a
    mysql image: no test runs one."""
    import subprocess

    image = COMPOSE["services"]["db"]["image"]
    match = re.fullmatch(r"mariadb:(\d+\.\d+)", image)
    assert match, image
    series = match.group(1)
    readme = (ROOT / "README.md").read_text()
    assert re.findall(r"\*\*MariaDB (\d+\.\d+)\*\*", readme) == [series]
    stand_in = (ROOT / "tests/containers/stand-in-images/mariadb/Dockerfile").read_text()
    assert f"# Stand-in for {image} " in stand_in and f"MariaDB {series}" in stand_in
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    # What names the mysql image: the image reference, spelled so this test does not name it.
    mysql_image = re.compile(r"\b" + "mysql" + r":(\d|latest|lts)")
    naming = sorted(name for name in files if name and not name.endswith(".md") and (ROOT / name).is_file()
                    and mysql_image.search((ROOT / name).read_text(errors="replace")))
    assert naming == [], "names a mysql image, which no test runs"
