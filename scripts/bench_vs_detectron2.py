"""fpncli against Detectron2 on this machine, same weights and inputs, alternated runs (not CI).

Needs an environment where ``detectron2`` (its Python source) imports next to fpncli. Two
figures, each the ratio of medians measured in one run, Detectron2 and fpncli alternating:

1. Backbone forward, float32, one ``(1, 3, H, W)`` input: Detectron2 time / fpncli time
   (target >= 1.2).
2. A folder job, ``.npy`` only: Detectron2's DefaultPredictor preprocessing (``read_image``,
   ``ResizeShortestEdge``, normalization, ``ImageList`` padding), its backbone, and ``np.save``
   of P2-P6, versus ``fpncli`` extracting the same folder with ``--no-heatmaps --no-overview``:
   fpncli time / Detectron2 time (issue 9's target: <= 0.7). Model loading is outside both
   timings.

With ``--compile`` fpncli's side also runs ``extract --compile`` (torch.compile with inductor's
freezing on the CPU); the compilation (once per padded shape) happens in an untimed warm-up
pass over the folder, as it is paid once in a long folder job.

    PYTHONPATH=/path/to/detectron2 python scripts/bench_vs_detectron2.py --images 8 --rounds 3

``--device cuda`` times the forward only (issue 9's stretch: fpncli's fp32 >= 3x Detectron2's
fp32 eager model on the same card), a ``(--batch, 3, H, W)`` batch on the GPU, images per
second over ``--seconds`` per side after warm-up, alternated ``--repeats`` times: Detectron2 as
a user runs it (torch's defaults: cuDNN's convolutions in TF32, ``cudnn.benchmark`` off as in
its config), Detectron2 with TF32 off (true fp32, as fpncli's fp32 is), and fpncli's fp32 run
(``--compile``: compiled). The speed-ups are against both Detectron2 rows.

    PYTHONPATH=/path/to/detectron2 python scripts/bench_vs_detectron2.py --device cuda \
        --height 800 --width 1344 --batch 16 --images 0
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import detectron2_oracle
import numpy as np
import torch

import fpncli
from fpncli.io.outputs import OutputOptions
from fpncli.run.pipeline import Job, RunOptions, run_jobs
from fpncli.weights.synthetic import seeded_state_dict, write_detectron2_pkl

LEVELS = ("p2", "p3", "p4", "p5", "p6")


def detectron2_job(backbone, cfg, images: list[Path], out: Path) -> None:
    """What a Detectron2 user writes: DefaultPredictor's preprocessing, backbone, np.save."""
    for path in images:
        batch = detectron2_oracle.preprocess(
            path, cfg, backbone, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
        )
        with torch.no_grad():
            features = backbone(batch)
        folder = out / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        for name in LEVELS:
            np.save(folder / f"{name}.npy", features[name].numpy())


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def images_per_s(call, batch: int, seconds: float) -> float:
    """``call()`` repeated for ``seconds`` on the GPU (after one untimed call): images/s."""
    call()
    torch.cuda.synchronize()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        count += 1
        torch.cuda.synchronize()
    return count * batch / (time.perf_counter() - start)


