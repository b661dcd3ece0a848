"""Several ``fpncli extract --format wds`` processes at once into one OUT (``io.shardlock``).

Three cases, each from an empty OUT: the same command twice, ``--shard 0/2`` and ``1/2``, and
three runs over overlapping lists. Each case checks that every key is in exactly one shard, that
``index.parquet`` has one ``ok`` row per key, and that no partial shard or claims file is left;
it prints how many images the runs computed in all (more than the keys means duplicated work).

    python scripts/wds_concurrency_check.py [--images 24] [--min-size 256] [--max-size 384]
        [--shard-size 1GB] [--work /tmp/fpncli-wds-check]

``PYTHONPATH`` picks the fpncli the child processes import. Images of 256-384 px keep each run
busy for several seconds on a CPU, so that the runs overlap.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image


def run_case(name: str, lists: list[list[str]], out: Path, common: list[str], work: Path) -> bool:
    shutil.rmtree(out, ignore_errors=True)
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "fpncli", "extract", *args, "-o", str(out), *common],
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for args in lists
    ]
    outputs = [p.communicate() for p in procs]
    keys = []
    for path in out.glob("shard-*.tar"):
        with tarfile.open(path) as tar:
            keys += [m.name[:-5] for m in tar.getmembers() if m.name.endswith(".json")]
    index = pq.read_table(out / "index.parquet").to_pylist()
    ok_rows = sorted(r["key"] for r in index if r["status"] == "ok")
    leftovers = list(out.glob("*.partial")) + list(out.glob("_claims/*"))
    good = len(keys) == len(set(keys)) and ok_rows == sorted(keys) and not leftovers
    good = good and all(p.returncode == 0 for p in procs)
    computed = sum(int(o.split("done ")[1].split(",")[0]) for o, _ in outputs if "done " in o)
    print(f"{name}: {'OK' if good else 'FAIL'}: {len(set(keys))} keys, {len(keys)} in shards, "
          f"{len(ok_rows)} ok rows, {computed} images computed, exit codes "
          f"{[p.returncode for p in procs]}, {time.monotonic() - start:.0f} s")  # fmt: skip
    for stdout, stderr in outputs:
        notes = [line for line in stderr.splitlines() if "WARNING" in line or "Error" in line]
        for line in [(stdout.strip().splitlines() or ["(no output)"])[-1], *notes]:
            print("    " + line)
    return good


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--min-size", default="256")
    parser.add_argument("--max-size", default="384")
    parser.add_argument("--shard-size", default="1GB")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fpncli-wds-check"))
    args = parser.parse_args()
    inputs = args.work / "in"
    inputs.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for i in range(args.images):
        pixels = rng.randint(0, 255, (300, 400, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(inputs / f"im{i:03}.png")
    files = sorted(str(p) for p in inputs.iterdir())
    common = ["--weights", "random", "--min-size", args.min_size, "--max-size", args.max_size,
              "--workers", "1", "--no-heatmaps", "--no-overview", "--format", "wds",
              "--shard-size", args.shard_size]  # fmt: skip
    out = args.work / "out"
    third = len(files) // 3
    cases = {
        "the same command twice": [[str(inputs)], [str(inputs)]],
        "--shard 0/2 and 1/2": [[str(inputs), "--shard", "0/2"], [str(inputs), "--shard", "1/2"]],
        "three overlapping lists": [files[: 2 * third], files[third:], files[::2]],
    }
    results = [run_case(name, lists, out, common, args.work) for name, lists in cases.items()]
    return 0 if all(results) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
