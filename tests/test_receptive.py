"""Receptive fields: interval arithmetic and the gradient on small known networks, then the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import fpncli
from fpncli.cli import cli
from fpncli.run.receptive import (
    ReceptiveField,
    conv,
    effective_rf,
    identity,
    trf_functions,
    union,
    upsample2,
)


def test_interval_arithmetic_known_answers():
    two_3x3 = conv(conv(identity(), 3, 1, 1), 3, 1, 1)
    assert two_3x3(10) == (8, 12)  # 5 pixels
    two_strided = conv(conv(identity(), 3, 2, 1), 3, 2, 1)
    assert two_strided(0) == (-3, 3) and two_strided(5) == (17, 23)  # 7 pixels, jump 4
    dilated = conv(identity(), 3, 1, 2, dilation=2)
    assert dilated(4) == (2, 6)
    up = upsample2(conv(identity(), 3, 2, 1))  # cells 4 and 5 both come from cell 2
    assert up(4) == up(5) == (3, 5)
    assert union(two_3x3, identity())(10) == (8, 12)


def test_trf_of_the_real_stem_and_pyramid():
    model = fpncli.load_backbone("random")
    f = trf_functions(model)
    # 7x7 stride-2 conv (padding 3), then 3x3 stride-2 max-pool (padding 1): 11 pixels, jump 4
    assert f["stem"](0) == (-5, 5) and f["stem"](3) == (7, 17)
    sizes = {n: f[n](8)[1] - f[n](8)[0] + 1 for n in ("stem", "res2", "res3", "res4", "res5")}
    assert sizes["stem"] < sizes["res2"] < sizes["res3"] < sizes["res4"] < sizes["res5"]
    # through the top-down path every pyramid level sees at least what res5 sees
    for name in ("p2", "p3", "p4", "p5"):
        lo, hi = f[name](3)
        assert hi - lo + 1 >= sizes["res5"]
    assert f["p6"](2) == f["p5"](4)  # P6 is P5 subsampled by 2


def test_erf_of_two_uniform_convolutions():
    first = nn.Conv2d(3, 1, 3, padding=1, bias=False)
    second = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    for layer in (first, second):
        nn.init.ones_(layer.weight)
    net = nn.Sequential(first, second)
    maps = effective_rf(lambda x: {"a": net(x)}, torch.rand(1, 3, 9, 9), {"a": (4, 5)})
    expected = np.zeros((9, 9), np.float32)
    tri = np.array([1, 2, 3, 2, 1], np.float32)
    expected[2:7, 3:8] = np.outer(tri, tri) / 9.0
    np.testing.assert_allclose(maps["a"], expected, atol=1e-6)
    field = ReceptiveField("a", 1, (4, 5), (2, 6, 3, 7), maps["a"])
    assert field.trf_size == (5, 5) and field.erf_extent(1.0) == 5
    from fpncli.viz.receptive import field_captions

    # the network saw the photo enlarged 2.5x: the captions give the photo's pixels
    # 5 high, 10 wide (centred on column 8: the ERF's columns 3..7 take a 10-pixel square)
    wide = ReceptiveField("a", 1, (4, 5), (2, 6, 3, 12), maps["a"])
    assert field_captions(wide, 2.5, 2.5)[1:] == [
        "theoretical RF 4x2 photo px (yellow)",
        "effective RF: 90% within 4 photo px (red)",
    ]
    from fpncli.viz.receptive import field_summary

    # the terminal gives the picture's photo pixels and, labelled, the network's
    assert field_summary(wide, 2.5, 2.5) == (
        "a: cell (row 4, col 5), theoretical RF 4x2 photo px (10x5 network px), "
        "effective RF 90% within 4 photo px (10 network px)"
    )


def test_erf_mass_levels_shade_the_area_holding_90_percent():
    from fpncli.viz.receptive import erf_mass_levels

    # total 10: the 5 holds half, 5 and 3 hold 80%, and the 2 completes the 90%
    levels = erf_mass_levels(np.array([[5.0, 0.0], [3.0, 2.0]]))
    np.testing.assert_allclose(levels, [[1 - 0.5 / 0.9, 0.0], [1 - 0.8 / 0.9, 0.0]], atol=1e-6)
    assert not erf_mass_levels(np.zeros((2, 2))).any()
    # a wide floor under one sharp peak (an ERF): most of the mass, so most of the area, is lit
    erf = np.full((20, 20), 0.01)
    erf[10, 10] = 1.0
    lit = erf_mass_levels(erf) > 0
    assert lit[10, 10] and lit.sum() > 300 and (erf / erf.max() > 0.05).sum() == 1


def test_receptive_field_picture_has_a_legend_and_a_visible_erf():
    from fpncli.viz.receptive import receptive_field_image

    erf = np.zeros((32, 32), np.float32)
    erf[8:24, 8:24] = 0.02  # a low floor: drawn by value it was near black, barely blended
    erf[16, 16] = 1.0
    field = ReceptiveField("p2", 4, (4, 4), (0, 31, 0, 31), erf)
    photo = np.full((32, 32, 3), 200, np.uint8)
    picture = receptive_field_image(photo, [field], resized=(32, 32), scale=(1.0, 1.0),
                                    at=(17.0, 17.0), panel_height=32)  # fmt: skip
    panel = picture[6 + 66 : 6 + 66 + 32, 10 : 10 + 32].astype(int)  # header 6, captions 66
    dimmed = 200 * 0.6
    assert abs(panel[2, 2] - dimmed).max() <= 1  # outside the ERF: the dimmed photo
    assert (np.abs(panel - dimmed).max(axis=2) > 30)[9:23, 9:23].mean() > 0.5  # the ERF area
    legend = picture[6 + 66 + 32 :].astype(int)
    assert ((legend == (0, 255, 255)).all(axis=2)).any()  # the cyan cross's swatch
    assert ((legend == (255, 230, 0)).all(axis=2)).any()  # the yellow box's
    assert ((legend == (255, 60, 60)).all(axis=2)).any()  # the red square's


def test_the_legend_of_a_one_level_picture_wraps_inside_it():
    """One level (--level p3) of a square photo is a 320-pixel picture: the ERF's legend line,
    about 500 pixels long, ran off its right edge."""
    from fpncli.viz.receptive import receptive_field_image

    erf = np.zeros((32, 32), np.float32)
    erf[16, 16] = 1.0
    field = ReceptiveField("p2", 4, (4, 4), (0, 31, 0, 31), erf)
    picture = receptive_field_image(np.full((32, 32, 3), 200, np.uint8), [field],
                                    resized=(32, 32), scale=(1.0, 1.0), at=(17.0, 17.0),
                                    panel_height=32)  # fmt: skip
    legend = picture[6 + 66 + 32 :]
    ink = (legend < 200).any(axis=2)
    assert picture.shape[1] == 320 and ink.any()
    assert not ink[:, -8:].any()  # inside the right margin: nothing cut off


def test_erf_lies_inside_the_trf_on_the_real_model():
    model = fpncli.load_backbone("random", fold_bn=False, channels_last=False)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cells = {"p3": (5, 6), "res3": (3, 2)}
    model.keep_bottom_up = ("res3",)
    maps = effective_rf(model, x, cells, reduce="mean")
    functions = trf_functions(model)
    for name, (row, col) in cells.items():
        top, bottom, left, right = functions[name](row) + functions[name](col)
        ys, xs = np.nonzero(maps[name])
        assert ys.size > 0 and maps[name].max() == 1.0
        assert ys.min() >= top and ys.max() <= bottom and xs.min() >= left and xs.max() <= right


def test_the_erf_square_is_centred_on_the_theoretical_field():
    """The stem's cell 2 sees pixels 3..13 (centre 8, not the cell's 2.5 x 4 = 10): an ERF
    filling that 11x11 box is 11 across (centred on the cell it read 14, over the 11 theoretical
    pixels)."""
    erf = np.zeros((32, 32), np.float32)
    erf[3:14, 3:14] = 1.0
    field = ReceptiveField("stem", 4, (2, 2), (3, 13, 3, 13), erf)
    assert field.erf_extent(0.9) == 11 and field.erf_extent(1.0) == 11
    assert field.centre == (8.5, 8.5) and field.trf_size == (11, 11)
    assert field.erf_square(1.0) == (3.0, 13.0, 3.0, 13.0)
    noisy = erf.copy()
    noisy[30, 30] = 1e-3  # rounding outside the box (FFT or Winograd kernels) is not counted
    assert ReceptiveField("stem", 4, (2, 2), (3, 13, 3, 13), noisy).erf_extent(1.0) == 11


def test_effective_fields_stay_inside_the_theoretical_ones_on_the_real_model(tmp_path):
    """The stem's and res2's cells near a corner and P5 and P6 at cell 0: the ERF's square lies
    within the theoretical box, and P6's cell 0 (P5's cell 0 subsampled: the same values) has
    P5's extent (the square centred on each cell gave P5 94 px, P6 64)."""
    from fpncli.run.receptive import receptive_fields

    model = fpncli.load_backbone("random", fold_bn=False, channels_last=False)
    photo = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "a.png")
    levels = ["stem", "res2", "p5", "p6"]
    for at in ((50, 30), (10, 10)):
        _, _, fields = receptive_fields(tmp_path / "a.png", model, at, levels, reduce="l2",
                                        min_size=64, max_size=96)  # fmt: skip
        sides = {f.level: (f.erf_extent(0.9), max(f.trf_size)) for f in fields}
        assert all(0 < side <= trf for side, trf in sides.values()), (at, sides)
        for field in fields:
            top, bottom, left, right = field.trf
            square = field.erf_square(0.9)
            assert top <= square[0] and square[1] <= bottom, (at, field.level, square)
            assert left <= square[2] and square[3] <= right, (at, field.level, square)
    p5, p6 = fields[2:]  # at 10,10
    assert p5.cell == p6.cell == (0, 0) and p5.trf == p6.trf
    assert p6.erf_extent() == p5.erf_extent()


