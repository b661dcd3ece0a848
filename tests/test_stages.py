"""``--levels stem,res2..res5``: Detectron2's bottom-up outputs saved and drawn beside P2-P6."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import fpncli
from fpncli.cli import cli
from fpncli.model.fpn import OUTPUT_CHANNELS, OUTPUT_STRIDES, STAGES

# Detectron2's ResNet.output_shape() for R-50 (stem: BasicStem.out_channels / stride).
DETECTRON2 = {"stem": (64, 4), "res2": (256, 4), "res3": (512, 8), "res4": (1024, 16),
              "res5": (2048, 32)}  # fmt: skip


def test_stage_table_is_detectron2s():
    assert {n: (OUTPUT_CHANNELS[n], OUTPUT_STRIDES[n]) for n in STAGES} == DETECTRON2
    model = fpncli.load_backbone("random", fold_bn=False, channels_last=False)
    shape = model.bottom_up.output_shape()
    assert {n: shape[n] for n in shape} == {n: DETECTRON2[n] for n in shape}
    assert (model.bottom_up.stem.out_channels, model.bottom_up.stem.stride) == DETECTRON2["stem"]


def test_forward_returns_stages_without_changing_the_pyramid():
    model = fpncli.load_backbone("random")
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = model(x)
        model.keep_bottom_up = STAGES
        both = model(x)
        stem = model.bottom_up.stem(x)
        res2 = model.bottom_up.res2(stem)
    assert list(both) == [*STAGES, "p2", "p3", "p4", "p5", "p6"]
    for name, (channels, stride) in DETECTRON2.items():
        assert tuple(both[name].shape) == (1, channels, 64 // stride, 96 // stride), name
    torch.testing.assert_close(both["stem"], stem, rtol=0, atol=0)
    torch.testing.assert_close(both["res2"], res2, rtol=0, atol=0)
    for name in plain:
        torch.testing.assert_close(both[name], plain[name], rtol=0, atol=0)


def test_extract_and_show_stages(tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 60, 3), np.uint8)).save(photo)
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["extract", str(photo), "-o", str(out), "--weights", "random", "--min-size", "64",
            "--levels", "p3,res4,stem,res5"]  # fmt: skip
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = out / "photo"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert list(manifest["levels"]) == ["stem", "res4", "res5", "p3"]  # bottom-up first
    ex = fpncli.load_extraction(folder)
    for name in ("stem", "res4", "res5"):
        channels, stride = DETECTRON2[name]
        meta = manifest["levels"][name]
        assert meta["stride"] == stride and meta["shape"] == [
            1,
            channels,
            64 // stride,
            96 // stride,
        ]
        assert ex.levels[name].shape[1] == channels and (folder / f"{name}.png").is_file()
    assert (ex.levels["stem"] >= 0).all()  # after ReLU and max-pool
    show = runner.invoke(cli, ["show", str(folder), "--level", "res5"], catch_exceptions=False)
    assert show.exit_code == 0 and (folder / "show_res5.png").is_file()
    report = runner.invoke(cli, ["report", str(out)], catch_exceptions=False)
    assert report.exit_code == 0
    html = (out / "report.html").read_text()
    assert html.index("<th>stem</th>") < html.index("<th>res5</th>") < html.index("<th>p3</th>")


@pytest.mark.parametrize("levels", ["res6", "stem,p9"])
def test_unknown_stage(levels, tmp_path):
    result = CliRunner().invoke(cli, ["extract", "x.png", "--levels", levels])
    assert result.exit_code == 2 and "stem, res2..res5" in result.output
