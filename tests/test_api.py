"""The notebook-facing functions (``fpncli.api``): what they hand back can be used as any tensor."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from forked import each_case
from PIL import Image

import fpncli
from fpncli.api import autocast_context, check_precision, model_input, run_backbone
from fpncli.weights.registry import DETECTRON2_INPUT


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


#: Imports torch and fpncli once, then runs two threads inside ``fp32_strict`` at once after
#: each way a user turns TF32 on (argv: a JSON list of the settings' code), each in a process of
#: its own forked from the state the imports left (the settings are global: as a fresh process,
#: without importing torch again for each; where there is no fork, one case, in this process).
#: One JSON line a case (``forked.each_case`` runs it).
_OVERLAPPING_HOLDERS = """
import json, threading, traceback, torch
from fpncli.api import fp32_strict
b = torch.backends
def tf32():  # [matmuls, convolutions]: TF32 on?
    if not hasattr(b.cudnn, "conv"):  # torch < 2.9: the legacy flags only
        return [b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32]
    def on(*levels):  # a setting left "none" inherits from the level above
        values = [v.fp32_precision for v in levels if v.fp32_precision != "none"]
        return values[:1] == ["tf32"]
    return [on(b.cuda.matmul, b), on(b.cudnn.conv, b.cudnn, b)]
