"""Numerical parity of fpncli against the real Detectron2 and torchvision (not run by CI).

Needs an environment where ``detectron2`` (its Python source is enough for the backbone) and
``torchvision`` import, next to fpncli. It writes seeded random weights in each real format:

- a Detectron2 model-zoo ``.pkl`` (``{"model": {"backbone.bottom_up.*": ndarray, ...},
  "__author__": ...}``), loaded by Detectron2's own ``DetectionCheckpointer`` into
  ``build_resnet_fpn_backbone``, and by ``fpncli.load_backbone``;
- a torchvision Faster R-CNN state dict (``backbone.body.*``, ``backbone.fpn.*``), loaded by
  torchvision's ``fasterrcnn_resnet50_fpn`` and by fpncli,

runs both on real photos (Detectron2: ``read_image`` + ``ResizeShortestEdge`` + normalization +
``ImageList`` padding, i.e. DefaultPredictor's preprocessing; torchvision: the same normalized,
padded tensor fpncli prepares for RGB weights), and prints ``max|ours - theirs| / max|theirs|`` per
level, for ``fpncli.extract_features``, the ``fpncli extract`` command and the pipeline resizing on
the device as on CUDA (``device rsz``, run here on the CPU). With ``--golden DIR`` it also writes
the reference answers for a small input as JSON (slices and statistics per level), which
``tests/test_parity_golden.py`` checks in CI without Detectron2 or torchvision.

    PYTHONPATH=/path/to/detectron2 python scripts/parity.py samples/*.png samples/*.jpg
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import detectron2_oracle
import numpy as np
import torch

import fpncli
from fpncli.io.image_load import load_image
from fpncli.io.preprocess import prepare
from fpncli.weights.registry import TORCHVISION_INPUT
from fpncli.weights.synthetic import seeded_state_dict, write_detectron2_pkl, write_torchvision_pth

LEVELS = ("p2", "p3", "p4", "p5", "p6")
ARCH_KWARGS = {
    "r50": {},
    "r101": {"depth": 101},
    "x101": {"depth": 101, "num_groups": 32, "width_per_group": 8, "stride_in_1x1": False},
}


def run_detectron2(pkl: Path, image_path: Path, min_size: int, max_size: int, arch: str = "r50"):
    backbone, cfg = detectron2_oracle.load_backbone(pkl, arch)
    batch = detectron2_oracle.preprocess(image_path, cfg, backbone, min_size, max_size)
    with torch.no_grad():
        return backbone(batch)


def run_torchvision(pth: Path, batch: torch.Tensor):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    saved = torch.load(pth, weights_only=True)
    backbone = {k: v for k, v in saved.items() if k.startswith("backbone.")}  # heads are short
    result = model.load_state_dict(backbone, strict=False)
    # Only the BatchNorm counters (and the heads, not loaded) may be missing.
    missing = [k for k in result.missing_keys if k.startswith("backbone.")]
    assert all(k.endswith("num_batches_tracked") for k in missing), missing[:5]
    assert not result.unexpected_keys, result.unexpected_keys[:5]
    with torch.no_grad():
        out = model.backbone(batch)
    return dict(zip(LEVELS, (out["0"], out["1"], out["2"], out["3"], out["pool"])))


def extract_with_cli(image: Path, weights: Path, min_size: int, max_size: int, out: Path):
    """Run the real ``fpncli extract`` command and read back the .npy files it saved."""
    cmd = [sys.executable, "-m", "fpncli", "extract", str(image), "-o", str(out), "--weights",
           str(weights), "--min-size", str(min_size), "--max-size", str(max_size), "--device",
           "cpu", "--no-heatmaps", "--no-overview", "--overwrite"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    folder = out / image.stem
    return {k: torch.from_numpy(np.load(folder / f"{k}.npy")) for k in LEVELS}


def extract_resized_on_device(image: Path, model, min_size: int, max_size: int, out: Path):
    """The pipeline as it runs on CUDA, here on the CPU: the decoding thread hands over the image
    at its own size and ``fpncli.model.resize`` resizes it after the upload."""
    from fpncli.io.outputs import OutputOptions
    from fpncli.run.pipeline import Job, RunOptions, run_jobs

    output = OutputOptions(min_size=min_size, max_size=max_size, save_heatmaps=False,
                           save_overview=False)  # fmt: skip
    options = RunOptions(output=output, resize_on_device=True, overwrite=True, record_latest=False)
    summary = run_jobs([Job(image, out / image.stem)], model, options)
    assert summary.done == 1, summary.failed
    return {k: torch.from_numpy(np.load(out / image.stem / f"{k}.npy")) for k in LEVELS}


def relative_errors(ours: dict, theirs: dict) -> dict[str, float]:
    return {k: float((ours[k] - theirs[k]).abs().max() / theirs[k].abs().max()) for k in LEVELS}


def golden(features: dict[str, torch.Tensor]) -> dict:
    """A small, stable summary of each level: a corner slice, a centre slice and statistics."""
    out = {}
    for k in LEVELS:
        t = features[k][0].double()
        h, w = t.shape[-2:]
        out[k] = {
            "shape": list(features[k].shape),
            "corner": t[:4, :3, :3].tolist(),
            "centre": t[100:104, h // 2, w // 2 - 1 : w // 2 + 2].tolist(),
            "mean": float(t.mean()),
            "std": float(t.std()),
            "abs_max": float(t.abs().max()),
            "channel_means": t.mean(dim=(1, 2))[:16].tolist(),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", choices=sorted(ARCH_KWARGS), default="r50",
                        help="r101 and x101 are compared with Detectron2 only")  # fmt: skip
    parser.add_argument("--sizes", default="800:1333,480:800", help="min:max resize pairs")
    parser.add_argument("--golden", type=Path, default=None, help="write golden JSON here")
    parser.add_argument("--golden-image", type=Path, default=Path("samples/coffee.png"))
    parser.add_argument("--golden-size", default="160:267")
    args = parser.parse_args()
    if args.golden is not None and args.arch != "r50":
        parser.error("--golden records the R-50 answers: use it with --arch r50")
    detectron2_oracle.require("parity.py")
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="fpncli-parity-"))
    pkl, pth = tmp / "seeded.pkl", tmp / "seeded_torchvision.pth"
    state = seeded_state_dict(args.seed, **ARCH_KWARGS[args.arch])
    write_detectron2_pkl(pkl, state)
    if args.arch == "r50":
        write_torchvision_pth(pth, state)
    ours_d2 = fpncli.load_backbone(str(pkl), fold_bn=True)
    if args.arch == "r50":
        ours_tv = fpncli.load_backbone(str(pth), fold_bn=True)
        assert ours_tv.weights_info.input == TORCHVISION_INPUT

    worst = {"detectron2": 0.0, "fpncli extract": 0.0, "resize on device": 0.0}
    if args.arch == "r50":
        worst["torchvision"] = 0.0
    sizes = [tuple(int(n) for n in s.split(":")) for s in args.sizes.split(",")]
    for image_path in args.images:
        for min_size, max_size in sizes:
            theirs = run_detectron2(pkl, image_path, min_size, max_size, args.arch)
            ours = fpncli.extract_features(
                image_path, ours_d2, min_size=min_size, max_size=max_size
            )
            err = relative_errors(ours, theirs)
            worst["detectron2"] = max(worst["detectron2"], *err.values())
            shape = tuple(theirs["p2"].shape)
            print(f"detectron2  {image_path.name:<12} {min_size}:{max_size} p2{shape} "
                  + " ".join(f"{k}={v:.2e}" for k, v in err.items()))  # fmt: skip
            saved = extract_with_cli(image_path, pkl, min_size, max_size, tmp / "cli")
            err = relative_errors(saved, theirs)
            worst["fpncli extract"] = max(worst["fpncli extract"], *err.values())
            print(f"extract CLI {image_path.name:<12} {min_size}:{max_size} p2{shape} "
                  + " ".join(f"{k}={v:.2e}" for k, v in err.items()))  # fmt: skip
            on_device = extract_resized_on_device(image_path, ours_d2, min_size, max_size,
                                                  tmp / "device")  # fmt: skip
            err = relative_errors(on_device, theirs)
            worst["resize on device"] = max(worst["resize on device"], *err.values())
            print(f"device rsz  {image_path.name:<12} {min_size}:{max_size} p2{shape} "
                  + " ".join(f"{k}={v:.2e}" for k, v in err.items()))  # fmt: skip

            if args.arch != "r50":
                continue
            prepared = prepare(load_image(image_path).rgb, TORCHVISION_INPUT,
                               min_size=min_size, max_size=max_size)  # fmt: skip
            batch = torch.from_numpy(prepared.tensor)[None]
            theirs = run_torchvision(pth, batch)
            ours = fpncli.extract_features(
                image_path, ours_tv, min_size=min_size, max_size=max_size
            )
            err = relative_errors(ours, theirs)
            worst["torchvision"] = max(worst["torchvision"], *err.values())
            print(f"torchvision {image_path.name:<12} {min_size}:{max_size} p2{shape} "
                  + " ".join(f"{k}={v:.2e}" for k, v in err.items()))  # fmt: skip
    print("worst max|ours - theirs| / max|theirs|:", {k: f"{v:.2e}" for k, v in worst.items()})

    if args.golden is not None:
        args.golden.mkdir(parents=True, exist_ok=True)
        min_size, max_size = (int(n) for n in args.golden_size.split(":"))
        record = {"seed": args.seed, "image": args.golden_image.name,
                  "min_size": min_size, "max_size": max_size}  # fmt: skip
        d2 = run_detectron2(pkl, args.golden_image, min_size, max_size)
        (args.golden / "detectron2_seed0.json").write_text(
            json.dumps({**record, "levels": golden(d2)}, indent=1)
        )
        prepared = prepare(load_image(args.golden_image).rgb, TORCHVISION_INPUT,
                           min_size=min_size, max_size=max_size)  # fmt: skip
        tv = run_torchvision(pth, torch.from_numpy(prepared.tensor)[None])
        (args.golden / "torchvision_seed0.json").write_text(
            json.dumps({**record, "levels": golden(tv)}, indent=1)
        )
        print(f"golden values written to {args.golden}")
    return 0 if max(worst.values()) <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
