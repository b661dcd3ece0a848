"""Reading checkpoints in every real format, strictly, and refusing anything that is code."""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import pickletools
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import fpncli
from fpncli.model.fpn import build_resnet_fpn_backbone
from fpncli.weights.arch import build_backbone, check_arch, infer_arch, load_state_dict_strict
from fpncli.weights.checkpoint import UnsafeCheckpointError, read_checkpoint
from fpncli.weights.layouts import save_fpncli_checkpoint
from fpncli.weights.registry import DETECTRON2_INPUT, TORCHVISION_INPUT
from fpncli.weights.synthetic import (
    seeded_state_dict,
    write_detectron2_pkl,
    write_detectron2_pth,
    write_torchvision_pth,
)


@pytest.fixture(scope="module")
def state():
    return seeded_state_dict(3)


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("protocol", [2, 4])
def test_detectron2_pkl(tmp_path, state, protocol):
    path = tmp_path / "model_final.pkl"
    write_detectron2_pkl(path, state, protocol=protocol)
    ckpt = read_checkpoint(path)
    assert ckpt.format == "detectron2" and ckpt.skipped == 5
    assert ckpt.arch == {"depth": 50, "num_groups": 1, "width_per_group": 64, "stride_in_1x1": True}
    assert ckpt.input == DETECTRON2_INPUT
    _same(ckpt.state_dict, state)
    load_state_dict_strict(build_resnet_fpn_backbone(), ckpt.state_dict)


def test_detectron2_pth(tmp_path, state):
    path = tmp_path / "model_0089999.pth"
    write_detectron2_pth(path, state)
    ckpt = read_checkpoint(path)
    assert ckpt.format == "detectron2" and ckpt.skipped == 5
    _same(ckpt.state_dict, state)


@pytest.mark.parametrize("legacy_fpn", [False, True])
def test_torchvision_state_dict(tmp_path, state, legacy_fpn):
    path = tmp_path / "fasterrcnn_resnet50_fpn_coco.pth"
    saved = write_torchvision_pth(path, state, legacy_fpn=legacy_fpn)
    assert "backbone.body.layer1.0.downsample.1.running_var" in saved
    assert "backbone.body.layer4.2.bn3.weight" in saved
    fpn_key = (
        "backbone.fpn.inner_blocks.0.weight"
        if legacy_fpn
        else "backbone.fpn.inner_blocks.0.0.weight"
    )
    assert fpn_key in saved
    ckpt = read_checkpoint(path)
    assert ckpt.format == "torchvision" and ckpt.skipped == 4
    assert ckpt.arch["stride_in_1x1"] is False and ckpt.input == TORCHVISION_INPUT
    _same(ckpt.state_dict, state)


def test_batchnorm_counters_and_ddps_module_prefix_are_dropped(tmp_path, state):
    """A torchvision file saved from a model with plain BatchNorms holds num_batches_tracked
    counters (refused as 53 unexpected keys: the torchvision renames matched them first); a
    model saved from inside DistributedDataParallel has every key under 'module.' (refused as
    no backbone), which Detectron2's checkpointer strips."""
    path = tmp_path / "tv.pth"
    saved = write_torchvision_pth(path, state)
    counters = [k.rsplit(".", 1)[0] + ".num_batches_tracked" for k in saved
                if k.endswith("running_var")]  # fmt: skip
    assert "backbone.body.layer1.0.downsample.1.num_batches_tracked" in counters
    torch.save({**saved, **dict.fromkeys(counters, torch.tensor(7))}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.format == "torchvision" and ckpt.skipped == 4
    _same(ckpt.state_dict, state)
    ddp = tmp_path / "ddp.pth"
    write_detectron2_pth(ddp, state)
    model = torch.load(ddp, weights_only=True)["model"]
    torch.save({"model": {f"module.{k}": v for k, v in model.items()}}, ddp)
    ckpt = read_checkpoint(ddp)
    assert ckpt.format == "detectron2" and ckpt.skipped == 5
    _same(ckpt.state_dict, state)


def test_a_truncated_pth_is_damaged_not_unsafe(tmp_path, state):
    """Cut before its zip directory, it was read as a pickle and refused as one 'with
    persistent ids' (UnsafeCheckpointError: as if it tried to run code)."""
    path = tmp_path / "cut.pth"
    write_detectron2_pth(path, state)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="a zip archive .torch.save. without its end") as e:
        read_checkpoint(path)
    assert not isinstance(e.value, UnsafeCheckpointError)


def test_a_folded_model_is_not_saved_as_a_file_that_would_not_load(tmp_path, state):
    model = fpncli.load_backbone("random")  # its FrozenBNs folded into the convolutions
    with pytest.raises(ValueError, match="not saved: checkpoint does not match .*folded"):
        save_fpncli_checkpoint(tmp_path / "f.pth", model, {"depth": 50}, DETECTRON2_INPUT)
    assert not (tmp_path / "f.pth").exists()


def test_fpncli_format_round_trip(tmp_path, state):
    model = build_resnet_fpn_backbone(stride_in_1x1=False)
    model.load_state_dict(state)
    path = tmp_path / "mine.pth"
    save_fpncli_checkpoint(path, model, {"depth": 50, "stride_in_1x1": False}, TORCHVISION_INPUT)
    ckpt = read_checkpoint(path)
    assert ckpt.format == "fpncli" and ckpt.arch == {"depth": 50, "stride_in_1x1": False}
    assert ckpt.input == TORCHVISION_INPUT
    _same(ckpt.state_dict, state)


def test_strict_errors_list_the_keys(state):
    model = build_resnet_fpn_backbone()
    broken = dict(state)
    del broken["bottom_up.res3.1.conv2.weight"]
    broken["bottom_up.res2.0.conv4.weight"] = torch.zeros(1)
    broken["fpn_lateral3.weight"] = torch.zeros(256, 511, 1, 1)
    with pytest.raises(ValueError) as info:
        load_state_dict_strict(model, broken)
    message = str(info.value)
    assert "missing keys: bottom_up.res3.1.conv2.weight" in message
    assert "unexpected keys: bottom_up.res2.0.conv4.weight" in message
    assert "mis-shaped keys: fpn_lateral3.weight (256, 511, 1, 1) != (256, 512, 1, 1)" in message


