"""Reading images (EXIF, modes, bombs, bad files) and DefaultPredictor preprocessing."""

from __future__ import annotations

import contextlib
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from fpncli.io.image_load import convert_pillow_image, load_image
from fpncli.io.pillow_open import open_image
from fpncli.io.preprocess import (
    prepare,
    resize_for_model,
    resized_shape,
    rgb_to_bgr,
    to_color_order,
)
from fpncli.weights.registry import DETECTRON2_INPUT, TORCHVISION_INPUT


@pytest.mark.parametrize(
    "size, expected",
    [((480, 640), (800, 1067)), ((427, 640), (800, 1199)), ((300, 451), (800, 1203)),
     ((640, 480), (1067, 800)), ((500, 1500), (444, 1333)), ((800, 1280), (800, 1280))],
)  # fmt: skip
def test_resized_shape_is_detectron2s(size, expected):
    assert resized_shape(*size, 800, 1333) == expected


def test_resize_is_pillow_bilinear_on_uint8():
    rgb = np.random.RandomState(0).randint(0, 255, (30, 45, 3), np.uint8)
    prepared = prepare(rgb, TORCHVISION_INPUT, min_size=40, max_size=100)
    expected = np.asarray(Image.fromarray(rgb).resize((60, 40), Image.BILINEAR)).astype(np.float32)
    mean = np.asarray(TORCHVISION_INPUT.pixel_mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(TORCHVISION_INPUT.pixel_std, np.float32).reshape(3, 1, 1)
    np.testing.assert_array_equal(
        prepared.tensor[:, :40, :60], (expected.transpose(2, 0, 1) - mean) / std
    )
    assert (prepared.resized_height, prepared.resized_width) == (40, 60)
    assert (prepared.padded_height, prepared.padded_width) == (64, 64)
    assert prepared.scale == pytest.approx(40 / 30)


def test_bgr_swap_happens_exactly_once():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 10  # R, G, B all different
    t = prepare(rgb, DETECTRON2_INPUT, resize=False).tensor
    mean_b, mean_g, mean_r = DETECTRON2_INPUT.pixel_mean
    assert t[0, 0, 0] == pytest.approx(10 - mean_b)  # channel 0 is blue for Detectron2
    assert t[1, 0, 0] == pytest.approx(100 - mean_g)
    assert t[2, 0, 0] == pytest.approx(200 - mean_r)
    t = prepare(rgb, TORCHVISION_INPUT, resize=False).tensor
    assert t[0, 0, 0] == pytest.approx((200 - 0.485 * 255) / (0.229 * 255))  # red first for RGB
    np.testing.assert_array_equal(rgb_to_bgr(rgb)[0, 0], [10, 100, 200])
    assert to_color_order(rgb, "RGB") is rgb


def test_zero_padding_to_32_after_normalization():
    rgb = np.full((33, 70, 3), 255, np.uint8)
    prepared = prepare(rgb, DETECTRON2_INPUT, resize=False)
    assert prepared.tensor.shape == (3, 64, 96)
    assert (prepared.tensor[:, 33:, :] == 0).all() and (prepared.tensor[:, :, 70:] == 0).all()
    assert prepared.tensor[0, 32, 69] == pytest.approx(255 - 103.53)
    assert prepared.scale == 1.0


def _save(path, image, **kwargs):
    image.save(path, **kwargs)
    return path


def test_modes_become_rgb(tmp_path):
    gray = load_image(_save(tmp_path / "g.png", Image.fromarray(np.full((4, 5), 77, np.uint8))))
    assert gray.rgb.shape == (4, 5, 3) and (gray.rgb == 77).all()

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red
    loaded = load_image(_save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA")))
    assert (loaded.rgb[..., 0] == 200).all() and "alpha" in loaded.notes[0]

    palette = Image.fromarray(np.zeros((4, 5), np.uint8), "P")
    palette.putpalette([10, 20, 30] + [0] * 765)
    palette.info["transparency"] = 0
    loaded = load_image(_save(tmp_path / "p.png", palette, transparency=0))
    assert (loaded.rgb == [10, 20, 30]).all()

    cmyk = Image.new("CMYK", (5, 4), (0, 255, 255, 0))  # red in CMYK
    loaded = load_image(_save(tmp_path / "c.jpg", cmyk, quality=100))
    assert loaded.rgb[0, 0, 0] > 200 and loaded.rgb[0, 0, 1] < 60

    sixteen = Image.fromarray(np.full((4, 5), 65535, np.uint16))
    loaded = load_image(_save(tmp_path / "s.png", sixteen))
    assert (loaded.rgb == 255).all() and "16 bits" in loaded.notes[0]


@pytest.mark.parametrize("name, channels", [("c.png", 3), ("a.png", 4), ("c.tiff", 3)])
def test_a_16_bit_colour_image_keeps_pillows_8_bits_with_a_note(tmp_path, name, channels):
    """Pillow opens a 16-bit RGB(A) PNG as "RGB"/"RGBA", each value's high byte: nothing said
    so. The pixels stay Pillow's (Detectron2 reads with Pillow too); the note says it."""
    import cv2

    rng = np.random.RandomState(0)
    bgr16 = rng.randint(0, 65536, (4, 5, channels), dtype=np.int64).astype(np.uint16)
    path = tmp_path / name
    assert cv2.imwrite(str(path), bgr16)
    loaded = load_image(path)
    high = (bgr16[:, :, 2::-1] >> 8).astype(np.uint8)  # cv2's BGR(A) -> RGB, the high byte
    assert np.array_equal(loaded.rgb, high)
    assert np.array_equal(loaded.rgb, np.asarray(Image.open(path).convert("RGB")))
    mode = "RGB" if channels == 3 else "RGBA"
    assert loaded.notes[0] == (
        f"16-bit {mode} read as 8 bits (each value's high byte, as Pillow and Detectron2 do)"
    )
    eight = load_image(_save(tmp_path / "8.png", Image.fromarray(high)))
    assert eight.notes == [] and np.array_equal(eight.rgb, high)


def test_a_16_bit_ppm_keeps_pillows_scaled_8_bits_with_a_note(tmp_path):
    """A 16-bit PPM (maxval 65535) is scaled to 8 bits by Pillow's ppm decoder: the pixels stay
    Pillow's, with a note naming the scaling; an 8-bit PPM gets none."""
    import cv2

    rgb16 = np.array([[[0, 257, 65535], [32768, 1000, 65280]]], np.uint16)
    path = tmp_path / "c.ppm"
    assert cv2.imwrite(str(path), rgb16[:, :, ::-1])  # cv2 writes BGR
    loaded = load_image(path)
    assert np.array_equal(loaded.rgb, np.asarray(Image.open(path).convert("RGB")))
    assert loaded.rgb[0, 0].tolist() == [0, 1, 255]
    assert loaded.notes == ["16-bit RGB read as 8 bits (scaled from 0..65535, as Pillow and "
                            "Detectron2 do)"]  # fmt: skip
    eight = tmp_path / "e.ppm"
    assert cv2.imwrite(str(eight), np.full((2, 3, 3), 200, np.uint8))
    assert load_image(eight).notes == []


def test_a_565_bmp_gets_no_16_bit_note(tmp_path):
    """A 5-6-5 BMP has 16 bits a pixel (Pillow's raw mode BGR;16), not 16 bits a sample:
    Pillow expands it to 8 bits a channel, losing nothing, and no note says otherwise."""
    import struct

    h, w = 2, 4
    pixels = np.array([[0xF800, 0x07E0, 0x001F, 0xFFFF]] * h, "<u2")  # red, green, blue, white
    data = pixels[::-1].tobytes()
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 16, 3, len(data), 2835, 2835, 0, 0)
    masks = struct.pack("<III", 0xF800, 0x07E0, 0x001F)
    offset = 14 + len(info) + len(masks)
    head = struct.pack("<2sIHHI", b"BM", offset + len(data), 0, 0, offset)
    path = tmp_path / "565.bmp"
    path.write_bytes(head + info + masks + data)
    loaded = load_image(path)
    assert loaded.rgb[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]
    assert loaded.notes == []


def test_multiframe_uses_the_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((4, 5, 3), v, np.uint8)) for v in (10, 200)]
    path = tmp_path / "m.tif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    loaded = load_image(path)
    assert (loaded.rgb == 10).all() and "first of 2 frames used" in loaded.notes


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_is_applied(tmp_path, orientation):
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:5, :5] = 255  # a white top-left corner marks the orientation
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path / "r.jpg", Image.fromarray(pixels), exif=exif, quality=100)
    loaded = load_image(path)
    assert loaded.exif_transposed and loaded.exif_orientation == orientation
    transpose = {6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90,
                 3: Image.Transpose.ROTATE_180}[orientation]  # fmt: skip
    expected = np.asarray(Image.open(path).convert("RGB").transpose(transpose))
    np.testing.assert_array_equal(loaded.rgb, expected)
    assert loaded.rgb.shape[:2] == ((30, 20) if orientation in (6, 8) else (20, 30))


