"""Fixtures of the pipeline and host tests (scripts/test-pipeline runs them).

The slow one is `prepared_host`: a Debian 12 root made by debootstrap (cached as a tarball
under ~/.cache/two-tier-messages/pipeline, keyed by its inputs), in which the stack's own
user-data runs scripts/prepare-host, and then prepare-host runs again with the same
arguments, as a second run by hand would; a listing of the root is taken after each run.
A loop device (`data_disk`) plays the stack's data volume: the user-data's AWS CLI call that
attaches the volume makes it appear where udev names an EBS volume on a Nitro instance.
"""

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cfnlint.decode import decode

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "infra" / "messages-host.yaml"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

DEBIAN_RELEASE = "bookworm"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
CACHE = Path(os.environ.get("PIPELINE_CACHE", Path.home() / ".cache/two-tier-messages/pipeline"))

# What the stack would be given: a test key, and the template's defaults for the rest, with
# this account's ECR as the registry (the template's default when Registry is empty).
JENKINS_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3Qta2V5LW9mLWplbmtpbnMtb25seS0wMDAw jenkins@test"
ECR_REGISTRY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
WAIT_HANDLE_URL = "https://cloudformation-waitcondition.test/signal"
DATA_VOLUME = "vol-0123456789abcdef0"
REGION = "eu-west-1"
STACK_NAME = "messages-host"
BACKUP_BUCKET = "messages-host-backupbucket-1a2b3c4d5e6f"
INSTANCE_ID = "i-0fedcba9876543210"
DATA_DIR = "/srv/messages"


def log(message: str) -> None:
    print(f"[pipeline] {message}", file=sys.stderr, flush=True)


def run(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command; its output is captured as text and shown when it fails."""
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="session")
def template() -> dict:
    parsed, matches = decode(str(TEMPLATE))
    assert not matches, matches
    return parsed


def parameter_defaults(template: dict) -> dict:
    return {name: str(p["Default"]) for name, p in template["Parameters"].items() if "Default" in p}


def render_user_data(template: dict, values: dict) -> str:
    """The instance's user-data as CloudFormation's Fn::Sub would render it."""
    body, variables = template["Resources"]["Instance"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    names = set(re.findall(r"\$\{([^}!]+)\}", body))
    missing = names - set(values)
    assert not missing, f"user-data names {missing}, which the test does not render"
    assert set(variables) <= names, "a Fn::Sub variable the user-data never uses"
    return re.sub(r"\$\{([^}!]+)\}", lambda m: values[m.group(1)], body)


@contextlib.contextmanager
def cache_lock():
    """Holds the cache for this run alone: runs on one machine share it (the Debian root is
    made once; apt in each root takes the lock of the shared package cache, and a second apt
    would fail on it, not wait), so a concurrent run waits here instead."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another run's use of {CACHE}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def debian_root_tarball() -> Path:
    """A debootstrapped minbase root as a tarball, made once per set of inputs."""
    with cache_lock():
        return _debian_root_tarball()


def _debian_root_tarball() -> Path:
    version = run("dpkg-query", "-W", "-f=${Version}", "debootstrap").stdout
    key = hashlib.sha256(f"{DEBIAN_RELEASE} minbase {DEBIAN_MIRROR} {version}".encode()).hexdigest()[:16]
    tarball = CACHE / f"{DEBIAN_RELEASE}-minbase-{key}.tar"
    if tarball.exists():
        log(f"using the cached Debian root {tarball}")
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.glob(f"{DEBIAN_RELEASE}-minbase-*.tar"):
        stale.unlink()
    root = CACHE / "debootstrap-root"
    shutil.rmtree(root, ignore_errors=True)
    log(f"debootstrap --variant=minbase {DEBIAN_RELEASE} from {DEBIAN_MIRROR} (a minute or two)")
    run("nice", "-n", "10", "debootstrap", "--variant=minbase", DEBIAN_RELEASE, str(root), DEBIAN_MIRROR)
    run("tar", "-C", str(root), "-cf", f"{tarball}.part", ".")
    os.replace(f"{tarball}.part", tarball)
    shutil.rmtree(root)
    return tarball


# Paths whose content is the machine's running state, not what prepare-host sets up.
VOLATILE = ("proc", "dev", "sys", "run", "tmp", "var/cache", "var/log", "var/lib/apt/lists")


def listing(root: Path) -> dict:
    """Every path under root: type, mode, owner, and for files size, mtime and checksum."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel_dir, d)) not in VOLATILE]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = path.lstat()
            entry = (stat.filemode(st.st_mode), st.st_uid, st.st_gid)
            if stat.S_ISREG(st.st_mode):
                entry += (st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                entry += (os.readlink(path),)
            entries[rel] = entry
    return entries


@dataclass
class PreparedHost:
    root: Path
    values: dict
    first: subprocess.CompletedProcess
    second: subprocess.CompletedProcess
    after_first: dict
    after_second: dict
    # What the user-data signalled to the stack during the two runs.
    sent: list

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def passwd(self, user: str) -> list:
        for line in self.path("/etc/passwd").read_text().splitlines():
            if line.split(":")[0] == user:
                return line.split(":")
        raise AssertionError(f"no user {user} in /etc/passwd")

    def group_members(self, group: str) -> list:
        for line in self.path("/etc/group").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == group:
                return [m for m in fields[3].split(",") if m]
        raise AssertionError(f"no group {group} in /etc/group")

    def signals(self) -> list:
        log_file = self.path("/run/curl-signals.log")
        return log_file.read_text().splitlines() if log_file.exists() else []


# Stands in for curl inside the root: the "download" of scripts/prepare-host copies this
# checkout's, and the wait-condition signal is recorded instead of sent.
CURL_STAND_IN = """#!/bin/sh
out=; data=; url=
while [ $# -gt 0 ]; do
    case "$1" in
    -o) out=$2; shift ;;
    --data-binary) data=$2; shift ;;
    -X|-H|--retry) shift ;;
    -*) ;;
    *) url=$1 ;;
    esac
    shift
