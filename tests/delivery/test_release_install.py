"""release_install (scripts/lib/deploy.sh) puts a release's delivery files in the host's
folder while scripts run from there: on a rollback, scripts/deploy installs the previous
release's scripts/deploy, its own file. bash reads a script as it runs it, so each file must be
replaced by a new one, never rewritten where the running bash reads it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from support import ROOT


def install(host: Path, tag: str) -> None:
    subprocess.run(
        ["bash", "-c", 'source scripts/lib/common.sh && source scripts/lib/deploy.sh && release_install "$1"',
         "release_install", tag],
        cwd=ROOT, env={**os.environ, "DEPLOY_DIR": str(host), "DEPLOY_DRIVER": "process"}, check=True,
    )


def test_a_release_replaces_the_files_a_running_script_holds_open_instead_of_rewriting_them(tmp_path):
    host = tmp_path / "host"
    (host / "scripts").mkdir(parents=True)
    (host / "scripts/deploy").write_text("#!/bin/bash\necho live release\n")
    (host / "releases/old/scripts").mkdir(parents=True)
    (host / "releases/old/scripts/deploy").write_text("#!/bin/bash\necho older release, longer text\n")
    with open(host / "scripts/deploy", "rb") as running:
        install(host, "old")
        # What was open is the old file, unlinked and whole; the path names the new one.
        assert os.fstat(running.fileno()).st_nlink == 0
        assert running.read() == b"#!/bin/bash\necho live release\n"
    assert (host / "scripts/deploy").read_text() == "#!/bin/bash\necho older release, longer text\n"
