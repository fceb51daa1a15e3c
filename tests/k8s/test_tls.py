"""The production overlay's HTTPS: the Ingress's certificate comes from cert-manager
through a ClusterIssuer for an ACME CA over HTTP-01, answered by the same ingress class,
and the issuer fits cert-manager's CRD schema."""

from __future__ import annotations

import pytest
import yaml
from custom_resources import crd_errors


def test_the_cluster_issuer_fits_cert_managers_crd_schema(production):
    (issuer,) = production.all("ClusterIssuer")
    assert crd_errors(issuer) is None, crd_errors(issuer)


def test_the_issuer_asks_an_acme_ca_through_http01_on_the_ingress_class(production):
    (issuer,) = production.all("ClusterIssuer")
    acme = issuer["spec"]["acme"]
    assert acme["server"] == "https://acme-v02.api.letsencrypt.org/directory"
    assert acme["email"] and acme["privateKeySecretRef"]["name"]
    (solver,) = acme["solvers"]
    (ingress_class,) = {i["spec"]["ingressClassName"] for i in production.all("Ingress")}
    assert solver == {"http01": {"ingress": {"ingressClassName": ingress_class}}}


def test_the_ingresses_serve_their_host_over_tls_with_the_certificate_one_of_them_asks_for(production):
    (issuer,) = production.all("ClusterIssuer")
    ingresses = production.all("Ingress")
    asking = [i for i in ingresses if i["metadata"].get("annotations", {}).get("cert-manager.io/cluster-issuer")]
    # Two asking for one Secret would make two Certificates fight over it.
    assert [i["metadata"]["name"] for i in asking] == ["web"]
    assert asking[0]["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == issuer["metadata"]["name"]
    secrets = set()
    for ingress in ingresses:
        hosts = [rule["host"] for rule in ingress["spec"]["rules"]]
        (tls,) = ingress["spec"]["tls"]
        assert tls["hosts"] == hosts, ingress["metadata"]["name"]
        secrets.add(tls["secretName"])
    assert len(secrets) == 1


@pytest.mark.parametrize("break_it", [
    lambda o: o["spec"]["acme"]["solvers"][0].update(http1={"ingress": {}}),
    lambda o: o["spec"]["acme"].update(privateKeySecretRef="letsencrypt-account-key"),
    lambda o: o["spec"].update(acmee=o["spec"].pop("acme")),
])
def test_the_crd_check_catches_a_wrong_cluster_issuer(production, break_it):
    (issuer,) = production.all("ClusterIssuer")
    broken = yaml.safe_load(yaml.safe_dump(issuer))
    break_it(broken)
    assert crd_errors(broken) is not None
