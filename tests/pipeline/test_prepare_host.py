"""scripts/prepare-host in a debootstrapped Debian 12 root: run by the stack's own
user-data, then again with the same arguments (Docker from Debian's docker.io through the
DOCKER_SOURCE seam); then the user-data in a second, fresh root given the same data volume,
as a replacement instance."""

import json
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import (BACKUP_BUCKET, DATA_DIR, DATA_VOLUME, ECR_REGISTRY, INSTANCE_ID, JENKINS_KEY, REGION, REPO, STACK_NAME,
                      WAIT_HANDLE_URL, chroot_script, listing, log, make_root, render_user_data, run, run_in_root, unmount_data)

CHANGE_LINE = re.compile(r"^prepare-host: (?!.* is ready for )", re.MULTILINE)


def owner_mode(host, path):
    st = host.path(path).stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_both_runs_succeed_and_the_user_data_reports_success_to_the_stack(prepared_host):
    for result in (prepared_host.first, prepared_host.second):
        assert result.returncode == 0, result.stdout + result.stderr
    (signal,) = prepared_host.sent
    url, body = signal.split(" ", 1)
    assert url == WAIT_HANDLE_URL
    assert json.loads(body)["Status"] == "SUCCESS"


def test_first_run_installs_docker_and_the_ecr_credential_helper(prepared_host):
    status = prepared_host.path("/var/lib/dpkg/status").read_text()
    installed = set(re.findall(r"^Package: (\S+)\nStatus: install ok installed$", status, re.MULTILINE))
    assert {"docker.io", "docker-compose", "amazon-ecr-credential-helper"} <= installed
    assert prepared_host.path("/usr/sbin/dockerd").exists()
    assert "installing docker.io docker-compose" in prepared_host.first.stdout


def test_first_run_installs_what_restore_uses_on_the_host(prepared_host):
    """scripts/restore fetches from S3 with the AWS CLI and replays binary logs with
    mariadb-binlog, on the host itself."""
    status = prepared_host.path("/var/lib/dpkg/status").read_text()
    installed = set(re.findall(r"^Package: (\S+)\nStatus: install ok installed$", status, re.MULTILINE))
    assert {"mariadb-client", "awscli", "iptables"} <= installed
    assert prepared_host.path("/usr/bin/mariadb-binlog").exists()
    assert prepared_host.path("/usr/bin/aws").exists()
    restore = (REPO / "scripts/restore").read_text()
    assert "command -v mariadb-binlog" in restore
    assert "install mariadb-client" in restore


def test_imds_guard_and_its_unit_are_installed_to_run_after_every_docker_start(prepared_host):
    guard = "/usr/local/sbin/messages-imds-guard"
    assert owner_mode(prepared_host, guard) == (0, 0, 0o755)
    assert prepared_host.path(guard).read_text() == run(
        str(REPO / "scripts/prepare-host"), "--print-imds-guard").stdout, "the guard the container tests run"
    unit = "/etc/systemd/system/messages-imds-guard.service"
    assert owner_mode(prepared_host, unit) == (0, 0, 0o644)
    lines = prepared_host.path(unit).read_text().splitlines()
    for line in ("After=docker.service", "PartOf=docker.service", "Type=oneshot", "RemainAfterExit=yes",
                 f"ExecStart={guard}", "WantedBy=multi-user.target docker.service"):
        assert line in lines, line


# Stands in for iptables: records each call; the chain is there, the rule is not yet.
IPTABLES_STAND_IN = """#!/bin/sh
echo "$*" >>"$IPTABLES_CALLS"
case " $* " in *" -C "*) exit 1 ;; esac
"""


def test_imds_guard_admits_the_bridge_the_compose_file_names_the_offsite_network(tmp_path):
    """The guard's own default, as messages-imds-guard.service runs it (no environment),
    against docker-compose.prod.yml's default for OFFSITE_BRIDGE."""
    compose = yaml.safe_load((REPO / "docker-compose.prod.yml").read_text())
    bridge_option = compose["networks"]["offsite"]["driver_opts"]["com.docker.network.bridge.name"]
    compose_default = re.fullmatch(r"\$\{OFFSITE_BRIDGE:-([\w.-]+)\}", bridge_option).group(1)
    assert compose_default == "msg-offsite"
    guard = tmp_path / "messages-imds-guard"
    guard.write_text(run(str(REPO / "scripts/prepare-host"), "--print-imds-guard").stdout)
    guard.chmod(0o755)
    (tmp_path / "iptables").write_text(IPTABLES_STAND_IN)
    (tmp_path / "iptables").chmod(0o755)
    calls = tmp_path / "calls"
    run(str(guard), env={"PATH": f"{tmp_path}:/usr/bin:/bin", "IPTABLES_CALLS": str(calls)})
    assert calls.read_text().splitlines()[-1] == (
        f"-w -I DOCKER-USER 1 -d 169.254.169.254/32 ! -i {compose_default} -j REJECT")


