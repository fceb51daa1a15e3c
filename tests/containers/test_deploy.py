"""Blue/green deploys with the compose driver on the real engine, under continuous load
through the published nginx port: what Jenkins runs on the EC2 host."""

import subprocess
import time

import pytest
from wrk import Wrk


def broken_version(engine, registry: str, tag: str, instructions: str):
    """The v2 images under another tag, the API broken on purpose by one more layer."""
    engine.docker("build", "--tag", f"{registry}/messages-api:{tag}", "-",
                  input=f"FROM {registry}/messages-api:v2\n{instructions}\n")
    engine.docker("tag", f"{registry}/messages-web:v2", f"{registry}/messages-web:{tag}")


def live(prod) -> tuple[str, str]:
    return prod.state("current"), prod.state("previous")


def timed_deploy(prod, tag: str) -> tuple[str, dict[str, float]]:
    """Runs scripts/deploy TAG, noting when each step's line appeared (seconds from the start)."""
    started = time.monotonic()
    process = subprocess.Popen(
        [str(prod.path / "scripts/deploy"), tag], cwd=prod.path, env=prod.engine.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines, marks = [], {}
    for line in process.stdout:
        lines.append(line)
        for mark, text in (("switch", "Switching nginx"), ("switched", "nginx now sends every request"),
                           ("done", "Deployed " + tag)):
            if text in line:
                marks.setdefault(mark, time.monotonic() - started)
    output = "".join(lines)
    assert process.wait() == 0, output
    return output, marks


@pytest.fixture
def load(prod, workdir, request):
    """wrk through the stack's nginx for the whole test; killed at the end if the test did
    not stop it."""
    started = Wrk(prod.url + "/api/messages?limit=10", workdir, request.node.name, connections=8)
    yield started
    started.kill()


def test_v1_to_v2_fails_no_request(prod, images, load, results):
    assert live(prod) == ("v1", "")
    output, marks = timed_deploy(prod, "v2")
    summary = load.stop()
    assert summary["failed"] == 0, summary
    assert summary["requests"] > 100, summary
    assert live(prod) == ("v2", "v1")
    serving = prod.compose.inspect("api-" + prod.state("color"))["Config"]["Image"]
    assert serving == f"{images['registry']}/messages-api:v2"
    results["deploy_v1_to_v2"] = {
        "seconds": round(marks["done"], 1),
        "switch_seconds": round(marks["switched"] - marks["switch"], 2),
        "requests": summary["requests"], "failed": summary["failed"],
        "latency_p99_ms": round(summary["latency_us"]["p99"] / 1000, 1),
    }
    assert "Deployed v2" in output


def test_a_version_that_never_turns_healthy_is_rejected_while_v2_serves(prod, images, engine, load):
    broken_version(engine, images["registry"], "never-healthy",
                   'HEALTHCHECK --interval=1s --retries=1 CMD ["false"]')
    deploy = prod.script("deploy", "never-healthy", check=False, DEPLOY_HEALTH_TIMEOUT="20")
    summary = load.stop()
    assert deploy.returncode == 1
    assert "never became healthy" in deploy.stdout
    assert summary["failed"] == 0, summary
    assert live(prod) == ("v2", "v1")


def test_a_version_that_fails_the_smoke_test_is_switched_back(prod, images, engine, load):
    # Healthy, but refuses the smoke test's message as too long. Set by the entrypoint:
    # compose passes the MAX_MESSAGE_CHARS of .env (empty: the default) over an image's ENV.
    broken_version(engine, images["registry"], "rejects-posts",
                   'ENTRYPOINT ["/bin/sh", "-c", "MAX_MESSAGE_CHARS=5 exec messages-api \\"$@\\"", "messages-api"]\n'
                   # A new ENTRYPOINT clears the inherited CMD.
                   'CMD ["serve"]')
    deploy = prod.script("deploy", "rejects-posts", check=False)
    summary = load.stop()
    assert deploy.returncode == 1
    assert "failed after the switch" in deploy.stdout
    assert summary["failed"] == 0, summary
    assert live(prod) == ("v2", "v1")


def test_rollback_returns_to_v1(prod, load):
    prod.script("rollback")
    summary = load.stop()
    assert summary["failed"] == 0, summary
    assert live(prod) == ("v1", "v2")


def test_a_second_deploy_during_one_is_refused(prod):
    first = subprocess.Popen(
        [str(prod.path / "scripts/deploy"), "v2"], cwd=prod.path, env=prod.engine.env,
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
