"""How long ``fpncli report`` takes for a folder of N images of Detectron2's usual size.

One photo (1216x800 JPEG, synthetic) is extracted once at the default size (800x1216 input, all
levels, float32) with ``--weights random``; its folder is then replicated N times with hard links
(``.npy``/PNG files and the photo), so the report reads N distinct folders of real size without N
extractions or N x 80 MB of disk. The files are warm in the page cache, as right after a run.

    python scripts/report_speed.py --images 200

Prints the seconds ``write_report`` took (thumbnails, statistics, histograms, HTML).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None, help="default: CPU count, max 8")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fpncli-report-speed-"))
    try:
        photo = tmp / "photo.jpg"
        rng = np.random.RandomState(0)
        small = rng.randint(0, 255, (50, 76, 3), np.uint8)  # smooth, photo-like when upscaled
        Image.fromarray(small).resize((1216, 800), Image.BICUBIC).save(photo, quality=90)
        first = tmp / "first"
        cmd = [sys.executable, "-m", "fpncli", "extract", str(photo), "-o", str(first),
               "--weights", "random"]  # fmt: skip
        subprocess.run(cmd, check=True, env={**os.environ, "FPNCLI_HOME": str(tmp / "home")})
        source = first / "photo"
        out = tmp / "out"
        for i in range(args.images):
            folder = out / f"img{i:05d}"
            folder.mkdir(parents=True)
            own_photo = tmp / "photos" / f"img{i:05d}.jpg"
            own_photo.parent.mkdir(exist_ok=True)
            os.link(photo, own_photo)
            for file in source.iterdir():
                if file.name != "manifest.json":
                    os.link(file, folder / file.name)
            manifest = json.loads((source / "manifest.json").read_text())
            manifest["input"]["path"] = str(own_photo)
            (folder / "manifest.json").write_text(json.dumps(manifest))
        from fpncli.viz.report import write_report

        start = time.perf_counter()
        write_report(out, workers=args.workers)
        seconds = time.perf_counter() - start
        shape = json.loads((source / "manifest.json").read_text())["levels"]["p2"]["shape"]
        print(f"report for {args.images} images (p2 {shape}): {seconds:.2f} s "
              f"({os.cpu_count()} CPUs)")  # fmt: skip
        if args.keep:
            print(f"kept {out}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
