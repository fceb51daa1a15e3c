"""A real S3 implementation running locally for the tests (moto's server, a stand-in for AWS
S3), reached with the real AWS CLI: the bucket the backups go to, as the EC2 host's stack
creates it (versioned)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from harness import eventually, free_port

BUCKET = "messages-backups"
# moto accepts any credentials; the AWS CLI needs some, and a region.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "messages-tests", "AWS_SECRET_ACCESS_KEY": "messages-tests",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
# The same key in the AWS CLI's credentials file format (secrets/backup_aws_credentials).
CREDENTIALS_FILE = (f"[default]\naws_access_key_id = {AWS_ENV['AWS_ACCESS_KEY_ID']}\n"
                    f"aws_secret_access_key = {AWS_ENV['AWS_SECRET_ACCESS_KEY']}\n")


class Service:
    """A server process of the test run, its output in a log file, stopped at the end."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, start_new_session=True)

    def alive(self) -> bool:
        assert self.process.poll() is None, f"{self.process.args[0]} exited: {self.log.read_text()[-2000:]}"
        return True

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read()


class S3:
    """The local S3, through the AWS CLI."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.env = {**os.environ, **AWS_ENV}

    def aws(self, *args: str) -> str:
        result = subprocess.run(["aws", "--endpoint-url", self.endpoint, *args], env=self.env, text=True,
                                capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def keys(self, prefix: str) -> list[str]:
        listed = json.loads(self.aws("s3api", "list-objects-v2", "--bucket", BUCKET, "--prefix", prefix) or "{}")
        return [item["Key"] for item in listed.get("Contents", [])]

    def fetch(self, key: str, into: Path) -> bytes:
        self.aws("s3api", "get-object", "--bucket", BUCKET, "--key", key, str(into))
        return into.read_bytes()

    def head(self, key: str) -> dict:
        return json.loads(self.aws("s3api", "head-object", "--bucket", BUCKET, "--key", key,
                                   "--checksum-mode", "ENABLED"))


@contextmanager
def local_s3(run_dir: Path, address: str = "127.0.0.1"):
    """moto's server on ADDRESS with the versioned bucket BUCKET, stopped at the end."""
    port = free_port()
    server = Service(["moto_server", "-H", address, "-p", str(port)], run_dir / "moto.log")
    try:
        endpoint = f"http://{address}:{port}"
        eventually(lambda: server.alive() and get(endpoint), 60, "the local S3 to answer")
        storage = S3(endpoint)
        storage.aws("s3api", "create-bucket", "--bucket", BUCKET)
        storage.aws("s3api", "put-bucket-versioning", "--bucket", BUCKET,
                    "--versioning-configuration", "Status=Enabled")
        yield storage
    finally:
        server.stop()
