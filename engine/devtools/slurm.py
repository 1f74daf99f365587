"""A private single-node Slurm (and the munge it authenticates with), for tests and developers.

Everything lives in one directory: the munge key, socket and log; ``slurm.conf``; the
controller's state, the node's spool, pid files and logs. ``munged`` daemonizes itself;
``slurmctld`` and ``slurmd`` run in the foreground (``-D``) as children. All three are
stopped by the pids in their pid files (SIGTERM, then SIGKILL). Client commands (``sbatch``,
``squeue``, ``scancel``, ``scontrol``) find this cluster through ``SLURM_CONF``: use
:attr:`SlurmCluster.env`.

    with start_slurm(tmp) as cluster:
        subprocess.run(["sbatch", "job.sh"], env=cluster.env)

This is a tool, so the core is synchronous (``subprocess``); from trio run :meth:`start` and
:meth:`stop` in a thread. The daemons run as the current user (``SlurmUser``), root in CI
and on this project's machines; :class:`SlurmNotInstalled` says what to install when a
program is missing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType

from wfe.engine.errors import EngineError

__all__ = ["INSTALL_HINT", "SlurmCluster", "SlurmError", "SlurmNotInstalled", "start_slurm"]

INSTALL_HINT = "slurm is not installed: apt-get install slurm-wlm munge"
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
#: Seconds between Slurm's SIGTERM and SIGKILL of a cancelled job (Slurm's default is 30).
KILL_WAIT = 3
_POLL = 0.1  # seconds between readiness checks while the daemons start


class SlurmError(EngineError, RuntimeError):
    """Slurm or munge could not be configured, started or stopped."""


class SlurmNotInstalled(SlurmError, FileNotFoundError):
    """A Slurm or munge program is not on PATH (or in /usr/sbin)."""


def missing_programs() -> list[str]:
    """The programs of :data:`PROGRAMS` that cannot be found."""
    return [name for name in PROGRAMS if _which(name) is None]


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


class SlurmCluster:
    """munge, a controller and one node (this host), run from ``directory``.

    ``cpus`` and ``memory_mb`` are what the node offers (default: all CPUs, 90% of the
    memory). Raises :class:`SlurmNotInstalled` when a program is missing.
    """

    partition = "debug"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        cpus: int | None = None,
        memory_mb: int | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        missing = missing_programs()
        if missing:
            raise SlurmNotInstalled(f"{INSTALL_HINT} (missing: {', '.join(missing)})")
        self.directory = Path(directory).resolve()
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.memory_mb = memory_mb or int(_memory_mb() * 0.9)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.config_path = self.directory / "slurm.conf"
        self.munge_socket = self.directory / "munge" / "munge.socket"
        self._children: list[subprocess.Popen[bytes]] = []

    def __repr__(self) -> str:
        return f"<SlurmCluster {self.host} in {self.directory}>"

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm's client commands (``SLURM_CONF`` set)."""
        return {**os.environ, "SLURM_CONF": str(self.config_path)}

    def pid_files(self) -> dict[str, Path]:
        """The pid file of each daemon, by program name."""
        return {
            "munged": self.directory / "munge" / "munged.pid",
            "slurmctld": self.directory / "slurmctld.pid",
            "slurmd": self.directory / "slurmd.pid",
        }

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start munged, slurmctld and slurmd; return once the node is idle.

        Raises :class:`SlurmError` (with the tail of the logs) when a daemon exits or the node
        is not idle within ``start_timeout`` seconds; whatever started is then stopped.
        """
        atexit.register(self.stop)
        try:
            self._start_munge()
            self.config_path.write_text(self._config())
            for name in ("slurmctld", "slurmd"):
                self._spawn(name)
            self._wait_idle()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel every job, then stop the daemons by their pid files. Idempotent."""
        atexit.unregister(self.stop)
        if self.config_path.exists() and self._alive("slurmctld"):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.run("scancel", "--full", "--quiet", f"--partition={self.partition}")
        for name in ("slurmd", "slurmctld", "munged"):
            self._terminate(name)
        for child in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1)
        self._children.clear()

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster; raise :class:`SlurmError` on failure."""
        result = subprocess.run(
            command, env=self.env, capture_output=True, text=True, check=False, timeout=30
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise SlurmError(f"{' '.join(command)}: {detail[-1] if detail else result.returncode}")
        return result

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of each daemon's log."""
        tail: list[str] = []
        for name in ("munge/munged.log", "slurmctld.log", "slurmd.log"):
            path = self.directory / name
            with contextlib.suppress(OSError):
                tail += [f"  {name}: {line}" for line in path.read_text().splitlines()[-lines:]]
        return "\n".join(tail) or "  (no log)"

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals ------------------------------------------------------------------------------

    def _start_munge(self) -> None:
        home = self.munge_socket.parent
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        home.chmod(0o700)
        key = home / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        pid_file = self.pid_files()["munged"]
        subprocess.run(
            [
                str(_which("munged")),
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--log-file={home / 'munged.log'}",
                f"--pid-file={pid_file}",
                f"--seed-file={home / 'munged.seed'}",
                "--force",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
            timeout=30,
        )
        self._until(lambda: self.munge_socket.exists(), "munged did not make its socket")

    def _spawn(self, name: str) -> None:
        output = (self.directory / f"{name}.out").open("ab")
        with output:
            self._children.append(
                subprocess.Popen(
                    [str(_which(name)), "-D", "-f", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                )
            )

    def _wait_idle(self) -> None:
        def idle() -> bool:
            for child in self._children:
                if child.poll() is not None:
                    raise SlurmError(f"a Slurm daemon exited ({child.pid}):\n{self.log_tail()}")
            result = subprocess.run(
                ["sinfo", "--noheader", "--format=%t", f"--partition={self.partition}"],
                env=self.env,
                capture_output=True,
                text=True,
                check=False,
            )
            return result.returncode == 0 and result.stdout.strip() == "idle"

        self._until(idle, "the Slurm node did not become idle")

    def _until(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.start_timeout  # wall-clock: waits on real daemons
        while not ready():
            if time.monotonic() > deadline:  # wall-clock
                raise SlurmError(f"{what} within {self.start_timeout:g} s:\n{self.log_tail()}")
            time.sleep(_POLL)  # wall-clock: polling real daemons from a sync fixture

    def _pid(self, name: str) -> int | None:
        try:
            return int(self.pid_files()[name].read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _alive(self, name: str) -> bool:
        pid = self._pid(name)
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _terminate(self, name: str) -> None:
        pid = self._pid(name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout  # wall-clock
            while self._alive(name) and time.monotonic() < deadline:  # wall-clock
                self._reap()
                time.sleep(_POLL)  # wall-clock: polling real daemons from a sync fixture
            if self._alive(name):
                os.kill(pid, signal.SIGKILL)
        self._reap()
        with contextlib.suppress(OSError):
            self.pid_files()[name].unlink()

    def _reap(self) -> None:
        for child in self._children:
            child.poll()

    def _config(self) -> str:
        d = self.directory
        (d / "state").mkdir(exist_ok=True)
        (d / "spool").mkdir(exist_ok=True)
        pids = self.pid_files()
        settings: Mapping[str, object] = {
            "ClusterName": "wfe-test",
            "SlurmctldHost": f"{self.host}(127.0.0.1)",  # talked to on loopback
            "SlurmUser": _user(),  # root here; a developer's own user runs its own jobs
            "SlurmdUser": _user(),
            "AuthType": "auth/munge",
            "AuthInfo": f"socket={self.munge_socket}",
            "CredType": "cred/munge",
            "SlurmctldPort": _free_port(),
            "SlurmdPort": _free_port(),
            "StateSaveLocation": d / "state",
            "SlurmdSpoolDir": d / "spool",
            "SlurmctldPidFile": pids["slurmctld"],
            "SlurmdPidFile": pids["slurmd"],
            "SlurmctldLogFile": d / "slurmctld.log",
            "SlurmdLogFile": d / "slurmd.log",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "SchedulerType": "sched/builtin",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core_Memory",
            "ReturnToService": 2,
            "JobCompType": "jobcomp/none",
            "AccountingStorageType": "accounting_storage/none",
            "MpiDefault": "none",
            "KillWait": KILL_WAIT,
            "MinJobAge": 3600,  # finished jobs stay in `scontrol show job` for an hour
            "DefMemPerCPU": 256,  # a job that asks for no memory does not take the whole node
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        lines.append(
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus}"
            f" RealMemory={self.memory_mb} State=UNKNOWN"
        )
        lines.append(
            f"PartitionName={self.partition} Nodes={self.host} Default=YES"
            " MaxTime=INFINITE State=UP"
        )
        return (
            "# Generated by engine/devtools/slurm.py for a private cluster.\n"
            + "\n".join(lines)
            + "\n"
        )


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def start_slurm(directory: str | os.PathLike[str], **options: object) -> Iterator[SlurmCluster]:
    """A running :class:`SlurmCluster` for the block; stopped after it."""
    cluster = SlurmCluster(directory, **options)  # type: ignore[arg-type]
    with cluster:
        yield cluster
