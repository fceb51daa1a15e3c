"""The three images as scripts/images builds them."""

import json
import subprocess

import pytest

from conftest import build_images
from engine import ROOT, dockerfile_arg

WEB_CONTENT = "io.github.two-tier-rs.messages.web-content"

API_SIZE_LIMIT_MB = 120


def config(engine, image: str) -> dict:
    return json.loads(engine.docker("image", "inspect", image).stdout)[0]["Config"]


def test_every_image_is_built_with_the_commit_labels(engine, images, results):
    sizes = {}
    for name in ("api", "web", "backup"):
        image = f"{images['registry']}/messages-{name}:v1"
        labels = config(engine, image)["Labels"]
        assert labels["org.opencontainers.image.version"] == "v1"
        assert len(labels["org.opencontainers.image.revision"]) == 40
        sizes[name] = round(engine.image_size(image) / 1e6, 1)
    results["image_size_mb"] = sizes


def test_the_api_image_stays_under_its_size_limit(engine, images):
    size_mb = engine.image_size(f"{images['registry']}/messages-api:v1") / 1e6
    assert size_mb < API_SIZE_LIMIT_MB, f"the API image is {size_mb:.1f} MB"


def test_every_image_runs_as_a_non_root_user(engine, images):
    for name, user in (("api", "10001:10001"), ("web", "101"), ("backup", "10002:10002")):
        image = f"{images['registry']}/messages-{name}:v1"
        assert config(engine, image)["User"] == user
        uid = engine.docker("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip()
        assert uid == user.split(":")[0]


def test_the_api_binary_finds_every_library_it_links(engine, images):
    image = f"{images['registry']}/messages-api:v1"
    out = engine.docker("run", "--rm", image, "--version").stdout
    assert out.startswith("messages-api ")


def test_the_backup_image_carries_the_tools_the_backup_scripts_run(engine, images):
    """The MariaDB client of the database's series, the binary log reader, the AWS CLI and
    curl, on the Debian release the API image runs on."""
    image = f"{images['registry']}/messages-backup:v1"
    versions = engine.docker("run", "--rm", image, "bash", "-c",
                             "mariadb-dump --version && mariadb-binlog --version && aws --version"
                             " && curl --version && gzip --version").stdout
    assert "Distrib 10.11." in versions
    assert "aws-cli/2." in versions
    api_image = f"{images['registry']}/messages-api:v1"
    debian = [engine.docker("run", "--rm", "--entrypoint", "cat", image, "/etc/debian_version").stdout
              for image in (image, api_image)]
    assert debian[0] == debian[1]


def test_the_backup_image_reaches_https_with_the_ca_bundle(engine, images):
    """The AWS CLI verifies S3's certificate against the image's CA bundle."""
    image = f"{images['registry']}/messages-backup:v1"
    bundle = engine.docker("run", "--rm", image, "bash", "-c",
                           "grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt").stdout
    assert int(bundle) > 100


def test_the_web_image_renders_its_template_with_the_defaults(engine, images):
    """The entrypoint sources the defaults, renders the template and nginx accepts it."""
    image = f"{images['registry']}/messages-web:v1"
    # The entrypoint prepares the config only for an nginx command, as upstream's does.
    result = engine.docker(
        "run", "--rm", "-e", "API_UPSTREAM=127.0.0.1:9", "--entrypoint", "sh", image, "-c",
        "/docker-entrypoint.sh nginx -t -g 'pid /tmp/nginx.pid;' 2>&1 && cat /etc/nginx/conf.d/default.conf",
    )
    rendered = result.stdout
    assert "syntax is ok" in rendered
    assert "server 127.0.0.1:9" in rendered
    assert "client_max_body_size 65536" in rendered
    assert "${" not in rendered.split("syntax is ok", 1)[1]


def test_the_web_identity_changes_when_only_its_base_image_changes(engine, images):
    """The same source built on the base image and on an update of it (another image id, as
    upstream's rebuild for a security fix gives) is another web identity, so the deploy
    recreates nginx; on the same base it is the same identity, so an API-only release does
    not."""
    base = dockerfile_arg(ROOT / "docker/web.Dockerfile", "NGINX_IMAGE")
    updated = "local/nginx-base-update:test"
    engine.docker("build", "--tag", updated, "-", input=f"FROM {base}\nLABEL test.base-update=1\n")
    try:
        build_images(engine, "same-base", "web", NGINX_IMAGE=base)
        build_images(engine, "new-base", "web", NGINX_IMAGE=updated)
        web = f"{images['registry']}/messages-web"
        identity = {tag: engine.image_label(f"{web}:{tag}", WEB_CONTENT) for tag in ("v1", "same-base", "new-base")}
        assert identity["v1"] and identity["same-base"] == identity["v1"], identity
        assert identity["new-base"] != identity["v1"], identity
        assert engine.image_label(f"{web}:new-base", "test.base-update") == "1"
    finally:
        engine.docker("rmi", updated, f"{images['registry']}/messages-web:same-base",
                      f"{images['registry']}/messages-web:new-base", check=False)


@pytest.fixture(scope="module")
def saved_images(engine, images, tmp_path_factory) -> dict:
    """Every v1 image as a `docker save` archive, which Trivy reads without an engine."""
    folder = tmp_path_factory.mktemp("saved-images")
    saved = {}
    for name in ("api", "web", "backup"):
        saved[name] = folder / f"messages-{name}.tar"
        engine.docker("save", "-o", str(saved[name]), f"{images['registry']}/messages-{name}:v1")
    return saved


def api_crates_in_cargo_lock() -> tuple[set, set]:
    """(name, version) of the API's crates as Cargo.lock pins them, on this platform: those
    whose code is linked into the binary (the API and its normal dependencies, not through
    a proc-macro crate), and those plus the proc-macro crates and what they use, which run
    while it is compiled. Dev- and build-dependencies are in neither."""
    metadata = json.loads(subprocess.run(
        ["cargo", "metadata", "--locked", "--format-version", "1", "--filter-platform", "x86_64-unknown-linux-gnu"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    packages = {p["id"]: p for p in metadata["packages"]}
    nodes = {n["id"]: n for n in metadata["resolve"]["nodes"]}
    root = next(p["id"] for p in metadata["packages"] if p["name"] == "messages-api")

    def closure(through_proc_macros: bool) -> set:
        seen, todo = {root}, [root]
        while todo:
            for dep in nodes[todo.pop()]["deps"]:
                if dep["pkg"] in seen or not any(kind["kind"] is None for kind in dep["dep_kinds"]):
                    continue
                proc_macro = any("proc-macro" in t["kind"] for t in packages[dep["pkg"]]["targets"])
                if through_proc_macros or not proc_macro:
                    seen.add(dep["pkg"])
                    todo.append(dep["pkg"])
        return {(packages[i]["name"], packages[i]["version"]) for i in seen}

    return closure(False), closure(True)


def test_the_api_image_sbom_lists_the_crates_of_cargo_lock(engine, saved_images, tmp_path):
    """The binary is built with cargo-auditable, so Trivy's SBOM of the image (scripts/
    sbom-images) names each crate linked into it with the version Cargo.lock pins, and no
    crate the API does not use. (Some proc-macro crates are listed too, some not, as
    cargo-auditable records them.)"""
    reports = tmp_path / "reports"
    result = subprocess.run([str(ROOT / "scripts/sbom-images"), str(saved_images["api"])], cwd=ROOT,
                            env={**engine.env, "REPORTS_DIR": str(reports)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    sbom = json.loads((reports / "sbom/messages-api.cdx.json").read_text())
    crates = {(c["name"], c["version"]) for c in sbom["components"] if c.get("purl", "").startswith("pkg:cargo/")}
    linked, compiled = api_crates_in_cargo_lock()
    assert len(linked) > 100
    assert sorted(linked - crates) == [], "linked into the API (Cargo.lock), missing from the image's SBOM"
    assert sorted(crates - compiled) == [], "in the image's SBOM, not among the API's crates in Cargo.lock"


def test_no_image_holds_a_secret(engine, saved_images):
    result = subprocess.run([str(ROOT / "scripts/scan-secrets"), "--images", *map(str, saved_images.values())],
                            cwd=ROOT, env=engine.env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