@pytest.mark.parametrize("orientation", [3, 6])
@pytest.mark.parametrize("tag_kept", [False, True])
def test_a_tiff_is_turned_once_by_its_orientation(tmp_path, monkeypatch, orientation, tag_kept):
    """Pillow turns a TIFF by its Orientation tag as it loads it. Before Pillow 10.1 its getexif
    still gave the tag afterwards (``tag_kept`` emulates that), and exif_transpose turned the
    TIFF a second time: an orientation 3 came out as stored, a 6 as an 8."""
    from PIL import TiffImagePlugin

    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:5, :5] = 255  # a white top-left corner marks the orientation
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[0x0112] = orientation
    path = _save(tmp_path / "r.tif", Image.fromarray(pixels), tiffinfo=tags)
    if tag_kept:
        load_end = TiffImagePlugin.TiffImageFile.load_end

        def load_end_keeping_the_tag(self):
            load_end(self)
            self.getexif()[0x0112] = orientation

        monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "load_end", load_end_keeping_the_tag)
    loaded = load_image(path)
    transpose = {6: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}[orientation]
    expected = np.asarray(Image.fromarray(pixels).transpose(transpose))
    np.testing.assert_array_equal(loaded.rgb, expected)
    assert loaded.exif_transposed and loaded.exif_orientation == orientation


