"""A small image as `docker save` writes it (a docker-archive tar), made without an engine:
one layer holding Debian's os-release and a dpkg status with one package, and whatever
files a test adds. Trivy reads it with `trivy image --input`, as it reads a saved image."""

import hashlib
import io
import json
import tarfile
from pathlib import Path

OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'
DPKG_STATUS = b"""Package: zlib1g
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 160
Maintainer: Mark Brown <broonie@debian.org>
Architecture: amd64
Multi-Arch: same
Source: zlib
Version: 1:1.2.13.dfsg-1
Description: compression library - runtime

"""
# What the SBOM must list of the files above.
PACKAGE = ("zlib1g", "1:1.2.13.dfsg-1")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_image_archive(path: Path, tag: str, files: dict | None = None) -> Path:
    """Writes the archive to path; files: {path inside the image: bytes} besides Debian's."""
    contents = {"etc/os-release": OS_RELEASE, "etc/debian_version": b"12.8\n", "var/lib/dpkg/status": DPKG_STATUS}
    contents |= files or {}
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for name, data in contents.items():
            _add(tar, name, data)
    layer_bytes = layer.getvalue()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]},
        "history": [{"created_by": "tests/pipeline/image_archive.py"}],
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(path, "w") as out:
        _add(out, "layer.tar", layer_bytes)
        _add(out, config_name, config)
        _add(out, "manifest.json", manifest)
    return path
