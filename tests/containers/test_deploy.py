"""Blue/green deploys with the compose driver on the real engine, what Jenkins runs on the EC2
host, under the traffic of tests/lib/traffic.py through the published nginx port (readers on
keep-alive connections, writers with Idempotency-Keys, a live stream resumed with
Last-Event-ID): no request may fail, no acknowledged write be lost, nothing be missed on the
stream. The kills at each phase run on processes (tests/delivery), where they are fast."""

import subprocess
import time

import pytest
from traffic import Report, Traffic

# The bound on the latency users see while nginx switches colors.
SWITCH_P99_MS = 1000


def broken_version(engine, registry: str, tag: str, instructions: str):
    """The v2 images under another tag, the API broken on purpose by one more layer."""
    engine.docker("build", "--tag", f"{registry}/messages-api:{tag}", "-",
                  input=f"FROM {registry}/messages-api:v2\n{instructions}\n")
    engine.docker("tag", f"{registry}/messages-web:v2", f"{registry}/messages-web:{tag}")


def live(prod) -> tuple[str, str]:
    return prod.state("current"), prod.state("previous")


def timed_deploy(prod, tag: str) -> tuple[str, dict[str, float]]:
    """Runs scripts/deploy TAG, noting when each step's line appeared (time.monotonic())."""
    process = subprocess.Popen(
        [str(prod.path / "scripts/deploy"), tag], cwd=prod.path, env=prod.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines, marks = [], {"start": time.monotonic()}
    for line in process.stdout:
        lines.append(line)
        for mark, text in (("switch", "Switching nginx"), ("switched", "nginx now sends every request"),
                           ("done", "Deployed " + tag)):
            if text in line:
                marks.setdefault(mark, time.monotonic())
    output = "".join(lines)
    assert process.wait() == 0, output
    return output, marks


def assert_users_saw_nothing(report: Report, minimum: int = 100) -> None:
    print(f"traffic: {report}")
    assert report.failed == [], report
    assert report.problems == [], report
    assert report.requests > minimum, report


def assert_consistent(prod) -> None:
    """No deploy under way; the recorded color and upstream agree, that color runs the
    current tag and is healthy, the other one is stopped."""
    assert not (prod.path / ".deploy/deploying").exists()
    color = prod.state("color")
    idle = "green" if color == "blue" else "blue"
    assert prod.state("api-upstream") == f"api-{color}:8080"
    assert prod.compose.state(f"api-{color}") == "running/healthy"
    assert not prod.compose.state(f"api-{idle}").startswith("running")
    assert prod.compose.inspect(f"api-{color}")["Config"]["Image"].endswith(":" + prod.state("current"))


@pytest.fixture
def traffic(prod):
    """Users through the stack's nginx for the whole test; stopped unchecked at the end if the
    test did not stop it."""
    started = Traffic(prod.url)
    yield started
    started.kill()


def test_v1_to_v2_fails_no_request_and_switches_within_the_latency_bound(prod, images, traffic, results):
    assert live(prod) == ("v1", "")
    output, marks = timed_deploy(prod, "v2")
    report = traffic.stop((marks["switch"], marks["switched"]))
    assert_users_saw_nothing(report)
    assert live(prod) == ("v2", "v1")
    assert_consistent(prod)
    results["deploy_v1_to_v2"] = {
        "seconds": round(marks["done"] - marks["start"], 1),
        "switch_seconds": round(marks["switched"] - marks["switch"], 2),
        "requests": report.requests, "failed": len(report.failed), "acknowledged_writes": report.writes,
        "latency_p99_ms": round(report.p99_ms, 1), "switch_latency_p99_ms": round(report.window_p99_ms, 1),
        "switch_requests": report.window_requests,
    }
    assert report.window_p99_ms <= SWITCH_P99_MS, report
    assert "Deployed v2" in output


def test_a_version_that_never_turns_healthy_is_rejected_while_v2_serves(prod, images, engine, traffic):
    broken_version(engine, images["registry"], "never-healthy",
                   'HEALTHCHECK --interval=1s --retries=1 CMD ["false"]')
    deploy = prod.script("deploy", "never-healthy", check=False, DEPLOY_HEALTH_TIMEOUT="20")
    assert_users_saw_nothing(traffic.stop())
    assert deploy.returncode == 1
    assert "never became healthy" in deploy.stdout
    assert live(prod) == ("v2", "v1")
    assert_consistent(prod)


def test_a_version_that_fails_the_smoke_test_is_rejected_before_it_serves_anyone(prod, images, engine, traffic):
    # Healthy, but refuses every post as too long. Set by the entrypoint: compose passes the
    # MAX_MESSAGE_CHARS of .env (empty: the default) over an image's ENV.
    broken_version(engine, images["registry"], "rejects-posts",
                   'ENTRYPOINT ["/bin/sh", "-c", "MAX_MESSAGE_CHARS=5 exec messages-api \\"$@\\"", "messages-api"]\n'
                   # A new ENTRYPOINT clears the inherited CMD.
                   'CMD ["serve"]')
    deploy = prod.script("deploy", "rejects-posts", check=False)
    assert_users_saw_nothing(traffic.stop())
    assert deploy.returncode == 1
    assert "failed the smoke test before the switch" in deploy.stdout
    assert live(prod) == ("v2", "v1")
    assert_consistent(prod)


def test_a_release_that_changes_the_database_definition_is_refused_and_the_database_left_alone(prod, traffic):
    db = prod.compose.container("db")
    compose_file = prod.path / "docker-compose.prod.yml"
    original = compose_file.read_text()
    changed = original.replace("\n  db:\n", "\n  db:\n    labels: [changed-by-the-release=yes]\n", 1)
    assert changed != original
    compose_file.write_text(changed)
    try:
        deploy = prod.script("deploy", "v1", check=False)
    finally:
        compose_file.write_text(original)
    # Refused within a second: few requests, but none may fail.
    assert_users_saw_nothing(traffic.stop(), minimum=20)
    assert deploy.returncode == 1
    assert "scripts/deploy --update-db v1" in deploy.stderr
    assert prod.compose.container("db") == db
    assert live(prod) == ("v2", "v1")
    assert_consistent(prod)


def test_rollback_returns_to_v1(prod, traffic):
    prod.script("rollback")
    assert_users_saw_nothing(traffic.stop())
    assert live(prod) == ("v1", "v2")
    assert_consistent(prod)


def test_a_second_deploy_during_one_is_refused(prod):
    first = subprocess.Popen(
        [str(prod.path / "scripts/deploy"), "v2"], cwd=prod.path, env=prod.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        # The first holds the lock once it says what it deploys.
        for line in first.stdout:
            if "Deploying v2" in line:
                break
        second = prod.script("deploy", "v2", check=False)
        assert second.returncode == 75
        assert "another deploy is running" in second.stderr
    finally:
        rest = first.communicate(timeout=600)[0]
    assert first.returncode == 0, rest
    assert live(prod) == ("v2", "v1")
    assert_consistent(prod)
