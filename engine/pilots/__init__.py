"""Pilots: batch jobs whose payload is a short-lived ``wfe agent`` (``wfe pilots``).

``model`` (what a set of job requirements needs, what a pilot asks for), ``factory`` (the pure
policy: how many pilots to submit or cancel), ``submitter`` (the interface a batch system
implements) and ``slurm`` (Slurm's), ``demand`` and ``books`` (the engine's side: queued
demand, the pilots' records), ``loop`` (the factory process). docs/pilots.md.
"""

from __future__ import annotations