done
if [ -n "$out" ]; then
    case "$url" in
    */scripts/prepare-host) cp /var/tmp/prepare-host-under-test "$out" ;;
    *) echo "curl stand-in: no download of $url" >&2; exit 22 ;;
    esac
else
    printf '%s %s\\n' "$url" "$data" >>/run/curl-signals.log
fi
"""


# Stands in for the AWS CLI inside the root: attaching the stack's data volume to this
# instance links the loop device that plays it where udev names an EBS volume on Nitro.
AWS_STAND_IN = """#!/bin/sh
echo "AWS_DEFAULT_REGION=$AWS_DEFAULT_REGION $*" >>/run/aws-calls.log
if [ "$*" = "ec2 attach-volume --volume-id {volume} --instance-id {instance} --device /dev/sdf" ]; then
    mkdir -p /dev/disk/by-id
    ln -sfn {device} /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{serial}
else
    echo "aws stand-in: no such call here: $*" >&2
    exit 1
fi
"""


@pytest.fixture(scope="session")
def data_disk(tmp_path_factory) -> Path:
    """The data volume: a loop device over a sparse file, empty to begin with."""
    image = tmp_path_factory.mktemp("data-volume") / "volume.img"
    with open(image, "wb") as f:
        f.truncate(256 << 20)
    device = Path(run("losetup", "-f", "--show", str(image)).stdout.strip())
    yield device
    run("losetup", "-d", str(device), check=False)


def make_root(directory: Path, disk: Path) -> Path:
    """A fresh Debian root, as a new instance boots: the stand-ins for curl and the AWS CLI,
    cloud-init's record of the instance id, and the data volume's device node."""
    root = directory / "root"
    root.mkdir()
    run("tar", "-C", str(root), "-xf", str(debian_root_tarball()))
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    # Package scripts start no services in a chroot.
    (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
    (root / "usr/sbin/policy-rc.d").chmod(0o755)
    (root / "usr/local/bin/curl").write_text(CURL_STAND_IN)
    (root / "usr/local/bin/curl").chmod(0o755)
    (root / "usr/local/bin/aws").write_text(AWS_STAND_IN.format(
        volume=DATA_VOLUME, instance=INSTANCE_ID, device=disk, serial=DATA_VOLUME.replace("-", "")))
    (root / "usr/local/bin/aws").chmod(0o755)
    (root / "var/lib/cloud/data").mkdir(parents=True)
    (root / "var/lib/cloud/data/instance-id").write_text(INSTANCE_ID + "\n")
    os.mknod(root / str(disk).lstrip("/"), stat.S_IFBLK | 0o660, disk.stat().st_rdev)
    shutil.copy(REPO / "scripts/prepare-host", root / "var/tmp/prepare-host-under-test")
    return root


def run_in_root(root: Path, *scripts: str) -> list:
    """Runs each script in the root, with /proc, /sys and the shared package cache mounted;
    the result and a listing of the root after each."""
    # Downloaded packages outlive the root, so later runs install without downloading.
    archives = CACHE / "apt-archives"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    # /sys as on a machine: mount finds a filesystem by its UUID through it (there is no udev
    # here to make /dev/disk/by-uuid).
    mounts = [(root / "proc", ["-t", "proc", "proc"]), (root / "sys", ["-t", "sysfs", "-o", "ro", "sysfs"]),
              (root / "var/cache/apt/archives", ["--bind", str(archives)])]
    mounted, runs = [], []
    with cache_lock():
        try:
            for target, how in mounts:
                run("mount", *how, str(target))
                mounted.append(target)
            for script in scripts:
                result = chroot_script(root, script)
                runs.append((result, listing(root)))
        finally:
            # Unmounted before anything is deleted: the package cache is bind-mounted inside.
            for target in reversed(mounted):
                run("umount", str(target))
    return runs


def unmount_data(root: Path) -> None:
    """Unmounts the data volume from the root, as terminating its instance would."""
    if os.path.ismount(root / DATA_DIR.lstrip("/")):
        run("umount", str(root / DATA_DIR.lstrip("/")))


def chroot_script(root: Path, script: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        # The seam: Docker's own repository cannot be reached here, Debian's docker.io can.
        "DOCKER_SOURCE": "distro",
    }
    return run("nice", "-n", "10", "chroot", str(root), "/bin/bash", script, env=env, check=False)


def prepare_host_command(user_data: str) -> str:
    """The user-data's prepare-host command, continuation lines and all."""
    match = re.search(r"^/usr/local/sbin/prepare-host .*?[^\\]$", user_data, re.MULTILINE | re.DOTALL)
    assert match, "the user-data runs no /usr/local/sbin/prepare-host"
    return match.group(0)


