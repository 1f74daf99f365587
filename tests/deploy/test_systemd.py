"""The units of deploy/ under a real systemd, on a throwaway host (conftest's ``SystemdHost``).

Each test installs as docs/deploy.md says (the ``wfe`` user from sysusers.d, the unit, its
environment file, ``wfe init`` as that user), starts the unit, runs a job, then stops,
restarts or crashes it. What ``KillMode`` does is seen on a process the test puts in the
unit's cgroup, in a session of its own, as the engine's local agents and an agent's
supervisor and scripts are: systemd's default would kill it on stop, these units must not.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from wfe.engine.devtools.prosody import start_prosody

if TYPE_CHECKING:
    from conftest import SystemdHost

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CONFIG = "/var/lib/wfe/wfe.toml"
ENGINE = "wfe-engine.service"
AGENT = "wfe-agent.service"


def install_engine(host: SystemdHost, *, local: int, toml: str = "") -> None:
    """Install the engine as docs/deploy.md says: user, unit, environment file, workspace."""
    host.run("mkdir", "-p", "/etc/sysusers.d")
    shutil.copy(DEPLOY / "sysusers.d" / "wfe.conf", host.path("/etc/sysusers.d/wfe.conf"))
    host.run("systemd-sysusers")
    for name in ("wfe-engine.service", "wfe-agent.service"):
        shutil.copy(DEPLOY / name, host.path(f"/etc/systemd/system/{name}"))
    host.run("install", "-D", "-m", "0644", "/dev/null", "/etc/wfe/engine.env")
    shutil.copy(DEPLOY / "engine.env", host.path("/etc/wfe/engine.env"))
    host.run("install", "-d", "-o", "wfe", "-g", "wfe", "-m", "0750", "/var/lib/wfe")
    host.run(host.wfe, "init", "/var/lib/wfe", "--port", "0", "--local", str(local), user="wfe")
    with host.path(CONFIG).open("a") as config:
        config.write(toml)
    host.run("systemctl", "daemon-reload")


def wfe(host: SystemdHost, *args: str) -> Any:
    """Run a wfe client command on the host and return its JSON output."""
    return json.loads(host.run(host.wfe, *args, "--json", "--config", CONFIG).stdout)


def start_unit(host: SystemdHost, unit: str) -> None:
    """``systemctl start``; for the engine, wait until it has written its console port."""
    if unit == ENGINE:
        host.path("/var/lib/wfe/run/api.port").unlink(missing_ok=True)
    host.run("systemctl", "start", unit)
    if unit == ENGINE:
        wait_engine(host)


def wait_engine(host: SystemdHost) -> None:
    host.wait_for(lambda: host.path("/var/lib/wfe/run/api.port").exists(), "the engine's port")


def main_pid(host: SystemdHost, unit: str) -> int:
    return int(host.show(unit, "MainPID")["MainPID"])


def run_job(host: SystemdHost, seconds: float = 0) -> dict[str, Any]:
    """Run the shipped sleep_echo RScript to its end; its job's status."""
    done = wfe(host, "run", "sleep_echo", "--rscript", "-p", f"seconds={seconds}", "--wait")
    assert done["state"] == "succeeded", done
    return wfe(host, "status", done["job"])  # type: ignore[no-any-return]


def stop(host: SystemdHost, unit: str) -> None:
    """``systemctl stop``; the main process must have ended cleanly (exit 0 on SIGTERM)."""
    host.run("systemctl", "stop", unit)
    assert host.show(unit, "ActiveState", "Result", "ExecMainStatus") == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainStatus": "0",
    }


def user_of(host: SystemdHost, unit: str) -> str:
    return host.run("ps", "-o", "user=", "-p", str(main_pid(host, unit))).stdout.strip()


