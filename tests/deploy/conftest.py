"""Fixtures for the service units in deploy/: reading them as systemd does, and a throwaway host.

``Unit`` reads a unit file and its ``EnvironmentFile`` and expands ``ExecStart`` with systemd's
rules (``${VAR}`` stays one word, ``$VAR`` splits on whitespace), so a test can run the very
command line the unit would run.

``SystemdHost`` is a real systemd (the one installed here) running as PID 1 of its own PID and
mount namespaces: ``/etc`` and ``/var`` are overlays whose changes vanish with it, ``/run``
and ``/opt`` are fresh, and its unit directories hold only a few empty targets, so it starts
nothing but what a test installs. The network is the host's (loopback). The Python that runs
these tests is bind-mounted at ``/opt/wfe-python`` and ``/opt/wfe/bin/wfe`` runs wfe with it,
as a venv in ``/opt/wfe`` would on a real host (``ProtectHome`` and the permissions of
``/root``, where pyenv may keep it, would hide it at its own path; and it is started with
``LD_LIBRARY_PATH``, for a Python whose libpython is found by an absolute run path). Killing
PID 1 of the namespace ends every process of the host at once.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wfe import engine

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SOURCE = Path(engine.__file__).resolve().parents[1]
PYTHON_HOME = "/opt/wfe-python"
WFE = "/opt/wfe/bin/wfe"
#: The cgroup hierarchies systemd tracks units in, by the prefix of their line in
#: /proc/PID/cgroup: hybrid (v1 name=systemd and v2 at unified/), or v2 alone.
HIERARCHIES = (
    {"1:name=systemd:": "/sys/fs/cgroup/systemd", "0::": "/sys/fs/cgroup/unified"}
    if Path("/sys/fs/cgroup/unified/cgroup.procs").exists()
    else {"0::": "/sys/fs/cgroup"}
)
TARGETS = ("sysinit", "basic", "shutdown", "network", "network-online", "multi-user", "wfe-test")


class Unit:
    """A unit file as systemd reads it: sections of (key, value) lines, continuation lines joined."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sections: dict[str, list[tuple[str, str]]] = {}
        section: list[tuple[str, str]] = []
        pending = ""
        for raw in path.read_text().splitlines():
            line = pending + raw.strip()
            pending = ""
            if not line or line[0] in "#;":
                continue
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if line.startswith("["):
                section = self.sections.setdefault(line.strip("[]"), [])
                continue
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not a key=value line: {line!r}"
            section.append((key.strip(), value.strip()))

    def get(self, section: str, key: str) -> str:
        """The value of the last ``key=`` in ``section`` (as systemd does for single settings)."""
        values = [v for k, v in self.sections.get(section, []) if k == key]
        assert values, f"{self.path.name}: no {key}= in [{section}]"
        return values[-1]

    def environment(self, env_file: Path) -> dict[str, str]:
        """``Environment=`` of the unit, then ``env_file`` (KEY=value lines, later ones win)."""
        env: dict[str, str] = {}
        for key, value in self.sections["Service"]:
            if key == "Environment":
                for word in shlex.split(value):
                    name, _, val = word.partition("=")
                    env[name] = val
        for line in env_file.read_text().splitlines():
            line = line.strip()
            if line and line[0] not in "#;":
                name, _, val = line.partition("=")
                env[name.strip()] = val.strip().strip('"')
        return env

    def exec_start(self, env: dict[str, str]) -> list[str]:
        """``ExecStart`` split into words with variables expanded as systemd expands them."""
        words: list[str] = []
        for word in shlex.split(self.get("Service", "ExecStart")):
            whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
            if whole:  # $VAR alone: split on whitespace, nothing at all when empty
                words += env.get(whole.group(1), "").split()
            else:
                words.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
        return words


@pytest.fixture
def engine_unit() -> Unit:
    return Unit(DEPLOY / "wfe-engine.service")


@pytest.fixture
def agent_unit() -> Unit:
    return Unit(DEPLOY / "wfe-agent.service")


