"""`Wrk`: wrk through nginx counting failures, for deploys that must fail no request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from harness import ROOT, eventually


class Wrk:
    """wrk against `url` until stopped, every request on a connection of its own: nginx's
    graceful reload closes idle keep-alive connections, which HTTP clients retry on a new
    connection (RFC 9112, 9.3.1) but wrk does not. Started once `EVIDENCE` answers below 400
    came, stopped once as many more came after the change under test (wrk_progress.lua
    counts them); its summary (bench/summary.lua) counts every failure."""

    SCRIPT = Path(__file__).resolve().parent / "wrk_progress.lua"
    THREADS = 2
    EVIDENCE = 50

    def __init__(self, url: str, directory: Path, name: str, connections: int = 16):
        self.summary = directory / f"{name}.json"
        progress = directory / f"{name}.progress"
        # One file per wrk thread, as wrk_progress.lua numbers them.
        self.progress = [directory / f"{progress.name}.{n}" for n in range(1, self.THREADS + 1)]
        for old in [self.summary, *self.progress]:
            old.unlink(missing_ok=True)
        with open(directory / f"{name}.out", "w") as output:
            self.process = subprocess.Popen(
                ["wrk", f"-t{self.THREADS}", f"-c{connections}", "-d10m", "-H", "Connection: close", "-s", str(self.SCRIPT), url],
                cwd=ROOT, env={**os.environ, "WRK_JSON": str(self.summary), "WRK_PROGRESS": str(progress)},
                stdout=output, stderr=subprocess.STDOUT,
            )
        try:
            self._wait_for(self.EVIDENCE, below_400=True, what="wrk's first successful answers")
        except BaseException:
            self.kill()
            raise

    def answers(self) -> tuple[int, int]:
        """How many answers wrk got so far: all of them, and those below 400."""
        counts = [path.read_text().split() for path in self.progress if path.exists()]
        return sum(int(c[0]) for c in counts), sum(int(c[1]) for c in counts)

    def _wait_for(self, count: int, below_400: bool, what: str) -> None:
        goal = self.answers()[below_400] + count

        def reached() -> bool:
            assert self.process.poll() is None, f"wrk exited with status {self.process.returncode}"
            return self.answers()[below_400] >= goal

        eventually(reached, 30, what, interval=0.1)

    def stop(self) -> dict:
        """Stops once more requests were answered, and returns the summary with `failed`:
        socket errors, timeouts and answers of 400 or more."""
        self._wait_for(self.EVIDENCE, below_400=False, what="more answers after the change")
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)
        summary = json.loads(self.summary.read_text())
        summary["failed"] = sum(summary["errors"].values())
        print(f"wrk: {summary['requests']} requests, {summary['failed']} failed", flush=True)
        return summary

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