def test_unexpected_key_inside_the_backbone_of_a_file(tmp_path, state):
    """Refused when the file is read (its names are compared before anything is converted)."""
    path = tmp_path / "extra.pkl"
    model = {f"backbone.{k}": v.numpy() for k, v in state.items()}
    model["backbone.bottom_up.res2.0.conv4.weight"] = np.zeros((1,), np.float32)
    with open(path, "wb") as f:
        pickle.dump({"model": model}, f)
    with pytest.raises(ValueError, match=r"extra\.pkl: checkpoint does not match the backbone: "
                       "unexpected keys: bottom_up.res2.0.conv4.weight"):  # fmt: skip
        read_checkpoint(path)


def test_a_trained_p6_is_refused_not_dropped(tmp_path, state):
    """Detectron2's LastLevelP6 / P6P7 (``backbone.top_block.*``, a P6 made by a convolution)
    was skipped as a non-backbone key, and P6 computed by max-pool: a different model. So is
    torchvision's (``backbone.fpn.extra_blocks.*``); any other unknown ``backbone.*`` key is
    refused too, and only the heads are skipped."""
    p6 = {"p6.weight": np.zeros((256, 256, 3, 3), np.float32), "p6.bias": np.zeros(256, np.float32)}
    model = {f"backbone.{k}": v.numpy() for k, v in state.items()}
    model.update({f"backbone.top_block.{k}": v for k, v in p6.items()})
    model["roi_heads.box_head.fc1.weight"] = np.zeros((4, 4), np.float32)  # a head: skipped
    with open(tmp_path / "p6conv.pkl", "wb") as f:
        pickle.dump({"model": model}, f)
    with pytest.raises(ValueError) as info:
        read_checkpoint(tmp_path / "p6conv.pkl")
    assert str(info.value) == (
        f"{tmp_path / 'p6conv.pkl'}: backbone.top_block.p6.weight: a P6 made by a convolution "
        "(RetinaNet's LastLevelP6P7?) is not the max-pool P6 this backbone has (2 backbone "
        "key(s) it has no place for): refused"
    )
    saved = write_torchvision_pth(tmp_path / "tv.pth", state)
    saved.update({f"backbone.fpn.extra_blocks.{k}": torch.from_numpy(v) for k, v in p6.items()})
    torch.save(saved, tmp_path / "tv.pth")
    with pytest.raises(
        ValueError,
        match=r"tv\.pth: backbone\.fpn\.extra_blocks\.p6\.weight: a P6 "
        r"made by a convolution .* \(2 backbone key\(s\) it has no place for\)",
    ):
        read_checkpoint(tmp_path / "tv.pth")
    del model["backbone.top_block.p6.weight"], model["backbone.top_block.p6.bias"]
    model["backbone.extra.weight"] = np.zeros(4, np.float32)
    with open(tmp_path / "extra.pkl", "wb") as f:
        pickle.dump({"model": model}, f)
    with pytest.raises(ValueError, match=r"extra\.pkl: unexpected backbone keys in detectron2 "
                       r"checkpoint: backbone\.extra\.weight$"):  # fmt: skip
        read_checkpoint(tmp_path / "extra.pkl")
    del model["backbone.extra.weight"]
    with open(tmp_path / "heads.pkl", "wb") as f:
        pickle.dump({"model": model}, f)
    assert read_checkpoint(tmp_path / "heads.pkl").skipped == 1


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalExploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize("exploit", [_Exploit, _EvalExploit])
def test_malicious_pkl_is_refused_and_nothing_runs(tmp_path, state, exploit):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"backbone.x": exploit(marker)}}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        read_checkpoint(path)
    assert not marker.exists()


def test_malicious_object_array_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil_array.pkl"
    array = np.empty(1, dtype=object)
    array[0] = _Exploit(marker)
    with open(path, "wb") as f:
        pickle.dump({"model": {"backbone.bottom_up.stem.conv1.weight": array}}, f)
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(path)
    assert not marker.exists()


class _FractionExploit:
    def __reduce__(self):
        from fractions import Fraction  # a global torch neither allows nor blocks

        return (Fraction, (1, 3))