def test_engine_unit_runs_hardened_keeps_its_cgroup_on_stop_and_restarts_after_a_crash(
    systemd_host: SystemdHost,
) -> None:
    """The engine unit runs as user wfe under its hardening and runs a job on a local agent;
    `systemctl stop` stops the engine cleanly and leaves the rest of its cgroup running
    (KillMode=process; with systemd's default KillMode the same check finds it killed); a
    start after that and a restart after a crash (Restart=on-failure) find the books intact."""
    host = systemd_host
    install_engine(host, local=1)
    start_unit(host, ENGINE)
    assert user_of(host, ENGINE) == "wfe"
    job = run_job(host)
    assert job["attempt_list"][0]["agent"] == "local-1"
    beside = host.adopt(ENGINE)

    stop(host, ENGINE)
    assert host.alive(beside), "systemctl stop killed a process of the engine's cgroup"

    start_unit(host, ENGINE)
    assert wfe(host, "status", job["id"])["state"] == "succeeded"
    crashed = main_pid(host, ENGINE)
    host.path("/var/lib/wfe/run/api.port").unlink()
    host.run("systemctl", "kill", "--kill-whom=main", "--signal=SIGKILL", ENGINE)
    host.wait_for(lambda: main_pid(host, ENGINE) not in (0, crashed), "a restart")
    assert host.show(ENGINE, "NRestarts")["NRestarts"] == "1"
    wait_engine(host)
    assert wfe(host, "status", job["id"])["state"] == "succeeded"
    assert run_job(host)["state"] == "succeeded"
    assert host.alive(beside)

    default = host.path("/etc/systemd/system/wfe-engine.service.d/kill.conf")
    default.parent.mkdir()
    default.write_text("[Service]\nKillMode=control-group\n")
    host.run("systemctl", "daemon-reload")
    stop(host, ENGINE)
    host.wait_for(lambda: not host.alive(beside), "KillMode=control-group to kill it")


@pytest.fixture
def prosody(tmp_path: Path) -> Iterator[Any]:
    users = {"engine": "engine-secret", "node1": "node1-secret"}
    with start_prosody(tmp_path / "prosody", users=users) as server:
        yield server


def install_agent(host: SystemdHost, server: Any) -> None:
    """The agent's side of docs/deploy.md: agent.toml, its password, engine.pub, agent.env."""
    host.path("/etc/wfe/agent.toml").write_text(
        f'jid = "{server.jid("node1")}"\n'
        'password_file = "agent.password"\n'
        f'controllers = ["{server.jid("engine")}"]\n'
        'trusted_key = "engine.pub"\n'
        f'server = "{server.host}"\nport = {server.port}\ntls = "plain"\n'
        "slots = 2\n"
    )
    host.path("/etc/wfe/agent.password").write_text("node1-secret\n")
    host.run("chown", "wfe:wfe", "/etc/wfe/agent.password")
    host.run("chmod", "0600", "/etc/wfe/agent.password")
    shutil.copy(host.path("/var/lib/wfe/engine.pub"), host.path("/etc/wfe/engine.pub"))
    env = (DEPLOY / "agent.env").read_text()
    host.path("/etc/wfe/agent.env").write_text(env)


def install_xmpp_engine(host: SystemdHost, prosody: Any) -> None:
    """An engine with no local agents serving XMPP agents, started, and the agent installed."""
    xmpp = (
        f'\n[xmpp]\nenabled = true\njid = "{prosody.jid("engine")}"\n'
        f'host = "{prosody.host}"\nport = {prosody.port}\ntls = "plain"\n'
    )
    install_engine(host, local=0, toml=xmpp)
    host.path("/var/lib/wfe/xmpp.password").write_text("engine-secret\n")
    host.run("chown", "wfe:wfe", "/var/lib/wfe/xmpp.password")
    host.run("chmod", "0600", "/var/lib/wfe/xmpp.password")
    start_unit(host, ENGINE)
    install_agent(host, prosody)


def agent_names(host: SystemdHost) -> list[str]:
    """The agents the engine has connected now."""
    return [a["name"] for a in wfe(host, "agents") if a["state"] == "connected"]


