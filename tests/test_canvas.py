"""``--canvas auto|WxH``: every image padded to a fixed canvas, as Detectron2 pads a batch.
Small images, a seeded random R-50."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import fpncli
from fpncli.api import run_backbone
from fpncli.cli import cli
from fpncli.io.canvas import auto_canvases, canvas_for, check_canvas, parse_canvas
from fpncli.io.image_load import load_image
from fpncli.io.manifest import read_manifest
from fpncli.io.outputs import OutputOptions
from fpncli.io.preprocess import normalize_and_pad, resize_for_model, to_color_order
from fpncli.io.run_keys import run_key
from fpncli.run.pipeline import Job, RunOptions, run_jobs

SMALL = OutputOptions(min_size=64, max_size=128, save_heatmaps=False, save_overview=False)
LEVELS = ("p2", "p3", "p4", "p5", "p6")
# (width, height) -> resized with 64/128: 96x64, 107x64 (landscape), 64x100 (portrait)
SIZES = {"a": (96, 64), "b": (80, 48), "c": (64, 100)}


@pytest.fixture(scope="module")
def model():
    return fpncli.load_backbone("random")


def _images(folder: Path, names: str = "abc") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        width, height = SIZES[name]
        rgb = np.random.RandomState(i).randint(0, 255, (height, width, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    return paths


def _reference_input(path: Path, model, pad_to: tuple[int, int]) -> torch.Tensor:
    """The numpy reference: resized, normalized, zero-padded right and bottom to ``pad_to``."""
    fmt = model.weights_info.input
    pixels, _ = resize_for_model(load_image(path).rgb, fmt, min_size=64, max_size=128)
    return torch.from_numpy(normalize_and_pad(to_color_order(pixels, fmt.color_order), fmt,
                                              pad_to=pad_to))  # fmt: skip


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.abs(a - b).max() <= 1e-5 * np.abs(b).max())


def test_parse_and_pick_canvases():
    assert parse_canvas(None) is None
    assert parse_canvas(" AUTO ") == "auto"
    assert parse_canvas("1344X800") == "1344x800"
    for bad, match in (("100x7", r"multiples of 32 \(e.g. 128x32\)"), ("0x32", "positive"),
                       ("1344", "use auto or WxH"), ("axb", "use auto or WxH")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            parse_canvas(bad)
    assert auto_canvases(800, 1333) == ((800, 1344), (1344, 800))  # 1344x800 and 800x1344 (WxH)
    assert canvas_for(800, 1067, "auto", min_size=800, max_size=1333) == (800, 1344)
    assert canvas_for(800, 800, "auto", min_size=800, max_size=1333) == (800, 1344)
    assert canvas_for(1333, 750, "auto", min_size=800, max_size=1333) == (1344, 800)
    assert canvas_for(64, 96, "160x96", min_size=64, max_size=128) == (96, 160)
    with pytest.raises(ValueError, match="does not fit the canvas 96x64: .* at least 128x64"):
        canvas_for(64, 107, "96x64", min_size=64, max_size=128)
    with pytest.raises(ValueError, match="holds no image"):
        check_canvas("32x32", min_size=64, max_size=128, resize=True)
    # a side of min_size is not enough: the other must be too (or one side max_size)
    with pytest.raises(ValueError, match="both sides at least 800 .e.g. 800x800., or one side"):
        check_canvas("800x640", min_size=800, max_size=1333, resize=True)
    with pytest.raises(ValueError, match="holds no image"):
        check_canvas("64x32", min_size=64, max_size=96, resize=True)
    check_canvas("1344x32", min_size=800, max_size=1333, resize=True)  # a wide panorama fits
    check_canvas("32x1344", min_size=800, max_size=1333, resize=True)  # a tall one
    check_canvas("800x800", min_size=800, max_size=1333, resize=True)  # a square photo
    with pytest.raises(ValueError, match="without the resize"):
        check_canvas("auto", min_size=64, max_size=128, resize=False)
    check_canvas("32x32", min_size=64, max_size=128, resize=False)  # no resize: image by image
    with pytest.raises(ValueError, match="over the 1,000 pixels limit"):
        RunOptions(output=replace(SMALL, canvas="auto"), max_pixels=1000)


def test_canvas_npy_equal_detectron2_batched_inference(tmp_path, model):
    """Each image's ``.npy`` covers the whole canvas and equals the model's output for the batch
    Detectron2 makes when the canvas is the batch's largest size; statistics and maps stay on the
    valid region; the manifest records the canvas."""
    paths = _images(tmp_path / "in", "ab")
    canvas = (96, 160)  # (height, width): larger than both images' own padded sizes
    output = replace(SMALL, canvas="160x96", save_heatmaps=True)
    jobs = [Job(p, tmp_path / "out" / p.stem) for p in paths]
    assert run_jobs(jobs, model, RunOptions(output=output, batch_size=2)).done == 2
    batch = torch.stack([_reference_input(p, model, canvas) for p in paths])
    expected = run_backbone(model, batch)  # ImageList.from_tensors, then the backbone
    for i, job in enumerate(jobs):
        manifest = read_manifest(job.folder)
        pre = manifest["preprocess"]
        assert pre["canvas"] == "160x96"
        assert (pre["padded_width"], pre["padded_height"]) == (160, 96)
        assert (pre["resized_width"], pre["resized_height"]) == ((96, 64), (107, 64))[i]
        for name in LEVELS:
            saved = np.load(job.folder / f"{name}.npy")
            stride = manifest["levels"][name]["stride"]
            assert saved.shape == (1, 256, -(-96 // stride), -(-160 // stride))
            assert _close(saved[0], expected[name][i].numpy()), name
            meta = manifest["levels"][name]
            valid = saved[..., : meta["valid_height"], : meta["valid_width"]]
            assert meta["valid_width"] == -(-pre["resized_width"] // stride)
            assert (meta["min"], meta["max"]) == (float(valid.min()), float(valid.max()))
        with Image.open(job.folder / "p3.png") as im:  # heatmap of the valid region only
            assert im.size[0] < 2 * im.size[1] * (160 / 96)  # not stretched to the canvas
    # the library function pads the same way
    features = fpncli.extract(paths[0], model, min_size=64, max_size=128, canvas="160x96").features
    assert _close(features["p3"][0].numpy(), np.load(jobs[0].folder / "p3.npy")[0])
    # and the canvas does change the values: single-image inference pads less
    single = fpncli.extract(paths[0], model, min_size=64, max_size=128).features["p3"].numpy()
    on_canvas = np.load(jobs[0].folder / "p3.npy")[..., :8, :12]
    assert single.shape == (1, 256, 8, 12) and not _close(on_canvas, single)


def test_mixed_sizes_share_one_fixed_batch_shape(tmp_path, model):
    """With --canvas auto, images of different sizes go into one batch of the canvas's shape;
    without a canvas each padded size has its own batches (single-image parity)."""
    paths = _images(tmp_path / "in")
    shapes: list[tuple[int, ...]] = []
    hook = model.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    try:
        for canvas, pad in ((None, False), ("auto", False), ("auto", True)):
            shapes.clear()
            output = replace(SMALL, canvas=canvas, levels=("p3",))
            jobs = [Job(p, tmp_path / f"out-{canvas}-{pad}" / p.stem) for p in paths]
            options = RunOptions(output=output, batch_size=2, pad_batches=pad)
            assert run_jobs(jobs, model, options).done == 3
            if canvas is None:
                assert sorted(shapes) == [(1, 3, 64, 96), (1, 3, 64, 128), (1, 3, 128, 64)]
            else:  # a (96x64) and b (107x64) in one batch on 128x64; c (portrait) on 64x128
                size = 2 if pad else 1
                assert sorted(shapes) == sorted([(size, 3, 128, 64), (2, 3, 64, 128)])
                for job, padded in zip(jobs, ((64, 128), (64, 128), (128, 64))):
                    pre = read_manifest(job.folder)["preprocess"]
                    assert (pre["padded_height"], pre["padded_width"]) == padded
    finally:
        hook.remove()


def test_run_key_without_canvas_is_unchanged_and_with_it_differs(tmp_path):
    import hashlib
    import os

    path = _images(tmp_path, "a")[0]
    weights = {"name": "random", "sha256": None, "seed": 0}
    stat = path.stat()
    options = asdict(SMALL)
    del options["canvas"]  # what the key hashed before canvases existed: old folders resume
    material = {
        "input": [os.path.realpath(path), stat.st_size, stat.st_mtime_ns],
        "weights": ["random", None, 0], "precision": "fp32", "options": options,
    }  # fmt: skip
    old = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]
    assert run_key(path, SMALL, weights, "fp32") == old
    assert run_key(path, replace(SMALL, canvas="auto"), weights, "fp32") != old


def _extract(args: list[str]):
    small = ["--weights", "random", "--min-size", "64", "--max-size", "128", "--workers", "1"]
    return CliRunner().invoke(cli, ["extract", *args, *small])


@pytest.mark.parametrize(
    ("value", "extra", "message"),
    [
        ("100x7", [], "canvas 100x7: width and height must be positive multiples of 32"),
        ("1344", [], "use auto or WxH"),
        ("32x32", [], "canvas 32x32 holds no image resized to a shortest edge of 64"),
        (
            "auto",
            ["--no-resize"],
            "canvas auto picks a canvas from the resize's --min-size/--max-size: without the "
            "resize give a fixed canvas WxH",
        ),
        ("1344x800", ["--max-pixels", "1000000"], "over the 1.0 MP limit"),
        (
            "1344x800",
            ["--max-pixels", "1000"],
            "1.1 MP, over the 1,000 pixels limit: use a smaller canvas or raise --max-pixels",
        ),
    ],
)
def test_cli_refuses_bad_canvases_up_front(tmp_path, value, extra, message):
    out = tmp_path / "out"
    result = _extract([str(tmp_path), "-o", str(out), "--canvas", value, *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()  # nothing made before the options were checked


def test_extracts_max_pixels_limits_the_canvas_and_is_named_as_the_api_does(model):
    """extract's ``max_pixels`` limits the padded size, the canvas's with a canvas (its
    docstring said so, but a 512x512 canvas passed a 10,000-pixel limit): named max_pixels."""
    rgb = np.zeros((64, 96, 3), np.uint8)  # resized to 32x48, padded to 32x64: 2,048 pixels
    kwargs = {"min_size": 32, "max_size": 64, "max_pixels": 10_000}
    with pytest.raises(ValueError) as refused:
        fpncli.extract(rgb, model, canvas="512x512", **kwargs)
    assert str(refused.value) == (
        "the canvas 512x512 is 262,144 pixels, over the 10,000 pixels limit: use a smaller "
        "canvas or raise max_pixels"
    )
    with pytest.raises(ValueError, match=r"^the canvas 64x32 is 2,048 pixels, .* raise max_pi"):
        fpncli.extract(rgb, model, canvas="auto", **{**kwargs, "max_pixels": 2000})
    extraction = fpncli.extract(rgb, model, canvas="64x64", **kwargs)  # 4,096 pixels
    assert (extraction.prepared.padded_height, extraction.prepared.padded_width) == (64, 64)


def test_refusals_without_the_resize_suggest_only_what_extract_takes_there(model, tmp_path):
    """Without the resize the image was "resized to 96x64" and the way out was "lower
    --min-size/--max-size" or "--canvas auto", both refused with --no-resize: now only the
    limit or a larger canvas; with the resize, the API names canvas="auto", not the CLI's."""
    rgb = np.zeros((64, 96, 3), np.uint8)
    with pytest.raises(ValueError) as refused:
        fpncli.extract(rgb, model, resize=False, canvas="32x32")
    assert str(refused.value) == (
        "at 96x64 (not resized), the image does not fit the canvas 32x32: give a canvas of at "
        "least 96x64"
    )
    with pytest.raises(ValueError) as refused:
        fpncli.extract(rgb, model, min_size=64, max_size=128, canvas="160x32")
    assert str(refused.value).endswith('give a canvas of at least 96x64, or canvas="auto"')
    Image.fromarray(rgb[4:, 6:]).save(tmp_path / "a.png")  # 90x60: padded to 96x64
    out = tmp_path / "out"
    args = ["extract", str(tmp_path / "a.png"), "-o", str(out), "--weights", "random"]
    for extra, message in (
        (["--canvas", "32x32"], "a.png: at 90x60 (not resized), the image does not fit the "
         "canvas 32x32: give a canvas of at least 96x64\n"),
        (["--max-pixels", "6000"], "a.png: at 90x60 (not resized) it would be 6,144 pixels, "
         "over the 6,000 pixels limit: raise --max-pixels\n"),
    ):  # fmt: skip
        result = CliRunner().invoke(cli, [*args, "--no-resize", *extra])
        assert result.exit_code == 1 and message in result.output, result.output


