"""infra/messages-host.yaml: cfn-lint, the pieces the issue asks for, and the one published
port shared by the security group, the host's .env and the compose files."""

import json
import os
import re
import sys
from pathlib import Path

from conftest import REPO, TEMPLATE, run

COMPOSE = os.environ.get("COMPOSE_BIN", "docker-compose")


def test_cfn_lint_reports_no_error_and_no_warning():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = run(str(cfn_lint), "--format", "parseable", str(TEMPLATE), check=False)
    assert (result.returncode, result.stdout.strip()) == (0, ""), result.stdout + result.stderr


def test_security_group_opens_the_app_port_to_all_and_ssh_to_jenkins_only(template):
    group = template["Resources"]["SecurityGroup"]["Properties"]
    rules = sorted(
        (r["IpProtocol"], json.dumps(r["FromPort"]), json.dumps(r["ToPort"]), json.dumps(r["CidrIp"]))
        for r in group["SecurityGroupIngress"]
    )
    assert rules == sorted([
        ("tcp", '{"Ref": "HttpPort"}', '{"Ref": "HttpPort"}', '"0.0.0.0/0"'),
        ("tcp", "22", "22", '{"Ref": "JenkinsCidr"}'),
    ])
    assert not any("CidrIpv6" in r or "SourceSecurityGroupId" in r for r in group["SecurityGroupIngress"])


def test_instance_requires_imdsv2_and_an_encrypted_gp3_root_volume(template):
    data = template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    (root,) = data["BlockDeviceMappings"]
    assert root["Ebs"]["VolumeType"] == "gp3"
    assert root["Ebs"]["Encrypted"] is True
    instance = template["Resources"]["Instance"]["Properties"]
    assert instance["LaunchTemplate"]["LaunchTemplateId"] == {"Ref": "LaunchTemplate"}


def test_instance_role_may_only_read_from_ecr(template):
    role = template["Resources"]["InstanceRole"]["Properties"]
    assert role["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly"}
    ]
    assert "Policies" not in role
    profile = template["Resources"]["InstanceProfile"]["Properties"]
    assert profile["Roles"] == [{"Ref": "InstanceRole"}]
    assert template["Resources"]["Instance"]["Properties"]["IamInstanceProfile"] == {"Ref": "InstanceProfile"}


def test_outputs_give_jenkins_its_public_url_and_deploy_host_on_the_elastic_ip(template):
    eip = template["Resources"]["ElasticIp"]["Properties"]
    assert eip["InstanceId"] == {"Ref": "Instance"}
    outputs = template["Outputs"]
    assert outputs["PublicUrl"]["Value"] == {"Fn::Sub": "http://${ElasticIp.PublicIp}:${HttpPort}"}
    assert outputs["DeployHost"]["Value"] == {"Fn::Sub": "${DeployUser}@${ElasticIp.PublicIp}"}


def test_user_data_runs_prepare_host_once_and_the_stack_waits_for_it(template):
    body = template["Resources"]["Instance"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"][0]
    assert len(re.findall(r"^/usr/local/sbin/prepare-host ", body, re.MULTILINE)) == 1
    assert "--http-port '${HttpPort}'" in body
    wait = template["Resources"]["HostReady"]
    assert wait["DependsOn"] == "Instance"
    assert wait["Properties"]["Handle"] == {"Ref": "HostReadyHandle"}


def test_stack_and_compose_files_publish_the_same_port(template, prepared_host):
    """The port's one source is the stack's HttpPort: the security group opens it, the
    user-data hands it to prepare-host, which writes HTTP_PORT into the host's .env, which
    the compose files publish. Rendered here by Compose v2, as on the host, from the .env
    that prepare-host wrote in the Debian root."""
    http_port = prepared_host.values["HttpPort"]
    result = run(COMPOSE, "--env-file", str(prepared_host.path("/srv/messages/.env")),
                 "-f", "docker-compose.yml", "-f", "docker-compose.prod.yml",
                 "config", "--format", "json", cwd=REPO)
    services = json.loads(result.stdout)["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert list(published) == ["web"], "only nginx publishes a port"
    (port,) = published["web"]
    assert str(port["published"]) == http_port
    # Inside the container nginx listens on its template's default HTTP_PORT.
    nginx_default = re.search(r'^: "\$\{HTTP_PORT:=(\d+)\}"', (REPO / "nginx/template-defaults.envsh").read_text(),
                              re.MULTILINE).group(1)
    assert str(port["target"]) == nginx_default