def check(user):
    try:
        exec(user)  # the user turns TF32 on
        seen = {"before": tf32()}
        first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
        def first():
            with fp32_strict():
                first_in.set()
                second_in.wait(30)
            first_out.set()
        def second():
            first_in.wait(30)
            with fp32_strict():
                second_in.set()
                first_out.wait(30)
                seen["second, once the first left"] = tf32()
        threads = [threading.Thread(target=f) for f in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seen["after both"] = tf32()
    except BaseException:
        seen = {"error": traceback.format_exc()}
    return json.dumps(seen)
"""

TF32_ON = {
    "legacy": "b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = True",
    "new-api": "b.fp32_precision = 'tf32'",
}


@pytest.fixture(scope="module")
def overlapping_holders() -> dict[str, dict]:
    """What ``_OVERLAPPING_HOLDERS`` says for each of ``TF32_ON``: both from one process that
    forks one per case (one process each without fork). Importing torch in a fresh process for
    each case was a few seconds each on two cores."""
    said = each_case(_OVERLAPPING_HOLDERS, list(TF32_ON.values()), timeout=120)
    return dict(zip(TF32_ON, said, strict=True))


@pytest.mark.parametrize("user", TF32_ON)
def test_fp32_strict_holds_for_overlapping_threads(overlapping_holders, user):
    """Two threads inside ``fp32_strict`` at once (two threads extracting on a CUDA model): the
    first to leave must not turn TF32 back on under the other, and once both left the user's
    TF32 is on again (the first had restored its settings under the second, which then put back
    the "off" it had saved: TF32 was off for good). The flags are settable without a GPU; each
    case in a process of its own, as these settings are global."""
    if user == "new-api" and not hasattr(getattr(torch.backends.cudnn, "conv", None),
                                         "fp32_precision"):  # fmt: skip
        pytest.skip("torch < 2.9: no fp32_precision settings")
    assert overlapping_holders[user] == {
        "before": [True, True], "second, once the first left": [False, False],
        "after both": [True, True],
    }  # fmt: skip


_INTERRUPTED_HOLDER = """
import functools, json, sys, torch
sys.path.insert(0, sys.argv[2])  # the tests folder
from interrupts import each_interrupt
from fpncli.api import fp32_strict
from fpncli.model import tf32
from fpncli.shared import SharedSetting
b = torch.backends
def settings():  # every TF32 setting torch has, as it reads it
    found = {}
    for name in ["", "cuda.matmul", "cudnn", "cudnn.conv", "cudnn.rnn", "mkldnn", "mkldnn.matmul",
                 "mkldnn.conv", "mkldnn.rnn"]:
        level = functools.reduce(getattr, name.split(".") if name else [], b)
        if hasattr(level, "fp32_precision"):
            found[name or "torch.backends"] = level.fp32_precision
    for name, read in [("matmul.allow_tf32", lambda: b.cuda.matmul.allow_tf32),
                       ("cudnn.allow_tf32", lambda: b.cudnn.allow_tf32),
                       ("matmul precision", torch.get_float32_matmul_precision)]:
        try:
            found[name] = read()
        except RuntimeError:  # the legacy flags, once the fp32_precision settings were used
            found[name] = "raises"
    return found
exec(sys.argv[1])  # the user turns TF32 on
before = settings()
with fp32_strict():
    strict = settings()
def hold():
    with fp32_strict():
        pass
functions = [f for f in [*vars(SharedSetting).values(), tf32._tf32_off]
             if hasattr(getattr(f, "__wrapped__", f), "__code__")]
points, left = 0, {}
for where in each_interrupt(hold, functions):
    points += 1
    if settings() != before:
        left[where] = settings()
hold()  # one more call, uninterrupted, after them all
print(json.dumps({"strict differs": strict != before, "points": points, "left": left,
                  "after": settings() == before}))
"""


@pytest.mark.parametrize(
    "user",
    ["b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = True", "b.fp32_precision = 'tf32'"],
    ids=["legacy", "new-api"],
)
def test_fp32_strict_interrupted_anywhere_gives_tf32_back(user):
    """A Ctrl-C landing just after ``fp32_strict`` turned TF32 off but before what puts it back
    was kept, or after the holder was counted but before its ``try``, or partway through
    turning it off, left TF32 off (or half set) for the rest of the process, the count of one
    holder keeping it off through every later call. Wherever a KeyboardInterrupt lands, the
    user's TF32 settings are as before it, and stay so after a later call. In a fresh process,
    as these settings are global."""
    if "fp32_precision" in user and not hasattr(getattr(torch.backends.cudnn, "conv", None),
                                                "fp32_precision"):  # fmt: skip
        pytest.skip("torch < 2.9: no fp32_precision settings")
    root = str(Path(fpncli.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    tests = str(Path(__file__).resolve().parent)
    done = subprocess.run([sys.executable, "-c", _INTERRUPTED_HOLDER, user, tests],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert seen.pop("points") >= 8, "fp32_strict's start and end, and what they call"
    assert seen == {"strict differs": True, "left": {}, "after": True}


def test_a_shared_setting_whose_undo_fails_is_applied_afresh_by_the_next_holder():
    """An undo that fails with an error is not kept for a retry: the error comes out, and the
    next holder applies the setting again (kept, it would stand for a setting still made, and
    no later holder would make it)."""
    from fpncli.shared import SharedSetting

    state, calls = {"on": False}, []

    def undo() -> None:
        calls.append("undo")
        if calls.count("undo") == 1:
            raise RuntimeError("cannot put it back")
        state["on"] = False

    def apply(record) -> None:
        calls.append("apply")
        record(undo)
        state["on"] = True

    setting = SharedSetting(apply)
    with pytest.raises(RuntimeError, match="cannot put it back"), setting.held():
        assert state["on"]
    state["on"] = False  # put back by hand
    with setting.held():
        assert state["on"]
    assert not state["on"] and calls == ["apply", "undo", "apply", "undo"]


def test_run_backbone_checks_the_precision():
    """``run_backbone`` refuses what ``extract`` refuses (fp16 on a CPU had run, slowly) and an
    unknown precision with the same message (a bare KeyError: 'fp8'); ``check_precision`` and
    ``autocast_context`` take a device's name as well as a ``torch.device``."""
    model = fpncli.load_backbone("random")
    batch = model_input(np.zeros((32, 32, 3), np.uint8), DETECTRON2_INPUT, torch.device("cpu"))
    with pytest.raises(ValueError, match="^fp16 on the CPU is slower than fp32: use fp32"):
        run_backbone(model, batch, precision="fp16")
    with pytest.raises(ValueError, match=r"^unknown precision 'fp8': use one of fp32, fp16, bf16$"):
        run_backbone(model, batch, precision="fp8")
    with pytest.raises(ValueError, match="^unknown precision 'fp8'"):
        autocast_context(torch.device("cpu"), "fp8")
    check_precision("fp32", "cpu")
    with pytest.raises(ValueError, match="^fp16 on the CPU"):
        check_precision("fp16", "cpu")
    with autocast_context("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_context("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")


def test_keep_bottom_up_names_stages_exactly():
    """Unknown names in ``keep_bottom_up`` ("res9", "Res4") were ignored, so a typo gave the
    pyramid alone, and a string was matched by substring ("res2res3" kept res2 and res3). A name
    that is no stage is refused naming those there are, from ``run_backbone``, a call of the
    model and the model's own ``keep_bottom_up``; a bare string is the one stage it names."""
    model = fpncli.load_backbone("random")
    batch = model_input(np.zeros((64, 96, 3), np.uint8), DETECTRON2_INPUT, torch.device("cpu"))
    pyramid = ["p2", "p3", "p4", "p5", "p6"]
    assert list(run_backbone(model, batch, keep_bottom_up="res4")) == ["res4", *pyramid]
    assert list(model(batch, keep_bottom_up=["stem", "res5"])) == ["stem", "res5", *pyramid]
    stages = "use any of stem, res2, res3, res4, res5"
    for keep, said in [(("res9",), " 'res9'"), (("res2", "Res4", 4), "s 'Res4', 4"),
                       ("res2res3", " 'res2res3'")]:  # fmt: skip
        message = f"^unknown bottom-up stage{said} in keep_bottom_up: {stages}$"
        with pytest.raises(ValueError, match=message):
            run_backbone(model, batch, keep_bottom_up=keep)
        with pytest.raises(ValueError, match=message):
            model(batch, keep_bottom_up=keep)
    model.keep_bottom_up = ("res9",)
    with pytest.raises(ValueError, match="^unknown bottom-up stage 'res9' in keep_bottom_up: "):
        run_backbone(model, batch)
    with pytest.raises(TypeError, match="^keep_bottom_up must be stage names .*, got int$"):
        run_backbone(model, batch, keep_bottom_up=4)


def test_arguments_of_the_wrong_kind_are_refused_naming_them():
    """``check_precision("fp32", "auto")`` raised torch's RuntimeError, though "auto" is the
    API's own device name; a weights name where the model goes (``extract_features(img,
    "random")``) raised AttributeError ('str' object has no attribute 'parameters'); a
    ``min_size`` of "64" or None a TypeError from a comparison; ``seed="1"`` numpy's cast error.
    Each is a ValueError or TypeError naming the argument, before anything is read or run."""
    check_precision("fp32", "auto")
    with autocast_context("auto", "bf16"):
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="^unknown device 'gpu': use auto, cpu, cuda or cuda:N$"):
        check_precision("fp32", "gpu")
    with pytest.raises(TypeError, match=r"^device must be a str or a torch.device \(auto, cpu, "
                                        r"cuda or cuda:N\), got NoneType$"):  # fmt: skip
        autocast_context(None, "fp32")
    model = fpncli.load_backbone("random")
    rgb = np.zeros((40, 48, 3), np.uint8)
    said = "^model must be a backbone from fpncli.load_backbone, got "
    with pytest.raises(TypeError, match=re.escape("got str: load it first, model = "
                                                  "fpncli.load_backbone('random')")):  # fmt: skip
        fpncli.extract_features(rgb, "random")
    with pytest.raises(TypeError, match=f"{said}NoneType$"):
        fpncli.extract(rgb, None)
    with pytest.raises(TypeError, match=f"{said}str: "):
        run_backbone("random", model_input(rgb, DETECTRON2_INPUT, "cpu"))
    sizes = {"min_size": 64, "max_size": 96}
    for wrong, kind in [({"min_size": "64"}, "str"), ({"min_size": None}, "NoneType"),
                        ({"max_size": 96.0}, "float"), ({"min_size": True}, "bool")]:  # fmt: skip
        (name,) = wrong
        with pytest.raises(
            TypeError, match=f"^{name} must be a whole number of pixels, got {kind}$"
        ):
            fpncli.extract(rgb, model, **{**sizes, **wrong})
    assert fpncli.extract(rgb, model, min_size=np.int64(64), max_size=96).prepared.scale == 1.6
    with pytest.raises(ValueError, match="^need 0 < min_size <= max_size, got 64 and 32$"):
        fpncli.extract(rgb, model, min_size=64, max_size=32)
    for seed, kind, message in [
        ("1", TypeError, "seed must be a whole number, got str"),
        (None, TypeError, "seed must be a whole number, got NoneType"),
        (-1, ValueError, "seed must be between 0 and 2**32 - 1, got -1"),
    ]:
        with pytest.raises(kind, match=f"^{re.escape(message)}$"):
            fpncli.load_backbone("random", seed=seed)


def test_the_image_extracted_from_an_array_is_a_copy_of_it():
    """``extract(array, model).image.rgb`` was the caller's own array (a Pillow image's is a
    copy): filling it for the next frame changed the image of an extraction kept. It is a copy,
    C-contiguous, whatever the array's strides."""
    model = fpncli.load_backbone("random")
    rgb = np.random.RandomState(0).randint(0, 255, (40, 48, 3), np.uint8)
    for given in (rgb, rgb[:, ::-1]):
        kept = given.copy()
        extraction = fpncli.extract(given, model, min_size=64, max_size=96)
        assert not np.shares_memory(extraction.image.rgb, given)
        assert extraction.image.rgb.flags.c_contiguous
        rgb[:] = 0  # the next frame
        np.testing.assert_array_equal(extraction.image.rgb, kept)
        rgb[:] = kept if given is rgb else kept[:, ::-1]


def test_fp32_is_fp32_inside_a_callers_autocast():
    """A notebook's enclosing ``torch.autocast`` ran ``precision="fp32"`` in bf16 (features off
    by 1% of their range), and a model the user converted (``.double()``) in bf16 too; the
    caller's autocast is in force again after each call."""
    import copy

    model = fpncli.load_backbone("random")
    converted = copy.deepcopy(model).double()
    pixels = (np.random.RandomState(0).rand(64, 96, 3) * 255).astype(np.uint8)
    kwargs = {"min_size": 64, "max_size": 200}
    batch = model_input(pixels, model.weights_info.input, "cpu")
    expected = [fpncli.extract_features(pixels, model, **kwargs), run_backbone(model, batch),
                fpncli.extract_features(pixels, converted, **kwargs)]  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = [fpncli.extract_features(pixels, model, **kwargs), run_backbone(model, batch),
               fpncli.extract_features(pixels, converted, **kwargs)]  # fmt: skip
        with autocast_context("cpu", "fp32"):
            assert not torch.is_autocast_enabled("cpu")
        with autocast_context("cpu", "bf16"):
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    for want, have in zip(expected, got):
        assert list(have) == list(want)
        for name in want:
            assert have[name].dtype == want[name].dtype, name
            torch.testing.assert_close(have[name], want[name], rtol=0, atol=0)


def test_run_backbone_refuses_a_batch_that_is_not_float32():
    """A float64 or uint8 batch raised torch's "Input type (double) and bias type (float) should
    be the same"; a model the user converted takes float32 (as extract_features gives it) and
    its own dtype."""
    import copy

    model = fpncli.load_backbone("random")
    batch = model_input(np.zeros((64, 96, 3), np.uint8), model.weights_info.input, "cpu")
    refused = r"^run_backbone takes a float32 batch, normalized and padded as fpncli.api."
    for dtype in (torch.float64, torch.uint8, torch.float16):
        with pytest.raises(ValueError, match=rf"{refused}model_input makes it, got {dtype}$"):
            run_backbone(model, batch.to(dtype))
    converted = copy.deepcopy(model).double()
    expected = run_backbone(converted, batch)
    assert expected["p2"].dtype == torch.float64
    for name, level in run_backbone(converted, batch.double()).items():
        torch.testing.assert_close(level, expected[name], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"float32 batch \(or torch.float64, the model's\)"):
        run_backbone(converted, batch.half())


_NOT_RGB8 = r"^expected an \(H, W, 3\) uint8 RGB array, got "


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((8, 8, 3)), _NOT_RGB8 + r"float64 \(8, 8, 3\)$"),  # 0..1 floats came out black
        (np.full((8, 8, 3), 300, np.int16), _NOT_RGB8 + r"int16 \(8, 8, 3\)$"),  # 300 became 44
        (np.zeros((8, 8, 4), np.uint8), _NOT_RGB8 + r"uint8 \(8, 8, 4\)$"),
        (np.zeros((8, 8), np.uint8), _NOT_RGB8 + r"uint8 \(8, 8\)$"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)], _NOT_RGB8 + "float32"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), _NOT_RGB8 + "Tensor$"),
        ([], "^model_input needs at least one image, got none$"),
    ],
    ids=["float", "int16", "rgba", "gray", "one-of-two", "tensor", "empty"],
)
def test_model_input_refuses_what_is_not_uint8_rgb(pixels, message):
    """Only ``(H, W, 3)`` uint8 arrays are taken, in ``resize_for_model``'s words: a float or
    int16 image had been cast to uint8 silently (wrong pixels), the others failed in numpy's
    broadcasting or ``max()`` of an empty list."""
    with pytest.raises(ValueError, match=message):
        model_input(pixels, DETECTRON2_INPUT, torch.device("cpu"))


