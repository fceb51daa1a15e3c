"""scripts/check-deps: the cargo-deny policy in deny.toml, and what it says when the
advisory database cannot be fetched."""

import os
import re

from conftest import REPO, run

SCRIPT = str(REPO / "scripts/check-deps")
POLICY = (REPO / "deny.toml").read_text()


def check_deps(*args, config=None):
    env = os.environ | ({"DENY_CONFIG": str(config)} if config else {})
    return run(SCRIPT, *args, check=False, env=env)


def test_usage_errors_exit_2():
    for args in ([], ["licenses"], ["policy", "advisories"]):
        result = check_deps(*args)
        assert result.returncode == 2 and "usage:" in result.stderr, args


def test_lockfile_meets_the_license_ban_and_source_policy():
    result = check_deps("policy")
    assert result.returncode == 0, result.stderr
    assert "bans ok, licenses ok, sources ok" in result.stdout + result.stderr


def test_a_license_off_the_allow_list_fails_the_policy(tmp_path):
    config = tmp_path / "deny.toml"
    config.write_text(re.sub(r'^\s*"MIT",\n', "", POLICY, count=1, flags=re.MULTILINE))
    assert config.read_text() != POLICY
    result = check_deps("policy", config=config)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "licenses FAILED" in output
    assert "license is not explicitly allowed" in output


def test_a_banned_crate_in_the_graph_fails_the_policy(tmp_path):
    config = tmp_path / "deny.toml"
    config.write_text(POLICY.replace(
        "deny = [\n", 'deny = [\n    { crate = "tokio", reason = "a test ban on a crate the API uses" },\n', 1))
    result = check_deps("policy", config=config)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "bans FAILED" in output
    assert "a test ban on a crate the API uses" in output


def test_unreachable_advisory_database_is_reported_not_passed(tmp_path):
    config = tmp_path / "deny.toml"
    config.write_text(POLICY.replace(
        'db-urls = ["https://github.com/rustsec/advisory-db"]',
        f'db-urls = ["http://127.0.0.1:9/advisory-db"]\ndb-path = "{tmp_path}/advisory-dbs"'))
    result = check_deps("advisories", config=config)
    assert result.returncode == 3
    assert "advisories were NOT checked" in result.stderr
