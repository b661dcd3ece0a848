"""Time ``--engine local`` against ``--engine ray`` on one machine, on generated images.

    python scripts/bench_engines.py [--count 200] [--size 320x240] [--format files|wds]

Both engines run the same job list with the same weights (seeded random: no download) and
output options, into fresh folders. Ray's start-up (``ray.init``) is timed on its own and left
out of the ratio; the Ray run's time includes starting its actors and loading the weights in
them (the local run's model is loaded before its clock starts, so that part counts against
Ray). Prints one JSON object. The goal in issue 11: ray / local <= 1.3 for 200 images.
The work folder (the images and both outputs: about 2.7 GB at the default --count) is removed
at the end, even a failed one; --keep keeps it and prints its path.
On a shared machine, run it when the machine is otherwise idle, or say that it was not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _images(folder: Path, count: int, width: int, height: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    for i in range(count):
        pixels = np.roll(base, shift=i * 7, axis=1)  # distinct images, same size
        Image.fromarray(pixels).save(folder / f"img{i:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", default="320x240", help="generated images, WxH")
    parser.add_argument("--min-size", type=int, default=240, help="extract --min-size")
    parser.add_argument("--max-size", type=int, default=400, help="extract --max-size")
    parser.add_argument("--format", default="files", choices=["files", "wds"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--fake-gpu", action="store_true", help="Ray with num_gpus=1 (as the tests); torch on CPU"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    work = Path(tempfile.mkdtemp(prefix="fpncli-bench-engines-"))
    try:
        _bench(args, work, width, height)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, work: Path, width: int, height: int) -> None:
    import ray

    import fpncli
    from fpncli.io.inputs import discover_inputs
    from fpncli.io.jobs import plan_jobs
    from fpncli.io.outputs import OutputOptions
    from fpncli.run.pipeline import RunOptions, run_jobs
    from fpncli.run.ray_engine import RayOptions, run_ray
    from fpncli.run.wds import run_sharded

    inputs = work / "in"
    inputs.mkdir()
    _images(inputs, args.count, width, height)
    output = OutputOptions(min_size=args.min_size, max_size=args.max_size, save_heatmaps=False,
                           save_overview=False)  # fmt: skip
    options = RunOptions(output=output, batch_size=args.batch_size, workers=2, force=True)
    model = fpncli.load_backbone("random", device="cpu")
    pairs = discover_inputs([str(inputs)])
    result = {"images": args.count, "size": args.size, "format": args.format,
              "batch_size": args.batch_size, "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count()}  # fmt: skip

    def jobs_for(out: Path):
        return plan_jobs(pairs, Path("") if args.format == "wds" else out)

    out = work / "local"
    start = time.perf_counter()
    if args.format == "wds":
        summary = run_sharded(jobs_for(out), str(out), model, options, shard_bytes=10**9)
    else:
        summary = run_jobs(jobs_for(out), model, options)
    result["local_s"] = round(time.perf_counter() - start, 2)
    assert summary.done == args.count, summary

    start = time.perf_counter()
    ray.init(include_dashboard=False, num_gpus=1 if args.fake_gpu else 0, logging_level="ERROR",
             object_store_memory=256 * 2**20)  # fmt: skip
    result["ray_init_s"] = round(time.perf_counter() - start, 2)
    out = work / "ray"
    ray_options = RayOptions(weights="random", device="cpu" if not args.fake_gpu else "auto",
                             out_format=args.format, shard_bytes=10**9)  # fmt: skip
    try:  # its workers stopped before the work folder is removed, whatever happens
        start = time.perf_counter()
        summary = run_ray(jobs_for(out), str(out), model, options, ray_options)
        result["ray_s"] = round(time.perf_counter() - start, 2)
    finally:
        ray.shutdown()
    assert summary.done == args.count, summary
    result["ratio_ray_over_local"] = round(result["ray_s"] / result["local_s"], 3)
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
