"""The manifests and the compose files describe the same containers: the same variable
names and values, ports, probe paths, secret files, limits and service names."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from manifests import ROOT, port_by_name

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROD = yaml.safe_load((ROOT / "docker-compose.prod.yml").read_text())
API_SERVICE = yaml.safe_load((ROOT / "docker/api-service.yml").read_text())["services"]["api"]
ENV_EXAMPLE = (ROOT / ".env.example").read_text()


def compose_value(value) -> str | None:
    """A compose value with its ${VAR:-default} resolved as .env.example would."""
    if value is None:
        return None

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(3) or ""
        example = re.search(rf"^{name}=(.*)$", ENV_EXAMPLE, re.MULTILINE)
        return example.group(1) if example else default

    return re.sub(r"\$\{(\w+)(:?-([^}]*))?\}", substitute, str(value))


def api_variables_of_the_binary() -> set[str]:
    return set(re.findall(r'env = "(\w+)"', (ROOT / "api/src/config.rs").read_text()))


def compose_api_environment() -> dict[str, str | None]:
    """What the API containers get in compose: docker/api-service.yml, and the EC2 host's
    api-blue/api-green on top."""
    env = {k: compose_value(v) for k, v in API_SERVICE["environment"].items()}
    env.update({k: compose_value(v) for k, v in PROD["services"]["api-blue"]["environment"].items()})
    return env


def dockerfile_env(dockerfile: str) -> dict[str, str]:
    text = (ROOT / "docker" / dockerfile).read_text().replace("\\\n", " ")
    return dict(re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"^ENV (.*)$", text, re.MULTILINE))))


def template_variables() -> dict[str, str]:
    text = (ROOT / "nginx/template-defaults.envsh").read_text()
    return dict(re.findall(r'^: "\$\{(\w+):=([^}]*)\}"$', text, re.MULTILINE))


def test_the_api_gets_only_variables_compose_sets_or_the_binary_reads(rendered):
    env = rendered.environment(rendered.container("Deployment", "api"))
    unknown = set(env) - set(compose_api_environment()) - api_variables_of_the_binary()
    assert not unknown, f"variables neither compose sets nor messages-api reads: {unknown}"


def test_the_api_settings_have_the_values_compose_gives(rendered):
    env = rendered.environment(rendered.container("Deployment", "api"))
    compose = compose_api_environment()
    for name in set(env) & set(compose):
        if compose[name] is not None:
            assert env[name] == compose[name], name
    # The database's name, user and address, as compose creates them.
    assert env["MYSQL_HOST"] == "db" and "db" in COMPOSE["services"]
    assert env["MYSQL_DB"] == compose_value(COMPOSE["services"]["db"]["environment"]["MYSQL_DATABASE"])
    assert env["MYSQL_USER"] == compose_value(COMPOSE["services"]["db"]["environment"]["MYSQL_USER"])


def test_the_api_listens_where_compose_and_the_image_say(rendered):
    container = rendered.container("Deployment", "api")
    env = rendered.environment(container)
    image = dockerfile_env("api.Dockerfile")
    port = port_by_name(container, "http")
    assert port == int(env.get("PORT", image["PORT"]))
    host, upstream_port = compose_value(COMPOSE["services"]["web"]["environment"]["API_UPSTREAM"]).split(":")
    assert (host, int(upstream_port)) == ("api", port)
    assert env.get("HOST", image["HOST"]) == "0.0.0.0"


def test_secrets_are_the_files_the_ec2_host_mounts(rendered):
    compose = compose_api_environment()
    secret_names = set(PROD["secrets"])
    for kind, name in (("Deployment", "api"), ("Job", rendered.migrate_job()["metadata"]["name"])):
        pod = rendered.get(kind, name)["spec"]["template"]["spec"]
        env = rendered.environment(pod["containers"][0])
        files = {k: v for k, v in env.items() if k.endswith("_FILE")}
        assert files, f"{kind}/{name} reads no secret file"
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        (volume,) = [v for v in pod["volumes"] if "secret" in v]
        keys = {item["key"] for item in volume["secret"]["items"]}
        assert keys <= secret_names
        for var, path in files.items():
            assert path == compose[var], var
            assert path.rsplit("/", 1) == [mounts[volume["name"]], path.rsplit("/", 1)[1]]
            assert path.rsplit("/", 1)[1] in keys, var


def test_web_is_configured_by_the_nginx_template_variables(rendered):
    container = rendered.container("Deployment", "web")
    env = rendered.environment(container)
    variables = template_variables()
    assert set(env) <= set(variables), set(env) - set(variables)
    compose_web = COMPOSE["services"]["web"]["environment"]
    assert set(compose_web) <= set(variables)
    assert env["API_UPSTREAM"] == compose_value(compose_web["API_UPSTREAM"])
    # The upstream is the api Service, on the port its pods listen on.
    host, port = env["API_UPSTREAM"].split(":")
    service = rendered.get("Service", host)
    assert [p["port"] for p in service["spec"]["ports"]] == [int(port)]


def test_web_runs_a_worker_per_cpu_of_its_own_limit(rendered):
    container = rendered.container("Deployment", "web")
    (var,) = [v for v in container["env"] if v["name"] == "NGINX_WORKER_PROCESSES"]
    ref = var["valueFrom"]["resourceFieldRef"]
    assert ref == {"containerName": "web", "resource": "limits.cpu", "divisor": "1"}
    assert "NGINX_WORKER_PROCESSES" in template_variables()
    assert "worker_processes ${NGINX_WORKER_PROCESSES};" in (ROOT / "nginx/templates/worker-processes.main.template").read_text()


def test_web_listens_where_compose_publishes_it(rendered):
    container = rendered.container("Deployment", "web")
    port = port_by_name(container, "http")
    # nginx runs in edge's network namespace, which publishes the port.
    assert COMPOSE["services"]["web"]["network_mode"] == "service:edge"
    (published,) = COMPOSE["services"]["edge"]["ports"]
    assert int(published.rsplit(":", 1)[1]) == port
    assert int(rendered.environment(container).get("NGINX_LISTEN", template_variables()["NGINX_LISTEN"])) == port


def test_web_probes_the_path_of_its_image_health_check(rendered):
    container = rendered.container("Deployment", "web")
    dockerfile = (ROOT / "docker/web.Dockerfile").read_text()
    url = re.search(r'HEALTHCHECK .*"(http://127\.0\.0\.1:(\d+)(/[^"]*))"', dockerfile, re.DOTALL)
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == url.group(3)
        assert port_by_name(container, container[probe]["httpGet"]["port"]) == int(url.group(2))


def test_api_probe_paths_are_the_documented_health_endpoints(rendered):
    container = rendered.container("Deployment", "api")
    paths = json.loads((ROOT / "openapi/openapi.json").read_text())["paths"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in paths
    # The image's own health check (`messages-api healthcheck`, which compose and the deploy
    # wait on) asks the database too; readiness asks only whether this pod has started.
    healthcheck = re.search(r'"GET (\S+) HTTP/1.0', (ROOT / "api/src/main.rs").read_text())
    assert healthcheck.group(1) == "/health" and healthcheck.group(1) in paths
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"


def test_web_writes_only_where_the_ec2_host_gives_it_tmpfs(rendered):
    pod = rendered.get("Deployment", "web")["spec"]["template"]["spec"]
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"] in empty_dirs}
    tmpfs = {entry.split(":")[0] for entry in PROD["services"]["web"]["tmpfs"]}
    assert mounts == tmpfs
    assert PROD["services"]["web"]["read_only"] is True


def test_limits_are_the_ec2_hosts(rendered):
    def cpus(value: str) -> float:
        return float(value[:-1]) / 1000 if value.endswith("m") else float(value)

    def mebibytes(value: str) -> int:
        number, unit = re.fullmatch(r"(\d+)([a-zA-Z]+)", value).groups()
        return int(number) * {"m": 1, "Mi": 1, "g": 1024, "Gi": 1024}[unit]

    for name, compose in (("api", PROD["services"]["api-blue"]), ("web", PROD["services"]["web"])):
        limits = rendered.container("Deployment", name)["resources"]["limits"]
        expected = compose["deploy"]["resources"]["limits"]
        assert cpus(limits["cpu"]) == float(expected["cpus"]), name
        assert mebibytes(limits["memory"]) == mebibytes(expected["memory"]), name


def test_services_are_named_as_in_compose(rendered):
    names = {s["metadata"]["name"] for s in rendered.all("Service")}
    assert names == {"api", "web", "db"} and names <= set(COMPOSE["services"])
    assert {d["metadata"]["name"] for d in rendered.all("Deployment")} == {"api", "web"}
    assert rendered.get("Service", "db")["spec"]["type"] == "ExternalName"


@pytest.mark.parametrize("name", ["api", "web"])
def test_images_are_the_projects(rendered, name):
    image = rendered.container("Deployment", name)["image"]
    assert re.fullmatch(rf"(.+/)?messages-{name}:[\w.-]+", image), image
    compose_image = COMPOSE["services"][name]["image"]
    assert compose_image.endswith(f"/messages-{name}:${{IMAGE_TAG:-dev}}")