def test_bad_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    good = _save(tmp_path / "good.jpg", Image.fromarray(np.zeros((64, 64, 3), np.uint8)))
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"empty\.jpg: empty file \(0 bytes\)"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ValueError, match="not an image"):
        load_image(tmp_path / "text.jpg")
    with pytest.raises(ValueError, match="unreadable image"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(FileNotFoundError, match="no such image file"):
        load_image(tmp_path / "missing.jpg")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = _save(tmp_path / "bomb.png", Image.new("1", (20000, 20000)))
    assert bomb.stat().st_size < 200_000  # tiny on disk, 400 MP when decoded
    with pytest.raises(ValueError, match="decompression bomb"):
        load_image(bomb)
    with open_image(bomb, None) as im:  # no limit: the header read, Pillow's check off too
        assert im.size == (20000, 20000) and Image.MAX_IMAGE_PIXELS is None
    with pytest.raises(ValueError, match="is 100 pixels, over the 50 pixels limit"):
        load_image(_save(tmp_path / "s.png", Image.new("RGB", (10, 10))), max_pixels=50)


def test_loads_in_threads_leave_the_warning_filters_as_they_were(tmp_path, monkeypatch):
    """Two decoding threads, the second entering while the first is inside and leaving after
    it: a catch_warnings per load let the second restore the first's "ignore UserWarning" as
    the process's filter for good."""
    from fpncli.io import pillow_open

    path = _save(tmp_path / "a.png", Image.fromarray(np.zeros((8, 8, 3), np.uint8)))
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    real = pillow_open.open_regular

    def ordered(*args):  # runs inside open_image's filters
        if threading.current_thread().name == "first":
            first_in.set()
            second_in.wait(10)
        else:
            first_in.wait(10)
            second_in.set()
            first_out.wait(10)
        return real(*args)

    def first() -> None:
        load_image(path)
        first_out.set()

    monkeypatch.setattr(pillow_open, "open_regular", ordered)
    before = list(warnings.filters)
    threads = [threading.Thread(target=first, name="first"),
               threading.Thread(target=load_image, args=(path,), name="second")]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert first_out.is_set() and not any(t.is_alive() for t in threads)
    assert warnings.filters == before


def test_a_load_in_another_thread_leaves_the_users_warnings_and_limit_alone(tmp_path, monkeypatch):
    """While a background thread loads an image, the main thread's own warnings are shown (a
    process-wide "ignore UserWarning" swallowed them), also Pillow's (the user's own Pillow
    code); a warning filter and Pillow's limit the user sets meanwhile stay after the load (the
    load's end put the filters and the limit from before it back). Pillow's warnings within the
    load stay off stderr, and fpncli's filter leaves with the load."""
    from fpncli.io import pillow_open

    path = _save(tmp_path / "a.png", Image.fromarray(np.zeros((8, 8, 3), np.uint8)))
    inside, done = threading.Event(), threading.Event()
    real = pillow_open.open_regular

    def held(*args):  # runs inside the load's settings, in the loading thread
        pillow_warning("a Pillow warning within the load")
        inside.set()
        done.wait(30)
        return real(*args)

    def pillow_warning(text: str) -> None:  # as Pillow's plugins warn (module PIL.*)
        warnings.warn_explicit(text, UserWarning, "TiffImagePlugin.py", 1, "PIL.TiffImagePlugin")

    monkeypatch.setattr(pillow_open, "open_regular", held)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # put back after
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        loading = threading.Thread(target=load_image, args=(path,), kwargs={"max_pixels": 10**9})
        loading.start()
        assert inside.wait(30)
        assert Image.MAX_IMAGE_PIXELS == 10**9  # raised for the load, which needs it
        warnings.warn("the user's own warning", UserWarning, stacklevel=1)
        pillow_warning("the user's own Pillow warning")
        warnings.filterwarnings("ignore", message="the user's filter")
        Image.MAX_IMAGE_PIXELS = 123_456_789
        done.set()
        loading.join(30)
        assert not loading.is_alive()
        assert [str(w.message) for w in seen] == [
            "the user's own warning", "the user's own Pillow warning"
        ]  # fmt: skip
        assert warnings.filters[0][1].pattern == "the user's filter"
        assert warnings.filters[1:] == before
        assert Image.MAX_IMAGE_PIXELS == 123_456_789
    assert pillow_open._loads == []


def test_a_load_that_fails_to_start_leaves_pillow_as_it_was(tmp_path, monkeypatch):
    """Setting Pillow's limit failed after the load was counted (``max_pixels=None`` made
    ``max`` raise): the value stayed in the loads in progress and the warning filters stayed
    caught, so every later load in the process failed too. A failed start is undone, first
    load or not, and the loads after it work."""
    from fpncli.io import pillow_open

    path = _save(tmp_path / "a.png", Image.fromarray(np.zeros((8, 8, 3), np.uint8)))
    before, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    real = pillow_open._set_pillow_limit

    def failing() -> None:
        raise RuntimeError("cannot set it")

    monkeypatch.setattr(pillow_open, "_set_pillow_limit", failing)
    with pytest.raises(RuntimeError, match="cannot set it"), open_image(path):  # the first load
        pass
    assert (pillow_open._loads, Image.MAX_IMAGE_PIXELS, warnings.filters) == ([], before, filters)
    monkeypatch.setattr(pillow_open, "_set_pillow_limit", real)
    with open_image(path, 1000):  # another load in progress
        monkeypatch.setattr(pillow_open, "_set_pillow_limit", failing)
        with pytest.raises(RuntimeError, match="cannot set it"), open_image(path, 2000):
            pass
        monkeypatch.setattr(pillow_open, "_set_pillow_limit", real)
        assert [load.max_pixels for load in pillow_open._loads] == [1000]
    assert (pillow_open._loads, Image.MAX_IMAGE_PIXELS, warnings.filters) == ([], before, filters)
    assert load_image(path).rgb.shape == (8, 8, 3)


@pytest.mark.parametrize("outer", [False, True])
def test_a_load_interrupted_anywhere_leaves_pillow_as_it_was(tmp_path, monkeypatch, outer):
    """A Ctrl-C landing between the settings' lock and their ``try`` (or partway through adding
    the filter entry, or through giving the settings back) left Pillow's limit off for the rest
    of the process, a ``None`` in the loads in progress that every later load kept it off for,
    and fpncli's warning filter entry behind. Wherever a KeyboardInterrupt lands in a load's
    settings, the first load's or one beside another load in progress (``outer``), they are as
    before it, and the loads after it give everything back."""
    from interrupts import each_interrupt

    from fpncli.io import pillow_open

    path = _save(tmp_path / "a.png", Image.fromarray(np.zeros((8, 8, 3), np.uint8)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # put back after
    before, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)

    def settings() -> tuple:
        thread = list(getattr(pillow_open._loading, "loads", []))
        return Image.MAX_IMAGE_PIXELS, list(warnings.filters), list(pillow_open._loads), thread

    def load() -> None:
        with open_image(path, None) as im:  # None: Pillow's limit off during the load
            im.load()

    functions = [f for f in vars(pillow_open).values()
                 if getattr(f, "__module__", None) == pillow_open.__name__
                 and hasattr(getattr(f, "__wrapped__", f), "__code__")]  # fmt: skip
    with open_image(path, 10**9) if outer else contextlib.nullcontext():
        expected, points = settings(), 0
        for where in each_interrupt(load, functions):
            assert settings() == expected, f"interrupted at {where}"
            points += 1
        assert points > 20  # the settings' start and end, and the functions they call
    assert (pillow_open._loads, Image.MAX_IMAGE_PIXELS, warnings.filters) == ([], before, filters)
    assert load_image(path).rgb.shape == (8, 8, 3)


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "CMYK", "I;16"])
def test_resizing_from_the_decoded_image_equals_resizing_its_array(tmp_path, mode):
    """The pipeline resizes straight from Pillow (``LoadedImage.pixels``): the same pixels as
    Detectron2's ``Image.fromarray(array).resize``; the array itself is made only when read."""
    import pickle

    from fpncli.io.preprocess import resize_for_model

    rgb = np.random.RandomState(1).randint(0, 255, (61, 83, 3), np.uint8)
    image = Image.fromarray(rgb)
    if mode == "I;16":
        image = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    elif mode != "RGB":
        image = image.convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    image.save(path)
    loaded = load_image(path)
    assert (loaded.height, loaded.width, loaded.nbytes) == (61, 83, 61 * 83 * 3)
    copy = pickle.loads(pickle.dumps(loaded))  # what the Ray engine sends between processes
    held = loaded.pixels
    assert isinstance(held, Image.Image) == (mode != "I;16")  # 16-bit: scaled in numpy
    array = np.asarray(Image.open(path).convert("RGB")) if mode != "I;16" else loaded.rgb
    for source in (held, array):
        pixels, prepared = resize_for_model(source, DETECTRON2_INPUT, min_size=50, max_size=90)
        expected = np.asarray(Image.fromarray(array).resize((68, 50), Image.BILINEAR))
        np.testing.assert_array_equal(pixels, expected)
        assert (prepared.resized_height, prepared.resized_width) == (50, 68)
    np.testing.assert_array_equal(loaded.rgb, array)
    np.testing.assert_array_equal(copy.rgb, array)
    assert loaded.pixels is loaded.rgb  # made once, then held as the array
    loaded.drop_pixels()
    assert (loaded.height, loaded.width) == (61, 83)
    with pytest.raises(ValueError, match="pixels were not kept"):
        _ = loaded.rgb


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 5, 3), (5, 0, 3)])
@pytest.mark.parametrize("resize", [True, False])
def test_an_empty_image_is_refused(shape, resize):
    """A side of 0 (an empty array, as ``fpncli.extract`` may be given) is refused in one line;
    resized, it had raised ZeroDivisionError in ``resized_shape``."""
    rgb = np.zeros(shape, np.uint8)
    size = f"{shape[1]}x{shape[0]}"
    for image in (rgb, Image.new("RGB", (shape[1], shape[0]))):
        with pytest.raises(
            ValueError, match=f"^expected an image with pixels, got an empty {size}"
        ):
            resize_for_model(image, DETECTRON2_INPUT, min_size=64, max_size=96, resize=resize)


