"""Cases of a script, each in a process of its own, without importing torch again for each.

Process-wide settings (torch's TF32 flags) need a fresh process per case; importing torch and
fpncli in each took a few seconds a case on two cores. ``each_case`` runs the script once, and
it forks one child per case from the state its imports left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fpncli

#: Appended to a script that defines ``check(case) -> str`` (one JSON line): runs ``check`` for
#: each case of ``sys.argv[1]`` (a JSON list) in a child forked from the state the script's
#: imports left (as a fresh process would start, without importing again); where there is no
#: fork, in this process (``each_case`` then gives it one case). One line a case.
FORK_EACH = """
import json as _json, os as _os, sys as _sys
for _case in _json.loads(_sys.argv[1]):
    if not hasattr(_os, "fork"):
        print(check(_case))
        continue
    _read, _write = _os.pipe()
    _pid = _os.fork()
    if _pid == 0:
        _os.close(_read)
        _os.write(_write, check(_case).encode())
        _os._exit(0)
    _os.close(_write)
    with _os.fdopen(_read, "rb") as _f:
        _said = _f.read().decode()
    _os.waitpid(_pid, 0)
    print(_said or _json.dumps({"error": "the case's process said nothing"}), flush=True)
"""


def each_case(script: str, cases: list[str], timeout: float | None = None) -> list:
    """What ``script`` (which defines ``check``: ``FORK_EACH``) says for each of ``cases``, one
    JSON value a case: all from one process that forks one per case, or one process each
    without fork. The checkout's fpncli comes first on the children's path."""
    root = str(Path(fpncli.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    said = []
    for group in [cases] if hasattr(os, "fork") else [[case] for case in cases]:
        done = subprocess.run([sys.executable, "-c", script + FORK_EACH, json.dumps(group)],
                              capture_output=True, text=True, env=env, timeout=timeout)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        said += [json.loads(line) for line in done.stdout.splitlines()]
    assert len(said) == len(cases), said
    return said
