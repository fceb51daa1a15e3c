"""release_install (scripts/lib/deploy.sh) puts a release's delivery files in the host's
folder while scripts run from there: on a rollback, scripts/deploy installs the previous
release's scripts/deploy, its own file. bash reads a script as it runs it, so each file must be
replaced by a new one, never rewritten where the running bash reads it, and whole even when
the install is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
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


def test_an_install_killed_at_any_moment_leaves_every_file_whole_old_or_new(tmp_path):
    """SIGKILL (Jenkins aborting a deploy) at moments spread over an install of large files:
    each file of the host's folder is then the old release's or the new one's, never a part
    of one (a cut-short scripts/rollback would do nothing, and say nothing). The next install
    completes."""
    names = [f"scripts/file{i:02d}" for i in range(40)]
    size = 1 << 20
    # Every 5 ms over the first 120: copying the 40 MB takes some 20 ms here, the renames 80 more.
    moments = [i * 0.005 for i in range(1, 25)]
    interrupted = 0
    for moment in moments:
        host = tmp_path / f"host-{moment:.3f}"
        for name in names:
            for folder, text in ((host, b"old "), (host / "releases/new", b"new ")):
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(text * (size // len(text)))
        process = subprocess.Popen(
            ["bash", "-c", 'source scripts/lib/common.sh && source scripts/lib/deploy.sh && release_install new'],
            cwd=ROOT, env={**os.environ, "DEPLOY_DIR": str(host), "DEPLOY_DRIVER": "process"},
            stdout=subprocess.DEVNULL, start_new_session=True)
        time.sleep(moment)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        contents = {(host / name).read_bytes() for name in names}
        assert contents <= {b"old " * (size // 4), b"new " * (size // 4)}, f"a file cut short at {moment:.3f}s"
        interrupted += len(contents) > 1 or contents == {b"old " * (size // 4)}
        install(host, "new")
        assert {(host / name).read_bytes() for name in names} == {b"new " * (size // 4)}
        assert not list(host.glob(".install.*"))
    # Some kills must have landed inside an install, or the check above proved nothing.
    assert interrupted, "every install had finished before its kill"
