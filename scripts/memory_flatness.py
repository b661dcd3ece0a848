"""Peak RSS of ``fpncli extract`` over N images versus 10·N: memory must not grow with the folder.

Each run is a fresh ``python -m fpncli extract`` child; its peak RSS comes from ``wait4``'s
rusage. Images are small JPEGs extracted at a reduced size (``--min-size``) so that 2,000 images
take minutes on a laptop CPU, with every level saved as ``.npy`` plus heatmaps and overviews.

    python scripts/memory_flatness.py --small 200 --large 2000
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    base = rng.randint(0, 255, (120, 180, 3), dtype=np.uint8)
    for i in range(count):
        sub = folder / f"part{i // 500:02d}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(np.roll(base, i, axis=1)).save(sub / f"img{i:05d}.jpg", quality=90)


def peak_rss_mb(cmd: list[str], env: dict) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024.0, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--min-size", type=int, default=160)
    args = parser.parse_args()
    if not 1 <= args.small < args.large:  # two folders of images, the second the larger
        parser.error(f"need 1 <= --small < --large, got {args.small} and {args.large}")
    tmp = Path(tempfile.mkdtemp(prefix="fpncli-mem-"))
    env = dict(os.environ, FPNCLI_HOME=str(tmp / "home"))
    try:
        results = {}
        for count in (args.small, args.large):
            make_images(tmp / f"in{count}", count)
            max_size = str(args.min_size * 5 // 3)
            cmd = [sys.executable, "-m", "fpncli", "extract", str(tmp / f"in{count}"), "-o",
                   str(tmp / f"out{count}"), "--weights", "random", "--min-size",
                   str(args.min_size), "--max-size", max_size, "--force"]  # fmt: skip
            results[count] = peak_rss_mb(cmd, env)
            print(f"{count:>6} images: peak RSS {results[count][0]:.0f} MB, "
                  f"{results[count][1]:.0f} s", flush=True)  # fmt: skip
            shutil.rmtree(tmp / f"out{count}")
        small, large = results[args.small][0], results[args.large][0]
        print(f"peak RSS ratio {args.large}/{args.small} images: {large / small:.3f} "
              f"({'within' if large <= 1.1 * small else 'OVER'} 10%)")  # fmt: skip
        return 0 if large <= 1.1 * small else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
