"""The container engine the tests run on, and the stand-in base images it needs.

`Engine.start()` uses the engine `DOCKER_HOST` names when it is set (a Jenkins agent with
Docker), and otherwise starts Debian's dockerd with everything (data root, exec root,
socket, pid file, log) in one folder, `CONTAINERS_HOME` (default
~/.cache/two-tier-messages/containers). The data root survives the run, so a second run
finds its images cached. `Engine.stop()` stops a dockerd it started by its pid, deletes
the network interfaces it created and puts back the firewall rules of before its start.

`build_stand_ins()` makes the upstream images the project's Dockerfiles and compose files
name (tests/containers/stand-in-images/README.md), each labelled with a hash of its inputs
and rebuilt only when that hash changes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAND_INS = Path(__file__).resolve().parent / "stand-in-images"
DEBIAN_RELEASE = "bookworm"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
CACHE_LABEL = "io.github.two-tier-rs.messages.stand-in-inputs"


def log(message: str) -> None:
    print(f"[containers] {message}", flush=True)


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command, failing with its output when it fails."""
    kwargs.setdefault("check", True)
    kwargs.setdefault("text", True)
    try:
        return subprocess.run(args, **kwargs)
    except subprocess.CalledProcessError as error:
        raise RuntimeError(
            f"{' '.join(args)} exited {error.returncode}\n{error.stdout or ''}{error.stderr or ''}"
        ) from None


RULES_SNAPSHOT = "iptables-before.rules"


