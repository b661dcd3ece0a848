"""How long each image's host work holds Python's lock (the GIL), in one thread.

    python scripts/gil_held.py               # the lock's share needs py-spy on PATH
    python scripts/gil_held.py --loop decode # the loop alone (what py-spy samples)

One process's decoding, writing and feeding threads take turns at the lock, so the milliseconds it
is held per image cap that process's images per second whatever its cores (``extract --processes
2`` runs two processes on one GPU; a large CUDA run gets several by default). For ``decode`` (a
generated 1080x1920 JPEG to 756x1344, ``steps.decode``), ``decode-defer`` (the same, the resize
left to the device as on CUDA), ``write`` (that image's five heatmaps from random levels at
768x1344, ``write_image_outputs``, heatmaps only) and ``files`` (the filesystem's part of that
write: a new folder and six new 20 KB files, written and renamed as the writer does, nothing drawn
or encoded; on a 2-core Zen 4 VM's ext4 a new file took 0.24-0.34 ms, on its tmpfs 0.03), the
loop runs ``--seconds`` in one thread, twice
under ``py-spy record -f raw``: with ``--gil`` (only samples where the thread holds the lock) and
without; the ratio of the two sample counts is the share of its time the loop holds the lock.
Without py-spy each loop runs once and only its time per image is printed (``gpu_check.sh``'s
``host`` step: how fast the GPU machine's cores do a run's host work).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RATE = 200  # py-spy samples per second
WHAT = ("decode", "decode-defer", "write", "files")


def loop(what: str, seconds: float, work: Path) -> None:
    import cv2
    import torch

    from fpncli.io.atomic import atomic_write_bytes
    from fpncli.io.image_writer import write_image_outputs
    from fpncli.io.jobs import Job
    from fpncli.io.outputs import OutputOptions
    from fpncli.run.bench import OUTPUT_PRESETS
    from fpncli.run.device.transfer import results_to_host
    from fpncli.run.steps import RunOptions, decode
    from fpncli.weights.registry import DETECTRON2_INPUT

    torch.set_num_threads(1)
    path = work / "photo.jpg"
    photo = cv2.resize(cv2.imread(str(ROOT / "samples" / "chelsea.png")), (1920, 1080))
    cv2.imwrite(str(path), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
    output = replace(OutputOptions(), **OUTPUT_PRESETS["heatmaps"])
    job = Job(path, work / "out")
    decoded = decode(job, RunOptions(output=output), DETECTRON2_INPUT)
    generator = torch.Generator().manual_seed(0)
    levels = {
        f"p{n}": torch.randn(1, 256, -(-768 // 2**n), -(-1344 // 2**n), generator=generator)
        for n in range(2, 7)
    }
    size = [(decoded.prepared.resized_height, decoded.prepared.resized_width)]
    # as on CUDA, each map's colour range comes with it (order statistics picked out there)
    result = results_to_host(levels, size, output, order=True)
    result.wait()
    maps = result.image(0)

    def write(i: int) -> None:
        write_image_outputs(
            work / "out" / str(i), levels=maps, image=decoded.image, prepared=decoded.prepared,
            options=output, weights={"name": "random", "sha256": None}, device="cpu",
            precision="fp32",
        )  # fmt: skip

    # new folders each loop: measure() runs a loop twice over one --work (with py-spy)
    files_root = Path(tempfile.mkdtemp(prefix="files-", dir=work))

    def files(i: int) -> None:  # an image's folder: five heatmaps and the manifest, no drawing
        folder = files_root / str(i)
        folder.mkdir(parents=True)
        for name in ("p2.png", "p3.png", "p4.png", "p5.png", "p6.png", "manifest.json"):
            atomic_write_bytes(folder / name, payload)

    payload = bytes(20_000)
    options = RunOptions(output=output)
    step = {
        "decode": lambda i: decode(job, options, DETECTRON2_INPUT),
        "decode-defer": lambda i: decode(job, options, DETECTRON2_INPUT, resize_on_device=True),
        "write": write,
        "files": files,
    }[what]
    step(0)  # imports and caches: not in the loop
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < seconds:  # one call at least: a time per
        calls += 1  # call, however short --seconds (1e-9 had made none, and a division by 0)
        step_in_loop(step, calls)
    print(f"calls {calls} seconds {time.perf_counter() - start:.6f}")  # one 30 us call: not 0


def step_in_loop(step, i: int) -> None:
    """The loop's one frame that py-spy's samples are counted under."""
    step(i)


def samples(raw: Path) -> int:
    count = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if "step_in_loop" in stack:
            count += int(n)
    return count


def _ms_per_call(cmd: list[str]) -> float:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("calls "))
    calls, elapsed = (float(v) for v in line.split()[1::2])
    return 1e3 * elapsed / calls


def measure(what: str, seconds: float, work: Path) -> None:
    loop_cmd = [sys.executable, __file__, "--loop", what, "--seconds", str(seconds), "--work",
                str(work)]  # fmt: skip
    if shutil.which("py-spy") is None:  # the loop's time alone: how fast this CPU does it
        print(f"{what:<13} {_ms_per_call(loop_cmd):6.1f} ms per image")
        return
    counts, runs = {}, []
    for mode in ("--gil", "all"):
        raw = work / f"{what}-{mode.strip('-')}.txt"
        cmd = ["py-spy", "record", "-r", str(RATE), "-f", "raw", "-o", str(raw)]
        runs.append(_ms_per_call(cmd + ([mode] if mode == "--gil" else []) + ["--", *loop_cmd]))
        counts[mode] = samples(raw)
    share = counts["--gil"] / max(1, counts["all"])
    ms = sum(runs) / len(runs)
    print(f"{what:<13} {ms:6.1f} ms per image, lock held {share * ms:5.2f} ms ({share:.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=WHAT)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if not 0 < args.seconds < float("inf"):  # (nan too) each loop's time is per call made
        parser.error(f"--seconds {args.seconds}: give a number of seconds above 0")
    if args.work is not None and not args.work.is_dir():
        parser.error(f"--work {args.work}: no such folder (give an existing one, or leave it out)")
    if args.loop:
        if args.work is not None:
            loop(args.loop, args.seconds, args.work)
            return
        with tempfile.TemporaryDirectory(prefix="fpncli-gil-") as work:
            loop(args.loop, args.seconds, Path(work))
        return
    if shutil.which("py-spy") is None:
        print("no py-spy on PATH (pip install py-spy): each loop's time only, not the lock's share")
    work = Path(tempfile.mkdtemp(prefix="fpncli-gil-"))
    try:
        for what in WHAT:
            measure(what, args.seconds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
