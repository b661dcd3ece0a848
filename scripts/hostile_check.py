"""Check the figures issue 8 asks to hold under hostile conditions, with the real CLI.

1. Broken + odd inputs: 5 broken files (empty, truncated, text named .jpg, random bytes, a
   60,000 x 60,000 PNG bomb), 11 odd valid ones (CMYK, 16-bit, grey, RGBA, palette, animated GIF,
   12x2000, 1x1, a unicode name, two files with the same stem) and a FIFO: expect 11 complete
   outputs, the 6 others named with reasons, no traceback, no hang, exit 1, peak RSS < 3 GiB.
2. Three concurrent runs over overlapping inputs into one -o, repeated: every image complete and
   valid each time, no failure, no manifest whose files are missing, no temporary left.
3. A 10 MiB disk (tmpfs, needs root) with --force and 40 images: one "disk full" line, then after
   freeing space (remount bigger) the same command completes and redoes nothing complete.

    python scripts/hostile_check.py [--repeats 5] [--skip-disk]

Prints one line per check and a JSON summary; exits 1 when a figure does not hold.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fpncli.io.manifest import is_complete, read_manifest  # noqa: E402

LEVELS = ("p2", "p3", "p4", "p5", "p6")


def _env(home: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), FPNCLI_HOME=str(home))


def _extract(args: list[str], home: Path, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fpncli", "extract", *args, "--weights", "random"]
    return subprocess.Popen(cmd, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)  # fmt: skip


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 255, (h, w, 3), dtype=np.uint8)


def _png_bomb(path: Path, side: int = 60_000) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress((b"\0" * (1 + 3 * side)) * 8, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))  # fmt: skip


def make_odd_inputs(src: Path) -> tuple[list[str], list[str]]:
    """Write the 5 broken, 11 odd valid files and the FIFO; return (valid names, bad names)."""
    src.mkdir(parents=True)
    rgb = _noise(120, 160, 0)
    Image.fromarray(rgb).convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray((np.arange(120 * 160).reshape(120, 160) * 3).astype(np.uint16)).save(
        src / "gray16.png"
    )
    Image.fromarray(rgb).convert("L").save(src / "grey.png")
    Image.fromarray(np.dstack([rgb, rgb[:, :, :1]])).save(src / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(src / "palette.png")
    frames = [Image.fromarray(_noise(60, 80, i)) for i in range(3)]
    frames[0].save(src / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    Image.fromarray(_noise(2000, 12, 1)).save(src / "tall_12x2000.png")
    Image.fromarray(_noise(1, 1, 2)).save(src / "one_pixel.png")
    Image.fromarray(_noise(90, 90, 3)).save(src / "café_日本.png")
    Image.fromarray(_noise(64, 64, 4)).save(src / "same.jpg")
    Image.fromarray(_noise(64, 64, 5)).save(src / "same.png")
    valid = ["cmyk.jpg", "gray16.png", "grey.png", "rgba.png", "palette.png", "animated.gif",
             "tall_12x2000.png", "one_pixel.png", "café_日本.png", "same.jpg",
             "same.png"]  # fmt: skip
    (src / "empty.jpg").write_bytes(b"")
    whole = src / "whole.jpg"
    Image.fromarray(rgb).save(whole, quality=95)
    (src / "truncated.jpg").write_bytes(whole.read_bytes()[:400])
    whole.unlink()
    (src / "text.jpg").write_text("this is not a JPEG\n")
    (src / "random.png").write_bytes(np.random.RandomState(9).bytes(5000))
    _png_bomb(src / "bomb.png")
    os.mkfifo(src / "fifo.jpg")
    bad = ["empty.jpg", "truncated.jpg", "text.jpg", "random.png", "bomb.png", "fifo.jpg"]
    return valid, bad


def _folders_ok(root: Path) -> tuple[int, list[str]]:
    """(complete image folders, problems): every manifest's files present and loadable."""
    complete, problems = 0, []
    for manifest in root.rglob("manifest.json"):
        folder = manifest.parent
        if not is_complete(folder):
            problems.append(f"{folder}: manifest lists missing or resized files")
            continue
        complete += 1
        for meta in read_manifest(folder)["levels"].values():
            if meta.get("file"):
                array = np.load(folder / meta["file"])
                if list(array.shape) != meta["shape"]:
                    problems.append(f"{folder}/{meta['file']}: shape {array.shape}")
    temporaries = list(root.rglob(".*fpncli-tmp*"))
    if temporaries:
        problems.append(f"{len(temporaries)} temporary files left, e.g. {temporaries[0]}")
    return complete, problems