def test_cli_image_larger_than_the_canvas_fails_alone(tmp_path):
    _images(tmp_path / "in", "ab")
    out = tmp_path / "out"
    result = _extract(
        [
            str(tmp_path / "in"),
            "-o",
            str(out),
            "--canvas",
            "96x64",
            "--no-overview",
            "--levels",
            "p3",
        ]
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if "does not fit" in line]
    assert len(lines) == 1 and "b.png" in lines[0]
    assert "resized to 107x64, the image does not fit the canvas 96x64" in lines[0]
    assert read_manifest(out / "a")["preprocess"]["canvas"] == "96x64"
    assert read_manifest(out / "b") is None


def test_wds_shards_carry_the_canvas(tmp_path):
    pytest.importorskip("pyarrow.parquet", reason="--format wds needs pyarrow (fpncli[wds])")
    pytest.importorskip("fsspec", reason="--format wds needs fsspec (fpncli[wds])")
    _images(tmp_path / "in", "ac")
    out = tmp_path / "wds"
    args = [str(tmp_path / "in"), "-o", str(out), "--format", "wds", "--canvas", "auto"]
    result = _extract([*args, "--no-heatmaps", "--no-overview", "--levels", "p3"])
    assert result.exit_code == 0, result.output
    members = {}
    for shard in out.glob("shard-*.tar"):
        with tarfile.open(shard) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    for key, (height, width) in (("a", (64, 128)), ("c", (128, 64))):
        manifest = json.loads(members[f"{key}.json"])
        assert manifest["preprocess"]["canvas"] == "auto"
        assert np.load(io.BytesIO(members[f"{key}.p3.npy"])).shape == (1, 256, height // 8,
                                                                        width // 8)  # fmt: skip


def test_diff_compares_a_canvas_run_with_a_single_image_run(tmp_path, model):
    """Only valid regions are compared, so the padded size may differ: the diff shows what the
    canvas changes (the cells near the right and bottom edge)."""
    from fpncli.viz.diff import diff_extractions

    path = _images(tmp_path / "in", "a")[0]
    for name, canvas in (("single", None), ("canvas", "160x96")):
        output = replace(SMALL, canvas=canvas, levels=("p3",))
        assert run_jobs([Job(path, tmp_path / name / "a")], model, RunOptions(output=output)).done
    same = diff_extractions(tmp_path / "single", tmp_path / "single")
    result = diff_extractions(tmp_path / "single", tmp_path / "canvas")
    assert same.agree and [i.skipped for i in result.images] == [None]
    (p3,) = result.images[0].levels
    assert p3.level == "p3" and 1e-4 < p3.max_rel and p3.cosine > 0.5
    assert not result.agree


@pytest.mark.parametrize(
    ("changes", "precision", "weights"),
    [
        ({"canvas": "auto"}, "fp32", {"name": "random", "sha256": None, "seed": 0}),
        ({"levels": ("p3", "p6"), "dtype": "float16"}, "bf16",
         {"name": "x", "sha256": "ab" * 32, "seed": None}),
        ({"extra": {"note": "é", "n": [1, 2]}, "clip": (2.0, 98.0)}, "fp16",
         {"name": "ü", "sha256": None, "seed": 3}),
    ],
)  # fmt: skip
def test_run_key_is_the_digest_of_the_sorted_json_of_its_material(
    tmp_path, changes, precision, weights
):
    """run_key builds its JSON in parts (the options' part once per options object): it must
    equal the digest of json.dumps(material, sort_keys=True), which earlier versions wrote."""
    import hashlib
    import os

    path = _images(tmp_path / "é", "a")[0]
    options = replace(SMALL, **changes)
    chosen = asdict(options)
    if chosen["canvas"] is None:
        del chosen["canvas"]
    if not (options.save_heatmaps or options.save_overview or options.overlay):
        # nothing drawn (SMALL): how maps would be drawn does not count, as if the defaults
        chosen.update(channel=0, reduce="channel", cmap="viridis", clip=[1.0, 99.0])
    stat = path.stat()
    material = {
        "input": [os.path.realpath(path), stat.st_size, stat.st_mtime_ns],
        "weights": [weights["name"], weights["sha256"], weights["seed"]],
        "precision": precision, "options": chosen,
    }  # fmt: skip
    expected = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]
    assert run_key(path, options, weights, precision) == expected
    assert run_key(path, options, weights, precision) == expected  # from the cached part
    other = replace(options, min_size=options.min_size + 32)  # a new object: its own part
    assert run_key(path, other, weights, precision) != expected