class HostUnavailable(Exception):
    """This machine does not let us make namespaces, mounts or cgroups (e.g. a container)."""


class SystemdHost:
    """A real systemd in its own PID and mount namespaces (see the module docstring)."""

    #: where the Python running the tests is seen on the host, and the ``wfe`` that uses it
    python_home = PYTHON_HOME
    wfe = WFE

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.pid = 0
        #: the cgroup systemd takes as its root (in the v1 name=systemd and the v2 hierarchy)
        self.cgroup = f"wfe-test-host-{os.getpid()}-{id(self):x}"
        self._unshare: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start systemd and wait until it answers ``systemctl``."""
        script = self.dir / "boot.sh"
        script.write_text(self._boot_script())
        self._log = open(self.dir / "systemd.log", "wb")  # noqa: SIM115 - closed in stop()
        self._unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private"]
            + ["--mount-proc", "/bin/sh", str(script)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=_die_with_parent,  # and --kill-child: the host dies with the tests
        )
        self.wait_for(lambda: self._find_pid(), "systemd to start")
        self.wait_for(
            lambda: (
                self.run("systemctl", "is-system-running", check=False).stdout.strip()
                in ("running", "degraded")
            ),
            "systemd to be running",
        )

    def _find_pid(self) -> bool:
        assert self._unshare is not None
        if self._unshare.poll() is not None:
            log = (self.dir / "systemd.log").read_text(errors="replace")
            if re.search(r"Operation not permitted|Permission denied", log):
                raise HostUnavailable(log.strip().splitlines()[-1])
            raise AssertionError(f"the host's boot failed:\n{log}")
        children = Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")
        pids = children.read_text().split()
        if pids and Path(f"/proc/{pids[0]}/exe").resolve().name == "systemd":
            self.pid = int(pids[0])
            return True
        return False

    def _boot_script(self) -> str:
        python = Path(sys.executable)
        relative = python.relative_to(sys.prefix) if python.is_relative_to(sys.prefix) else None
        assert relative is not None, f"{python} is not inside sys.prefix {sys.prefix}"
        d = self.dir
        targets = "\n".join(
            f"printf '[Unit]\\nDescription={t}\\n' > /lib/systemd/system/{t}.target"
            for t in TARGETS
        )
        return f"""set -e
mount -t tmpfs tmpfs /run
for part in etc var; do
    mkdir -p {d}/$part.upper {d}/$part.work
    mount -t overlay overlay -o lowerdir=/$part,upperdir={d}/$part.upper,workdir={d}/$part.work /$part
done
mount -t tmpfs tmpfs /etc/systemd/system
mount -t tmpfs tmpfs /lib/systemd/system
{targets}
mkdir -p {d}/python
mount --bind {sys.prefix} {d}/python
mount -t tmpfs tmpfs /opt
mkdir -p {PYTHON_HOME} /opt/wfe/bin
mount --move {d}/python {PYTHON_HOME}
mkdir -p /opt/wfe/libexec
printf 'import sys\\nfrom wfe.engine.cli.main import main\\nsys.exit(main())\\n' > /opt/wfe/libexec/wfe
printf '#!/bin/sh\\nLD_LIBRARY_PATH={PYTHON_HOME}/lib exec {PYTHON_HOME}/{relative} /opt/wfe/libexec/wfe "$@"\\n' > {WFE}
chmod 755 {WFE}
for h in {" ".join(HIERARCHIES.values())}; do
    mkdir -p $h/{self.cgroup}
    echo $$ > $h/{self.cgroup}/cgroup.procs
