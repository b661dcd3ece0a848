"""Parity with the real Detectron2 and torchvision, kept in CI through recorded answers.

``scripts/parity.py`` loaded seeded weights (seed 0, ``fpncli.weights.synthetic``) into Detectron2's
``build_resnet_fpn_backbone`` (through its own ``DetectionCheckpointer`` and DefaultPredictor
preprocessing) and into torchvision's ``fasterrcnn_resnet50_fpn``, ran them on
``samples/coffee.png`` resized to 160:267, and recorded slices and statistics per level in
``tests/golden/``. Here fpncli loads the same files and must match within
``1e-4 * max|theirs|``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fpncli
from fpncli.weights.synthetic import seeded_state_dict, write_detectron2_pkl, write_torchvision_pth

GOLDEN = Path(__file__).parent / "golden"
SAMPLES = Path(__file__).parent.parent / "samples"


@pytest.fixture(scope="module")
def state():
    return seeded_state_dict(0)


def _check(features: dict[str, torch.Tensor], golden: dict) -> None:
    for name, ref in golden["levels"].items():
        t = features[name][0].double()
        h, w = t.shape[-2:]
        assert list(features[name].shape) == ref["shape"], name
        tol = 1e-4 * ref["abs_max"]
        checks = {
            "corner": (t[:4, :3, :3], ref["corner"]),
            "centre": (t[100:104, h // 2, w // 2 - 1 : w // 2 + 2], ref["centre"]),
            "channel_means": (t.mean(dim=(1, 2))[:16], ref["channel_means"]),
        }
        for what, (ours, theirs) in checks.items():
            diff = (ours - torch.tensor(theirs, dtype=torch.float64)).abs().max().item()
            assert diff <= tol, f"{name} {what}: {diff} > {tol}"
        assert abs(t.mean().item() - ref["mean"]) <= tol
        assert abs(t.abs().max().item() - ref["abs_max"]) <= tol
        assert t.std().item() == pytest.approx(ref["std"], rel=1e-4)


@pytest.mark.parametrize("fold_bn", [True, False])
def test_matches_detectron2(tmp_path, state, fold_bn):
    golden = json.loads((GOLDEN / "detectron2_seed0.json").read_text())
    path = tmp_path / "seeded.pkl"
    write_detectron2_pkl(path, state)
    model = fpncli.load_backbone(str(path), fold_bn=fold_bn)
    assert model.weights_info.input.color_order == "BGR"
    features = fpncli.extract_features(
        SAMPLES / golden["image"], model, min_size=golden["min_size"], max_size=golden["max_size"]
    )
    _check(features, golden)


@pytest.mark.parametrize("legacy_fpn", [False, True])
def test_matches_torchvision(tmp_path, state, legacy_fpn):
    golden = json.loads((GOLDEN / "torchvision_seed0.json").read_text())
    path = tmp_path / "seeded_torchvision.pth"
    write_torchvision_pth(path, state, legacy_fpn=legacy_fpn)
    model = fpncli.load_backbone(str(path))
    assert model.weights_info.input.color_order == "RGB"
    assert model.weights_info.arch["stride_in_1x1"] is False
    features = fpncli.extract_features(
        SAMPLES / golden["image"], model, min_size=golden["min_size"], max_size=golden["max_size"]
    )
    _check(features, golden)


def test_a_channel_order_mistake_would_be_caught(tmp_path, state):
    """The golden check is sharp enough to see a missing (or doubled) RGB->BGR swap."""
    golden = json.loads((GOLDEN / "detectron2_seed0.json").read_text())
    path = tmp_path / "seeded.pkl"
    write_detectron2_pkl(path, state)
    model = fpncli.load_backbone(str(path))
    image = np.asarray(__import__("PIL.Image").Image.open(SAMPLES / golden["image"]).convert("RGB"))
    swapped = np.ascontiguousarray(image[:, :, ::-1])  # as if the swap happened twice
    features = fpncli.extract_features(
        swapped, model, min_size=golden["min_size"], max_size=golden["max_size"]
    )
    with pytest.raises(AssertionError):
        _check(features, golden)
