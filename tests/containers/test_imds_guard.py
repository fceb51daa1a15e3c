"""The EC2 host's IMDS guard (scripts/prepare-host --print-imds-guard, the script that
messages-imds-guard.service runs) on this run's Docker Engine: a container on an ordinary
bridge network is refused the instance metadata service, a container on the offsite bridge
reaches it.

The metadata service is a stand-in: a network namespace holding 169.254.169.254 behind a
veth pair, with python3's http.server answering there. Only the two test networks' traffic
is routed to it (policy routing by incoming bridge), so this machine's own route to
169.254.169.254 stays as it was. The offsite bridge has a name of its own per run, given to
the guard through MESSAGES_OFFSITE_BRIDGE (on the host: its default, msg-offsite)."""

from __future__ import annotations

import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from engine import ROOT, debian_stand_in, log, run

IMDS = "169.254.169.254"
INSTANCE_ID = "i-0standin0imds0guard"
# The rule the guard inserts, for a bridge name.
RULE = ("-d", f"{IMDS}/32", "!", "-i", "{bridge}", "-j", "REJECT")


@dataclass
class Networks:
    image: str
    offsite: str
    other: str
    offsite_bridge: str
    other_bridge: str


def ip(*args: str) -> None:
    run("ip", *args, capture_output=True)


@pytest.fixture(scope="module")
def metadata_stand_in(tmp_path_factory):
    """The stand-in for the metadata service: a namespace with 169.254.169.254 on its end
    of a veth pair, a default route back to the host's end, and an HTTP server on port 80.
    Yields the routing table that reaches it, for the networks to use."""
    suffix = secrets.token_hex(3)
    namespace, host_end, inner_end = f"imds-{suffix}", f"imdsh{suffix}", f"imdsn{suffix}"
    table = str(20000 + int(suffix, 16) % 10000)
    served = tmp_path_factory.mktemp("imds")
    (served / "latest/meta-data").mkdir(parents=True)
    (served / "latest/meta-data/instance-id").write_text(INSTANCE_ID)
    server = None
    try:
        ip("netns", "add", namespace)
        ip("link", "add", host_end, "type", "veth", "peer", "name", inner_end)
        ip("link", "set", inner_end, "netns", namespace)
        ip("addr", "add", "169.254.170.1/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        inside = ("netns", "exec", namespace, "ip")
        ip(*inside, "link", "set", "lo", "up")
        ip(*inside, "addr", "add", "169.254.170.2/30", "dev", inner_end)
        ip(*inside, "addr", "add", f"{IMDS}/32", "dev", inner_end)
        ip(*inside, "link", "set", inner_end, "up")
        ip(*inside, "route", "add", "default", "via", "169.254.170.1")
        ip("route", "add", f"{IMDS}/32", "via", "169.254.170.2", "dev", host_end, "table", table)
        server = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "python3", "-m", "http.server", "80", "--bind", IMDS,
             "--directory", str(served)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while subprocess.run(["ip", "netns", "exec", namespace, "curl", "-fsS", "-o", "/dev/null",
                              f"http://{IMDS}/latest/meta-data/instance-id"], capture_output=True).returncode:
            assert server.poll() is None and time.monotonic() < deadline, "the metadata stand-in did not answer"
            time.sleep(0.2)
        log(f"metadata stand-in on {IMDS} in namespace {namespace}, routed by table {table}")
        yield table
    finally:
        if server:
            server.terminate()
            server.wait()
        run("ip", "route", "flush", "table", table, check=False, capture_output=True)
        run("ip", "netns", "delete", namespace, check=False, capture_output=True)
        # Gone with the namespace's end, unless something still held the namespace.
        run("ip", "link", "delete", host_end, check=False, capture_output=True)


@pytest.fixture(scope="module")
def networks(engine, metadata_stand_in):
    """Two bridge networks whose traffic to 169.254.169.254 goes to the stand-in: the
    offsite network (its bridge named as the guard is told) and an ordinary one."""
    if not engine.started:
        pytest.skip("the guard's rule goes into this machine's firewall: it needs the engine this run starts")
    image, _ = debian_stand_in(engine)
    suffix = secrets.token_hex(3)
    made = Networks(image, f"imds-offsite-{suffix}", f"imds-other-{suffix}", f"imdso{suffix}", f"imdsb{suffix}")
    rules = []
    try:
        for name, bridge in ((made.offsite, made.offsite_bridge), (made.other, made.other_bridge)):
            engine.docker("network", "create", "-o", f"com.docker.network.bridge.name={bridge}", name)
            rule = ("iif", bridge, "lookup", metadata_stand_in)
            ip("rule", "add", *rule)
            rules.append(rule)
        yield made
    finally:
        for rule in rules:
            run("ip", "rule", "del", *rule, check=False, capture_output=True)
        for name in (made.offsite, made.other):
            engine.docker("network", "rm", name, check=False)


def fetch_instance_id(engine, networks: Networks, network: str) -> subprocess.CompletedProcess:
    """GET /latest/meta-data/instance-id from a container on `network` (bash's /dev/tcp:
    the Debian image has no HTTP client)."""
    request = (f"exec 3<>/dev/tcp/{IMDS}/80 && "
               "printf 'GET /latest/meta-data/instance-id HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3")
    return engine.docker("run", "--rm", "--network", network, networks.image,
                         "timeout", "15", "bash", "-c", request, check=False)


def guard_script(tmp_path: Path) -> Path:
    guard = tmp_path / "messages-imds-guard"
    guard.write_text(run(str(ROOT / "scripts/prepare-host"), "--print-imds-guard", capture_output=True).stdout)
    guard.chmod(0o755)
    return guard


def rule_for(bridge: str) -> list[str]:
    return [part.format(bridge=bridge) for part in RULE]


def run_guard(guard: Path, bridge: str) -> subprocess.CompletedProcess:
    return run(str(guard), capture_output=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                     "MESSAGES_OFFSITE_BRIDGE": bridge})