def container_nofile() -> int:
    """The descriptors the compose files give web and api by default (nginx.conf's
    worker_rlimit_nofile), capped at this machine's hard limit: an engine cannot give a
    container more than it has itself, and a container that asks for more does not start."""
    conf = (ROOT / "nginx" / "nginx.conf").read_text()
    wanted = int(re.search(r"^worker_rlimit_nofile (\d+);", conf, re.MULTILINE).group(1))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def running(pid: int) -> bool:
    """Whether process `pid` still runs; reaps it when it is an exited child of this one."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    return Path(f"/proc/{pid}").exists()


def bridge_interfaces() -> set[str]:
    """The bridge interfaces this machine has now (docker0 and the engine's br-*)."""
    out = run("ip", "-j", "link", "show", "type", "bridge", capture_output=True).stdout
    return {link["ifname"] for link in json.loads(out or "[]")}


@dataclass
class Engine:
    home: Path = field(
        default_factory=lambda: Path(
            os.environ.get("CONTAINERS_HOME")
            or Path.home() / ".cache/two-tier-messages/containers"
        )
    )
    host: str = ""
    started: bool = False
    _bridges_before: set[str] = field(default_factory=set)

    @property
    def env(self) -> dict[str, str]:
        """The environment for docker and compose commands aimed at this engine."""
        env = dict(os.environ, DOCKER_HOST=self.host)
        # Compose v2 is a CLI plugin found through the config folder (see compose_plugin).
        env["DOCKER_CONFIG"] = str(self.home / "docker-config")
        env.setdefault("NOFILE_LIMIT", str(container_nofile()))
        return env

    def docker(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        return run("docker", *args, env=self.env, **kwargs)

    def reachable(self) -> bool:
        result = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            env=self.env, capture_output=True, text=True,
        )
        return result.returncode == 0

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if os.environ.get("DOCKER_HOST"):
            self.host = os.environ["DOCKER_HOST"]
            if not self.reachable():
                raise RuntimeError(f"DOCKER_HOST={self.host} names no engine that answers")
            log(f"using the engine at {self.host}")
            return
        self.host = f"unix://{self.home / 'docker.sock'}"
        self._stop_leftover()
        self._bridges_before = bridge_interfaces()
        self._save_rules()
        # overlay2 when the kernel allows it here, else vfs (slower, always works). With its
        # iptables rules, which make internal networks internal (the production stack's
        # backend) and are undone at stop; without them only where iptables cannot work.
        for driver, iptables in (("overlay2", True), ("vfs", True), ("overlay2", False), ("vfs", False)):
            log(f"starting dockerd ({driver}, iptables {'on' if iptables else 'off'}) in {self.home}")
            process = subprocess.Popen(
                [
                    "dockerd",
                    f"--data-root={self.home / 'data'}",
                    f"--exec-root={self.home / 'exec'}",
                    f"--host={self.host}",
                    f"--pidfile={self.home / 'dockerd.pid'}",
                    f"--storage-driver={driver}",
                    f"--iptables={str(iptables).lower()}",
                    "--ip6tables=false",
                ],
                stdout=open(self.home / "dockerd.log", "ab"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and process.poll() is None:
                if self.reachable():
                    self.started = True
                    log(f"dockerd {process.pid} answers on {self.host}")
                    return
                time.sleep(0.3)
            process.kill()
            process.wait()
        raise RuntimeError(f"dockerd did not start; see {self.home / 'dockerd.log'}")

    def _stop_leftover(self) -> None:
        """Stops a dockerd that an interrupted run left behind in this folder."""
        pid_file = self.home / "dockerd.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().strip() or 0)
            if pid and Path(f"/proc/{pid}/cmdline").exists() and b"dockerd" in Path(
                f"/proc/{pid}/cmdline"
            ).read_bytes():
                log(f"stopping dockerd {pid} left by an earlier run")
                self._terminate(pid)
            pid_file.unlink(missing_ok=True)
        self._restore_rules()

    def _save_rules(self) -> None:
        """Keeps this machine's IPv4 firewall rules as they are before dockerd adds its own."""
        saved = subprocess.run(["iptables-save"], capture_output=True, text=True)
        if saved.returncode == 0:
            (self.home / RULES_SNAPSHOT).write_text(saved.stdout)

    def _restore_rules(self) -> None:
        """Puts back the rules saved at start: dockerd leaves its chains and rules behind."""
        snapshot = self.home / RULES_SNAPSHOT
        if not snapshot.exists():
            return
        saved = snapshot.read_text()
        log("restoring the firewall rules of before dockerd")
        subprocess.run(["iptables-restore"], input=saved, text=True, check=False)
        # iptables-restore replaces only the tables the snapshot has; empty the others.
        for table in ("filter", "nat", "mangle", "raw"):
            if f"*{table}\n" not in saved:
                subprocess.run(["iptables", "-t", table, "-F"], capture_output=True, check=False)
                subprocess.run(["iptables", "-t", table, "-X"], capture_output=True, check=False)
        snapshot.unlink()

    @staticmethod
    def _terminate(pid: int) -> None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and running(pid):
            time.sleep(0.2)
        if running(pid):
            os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if not self.started:
            return
        pid_file = self.home / "dockerd.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().strip())
            log(f"stopping dockerd {pid}")
            self._terminate(pid)
        for bridge in sorted(bridge_interfaces() - self._bridges_before):
            log(f"deleting the interface {bridge}")
            subprocess.run(["ip", "link", "delete", bridge], check=False)
        self._restore_rules()
        self.started = False

    # --- images -------------------------------------------------------------------

    def image_label(self, image: str, label: str) -> str | None:
        result = subprocess.run(
            ["docker", "image", "inspect", "-f", f'{{{{index .Config.Labels "{label}"}}}}', image],
            env=self.env, capture_output=True, text=True,
        )
        value = result.stdout.strip()
        return value if result.returncode == 0 and value not in ("", "<no value>") else None

    def image_size(self, image: str) -> int:
        return int(self.docker("image", "inspect", "-f", "{{.Size}}", image).stdout)


def inputs_hash(*parts: Path | str) -> str:
    """A hash of files (by content, folders recursively) and strings."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for file in files:
                digest.update(str(file.relative_to(part.parent)).encode())
                digest.update(file.read_bytes())
        else:
            digest.update(part.encode())
    return digest.hexdigest()[:16]


def dockerfile_arg(dockerfile: Path, name: str) -> str:
    """The default of `ARG NAME=...` in a Dockerfile: the one place a version is pinned."""
    match = re.search(rf"^ARG {name}=(\S+)$", dockerfile.read_text(), re.MULTILINE)
    if not match:
        raise RuntimeError(f"{dockerfile} has no ARG {name}=...")
    return match.group(1)


def host_toolchain() -> tuple[Path, str]:
    """The host's active rustup toolchain folder and its rustc version (e.g. 1.95.0)."""
    sysroot = Path(run("rustc", "--print", "sysroot", capture_output=True).stdout.strip())
    version = run("rustc", "--version", capture_output=True).stdout.split()[1]
    return sysroot, version


def debian_stand_in(engine: Engine) -> tuple[str, str]:
    """The Debian base image (debootstrapped and imported, or found cached); its name and inputs."""
    debian = f"debian:{DEBIAN_RELEASE}-slim"
    # The root is made by import_debian: its code is an input, the rest of this file is not.
    debian_inputs = inputs_hash(DEBIAN_RELEASE, DEBIAN_MIRROR, Path("/etc/ssl/certs/ca-certificates.crt"),
                                inspect.getsource(import_debian))
    if pulled(engine, debian, f"debian:{DEBIAN_RELEASE}"):
        debian_inputs = "pulled"
    elif engine.image_label(debian, CACHE_LABEL) != debian_inputs:
        import_debian(engine, debian, debian_inputs)
    engine.docker("tag", debian, f"debian:{DEBIAN_RELEASE}")
    return debian, debian_inputs


def build_stand_ins(engine: Engine) -> dict[str, str]:
    """Builds (or finds cached) every stand-in base image; returns {upstream name: inputs}."""
    api_dockerfile = ROOT / "docker/api.Dockerfile"
    web_dockerfile = ROOT / "docker/web.Dockerfile"
    rust_version = dockerfile_arg(api_dockerfile, "RUST_VERSION")
    release = dockerfile_arg(api_dockerfile, "DEBIAN_RELEASE")
    if release != DEBIAN_RELEASE:
        raise RuntimeError(f"the stand-ins are built on {DEBIAN_RELEASE}, the API image wants {release}")
    nginx_image = dockerfile_arg(web_dockerfile, "NGINX_IMAGE")
    db_image = compose_db_image()
    edge_image = compose_image("edge")
    debian, debian_inputs = debian_stand_in(engine)
    built = {debian: debian_inputs}

    toolchain, host_rust = host_toolchain()
    if not host_rust.startswith(rust_version + ".") and host_rust != rust_version:
        raise RuntimeError(
            f"docker/api.Dockerfile pins Rust {rust_version}; this machine's toolchain is {host_rust}"
        )
    rust = f"rust:{rust_version}-slim-{DEBIAN_RELEASE}"
    rust_inputs = inputs_hash(STAND_INS / "rust", debian_inputs, host_rust)
    if pulled(engine, rust):
        pass
    elif engine.image_label(rust, CACHE_LABEL) != rust_inputs:
        with StagedContext(engine.home / "rust-context") as context:
            shutil.copytree(STAND_INS / "rust", context, dirs_exist_ok=True)
            shutil.copy2(shutil.which("rustup") or Path.home() / ".cargo/bin/rustup", context / "rustup")
            # Everything but the documentation, which upstream's minimal profile leaves out.
            shutil.copytree(toolchain, context / "toolchain", symlinks=True,
                            ignore=lambda d, names: ["doc"] if d.endswith("/share") else [])
            build_stand_in(engine, rust, context, rust_inputs, f"RUST_VERSION={host_rust}")
    built[rust] = rust_inputs

    for image, folder in ((nginx_image, "nginx-unprivileged"), (db_image, "mariadb"), (edge_image, "pause")):
        inputs = inputs_hash(STAND_INS / folder, debian_inputs)
        if pulled(engine, image):
            pass
        elif engine.image_label(image, CACHE_LABEL) != inputs:
            build_stand_in(engine, image, STAND_INS / folder, inputs)
        built[image] = inputs

    # The monitoring profile's images but Grafana's, which Debian does not package: one
    # Dockerfile, a target per image, built on one shared layer of packages.
    inputs = inputs_hash(STAND_INS / "prometheus", debian_inputs)
    for service, image in monitoring_images().items():
        if pulled(engine, image):
            pass
        elif engine.image_label(image, CACHE_LABEL) != inputs:
            build_stand_in(engine, image, STAND_INS / "prometheus", inputs, target=service)
        built[image] = inputs
    return built


def pulled(engine: Engine, *images: str) -> bool:
    """On an engine of the caller's (DOCKER_HOST), the upstream images when its registry
    can be reached: stand-ins never replace real images there. The engine started for the
    run reaches no registry, so it is not asked."""
    if engine.started:
        return False
    for image in images:
        try:
            result = subprocess.run(["docker", "pull", "--quiet", image], env=engine.env,
                                    capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return False
        if result.returncode != 0:
            return False
        log(f"pulled {image}")
    return True


# The monitoring profile's services that have a stand-in (stand-in-images/prometheus), each
# the name of its target there.
MONITORING_STAND_INS = ("prometheus", "alertmanager", "pushgateway", "mysqld-exporter", "nginx-exporter")


def monitoring_images() -> dict[str, str]:
    """{service: image} of the monitoring profile's services that have a stand-in, as
    docker-compose.yml names them."""
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return {name: services[name]["image"] for name in MONITORING_STAND_INS}


def compose_db_image() -> str:
    """The db service's image in docker-compose.yml (mariadb:10.11)."""
    return compose_image("db")


def compose_image(service: str) -> str:
    import yaml

    image = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][service].get("image")
    if not image:
        raise RuntimeError(f"docker-compose.yml: no image for the {service} service")
    return image


class StagedContext:
    """A fresh build-context folder, deleted afterwards."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Path:
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        return self.path

    def __exit__(self, *_):
        shutil.rmtree(self.path, ignore_errors=True)


def build_stand_in(engine: Engine, image: str, context: Path, inputs: str, *build_args: str,
                   target: str | None = None) -> None:
    log(f"building the stand-in {image}")
    started = time.monotonic()
    args = ["build", "--network", "host", "--label", f"{CACHE_LABEL}={inputs}", "--tag", image]
    if target:
        args += ["--target", target]
    for arg in build_args:
        args += ["--build-arg", arg]
    engine.docker(*args, str(context))
    log(f"built {image} in {time.monotonic() - started:.0f} s")


def import_debian(engine: Engine, image: str, inputs: str) -> None:
    """debootstraps a minbase root and imports it the way Debian's official images are made:
    no documentation, no apt caches, no services started by package scripts."""
    root = engine.home / "debian-root"
    shutil.rmtree(root, ignore_errors=True)
    log(f"debootstrap --variant=minbase {DEBIAN_RELEASE} from {DEBIAN_MIRROR} (about 30 s)")
    run("debootstrap", "--variant=minbase", DEBIAN_RELEASE, str(root), DEBIAN_MIRROR,
        capture_output=True)
    (root / "usr/sbin/policy-rc.d").write_text(
        "#!/bin/sh\n# Package scripts start no services inside an image.\nexit 101\n"
    )
    (root / "usr/sbin/policy-rc.d").chmod(0o755)
    (root / "etc/dpkg/dpkg.cfg.d/docker-slim").write_text(
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/locale/*\npath-include /usr/share/locale/locale.alias\n"
    )
    (root / "etc/apt/apt.conf.d/docker-clean").write_text(
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Binary::apt::APT::Keep-Downloaded-Packages "false";\n'
    )
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(
        f"Types: deb\nURIs: {DEBIAN_MIRROR}\nSuites: {DEBIAN_RELEASE} {DEBIAN_RELEASE}-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        f"Types: deb\nURIs: {DEBIAN_MIRROR}-security\nSuites: {DEBIAN_RELEASE}-security\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    # The host's trusted certificate authorities, so HTTPS clients in builds (cargo, pip)
    # trust what the host trusts, a TLS-inspecting proxy included. ca-certificates adds
    # them to the bundle wherever an image installs it.
    (root / "usr/local/share/ca-certificates").mkdir(parents=True, exist_ok=True)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", root / "usr/local/share/ca-certificates/host-trusted.crt")
    # What the excludes above keep out of later installs, removed from debootstrap's own:
    # its downloaded packages, the package lists, documentation but the copyrights,
    # translations, manual pages.
    leftovers = [*root.glob("var/cache/apt/archives/*.deb"), *root.glob("var/cache/apt/*.bin"),
                 *root.glob("var/lib/apt/lists/*_*"), *root.glob("usr/share/man/*"),
                 *root.glob("usr/share/info/*"), *root.glob("usr/share/locale/*"),
                 *(p for p in root.glob("usr/share/doc/*/*") if p.name != "copyright")]
    for path in leftovers:
        if path.name == "locale.alias":
            continue
        # A documentation folder may be a link to another package's: each is listed twice.
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    log(f"docker import {image}")
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    run("docker", "import", "--change", 'CMD ["bash"]', "--change", f"LABEL {CACHE_LABEL}={inputs}",
        "-", image, stdin=tar.stdout, env=engine.env, capture_output=True)
    if tar.wait() != 0:
        raise RuntimeError(f"tar of {root} failed")
    shutil.rmtree(root, ignore_errors=True)