def test_agent_unit_serves_over_xmpp_and_keeps_its_cgroup_on_stop(
    systemd_host: SystemdHost, prosody: Any
) -> None:
    """The agent unit logs in to a real Prosody as user wfe under its hardening and runs a
    job for an engine with no local agents; `systemctl stop` stops the agent cleanly and
    leaves the rest of its cgroup running (KillMode=process); started again, it runs jobs."""
    host = systemd_host
    install_xmpp_engine(host, prosody)
    start_unit(host, AGENT)
    assert user_of(host, AGENT) == "wfe"
    name = prosody.jid("node1")
    host.wait_for(lambda: name in agent_names(host), "the agent to say hello")
    assert run_job(host)["attempt_list"][0]["agent"] == name
    beside = host.adopt(AGENT)

    stop(host, AGENT)
    assert host.alive(beside), "systemctl stop killed a process of the agent's cgroup"

    host.wait_for(lambda: name not in agent_names(host), "the engine to see the agent leave")
    start_unit(host, AGENT)
    host.wait_for(lambda: name in agent_names(host), "the agent to say hello again")
    assert run_job(host)["attempt_list"][0]["agent"] == name
    assert host.alive(beside)


def test_a_script_running_when_the_engine_unit_stops_runs_on_and_its_job_succeeds(
    systemd_host: SystemdHost,
) -> None:
    """`systemctl stop wfe-engine` while a local agent runs a script: the script runs on
    (its agent's supervisor is in the unit's cgroup), and after `systemctl start` the job
    ends succeeded as its first attempt, reconciled with the agent."""
    host = systemd_host
    install_engine(host, local=1)
    start_unit(host, ENGINE)
    started = wfe(host, "run", "sleep_echo", "--rscript", "-p", "seconds=30", "-p", "message=m")
    job = started["job"]
    host.wait_for(lambda: wfe(host, "status", job)["state"] == "running", "the job to run")
    host.wait_for(lambda: scripts(host) != [], "the script to start")
    script = scripts(host)

    stop(host, ENGINE)
    survived = scripts(host) == script

    start_unit(host, ENGINE)
    host.wait_for(lambda: wfe(host, "status", job)["state"] != "running", "the job to end", 90)
    status = wfe(host, "status", job)
    if not survived and status["state"] == "cancelled" and "shutdown" in json.dumps(status):
        pytest.xfail(
            "issue 12 item 1 is not in this tree: on SIGTERM the engine itself told its local "
            "agents to shut down, and they cancelled the attempt (the unit's part, KillMode, "
            "is checked above)"
        )
    assert survived, f"the script died with the engine's unit: {status}"
    assert status["state"] == "succeeded", status
    assert [a["attempt"] for a in status["attempt_list"]] == [1]


def scripts(host: SystemdHost) -> list[str]:
    """The pids of sleep_echo's `sleep 30` on the host."""
    return host.run("pgrep", "-f", "^sleep 30", check=False).stdout.split()


def test_a_script_running_when_the_agent_unit_stops_runs_on_and_its_job_succeeds(
    systemd_host: SystemdHost, prosody: Any
) -> None:
    """`systemctl stop wfe-agent` while the agent runs a script: the script runs on under the
    agent's supervisor (in the unit's cgroup), and once `systemctl start` brings the agent
    back the job ends succeeded as its first attempt."""
    host = systemd_host
    install_xmpp_engine(host, prosody)
    start_unit(host, AGENT)
    name = prosody.jid("node1")
    host.wait_for(lambda: name in agent_names(host), "the agent to say hello")
    started = wfe(host, "run", "sleep_echo", "--rscript", "-p", "seconds=30", "-p", "message=m")
    job = started["job"]
    host.wait_for(lambda: scripts(host) != [], "the script to start")
    script = scripts(host)

    stop(host, AGENT)
    assert scripts(host) == script, "the script died with the agent's unit"

    start_unit(host, AGENT)
    host.wait_for(lambda: wfe(host, "status", job)["state"] != "running", "the job to end", 90)
    status = wfe(host, "status", job)
    assert status["state"] == "succeeded", status
    assert [a["attempt"] for a in status["attempt_list"]] == [1]