def test_deploy_user_is_in_the_docker_group_with_only_the_jenkins_key(prepared_host):
    name, _, uid, gid, _, home, shell = prepared_host.passwd("deploy")
    assert (home, shell) == ("/home/deploy", "/bin/bash")
    assert "deploy" in prepared_host.group_members("docker")
    assert owner_mode(prepared_host, "/home/deploy/.ssh") == (int(uid), int(gid), 0o700)
    keys = "/home/deploy/.ssh/authorized_keys"
    assert owner_mode(prepared_host, keys) == (int(uid), int(gid), 0o600)
    assert prepared_host.path(keys).read_text() == JENKINS_KEY + "\n"


def test_deploy_users_docker_pulls_from_ecr_with_the_instance_role(prepared_host):
    _, _, uid, gid, *_ = prepared_host.passwd("deploy")
    config = "/home/deploy/.docker/config.json"
    assert owner_mode(prepared_host, config) == (int(uid), int(gid), 0o600)
    assert json.loads(prepared_host.path(config).read_text()) == {"credHelpers": {ECR_REGISTRY: "ecr-login"}}


def test_srv_messages_has_the_folders_and_modes_the_deploy_expects(prepared_host):
    _, _, uid, gid, *_ = prepared_host.passwd("deploy")
    expected = {
        "/srv/messages": 0o755,
        "/srv/messages/secrets": 0o700,
        "/srv/messages/backups": 0o700,
        "/srv/messages/.deploy": 0o755,
        "/srv/messages/.env": 0o600,
    }
    for path, mode in expected.items():
        assert owner_mode(prepared_host, path) == (int(uid), int(gid), mode), path


def test_database_folder_belongs_to_the_user_the_compose_file_runs_the_database_as(prepared_host):
    compose = yaml.safe_load((REPO / "docker-compose.prod.yml").read_text())
    db_uid, db_gid = map(int, compose["services"]["db"]["user"].split(":"))
    assert owner_mode(prepared_host, "/srv/messages/db-data") == (db_uid, db_gid, 0o700)
    assert "./db-data:/var/lib/mysql" in compose["services"]["db"]["volumes"]


def blkid(device, key: str) -> str:
    return run("blkid", "-p", "-o", "value", "-s", key, str(device)).stdout.strip()


