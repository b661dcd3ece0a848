"""The notebook-facing functions (``fpncli.api``): what they hand back can be used as any tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fpncli
from fpncli.api import model_input, run_backbone


@pytest.mark.parametrize("channels_last", [False, True])
def test_features_are_ordinary_tensors_a_probe_can_train_on(tmp_path, channels_last):
    """Features of ``extract_features`` / ``extract`` / ``run_backbone`` (the pyramid and the
    bottom-up stages) are not inference tensors: they can be changed in place and fed to a
    module being trained. (Made under ``torch.inference_mode``, the CPU's float32 NCHW levels
    came back as they were, and both raised.)"""
    model = fpncli.load_backbone("random", channels_last=channels_last)
    model.keep_bottom_up = ("res4",)
    photo = tmp_path / "a.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 48, 3), np.uint8)).save(photo)
    features = fpncli.extract_features(photo, model, min_size=64, max_size=96)
    batch = model_input(np.zeros((64, 96, 3), np.uint8), model.weights_info.input, "cpu")
    for name, level in [*features.items(), *run_backbone(model, batch).items()]:
        assert not level.is_inference() and not level.requires_grad, name
    probe = torch.nn.Conv2d(256, 2, 1)
    loss = probe(features["p3"]).square().mean()
    loss.backward()  # autograd may save the features
    assert probe.weight.grad is not None
    features["p2"] -= features["p2"].mean()  # an in-place update
    features["res4"][0, 0, 0, 0] = 0.0
    assert features["res4"][0, 0, 0, 0] == 0.0