done
exec /lib/systemd/systemd --system --unit=wfe-test.target --log-target=console
"""

    def run(
        self, *command: str, user: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on the host (as root, or as ``user``); check its exit status."""
        prefix = ["nsenter", "-t", str(self.pid), "-m", "-p", "--"]
        if user is not None:
            prefix += ["runuser", "-u", user, "--"]
        done = subprocess.run(
            prefix + list(command), capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert done.returncode == 0, f"{command}: {done.returncode}\n{done.stdout}{done.stderr}"
        return done

    def path(self, path: str) -> Path:
        """A path inside the host, seen from the test (through its PID 1's root)."""
        return Path(f"/proc/{self.pid}/root") / path.lstrip("/")

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` properties of ``unit``."""
        out = self.run("systemctl", "show", unit, "-p", ",".join(properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def alive(self, pid: int) -> bool:
        """Whether the host's process ``pid`` (a pid of its namespace) exists."""
        return self.run("kill", "-0", str(pid), check=False).returncode == 0

    def journal(self) -> str:
        """What the host printed while it booted, and its units' state now."""
        boot = (self.dir / "systemd.log").read_text(errors="replace")
        units = self.run("systemctl", "status", "--no-pager", "--full", check=False)
        return boot + units.stdout

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        """Poll ``condition()`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{self.journal()}"
            time.sleep(0.1)

    def adopt(self, unit: str) -> int:
        """Start a process in ``unit``'s cgroup, in a session of its own; its pid on the host.

        It stands for what a unit's main process leaves running beside it (local agents,
        an agent's supervisor and their scripts), without being one of wfe's own.
        """
        main = self.show(unit, "MainPID")["MainPID"]
        paths = [
            HIERARCHIES[prefix] + line[len(prefix) :]
            for line in self.run("cat", f"/proc/{main}/cgroup").stdout.splitlines()
            for prefix in HIERARCHIES
            if line.startswith(prefix)
        ]
        join = "; ".join(f"echo $$ > {path}/cgroup.procs" for path in paths)
        started = self.run(
            "sh",
            "-c",
            f"setsid sh -c '{join}; exec sleep 3600' </dev/null >/dev/null 2>&1 & echo $!",
        )
        pid = int(started.stdout)
        self.wait_for(
            lambda: unit in self.run("cat", f"/proc/{pid}/cgroup").stdout, f"{pid} in {unit}"
        )
        return pid

    def stop(self) -> None:
        """Kill PID 1 of the namespace: every process of the host ends with it."""
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
        if self._unshare is not None:
            self._unshare.wait(timeout=30)
            self._log.close()
        for hierarchy in HIERARCHIES.values():
            root = Path(hierarchy, self.cgroup)
            self.wait_for(functools.partial(_remove_cgroups, root), f"{root} to empty", timeout=10)


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _remove_cgroups(root: Path) -> bool:
    """Remove the cgroup ``root`` and those below it; False while some still hold a process."""
    if not root.exists():
        return True
    for child in sorted(root.glob("**/"), key=lambda p: len(p.parts), reverse=True):
        try:
            child.rmdir()
        except OSError:
            return False
    return not root.exists()


def systemd_host_missing() -> str | None:
    """Why a ``SystemdHost`` cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (namespaces and mounts for a private systemd)"
    for tool in ("systemd", "unshare", "nsenter", "runuser", "systemd-sysusers"):
        if shutil.which(tool) is None and not Path(f"/lib/systemd/{tool}").exists():
            return f"{tool} is not installed (apt-get install systemd util-linux)"
    for top in ("/root", "/home"):
        if SOURCE.is_relative_to(top):
            return f"the wfe source {SOURCE} is under {top}, which the units' ProtectHome hides"
    real = Path(sys.executable).resolve()
    if not real.is_relative_to(Path(sys.prefix).resolve()):  # a venv: its python links out
        for parent in real.parents:
            if not parent.stat().st_mode & stat.S_IXOTH:
                return (
                    f"this venv's interpreter {real} is in {parent}, which the service user"
                    " cannot enter: run the tests with a venv made from a python outside it"
                )
    return None


@pytest.fixture
def systemd_host(tmp_path: Path) -> Iterator[SystemdHost]:
    missing = systemd_host_missing()
    if missing is not None:
        pytest.skip(missing)
    host = SystemdHost(tmp_path / "host")
    host.dir.mkdir()
    try:
        try:
            host.start()
        except HostUnavailable as exc:
            pytest.skip(f"cannot run a private systemd here: {exc}")
        yield host
    finally:
        host.stop()
