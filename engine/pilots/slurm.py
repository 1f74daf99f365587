"""Slurm as a pilot factory's batch system: ``sbatch``, ``squeue``, ``scontrol``, ``scancel``.

A pilot is a batch script (``#!/bin/sh`` then ``exec`` of the agent command, so the agent is
the job's process and gets Slurm's signals) written to the pilot's directory and submitted
with its name, CPUs, memory, time limit and output file. ``squeue --states=all`` says where
the pilots are; for those that ended, ``scontrol show job`` gives the end state and exit code
(with accounting off, as on small clusters, ``sacct`` knows nothing). A job Slurm has
forgotten (past ``MinJobAge``) is reported ended with state ``UNKNOWN``.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping, Sequence

import trio

from wfe.engine.pilots.submitter import BatchState, BatchStatus, PilotJob, SubmitError

#: Slurm job states, by what they mean to the factory (``squeue --help``, JOB STATE CODES).
QUEUED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED"})
RUNNING = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"})
#: Seconds one Slurm command may take before the factory gives up on it (and tries next round).
COMMAND_TIMEOUT = 60.0


class SlurmSubmitter:
    """Submits pilots to Slurm with the client commands on PATH.

    ``partition`` and ``account`` go to ``sbatch`` when given; ``extra`` are more ``sbatch``
    options, as written (``--qos=short``). ``env`` is the environment of every command
    (``SLURM_CONF`` for a private cluster); the pilot inherits it (``sbatch``'s default).
    """

    system = "slurm"

    def __init__(
        self,
        *,
        partition: str | None = None,
        account: str | None = None,
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.partition = partition
        self.account = account
        self.extra = tuple(extra)
        self.env = dict(os.environ if env is None else env)

    async def _run(self, *command: str) -> str:
        try:
            with trio.fail_after(COMMAND_TIMEOUT):
                done = await trio.run_process(
                    command, capture_stdout=True, capture_stderr=True, check=False, env=self.env
                )
        except trio.TooSlowError:
            raise SubmitError(f"{command[0]}: no answer within {COMMAND_TIMEOUT:g} s") from None
        except OSError as exc:
            raise SubmitError(f"{command[0]}: {exc.strerror or exc}") from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
            raise SubmitError(f"{command[0]}: {said[-1] if said else f'exit {done.returncode}'}")
        return done.stdout.decode(errors="replace")

    def script(self, job: PilotJob) -> str:
        """The batch script of ``job``."""
        return (
            "#!/bin/sh\n"
            f"# wfe pilot {job.name}: a wfe agent that leaves when idle or before its time ends\n"
            f"exec {shlex.join(job.command)}\n"
        )

    def sbatch_command(self, job: PilotJob) -> list[str]:
        """The ``sbatch`` command line that submits ``job`` (its script written first)."""
        minutes = max(1, math.ceil(job.walltime / 60))
        command = [
            "sbatch",
            "--parsable",
            f"--job-name={job.name}",
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={job.cpus}",
            f"--mem={job.memory_mb}M",
            f"--time={minutes}",
            f"--output={job.directory / (job.name + '.out')}",
            f"--chdir={job.directory}",
        ]
        if self.partition:
            command.append(f"--partition={self.partition}")
        if self.account:
            command.append(f"--account={self.account}")
        return [*command, *self.extra, str(job.directory / f"{job.name}.sh")]

    async def submit(self, job: PilotJob) -> str:
        path = trio.Path(job.directory / f"{job.name}.sh")
        await path.write_text(self.script(job))
        await path.chmod(0o700)
        out = (await self._run(*self.sbatch_command(job))).strip()
        batch_id = out.split(";", 1)[0]
        if not batch_id.isdigit():
            raise SubmitError(f"sbatch: expected a job id, got {out[:80]!r}")
        return batch_id

    async def statuses(self, batch_ids: Sequence[str]) -> dict[str, BatchStatus]:
        if not batch_ids:
            return {}
        try:
            listing = await self._run(
                "squeue", "--noheader", "--states=all", f"--jobs={','.join(batch_ids)}",
                "--format=%i|%T",
            )  # fmt: skip
        except SubmitError as exc:
            if "Invalid job id" not in str(exc):
                raise
            listing = ""  # every id is unknown to Slurm now
        states = dict(parse_squeue(listing))
        result: dict[str, BatchStatus] = {}
        for batch_id in batch_ids:
            state = states.get(batch_id)
            if state in QUEUED:
                result[batch_id] = BatchStatus(state=BatchState.QUEUED)
            elif state in RUNNING:
                result[batch_id] = BatchStatus(state=BatchState.RUNNING)
            else:
                result[batch_id] = await self._ended(batch_id)
        return result

    async def _ended(self, batch_id: str) -> BatchStatus:
        try:
            shown = await self._run("scontrol", "--oneliner", "show", "job", batch_id)
        except SubmitError as exc:
            if "Invalid job id" not in str(exc):
                raise
            return BatchStatus(
                state=BatchState.ENDED, end_state="UNKNOWN", reason="Slurm no longer knows the job"
            )
        return parse_scontrol(shown)

    async def cancel(self, batch_id: str) -> None:
        await self._run("scancel", batch_id)


def parse_squeue(text: str) -> list[tuple[str, str]]:
    """``(job id, state)`` pairs from ``squeue --format=%i|%T`` lines."""
    pairs = []
    for line in text.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if sep:
            pairs.append((job_id, state.strip()))
    return pairs


def parse_scontrol(text: str) -> BatchStatus:
    """A job's status from ``scontrol --oneliner show job``: ``JobState=`` and
    ``ExitCode=status:signal``, ``Reason=``. Running or queued states are reported as such."""
    fields = dict(
        word.split("=", 1) for word in text.split() if "=" in word and not word.startswith("=")
    )
    state = fields.get("JobState", "UNKNOWN")
    if state in QUEUED:
        return BatchStatus(state=BatchState.QUEUED)
    if state in RUNNING:
        return BatchStatus(state=BatchState.RUNNING)
    status, _, signal = fields.get("ExitCode", "").partition(":")
    exit_code = int(status) if status.isdigit() else None
    reason = fields.get("Reason", "None")
    if signal.isdigit() and int(signal):
        reason = f"signal {signal}" if reason in ("None", "") else f"{reason}, signal {signal}"
    return BatchStatus(
        state=BatchState.ENDED,
        end_state=state,
        exit_code=exit_code,
        reason="" if reason == "None" else reason,
    )


__all__ = ["SlurmSubmitter", "parse_scontrol", "parse_squeue"]