@pytest.mark.parametrize(
    "exploit, refused",
    [(_Exploit, r"unsupported GLOBAL (posix|os)\.system whose module (posix|os) is blocked\.\)$"),
     (lambda marker: _FractionExploit(),
      r"Unsupported global: GLOBAL fractions\.Fraction was not an allowed global by default\.\)$")],
)  # fmt: skip
def test_malicious_pth_is_refused_and_nothing_runs(tmp_path, exploit, refused):
    """The refusal names the global torch refused, where it gave torch's last line, a link to
    its documentation."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"backbone.x": exploit(marker)}}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused") as info:
        read_checkpoint(path)
    assert not marker.exists()
    message = str(info.value)
    assert re.search(refused, message) and "\n" not in message, message
    assert "documentation" not in message and "weights_only` set to `False" not in message


@pytest.mark.parametrize("content", [b"", b"\x00garbage not a pickle", b"PK\x03\x04broken zip"])
def test_garbage_files_give_a_clean_error(tmp_path, content):
    path = tmp_path / "weights.pkl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a readable"):
        read_checkpoint(path)


def test_not_a_backbone(tmp_path):
    path = tmp_path / "other.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"head.weight": np.zeros(3, np.float32)}}, f)
    with pytest.raises(ValueError, match="no ResNet-FPN backbone found") as e:
        read_checkpoint(path)
    assert str(e.value).startswith(f"{path}: ")  # which file, among the weights a user has
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pkl")


@pytest.mark.parametrize(
    "arch, expected",
    [
        ({"depth": 50}, (50, 1, 64)),
        ({"depth": 101}, (101, 1, 64)),
        ({"depth": 101, "num_groups": 32, "width_per_group": 8}, (101, 32, 8)),
    ],
)
def test_infer_arch(arch, expected):
    with torch.device("meta"):
        model = build_resnet_fpn_backbone(**arch)
    found = infer_arch(model.state_dict())
    assert (found["depth"], found["num_groups"], found["width_per_group"]) == expected


# The architecture and the tensors are checked before any model is allocated -------------------


def _fpncli_file(path, **entries):
    obj = {
        "fpncli_format": 1,
        "model": {},
        "input": {"color_order": "BGR", "pixel_mean": [1, 2, 3], "pixel_std": [1, 1, 1]},
        "arch": {"depth": 50},
    }
    obj.update(entries)
    with open(path, "wb") as f:
        pickle.dump({k: v for k, v in obj.items() if v is not None}, f)
    return path


@pytest.mark.parametrize(
    "arch",
    [
        {"depth": 50, "num_groups": 1, "width_per_group": 64},
        {"depth": 101, "num_groups": 32, "width_per_group": 8},
        {"depth": 152, "num_groups": 32, "width_per_group": 8, "stride_in_1x1": False},
        {"depth": 101, "num_groups": 64, "width_per_group": 4},
        {"depth": 50, "width_per_group": 128, "res5_dilation": 1, "out_channels": 256},
    ],
)
def test_check_arch_accepts_the_model_zoo(arch):
    assert check_arch(arch) == arch


@pytest.mark.parametrize(
    "arch, message",
    [
        ({"depth": 50, "bogus": 1}, "unknown architecture key 'bogus'"),
        ({"depth": 34}, "depth must be one of"),
        ({"depth": True}, "depth must be an integer"),
        ({"depth": 50, "num_groups": 1, "width_per_group": 512}, "1x512"),
        ({"depth": 50, "num_groups": 16384, "width_per_group": 1}, "16384x1"),
        ({"depth": 50, "num_groups": 64, "width_per_group": 8}, "64x8"),
        ({"depth": 50, "num_groups": 0}, "0x64"),
        ({"depth": 50, "stride_in_1x1": "yes"}, "stride_in_1x1 must be true or false"),
        ({"depth": 50, "out_channels": 4096}, "out_channels must be 256"),
        ({"depth": 50, "res5_dilation": 3}, "res5_dilation must be 1 with an FPN"),
        # two levels of stride 16: Detectron2's FPN refuses it (fpncli's built a broken model)
        ({"depth": 50, "res5_dilation": 2}, "res5_dilation must be 1 with an FPN, got 2"),
        ([50], "must be a dict"),
    ],
)
def test_check_arch_refuses(arch, message):
    with pytest.raises(ValueError, match=message):
        check_arch(arch)


def test_a_tiny_file_asking_for_a_huge_arch_is_refused_when_read(tmp_path):
    arch = {"depth": 50, "num_groups": 1, "width_per_group": 512}
    path = _fpncli_file(tmp_path / "w.pkl", arch=arch)
    with pytest.raises(ValueError, match=r"w\.pkl: architecture 1x512 .* not supported"):
        read_checkpoint(path)


def test_a_zero_element_array_cannot_declare_the_groups(tmp_path, state):
    model = {f"backbone.{k}": v.numpy() for k, v in state.items()}
    model["backbone.bottom_up.res2.0.conv2.weight"] = np.zeros((16384, 1, 0, 0), np.float32)
    path = tmp_path / "zero.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": model}, f)
    with pytest.raises(ValueError, match=r"shape \(16384, 1, 0, 0\): not a grouped 3x3"):
        read_checkpoint(path)


def test_build_backbone_compares_shapes_before_allocating(monkeypatch, state):
    from fpncli.weights import arch as weights_arch

    devices, allocated = [], []

    def build(**arch):
        devices.append(torch.empty(0).device.type)
        return build_resnet_fpn_backbone(**arch)

    def new_backbone(arch):
        allocated.append(arch)
        return real_new_backbone(arch)

    real_new_backbone = weights_arch.new_backbone
    monkeypatch.setattr(weights_arch, "build_resnet_fpn_backbone", build)
    monkeypatch.setattr(weights_arch, "new_backbone", new_backbone)
    broken = dict(state)
    broken["fpn_output4.weight"] = torch.zeros(256, 0, 3, 3)  # zero elements, wrong shape
    with pytest.raises(ValueError, match=r"missing keys: bottom_up.stem.conv1.weight.*791 in all"):
        build_backbone({"depth": 152, "width_per_group": 128}, {})  # a 1 GB model, never built
    with pytest.raises(ValueError, match=r"mis-shaped keys: fpn_output4.weight \(256, 0, 3, 3\)"):
        build_backbone({"depth": 50}, broken)
    assert devices == ["meta", "meta"] and allocated == []  # refused before any was allocated
    model = build_backbone({"depth": 50}, state)
    assert devices[-2:] == ["meta", "meta"] and allocated == [{"depth": 50}]
    assert {t.device.type for t in model.state_dict().values()} == {"cpu"}
    _same(model.state_dict(), state)


@pytest.mark.parametrize("weights", ["random", "pkl", "pth"])
def test_loading_weights_leaves_the_callers_random_stream_alone(tmp_path, state, weights):
    """The default init that the weights overwrite drew from torch's global generator: a
    notebook's ``torch.manual_seed(0); load_backbone(...); torch.randn(...)`` got other numbers
    than without the load."""
    if weights == "pkl":
        write_detectron2_pkl(tmp_path / "w.pkl", state)
    elif weights == "pth":
        write_torchvision_pth(tmp_path / "w.pth", state)
    source = "random" if weights == "random" else str(tmp_path / f"w.{weights}")
    before = torch.random.get_rng_state()
    fpncli.load_backbone(source)
    assert torch.equal(torch.random.get_rng_state(), before)


_GLOBALS_CHECK = """
import os, sys, warnings
import torch
env, filters = dict(os.environ), list(warnings.filters)
import fpncli
fpncli.load_backbone(sys.argv[1])
print(sorted(set(os.environ.items()) ^ set(env.items())), list(warnings.filters) == filters)
"""


def test_loading_a_file_leaves_the_environment_and_warning_filters_alone(tmp_path, state):
    """build_backbone's check on the meta device imported torch._dynamo, which sets
    TORCHINDUCTOR_CACHE_DIR in os.environ (seen by every later subprocess) and adds a warnings
    filter (in a fresh process: the test run may have imported it already). The checkpoint is
    written here, of the module's seeded weights (the process drew its own before)."""
    write_detectron2_pkl(tmp_path / "w.pkl", state)
    root = str(Path(fpncli.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", _GLOBALS_CHECK, str(tmp_path / "w.pkl")],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[0] == "[] True"


# Malformed files: one clear line saying what is wrong ------------------------------------------


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"arch": {"depth": 50, "bogus": 1}}, "unknown architecture key 'bogus'"),
        ({"arch": [50]}, "architecture must be a dict"),
        ({"model": [1]}, "its 'model' entry is a list, not a dict"),
        ({"model": {1: 2}}, "non-string keys"),
        ({"model": None, "arch": None, "input": None}, "needs 'model', 'arch' and 'input'"),
        ({"input": None}, "'input' missing"),
        ({"input": {"color_order": "BGR"}}, "'input' entry must be a dict with"),
        ({"input": {"color_order": "XYZ", "pixel_mean": [1, 2, 3], "pixel_std": [1, 1, 1]}},
         "color_order must be 'BGR' or 'RGB'"),
        ({"input": {"color_order": "BGR", "pixel_mean": [1, 2], "pixel_std": [1, 1, 1]}},
         "pixel_mean must be 3 finite numbers"),
        ({"input": {"color_order": "BGR", "pixel_mean": [1, 2, 3], "pixel_std": [1, 0, 1]}},
         "pixel_std must be positive"),
    ],
)  # fmt: skip
def test_a_malformed_fpncli_file_says_what_is_wrong(tmp_path, entries, message):
    path = _fpncli_file(tmp_path / "bad.pkl", **entries)
    with pytest.raises(ValueError, match=message) as info:
        read_checkpoint(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_a_state_dict_with_non_string_keys_is_refused(tmp_path):
    path = tmp_path / "ints.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {1: 2}}, f)
    with pytest.raises(ValueError, match=r"ints\.pkl: its 'model' entry has non-string keys"):
        read_checkpoint(path)


# Values that are not real, finite weights ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bool])
def test_a_non_real_tensor_is_refused(tmp_path, state, dtype):
    model = {f"backbone.{k}": v.clone() for k, v in state.items()}
    model["backbone.bottom_up.stem.conv1.weight"] = torch.zeros(64, 3, 7, 7, dtype=dtype)
    path = tmp_path / "odd.pth"
    torch.save({"model": model}, path)
    with pytest.raises(ValueError, match=r"stem.conv1.weight' is not a real-valued array"):
        read_checkpoint(path)


def test_a_complex_array_in_a_pkl_is_refused(tmp_path, state):
    model = {f"backbone.{k}": v.numpy() for k, v in state.items()}
    model["backbone.fpn_lateral2.bias"] = np.zeros(256, np.complex64)
    path = tmp_path / "complex.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": model}, f)
    with pytest.raises(ValueError, match=r"fpn_lateral2.bias' is not a real-valued .*complex64"):
        read_checkpoint(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_the_first_key(tmp_path, state, value):
    broken = {k: v.clone() for k, v in state.items()}
    broken["bottom_up.res3.0.conv1.weight"][0, 0, 0, 0] = value
    broken["fpn_output2.weight"].fill_(value)
    path = tmp_path / "nan.pkl"
    write_detectron2_pkl(path, broken)
    with pytest.raises(ValueError, match=r"nan\.pkl: bottom_up.res3.0.conv1.weight holds NaN"):
        read_checkpoint(path)


def _write_fpncli(path, state):
    model = build_resnet_fpn_backbone()
    model.load_state_dict(state)
    save_fpncli_checkpoint(path, model, {"depth": 50}, DETECTRON2_INPUT)


@pytest.mark.parametrize(
    "write, suffix",
    [(write_detectron2_pkl, ".pkl"), (write_detectron2_pth, ".pth"),
     (write_torchvision_pth, ".pth"), (_write_fpncli, ".pth")],
)  # fmt: skip
@pytest.mark.parametrize(
    "key", ["bottom_up.stem.conv1.norm.running_var", "bottom_up.res3.0.shortcut.norm.running_var"]
)  # torchvision: backbone.body.bn1.running_var, backbone.body.layer2.0.downsample.1.running_var
def test_a_negative_batchnorm_variance_is_refused_naming_the_key(
    tmp_path, state, write, suffix, key
):
    """weight * rsqrt(running_var + eps) of a negative variance is NaN: every feature was
    non-finite and extract exited 0."""
    broken = {k: v.clone() for k, v in state.items()}
    broken[key][1] = -1.0
    path = tmp_path / f"negative{suffix}"
    write(path, broken)
    with pytest.raises(ValueError, match=rf"negative{suffix}: {key} holds negative values \(down "
                       r"to -1\), not a BatchNorm variance"):  # fmt: skip
        read_checkpoint(path)


def test_a_zero_batchnorm_variance_is_accepted(tmp_path, state):
    """A dead channel's variance is 0 (eps keeps its scale finite): not refused."""
    zero = {k: v.clone() for k, v in state.items()}
    zero["bottom_up.res2.0.conv1.norm.running_var"][:4] = 0.0
    zero["bottom_up.res2.0.conv2.norm.running_var"][:4] = -0.0
    path = tmp_path / "zero.pkl"
    write_detectron2_pkl(path, zero)
    _same(read_checkpoint(path).state_dict, zero)


def test_an_fpn_over_a_dilated_res5_is_refused_as_detectron2_refuses_it():
    """res5_dilation=2 keeps res4's stride 16 for res5: the FPN registered fpn_lateral4 twice
    and built a model whose first forward failed on a shape."""
    with pytest.raises(ValueError, match=r"strides double \(4, 8, 16, 32\), not \[4, 8, 16, 16\]"):
        build_resnet_fpn_backbone(res5_dilation=2)


# Hostile files: refused before they make fpncli allocate more than the file holds ---------------


class _NdarrayCall:
    """``numpy.ndarray(shape, dtype)`` in a pickle (a REDUCE opcode)."""

    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        return (np.ndarray, ((self.n,), "<f8"))


class _Reconstruct:
    """numpy's own pickle of an array: ``_reconstruct(ndarray, (0,), b"b")`` then its state
    (data), with any shape, dtype and data (``data`` shared between instances is memoized), the
    state a tuple (or ``state``, e.g. a list)."""

    def __init__(self, shape, dtype, data, init_shape=(0,), state=tuple):
        self.args = (shape, np.dtype(dtype), data, init_shape, state)

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        shape, dtype, data, init_shape, state = self.args
        array_state = state((1, shape, dtype, False, data))
        return (_reconstruct, (np.ndarray, init_shape, dtype), array_state)


class _Encode:
    """Python's protocol-2 pickle of bytes, ``_codecs.encode(text, "latin1")``."""

    def __init__(self, text):
        self.text = text

    def __reduce__(self):
        import _codecs

        return (_codecs.encode, (self.text, "latin1"))


class _Scalar:
    """numpy's pickle of a scalar, ``scalar(dtype, its bytes)``, with any dtype and data."""

    def __init__(self, dtype, data):
        self.args = (np.dtype(dtype), data)

    def __reduce__(self):
        from numpy._core.multiarray import scalar

        return (scalar, self.args)


class _FromBuffer:
    """numpy's protocol-5 pickle of an empty array, ``_frombuffer(b"", dtype, (0,), "C")``, then
    given a state, as numpy's other pickles give one to ``_reconstruct``'s array."""

    def __init__(self, shape, dtype, data):
        self.args = (shape, np.dtype(dtype), data)

    def __reduce__(self):
        from numpy._core.numeric import _frombuffer

        shape, dtype, data = self.args
        return (_frombuffer, (b"", dtype, (0,), "C"), (1, shape, dtype, False, data))


class _OrderedDictOf:
    """Python 2's pickle of an OrderedDict: ``OrderedDict(items)``."""

    def __init__(self, items):
        self.items = items

    def __reduce__(self):
        return (collections.OrderedDict, (self.items,))


class _DtypeCall:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (np.dtype, (self.code,))


_TEXT, _BYTES = "\x01" * 10**5, b"\x01" * 1000  # one object each: the pickle memoizes them
_DATA, _FIELDS = b"\x01" * 10**5, ",".join(["u1"] * 2000)  # 100 KB; a dtype of 2000 fields
_PAIRS = [(i, None) for i in range(10_000)]


def _pickle(path, model, protocol=2):
    with open(path, "wb") as f:
        pickle.dump({"model": model}, f, protocol=protocol)
    return path


@pytest.mark.parametrize("newobj", [False, True])
def test_a_pkl_calling_numpy_ndarray_is_refused_before_it_allocates(tmp_path, newobj):
    """A 109-byte file calling ``ndarray((N,), "<f8")`` allocated N*8 bytes (2.2 GB peak for
    5e8) before anything looked at it: numpy's pickles only name ndarray as _reconstruct's type.
    (8 MB here, allocated by the old code, then refused for its layout.)"""
    key = "backbone.bottom_up.res2.0.conv2.weight"
    path = _pickle(tmp_path / "bomb.pkl", {key: _NdarrayCall(10**6)})
    assert path.stat().st_size < 200
    if newobj:  # the same call as ndarray.__new__(ndarray, (N,), "<f8")
        data = path.read_bytes()
        [at] = [pos for op, _, pos in pickletools.genops(data) if op.name == "REDUCE"]
        path.write_bytes(data[:at] + pickle.NEWOBJ + data[at + 1 :])
    with pytest.raises(UnsafeCheckpointError, match=r"bomb\.pkl: refusing to call numpy\.ndarray"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    "model, refused",
    [
        # one 1 MB element: _reconstruct's shape was checked, not its dtype's size
        ({"a": _Reconstruct((1,), "V1000000", b"", init_shape=(1,))},
         r"an array declared with shape \(1,\) is larger than the file"),
        # one string in the pickle's memo, copied into 50 arrays (as text, as protocol 2 has it)
        ({f"a{i}": _Reconstruct((10**5,), "u1", _TEXT) for i in range(50)},
         r"an array of shape \(100000,\) \(uint8\) would take the data built from the file "
         r"past twice its size \(one object in the pickle's memo used again and again\?\)"),
        # and as bytes (copied when numpy cannot keep them: here, 1000 bytes or fewer)
        ({f"a{i}": _Reconstruct((1000,), "u1", _BYTES) for i in range(20_000)},
         r"an array of shape \(1000,\) \(uint8\) would take"),
        # one string in the memo encoded to bytes again and again
        ({f"a{i}": _Encode(_TEXT) for i in range(50)},
         r"a byte string of 100000 bytes would take"),
        # the state given as a list, which numpy takes too: it went to numpy uncharged
        ({f"a{i}": _Reconstruct((10**5,), "u1", _TEXT, state=list) for i in range(50)},
         r"refusing an array state given as a list: numpy pickles an array's as a tuple"),
        # a scalar of a 100 KB dtype made from one string again and again (uncharged)
        ({f"a{i}": _Scalar("V100000", _DATA) for i in range(50)},
         r"refusing a numpy scalar of dtype \|V100000 from a bytes: a checkpoint's numbers are "),
        # a dtype of 2000 fields made from one string again and again
        ({f"a{i}": _DtypeCall(_FIELDS) for i in range(50)},
         r"refusing numpy\.dtype\('u1,u1,u1"),
        # protocol 5's array (a view of bytes), given a state: numpy copied it uncharged
        ({f"a{i}": _FromBuffer((10**5,), "u1", _TEXT) for i in range(50)},
         r"an array of shape \(100000,\) \(uint8\) would take"),
        # one list of items in the memo made into an OrderedDict again and again
        ({f"a{i}": _OrderedDictOf(_PAIRS) for i in range(30)},
         r"an OrderedDict of 10000 items is larger than the file"),
    ],
    ids=["itemsize", "shared-text", "shared-bytes", "encode", "list-state", "scalar", "fields",
         "frombuffer-state", "ordered-dict"],
)  # fmt: skip
def test_a_pkl_building_more_than_it_stores_is_refused_before_it_allocates(
    tmp_path, model, refused
):
    """Arrays and byte strings built from a .pkl hold at most twice its size in all (a few MB
    here, which the old code built in full)."""
    path = _pickle(tmp_path / "amplified.pkl", model)
    assert path.stat().st_size < 2 << 20
    with pytest.raises(UnsafeCheckpointError, match=refused):
        read_checkpoint(path)


class _ReconstructOne:
    """``_reconstruct(ndarray, (1,), dtype)``: numpy allocates one element of ``dtype``."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (1,), self.dtype))


class _ForgedDtype:
    """numpy's pickle of a dtype, ``dtype(code, False, True)`` then its state, any state."""

    def __init__(self, code, state):
        self.code, self.state = code, state

    def __reduce__(self):
        return (np.dtype, (self.code, False, True), self.state)


@pytest.mark.parametrize(
    "dtype, refused",
    [
        # 16 bytes, its state declaring 10**6 objects (2e8 took 1.5 GB from 208 bytes)
        (_ForgedDtype("V16", (3, "|", (np.dtype("O"), (10**6,)), None, None, 16, 8, 0)),
         r"refusing dtype\('O'\): it holds objects; a weights file holds arrays of plain numbers"),
        (_ForgedDtype("V16", (3, "|", (np.dtype("f8"), (1000,)), None, None, 16, 8, 0)),
         r"refusing a numpy dtype whose state gives it a subarray or fields"),
        (_ForgedDtype("O8", (3, "|", None, None, None, -1, -1, 0)),  # its object flag cleared
         r"refusing dtype\('O'\): it holds objects"),
        ("O", r"refusing dtype\('O'\) of an array declared with shape \(1,\): it holds objects"),
        ("u1,u1", r"refusing the dtype 'u1,u1' of an array declared with shape \(1,\): not a "
         r"numpy type code"),
    ],
    ids=["object-subarray", "subarray", "object-flag-cleared", "object-code", "fields-code"],
)  # fmt: skip
def test_an_array_of_anything_but_plain_numbers_is_refused_before_it_is_built(
    tmp_path, dtype, refused
):
    """A dtype's state can give it a subarray its itemsize does not hold, or objects (pointers
    the file would give): numpy then allocates the subarray's elements for each (8 MB of
    object pointers here, built by the old code)."""
    path = _pickle(tmp_path / "forged.pkl", {"x": _ReconstructOne(dtype)})
    assert path.stat().st_size < 300
    with pytest.raises(UnsafeCheckpointError, match=rf"forged\.pkl: {refused}"):
        read_checkpoint(path)


def test_a_dtype_changed_after_an_array_has_it_is_refused(tmp_path):
    """A pickle can give a dtype its state again once an array has it: the old code's array of
    32 bytes, its dtype made 1000 float64s an element, read 16 KB past its end (a crash; with
    objects, pointers the file gives)."""
    v16 = _global("numpy", "dtype") + b"X\x03\x00\x00\x00V16\x89\x88\x87Rq\x00"  # memo 0
    array = (
        _global("numpy.core.multiarray", "_reconstruct")
        + _global("numpy", "ndarray")
        + b"K\x02\x85h\x00\x87Rq\x01"
    )  # memo 1: _reconstruct(ndarray, (2,), V16)
    f8 = _global("numpy", "dtype") + b"X\x02\x00\x00\x00f8\x89\x88\x87R"
    state = b"(K\x03X\x01\x00\x00\x00|" + f8 + b"M\xe8\x03\x85\x86NNK\x10K\x08K\x00t"
    model = b"}X\x05\x00\x00\x00model}X\x01\x00\x00\x00xh\x01ss"
    path = tmp_path / "changed.pkl"
    path.write_bytes(b"\x80\x02" + v16 + array + b"h\x00" + state + b"b0" + model + b".")
    with pytest.raises(UnsafeCheckpointError, match=r"changed\.pkl: refusing to change a numpy "
                       r"dtype an array or scalar already has"):  # fmt: skip
        read_checkpoint(path)


def test_numbers_beside_the_model_load_at_every_protocol(tmp_path, state):
    """numpy scalars (an iteration, a learning rate, a flag) are numpy's scalar(dtype, bytes)."""
    extra = {"iteration": np.int64(90_000), "lr": np.float32(0.02), "flag": np.bool_(True)}
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.pkl"
        with open(path, "wb") as f:
            model = {f"backbone.{k}": v.numpy() for k, v in state.items()}
            pickle.dump({"model": model, "__author__": "x", **extra}, f, protocol=protocol)
        _same(read_checkpoint(path).state_dict, state)


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


_EMPTY_ARRAY = (  # memo 0: _reconstruct; memo 1: its arguments (ndarray, (0,), b"b")
    _global("numpy.core.multiarray", "_reconstruct") + b"q\x00" + _global("numpy", "ndarray")
    + b"K\x00\x85C\x01b\x87q\x01"
)  # fmt: skip


@pytest.mark.parametrize(
    "body, refused",
    [
        # a million empty dicts (1 MB): 64 bytes each, and no byte budget sees them
        (b"](" + b"}" * (1 << 20) + b"e", r"refusing a pickle of more than 1048576 opcodes"),
        # 350,000 zero-element arrays, 3 bytes each (the reviewer's 4 M took 2.3 GB)
        (_EMPTY_ARRAY + b"](" + b"h\x00h\x01R" * 350_000 + b"e", r"refusing a pickle of more "),
        # a dict stored at memo index 4 M: the unpickler sized its memo by it (64 MB here)
        (b"}r" + (1 << 22).to_bytes(4, "little"),
         r"refusing a pickle memo index 4194304 past the 0 objects stored"),
    ],
    ids=["empty-dicts", "empty-arrays", "memo-index"],
)  # fmt: skip
def test_a_pkl_of_many_small_objects_is_refused_before_it_is_unpickled(tmp_path, body, refused):
    """Objects a byte budget cannot see (empty containers and arrays, memo slots) are bounded
    by counting the pickle's opcodes before anything is built: a checkpoint has a few dozen an
    array. (The old code built these: 70 to 200 MB here.)"""
    path = tmp_path / "many.pkl"
    path.write_bytes(b"\x80\x02" + body + b".")
    with pytest.raises(UnsafeCheckpointError, match=rf"many\.pkl: {refused}"):
        read_checkpoint(path)


def test_a_pkl_declaring_data_past_its_end_is_damaged_not_allocated(tmp_path):
    """A length that runs past the file's end (8 EB of bytes in 20 bytes) was allocated first
    ("declares more data than fits in memory"): the file is cut short or damaged."""
    path = tmp_path / "short.pkl"
    path.write_bytes(b"\x80\x04\x8e" + (1 << 62).to_bytes(8, "little") + b"abc.")
    damaged = r"\(BINBYTES8 data past the end: truncated\); a truncated or damaged file"
    with pytest.raises(ValueError, match=rf"short\.pkl: not a readable \.pkl .*{damaged}"):
        read_checkpoint(path)


_PAIRS_PICKLE = b"](" + b"".join(b"M" + i.to_bytes(2, "little") + b"N\x86" for i in range(10_000))


@pytest.mark.parametrize(
    "body",
    [
        # _codecs.encode given the state (OrderedDict, (), {}, None): a functools.partial's
        # state is what it calls, and OrderedDict then ran uncharged over one list (30 MB here)
        _global("_codecs", "encode") + b"q\x00" + _global("collections", "OrderedDict")
        + b"q\x01" + _PAIRS_PICKLE + b"eq\x02" + b"h\x00(h\x01)}Ntb0"
        + b"](" + b"h\x00h\x02\x85R" * 30 + b"e",
        # numpy.ndarray given (None, {"x": 1}): the attributes of the class standing for it
        _global("numpy", "ndarray") + b"N}X\x01\x00\x00\x00xK\x01s\x86b0}",
    ],
    ids=["encode", "ndarray"],
)  # fmt: skip
def test_a_pkl_giving_a_global_a_state_is_refused(tmp_path, body):
    path = tmp_path / "state.pkl"
    path.write_bytes(b"\x80\x02" + body + b".")
    with pytest.raises(UnsafeCheckpointError, match=r"state\.pkl: refusing to give a function a "):
        read_checkpoint(path)


def test_a_python2_ordered_dict_of_the_model_loads(tmp_path, state):
    """Python 2 pickled an OrderedDict with its items, each now charged (about what CPython
    takes for one): a model's few hundred are nothing beside its arrays."""
    model = [(f"backbone.{k}", v.numpy()) for k, v in state.items()]
    path = _pickle(tmp_path / "py2.pkl", _OrderedDictOf(model))
    _same(read_checkpoint(path).state_dict, state)


def test_a_pkl_of_zero_weights_at_protocol_2_and_one_of_latin1_text_load(tmp_path, state):
    """The budget's two extremes for real files: Python 3's protocol 2 encodes each array's
    bytes from text (built twice: as bytes, then as the array), the smallest file of it being
    all bytes below 0x80; Python 2's pickles (as Detectron2's first .pkl files were written)
    hold the data as latin-1 text, which numpy encodes into each array."""
    zeros = {k: torch.zeros_like(v) for k, v in state.items()}
    path = tmp_path / "zeros.pkl"
    write_detectron2_pkl(path, zeros, protocol=2)
    _same(read_checkpoint(path).state_dict, zeros)

    class Python2Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            if type(obj) is not np.ndarray:
                return NotImplemented
            rebuild, args, array_state = obj.__reduce__()
            return rebuild, (*args[:2], "b"), (*array_state[:4], array_state[4].decode("latin1"))

    path = tmp_path / "python2.pkl"
    with open(path, "wb") as f:
        Python2Pickler(f, protocol=2).dump({"model": {f"backbone.{k}": v.numpy()
                                                       for k, v in state.items()}})  # fmt: skip
    _same(read_checkpoint(path).state_dict, state)


class _BytesCall:
    def __reduce__(self):
        return (bytes, (10**6,))  # bytes(N): N zero bytes from a few in the file


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_pkl_holding_a_zero_element_array_loads_at_every_protocol(tmp_path, state, protocol):
    """Protocol 2 pickles empty bytes, a zero-element array's data, as ``bytes()``: a real file
    with an empty head array was refused as unsafe ("refusing to load __builtin__.bytes"). bytes
    called with anything (it would allocate the size given) is still refused."""
    model = {f"backbone.{k}": v.numpy() for k, v in state.items()}
    model["roi_heads.box_predictor.empty"] = np.zeros((0, 1024), np.float32)
    path = tmp_path / "empty_head.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo"}, f, protocol=protocol)
    assert (b"bytes" in path.read_bytes()) == (protocol == 2)
    _same(read_checkpoint(path).state_dict, state)
    path = _pickle(tmp_path / "bytes.pkl", {"a": _BytesCall()}, protocol=protocol)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing bytes\(\) called with arguments"):
        read_checkpoint(path)


