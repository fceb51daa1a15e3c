"""HTTPS at the web tier with certificates from a real ACME CA: the bootstrap on a
placeholder, issuance through HTTP-01, what clients see (trust, protocols, HTTP/2, HSTS,
redirects), and a forced renewal under load. In file order: each step builds on the last."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess

import pytest
from client import request
from conftest import DOMAIN
from harness import ROOT, eventually
from load import Clients


def handshake(context: ssl.SSLContext, port: int) -> dict:
    """A TLS handshake with nginx for DOMAIN; what the client saw of it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as conn:
            return {"version": conn.version(), "alpn": conn.selected_alpn_protocol(),
                    "cipher": conn.cipher()[0], "cert": conn.getpeercert()}


def served_serial(pebble, port: int) -> str:
    return handshake(pebble.trusting_root(), port)["cert"]["serialNumber"]


def test_nginx_starts_on_a_placeholder_and_answers_challenges_before_any_certificate(host, pebble):
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(pebble.trusting_root(), host.ports.https)
    token = host.acme / ".well-known/acme-challenge/probe"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text("probe-content")
    answer = request("GET", f"{host.http_base}/.well-known/acme-challenge/probe", headers={"Host": DOMAIN})
    assert (answer.status, answer.body) == (200, "probe-content"), answer
    token.unlink()


def test_certificate_is_issued_through_http01_and_chains_to_pebbles_root(issued, host, pebble):
    seen = handshake(pebble.trusting_root(), host.ports.https)
    names = [value for kind, value in seen["cert"]["subjectAltName"] if kind == "DNS"]
    assert names == [DOMAIN]
    # Pebble fetched the challenge from this nginx over plain HTTP, and got it.
    challenges = [json.loads(line) for line in (host.nginx / "logs/access.log").read_text().splitlines()
                  if "/.well-known/acme-challenge/" in line and "probe" not in line]
    assert challenges and all(c["status"] == 200 for c in challenges), challenges
    assert all(c["method"] == "GET" for c in challenges)


def test_https_serves_the_api_over_http2_with_hsts(issued, host, pebble, tls):
    context = pebble.trusting_root()
    context.set_alpn_protocols(["h2", "http/1.1"])
    assert handshake(context, host.ports.https)["alpn"] == "h2"

    answer = request("GET", f"{host.https_base}/api/messages?limit=1", tls=tls)
    assert answer.status == 200, answer
    hsts = answer.headers.get("strict-transport-security", "")
    max_age = int(hsts.split("max-age=")[1].split(";")[0]) if "max-age=" in hsts else 0
    assert max_age >= 31536000, f"HSTS header: {hsts!r}"
    # Errors nginx makes itself carry it too.
    assert "strict-transport-security" in request("GET", f"{host.https_base}/missing", tls=tls).headers


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=lambda v: v.name)
def test_tls_1_2_and_1_3_connect(issued, host, pebble, version):
    context = pebble.trusting_root()
    context.minimum_version = context.maximum_version = version
    assert handshake(context, host.ports.https)["version"] == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=lambda v: v.name)
def test_tls_1_0_and_1_1_are_refused_by_the_server(issued, host, version):
    # A client that offers only the old version, with every cipher this OpenSSL still has
    # (security level 0 re-enables them), so that a refusal is the server's: its
    # protocol_version alert.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = version
    with pytest.raises(ssl.SSLError) as refused:
        handshake(context, host.ports.https)
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", refused.value


@pytest.mark.parametrize("method,path", [("GET", "/"), ("GET", "/api/messages"), ("POST", "/api/messages"),
                                         ("GET", "/health"), ("POST", "/submit"),
                                         ("GET", "/.well-known/other")])
def test_plain_http_is_redirected_to_https(issued, host, tls, method, path):
    before = request("GET", f"{host.https_base}/api/messages?limit=100", tls=tls).body["items"]
    answer = request(method, f"{host.http_base}{path}", {"message": "in the clear"} if method == "POST" else None,
                     headers={"Host": DOMAIN})
    assert answer.status == 301, answer
    assert answer.headers["location"] == f"https://{DOMAIN}{path}"
    # Nothing reached the API in the clear.
    assert request("GET", f"{host.https_base}/api/messages?limit=100", tls=tls).body["items"] == before