@pytest.fixture(scope="module")
def guarded(engine, networks, tmp_path_factory):
    """Both networks reach the stand-in at first; then the guard runs, as the host's unit
    runs it after Docker starts, told the offsite bridge's name. Its rule is deleted at the end."""
    for network in (networks.other, networks.offsite):
        reached = fetch_instance_id(engine, networks, network)
        assert INSTANCE_ID in reached.stdout, f"without the guard, from {network}: {reached.stdout}{reached.stderr}"
    guard = guard_script(tmp_path_factory.mktemp("guard"))
    try:
        first = run_guard(guard, networks.offsite_bridge)
        yield guard, first
    finally:
        run("iptables", "-w", "-D", "DOCKER-USER", *rule_for(networks.offsite_bridge), check=False,
            capture_output=True)


def test_a_container_on_another_network_is_refused_the_metadata_service(engine, networks, guarded):
    refused = fetch_instance_id(engine, networks, networks.other)
    assert refused.returncode != 0 and INSTANCE_ID not in refused.stdout, refused.stdout
    # Refused at once (REJECT), not left to time out.
    assert "Connection refused" in refused.stderr, refused.stderr


def test_a_container_on_the_offsite_network_reaches_the_metadata_service(engine, networks, guarded):
    reached = fetch_instance_id(engine, networks, networks.offsite)
    assert reached.returncode == 0, reached.stderr
    assert reached.stdout.startswith("HTTP/1.0 200") and reached.stdout.endswith(INSTANCE_ID), reached.stdout


def test_the_guard_inserts_its_rule_once_at_the_top_of_docker_user(networks, guarded):
    guard, first = guarded
    assert "rule inserted into DOCKER-USER" in first.stdout, first.stdout
    again = run_guard(guard, networks.offsite_bridge)
    assert "already so" in again.stdout, again.stdout
    chain = run("iptables", "-w", "-S", "DOCKER-USER", capture_output=True).stdout.splitlines()
    wanted = f"-A DOCKER-USER -d {IMDS}/32 ! -i {networks.offsite_bridge} -j REJECT --reject-with icmp-port-unreachable"
    assert chain[1] == wanted, chain
    assert chain.count(wanted) == 1, chain