def _saved_model(state, **entries):
    model = {f"backbone.{k}": v.clone() for k, v in state.items()}
    model.update({f"backbone.{k}": v for k, v in entries.items()})
    return {"model": model}


def test_expanded_tensors_are_refused_by_their_storage(tmp_path, state):
    """Every tensor with its shape but one stored float (a stride-0 view): a 91 KB file that
    converted and checked 28 M floats (and one of 2e9 elements took 14 GB)."""
    path = tmp_path / "expanded.pth"
    torch.save(_saved_model({}, **{k: torch.ones(1).expand(v.shape) for k, v in state.items()}),
               path)  # fmt: skip
    stored = (
        r"'bottom_up.stem.conv1.weight' has 9408 elements \(37632 bytes\) in a storage of 4 bytes"
    )
    with pytest.raises(ValueError, match=rf"expanded\.pth: checkpoint entry {stored}"):
        read_checkpoint(path)


def test_names_and_shapes_are_compared_before_any_value_is_converted_or_checked(
    tmp_path, state, monkeypatch
):
    """A key of the wrong shape was converted to float32 and checked for NaN (2e9 elements of
    one stored float: 14 GB) before its shape was compared with the architecture's."""
    seen = []

    def isfinite(tensor):
        seen.append(tensor.numel())
        assert tensor.numel() <= 10**7, "checked before its shape was compared"
        return real_isfinite(tensor)

    real_isfinite = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", isfinite)
    path = tmp_path / "misshaped.pth"
    torch.save(_saved_model(state, **{"fpn_output5.bias": torch.zeros(10**6)}), path)
    misshaped = r"mis-shaped keys: fpn_output5.bias \(1000000,\) != \(256,\)"
    with pytest.raises(
        ValueError, match=rf"misshaped\.pth: checkpoint does not match .*{misshaped}"
    ):
        read_checkpoint(path)
    assert seen == []  # nothing converted or checked
    path = tmp_path / "expanded.pth"  # 2e9 elements in 4 bytes: the spy stops the old code
    torch.save(_saved_model(state, **{"fpn_output5.bias": torch.zeros(1).expand(2 * 10**9)}), path)
    with pytest.raises(ValueError, match=r"'fpn_output5.bias' has 2000000000 elements"):
        read_checkpoint(path)
    assert seen == []


