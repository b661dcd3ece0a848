"""The host's memory during a run: keep large freed blocks in the process's heap (glibc
only), and tell whether a CPU batch fits in what the machine can give.

glibc serves every allocation above its mmap threshold (at most 32 MiB, however it adapts)
with a fresh ``mmap`` and unmaps it on free, so each of the backbone's 62 MB activations at
800x1216 is new memory, and the first write to every 4 KiB page of it faults into the kernel.
That was 130-170 ms of a 1.3-1.7 s CPU forward (AMD EPYC, 2 cores). Raising the mmap and trim
thresholds for the run lets freed activations be reused by the next layer and image; the heap
then stays at the run's peak, fragmentation included, and does not grow with the folder: over
photos of varied sizes (400-1600 px) the peak RSS was 1,559 MB after 48 and 1,569 MB after 144,
against 1,260 MB after 48 with ``FPNCLI_MALLOC=0``, for an 8% faster folder run. In a
thread other than the main one, glibc's arena heaps are at most 64 MiB, so blocks above that are
still mapped and unmapped (the model runs on the main thread; decoded images and the writers'
buffers are smaller).

On exit the thresholds go to where glibc's adaptive ones settle once large blocks have been
freed (mmap 32 MiB, trim 64 MiB; mallopt offers no way back to adapting) and ``malloc_trim``
hands the free heap back to the system.
Elsewhere (macOS, musl) nothing happens. ``FPNCLI_MALLOC=0`` turns it off.

A CPU batch too large for the memory left is not run (``cpu_batch_bytes``, ``available_bytes``):
Linux's OOM killer would end the process without a word, and every rerun at the same image.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from ..shared import Record, SharedSetting

__all__ = [
    "keep_large_blocks", "CPU_BYTES_PER_PIXEL", "cpu_batch_bytes", "available_bytes",
    "cgroup_headroom", "address_space_headroom",
]  # fmt: skip

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_SETTLED_MMAP, _SETTLED_TRIM = 32 << 20, 64 << 20  # DEFAULT_MMAP_THRESHOLD_MAX and twice it
_KEEP_BELOW = 1 << 30  # allocations under 1 GiB come from the heap
_TRIM_ABOVE = (1 << 31) - 1


@functools.cache
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only (musl has a mallopt that does nothing)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):
        return None
    return libc


def _set(libc, mmap_threshold: int, trim_threshold: int) -> None:
    libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)


def _keep(record: Record) -> None:
    """Raise glibc's thresholds, having first passed ``record`` what settles them and trims the
    heap."""
    libc = _glibc()

    def settle() -> None:
        _set(libc, _SETTLED_MMAP, _SETTLED_TRIM)
        libc.malloc_trim(0)

    record(settle)
    _set(libc, _KEEP_BELOW, _TRIM_ABOVE)


_KEPT = SharedSetting(_keep)  # one raise for overlapping runs, settled when the last one ends


@contextmanager
def keep_large_blocks():
    """Within the block (nesting and concurrent runs allowed), freed blocks under 1 GiB stay in
    the heap for reuse instead of going back to the system."""
    if os.environ.get("FPNCLI_MALLOC", "1") == "0" or _glibc() is None:
        yield
        return
    with _KEPT.held():
        yield


#: The CPU forward's peak memory, in bytes per padded input pixel of each image of a batch,
#: over what the loaded model already holds: the peak RSS of ``fpncli extract --no-resize`` of
#: one photo of noise (R-50, all outputs, glibc, AMD EPYC with AVX512-BF16) less that of a
#: 64x64 one was 612, 702 and 637 B/px in fp32 at 0.8, 3.0 and 4.1 MP, and 293 and 397 in
#: bf16 at 0.8 and 3.0 MP (a second image of a batch: about 500 in fp32). Taken a little
#: under, so that a batch that fits is never refused; what is refused is several times over.
CPU_BYTES_PER_PIXEL = {"fp32": 600, "bf16": 360}


def cpu_batch_bytes(rows: int, padded_height: int, padded_width: int, precision: str) -> int:
    """About the memory a CPU forward of ``rows`` images of this padded size takes at its peak
    (besides the model's), in bytes."""
    per_pixel = CPU_BYTES_PER_PIXEL.get(precision, CPU_BYTES_PER_PIXEL["fp32"])
    return rows * padded_height * padded_width * per_pixel


def available_bytes(meminfo: str = "/proc/meminfo", *, share: float = 1.0,
                    cgroups: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup",
                    status: str = "/proc/self/status") -> int | None:  # fmt: skip
    """The memory this process can take now without being killed for it: ``MemAvailable``
    and ``SwapFree`` of ``meminfo``, or less where a memory cgroup (a container, a SLURM job, a
    systemd slice) leaves less (``cgroup_headroom``), ``share`` of that (each of N worker
    processes checks before its batch: 1/N, so that N batches started together fit together),
    at most what ``ulimit -v`` leaves this process (``address_space_headroom``, each process's
    own: past it an allocation fails), and the free blocks glibc holds in this process's heap
    (``keep_large_blocks`` keeps an earlier batch's activations there for the next). None
    where ``meminfo`` cannot be read or has no ``MemAvailable`` (not Linux, or before 3.14)."""
    fields = {}
    try:
        with open(meminfo, encoding="ascii", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("MemAvailable", "SwapFree"):
                    fields[name] = int(value.split()[0]) * 1024  # "123 kB"
    except (OSError, ValueError, IndexError):
        return None
    if "MemAvailable" not in fields:
        return None
    swap = fields.get("SwapFree", 0)
    machine = fields["MemAvailable"] + swap
    limited = cgroup_headroom(cgroups, root, host_swap=swap)
    if limited is not None:
        machine = min(machine, limited)
    ours = int(max(0, machine) * share)  # the machine's (or cgroup's) memory is shared
    own = address_space_headroom(status)  # ulimit -v is each process's own
    if own is not None:
        ours = min(ours, own)
    return ours + _heap_free()


def address_space_headroom(status: str = "/proc/self/status") -> int | None:
    """What ``ulimit -v`` (RLIMIT_AS) leaves this process: its soft limit less the address
    space mapped now (``VmSize`` of ``status``; the heap's free blocks are inside it, and
    ``available_bytes`` adds them). None without a limit, or where either cannot be read."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, ValueError):
        return None
    if limit == resource.RLIM_INFINITY or limit < 0:
        return None
    try:
        with open(status, encoding="ascii", errors="replace") as f:
            mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return max(0, limit - mapped)


#: a cgroup v1 limit at least this large is "no limit" (it reads 2**63 rounded down to a page)
_NO_LIMIT = 1 << 60


def cgroup_headroom(cgroups: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup", *,
                    host_swap: int = 0) -> int | None:  # fmt: skip
    """What this process's memory cgroups let it take before their OOM killer ends it: the
    least, over its cgroup and every one above it that has a limit, of the limit less the part
    of its usage the kernel cannot drop (the page cache of files read and written it drops
    before killing), plus the swap the cgroup may still use. Docker, Kubernetes, SLURM and
    systemd limit memory so, and ``MemAvailable`` (the host's) does not see it. cgroup v2
    (``memory.max``) and v1 (``memory.limit_in_bytes``). None where there is no limit or
    nothing can be read."""
    try:
        with open(cgroups, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        # (os.path.isdir: False for any error, a name too long or a folder not ours)
        if hierarchy == "0" and controllers == "":  # (a hybrid host mounts v2 at unified/)
            unified = os.path.join(root, "unified")
            base, files = Path(unified if os.path.isdir(unified) else root), _V2
        elif "memory" in controllers.split(","):
            base, files = Path(root) / "memory", _V1
        else:
            continue
        for folder in _cgroup_folders(base, path):
            try:
                room = _headroom(folder, files, host_swap)
            except (OSError, ValueError):  # a memory check never ends a run; the others count
                continue
            if room is not None:
                best = room if best is None else min(best, room)
    return best


_V2 = ("memory.max", "memory.current", ("inactive_file", "active_file"),
       ("memory.swap.max", "memory.swap.current"))  # fmt: skip
_V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes",
       ("total_inactive_file", "total_active_file"), None)  # fmt: skip


def _cgroup_folders(base: Path, path: str) -> list[Path]:
    """``path``'s folder under ``base`` and those above it, up to ``base``. In a container the
    path is often the host's (``/docker/<id>``) while ``base`` shows only the container's own
    cgroup, which is then ``base`` itself."""
    parts = [p for p in path.strip().split("/") if p and p not in (".", "..")]
    folders = [base.joinpath(*parts[:k]) for k in range(len(parts), 0, -1)]
    return [f for f in folders if os.path.isdir(f)] + [base]


def _headroom(folder: Path, files, host_swap: int) -> int | None:
    """One cgroup folder's room (``cgroup_headroom``), ``files`` naming its version's files;
    None without a limit."""
    limit_file, usage_file, cache_keys, swap_files = files
    limit = _read_number(folder / limit_file)
    usage = _read_number(folder / usage_file)
    if limit is None or limit >= _NO_LIMIT or usage is None:
        return None
    cache = 0
    try:
        for line in (folder / "memory.stat").read_text(errors="replace").splitlines():
            key, _, value = line.partition(" ")
            if key in cache_keys:
                cache += int(value)
    except (OSError, ValueError):
        pass
    swap = 0
    if swap_files is not None:
        swap_max = _read_number(folder / swap_files[0])
        swap_used = _read_number(folder / swap_files[1]) or 0
        if swap_max is not None:
            swap = min(host_swap, max(0, swap_max - swap_used))
        elif os.path.isfile(folder / swap_files[0]):  # "max": the host's swap
            swap = host_swap
    kept = usage - min(cache, usage)  # what the kernel cannot drop before a kill
    return max(0, limit - kept) + swap


def _read_number(path: Path) -> int | None:
    """A cgroup file's number; None for "max", a missing file or anything else."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost",
    )]  # fmt: skip


def _heap_free() -> int:
    """The free bytes in this process's glibc heap (``mallinfo2``, glibc 2.33+; else 0)."""
    libc = _glibc()
    mallinfo2 = getattr(libc, "mallinfo2", None) if libc is not None else None
    if mallinfo2 is None:
        return 0
    mallinfo2.restype = _Mallinfo2
    return int(mallinfo2().fordblks)
