"""Heatmaps, colours, reductions, the overview and overlay alignment, on tiny arrays."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
from PIL import Image

from fpncli.viz.maps import parse_clip, pca_sign, reduce_channels, valid_region, value_range
from fpncli.viz.overview import OVERVIEW_MAX_WIDTH, _overview_layout, overview_image, overview_png
from fpncli.viz.png import encode_png, png_size_bound
from fpncli.viz.text import text_size, wrap_text
from fpncli.viz.visualize import (
    _heatmap_layout,
    cell_index,
    colorize,
    colour_indices,
    heatmap_image,
    heatmap_palette,
    heatmap_png,
    heatmap_png_bound,
    overlay_image,
    overlay_shape,
)

FEATURE = np.array(
    [
        [[1.0, 2.0], [3.0, 4.0]],
        [[-1.0, 0.0], [5.0, 2.0]],
        [[0.0, 0.0], [0.0, 8.0]],
    ],
    dtype=np.float32,
)


def test_reductions_exact():
    np.testing.assert_array_equal(reduce_channels(FEATURE, "channel", 1), FEATURE[1])
    np.testing.assert_array_equal(reduce_channels(FEATURE[None], "channel", 0), FEATURE[0])
    np.testing.assert_allclose(reduce_channels(FEATURE, "mean"), [[0, 2 / 3], [8 / 3, 14 / 3]])
    np.testing.assert_array_equal(reduce_channels(FEATURE, "max"), [[1, 2], [5, 8]])
    np.testing.assert_allclose(
        reduce_channels(FEATURE, "l2"), np.sqrt([[2, 4], [34, 84]]), rtol=1e-6
    )


def test_pca_is_the_first_component_with_a_fixed_sign():
    rng = np.random.RandomState(0)
    direction = np.array([3.0, -1.0, 0.5])
    strength = rng.randn(4, 5)
    feature = direction[:, None, None] * strength[None] + 0.01 * rng.randn(3, 4, 5)
    projected = reduce_channels(feature, "pca")
    unit = direction / np.linalg.norm(direction)
    expected = np.tensordot(unit, feature - feature.mean(axis=(1, 2), keepdims=True), axes=1)
    np.testing.assert_allclose(projected, expected, atol=0.05)
    np.testing.assert_allclose(reduce_channels(-feature, "pca"), -projected, atol=1e-5)


def test_pca_map_correlates_positively_with_the_mean_map():
    """The largest loading (-3) and the loadings' sum (+1) disagree here: the map follows the
    mean map (bright where the channels are high on average), not the largest loading."""
    rng = np.random.RandomState(1)
    direction = np.array([-3.0, 2.0, 2.0])
    strength = rng.randn(5, 6)
    feature = direction[:, None, None] * strength[None] + 0.01 * rng.randn(3, 5, 6)
    projected = reduce_channels(feature, "pca")
    mean_map = reduce_channels(feature, "mean")
    assert np.corrcoef(projected.ravel(), mean_map.ravel())[0, 1] > 0.99
    centred = strength - strength.mean()
    np.testing.assert_allclose(projected, centred * np.linalg.norm(direction), atol=0.1)
    # a level and its negative: the same map up to sign, each oriented like its own mean map
    flipped = reduce_channels(-feature, "pca")
    np.testing.assert_allclose(flipped, -projected, atol=1e-5)
    assert np.corrcoef(flipped.ravel(), (-mean_map).ravel())[0, 1] > 0.99


def test_pca_sign_falls_back_to_the_largest_loading_when_the_mean_is_flat():
    assert pca_sign(np.array([0.6, -0.8])) == -1.0 and pca_sign(np.array([-0.6, 0.8])) == 1.0
    assert pca_sign(np.array([0.5, -0.5, 0.7, -0.7])) == 1.0  # sum 0: 0.7 is the largest
    assert pca_sign(np.array([-0.5, 0.5, -0.7, 0.7])) == -1.0  # first of the largest: -0.7


def test_reduction_errors():
    with pytest.raises(ValueError, match="channel 3 out of range: this map has 3"):
        reduce_channels(FEATURE, "channel", 3)
    with pytest.raises(ValueError, match="unknown reduction 'median'"):
        reduce_channels(FEATURE, "median")


def test_valid_region_drops_padded_cells():
    assert valid_region(np.zeros((1, 256, 13, 20)), 12, 19).shape == (1, 256, 12, 19)


def test_colorize_matches_matplotlib_exactly():
    values = np.array([[0.0, 1.0], [2.0, 4.0]])
    colours = colorize(values, "viridis", vmin=0.0, vmax=4.0)
    expected = matplotlib.colormaps["viridis"](values / 4.0, bytes=True)[..., :3]
    np.testing.assert_array_equal(colours, expected)
    assert colours.dtype == np.uint8 and colours.shape == (2, 2, 3)
    flat = colorize(np.full((2, 2), 7.0))
    assert (flat == flat[0, 0]).all()  # a constant map: one colour, no division by zero
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize(values, "no-such-map")


def test_heatmap_cells_are_exact_and_crisp():
    values = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    picture = heatmap_image(values, cmap="magma", label="p6", min_side=20, clip=None)
    palette, count = heatmap_palette("magma")
    colours = palette[colour_indices(values, count, 0.0, 5.0)]
    factor = 10  # ceil(20 / 2)
    top = 24  # title row
    for i in range(2):
        for j in range(3):
            block = picture[
                top + i * factor : top + (i + 1) * factor, j * factor : (j + 1) * factor
            ]
            assert (block == colours[i, j]).all()
    assert picture.shape[1] >= 420
    assert picture.shape[0] == 24 + 20 + 6 + 12 + 38
    bar = picture[24 + 20 + 6 + 6, : 3 * factor]
    np.testing.assert_array_equal(bar[0], colorize(np.array([[0.0]]), "magma", 0.0, 1.0)[0, 0])
    end = picture[24 + 20 + 6 + 6, 419]  # the bar's last pixel (420 wide): the colormap's end
    np.testing.assert_array_equal(end, colorize(np.array([[1.0]]), "magma", 0.0, 1.0)[0, 0])


def test_encode_png_round_trip_keeps_rgb():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(rgb))))
    np.testing.assert_array_equal(decoded, rgb)


@pytest.mark.parametrize("deflate", ["isal", "zlib"])
def test_png_writer_is_lossless_with_either_deflate(deflate, monkeypatch):
    """fpncli writes its PNGs itself, deflated by ISA-L where installed, else zlib: Pillow and
    OpenCV decode them to the same pixels, any size, contiguous or not; a picture PNG cannot
    hold is a ValueError."""
    import zlib

    import cv2

    from fpncli.viz import png

    if deflate == "isal":
        isal_zlib = pytest.importorskip("isal.isal_zlib")
        monkeypatch.setattr(png, "_deflate", isal_zlib)
    else:
        monkeypatch.setattr(png, "_deflate", zlib)
    assert png.png_deflate() == deflate
    rng = np.random.default_rng(0)
    heat = heatmap_image(rng.standard_normal((20, 30)).astype(np.float32), label="p4", note="n")
    pictures = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((1, 1, 3), (37, 53, 3))]
    pictures += [heat, rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)[::2, ::3]]
    for rgb in pictures:
        data = encode_png(rgb)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), rgb)
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(bgr[..., ::-1], rgb)
    for bad in (np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4), np.uint8),
                np.zeros((4, 4, 3), np.float32)):  # fmt: skip
        with pytest.raises(ValueError, match="PNG encoding needs"):
            encode_png(bad)
    # palette pictures: (H, W) indices and the (N, 3) colours they index
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    for indices in (rng.integers(0, 256, (37, 53), dtype=np.uint8),
                    rng.integers(0, 256, (40, 60), dtype=np.uint8)[::2, ::3]):  # fmt: skip
        data = encode_png(indices, palette=palette)
        decoded = Image.open(io.BytesIO(data))
        assert decoded.mode == "P"
        np.testing.assert_array_equal(np.asarray(decoded), indices)
        np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), palette[indices])
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(bgr[..., ::-1], palette[indices])
    with pytest.raises(ValueError, match=r"needs a non-empty \(H, W\) uint8"):
        encode_png(np.zeros((4, 4, 3), np.uint8), palette=palette)
    for bad_palette in (np.zeros((257, 3), np.uint8), np.zeros((0, 3), np.uint8),
                        np.zeros((16, 4), np.uint8), np.zeros((16, 3))):  # fmt: skip
        with pytest.raises(ValueError, match="a PNG palette is"):
            encode_png(np.zeros((4, 4), np.uint8), palette=bad_palette)
    with pytest.raises(ValueError, match="palette index 5 past the palette's 2 colours"):
        encode_png(np.full((4, 4), 5, np.uint8), palette=np.zeros((2, 3), np.uint8))


def test_overview_is_a_png_with_all_panels():
    image = np.zeros((60, 90, 3), np.uint8)
    levels = [
        {"name": f"p{k}", "map": np.random.RandomState(k).rand(8, 12), "stride": 2**k,
         "shape": (1, 256, 8, 12)}
        for k in range(2, 7)
    ]  # fmt: skip
    plain = Image.open(io.BytesIO(overview_png(image, levels, title="t")))
    noted = Image.open(io.BytesIO(overview_png(image, levels, title="t", note="RANDOM WEIGHTS")))
    assert plain.format == "PNG" and plain.size[0] >= 1500
    red = np.asarray(noted.convert("RGB")).astype(int)
    is_red = (red[..., 0] > 150) & (red[..., 1] < 60) & (red[..., 2] < 60)
    assert is_red.sum() > 50  # the note is drawn in red


def test_cell_index_follows_scale_and_stride():
    np.testing.assert_array_equal(cell_index(8, 2.0, 4, 10), [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(cell_index(5, 1.5, 4, 2), [0, 0, 0, 1, 1])  # clipped


@pytest.mark.parametrize("scale_y, scale_x", [(2.0, 2.0), (1.6, 2.5)])
def test_overlay_lights_exactly_the_cells_pixels(scale_y, scale_x):
    photo = np.zeros((30, 40, 3), np.uint8)
    stride = 4
    cells = (int(np.ceil(30 * scale_y / stride)), int(np.ceil(40 * scale_x / stride)))
    heat = np.zeros(cells)
    heat[3, 5] = 1.0
    out = overlay_image(photo, heat, stride=stride, scale_y=scale_y, scale_x=scale_x,
                        cmap="gray", alpha=1.0)  # fmt: skip
    lit = out[..., 0] == 255
    rows = np.where(lit.any(axis=1))[0]
    cols = np.where(lit.any(axis=0))[0]
    # Cell (3, 5) covers resized rows [12, 16), cols [20, 24): original r with 12 <= r*sy < 16.
    assert list(rows) == [r for r in range(30) if 3 * stride <= r * scale_y < 4 * stride]
    assert list(cols) == [c for c in range(40) if 5 * stride <= c * scale_x < 6 * stride]
    assert lit.sum() == len(rows) * len(cols)


def test_value_range_is_the_clip_percentiles_of_the_finite_values():
    values = np.arange(101, dtype=np.float64).reshape(1, 101)
    assert value_range(values, (1, 99)) == (1.0, 99.0)
    assert value_range(values, None) == value_range(values, (0, 100)) == (0.0, 100.0)
    hot = np.zeros((10, 100))
    hot[0, :3] = 1e4  # three hot cells out of a thousand
    hot[1:, :] = np.linspace(-1, 1, 900).reshape(9, 100)
    hot[5, 5] = np.nan
    lo, hi = value_range(hot)  # the default clip ignores the hot cells and the NaN
    assert hi < 1.0 and lo == pytest.approx(np.percentile(hot[np.isfinite(hot)], 1))
    assert value_range(np.full((2, 2), np.nan)) == (0.0, 0.0)
    assert value_range(np.full((2, 2), 3.0)) == (3.0, 3.0)
    sparse = np.zeros((40, 40))
    sparse[2, 3] = 5.0  # percentiles collapse to 0: min-max keeps the one cell visible
    assert value_range(sparse) == (0.0, 5.0)


def test_value_range_leaves_the_callers_map_as_it_was():
    """The percentiles may reorder only a copy of value_range's own (of a float32 map, or of a
    map's finite values), never a float64 map passed in."""
    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.float32):
        values = rng.standard_normal((30, 40)).astype(dtype)
        kept = values.copy()
        want = np.percentile(values.astype(np.float64), [1, 99])
        assert value_range(values, (1, 99)) == (float(want[0]), float(want[1]))
        assert np.array_equal(values, kept), dtype


