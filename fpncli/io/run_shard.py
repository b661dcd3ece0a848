"""Which share of the inputs a run takes: ``--shard I/N``, else torchrun's ``RANK``/``WORLD_SIZE``
or SLURM's ``SLURM_PROCID``/``SLURM_NTASKS`` (``shard_from_env``), as every ``count``-th job
(``select_shard``); garbage in those variables is a one-line error (``env_int``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["select_shard", "env_int", "shard_from_env", "shard_env"]


def select_shard(jobs: list, index: int, count: int) -> list:
    """Every ``count``-th job starting at ``index``: a deterministic split of the input list."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
    return jobs[index::count]


def env_int(name: str, env: Mapping[str, str] | None = None) -> int | None:
    """A non-negative integer environment variable, None when unset or empty; anything else is
    a ValueError with a one-line message."""
    raw = (os.environ if env is None else env).get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number: fix or unset it") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r} is negative: fix or unset it")
    return value


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` when torchrun (or the user) set them, else SLURM's
    ``(SLURM_PROCID, SLURM_NTASKS)``, else None. Garbage is a one-line ValueError."""
    found = shard_env(env)
    return None if found is None else found[:2]


def shard_env(env: Mapping[str, str] | None = None) -> tuple[int, int, str] | None:
    """``shard_from_env``'s ``(rank, world, names)``, ``names`` saying where they came from
    (``"RANK/WORLD_SIZE"`` or ``"SLURM_PROCID/SLURM_NTASKS"``)."""
    names = ("RANK", "WORLD_SIZE")
    rank, world = env_int(names[0], env), env_int(names[1], env)
    if rank is None and world is None:
        names = ("SLURM_PROCID", "SLURM_NTASKS")
        rank, world = env_int(names[0], env), env_int(names[1], env)
    if rank is None and world is None:
        return None
    if rank is None or world is None:
        raise ValueError(f"{names[0]} and {names[1]} must be set together (or neither)")
    if world < 1 or rank >= world:
        raise ValueError(
            f"need 0 <= {names[0]} < {names[1]}, got {names[0]}={rank} {names[1]}={world}"
        )
    return rank, world, "/".join(names)