def test_the_deploys_smoke_test_passes_through_https_on_loopback(issued, host):
    """scripts/deploy's check of nginx on a host with TLS on (driver_proxy_url, the web
    candidate's address): over HTTPS, with --insecure, as the certificate names the domain."""
    result = subprocess.run([str(ROOT / "scripts/smoke-test"), "--insecure", f"https://127.0.0.1:{host.ports.https}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_board_works_in_chromium_over_https_trusting_only_pebbles_root(issued, host, pebble, api, run_dir):
    """The browser suite's board tests (e2e/board.test.js) against https://board.test, with
    Pebble's root the one CA in Chromium's NSS database: the certificate is verified."""
    home = run_dir / "chromium-home"
    nssdb = home / ".pki/nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, capture_output=True)
    subprocess.run(["certutil", "-A", "-d", f"sql:{nssdb}", "-n", "pebble-root", "-t", "C,,", "-i", str(pebble.root)],
                   check=True, capture_output=True)
    env = {**os.environ, "HOME": str(home), "E2E_BASE_URL": host.https_base, "E2E_API_URL": f"http://{api}",
           "E2E_HOST_RESOLVER_RULES": f"MAP {DOMAIN} 127.0.0.1", "E2E_SCREENSHOT_DIR": str(run_dir / "screenshots")}
    result = subprocess.run(["node", "--test", "--test-concurrency=1", "--test-timeout=120000", "--test-reporter=spec",
                             "board.test.js"], cwd=ROOT / "e2e", env=env, capture_output=True, text=True, timeout=600)
    (run_dir / "chromium.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    print(result.stdout.strip().splitlines()[-8:])


def test_forced_renewal_under_load_fails_no_request_and_serves_the_new_certificate(issued, host, pebble, tls):
    before = served_serial(pebble, host.ports.https)
    with Clients([host.https_base], threads=6, writers=2, pause=0.01, write_pause=0.02, tls=tls) as load:
        load.wait_for_requests(200)
        issued.force_renewal()
        eventually(lambda: served_serial(pebble, host.ports.https) != before, 30, "the renewed certificate served")
        load.wait_for_requests(200)
    statuses = load.statuses()
    print(f"renewal under TLS load: {load.summary()}")
    failed = [a for a in load.snapshot() if a.status not in (200, 201)]
    assert not failed, f"{len(failed)} failed of {sum(statuses.values())}: {failed[:5]}"
    assert statuses[201] > 0 and statuses[200] > 0
    assert served_serial(pebble, host.ports.https) != before


# Mozilla's "intermediate" profile (Server Side TLS guidelines, version 5.7): the protocols
# and the cipher suites a server may offer, in OpenSSL's names. nginx offers a subset.
PROFILE_PROTOCOLS = {"TLS1_2", "TLS1_3"}
PROFILE_CIPHERS = {
    "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
}


def test_scanner_finds_nothing_below_the_intermediate_profile(issued, host, run_dir):
    """testssl.sh (Debian's) tries every protocol from SSLv2 on with its own sockets, and
    every cipher suite per protocol."""
    report = run_dir / "testssl.json"
    result = subprocess.run(
        ["testssl", "--quiet", "--color", "0", "--warnings", "off", "--ip", "127.0.0.1", "--protocols",
         "--cipher-per-proto", "--jsonfile", str(report), f"{DOMAIN}:{host.ports.https}"],
        capture_output=True, text=True, timeout=600)
    (run_dir / "testssl.log").write_text(result.stdout + result.stderr)
    findings = json.loads(report.read_text())
    protocols = {f["id"] for f in findings if f["id"] in {"SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3"}
                 and f["finding"].startswith("offered")}
    ciphers = {f["finding"].split()[3] for f in findings if f["id"].startswith("cipher-")}
    print(f"testssl.sh: protocols {sorted(protocols)}, ciphers {sorted(ciphers)}")
    assert protocols == PROFILE_PROTOCOLS, f"offered: {sorted(protocols)}"
    assert ciphers and ciphers <= PROFILE_CIPHERS, sorted(ciphers - PROFILE_CIPHERS)