def user_data_values(template: dict) -> dict:
    return parameter_defaults(template) | {
        "JenkinsPublicKey": JENKINS_KEY,
        "SourceRepository": "https://github.com/OWNER/REPO",
        "Domain": "board.example.org",
        "ContactEmail": "ops@example.org",
        "RegistryValue": ECR_REGISTRY,
        "HostReadyHandle": WAIT_HANDLE_URL,
        "DataVolume": DATA_VOLUME,
        "AWS::Region": REGION,
        "BackupBucket": BACKUP_BUCKET,
        "AWS::StackName": STACK_NAME,
    }


@pytest.fixture(scope="session")
def prepared_host(template, tmp_path_factory, data_disk) -> PreparedHost:
    root = make_root(tmp_path_factory.mktemp("host"), data_disk)
    values = user_data_values(template)
    user_data = render_user_data(template, values)
    (root / "var/tmp/user-data").write_text(user_data)
    (root / "var/tmp/prepare-host-again").write_text(prepare_host_command(user_data) + "\n")
    log("first run of the user-data (scripts/prepare-host) in the Debian root, then a second of scripts/prepare-host")
    try:
        (first, after_first), (second, after_second) = run_in_root(
            root, "/var/tmp/user-data", "/var/tmp/prepare-host-again")
        prepared = PreparedHost(root, values, first, second, after_first, after_second, [])
        prepared.sent = prepared.signals()
        yield prepared
    finally:
        unmount_data(root)
        shutil.rmtree(root, ignore_errors=True)
