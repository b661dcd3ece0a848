"""How long ``fpncli report`` takes, and its peak memory, for an output of N images.

One photo (1216x800 JPEG, synthetic) is extracted once at the default size (800x1216 input, all
levels, float32) with ``--weights random``; its folder is then replicated N times with hard links
(``.npy``/PNG files and the photo), so the report reads N distinct folders of real size without N
extractions or N x 80 MB of disk. The files are warm in the page cache, as right after a run.
With ``--format wds`` the photo is extracted into a tar shard and its members are copied under N
keys into shards of about 1 GB with their index (real bytes on disk: use ``--min-size`` to keep
it small; 200 images at 400 take about 4 GB).

    python scripts/report_speed.py --images 200
    python scripts/report_speed.py --images 100 --format wds --min-size 400

Prints the seconds ``write_report`` took (thumbnails, statistics, histograms, HTML) and the peak
resident memory of the process that wrote it (run twice with different N: it should not grow).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None, help="default: CPU count, max 8")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--format", choices=["files", "wds"], default="files")
    parser.add_argument("--min-size", type=int, default=800, help="extract's --min-size")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fpncli-report-speed-"))
    try:
        photo = tmp / "photo.jpg"
        rng = np.random.RandomState(0)
        small = rng.randint(0, 255, (50, 76, 3), np.uint8)  # smooth, photo-like when upscaled
        Image.fromarray(small).resize((1216, 800), Image.BICUBIC).save(photo, quality=90)
        first = tmp / "first"
        cmd = [sys.executable, "-m", "fpncli", "extract", str(photo), "-o", str(first),
               "--weights", "random", "--min-size", str(args.min_size), "--max-size", "1333",
               "--format", args.format]  # fmt: skip
        rc = subprocess.run(cmd, env={**os.environ, "FPNCLI_HOME": str(tmp / "home")}).returncode
        if rc:  # its own message is above: one line more, no traceback
            sys.exit(f"report_speed.py: fpncli extract of the photo failed (exit {rc})")
        out = tmp / "out"
        photos = tmp / "photos"
        photos.mkdir()
        for i in range(args.images):
            os.link(photo, photos / f"img{i:05d}.jpg")
        build = _shards if args.format == "wds" else _folders
        shape = build(first, out, photos, args.images)
        code = (
            "import json, resource, sys, time\n"
            "import fpncli\n"
            "from fpncli.viz.report import write_report\n"
            "start = time.perf_counter()\n"
            "write_report(sys.argv[1], workers=json.loads(sys.argv[2]))\n"
            "seconds = time.perf_counter() - start\n"
            "print(fpncli.__file__, seconds,\n"
            "      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
        )
        done = subprocess.run([sys.executable, "-c", code, str(out), json.dumps(args.workers)],
                              capture_output=True, text=True, cwd=tmp)  # fmt: skip
        if done.returncode:  # the error's last line (a traceback's), not the script's traceback
            last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            sys.exit(f"report_speed.py: write_report({out}) failed: {last}")
        where, seconds, peak_mb = done.stdout.split()[-3:]
        seconds, peak_mb = float(seconds), float(peak_mb)
        print(f"fpncli from {Path(where).parent}")
        print(f"report for {args.images} images ({args.format}, p2 {shape}): {seconds:.2f} s, "
              f"peak RSS {peak_mb:.0f} MB ({os.cpu_count()} CPUs)")  # fmt: skip
        if args.keep:
            print(f"kept {out}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _folders(first: Path, out: Path, photos: Path, count: int) -> list[int]:
    source = first / "photo"
    manifest = json.loads((source / "manifest.json").read_text())
    for i in range(count):
        folder = out / f"img{i:05d}"
        folder.mkdir(parents=True)
        for file in source.iterdir():
            if file.name != "manifest.json":
                os.link(file, folder / file.name)
        manifest["input"]["path"] = str(photos / f"img{i:05d}.jpg")
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest["levels"]["p2"]["shape"]


def _shards(first: Path, out: Path, photos: Path, count: int) -> list[int]:
    """The one image's members under ``count`` keys, in shards of about 1 GB named as
    ``ShardWriter`` names them (the index refuses another name), with their ledger parts and
    ``index.parquet``."""
    from fpncli.io.shard_index import consolidate_index, read_index, write_parquet
    from fpncli.io.shards import INDEX_DIR, WDS_MARKER, open_root, shard_digest, shard_name

    fs, root = open_root(str(first))
    [row] = read_index(fs, root).to_pylist()
    with tarfile.open(first / row["shard"]) as tar:
        members = {m.name[len("photo.") :]: tar.extractfile(m).read() for m in tar}
    manifest = json.loads(members.pop("json"))
    (out / INDEX_DIR).mkdir(parents=True)
    (out / WDS_MARKER).touch()  # the root is fpncli's: consolidate_index writes its index
    partial = out / "shard.tar.partial"
    tar, keys = None, []

    def commit() -> None:
        tar.close()
        shard = shard_name(shard_digest([row["settings"], *keys]))  # as ShardWriter names it
        size = partial.stat().st_size
        partial.rename(out / shard)
        rows = [dict(row, key=k, shard=shard, shard_bytes=size, source=k) for k in keys]
        write_parquet(fs, str(out / INDEX_DIR / f"part-{shard[:-4]}.parquet"), rows)

    for i in range(count):
        key = f"img{i:05d}"
        if tar is None:
            tar = tarfile.open(partial, "w", format=tarfile.PAX_FORMAT)
        manifest["input"]["path"] = str(photos / f"{key}.jpg")
        for suffix, data in [*members.items(), ("json", json.dumps(manifest).encode())]:
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        keys.append(key)
        if tar.fileobj.tell() >= 1e9:
            commit()
            tar, keys = None, []
    if tar is not None:
        commit()
    consolidate_index(fs, str(out))
    return manifest["levels"]["p2"]["shape"]


if __name__ == "__main__":
    main()
