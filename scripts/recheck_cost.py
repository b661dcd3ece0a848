"""What folder mode's re-check of concurrent runs' work costs per image (issue 8's follow-up).

A run asks ``FolderSink.complete`` just before decoding an image (its run key, then the manifest)
and ``FolderSink.completed_since`` just before the image's batch goes to the model (one stat of
the manifest, read only when it changed). Prints microseconds per call, averaged over N calls.

    PYTHONPATH=$PWD python scripts/recheck_cost.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import fpncli
from fpncli.io.outputs import OutputOptions
from fpncli.run.folder_sink import FolderSink
from fpncli.run.pipeline import Job, RunOptions, run_jobs, weights_meta


def per_call_us(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main(n: int) -> None:
    model = fpncli.load_backbone("random")
    tmp = Path(tempfile.mkdtemp(prefix="fpncli-recheck-"))
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(tmp / "a.png")
    options = RunOptions(output=OutputOptions(min_size=64, max_size=96))
    done = Job(tmp / "a.png", tmp / "out" / "a")
    absent = Job(tmp / "a.png", tmp / "out" / "b")
    assert run_jobs([done], model, options).done == 1
    sink, weights = FolderSink(), weights_meta(model)
    print(f"before decoding, no folder yet: "
          f"{per_call_us(lambda: sink.complete(absent, options, weights), n):.0f} us")  # fmt: skip
    print(f"before decoding, a complete folder: "
          f"{per_call_us(lambda: sink.complete(done, options, weights), n):.0f} us")  # fmt: skip
    total = 0.0
    for _ in range(n):
        sink.complete(absent, options, weights)
        start = time.perf_counter()
        sink.completed_since(absent, options, weights)
        total += time.perf_counter() - start
    print(f"before the model, manifest unchanged: {total / n * 1e6:.1f} us")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
