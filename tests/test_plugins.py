"""SafeMultiProcPlugin: a worker killed by a signal fails its node and ends the run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

SCRIPT = textwrap.dedent(
    """
    import sys
    from nipype import Node, Workflow
    from nipype.interfaces.utility import Function
    from pipeline.plugins import SafeMultiProcPlugin

    def die(x):
        import os, signal, time
        time.sleep(1)  # let the healthy node start first
        os.kill(os.getpid(), signal.SIGKILL)  # what a segfault or the OOM killer does
        return x

    def ok(x):
        return x + 1

    def later(x):
        return x * 2

    if __name__ == "__main__":  # forkserver workers import this module
        wf = Workflow("wf", base_dir=sys.argv[1])
        dead = Node(Function(["x"], ["out"], die), name="dead")
        dead.inputs.x = 1
        good = Node(Function(["x"], ["out"], ok), name="good")
        good.inputs.x = 1
        after = Node(Function(["x"], ["out"], later), name="after")
        wf.connect(good, "out", after, "x")
        wf.add_nodes([dead])
        plugin = SafeMultiProcPlugin({"n_procs": 2, "mp_context": "forkserver"})
        try:
            wf.run(plugin=plugin)
        except RuntimeError as exc:
            print("RUN FAILED:", str(exc).splitlines()[-1])
            sys.exit(1)
        sys.exit(0)
    """
)


def test_a_killed_worker_fails_the_run_within_seconds(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "work")],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # nipype writes crash files to the working directory
        timeout=240,  # nipype's own MultiProc never returns here
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "RUN FAILED" in proc.stdout
    assert elapsed < 120
    crashes = list(tmp_path.glob("crash-*"))
    assert crashes and all("dead" in c.name for c in crashes)
    assert "worker process died" in proc.stdout + proc.stderr
    # the node that does not depend on the dead one ran, and the one after it too
    results = {p.parent.name for p in (tmp_path / "work" / "wf").rglob("result_*.pklz")}
    assert {"good", "after"} <= results