def test_show_receptive_field_cli(sample_extraction, tmp_path):
    runner = CliRunner()
    save = tmp_path / "rf.png"
    args = ["show", str(sample_extraction / "coffee"), "--receptive-field", "--at", "100,60",
            "--level", "p3,p6", "--save", str(save)]  # fmt: skip
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "p3: cell (row" in result.output and "p6: cell" in result.output and save.is_file()
    assert "photo px (" in result.output and "network px)" in result.output
    assert "computing the receptive fields of p3, p6" in result.stderr  # before the wait
    # it reruns the network on the extraction's photo: --device and --max-pixels are taken
    small = runner.invoke(cli, [*args[:4], "100,60", "--level", "p6", "--device", "cpu",
                                "--max-pixels", "10"])  # fmt: skip
    assert small.exit_code == 1 and "over the 10 pixels limit" in small.output, small.output
    outside = runner.invoke(cli, [*args[:4], "9999,1"])
    assert outside.exit_code == 2 and "outside the image" in outside.output
    alone = runner.invoke(cli, ["show", str(sample_extraction / "coffee"), "--at", "1,1"])
    assert alone.exit_code == 2 and "go together" in alone.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--at", "9999,1"], "Invalid value for '--at': 9999,1 lies outside the image ("),
        (["--at", "1;2"],
         "Invalid value for '--at': expected X,Y in the original image's pixels, got '1;2'"),
        (["--at", "1,1", "--channel", "100"],
         "Invalid value for '--channel': channel 100 is out of range: stem has 64 channels "
         "(0..63)"),
        (["--at", "1,1", "--reduce", "pca"],
         "Invalid value for '--reduce': --receptive-field takes channel, mean, max, l2, not "
         "'pca'"),
        # options it would ignore (its picture and name were as without them)
        (["--at", "1,1", "--top", "3"], "--top does not apply to --receptive-field"),
        (["--at", "1,1", "--channels", "1,2"], "--channels does not apply to --receptive-field"),
        (["--at", "1,1", "--overlay"], "--overlay does not apply to --receptive-field"),
        (["--at", "1,1", "--cmap", "magma"], "--cmap does not apply to --receptive-field"),
        (["--at", "1,1", "--clip", "minmax"], "--clip does not apply to --receptive-field"),
        (["--at", "1,1", "--scale", "level"], "--scale does not apply to --receptive-field"),
    ],
)  # fmt: skip
def test_receptive_field_option_values_are_usage_errors_before_the_model(
    sample_extraction, tmp_path, monkeypatch, extra, message
):
    """--at outside the photo or unreadable, --channel past a level's channels and --reduce pca
    were exit 1 (the last two only after the forward pass, the channel in torch's words: "index
    100 is out of bounds"): now usage errors, exit 2, in click's words, before any model."""

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(fpncli.api, "load_backbone", no_model)
    args = ["show", str(sample_extraction / "coffee"), "--receptive-field", "--level",
            "p3,stem", "--save", str(tmp_path / "rf.png"), *extra]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    (line,) = result.output.splitlines()
    assert line.startswith(f"Error: {message}") and line.endswith(" (see 'cli show --help')")
    assert not (tmp_path / "rf.png").exists()