def test_tensors_sharing_their_data_are_refused_when_they_hold_more_than_the_file(tmp_path, state):
    """Every tensor a view of one stored buffer (each within it): more than the file holds."""
    flat = torch.rand(max(v.numel() for v in state.values()))
    path = tmp_path / "shared.pth"
    views = {k: flat[: v.numel()].view(v.shape) for k, v in state.items()}
    torch.save(_saved_model({}, **views), path)
    with zipfile.ZipFile(path) as archive:
        size = sum(member.file_size for member in archive.infolist())
    with pytest.raises(ValueError, match=rf"shared\.pth: its backbone tensors hold 1\d{{8}} bytes, "
                       rf"more than the {size} bytes the file stores"):  # fmt: skip
        read_checkpoint(path)


def test_two_keys_for_one_backbone_name_are_refused_naming_both(tmp_path, state):
    """A Detectron2 file with ``backbone.X`` and ``X`` (or a torchvision one with the legacy and
    the current FPN name) loaded whichever came last, silently."""
    path = tmp_path / "twice.pth"
    saved = _saved_model(state)
    saved["model"].update({k: torch.zeros_like(v) for k, v in state.items()})
    torch.save(saved, path)
    keys = "'backbone.bottom_up.stem.conv1.weight' and 'bottom_up.stem.conv1.weight'"
    with pytest.raises(ValueError, match=rf"twice\.pth: checkpoint keys {keys} both name the "
                       r"backbone's bottom_up.stem.conv1.weight: refused"):  # fmt: skip
        read_checkpoint(path)
    saved = write_torchvision_pth(path, state)
    saved["backbone.fpn.layer_blocks.3.weight"] = torch.zeros(256, 256, 3, 3)
    torch.save(saved, path)
    with pytest.raises(ValueError, match=r"keys 'backbone.fpn.layer_blocks.3.0.weight' and "
                       r"'backbone.fpn.layer_blocks.3.weight' both name the backbone's "
                       r"fpn_output5.weight"):  # fmt: skip
        read_checkpoint(path)


