"""Blue/green deploys with the compose driver on the real engine, what Jenkins runs on the EC2
host, under the traffic of tests/lib/traffic.py through the published nginx port (readers on
keep-alive connections, writers with Idempotency-Keys, a live stream resumed with
Last-Event-ID): no request may fail, no acknowledged write be lost, nothing be missed on the
stream. That holds when a deploy replaces the web container too (v1 and v2 have different
web images): the new nginx starts beside the old one in edge's network namespace, and the
published port is never unbound. The kills at each phase run on processes (tests/delivery),
where they are fast."""

import gzip
import re
import subprocess
import time

import pytest
import yaml
from stack import V2_PAGE_MARKER, WEB_CONTENT_LABEL, derive_web_image, http
from traffic import Report, Traffic, p99

# The bound on the latency users see while nginx switches colors.
SWITCH_P99_MS = 1000


def broken_version(engine, registry: str, tag: str, instructions: str):
    """The v2 images under another tag, the API broken on purpose by one more layer."""
    engine.docker("build", "--tag", f"{registry}/messages-api:{tag}", "-",
                  input=f"FROM {registry}/messages-api:v2\n{instructions}\n")
    engine.docker("tag", f"{registry}/messages-web:v2", f"{registry}/messages-web:{tag}")


def live(prod) -> tuple[str, str]:
    return prod.state("current"), prod.state("previous")


MARKS = (("switch", "Switching nginx"), ("switched", "nginx now sends every request"),
         ("web_replace", "beside the running nginx"), ("web_serves", "the new nginx serves alone"),
         ("done", "Deployed "),
         ("to_edge", "moving them from the running nginx to edge"), ("on_edge", "edge holds the ports now"),
         ("from_edge", "compose files have no edge"), ("off_edge", "publishes the ports itself"))


