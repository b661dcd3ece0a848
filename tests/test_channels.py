"""``show --top K`` / ``--channels``: which channels, the grid, the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fpncli.cli import cli
from fpncli.viz import channels as channels_module
from fpncli.viz.channels import channel_grid, parse_channels, top_channels


def test_top_channels_known_order():
    means = [3.0, -1.0, 7.0, 3.0, 0.5, 9.0]
    feature = np.stack([np.full((4, 5), m, np.float32) for m in means])[None]
    assert top_channels(feature, 3) == [5, 2, 0]
    assert top_channels(feature, 4) == [5, 2, 0, 3]  # a tie: the lower channel first
    assert top_channels(feature, 99) == [5, 2, 0, 3, 4, 1]
    with pytest.raises(ValueError, match="K >= 1"):
        top_channels(feature, 0)


def test_parse_channels():
    assert parse_channels("0, 5,17", 256) == [0, 5, 17]
    with pytest.raises(ValueError, match=r"out of range: this map has 256"):
        parse_channels("3,256", 256)
    with pytest.raises(ValueError, match="numbers separated by commas"):
        parse_channels("a,b", 256)


def test_a_library_caller_is_told_which_argument_a_refusal_is_about():
    """An OptionError's text names its option for a library caller (the CLI's usage line names
    it once, in click's words: test_show_top_and_channels_cli); one that begins with it, or
    about no one option, reads as given."""
    from fpncli.io.guard import OptionError

    with pytest.raises(OptionError) as caught:
        parse_channels("3,256", 256)
    assert str(caught.value) == "--channels: channel(s) [256] out of range: this map has 256 " \
        "(0..255)"  # fmt: skip
    assert caught.value.message.startswith("channel(s) [256] out of range")
    assert str(OptionError("--scale level takes ...", "--scale")) == "--scale level takes ..."
    assert str(OptionError("--top and --channels both given")) == "--top and --channels both given"


def test_channel_grid_shares_one_range():
    feature = np.zeros((3, 2, 2), np.float32)
    feature[1] = 10.0  # the maximum of the shared range: the colormap's last colour
    grid = channel_grid(feature, [0, 1], cmap="gray", tile_side=8, vrange=(0.0, 10.0))
    dark = (grid == 0).all(axis=2).sum()
    light = (grid == 255).all(axis=2)
    assert dark >= 64 and light.sum() > 64  # one black tile (value 0), one white tile (10)


def test_channel_grid_bar_ends_say_when_tiles_go_beyond_them(monkeypatch):
    """The bar's ends and data line are range_labels' (as every picture's): a range narrower
    than the tiles (show passes the --clip percentiles) reads <= / >= and "(clipped)"; a range
    the tiles stay inside reads bare; the default range is the tiles' own min and max."""
    drawn = []
    real = channels_module.put_text

    def spy(canvas, text, *args, **kwargs):
        drawn.append(text)
        return real(canvas, text, *args, **kwargs)

    monkeypatch.setattr(channels_module, "put_text", spy)
    feature = np.zeros((3, 2, 2), np.float32)
    feature[0, 0, 0], feature[2, 1, 1] = -5.0, 20.0
    channel_grid(feature, [0, 2], tile_side=8, vrange=(0.0, 10.0))
    assert drawn[-3:] == ["<= 0", ">= 10", "data -5 .. 20 (clipped)"]
    channel_grid(feature, [1], tile_side=8, vrange=(-1.0, 1.0))  # channel 1: all 0
    assert drawn[-3:] == ["-1", "1", "data 0 .. 0"]
    channel_grid(feature, [0, 2], tile_side=8)
    assert drawn[-3:] == ["min -5", "max 20", "data -5 .. 20"]


def test_channel_grid_wraps_its_title_and_banner_to_its_width():
    from fpncli.io.outputs import RANDOM_NOTE

    feature = np.random.RandomState(0).rand(3, 4, 6).astype(np.float32)
    title = "chelsea  p3  stride 8  top 1 channels by mean activation"
    narrow = channel_grid(feature, [0], title=title, note=RANDOM_NOTE, tile_side=8)
    one_line = channel_grid(feature, [0], title="t", note="RANDOM", tile_side=8)
    assert narrow.shape[1] == one_line.shape[1] == 360
    rgb = narrow.astype(int)
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    assert not red[:, -10:].any() and red.any()  # inside the right margin
    assert not (narrow[:, -10:] < 100).all(axis=2).any()  # no dark title letters there
    rows = red.any(axis=1)
    assert (rows[1:] & ~rows[:-1]).sum() == 2  # the banner on two lines
    assert narrow.shape[0] - one_line.shape[0] == 22 + 24  # one more title and banner line


@pytest.fixture
def folder(tmp_path):
    out = tmp_path / "img"
    out.mkdir()
    means = np.array([1.0, 4.0, -2.0, 8.0, 0.0, 6.0], np.float32)
    array = np.broadcast_to(means[None, :, None, None], (1, 6, 8, 12)).copy()
    array[..., 6:, :] = 100.0  # padding rows: must not count
    np.save(out / "p2.npy", array)
    manifest = {
        "input": {"path": "", "width": 48, "height": 24},
        "preprocess": {"resized_height": 24, "resized_width": 48, "scale_y": 1.0, "scale_x": 1.0},
        "weights": {"name": "random", "random": True},
        "levels": {"p2": {"file": "p2.npy", "shape": [1, 6, 8, 12], "stride": 4,
                          "valid_height": 6, "valid_width": 12}},
        "complete": True,
    }  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_show_top_and_channels_cli(folder, monkeypatch):
    picked = []
    real = channels_module.channel_grid

    def spy(feature, channels, **kwargs):
        picked.append((feature.shape, list(channels)))
        return real(feature, channels, **kwargs)

    monkeypatch.setattr(channels_module, "channel_grid", spy)
    runner = CliRunner()
    result = runner.invoke(cli, ["show", str(folder), "--level", "p2", "--top", "3"],
                           catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert picked[-1] == ((6, 6, 12), [3, 5, 1])  # valid rows only: padding (100) ignored
    assert Image.open(folder / "show_p2_top3.png").size[0] >= 360
    save = folder / "c.png"
    args = ["show", str(folder), "--channels", "4,0", "--save", str(save)]
    assert runner.invoke(cli, args, catch_exceptions=False).exit_code == 0
    assert picked[-1][1] == [4, 0] and save.is_file()
    for bad, message in [  # usage errors, as click's own: exit 2, one line
        (["--channels", "9"], "Invalid value for '--channels': channel(s) [9] out of range: "
         "this map has 6 (0..5)"),
        (["--channels", "1,x"], "Invalid value for '--channels': expected channel numbers "
         "separated by commas (0,5,17), got '1,x'"),
        (["--top", "2", "--channels", "1"], "--top and --channels both given: choose one"),
        (["--top", "2", "--level", "all"],
         "--top/--channels draw one level, without --overlay: pick --level"),
    ]:  # fmt: skip
        result = runner.invoke(cli, ["show", str(folder), *bad])
        assert result.exit_code == 2, result.output
        assert result.output.splitlines() == [f"Error: {message} (see 'cli show --help')"]