def test_a_pillow_image_is_converted_as_its_file_but_not_turned(tmp_path):
    """An in-memory Pillow image (``fpncli.extract`` takes one) becomes 8-bit RGB with the
    pixels and notes ``load_image`` gives its file, except that its EXIF orientation is not
    applied, with a note; pixels Pillow cannot decode are a ValueError."""
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    images = {
        "g.png": Image.fromarray(np.full((4, 5), 77, np.uint8)),
        "a.png": Image.fromarray(rgba, "RGBA"),
        "s.png": Image.fromarray(np.full((4, 5), 65535, np.uint16)),
        "c.png": Image.fromarray(np.arange(60, dtype=np.uint8).reshape(4, 5, 3)),
    }
    for name, image in images.items():
        from_file = load_image(_save(tmp_path / name, image))
        for source in (image, Image.open(tmp_path / name)):
            converted = convert_pillow_image(source)
            np.testing.assert_array_equal(converted.rgb, from_file.rgb)
            assert converted.notes == from_file.notes and converted.path == "", name
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:5, :5] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path / "r.jpg", Image.fromarray(pixels), exif=exif, quality=100)
    converted = convert_pillow_image(Image.open(path))
    np.testing.assert_array_equal(converted.rgb, np.asarray(Image.open(path).convert("RGB")))
    assert not converted.exif_transposed and converted.rgb.shape == (20, 30, 3)
    assert converted.notes == ["EXIF orientation 6 not applied (an in-memory image)"]
    (tmp_path / "cut.jpg").write_bytes(path.read_bytes()[:-100])  # opens, fails to decode
    with pytest.raises(ValueError, match=r"^unreadable image \(image file is truncated"):
        convert_pillow_image(Image.open(tmp_path / "cut.jpg"))
