"""Where one process's end-to-end heatmaps run spends its time, thread by thread.

    python scripts/e2e_profile.py [--device cuda] [--images 600] [--variants base,switch1ms]

Runs ``fpncli bench``'s end-to-end row (a generated folder of 1080p JPEGs, heatmaps only, bf16,
batch 16, in this process) once per variant, and prints for its timed run:
  - images/s and the machine's busy share (the row's ``cpu_busy``: ``/proc/stat``, all cores);
  - per thread group (the feeding thread ``MainThread``, ``fpncli-decode``, ``fpncli-write``, the
    rest by the name their runtime gave them: ``other (OMP...)``, ``other (cuda-EvtHandlr)``), its
    CPU milliseconds per image (``/proc/self/task/*/stat``, read every quarter second
    while the run goes: a thread's last quarter second can be missed, so short runs read low)
    and where its time went:
    an in-process sampler takes every thread's Python stack 200 times a second, and the table
    lists each group's most frequent innermost fpncli/torch frames.
The sampler needs Python's lock for each sample, so a thread's samples show where it stands when
it runs Python or waits for the lock, or is in C code that let go of the lock.

Variants: ``base``; ``switchXms`` (``sys.setswitchinterval`` X ms instead of 5); ``wN`` / ``rN``
(N decoding / writing threads, e.g. ``w8r4``); ``cvN`` (OpenCV's threads during the run,
``run.device.runtime.OPENCV_THREADS``, 1 by default; its pool spins) / ``tN`` (torch's CPU threads):
whose the ``other`` threads are, as both runtimes name theirs ``python``; ``pN`` (N worker
processes sharing the device, as ``extract --processes N``: only the machine's busy share, no
threads); joined with ``+`` (``switch1ms+w8r4``).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TICK = os.sysconf("SC_CLK_TCK")


COMMS: dict[int, str] = {}  # native thread id -> the kernel's name for it (``comm``)


def thread_cpu() -> dict[int, float]:
    """native thread id -> CPU seconds (user + system); each thread's ``comm`` into ``COMMS``
    (the threads Python did not start: OpenMP's, OpenCV's, CUDA's, named by their runtimes)."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        head, tail = stat.rsplit(")", 1)
        rest = tail.split()
        COMMS[int(task.name)] = head.split("(", 1)[1]
        out[int(task.name)] = (int(rest[11]) + int(rest[12])) / TICK
    return out


def group(name: str) -> str:
    return re.sub(r"_\d+$", "", name)


class Sampler:
    """Every thread's innermost fpncli/torch frames, ``rate`` times a second, and each thread's
    CPU time every quarter second (the run's threads are gone once it returns)."""

    def __init__(self, rate: float = 200.0) -> None:
        self.rate = rate
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.start_cpu = thread_cpu()
        self.cpu: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="sampler", daemon=True)

    def run(self) -> None:
        me, tick = threading.get_ident(), 0
        while not self.stop.wait(1.0 / self.rate):
            threads = threading.enumerate()
            names = {t.ident: t.name for t in threads}
            tick += 1
            if tick % max(1, int(self.rate / 4)) == 0:
                self.read_cpu(threads)
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                where, outer = [], frame
                while outer is not None and len(where) < 3:
                    file = outer.f_code.co_filename
                    if "fpncli" in file or "/torch/" in file or "concurrent" in file:
                        short = file.rsplit("/", 1)[-1]
                        where.append(f"{short}:{outer.f_lineno} {outer.f_code.co_name}")
                    outer = outer.f_back
                code = frame.f_code
                key = " < ".join(where) or f"{code.co_filename.rsplit('/', 1)[-1]}:" \
                    f"{frame.f_lineno} {code.co_name}"  # fmt: skip
                self.counts[group(names.get(ident, "?"))][key] += 1

    def read_cpu(self, threads) -> None:
        self.names.update({t.native_id: t.name for t in threads if t.native_id is not None})
        self.cpu.update(thread_cpu())

    def groups(self) -> collections.Counter:
        """CPU seconds per thread group over the sampled span."""
        out = collections.Counter()
        for tid, seconds in self.cpu.items():
            native = f"other ({re.sub(r'[0-9]+', '#', COMMS.get(tid, '?'))})"
            out[group(self.names.get(tid, native))] += seconds - self.start_cpu.get(tid, 0.0)
        return out

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.read_cpu(threading.enumerate())
        self.stop.set()
        self.thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA where there is one), cpu, cuda:N"
    )
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--variants", default="base")
    parser.add_argument("--size", default="768x1344")
    parser.add_argument("--source-size", default="1080x1920")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--outputs", default="heatmaps")
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()

    import torch

    from fpncli.api import load_backbone
    from fpncli.run import bench
    from fpncli.run.device import runtime as device_module  # where run_settings reads it
    from fpncli.run.multi import usable_cores

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    model = load_backbone("random", device=device)
    cores = usable_cores()
    height, width = (int(v) for v in args.size.split("x"))
    source = tuple(int(v) for v in args.source_size.split("x"))
    real_run_jobs = bench.run_jobs
    failed = False
    for variant in args.variants.split(","):
        workers, writers = max(2, cores - 2), min(8, cores)
        interval, processes = 0.005, None
        cv_threads, torch_threads = device_module.OPENCV_THREADS, torch.get_num_threads()
        for part in variant.split("+"):
            if m := re.fullmatch(r"switch([\d.]+)ms", part):
                interval = float(m.group(1)) / 1e3
            elif m := re.fullmatch(r"w(\d+)(?:r(\d+))?", part):
                workers = int(m.group(1))
                writers = int(m.group(2)) if m.group(2) else writers
            elif m := re.fullmatch(r"r(\d+)", part):
                writers = int(m.group(1))
            elif m := re.fullmatch(r"cv(\d+)", part):
                cv_threads = int(m.group(1))
            elif m := re.fullmatch(r"t(\d+)", part):
                torch_threads = int(m.group(1))
            elif m := re.fullmatch(r"p(\d+)", part):
                processes = int(m.group(1))
            elif part != "base":
                sys.exit(f"unknown variant part {part!r}")
        calls = []

        def profiled_run_jobs(jobs, *a, calls=calls, **k):
            if len(jobs) < args.images:  # the warm-up
                return real_run_jobs(jobs, *a, **k)
            with Sampler() as sampler:
                summary = real_run_jobs(jobs, *a, **k)
            calls.append((summary, sampler.groups(), sampler.counts))
            return summary

        bench.run_jobs = profiled_run_jobs  # (worker processes: the row's cpu_busy only)
        old = sys.getswitchinterval(), device_module.OPENCV_THREADS, torch.get_num_threads()
        sys.setswitchinterval(interval)
        device_module.OPENCV_THREADS = cv_threads
        torch.set_num_threads(torch_threads)
        try:
            row = bench.bench_end_to_end(
                model, height=height, width=width, images=args.images,
                batch_size=args.batch_size, precision=args.precision, outputs=args.outputs,
                workers=workers, writers=writers, source_size=source, seconds=0.0,
                measure_disk=False, decode_processes=0, processes=processes,
            )  # fmt: skip
        finally:
            sys.setswitchinterval(old[0])
            device_module.OPENCV_THREADS = old[1]
            torch.set_num_threads(old[2])
            bench.run_jobs = real_run_jobs
        print(f"\n=== {variant}: workers {workers} writers {writers} switch {interval * 1e3:g} ms"
              f" processes {processes or 1} threads cv2 {cv_threads} torch {torch_threads}"
              f" on {device} ({cores} cores)")  # fmt: skip
        if row.error:
            print("error:", row.error)
            failed = True
            continue
        stages = " ".join(f"{k} {v:.1f}" for k, v in row.stage_ms_per_image.items())
        print(f"{row.images_per_s:.1f} img/s, ms/img: {stages}; bound {row.bound}; decode rate "
              f"(threads) {row.ratios.get('decode_img_s', 0):.0f} img/s")  # fmt: skip
        busy, cpus = row.ratios.get("cpu_busy", float("nan")), os.cpu_count()
        gpu = row.ratios.get("gpu_busy")
        print(f"timed run: {row.images} images in {row.seconds:.2f} s; machine busy {busy:.0%} "
              f"of {cpus} CPUs, {busy * cpus * row.seconds * 1e3 / max(1, row.images):.1f} CPU "
              f"ms/img" + ("" if gpu is None else f"; GPU busy {gpu:.0%}"))  # fmt: skip
        if not calls:  # worker processes: their threads are not this process's
            continue
        summary, groups, counts = calls[-1]
        done = max(1, summary.done)
        print(f"this process: {sum(groups.values()) * 1e3 / done:.1f} CPU ms/img")
        for name, seconds in groups.most_common():
            if seconds * 1e3 / done < 0.005:  # (the samplers)
                continue
            print(f"  {name:<16} {seconds * 1e3 / done:7.2f} CPU ms/img")
        for name in sorted(counts):
            total = sum(counts[name].values())
            print(f"  -- {name}: {total} samples")
            for key, n in counts[name].most_common(args.top):
                print(f"     {n / total:6.1%}  {key}")
    if failed:
        sys.exit("a variant's row failed (its error: above)")


if __name__ == "__main__":
    main()