def test_a_library_caller_is_told_the_refused_point_is_at():
    """draw_receptive_fields' refusals name the argument for a library caller: "--at: ..."."""
    from fpncli.io.guard import OptionError
    from fpncli.run.receptive import draw_receptive_fields

    with pytest.raises(OptionError, match=r"^--at: expected X,Y in the original image's pixels"):
        draw_receptive_fields(None, "1;2")


def test_a_receptive_field_picture_is_named_for_its_levels_point_and_reduction(
    sample_extraction, tmp_path, monkeypatch
):
    """It was receptive_field.png (fpn_rf_NAME.png for a photo) whatever the point: a second
    --at replaced the first. Now show_LEVELS[_REDUCTION]_rf_atX,Y.png, as show names its own."""
    import shutil

    folder = tmp_path / "coffee"
    shutil.copytree(sample_extraction / "coffee", folder)
    runner = CliRunner()
    for extra, name in [(["--at", "10,20"], "show_all_rf_at10,20.png"),
                        (["--at", "10.5,20", "--level", "p6,p5", "--reduce", "l2"],
                         "show_p6,p5_l2_rf_at10.5,20.png")]:  # fmt: skip
        result = runner.invoke(cli, ["show", str(folder), "--receptive-field", *extra],
                               catch_exceptions=False)  # fmt: skip
        assert result.exit_code == 0, result.output
        assert f"saved {folder / name}\n" in result.output and (folder / name).is_file()
    assert (folder / "show_all_rf_at10,20.png").is_file()  # not replaced by the second
    assert not (folder / "receptive_field.png").exists()
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(tmp_path / "cat.png")
    args = ["show", "cat.png", "--receptive-field", "--at", "3,4", "--level", "p6",
            "--weights", "random", "--device", "cpu"]  # fmt: skip
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0 and "saved fpn_show_cat_p6_rf_at3,4.png\n" in result.output
    # a cat.jpg beside it: each photo's picture named as extract names their folders (one run:
    # an 800-pixel forward and backward pass each; show's own test draws both photos)
    Image.fromarray(np.full((40, 48, 3), 30, np.uint8)).save(tmp_path / "cat.jpg")
    result = runner.invoke(cli, [*args[:1], "cat.jpg", *args[2:]], catch_exceptions=False)
    assert result.exit_code == 0 and "saved fpn_show_cat_jpg_p6_rf_at3,4.png\n" in result.output