def test_first_run_attaches_formats_and_mounts_the_data_volume_at_srv_messages_by_uuid(prepared_host, data_disk):
    calls = prepared_host.path("/run/aws-calls.log").read_text().splitlines()
    assert calls == [f"AWS_DEFAULT_REGION={REGION} ec2 attach-volume --volume-id {DATA_VOLUME} "
                     f"--instance-id {INSTANCE_ID} --device /dev/sdf"]
    device = f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{DATA_VOLUME.replace('-', '')}"
    assert f"prepare-host: formatting {device} as ext4" in prepared_host.first.stdout
    assert blkid(data_disk, "TYPE") == "ext4"
    fstab = [line.split() for line in prepared_host.path("/etc/fstab").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert [f for f in fstab if f[1] == DATA_DIR] == [
        [f"UUID={blkid(data_disk, 'UUID')}", DATA_DIR, "ext4", "defaults,nofail", "0", "2"]]
    assert os.path.ismount(prepared_host.path(DATA_DIR))
    dropin = prepared_host.path("/etc/systemd/system/docker.service.d/messages-data.conf").read_text()
    assert dropin == f"[Unit]\nRequiresMountsFor={DATA_DIR}\n"


def test_the_database_backups_secrets_and_settings_land_on_the_data_volume(prepared_host, data_disk):
    on_volume = os.stat(prepared_host.path(DATA_DIR)).st_dev
    assert on_volume != os.stat(prepared_host.path("/etc")).st_dev
    assert on_volume == data_disk.stat().st_rdev
    for path in ("db-data", "backups", "secrets", "secrets/db_password", "secrets/db_root_password",
                 "secrets/admin_token", "secrets/token_sealing_key", "secrets/db_backup_password", ".deploy", ".env"):
        assert os.stat(prepared_host.path(f"{DATA_DIR}/{path}")).st_dev == on_volume, path


def test_env_file_holds_the_stack_settings_and_no_password_nor_image_tag(prepared_host):
    _, _, uid, gid, *_ = prepared_host.passwd("deploy")
    text = prepared_host.path("/srv/messages/.env").read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert settings == {
        "REGISTRY": ECR_REGISTRY,
        "HTTP_PORT": prepared_host.values["HttpPort"],
        "MYSQL_DATABASE": "messages",
        "MYSQL_USER": "messages",
        "BACKUP_UID": uid,
        "BACKUP_GID": gid,
        "BACKUP_S3_URI": f"s3://{BACKUP_BUCKET}/{STACK_NAME}",
        "BACKUP_S3_REGION": REGION,
        "NGINX_TLS": "on",
        "HTTPS_PORT": "443",
    }


def test_https_gets_certbot_a_placeholder_certificate_its_hook_and_the_first_certificate_timer(prepared_host):
    domain = prepared_host.values["Domain"]
    status = prepared_host.path("/var/lib/dpkg/status").read_text()
    assert re.search(r"^Package: certbot\nStatus: install ok installed$", status, re.MULTILINE)
    assert owner_mode(prepared_host, "/srv/messages/tls") == (0, 0, 0o755)
    assert owner_mode(prepared_host, "/srv/messages/acme") == (0, 0, 0o755)
    # Readable by nginx in its container (uid and gid 101), and by no one else.
    assert owner_mode(prepared_host, "/srv/messages/tls/privkey.pem") == (0, 101, 0o640)
    placeholder = run("openssl", "x509", "-noout", "-subject", "-ext", "subjectAltName",
                      "-in", str(prepared_host.path("/srv/messages/tls/fullchain.pem"))).stdout
    assert f"CN = {domain}" in placeholder and f"DNS:{domain}" in placeholder
    hook = "/etc/letsencrypt/renewal-hooks/deploy/messages-web"
    assert owner_mode(prepared_host, hook) == (0, 0, 0o755)
    assert prepared_host.path(hook).read_text() == run(
        str(REPO / "scripts/prepare-host"), "--print-tls-hook").stdout, "the hook the TLS tests run"
    service = prepared_host.path("/etc/systemd/system/messages-certificate.service").read_text()
    assert f"ConditionPathExists=!/etc/letsencrypt/live/{domain}/fullchain.pem" in service
    assert (f"--server {prepared_host.values['AcmeDirectory']} --webroot -w /srv/messages/acme -d {domain} "
            f"--keep-until-expiring --deploy-hook {hook}") in service
    assert "http://127.0.0.1:80/.well-known/acme-challenge/ready" in service
    assert "OnCalendar=*:*:00" in prepared_host.path("/etc/systemd/system/messages-certificate.timer").read_text()


def test_secrets_are_generated_once_as_the_compose_file_names_them(prepared_host):
    _, _, uid, gid, *_ = prepared_host.passwd("deploy")
    compose = (REPO / "docker-compose.prod.yml").read_text()
    named = sorted(re.findall(r"file: \./secrets/(\w+)", compose))
    present = sorted(p.name for p in prepared_host.path("/srv/messages/secrets").iterdir())
    generated = ["admin_token", "db_backup_password", "db_password", "db_root_password", "token_sealing_key"]
    # The operator fills them. Alertmanager's: empty, their integration stays off; the
    # backup services' AWS credentials: empty on EC2, where the instance role is used.
    given = ["alert_smtp_ca", "alert_smtp_password", "alert_webhook_url", "backup_aws_credentials"]
    assert present == named == sorted(generated + given)
    for name in given:
        path = f"/srv/messages/secrets/{name}"
        assert owner_mode(prepared_host, path) == (int(uid), int(gid), 0o644)
        assert prepared_host.path(path).read_text() == ""
    values = set()
    for name in generated:
        path = f"/srv/messages/secrets/{name}"
        assert owner_mode(prepared_host, path) == (int(uid), int(gid), 0o444)
        value = prepared_host.path(path).read_text()
        assert re.fullmatch(r"[0-9a-f]{64}", value), f"{name}: {value!r}"
        values.add(value)
    assert len(values) == len(generated), "each secret is its own random value"


def test_second_run_changes_nothing(prepared_host):
    before, after = prepared_host.after_first, prepared_host.after_second
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert changed == []
    assert CHANGE_LINE.findall(prepared_host.second.stdout) == [], prepared_host.second.stdout
    assert len(CHANGE_LINE.findall(prepared_host.first.stdout)) >= 10, prepared_host.first.stdout


def test_refuses_bad_arguments_before_touching_anything(tmp_path):
    script = str(REPO / "scripts/prepare-host")
    cases = [
        ([], "usage:"),
        (["--ssh-key"], "usage:"),
        (["--ssh-key", "not a key"], "not an OpenSSH public key line"),
        (["--ssh-key", JENKINS_KEY, "--user", "Root!"], "not a user name"),
        (["--ssh-key", JENKINS_KEY, "--http-port", "70000"], "not a port"),
        (["--ssh-key", JENKINS_KEY, "--dir", "srv/messages"], "not an absolute folder"),
        (["--ssh-key", JENKINS_KEY, "--data-volume", "/dev/nvme1n1"], "not an EBS volume id"),
        (["--ssh-key", JENKINS_KEY, "--data-volume", DATA_VOLUME, "--data-device", "/dev/nvme1n1"], "not both"),
        (["--ssh-key", JENKINS_KEY, "--backup-s3-uri", "https://bucket/prefix"], "not an S3 location"),
        (["--ssh-key", JENKINS_KEY, "--backup-s3-uri", "s3://bucket/a|b"], "not an S3 location"),
        (["--ssh-key", JENKINS_KEY, "--backup-s3-region", "EU-WEST-1"], "not an AWS region"),
        (["--ssh-key", JENKINS_KEY, "--backup-s3-region", "eu-west-1|x"], "not an AWS region"),
        (["--ssh-key", JENKINS_KEY, "--backup-s3-region"], "usage:"),
    ]
    for args, message in cases:
        result = run(script, *args, check=False)
        assert (result.returncode, message in result.stderr) == (2, True), (args, result.stderr)
    result = run(script, "--ssh-key", JENKINS_KEY, check=False, env={"DOCKER_SOURCE": "snap", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "DOCKER_SOURCE must be" in result.stderr


def test_monitoring_turns_the_profile_on_and_points_the_backup_at_the_pushgateway(prepared_host):
    """After the runs above: prepare-host again with --monitoring, twice."""
    command = prepared_host.path("/var/tmp/prepare-host-again").read_text().strip() + " --monitoring"
    prepared_host.path("/var/tmp/prepare-host-monitoring").write_text(command + "\n")
    (first, _), (second, after_second) = run_in_root(
        prepared_host.root, "/var/tmp/prepare-host-monitoring", "/var/tmp/prepare-host-monitoring")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert [line for line in first.stdout.splitlines() if CHANGE_LINE.match(line)] == [
        "prepare-host: setting COMPOSE_PROFILES=monitoring in /srv/messages/.env",
        "prepare-host: setting BACKUP_PUSHGATEWAY_URL=http://pushgateway:9091 in /srv/messages/.env",
    ], first.stdout
    assert CHANGE_LINE.findall(second.stdout) == [], second.stdout
    # .env has no ALERT_* yet: said, not failed.
    assert "set ALERT_EMAIL_TO ALERT_EMAIL_FROM" in second.stderr
    settings = prepared_host.path("/srv/messages/.env").read_text().splitlines()
    assert "COMPOSE_PROFILES=monitoring" in settings
    # The compose service the backup job reaches.
    assert "BACKUP_PUSHGATEWAY_URL=http://pushgateway:9091" in settings
    assert "pushgateway" in yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


def test_a_later_run_removes_the_moving_tag_an_earlier_version_wrote_until_a_deploy_records_one(prepared_host):
    """After the runs above: .env as an earlier prepare-host wrote it (IMAGE_TAG=latest) on a
    host where nothing is deployed yet; then the same with a deployed tag recorded, which
    is scripts/deploy's to keep."""
    env_file = prepared_host.path("/srv/messages/.env")
    current = prepared_host.path("/srv/messages/.deploy/current")
    original = env_file.read_text()
    try:
        env_file.write_text(original + "IMAGE_TAG=latest\n")
        ((removed, _),) = run_in_root(prepared_host.root, "/var/tmp/prepare-host-again")
        assert removed.returncode == 0, removed.stderr
        assert [line for line in removed.stdout.splitlines() if CHANGE_LINE.match(line)] == [
            "prepare-host: removing IMAGE_TAG=latest from /srv/messages/.env (nothing is deployed yet: "
            "the first scripts/deploy TAG records it)"], removed.stdout
        assert env_file.read_text() == original

        current.write_text("0123456789ab\n")
        env_file.write_text(original + "IMAGE_TAG=latest\n")
        ((kept, _),) = run_in_root(prepared_host.root, "/var/tmp/prepare-host-again")
        assert kept.returncode == 0, kept.stderr
        assert CHANGE_LINE.findall(kept.stdout) == [], kept.stdout
        assert env_file.read_text() == original + "IMAGE_TAG=latest\n"
    finally:
        env_file.write_text(original)
        current.unlink(missing_ok=True)


def test_user_data_reports_a_failed_preparation_to_the_stack(prepared_host, template):
    """After the runs above: the same user-data with a key prepare-host refuses."""
    values = prepared_host.values | {"JenkinsPublicKey": "not-a-key"}
    prepared_host.path("/var/tmp/user-data-bad-key").write_text(render_user_data(template, values))
    result = chroot_script(prepared_host.root, "/var/tmp/user-data-bad-key")
    assert result.returncode == 2
    assert "not an OpenSSH public key line" in result.stderr
    url, body = prepared_host.signals()[-1].split(" ", 1)
    assert url == WAIT_HANDLE_URL
    assert json.loads(body)["Status"] == "FAILURE"


def volume_listing(root) -> dict:
    return listing(root / DATA_DIR.lstrip("/"))


SECRETS = ("db_password", "db_root_password", "admin_token", "token_sealing_key", "db_backup_password")


@dataclass
class NewInstance:
    root: Path
    result: subprocess.CompletedProcess
    # The data volume as the first instance left it, and as the new one has it.
    before: dict
    after: dict
    secrets_before: dict


@pytest.fixture(scope="module")
def new_instance(prepared_host, data_disk, tmp_path_factory) -> NewInstance:
    """A replacement instance: the first root's volume unmounted (its instance terminated),
    then the same user-data in a fresh root given the same volume. The first root gets its
    volume back at the end."""
    before = volume_listing(prepared_host.root)
    secrets = {name: prepared_host.path(f"{DATA_DIR}/secrets/{name}").read_text() for name in SECRETS}
    unmount_data(prepared_host.root)
    root = make_root(tmp_path_factory.mktemp("new-instance"), data_disk)
    (root / "var/tmp/user-data").write_text(prepared_host.path("/var/tmp/user-data").read_text())
    log("the user-data in a second, fresh root given the same data volume")
    try:
        ((result, _),) = run_in_root(root, "/var/tmp/user-data")
        yield NewInstance(root, result, before, volume_listing(root), secrets)
    finally:
        unmount_data(root)
        shutil.rmtree(root, ignore_errors=True)
        run("mount", str(data_disk), str(prepared_host.path(DATA_DIR)))


def test_a_new_instance_mounts_the_same_data_volume_without_formatting_it(new_instance):
    result = new_instance.result
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"prepare-host: attached {DATA_VOLUME} to {INSTANCE_ID}" in result.stdout
    assert "formatting" not in result.stdout
    assert os.path.ismount(new_instance.root / DATA_DIR.lstrip("/"))


def test_a_new_instance_finds_every_file_of_the_data_volume_unchanged(new_instance):
    """Mode, owner, size, modification time and checksum of every file and folder."""
    before, after = new_instance.before, new_instance.after
    assert {f"secrets/{name}" for name in SECRETS} | {".env", "db-data", "backups", ".deploy"} <= before.keys()
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert changed == []


def test_a_new_instance_keeps_the_secrets(new_instance):
    for name in SECRETS:
        path = new_instance.root / DATA_DIR.lstrip("/") / "secrets" / name
        assert path.read_text() == new_instance.secrets_before[name], name