def cuda_forward(theirs, ours, args) -> None:
    """Detectron2's fp32 backbone (TF32 convolutions as torch's defaults, then off) against
    fpncli's fp32 run, on one GPU: medians of alternated rates."""
    from fpncli.api import run_backbone
    from fpncli.run.device import model_for_run, run_settings

    device = torch.device("cuda", 0)
    theirs, ours = theirs.to(device), ours.to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.height, args.width, generator=g).to(device)
    rates = {"d2 tf32": [], "d2 fp32": [], "fpncli": []}
    cudnn = torch.backends.cudnn
    saved = cudnn.allow_tf32, cudnn.benchmark
    with torch.inference_mode():
        for _ in range(args.repeats):
            try:
                cudnn.benchmark = False  # Detectron2's CUDNN_BENCHMARK default
                for name, tf32 in (("d2 tf32", True), ("d2 fp32", False)):
                    cudnn.allow_tf32 = tf32
                    rates[name].append(images_per_s(lambda: theirs(x), args.batch, args.seconds))
            finally:
                cudnn.allow_tf32, cudnn.benchmark = saved
            with run_settings(device, benchmark=True, compile=args.compile):
                run = model_for_run(ours, "fp32", compile=args.compile)

                def forward(model=run):
                    return run_backbone(model, x, precision="fp32")

                rates["fpncli"].append(images_per_s(forward, args.batch, args.seconds))
    med = {name: statistics.median(values) for name, values in rates.items()}
    ours_name = "fpncli fp32" + (" --compile" if args.compile else "")
    ratios = med["fpncli"] / med["d2 tf32"], med["fpncli"] / med["d2 fp32"]
    card = torch.cuda.get_device_name(device)
    print(f"forward on {card}, batch {args.batch} {args.height}x{args.width}, images/s (medians "
          f"of {args.repeats}): Detectron2 (TF32 convolutions, torch's default) "
          f"{med['d2 tf32']:.1f}, Detectron2 TF32 off {med['d2 fp32']:.1f}, "
          f"{ours_name} (TF32 off) {med['fpncli']:.1f}; speed-up {ratios[0]:.2f}x and "
          f"{ratios[1]:.2f}x")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--repeats", type=int, default=5, help="alternated forward pairs")
    parser.add_argument("--images", type=int, default=8, help="images in the folder job")
    parser.add_argument("--rounds", type=int, default=3, help="alternated folder-job pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="fpncli with --compile")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=16, help="images per forward (cuda)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per rate (cuda)")
    args = parser.parse_args()
    for name in ("repeats", "rounds", "batch", "threads", "height", "width"):
        if getattr(args, name) < 1:  # medians of none, an empty batch
            parser.error(f"--{name} {getattr(args, name)}: give 1 or more")
    if args.images < 0 or not 0 < args.seconds < float("inf"):
        parser.error("--images takes 0 or more (0: the forward only), --seconds a time above 0")
    detectron2_oracle.require("bench_vs_detectron2.py")
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="fpncli-vs-d2-"))
    try:
        pkl = tmp / "seeded.pkl"
        write_detectron2_pkl(pkl, seeded_state_dict(0))
        theirs, cfg = detectron2_oracle.load_backbone(pkl)
        ours = fpncli.load_backbone(str(pkl))
        if args.device == "cuda":
            cuda_forward(theirs, ours, args)
            return 0

        x = torch.randn(1, 3, args.height, args.width, generator=torch.Generator().manual_seed(0))
        x_cl = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            theirs(x), ours(x_cl)  # warm-up
            d2_times, our_times = [], []
            for _ in range(args.repeats):
                d2_times.append(timed(lambda: theirs(x)))
                our_times.append(timed(lambda: ours(x_cl)))
        d2_med, our_med = statistics.median(d2_times), statistics.median(our_times)
        print(f"backbone forward {args.height}x{args.width} fp32, {args.threads} threads: "
              f"Detectron2 {d2_med:.3f} s, fpncli {our_med:.3f} s (medians of {args.repeats}), "
              f"speed-up {d2_med / our_med:.2f}x")  # fmt: skip

        if args.images == 0:
            return 0
        from PIL import Image

        sources = sorted(Path("samples").glob("*.[pj][np]g"))
        folder = tmp / "in"
        folder.mkdir()
        images = []
        for i in range(args.images):
            src = Image.open(sources[i % len(sources)]).convert("RGB")
            if i % 2:
                src = src.transpose(Image.FLIP_LEFT_RIGHT)
            path = folder / f"img{i:03d}.jpg"
            src.save(path, quality=92)
            images.append(path)
        output = OutputOptions(save_heatmaps=False, save_overview=False)
        options = RunOptions(output=output, workers=2, overwrite=True, force=True,
                             compile=args.compile, record_latest=False)  # fmt: skip
        if args.compile:  # untimed: compile once per padded shape
            run_jobs([Job(p, tmp / "warm" / p.stem) for p in images], ours, options)
            shutil.rmtree(tmp / "warm")
        d2_jobs, our_jobs = [], []
        for r in range(args.rounds):
            out_d2, out_ours = tmp / f"d2_{r}", tmp / f"ours_{r}"
            d2_jobs.append(timed(lambda o=out_d2: detectron2_job(theirs, cfg, images, o)))
            jobs = [Job(p, out_ours / p.stem) for p in images]
            our_jobs.append(timed(lambda j=jobs: run_jobs(j, ours, options)))
            shutil.rmtree(out_d2), shutil.rmtree(out_ours)
        d2_med, our_med = statistics.median(d2_jobs), statistics.median(our_jobs)
        print(
            f"folder job, {args.images} photos, .npy only: Detectron2 {d2_med:.2f} s, fpncli"
            f"{' --compile' if args.compile else ''} "
            f"{our_med:.2f} s (medians of {args.rounds}), ratio {our_med / d2_med:.2f}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
