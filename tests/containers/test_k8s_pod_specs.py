"""The Kubernetes pod specs run for real: the local overlay rendered by `kubectl kustomize`,
its migrations Job, API and web containers started on the test's engine with exactly what
the manifests say (image, args, environment from the ConfigMaps, the Secret's files, user,
groups, read-only root, dropped capabilities, no privilege escalation, emptyDirs as tmpfs,
ConfigMap files, limits). Containers find each other by the Kubernetes Service names, as network aliases:
`db` (the database's ExternalName), `api` and `web`. The probes must answer on the declared
ports, web must proxy to the API by its Service name, and what is written through web must
land in the database the manifests point at. A wrong variable name, port or path fails here.

One thing docker cannot mimic: a Service that maps its port to another target port. The
test checks that the api Service does not, since web reaches the API at the pod's port.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import checks
import pytest
from engine import ROOT, compose_db_image, log
from harness import eventually
from stack import http

sys.path.insert(0, str(ROOT / "tests/k8s"))

from manifests import cpu_cores, port_by_name, probe_port, render  # noqa: E402

OVERLAY = "local"
NETWORK = "messages-k8s-pods-test"


def memory(value: str) -> str:
    number, unit = value[:-2], value[-2:]
    assert unit in ("Mi", "Gi"), value
    return f"{number}{unit[0].lower()}"


class Pods:
    """Starts containers from pod specs on one user-defined network, and removes them."""

    def __init__(self, engine, rendered, images, workdir: Path):
        self.engine = engine
        self.rendered = rendered
        self.images = images
        self.workdir = workdir
        self.containers: list[str] = []
        self.secret_values = {
            "db_password": secrets.token_hex(12),
            "admin_token": secrets.token_hex(16),
            "token_sealing_key": secrets.token_hex(24),
        }

    def image(self, container: dict) -> str:
        """The image the manifest names, at the tag the test built."""
        name = container["image"].rsplit(":", 1)[0]
        assert name in {f"{self.images['registry']}/messages-api", f"{self.images['registry']}/messages-web"}, name
        return f"{name}:{self.images['tags'][0]}"

    def secret_folder(self, pod_name: str, volume: dict, fs_group: int) -> Path:
        """The Secret's items as its volume shows them: files of the volume's mode, owned by
        the pod's fsGroup."""
        folder = self.workdir / f"secrets-{pod_name}"
        folder.mkdir(exist_ok=True)
        for item in volume["secret"]["items"]:
            path = folder / item["path"]
            path.write_text(self.secret_values[item["key"]])
            os.chown(path, 0, fs_group)
            path.chmod(volume["secret"]["defaultMode"])
        return folder

    def run(self, kind: str, name: str, alias: str | None, detach: bool = True,
            instance: str | None = None, env: dict[str, str] | None = None) -> str | subprocess.CompletedProcess:
        """Runs the pod spec `name` as container k8s-INSTANCE (default: the name), with
        `env` over the manifests' environment."""
        pod = self.rendered.get(kind, name)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        security, context = pod["securityContext"], container["securityContext"]
        assert security["runAsNonRoot"] and security["runAsUser"] != 0
        instance = instance or name
        args = ["run", "--name", f"k8s-{instance}", "--network", NETWORK,
                "--user", f"{security['runAsUser']}:{security['runAsGroup']}",
                "--group-add", str(security["fsGroup"])]
        if alias:
            args += ["--network-alias", alias]
        if context["readOnlyRootFilesystem"]:
            args.append("--read-only")
        if context["capabilities"]["drop"] == ["ALL"]:
            args += ["--cap-drop", "ALL"]
        if context["allowPrivilegeEscalation"] is False:
            args += ["--security-opt", "no-new-privileges"]
        # seccomp RuntimeDefault is the engine's default profile: nothing to pass.
        assert security["seccompProfile"]["type"] == "RuntimeDefault"
        limits = container["resources"]["limits"]
        args += ["--cpus", str(cpu_cores(limits["cpu"])), "--memory", memory(limits["memory"])]
        for var, value in {**self.rendered.environment(container), **(env or {})}.items():
            args += ["--env", f"{var}={value}"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "secret" in volume:
                assert volume["secret"]["secretName"] == "messages-secrets"
                folder = self.secret_folder(name, volume, security["fsGroup"])
                args += ["--volume", f"{folder}:{mount['mountPath']}:ro"]
            elif "configMap" in volume:
                folder = self.workdir / f"config-{name}-{mount['name']}"
                folder.mkdir(exist_ok=True)
                for key, text in self.rendered.get("ConfigMap", volume["configMap"]["name"])["data"].items():
                    (folder / key).write_text(text)
                source = folder / mount["subPath"] if "subPath" in mount else folder
                args += ["--volume", f"{source}:{mount['mountPath']}:ro"]
            else:
                assert "emptyDir" in volume, mount
                args += ["--tmpfs", f"{mount['mountPath']}:uid=0,gid={security['fsGroup']},mode=0777"]
        for port in container.get("ports", []):
            args += ["--publish", f"127.0.0.1::{port['containerPort']}"]
        if detach:
            args.append("--detach")
        args += [self.image(container), *container.get("args", [])]
        self.containers.append(f"k8s-{instance}")
        result = self.engine.docker(*args, check=detach)
        return result.stdout.strip() if detach else result

    def url(self, container_name: str, port: int) -> str:
        published = self.engine.docker("port", container_name, f"{port}/tcp").stdout.split()[0]
        return f"http://{published}"

    def logs(self, container_name: str) -> str:
        result = self.engine.docker("logs", "--tail", "40", container_name, check=False)
        return result.stdout + result.stderr

    def remove(self):
        for name in self.containers:
            self.engine.docker("rm", "-f", "-v", name, check=False)
        self.engine.docker("network", "rm", NETWORK, check=False)


@pytest.fixture(scope="module")
def pods(engine, images, workdir):
    rendered = render(OVERLAY)
    pods = Pods(engine, rendered, images, workdir)
    # Leftovers of an interrupted run.
    pods.containers = ["k8s-db", "k8s-api", "k8s-api-unmigrated", "k8s-web", f"k8s-{rendered.migrate_job()['metadata']['name']}"]
    pods.remove()
    pods.containers = []
    started = time.monotonic()
    engine.docker("network", "create", NETWORK)
    try:
        # The database the manifests name: the `db` Service, the account and schema of the
        # API's ConfigMap, the password of the Secret.
        settings = rendered.environment(rendered.container("Deployment", "api"))
        db_host = rendered.get("Service", "db")["metadata"]["name"]
        assert settings["MYSQL_HOST"] == db_host
        # The port compose's db (and any MySQL by default) listens on.
        assert settings["MYSQL_PORT"] == "3306"
        pods.containers.append("k8s-db")
        engine.docker(
            "run", "--detach", "--name", "k8s-db", "--network", NETWORK, "--network-alias", db_host,
            "--env", f"MYSQL_DATABASE={settings['MYSQL_DB']}", "--env", f"MYSQL_USER={settings['MYSQL_USER']}",
            "--env", f"MYSQL_PASSWORD={pods.secret_values['db_password']}",
            "--env", f"MYSQL_ROOT_PASSWORD={secrets.token_hex(12)}",
            compose_db_image(),
        )
        eventually(
            lambda: engine.docker("exec", "k8s-db", "healthcheck.sh", "--connect", "--innodb_initialized",
                                  check=False).returncode == 0,
            120, what="the database", interval=0.5,
        )
        pods.started = started
        yield pods
    finally:
        pods.remove()


@pytest.fixture(scope="module")
def migrated(pods):
    """The migrations Job's pod, run to completion (once, as restartPolicy Never says)."""
    job = pods.rendered.migrate_job()
    result = pods.run("Job", job["metadata"]["name"], alias=None, detach=False)
    assert result.returncode == 0, f"the migrations Job failed:\n{result.stdout}{result.stderr}"
    return job


@pytest.fixture(scope="module")
def api(pods, migrated):
    name = pods.run("Deployment", "api", alias="api")
    container = pods.rendered.container("Deployment", "api")
    port = port_by_name(container, "http")
    return {"container": container, "name": name, "url": pods.url("k8s-api", port)}


@pytest.fixture(scope="module")
def web(pods, api):
    pods.run("Deployment", "web", alias="web")
    container = pods.rendered.container("Deployment", "web")
    return {"container": container, "url": pods.url("k8s-web", port_by_name(container, "http"))}


def probe(pods, name: str, container: dict, kind: str, timeout: float) -> None:
    spec = container[kind]
    url = pods.url(f"k8s-{name}", probe_port(container, spec)) + spec["httpGet"]["path"]
    try:
        eventually(lambda: http("GET", url, timeout=spec.get("timeoutSeconds", 1)).status == 200,
                   timeout, what=f"{name}'s {kind} ({url})")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{pods.logs(f'k8s-{name}')}") from None


def test_the_migrations_job_migrates_the_database_the_manifests_name(pods, migrated):
    tables = pods.engine.docker(
        "exec", "k8s-db", "sh", "-c", 'mariadb -u"$MYSQL_USER" -p"$MYSQL_PASSWORD" "$MYSQL_DATABASE" -Nse "SHOW TABLES"',
    ).stdout.split()
    assert "messages" in tables and "__diesel_schema_migrations" in tables


def test_the_api_pod_answers_its_probes_on_its_declared_port(pods, api):
    container = api["container"]
    # The startup probe's budget: periodSeconds x failureThreshold.
    startup = container["startupProbe"]
    probe(pods, "api", container, "startupProbe", startup["periodSeconds"] * startup["failureThreshold"])
    probe(pods, "api", container, "livenessProbe", 10)
    probe(pods, "api", container, "readinessProbe", 30)
    ready = http("GET", api["url"] + container["readinessProbe"]["httpGet"]["path"]).json
    assert ready == {"status": "ready"}
    assert http("GET", api["url"] + "/health").json == {"status": "healthy", "database": "connected"}


def test_the_api_pod_does_not_migrate_at_start(pods, api):
    """Only the Job migrates. Against a database the Job has not touched, the API pod becomes
    ready and has created no table (with RUN_MIGRATIONS=true it would have created them)."""
    user = pods.rendered.environment(api["container"])["MYSQL_USER"]

    def as_root(sql: str) -> list[str]:
        return pods.engine.docker(
            "exec", "k8s-db", "sh", "-c", 'mariadb -uroot -p"$MYSQL_ROOT_PASSWORD" -Nse "$0"', sql,
        ).stdout.split()

    as_root(f"CREATE DATABASE unmigrated; GRANT ALL ON unmigrated.* TO '{user}'@'%'")
    pods.run("Deployment", "api", alias=None, instance="api-unmigrated", env={"MYSQL_DB": "unmigrated"})
    probe(pods, "api-unmigrated", api["container"], "readinessProbe", 30)
    assert as_root("SHOW TABLES FROM unmigrated") == [], pods.logs("k8s-api-unmigrated")
    assert "applied database migrations" not in pods.logs("k8s-api-unmigrated")


def test_the_web_pod_answers_its_probes_on_its_declared_port(pods, web):
    for kind in ("readinessProbe", "livenessProbe"):
        probe(pods, "web", web["container"], kind, 30)


def test_web_runs_one_worker_per_cpu_of_its_limit(pods, web):
    """nginx's "auto" would count the engine host's CPUs; the pod's limit decides instead."""
    probe(pods, "web", web["container"], "readinessProbe", 30)
    expected = math.ceil(cpu_cores(web["container"]["resources"]["limits"]["cpu"]))
    workers = pods.engine.docker(
        "exec", "k8s-web", "sh", "-c", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -o 'nginx: worker proces[s]' | wc -l",
    ).stdout.strip()
    assert int(workers) == expected, f"{workers} nginx workers, the limit gives {expected}"


def test_web_proxies_to_the_api_service_by_name(pods, api, web):
    service = pods.rendered.get("Service", "api")
    (port,) = service["spec"]["ports"]
    # A network alias has no port mapping of its own: the Service's port is the pod's.
    assert port["port"] == port_by_name(api["container"], port["targetPort"])
    probe(pods, "api", api["container"], "readinessProbe", 30)
    assert http("GET", web["url"] + "/health").json["database"] == "connected"
    checks.page_is_served(web["url"])
    checks.create_list_edit_and_delete(web["url"])
    checks.new_message_arrives_on_the_stream(web["url"])


def test_a_message_posted_through_web_lands_in_the_database(pods, api, web):
    created = http("POST", web["url"] + "/api/messages", {"message": "through the pod specs"})
    assert created.status == 201, created.body
    rows = pods.engine.docker(
        "exec", "k8s-db", "sh", "-c",
        'mariadb -u"$MYSQL_USER" -p"$MYSQL_PASSWORD" "$MYSQL_DATABASE" -Nse "SELECT COUNT(*) FROM messages WHERE id = $0"',
        str(created.json["id"]),
    ).stdout.split()
    assert rows == ["1"]
    log(f"pod specs: database, migrations Job, API and web up and checked in "
        f"{time.monotonic() - pods.started:.0f}s")
    print(json.dumps({"k8s_pod_specs_seconds": round(time.monotonic() - pods.started, 1)}))


def test_web_limits_writes_per_client_address_behind_the_ingress(pods, web):
    """ingress-nginx sends the client's address in X-Real-IP: one client's burst of writes
    gets 429s, another client still writes."""
    def post(client: str) -> int:
        return http("POST", web["url"] + "/api/messages", {"message": f"from {client}"},
                    {"X-Real-IP": client}).status

    statuses = []
    for _ in range(60):
        statuses.append(post("203.0.113.7"))
        if statuses[-1] == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {201}, statuses
    assert post("203.0.113.8") == 201