def test_the_erf_is_computed_in_fp32_inside_a_callers_autocast():
    model = fpncli.load_backbone("random", fold_bn=False, channels_last=False)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cells = {"p3": (5, 6), "p5": (1, 1)}
    expected = effective_rf(model, x, cells, reduce="mean")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = effective_rf(model, x, cells, reduce="mean")
    for name in cells:
        np.testing.assert_array_equal(maps[name], expected[name], err_msg=name)


def test_receptive_fields_leave_the_models_bottom_up_outputs_as_they_were(tmp_path):
    from PIL import Image

    from fpncli.run.receptive import receptive_fields

    model = fpncli.load_backbone("random", channels_last=False)
    model.keep_bottom_up = ("res2",)
    Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(tmp_path / "a.png")
    _, _, fields = receptive_fields(tmp_path / "a.png", model, (10, 12), ["res3", "p3"],
                              min_size=64, max_size=96)  # fmt: skip
    assert [f.level for f in fields] == ["res3", "p3"]
    assert model.keep_bottom_up == ("res2",)  # not () after the call


def test_the_panel_of_a_very_wide_photo_stays_encodable():
    """A 4000x1 photo (show --receptive-field --level p6 --at 3999,0 on a --no-resize
    extraction) made a 1,280,000-pixel-wide panel: 'Error: PNG encoding failed'."""
    from fpncli.viz.png import encode_png
    from fpncli.viz.receptive import MAX_PANEL_WIDTH, MIN_PANEL_SIDE, receptive_field_image

    erf = np.zeros((32, 4000), np.float32)
    erf[0, 3990] = 1.0
    field = ReceptiveField("p6", 64, (0, 62), (0, 31, 3700, 4200), erf)
    photo = np.full((1, 4000, 3), 200, np.uint8)
    picture = receptive_field_image(photo, [field], resized=(1, 4000), scale=(1.0, 1.0),
                                    at=(3999.0, 0.0))  # fmt: skip
    assert picture.shape[1] <= MAX_PANEL_WIDTH + 20
    assert picture.shape[0] >= MIN_PANEL_SIDE
    assert encode_png(picture)[:4] == b"\x89PNG"
    tall = receptive_field_image(photo.transpose(1, 0, 2), [field], resized=(4000, 1),
                                 scale=(1.0, 1.0), at=(0.0, 3999.0))  # fmt: skip
    assert tall.shape[1] <= 320 + 20  # a 1x4000 photo: a narrow panel, captions' width


