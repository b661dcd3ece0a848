"""A Ctrl-C at every point it can land in some functions, deterministically: for tests that what
they change is undone whatever stops them.

CPython runs a signal handler (SIGINT's raises KeyboardInterrupt) only at some points: when a
function starts, just after a call returns (the exception comes out of the call, its result
dropped) and when a loop jumps back. ``each_interrupt`` runs the code again for each such point
in the functions given, raising KeyboardInterrupt there through ``sys.setprofile`` (a function's
start; a call's return, its result dropped as it is) and ``sys.settrace`` (a loop's jump back).
"""

from __future__ import annotations

import dis
import sys
from collections.abc import Callable, Iterable, Iterator

_JUMPS_BACK = {"JUMP_BACKWARD", "JUMP_ABSOLUTE"}  # those that check for signals (3.11, 3.10)


def each_interrupt(run: Callable[[], object], functions: Iterable) -> Iterator[str]:
    """Call ``run()`` once per point where a KeyboardInterrupt can land in ``functions`` and
    the functions defined in them (their starts, the returns of the calls they make, their
    loops' jumps back, in the order a plain run meets them), raising it there; yields where it
    landed (``name:line``) after each run it stopped, for the caller to check what was left. A
    KeyboardInterrupt that ``run`` lets out is caught; any other error is raised. Ends after the
    first run that meets no more points."""
    codes = _with_nested({getattr(f, "__wrapped__", f).__code__ for f in functions})
    jumps = {
        c: {i.offset for i in dis.get_instructions(c) if i.opname in _JUMPS_BACK} for c in codes
    }
    n = 1
    while (where := _interrupted(run, jumps, n)) is not None:
        yield where
        n += 1


def _with_nested(codes: set) -> set:
    """``codes`` and the code of the functions defined in them (a closure it returns)."""
    nested = {c for code in codes for c in code.co_consts if isinstance(c, type(code))}
    return codes | _with_nested(nested) if nested else codes


def _interrupted(run: Callable[[], object], jumps: dict, n: int) -> str | None:
    """``run()`` with a KeyboardInterrupt raised at the ``n``-th point met in the code objects
    ``jumps`` names (with the offsets of their jumps back); where it landed, or None if ``run``
    met fewer points."""
    seen, where, in_c = 0, [], set()  # in_c: the frames inside a builtin they called

    def point(frame) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            where.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            raise KeyboardInterrupt

    def profiled(frame, event, arg) -> None:
        del arg  # a call's result, dropped as the interrupt drops it (not kept by the traceback)
        if event == "call" and frame.f_code in jumps:
            point(frame)  # the function's start (a generator's resumption too)
        elif event == "return" and frame.f_back in in_c:
            pass  # a Python function that a builtin called (open's opener) returns into C
        elif event == "return" and frame.f_back is not None and frame.f_back.f_code in jumps:
            point(frame.f_back)  # a Python function it called returned
        elif event == "c_call" and frame.f_code in jumps:
            in_c.add(frame)
        elif event in ("c_return", "c_exception") and frame.f_code in jumps:
            in_c.discard(frame)
            if event == "c_return":
                point(frame)  # a builtin it called returned

    def traced(frame, event, arg):
        if frame.f_code not in jumps:
            return None
        frame.f_trace_lines, frame.f_trace_opcodes = False, True
        return jumped

    def jumped(frame, event, arg):
        if event == "opcode" and frame.f_lasti in jumps[frame.f_code]:
            point(frame)
        return jumped

    sys.setprofile(profiled)
    sys.settrace(traced)
    try:
        run()
    except KeyboardInterrupt:
        if not where:
            raise
    finally:
        sys.settrace(None)
        sys.setprofile(None)
    return where[0] if where else None
