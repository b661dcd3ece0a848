"""How far bf16 autocast moves P2-P6 from fp32 on the CPU (the figure quoted in the README).

    python scripts/bf16_error.py [--weights NAME|PATH|random] [IMAGE ...]

IMAGE defaults to this checkout's samples/chelsea.png and samples/coffee.png (from any folder).
Runs on any CPU (slowly without AVX512-BF16/AMX: this measures the error, not the speed).
Prints, per image and level, max|bf16 - fp32| / max|fp32| and mean|bf16 - fp32| / mean|fp32|.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fpncli.api import load_backbone, run_backbone
from fpncli.io.image_load import load_image
from fpncli.io.preprocess import prepare

SAMPLES = Path(__file__).resolve().parent.parent / "samples"  # not the cwd's: run from anywhere


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "images", nargs="*", default=[str(SAMPLES / "chelsea.png"), str(SAMPLES / "coffee.png")]
    )
    parser.add_argument("--weights", default="random")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    try:  # every image before the weights (perhaps a download): a typo fails at once
        images = {name: load_image(name).rgb for name in args.images}
        model = load_backbone(args.weights)
    except (OSError, ValueError) as e:  # no such file, not an image, unknown weights: one line
        sys.exit(f"bf16_error.py: {e}")
    for name, rgb in images.items():
        prepared = prepare(rgb, model.weights_info.input)
        batch = torch.from_numpy(prepared.tensor)[None]
        reference = run_backbone(model, batch, precision="fp32")
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            approx = model(batch.contiguous(memory_format=torch.channels_last))
        for level, ref in reference.items():
            ref, low = ref.float(), approx[level].float()
            diff = (ref - low).abs()
            print(
                f"{name} {level}: max rel {(diff.max() / ref.abs().max()).item():.2e}, "
                f"mean rel {(diff.mean() / ref.abs().mean()).item():.2e}"
            )


if __name__ == "__main__":
    main()