def check_odd_inputs(work: Path) -> dict:
    src, out = work / "odd", work / "odd_out"
    valid, bad = make_odd_inputs(src)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.monotonic()
    proc = _extract([str(src), "-o", str(out), "--workers", "2"], work / "home")
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"ok": False, "why": "hung for 600 s"}
    seconds = time.monotonic() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    complete, problems = _folders_ok(out)
    failed = [line for line in stderr.splitlines() if line.startswith("failed: ")]
    named = {b: next((line for line in failed if f"/{b}:" in line), None) for b in bad}
    result = {
        "exit_code": proc.returncode,
        "complete": complete,
        "failed_lines": len(failed),
        "reasons": {b: (line or "").split(f"{b}: ", 1)[-1] for b, line in named.items()},
        "traceback": "Traceback" in stderr,
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(max(peak_kib, before) / 2**20, 2),
        "problems": problems,
    }
    result["ok"] = (
        proc.returncode == 1 and complete == len(valid) and len(failed) == len(bad)
        and all(named.values()) and not result["traceback"] and not problems
        and result["peak_rss_gib"] < 3.0
    )  # fmt: skip
    if not result["ok"]:
        result["stderr"] = stderr[-2000:]
    return result


def check_concurrent(work: Path, repeats: int) -> dict:
    src = work / "conc"
    for i in range(8):
        src.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_noise(60 + 4 * i, 80, i)).save(src / f"{i}.png")
    listing = work / "list.txt"
    listing.write_text("\n".join(str(src / f"{i}.png") for i in (7, 5, 3, 1, 0)) + "\n")
    common = ["--min-size", "64", "--max-size", "107", "--workers", "1", "--no-overview"]
    rounds = []
    for r in range(repeats):
        out = work / f"conc_out_{r}"
        runs = [[str(src)], [str(src / "[2-7].png")], ["--from-list", str(listing)]]
        procs = [_extract([*args, "-o", str(out), *common], work / "home") for args in runs]
        results = [(p.wait(600), *p.communicate()) for p in procs]
        complete, problems = _folders_ok(out)
        spurious = [line for _, _, err in results for line in err.splitlines() if "failed" in line]
        ok = all(rc == 0 for rc, _, _ in results) and complete == 8 and not problems
        rounds.append({
            "exit_codes": [rc for rc, _, _ in results], "complete": complete,
            "spurious_failures": spurious, "problems": problems, "ok": ok and not spurious,
        })  # fmt: skip
    return {"rounds": rounds, "ok": all(r["ok"] for r in rounds)}


def check_full_disk(work: Path) -> dict:
    if os.geteuid() != 0:
        return {"ok": None, "why": "needs root to mount a 10 MiB tmpfs"}
    src, mnt = work / "disk_in", work / "disk"
    src.mkdir()
    mnt.mkdir()
    for i in range(40):
        Image.fromarray(_noise(96, 128, i)).save(src / f"{i:02d}.png")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mnt)], check=True)
    try:
        args = [str(src), "-o", str(mnt / "out"), "--force", "--min-size", "128", "--max-size",
                "213", "--workers", "1"]  # fmt: skip
        proc = _extract(args, work / "home")
        stdout, stderr = proc.communicate(timeout=600)
        # the lines that report trouble (the estimate, notes and progress lines are not counted)
        lines = [
            line for line in stderr.splitlines()
            if "disk full" in line or line.startswith(("failed:", "Error")) or "Traceback" in line
        ]  # fmt: skip
        complete_before = {
            p.parent.name: p.stat().st_mtime_ns for p in (mnt / "out").rglob("manifest.json")
        }
        first = {
            "exit_code": proc.returncode,
            "stderr_lines": lines,
            "complete": len(complete_before),
        }
        subprocess.run(["mount", "-o", "remount,size=400m", str(mnt)], check=True)  # free space
        proc = _extract(args, work / "home")
        stdout2, stderr2 = proc.communicate(timeout=900)
        complete, problems = _folders_ok(mnt / "out")
        redone = [
            n for n, t in complete_before.items()
            if (mnt / "out" / n / "manifest.json").stat().st_mtime_ns != t
        ]  # fmt: skip
        second = {"exit_code": proc.returncode, "summary": stdout2.strip().splitlines()[-1:],
                  "complete": complete, "redone": redone, "problems": problems}  # fmt: skip
        ok = (
            first["exit_code"] == 1 and len(lines) == 1 and "disk full:" in lines[0]
            and "rerun the same command after freeing space" in lines[0]
            and 0 < first["complete"] < 40 and second["exit_code"] == 0 and complete == 40
            and not redone and not problems
            and f"skipped {len(complete_before)}" in stdout2
        )  # fmt: skip
        return {"first": first, "after_freeing": second, "ok": ok}
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-disk", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fpncli-hostile-"))
    try:
        report = {"odd_inputs": check_odd_inputs(work)}
        print("odd inputs:", json.dumps(report["odd_inputs"], ensure_ascii=False), flush=True)
        report["concurrent"] = check_concurrent(work, args.repeats)
        print("concurrent:", json.dumps(report["concurrent"]), flush=True)
        if not args.skip_disk:
            report["full_disk"] = check_full_disk(work)
            print("full disk:", json.dumps(report["full_disk"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    verdicts = {k: v.get("ok") for k, v in report.items()}
    print("verdicts:", json.dumps(verdicts))
    return 0 if all(v is not False for v in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