def start_deploy(prod, tag: str, script: str = "deploy") -> subprocess.Popen:
    """Starts scripts/deploy TAG (or scripts/rollback, which deploys TAG)."""
    return subprocess.Popen(
        [str(prod.path / "scripts" / script), *([tag] if script == "deploy" else [])], cwd=prod.path, env=prod.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def follow(process: subprocess.Popen, lines: list[str], marks: dict[str, float], until: str | None = None) -> None:
    """Reads the deploy's output into `lines`, noting when each step's line appeared
    (time.monotonic()) in `marks`; up to a line containing `until`, or to the end."""
    for line in process.stdout:
        lines.append(line)
        for mark, text in MARKS:
            if text in line:
                marks.setdefault(mark, time.monotonic())
        if until and until in line:
            return


def timed_deploy(prod, tag: str, script: str = "deploy") -> tuple[str, dict[str, float]]:
    """Runs a deploy to the end; its output, and when each step's line appeared."""
    lines, marks = [], {"start": time.monotonic()}
    process = start_deploy(prod, tag, script)
    follow(process, lines, marks)
    output = "".join(lines)
    assert process.wait() == 0, output
    return output, marks


def assert_the_web_switch_failed_nothing(report: Report, marks: dict[str, float], results: dict, name: str) -> None:
    """A deploy that replaced the web container: nothing failed, as for any deploy; what the
    replacement took, and what users' clients did meanwhile, is recorded."""
    assert_users_saw_nothing(report)
    window = [s for s in report.sent if marks["web_replace"] <= s.started <= marks["web_serves"]]
    results.setdefault("web_switch", []).append({
        "deploy": name, "failed": len(report.failed), "requests": report.requests,
        "requests_during_replacement": len(window),
        "resent_after_keepalive_close": sum(s.retried for s in window),
        "replacement_p99_ms": round(p99([s.seconds for s in window]), 1),
        "replace_seconds": round(marks["web_serves"] - marks["web_replace"], 2),
        "stream_resumed": report.stream_resumed,
    })
    print(f"web switch ({name}): {results['web_switch'][-1]}")
    assert len(window) > 20, (window, marks)


def web_content(engine, image: str) -> str | None:
    return engine.image_label(image, WEB_CONTENT_LABEL)


def assert_web_serves(prod, engine, tag: str) -> None:
    """The web container runs an image with TAG's web content and serves TAG's page, and no
    candidate is left."""
    assert len(prod.compose("ps", "--all", "-q", "web").stdout.split()) == 1
    web = prod.compose.inspect("web")
    registry = web["Config"]["Image"].split("/messages-web:")[0]
    image = f"{registry}/messages-web:{tag}"
    assert web_content(engine, web["Image"]) == web_content(engine, image)
    assert engine.docker("ps", "-aq", "--filter", f"name={prod.project}-web-candidate").stdout.strip() == ""
    assert not (prod.path / ".deploy/web-candidate").exists()
    page = http("GET", prod.url + "/")
    assert page.status == 200
    expected = engine.docker("run", "--rm", "--network", "none", "--entrypoint", "cat", image,
                             "/usr/share/nginx/html/index.html").stdout
    assert page.body.decode() == expected, page.body[:300]


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


def test_v1_to_v2_checks_the_new_web_image_then_switches_within_the_bounds(prod, images, engine, traffic, results):
    assert live(prod) == ("v1", "")
    output, marks = timed_deploy(prod, "v2")
    report = traffic.stop((marks["switch"], marks["switched"]))
    assert_the_web_switch_failed_nothing(report, marks, results, "v1 to v2")
    # The candidate served the page and passed the smoke test before the switch.
    assert "web candidate: GET / -> 200 with the page" in output, output
    candidate = output.index("web candidate: GET / -> 200 with the page")
    assert "smoke test: passed against http://" in output[candidate:output.index("Switching nginx")]
    assert "web: v2's web image passed the checks" in output
    # The log names the exact images deployed.
    assert re.search(r"/messages-api:v2 is sha256:[0-9a-f]{64}", output), output
    assert V2_PAGE_MARKER in http("GET", prod.url + "/").body.decode()
    assert live(prod) == ("v2", "v1")
    assert_consistent(prod)
    assert_web_serves(prod, engine, "v2")
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


def test_a_release_whose_web_image_fails_its_check_is_rejected_before_the_switch(prod, images, engine, traffic):
    # The v2 API, and a web image whose nginx sends /api and /health to a port nothing
    # listens on (502): it serves the page, but not the app.
    registry = images["registry"]
    engine.docker("tag", f"{registry}/messages-api:v2", f"{registry}/messages-api:broken-web")
    derive_web_image(engine, registry, "v2", "broken-web",
                     "RUN sed -i 's/server ${API_UPSTREAM};/server 127.0.0.1:9;/' "
                     "/etc/nginx/templates/default.conf.template")
    web = prod.compose.container("web")
    deploy = prod.script("deploy", "broken-web", check=False)
    assert_users_saw_nothing(traffic.stop())
    assert deploy.returncode == 1, deploy.stdout + deploy.stderr
    assert "/health answered 502" in deploy.stderr, deploy.stderr
    assert "web image failed its check before the switch" in deploy.stdout
    assert "Switching nginx" not in deploy.stdout
    assert prod.compose.container("web") == web
    assert live(prod) == ("v2", "v1")
    assert_consistent(prod)
    assert_web_serves(prod, engine, "v2")


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


def test_update_db_backs_up_then_recreates_the_database_and_deploys(prod):
    """The explicit step for a release that changes db's definition, both ways (a changed
    definition, then the original again): a backup first, holding what was written, then the
    database recreated on the same data folder, then the deploy. Users get 503s while the
    database restarts (the docs say so); no acknowledged write is lost."""
    compose_file = prod.path / "docker-compose.prod.yml"
    original = compose_file.read_text()
    changed = original.replace("\n  db:\n", "\n  db:\n    labels: [changed-by-the-release=yes]\n", 1)
    assert changed != original
    for step, definition in enumerate((changed, original)):
        text = f"written before --update-db {step} {time.time()}"
        assert http("POST", prod.url + "/api/messages", {"message": text}).status == 201
        db, backups = prod.compose.container("db"), set((prod.path / "backups").iterdir())
        live_tag = live(prod)[0]
        other = "v1" if live_tag == "v2" else "v2"
        compose_file.write_text(definition)
        deploy = prod.script("deploy", "--update-db", other, check=False)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        assert "backing up, then recreating it (--update-db)" in deploy.stdout
        made = set((prod.path / "backups").iterdir()) - backups
        assert any(text.encode() in gzip.decompress(f.read_bytes()) for f in made), made
        assert prod.compose.container("db") != db
        assert prod.sql(f"SELECT COUNT(*) FROM messages WHERE message = '{text}'") == [["1"]]
        assert live(prod) == (other, live_tag)
        assert_consistent(prod)
        # The release's definition is the running one now: a plain deploy is not refused.
        assert "definition unchanged" in prod.script("deploy", other).stdout


def test_rollback_returns_to_v1_and_its_web_image(prod, engine, traffic, results):
    output, marks = timed_deploy(prod, "v1", script="rollback")
    assert_the_web_switch_failed_nothing(traffic.stop(), marks, results, "rollback v2 to v1")
    assert live(prod) == ("v1", "v2")
    assert_consistent(prod)
    assert_web_serves(prod, engine, "v1")


def test_a_second_deploy_during_one_is_refused(prod, engine, traffic, results):
    lines, marks = [], {"start": time.monotonic()}
    first = start_deploy(prod, "v2")
    try:
        # The first holds the lock once it says what it deploys.
        follow(first, lines, marks, until="Deploying v2")
        second = prod.script("deploy", "v2", check=False)
        assert second.returncode == 75
        assert "another deploy is running" in second.stderr
    finally:
        follow(first, lines, marks)
        first.wait(timeout=600)
    assert first.returncode == 0, "".join(lines)
    assert_the_web_switch_failed_nothing(traffic.stop(), marks, results, "v1 to v2 again")
    assert live(prod) == ("v2", "v1")
    assert_consistent(prod)
    assert_web_serves(prod, engine, "v2")


def test_a_deploy_killed_while_it_replaces_the_web_container_is_repaired_by_the_next(prod, engine, traffic):
    before = live(prod)
    assert before[0] != "v1"
    lines, marks = [], {"start": time.monotonic()}
    deploy = start_deploy(prod, "v1")
    follow(deploy, lines, marks, until="beside the running nginx")
    deploy.kill()
    # Its compose command runs on (it holds the lock, so nothing else starts meanwhile);
    # the output ends when it does.
    follow(deploy, lines, marks)
    deploy.wait()
    assert (prod.path / ".deploy/deploying").exists(), "".join(lines)
    repair = prod.script("deploy", "--repair")
    assert_users_saw_nothing(traffic.stop())
    assert "Repair: undoing the deploy of v1" in repair.stdout
    assert live(prod) == before
    assert_consistent(prod)
    assert_web_serves(prod, engine, before[0])


def files_before_edge(prod) -> dict[str, str]:
    """The host's compose files as releases before edge had them: nginx publishes the ports
    itself, on the frontend network, and the exporter joins web's namespace."""
    base = yaml.safe_load((prod.path / "docker-compose.yml").read_text())
    production = yaml.safe_load((prod.path / "docker-compose.prod.yml").read_text())
    for files, web_ports in ((base, base["services"]["edge"]["ports"]),
                             (production, production["services"]["edge"]["ports"])):
        del files["services"]["edge"]
        files["services"]["web"]["ports"] = web_ports
        files["services"]["web"].pop("network_mode", None)
        files["services"]["web"].get("environment", {}).pop("NGINX_LISTEN_OPTIONS", None)
    base["services"]["web"]["networks"] = ["frontend"]
    base["services"]["nginx-exporter"]["network_mode"] = "service:web"
    production["services"].pop("nginx-exporter", None)
    return {"docker-compose.yml": yaml.safe_dump(base), "docker-compose.prod.yml": yaml.safe_dump(production)}


def assert_only_the_move_failed(report: Report, start: float, end: float, results: dict, name: str) -> None:
    """The ports change hands once: only requests that got no answer while the deploy moved
    them (from the old nginx's stop to the deploy's end) may fail, within a bounded gap."""
    print(f"traffic: {report}")
    assert report.problems == [], report
    for sent in report.failed:
        assert sent.status == 0 and start <= sent.started <= end, sent
    span = report.unanswered_span
    results.setdefault("ports_moved", []).append({
        "deploy": name, "failed": len(report.failed), "requests": report.requests,
        "gap_seconds": round(span[1] - span[0], 2) if span else 0.0,
    })
    print(f"ports moved ({name}): {results['ports_moved'][-1]}")
    assert not span or span[1] - span[0] <= 3.0, report


def write_files(prod, files: dict[str, str]) -> None:
    for name, text in files.items():
        (prod.path / name).write_text(text)


def deploy_moving_the_ports(prod, engine, results: dict, tag: str, moving: str, moved: str, name: str) -> None:
    """Deploys TAG under traffic through a move of the ports (its lines `moving` and `moved`):
    only that move may fail requests, and the host ends consistent, serving TAG's page."""
    users = Traffic(prod.url)
    output, marks = timed_deploy(prod, tag)
    assert moved in marks, output
    assert_only_the_move_failed(users.stop(outage=(marks[moving], marks["done"])),
                                marks[moving], marks["done"], results, name)
    assert_consistent(prod)
    assert_web_serves(prod, engine, tag)


def test_a_host_from_before_edge_moves_its_ports_to_edge_and_back_for_a_release_without_it(prod, engine, results):
    """The first deploy of this release on a host that an older one laid out (its nginx
    publishing the ports itself) moves the ports to edge; a rollback to a release without
    edge gives them back. Both with one short gap, which is bounded; the next deploys again
    fail nothing."""
    current = {name: (prod.path / name).read_text() for name in ("docker-compose.yml", "docker-compose.prod.yml")}
    before_edge = files_before_edge(prod)
    live_tag = live(prod)[0]
    other = "v1" if live_tag == "v2" else "v2"
    edge = prod.compose.container("edge")
    try:
        # The host as an older release left it.
        write_files(prod, before_edge)
        prod.compose("rm", "-sf", "web")
        engine.docker("rm", "-f", edge)
        prod.compose("up", "-d", "--no-deps", "web")
        prod.compose.wait_healthy("web", timeout=60)
        write_files(prod, current)

        deploy_moving_the_ports(prod, engine, results, other, "to_edge", "on_edge", "onto edge")
        assert live(prod) == (other, live_tag)
        web = prod.compose.inspect("web")
        assert web["HostConfig"]["NetworkMode"] == f"container:{prod.compose.container('edge')}"

        # A rollback to a release whose files have no edge.
        write_files(prod, before_edge)
        deploy_moving_the_ports(prod, engine, results, live_tag, "from_edge", "off_edge", "off edge")
        assert live(prod) == (live_tag, other)
        assert engine.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={prod.project}",
                             "--filter", "label=com.docker.compose.service=edge").stdout.strip() == ""
        assert prod.compose.inspect("web")["HostConfig"]["PortBindings"]["8080/tcp"]
    finally:
        write_files(prod, current)
    # And forward again, onto edge, for the tests after this one.
    deploy_moving_the_ports(prod, engine, results, other, "to_edge", "on_edge", "onto edge again")