def test_value_range_equals_numpy_percentile_bit_for_bit():
    """value_range takes its percentiles from one partition and numpy's interpolation rule:
    the very numbers np.percentile gives, on maps large and tiny, with ties, over 60 decades,
    for any clip (a numpy that changes its rule fails here, not in users' pictures)."""
    rng = np.random.default_rng(1)
    for trial in range(3000):
        n = int(rng.integers(1, 2000))
        wide = rng.standard_normal(n) * 10 ** rng.uniform(-30, 30)
        maps = (rng.standard_normal(n), rng.integers(-3, 4, n).astype(np.float64),
                wide.astype(np.float32))  # fmt: skip
        values = maps[trial % 3]
        lo = float(rng.choice([0.5, 1.0, 2.5, rng.uniform(0.01, 50)]))
        hi = float(rng.choice([99.0, 99.5, 100.0, rng.uniform(50, 99.99)]))
        want = np.percentile(values.astype(np.float64), [lo, hi])
        if want[1] <= want[0]:  # value_range falls back to min-max there
            want = (values.min(), values.max())
        assert value_range(values, (lo, hi)) == (float(want[0]), float(want[1])), (n, lo, hi)


def test_parse_clip():
    assert parse_clip("1,99") == (1.0, 99.0)
    assert parse_clip("minmax") == (0.0, 100.0) and parse_clip(None) == (1.0, 99.0)
    for bad in ("99,1", "a,b", "1", "-1,50", "0,101"):
        with pytest.raises(ValueError, match="percentiles"):
            parse_clip(bad)


