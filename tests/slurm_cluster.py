"""A throw-away one-node SLURM cluster on loopback, for tests of the SLURM execution plugins.

Needs root and Debian's ``slurm-wlm`` and ``munge`` packages. ``munged`` is started as the
``munge`` user unless one already answers; ``slurmctld`` and ``slurmd`` run in the foreground
(``-D``) in their own sessions, with state, spool, logs and ``slurm.conf`` in a temporary folder
and free TCP ports, so nothing of the host's SLURM set-up (if any) is touched. No accounting:
job states come from ``scontrol show job``. Daemons are stopped by the PIDs this module started.

Use the ``slurm_cluster`` fixture (session scope); it skips, with the reason, where the cluster
cannot run. Clients must see ``SLURM_CONF``: pass ``cluster.env`` to subprocesses.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


class ClusterError(RuntimeError):
    """The cluster could not be started; the message says why."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_cpus() -> int:
    # slurmd refuses a node that claims more CPUs than it has; fewer is fine.
    return len(os.sched_getaffinity(0))


def _node_memory_mb() -> int:
    # 90% of MemTotal: slurmd drains a node whose RealMemory exceeds what it finds.
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
    return int(total_kb * 0.9 / 1024)


def slurm_conf(root: Path, node: str, cpus: int, memory_mb: int) -> str:
    """``slurm.conf`` of one node on 127.0.0.1, everything under ``root``."""
    return f"""\
ClusterName=disarmtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """One slurmctld + one slurmd (+ munged when none runs), configured under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        # Nipype's SLURM plugin names jobs after $LOGNAME, unset in non-login shells.
        self.env.setdefault("LOGNAME", "root")
        self._procs: dict[str, subprocess.Popen] = {}

    # -- life cycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(slurm_conf(self.root, self.node, _node_cpus(), _node_memory_mb()))
        self._start_munge()
        for daemon in ("slurmctld", "slurmd"):
            log = open(self.root / f"{daemon}.stdout", "w")  # noqa: SIM115 - closed with the process
            self._procs[daemon] = subprocess.Popen(
                [daemon, "-D", "-f", str(self.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # as with setsid: not killed by the terminal's signals
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise ClusterError(f"{name} exited ({proc.returncode}): {self.log_tail(name)}")
            state = self.run("sinfo", "-h", "-n", self.node, "-o", "%T", check=False)
            if state.returncode == 0 and state.stdout.strip().rstrip("*") in ("idle", "mixed"):
                return
            time.sleep(0.5)
        raise ClusterError(f"node not idle after {timeout:.0f} s: {self.log_tail('slurmctld')}")

    def _start_munge(self) -> None:
        if self._munge_works():
            return  # a munged (the host's, or a previous session's) already answers
        if not MUNGE_SOCKET.parent.is_dir():
            MUNGE_SOCKET.parent.mkdir(parents=True)
            shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
        # Our own child (not via runuser), so that stop() reaps it: no zombie left behind.
        self._procs["munged"] = subprocess.Popen(
            ["munged", "--foreground"],
            user="munge",
            group="munge",
            extra_groups=[],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "munged.stderr", "w"),  # noqa: SIM115
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._munge_works():
                return
            if self._procs["munged"].poll() is not None:
                break
            time.sleep(0.2)
        raise ClusterError(f"munged did not start: {self.log_tail('munged', 'stderr')}")

    @staticmethod
    def _munge_works() -> bool:
        try:
            cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=5)
            if cred.returncode != 0:
                return False
            check = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return check.returncode == 0

    def stop(self) -> None:
        """Cancel what is left, then end the daemons this object started, by PID."""
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--partition", "debug", check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            os.killpg(proc.pid, signal.SIGTERM)  # each leads its own session
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    # -- queries ----------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        done = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=30)
        if check and done.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
        return done

    def sbatch(self, *args: str) -> int:
        """Submit a job; returns its id."""
        out = self.run("sbatch", "--parsable", *args).stdout.strip()
        return int(out.split(";")[0])

    def job_state(self, job_id: int) -> str:
        """``JobState`` from ``scontrol show job`` (``UNKNOWN`` once the job is purged)."""
        shown = self.run("scontrol", "show", "job", str(job_id), check=False)
        match = re.search(r"JobState=(\S+)", shown.stdout)
        return match.group(1) if match else "UNKNOWN"

    def wait(self, job_id: int, timeout: float = 60.0) -> str:
        """Wait until the job leaves PENDING/RUNNING/COMPLETING; returns the final state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                return state
            time.sleep(0.3)
        raise ClusterError(f"job {job_id} still {state} after {timeout:.0f} s")

    def submitted_job_ids(self) -> list[int]:
        """Ids of every job slurmctld accepted since it started (from its log)."""
        log = (self.root / "slurmctld.log").read_text(errors="replace")
        return sorted(
            {int(j) for j in re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", log)}
        )

    def log_tail(self, name: str, kind: str = "log", lines: int = 15) -> str:
        path = self.root / f"{name}.{kind}"
        if not path.exists():
            path = self.root / f"{name}.stdout"
        if not path.exists():
            return "(no log)"
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


def skip_reason() -> str | None:
    """Why a cluster cannot be started here, or ``None``."""
    missing = [exe for exe in DAEMONS if shutil.which(exe) is None]
    if missing:
        return (
            f"SLURM/munge not installed (missing {', '.join(missing)}; apt-get install "
            "slurm-wlm munge)"
        )
    if os.geteuid() != 0:
        return "the one-node SLURM cluster needs root (slurmd runs jobs as their users)"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    """A running one-node cluster for the whole session; skips with the reason if impossible."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except (ClusterError, OSError) as err:
        cluster.stop()
        pytest.skip(f"cannot start a SLURM cluster: {err}")
    try:
        yield cluster
    finally:
        cluster.stop()