def test_extract_takes_a_pillow_image_and_refuses_other_types(tmp_path):
    """A Pillow image is extracted as its pixels are (it had failed on ``.rgb``, as a torch
    tensor and None did): anything but a path, an array, a Pillow image or a LoadedImage is a
    TypeError saying what is taken."""
    model = fpncli.load_backbone("random")
    rgb = np.random.RandomState(0).randint(0, 255, (40, 48, 3), np.uint8)
    kwargs = {"min_size": 64, "max_size": 96}
    want = fpncli.extract_features(rgb, model, **kwargs)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as pil:
        got = fpncli.extract(pil, model, **kwargs)
    assert got.features.keys() == want.keys()
    for name, level in want.items():
        assert torch.equal(got.features[name], level), name
    np.testing.assert_array_equal(got.image.rgb, rgb)
    taken = "a file path, an (H, W, 3) uint8 RGB numpy array, a Pillow image or a LoadedImage"
    for image, kind in [(torch.from_numpy(rgb), "Tensor"), (None, "NoneType"), ([rgb], "list")]:
        with pytest.raises(TypeError, match=rf"^image must be {re.escape(taken)}, got {kind}$"):
            fpncli.extract_features(image, model, **kwargs)


def test_load_backbone_checks_every_device(monkeypatch):
    """A ``torch.device`` is checked as its name is, before anything is loaded (cuda:7 had
    raised torch's AssertionError, 'meta' was taken and 0 raised a RuntimeError)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda:7", torch.device("cuda:7")):
        with pytest.raises(ValueError, match="^device 'cuda:7' asked for, but CUDA is not avai"):
            fpncli.load_backbone("random", device=device)
    with pytest.raises(ValueError, match="^unsupported device 'meta': use auto, cpu, cuda or"):
        fpncli.load_backbone("random", device=torch.device("meta"))
    with pytest.raises(TypeError, match=r"^device must be a str or a torch\.device .*, got int$"):
        fpncli.load_backbone("random", device=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for device in ("cuda:7", torch.device("cuda", 7)):
        with pytest.raises(ValueError, match=r"^'cuda:7': only 2 CUDA device\(s\)$"):
            fpncli.load_backbone("no-such-file.pth", device=device)  # the device is checked first
    assert fpncli.api.resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert fpncli.load_backbone("random", device=torch.device("cpu")).weights_info.random


def test_extract_expands_the_users_folder(tmp_path, monkeypatch):
    """``~/x.png`` is read from the home folder, as ``load_backbone("~/w.pth")`` is (it had
    been looked for in a folder named ``~``); the extraction records the expanded path."""
    monkeypatch.setenv("HOME", str(tmp_path))
    rgb = np.random.RandomState(0).randint(0, 255, (40, 48, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    model = fpncli.load_backbone("random")
    for image in ("~/x.png", Path("~/x.png")):
        got = fpncli.extract(image, model, min_size=64, max_size=96)
        assert got.image.path == str(tmp_path / "x.png")
        np.testing.assert_array_equal(got.image.rgb, rgb)


def test_load_backbone_takes_a_path_as_a_file(tmp_path, monkeypatch):
    """A ``Path`` is a checkpoint file, whatever its name (one without a .pkl/.pth/.pt suffix
    had raised "'PosixPath' is not iterable"): a missing one is said to be missing, even one
    named random or as a registry entry (no untrained network, no download)."""
    from fpncli.weights.synthetic import seeded_state_dict, write_detectron2_pkl

    monkeypatch.chdir(tmp_path)
    for missing in ("nope", "random", "faster_rcnn_R_50_FPN_3x", str(tmp_path / "nope")):
        with pytest.raises(FileNotFoundError, match=f"^weights file not found: {missing}$"):
            fpncli.load_backbone(Path(missing))
    write_detectron2_pkl(tmp_path / "random", seeded_state_dict(0))
    model = fpncli.load_backbone(Path("random"))
    assert not model.weights_info.random and model.weights_info.path == "random"


def test_extracts_refusals_of_the_resize_name_its_arguments():
    """The refusal of an image too thin for the resize named the CLI's --max-size and
    --no-resize from ``fpncli.extract`` too (and canvas auto's, --min-size/--max-size): the API
    names its arguments, resize_for_model's default the CLI's options, as before."""
    from fpncli.io.preprocess import resize_for_model

    model = fpncli.load_backbone("random")
    row = np.zeros((1, 300, 3), np.uint8)  # its short side resized to 32/9600 of a pixel: 0
    with pytest.raises(ValueError) as refused:
        fpncli.extract(row, model, min_size=32, max_size=64)
    assert str(refused.value) == (
        "a 300x1 image would be resized to 64x0: its aspect ratio is too extreme for max_size 64 "
        "(raise it, or resize=False)"
    )
    with pytest.raises(ValueError, match=r"too extreme for --max-size 64 \(raise it, or --no-re"):
        resize_for_model(row, DETECTRON2_INPUT, min_size=32, max_size=64)
    with pytest.raises(ValueError) as refused:
        fpncli.extract(np.zeros((8, 8, 3), np.uint8), model, resize=False, canvas="auto")
    assert str(refused.value) == (
        "canvas auto picks a canvas from the resize's min_size/max_size: without the resize give "
        "a fixed canvas WxH"
    )


def test_extract_checks_max_pixels_first_and_none_is_no_limit(tmp_path, monkeypatch):
    """``max_pixels=None`` broke every later image load in the process (it stayed in the loads
    in progress and Pillow's limit raised TypeError). None is no limit, as resize_for_model
    took it already; a value neither a whole number nor None is refused before anything is
    read, and leaves nothing behind."""
    from fpncli.io import pillow_open

    rgb = np.random.RandomState(0).randint(0, 255, (40, 48, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    model = fpncli.load_backbone("random")
    kwargs = {"min_size": 64, "max_size": 96}
    before = Image.MAX_IMAGE_PIXELS
    expected = fpncli.extract_features(tmp_path / "a.png", model, **kwargs)
    seen = []
    real = pillow_open.open_regular

    def recording(*args):  # inside the load: Pillow's own limit
        seen.append(Image.MAX_IMAGE_PIXELS)
        return real(*args)

    monkeypatch.setattr(pillow_open, "open_regular", recording)
    for image in (tmp_path / "a.png", rgb):
        features = fpncli.extract_features(image, model, max_pixels=None, **kwargs)
        assert all(torch.equal(features[k], expected[k]) for k in expected)
    assert seen == [None]  # Pillow's bomb check off for the path's load
    bad = {0: (ValueError, "max_pixels must be at least 1 (None: no limit), got 0"),
           -5: (ValueError, "max_pixels must be at least 1 (None: no limit), got -5"),
           1.5e6: (TypeError, "max_pixels must be a whole number of pixels, or None for no "
                              "limit, got float"),
           "89MP": (TypeError, "got str"), True: (TypeError, "got bool")}  # fmt: skip
    for value, (kind, message) in bad.items():
        for image in (tmp_path / "a.png", rgb):
            with pytest.raises(kind, match=re.escape(message)):
                fpncli.extract(image, model, max_pixels=value, **kwargs)
    assert fpncli.extract(rgb, model, max_pixels=np.int64(6144), **kwargs).image.rgb.shape
    features = fpncli.extract_features(tmp_path / "a.png", model, **kwargs)  # still loads
    assert all(torch.equal(features[k], expected[k]) for k in expected)
    assert pillow_open._loads == [] and Image.MAX_IMAGE_PIXELS == before


def test_extract_takes_max_pixels_and_names_it_as_the_api_does(tmp_path):
    """``max_pixels`` reaches both checks, the file's size before decoding and the resized,
    padded size, and their messages name it, not the CLI's --max-pixels (which extract had no
    way to raise: even a LoadedImage read with a higher limit was refused at the resize)."""
    rgb = np.random.RandomState(0).randint(0, 255, (40, 48, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    model = fpncli.load_backbone("random")
    kwargs = {"min_size": 64, "max_size": 96}  # resized to 64x77, padded to 64x96: 6,144 pixels
    with pytest.raises(ValueError) as refused:
        fpncli.extract(tmp_path / "a.png", model, max_pixels=1000, **kwargs)
    assert str(refused.value) == (
        f"{tmp_path / 'a.png'}: 48x40 is 1,920 pixels, over the 1,000 pixels limit (a "
        "decompression bomb?); raise max_pixels if you trust this file"
    )
    with pytest.raises(ValueError) as refused:
        fpncli.extract(tmp_path / "a.png", model, max_pixels=6000, **kwargs)
    assert str(refused.value) == (
        "resized to 77x64 it would be 6,144 pixels, over the 6,000 pixels limit: lower "
        "min_size/max_size or raise max_pixels"
    )
    assert fpncli.extract(tmp_path / "a.png", model, max_pixels=6144, **kwargs).image.rgb.shape
    with pytest.raises(ValueError, match="over the 4,000 pixels limit: raise max_pixels$"):
        fpncli.extract(rgb, model, resize=False, max_pixels=4000)  # padded to 64x64: 4,096
    features = fpncli.extract_features(rgb, model, resize=False, max_pixels=4096)
    assert features["p2"].shape == (1, 256, 16, 16)