def test_clip_saturates_hot_cells_the_same_in_heatmap_and_overlay():
    values = np.tile(np.linspace(0.0, 1.0, 50), (50, 1))
    values[0, 0] = 1000.0  # one hot cell
    lo, hi = value_range(values)
    heat = heatmap_image(values, cmap="gray", min_side=50)
    # the gradient spans (almost) black to white instead of being squashed into the bottom
    row = heat[24 + 25, :50, 0].astype(int)
    assert row[1] < 10 and row[-1] > 245
    over = overlay_image(np.zeros((50, 50, 3), np.uint8), values, stride=1, scale_y=1,
                         scale_x=1, cmap="gray", alpha=1.0)  # fmt: skip
    np.testing.assert_array_equal(over[25, :, 0], colorize(values, "gray", lo, hi)[25, :, 0])
    # the heatmap's colours are its palette's (a 256-grey ramp in 224 bins): the same ends, and
    # within a bin (256 / 224 greys) of the overlay's in between
    heat_row, over_row = heat[24 + 25, :50, 0].astype(int), over[25, :, 0].astype(int)
    assert (heat_row[[0, -1]] == over_row[[0, -1]]).all()
    assert np.abs(heat_row - over_row).max() <= 2
    assert heat[24, 0, 0] == over[0, 0, 0] == 255  # the hot cell: the top of the range