def test_the_marks_on_a_one_pixel_photo_leave_the_photo_visible():
    """On a 1x1 photo (show --receptive-field --at 0,0) the marks were drawn at the photo's
    resolution: the cell's white box was its only pixel, and every panel came out white."""
    from fpncli.viz.receptive import receptive_field_image

    erf = np.zeros((32, 32), np.float32)
    erf[0, 0] = 1.0
    field = ReceptiveField("p2", 4, (0, 0), (-200, 300, -200, 300), erf)
    photo = np.full((1, 1, 3), (0, 0, 200), np.uint8)
    picture = receptive_field_image(photo, [field], resized=(1, 1), scale=(64.0, 64.0),
                                    at=(0.0, 0.0), panel_height=64)  # fmt: skip
    panel = picture[6 + 66 : 6 + 66 + 64, 10 : 10 + 64].astype(int)
    white = (panel >= 250).all(axis=2)
    assert white.mean() < 0.5  # the box is a line around the photo, not all of it
    assert (panel[32, 32] != (255, 255, 255)).any()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("input", [], "'input' is a list"),
        ("weights", "x", "'weights' is a str"),
        ("input.path", 5, "'input.path' is an int"),
        ("weights.path", 5, "'weights.path' is an int"),
        ("weights.seed", "abc", "'weights.seed' is a str"),
        ("weights.seed", 2**32, "'weights.seed' is an int"),
        ("weights.random", "yes", "'weights.random' is a str"),
        ("preprocess.min_size", "abc", "'preprocess.min_size' is a str"),
        ("preprocess.max_size", -5, "'preprocess.max_size' is an int"),
        ("preprocess.resize", 1, "'preprocess.resize' is an int"),
        ("preprocess.min_size", 500, "'preprocess.min_size' 500 is over"),
        ("weights", {}, "names no weights (weights.name or .path)"),
    ],
)  # fmt: skip
def test_receptive_field_of_a_hand_edited_manifest_is_one_line_before_the_model(
    sample_extraction, tmp_path, monkeypatch, field, value, message
):
    """show FOLDER --receptive-field read the manifest unchecked: a list for 'input' or a
    string for 'weights' was a traceback, an empty 'weights' "Error: 'name'", a seed past
    2**32 numpy's words after the "computing" line. Now the plain show's one line, naming the
    manifest and the field, before any model."""
    import json
    import shutil

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(fpncli.api, "load_backbone", no_model)
    folder = tmp_path / "coffee"
    shutil.copytree(sample_extraction / "coffee", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    *parents, last = field.split(".")
    inner = manifest
    for key in parents:
        inner = inner[key]
    inner[last] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    args = ["show", str(folder), "--receptive-field", "--at", "5,5", "--save",
            str(tmp_path / "rf.png")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    (line,) = result.output.splitlines()
    assert line.startswith(f"Error: {folder}/manifest.json") and message in line, line
    assert not (tmp_path / "rf.png").exists()