def _meta(v):
    return torch.empty(v.shape, device="meta")


def _quantized(v):
    return torch.quantize_per_tensor(v, 0.1, 0, torch.qint8)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
@pytest.mark.parametrize(
    "make, refused",
    [(_meta, "is a meta tensor, which holds no data"),
     (lambda v: v.to_sparse(), r"is a sparse tensor \(torch.sparse_coo\)"),
     (_quantized, r"is a quantized tensor \(torch.qint8\)")],
    ids=["meta", "sparse", "quantized"],
)  # fmt: skip
def test_meta_sparse_and_quantized_tensors_are_refused_naming_the_entry(
    tmp_path, state, make, refused
):
    """They gave torch's own words ("Cannot copy out of meta tensor; no data!", a 500-character
    dispatcher listing, "Creation of quantized tensor requires quantized dtype")."""
    path = tmp_path / "odd.pth"
    torch.save(_saved_model(state, **{"fpn_lateral3.bias": make(state["fpn_lateral3.bias"])}),
               path)  # fmt: skip
    entry = r"odd\.pth: checkpoint entry 'fpn_lateral3.bias'"
    with pytest.raises(ValueError, match=rf"{entry} {refused}") as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value)


def test_a_file_larger_than_any_checkpoint_is_refused_before_it_is_hashed_or_read(
    tmp_path, monkeypatch, state
):
    """load_backbone hashed the whole file before reading any of it: a 10 GB junk file took 30 s
    to refuse. (The files here are sparse: nothing is written, nor hashed with the spy.) Its size
    was "4.3 GB, larger than any detection checkpoint (4.3 GB at most)": now in bytes."""
    from fpncli import api
    from fpncli.weights.safeload import MAX_CHECKPOINT_BYTES

    hashed = []

    def sha256_file(path):
        hashed.append(path)
        assert Path(path).stat().st_size < 1 << 30, "hashed before its size was checked"
        return real_sha256(path)

    real_sha256 = api.sha256_file
    monkeypatch.setattr(api, "sha256_file", sha256_file)
    huge = tmp_path / "huge.pth"
    with open(huge, "wb") as f:
        f.truncate(MAX_CHECKPOINT_BYTES + 1)
    for load in (read_checkpoint, fpncli.load_backbone):
        with pytest.raises(ValueError, match=r"huge\.pth: refused: 4294967297 bytes, over 4 GiB, "
                           r"larger than any detection checkpoint; not a"):  # fmt: skip
            load(huge)
    junk = tmp_path / "junk.pkl"  # a file of the user's is read, and refused, before hashing
    junk.write_bytes(b"\x00junk")
    with pytest.raises(ValueError, match="not a readable"):
        fpncli.load_backbone(str(junk))
    assert hashed == []
    good = tmp_path / "good.pkl"
    write_detectron2_pkl(good, state)
    model = fpncli.load_backbone(str(good))
    assert model.weights_info.sha256 == hashlib.sha256(good.read_bytes()).hexdigest()
    assert hashed == [good]