def _levels_for(height, width):
    return [
        {"name": f"p{k}", "map": np.random.RandomState(k).rand(-(-height // 2**k),
                                                                -(-width // 2**k)),
         "stride": 2**k, "shape": (1, 256, -(-height // 2**k), -(-width // 2**k))}
        for k in range(2, 7)
    ]  # fmt: skip


@pytest.mark.parametrize("height, width", [(300, 7500), (7500, 300), (600, 900)])
def test_overview_width_is_capped_and_text_keeps_its_size(height, width):
    image = np.zeros((height, width, 3), np.uint8)
    picture = overview_image(image, _levels_for(height, width), title="t", note="n")
    assert 420 <= picture.shape[1] <= 2400
    assert picture.shape[0] <= 6 * 600  # a panorama is stacked, not one 25,000-pixel row


def _ramps(row: np.ndarray) -> int:
    """How many black-to-white runs (a gray colour bar) a row of pixels holds."""
    count, start = 0, 0
    for i in range(1, len(row) + 1):
        if i == len(row) or row[i] < row[i - 1]:
            if i - start >= 100 and row[i - 1] - row[start] >= 250:
                count += 1
            start = i
    return count


def test_overview_states_each_level_range_under_its_panel():
    image = np.zeros((64, 96, 3), np.uint8)
    levels = _levels_for(64, 96)
    base = overview_image(image, levels, cmap="gray", clip=None)
    # a colour bar (black to white) runs under every level panel
    assert max(_ramps(base[r, :, 0].astype(int)) for r in range(base.shape[0])) == 5
    levels[0]["range"] = (0.0, 0.5)  # a given range wins: half the p2 panel saturates
    clipped = overview_image(image, levels, cmap="gray")
    assert (clipped == 255).sum() > (base == 255).sum()


def test_an_overlay_is_labelled_above_the_photo():
    photo = np.full((60, 500, 3), 128, np.uint8)
    heat = np.random.RandomState(0).rand(15, 125)
    plain = overlay_image(photo, heat, stride=4, scale_y=1, scale_x=1, cmap="gray")
    labelled = overlay_image(photo, heat, stride=4, scale_y=1, scale_x=1, cmap="gray",
                             label="p2  stride 4  channel 0  gray", note="RANDOM")  # fmt: skip
    header = labelled.shape[0] - 60
    assert header > 40 and labelled.shape[1] == 500
    np.testing.assert_array_equal(labelled[header:], plain)  # the photo itself is unchanged
    strip = labelled[:header].astype(int)
    assert (strip.sum(axis=2) < 150).sum() > 100  # dark text: the label and the range
    assert ((strip[..., 0] > 150) & (strip[..., 1] < 60)).sum() > 20  # the red note
    assert max(_ramps(labelled[r, :, 0].astype(int)) for r in range(header)) == 1  # colour bar


@pytest.mark.parametrize("cmap", ["viridis", "magma", "gray", "coolwarm", "tab10", "twilight"])
def test_colorize_and_heatmap_are_matplotlibs_colours_pixel_for_pixel(cmap):
    """The LUT path equals matplotlib's own ``Colormap(x, bytes=True)``. A heatmap's cells are
    matplotlib's colours too: a colormap of at most ``HEATMAP_COLOURS`` colours (tab10) exactly
    as ``colorize``; a larger one's (viridis' 256, twilight's 510) in ``HEATMAP_COLOURS`` equal
    bins, each the colormap's colour at the bin's place among that many evenly spaced from its
    first to its last (the ends its ends); written straight into the canvas, the cells equal
    ``np.repeat`` upscaling: the same pixels, faster."""
    import matplotlib

    from fpncli.viz.visualize import HEATMAP_COLOURS, colorize, heatmap_image

    rng = np.random.RandomState(0)
    values = rng.randn(37, 53)
    values[0, :4] = [np.nan, np.inf, -np.inf, 0.0]
    values[1, :2] = [-0.5, 1.5]  # exactly the range's ends
    lo, hi = -0.5, 1.5
    normed = np.clip((np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo), 0, 1)
    colormap = matplotlib.colormaps[cmap]
    want = colormap(normed, bytes=True)[..., :3]
    got = colorize(values, cmap, lo, hi)
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    if colormap.N > HEATMAP_COLOURS:  # its colours evenly spaced, the ends kept
        bins = np.minimum(np.floor(normed * HEATMAP_COLOURS), HEATMAP_COLOURS - 1).astype(int)
        lut = colormap(np.arange(colormap.N), bytes=True)[:, :3]
        want = lut[np.rint(np.linspace(0, colormap.N - 1, HEATMAP_COLOURS)).astype(int)][bins]
    picture = heatmap_image(values, cmap=cmap, vrange=(lo, hi), label="p3")
    factor = -(-256 // 37)
    block = np.repeat(np.repeat(want, factor, axis=0), factor, axis=1)
    assert np.array_equal(picture[24 : 24 + 37 * factor, : 53 * factor], block)
    assert np.array_equal(want[1, :2], colormap(np.array([0.0, 1.0]), bytes=True)[:, :3])


def test_a_heatmap_png_is_its_picture_in_a_palette():
    """``heatmap_png`` writes ``heatmap_image``'s pixels as an 8-bit palette PNG: the
    colormap's colours, and its text in shades from white to the text's colour (the red note's
    too), each drawn where OpenCV's anti-aliased text is."""
    import cv2

    from fpncli.viz.text import NOTE_COLOUR, TEXT_COLOUR, put_text  # fmt: skip
    from fpncli.viz.visualize import TEXT_SHADES, heatmap_png  # fmt: skip

    rng = np.random.default_rng(0)
    values = rng.standard_normal((40, 60)).astype(np.float32)
    kwargs = {"cmap": "viridis", "label": "p4  stride 16", "note": "random weights"}
    data = heatmap_png(values, **kwargs)
    picture = heatmap_image(values, **kwargs)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.mode == "P"
    np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), picture)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(bgr[..., ::-1], picture)
    # the title as put_text draws it in RGB, within a shade
    title = np.full((24, picture.shape[1], 3), 255, np.uint8)
    put_text(title, "p4  stride 16", (4, 17), 0.45)
    step = (255 - TEXT_COLOUR[0]) / (TEXT_SHADES - 1)
    assert np.abs(picture[:24].astype(int) - title).max() <= step / 2 + 1
    red = picture[24:46]  # the note's line: white, red and their blends only
    assert (red[..., 1] == red[..., 2]).all() and (red[..., 1] <= 255).all()
    assert {tuple(c) for c in red.reshape(-1, 3)} >= {(255, 255, 255), NOTE_COLOUR}


def test_wrap_text_keeps_every_word_and_fits_the_width():
    text = "RANDOM, UNTRAINED WEIGHTS - not a trained network"
    lines = wrap_text(text, 200, 0.55, 2)
    assert len(lines) > 1 and " ".join(lines) == text
    assert all(text_size(line, 0.55, 2) <= 200 for line in lines)
    assert wrap_text(text, 10_000, 0.55) == (text,)
    long_name = "x" * 80  # one word wider than the width: broken inside the word
    parts = wrap_text(long_name, 100, 0.45)
    assert "".join(parts) == long_name and all(text_size(p, 0.45) <= 100 for p in parts)


def _red_bands(picture: np.ndarray) -> tuple[int, int]:
    """(lines of red text, the rightmost red column) of a picture."""
    rgb = picture.astype(int)
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    rows = red.any(axis=1)
    bands = int(rows[0]) + int((rows[1:] & ~rows[:-1]).sum())
    return bands, int(np.where(red.any(axis=0))[0].max())


@pytest.mark.parametrize("figure", ["heatmap", "overview", "overlay"])
def test_the_random_weights_banner_wraps_inside_a_narrow_figure(figure):
    from fpncli.io.outputs import RANDOM_NOTE

    values = np.random.RandomState(0).rand(4, 3)
    if figure == "heatmap":
        picture = heatmap_image(values, note=f"{RANDOM_NOTE} (seed 0, not a detector)",
                                min_side=12)  # fmt: skip
    elif figure == "overview":
        levels = [{"name": "p2", "map": values, "stride": 4, "shape": (1, 256, 4, 3)}]
        picture = overview_image(np.zeros((16, 12, 3), np.uint8), levels, note=RANDOM_NOTE)
    else:
        picture = overlay_image(np.zeros((16, 12, 3), np.uint8), values, stride=4, scale_y=1,
                                scale_x=1, label="p2", note=RANDOM_NOTE * 2)  # fmt: skip
    bands, right = _red_bands(picture)
    assert picture.shape[1] <= 424  # about the narrowest canvas
    assert right < picture.shape[1] - 3  # no letter runs into the edge
    assert bands >= 2  # wrapped onto a second line, not cut off


def _black_runs(picture: np.ndarray) -> set[int]:
    """The lengths of the black runs of 100 pixels or more in the rows of a picture."""
    runs = set()
    for row in (picture.sum(axis=2) == 0).astype(np.int8):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row, [0]])))
        runs.update(int(n) for n in edges[1::2] - edges[::2] if n >= 100)
    return runs


@pytest.mark.parametrize("height, width", [(20, 2000), (300, 451)])
def test_every_level_panel_spans_the_input_panel(height, width):
    """A 2000x20 image: P5 is 1x42 cells (its row mostly padding), P2 4x334; drawn at their own
    aspect P5 came out half as wide as P2 and P6 a quarter, none as wide as the input."""
    resized_h, resized_w = round(height * 1333 / width), 1333
    if height == 300:
        resized_h, resized_w = 800, 1203
    levels = []
    for k in range(2, 7):
        cells = (-(-resized_h // 2**k), -(-resized_w // 2**k))
        levels.append({"name": f"p{k}", "map": np.zeros(cells), "stride": 2**k,
                       "shape": (1, 256, *cells), "range": (0.0, 1.0)})  # fmt: skip
    picture = overview_image(np.zeros((height, width, 3), np.uint8), levels, cmap="gray")
    runs = _black_runs(picture)
    assert len(runs) == 1  # the photo and all five levels: one width
    assert runs.pop() > (2000 if width == 2000 else 300)
    free = overview_image(np.zeros((height, width, 3), np.uint8), levels, cmap="gray",
                          span_input=False)  # fmt: skip
    assert len(_black_runs(free)) > 1  # each map at its own aspect (no photo to line up with)


def test_colour_bar_ends_say_whether_the_map_passes_reaches_or_stays_inside_them():
    """One --scale shared range over several levels: a level that goes beyond an end says
    <=/>=, one whose extreme is the end says min/max, one inside it the bare number (it said
    min/max, as if the shared end were that level's own extreme)."""
    from fpncli.viz.visualize import range_labels

    values = np.array([[0.0, 5.0, 10.0]])
    assert range_labels(values, (0.0, 10.0))[:2] == ("min 0", "max 10")
    assert range_labels(values, (2.0, 8.0))[:2] == ("<= 2", ">= 8")
    assert range_labels(values, (-5.0, 20.0))[:2] == ("-5", "20")
    assert range_labels(values, (-5.0, 8.0))[:2] == ("-5", ">= 8")
    # the data line and the ends read the finite values only, and the data line counts the
    # others (it read "min 1 / max 2 / data 1 .. 2" for a map of NaN only)
    for odd in (np.nan, np.inf, -np.inf):
        with_odd = np.array([[0.0, 5.0, 10.0, odd]], np.float32)
        want = ("min 0", "max 10", "data 0 .. 10 (1 NaN/inf)")
        assert range_labels(with_odd, (0.0, 10.0)) == want, odd
        assert range_labels(with_odd, (1.0, 10.0))[2] == "data 0 .. 10 (clipped, 1 NaN/inf)"
    nan = np.full((2, 2), np.nan)
    assert range_labels(nan, (0.0, 0.0)) == ("0", "0", "no finite value (4 NaN/inf)")


def test_pca_of_a_map_with_nan_or_inf_says_why_it_cannot_be_taken():
    """It was LAPACK's bare "Eigenvalues did not converge" (show's one-line error, no reason)."""
    feature = np.random.RandomState(0).randn(8, 6, 9).astype(np.float32)
    feature[0, 2, 3] = np.nan
    feature[1, 0, 0] = np.inf
    with pytest.raises(ValueError, match="pca needs finite values, and this level holds 2"):
        reduce_channels(feature, "pca")


@pytest.mark.parametrize("height, width", [(3, 500), (40, 30), (300, 451), (200, 1600), (1, 1)])
def test_picture_shapes_are_known_before_drawing_and_bound_their_png(height, width):
    """The disk estimate sizes each picture as drawn (``overlay_shape``, and the layouts the
    heatmap's and overview's bounds read), at most what a PNG of noise takes
    (``png_size_bound``): noise that deflate cannot shrink stays within it."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    values = rng.standard_normal((max(1, height // 4), max(1, width // 4))).astype(np.float32)
    label, note = "p2  stride 4  (1, 256, 10, 20)  channel 0 " * 3, "RANDOM " * 20
    drawn = heatmap_image(values, label=label, note=note)
    layout = _heatmap_layout(*values.shape, label, note, 256)
    assert drawn.shape[:2] == (layout.height, layout.width)
    written = len(heatmap_png(values, label=label, note=note))  # a map of noise: the worst case
    assert written <= heatmap_png_bound(*values.shape, label=label, note=note)
    over = overlay_image(photo, values, stride=4, scale_y=1.0, scale_x=1.0, label=label, note=note)
    assert over.shape[:2] == overlay_shape(height, width, label=label, note=note)
    assert overlay_shape(height, width) == (height, width)
    levels = [{"name": f"p{k}", "map": values, "stride": 4, "shape": (1, 256, 2, 2)}
              for k in range(2, 7)]  # fmt: skip
    view = overview_image(photo, levels, title=label, note=note)
    layout = _overview_layout(height, width, [width / height] * 6, label, note, 256,
                              OVERVIEW_MAX_WIDTH)  # fmt: skip
    assert view.shape[:2] == (layout.height, layout.width)
    for picture in (drawn, over, view, photo):
        noise = rng.integers(0, 256, picture.shape, dtype=np.uint8)
        assert len(encode_png(noise)) <= png_size_bound(*picture.shape[:2])
        assert png_size_bound(*picture.shape[:2]) <= 1.01 * noise.size + 2048


def test_the_gpu_tests_heatmap_comparison_counts_cells_not_pixels(tmp_path):
    """``tests/heatmaps.py`` (used by ``test_gpu.py``): a 14x10 map (the H200's failing P4)
    with one cell across a colour edge passes; a cell two colours off, three cells one off, or
    a wrong map fails; a label's rounding (1.234/1.235, 9.999/10) passes."""
    from heatmaps import assert_same_heatmap

    colours = heatmap_palette("viridis")[1]
    rng = np.random.default_rng(0)
    centres = (rng.integers(1, colours - 3, (14, 10)) + 0.5) / colours  # mid-bin values

    def picture(name, values, label="p4 range 1.234"):
        path = tmp_path / f"{name}.png"
        path.write_bytes(heatmap_png(values, vrange=(0.0, 1.0), label=label))
        return path

    def moved(cells, steps):
        out = centres.copy()
        for i, j in cells:
            out[i, j] += steps / colours
        return out

    want = picture("want", centres)
    assert_same_heatmap(want, picture("same", centres), (14, 10))
    assert_same_heatmap(want, picture("one", moved([(3, 4)], 1)), (14, 10))
    assert_same_heatmap(want, picture("two", moved([(3, 4), (9, 0)], -1)), (14, 10))
    assert_same_heatmap(want, picture("digit", centres, "p4 range 1.235"), (14, 10))
    nines = picture("nines", centres, "p4 range 9.999")  # a rounding that rewrites a number
    assert_same_heatmap(nines, picture("ten", centres, "p4 range 10"), (14, 10))
    for name, values in [("far", moved([(3, 4)], 2)), ("three", moved([(0, 0), (1, 1), (2, 2)], 1)),
                         ("wrong", centres[::-1].copy())]:  # fmt: skip
        with pytest.raises(AssertionError):
            assert_same_heatmap(want, picture(name, values), (14, 10))
    # the old measure, the share of equal pixels (>= 0.999), failed one cell of this map
    a = np.asarray(Image.open(want).convert("RGB"))
    b = np.asarray(Image.open(tmp_path / "one.png").convert("RGB"))
    assert np.all(a == b, axis=-1).mean() < 0.999
