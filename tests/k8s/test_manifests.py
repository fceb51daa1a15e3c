"""What every overlay must hold: restricted pods, rollouts without lost capacity, probes,
resources, disruption budgets, autoscaling, network policies and no committed secrets."""

from __future__ import annotations

from manifests import probe_port


def test_every_pod_runs_as_non_root_with_a_read_only_root_and_no_privileges(rendered):
    assert rendered.pod_specs(), "no workloads rendered"
    for name, pod in rendered.pod_specs():
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] > 0, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name


def test_the_namespace_enforces_the_restricted_pod_security_standard(rendered):
    (namespace,) = rendered.all("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"].get("namespace") for o in rendered.objects if o["kind"] != "Namespace"} == {
        namespace["metadata"]["name"]
    }


def test_every_container_has_requests_and_limits(rendered):
    for name, pod in rendered.pod_specs():
        for container in pod["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert {"cpu", "memory"} <= set(resources["limits"]), name


def test_deployments_roll_out_without_losing_a_ready_replica(rendered):
    for deployment in rendered.all("Deployment"):
        strategy = deployment["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0, deployment["metadata"]["name"]


def test_the_api_runs_at_least_three_replicas(rendered):
    assert rendered.get("HorizontalPodAutoscaler", "api")["spec"]["minReplicas"] >= 3


def test_the_autoscalers_own_the_replica_counts(rendered):
    # A count in the Deployment would reset a scaled-out API at every apply.
    for deployment in rendered.all("Deployment"):
        assert "replicas" not in deployment["spec"], deployment["metadata"]["name"]


def test_the_api_spreads_over_nodes_and_zones(rendered):
    spec = rendered.get("Deployment", "api")["spec"]
    keys = {c["topologyKey"] for c in spec["template"]["spec"]["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in spec["template"]["spec"]["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]


def test_api_probes_readiness_on_health_ready_and_liveness_on_health_live(rendered):
    container = rendered.container("Deployment", "api")
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/health/live"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert probe_port(container, container[probe]) == container["ports"][0]["containerPort"]


def test_web_probes_the_page_it_serves(rendered):
    container = rendered.container("Deployment", "web")
    for probe in ("readinessProbe", "livenessProbe"):
        assert probe_port(container, container[probe]) == container["ports"][0]["containerPort"]


def test_the_api_does_not_migrate_at_start_and_the_release_job_does(rendered):
    api = rendered.container("Deployment", "api")
    assert rendered.environment(api)["RUN_MIGRATIONS"] == "false"
    job = rendered.migrate_job()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert container["image"] == api["image"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def test_the_migrations_job_is_named_after_the_release(rendered):
    image = rendered.container("Deployment", "api")["image"]
    tag = image.rsplit(":", 1)[1]
    assert rendered.migrate_job()["metadata"]["name"] == f"migrate-{tag}"


def test_every_deployment_has_a_disruption_budget_and_a_cpu_autoscaler(rendered):
    for deployment in rendered.all("Deployment"):
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        budgets = [
            pdb for pdb in rendered.all("PodDisruptionBudget")
            if pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(budgets) == 1, name
        hpa = rendered.get("HorizontalPodAutoscaler", name)
        assert budgets[0]["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"], name
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_services_reach_the_pods_they_select(rendered):
    for service in rendered.all("Service"):
        if service["spec"].get("type") == "ExternalName":
            continue
        selected = [
            d for d in rendered.all("Deployment")
            if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, service["metadata"]["name"]
        container = selected[0]["spec"]["template"]["spec"]["containers"][0]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in {p["name"] for p in container["ports"]}


def test_the_live_stream_passes_the_ingress_unbuffered(rendered):
    stream = [
        (ingress, path)
        for ingress in rendered.all("Ingress")
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
        if path["path"] == "/api/messages/stream"
    ]
    assert len(stream) == 1
    ingress, path = stream[0]
    assert path["pathType"] == "Exact"
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    # Longer than the web tier's own limit for a silent stream (60 s).
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 60
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) > 60
    hosts = {rule["host"] for i in rendered.all("Ingress") for rule in i["spec"]["rules"]}
    assert len(hosts) == 1, "the stream's Ingress and the page's must share the host"
    for ingress in rendered.all("Ingress"):
        assert ingress["spec"]["ingressClassName"] == "nginx"
        for rule in ingress["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                assert p["backend"]["service"]["name"] == "web"


def _policies_for(rendered, labels: dict) -> list[dict]:
    def selects(selector: dict) -> bool:
        if not selector.get("matchLabels", {}).items() <= labels.items():
            return False
        for expression in selector.get("matchExpressions", []):
            assert expression["operator"] == "In"
            if labels.get(expression["key"]) not in expression["values"]:
                return False
        return True

    return [p for p in rendered.all("NetworkPolicy") if selects(p["spec"]["podSelector"])]


def test_network_policies_deny_by_default(rendered):
    deny = rendered.get("NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_only_the_ingress_controller_reaches_web_and_web_only_the_api(rendered):
    web = rendered.get("Deployment", "web")["spec"]["template"]["metadata"]["labels"]
    api = rendered.get("Deployment", "api")["spec"]["template"]["metadata"]["labels"]
    policies = _policies_for(rendered, web)
    sources = [src for p in policies for rule in p["spec"].get("ingress", []) for src in rule["from"]]
    assert sources == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    destinations = [
        (tuple(rule.get("to", [])), tuple((pt["protocol"], pt["port"]) for pt in rule["ports"]))
        for p in policies for rule in p["spec"].get("egress", [])
    ]
    api_rule = ((({"podSelector": {"matchLabels": api}}),), (("TCP", "http"),))
    assert api_rule in destinations
    others = [d for d in destinations if d != api_rule]
    assert all({pt for _, pt in d[1]} == {53} for d in others), f"web may reach only the API and DNS: {others}"


def test_only_web_and_prometheus_reach_the_api_and_it_reaches_only_the_database(rendered):
    api = rendered.get("Deployment", "api")["spec"]["template"]["metadata"]["labels"]
    policies = _policies_for(rendered, api)
    sources = [src for p in policies for rule in p["spec"].get("ingress", []) for src in rule["from"]]
    web = rendered.get("Deployment", "web")["spec"]["template"]["metadata"]["labels"]
    allowed = [{"podSelector": {"matchLabels": web}}]
    if rendered.all("ServiceMonitor"):
        allowed.append({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}})
    assert sources == allowed
    ports = {pt["port"] for p in policies for rule in p["spec"].get("egress", []) for pt in rule["ports"]}
    mysql_port = int(rendered.environment(rendered.container("Deployment", "api"))["MYSQL_PORT"])
    assert ports == {53, mysql_port}
    job = rendered.migrate_job()["spec"]["template"]["metadata"]["labels"]
    job_ports = {pt["port"] for p in _policies_for(rendered, job) for r in p["spec"].get("egress", []) for pt in r["ports"]}
    assert job_ports == {53, mysql_port}


def test_no_secret_values_are_committed(rendered):
    assert rendered.all("Secret") == []
    for name, pod in rendered.pod_specs():
        secrets = [v["secret"] for v in pod.get("volumes", []) if "secret" in v]
        assert {s["secretName"] for s in secrets} <= {"messages-secrets"}, name


def test_web_takes_the_client_address_from_the_ingress_controller(rendered):
    pod = rendered.get("Deployment", "web")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert mount["mountPath"] == f"/etc/nginx/conf.d/{mount['subPath']}" and mount["subPath"].endswith(".conf")
    snippet = rendered.get("ConfigMap", volumes[mount["name"]]["configMap"]["name"])["data"][mount["subPath"]]
    assert "real_ip_header X-Real-IP;" in snippet
    # Trusting every peer is safe only while the controller is web's one allowed peer.
    web_policy = rendered.get("NetworkPolicy", "web")["spec"]
    assert [rule["from"] for rule in web_policy["ingress"]] == [
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    ]
