"""scripts/prepare-host in a debootstrapped Debian 12 root: run by the stack's own
user-data, then again with the same arguments (Docker from Debian's docker.io through the
DOCKER_SOURCE seam)."""

import json
import re
import stat

from conftest import ECR_REGISTRY, JENKINS_KEY, REPO, WAIT_HANDLE_URL, chroot_script, render_user_data, run

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


def test_env_file_holds_the_stack_settings_and_no_password(prepared_host):
    _, _, uid, gid, *_ = prepared_host.passwd("deploy")
    text = prepared_host.path("/srv/messages/.env").read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert settings == {
        "REGISTRY": ECR_REGISTRY,
        "IMAGE_TAG": "latest",
        "HTTP_PORT": prepared_host.values["HttpPort"],
        "MYSQL_DATABASE": "messages",
        "MYSQL_USER": "messages",
        "BACKUP_UID": uid,
        "BACKUP_GID": gid,
    }


def test_secrets_are_generated_once_as_the_compose_file_names_them(prepared_host):
    _, _, uid, gid, *_ = prepared_host.passwd("deploy")
    compose = (REPO / "docker-compose.prod.yml").read_text()
    named = sorted(re.findall(r"file: \./secrets/(\w+)", compose))
    present = sorted(p.name for p in prepared_host.path("/srv/messages/secrets").iterdir())
    assert present == named == ["admin_token", "db_password", "db_root_password", "token_sealing_key"]
    values = set()
    for name in named:
        path = f"/srv/messages/secrets/{name}"
        assert owner_mode(prepared_host, path) == (int(uid), int(gid), 0o444)
        value = prepared_host.path(path).read_text()
        assert re.fullmatch(r"[0-9a-f]{64}", value), f"{name}: {value!r}"
        values.add(value)
    assert len(values) == len(named), "each secret is its own random value"


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
    ]
    for args, message in cases:
        result = run(script, *args, check=False)
        assert (result.returncode, message in result.stderr) == (2, True), (args, result.stderr)
    result = run(script, "--ssh-key", JENKINS_KEY, check=False, env={"DOCKER_SOURCE": "snap", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "DOCKER_SOURCE must be" in result.stderr


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
