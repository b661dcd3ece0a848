"""Hostile names and sizes: file names that are not UTF-8 (drawn, reported, sharded), pictures of
extreme shapes, --max-pixels against Pillow's own limit, hostile images given to show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import urllib.parse
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fpncli.viz.overview import overview_image

ROOT = Path(__file__).resolve().parent.parent
BAD = os.fsdecode(b"bad\xff\xfe")  # "bad\udcff\udcfe": bytes that are not UTF-8


def _fpncli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI in a process of its own: a segfault is a failed test, not a dead test run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "fpncli", *args], capture_output=True,
                          text=True, errors="replace", env=env, cwd=cwd, timeout=300)  # fmt: skip


def _small(*args: str) -> list[str]:
    return [*args, "--weights", "random", "--min-size", "64", "--max-size", "96", "--workers", "1"]


def _image(path: Path, size=(48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


# 1. Names that are not UTF-8 ----------------------------------------------------------------


def test_safe_text_keeps_every_letter_the_font_draws_and_marks_the_rest():
    """Pictures titled ``Æble_ø_ß.jpg`` read ``?ble_?_?.jpg`` (OpenCV's Hershey font has ASCII
    only, and Æ, ø and ß have no ASCII decomposition), ``phötö`` read ``photo``. Text that is not
    printable ASCII is now drawn in DejaVu Sans (matplotlib's own font): every letter it has is
    kept (composed, as macOS's decomposed names are); one it lacks only as its compatibility
    form (``Ａ`` -> ``A``), else as one visible U+FFFD per character, as are control characters:
    none is dropped. A byte of a name that is not UTF-8 (a lone surrogate, on which OpenCV
    segfaults) is written ``\\xNN``, as README says (it was ``?``)."""
    from fpncli.viz.text import safe_text

    m = "\ufffd"  # (text.MISSING_GLYPH)
    assert safe_text("p2  stride 4 (1, 256)") == "p2  stride 4 (1, 256)"
    assert safe_text("Æble_ø_ß.jpg") == "Æble_ø_ß.jpg"
    assert safe_text(f"{BAD}.png é\n") == f"bad\\xff\\xfe.png é{m}"  # as the report writes it
    assert safe_text(f"{BAD}.png") == "bad\\xff\\xfe.png"
    assert safe_text("phötö 1.png") == safe_text("pho\u0308to\u0308 1.png") == "phötö 1.png"
    assert safe_text("Crème brûlée, ﬁle ＡＢ") == "Crème brûlée, ﬁle AB"
    assert safe_text("猫.jpg 写真 한국.png") == f"{m}.jpg {m}{m} {m}{m}.png"  # one per character
    assert safe_text("\x00a\tb\x7f\u200b\u2028") == f"{m}a{m}b{m}{m}{m}"
    assert safe_text("ø" * 300) == "ø" * 300


def test_a_title_of_letters_outside_ascii_is_drawn_with_those_letters():
    """The overview, a heatmap and show's grid titled ``Æble_ø_ß.jpg`` were the very pictures
    titled ``?ble_?_?.jpg``; now the letters are drawn. A character the font lacks is drawn as a
    visible marker, the same for every such character, not dropped."""
    from fpncli.viz.channels import channel_grid
    from fpncli.viz.text import put_text, text_size
    from fpncli.viz.visualize import heatmap_image

    rgb = np.full((40, 48, 3), 90, np.uint8)
    level = {"name": "p2", "map": np.ones((10, 12), np.float32), "stride": 4, "shape": (1, 2)}
    maps = np.ones((2, 10, 12), np.float32)
    for draw in (
        lambda title: overview_image(rgb, [level], title=title),
        lambda title: heatmap_image(level["map"], label=title),
        lambda title: channel_grid(maps, [0, 1], title=title),
    ):
        letters, marks = draw("Æble_ø_ß.jpg"), draw("?ble_?_?.jpg")
        assert letters.shape == marks.shape and not np.array_equal(letters, marks)
    drawn = {}
    for text in ("猫", "犬", "\x07", ""):
        canvas = np.full((30, 40, 3), 255, np.uint8)
        put_text(canvas, text, (2, 22), 0.6)
        drawn[text] = canvas
    assert np.array_equal(drawn["猫"], drawn["犬"]) and np.array_equal(drawn["猫"], drawn["\x07"])
    assert (drawn["猫"] < 128).sum() > 10 and (drawn[""] == 255).all()  # visible, one each
    assert text_size("猫猫", 0.6) > text_size("猫", 0.6) > 0


def test_every_picture_draws_a_surrogate_or_non_ascii_text():
    """OpenCV segfaults on a lone surrogate: run the drawing in a process of its own."""
    code = f"""
import numpy as np
from fpncli.viz.channels import channel_grid
from fpncli.viz.visualize import heatmap_image, overlay_image
from fpncli.viz.overview import overview_image
text = {BAD!r} + " é"
rgb = np.zeros((40, 48, 3), np.uint8)
level = {{"name": text, "map": np.ones((10, 12), np.float32), "stride": 4, "shape": (1, 2)}}
heatmap_image(level["map"], label=text, note=text)
overview_image(rgb, [level], title=text, note=text)
overlay_image(rgb, level["map"], stride=4, scale_y=1, scale_x=1, label=text, note=text)
channel_grid(np.ones((2, 10, 12), np.float32), [0, 1], title=text, note=text)
print("drawn")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "drawn" in done.stdout, (done.returncode, done.stderr)


def test_a_name_that_is_not_utf8_extracts_shows_and_reports(tmp_path):
    src = tmp_path / "in"
    _image(src / f"{BAD}.png")
    _image(src / "ok.png")
    out = tmp_path / "out"
    done = _fpncli(*_small("extract", str(src), "-o", str(out), "--no-heatmaps"))
    assert done.returncode == 0, done.stderr
    folder = out / BAD
    assert (folder / "overview.png").is_file() and (out / "ok" / "manifest.json").is_file()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["input"]["path"] == str(src / f"{BAD}.png")  # JSON escapes it: read back

    save = tmp_path / "all.png"
    shown = _fpncli("show", str(folder), "--level", "all", "--save", str(save))
    assert shown.returncode == 0 and save.is_file(), shown.stderr

    report = _fpncli("report", str(out))
    assert report.returncode == 0, report.stderr
    page = (out / "report.html").read_text(encoding="utf-8")  # valid UTF-8
    assert "bad\\xff\\xfe" in page
    href = "bad%FF%FE/overview.png"
    assert f'href="{href}"' in page
    assert (out / os.fsdecode(urllib.parse.unquote_to_bytes(href))).is_file()

    diffed = _fpncli("diff", str(out), str(out), "-o", str(tmp_path / "d"), "--no-pictures")
    assert diffed.returncode == 0, diffed.stderr  # the CSV is UTF-8 text too
    assert "bad\\xff\\xfe,p2," in (tmp_path / "d" / "diff.csv").read_text(encoding="utf-8")


def test_a_name_that_is_not_utf8_goes_into_shards(tmp_path):
    pytest.importorskip("pyarrow.parquet", reason="--format wds needs pyarrow (fpncli[wds])")
    pytest.importorskip("fsspec", reason="--format wds needs fsspec (fpncli[wds])")
    import pyarrow.parquet as pq

    src = tmp_path / "in"
    _image(src / f"{BAD}.png")
    (src / f"{BAD}x.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    args = _small("extract", str(src), "-o", str(out), "--format", "wds", "--no-overview")
    done = _fpncli(*args)
    assert done.returncode == 1 and "not an image" in done.stderr + done.stdout, done.stderr
    assert not list(out.glob("*.partial*"))
    rows = {r["key"]: r for r in pq.read_table(out / "index.parquet").to_pylist()}
    assert rows["bad\\xff\\xfe"]["status"] == "ok"
    assert rows["bad\\xff\\xfex"]["status"] == "failed"
    assert rows["bad\\xff\\xfe"]["source"] == f"{src}/bad\\xff\\xfe.png"
    (shard,) = out.glob("shard-*.tar")
    with tarfile.open(shard) as tar:
        assert "bad\\xff\\xfe.json" in tar.getnames()
    again = _fpncli(*args)  # resumes: the done image is skipped, the broken one fails again
    assert again.returncode == 1 and "skipped 1" in again.stdout + again.stderr, again.stderr
    save = tmp_path / "key.png"
    shown = _fpncli("show", str(out), "--key", "bad\\xff\\xfe", "--save", str(save))
    assert shown.returncode == 0 and save.is_file(), shown.stderr


# 2. Pictures of extreme shapes ----------------------------------------------------------------


def test_a_one_row_map_is_upscaled_only_within_the_largest_side():
    from fpncli.viz.visualize import MAX_UPSCALED_SIDE, heatmap_image

    picture = heatmap_image(np.zeros((2, 1000), np.float32))  # was 128x: 256 x 128,000 pixels
    assert picture.shape[1] <= MAX_UPSCALED_SIDE and picture.shape[0] < 120
    assert heatmap_image(np.zeros((10, 12), np.float32)).shape[:2] == (340, 420)  # as before


ROW = np.zeros((1, 3000, 3), np.uint8)
ROW_LEVEL = {"name": "p2", "map": np.zeros((1, 750), np.float32), "stride": 4, "shape": (1, 2)}


def test_the_overview_of_a_one_row_photo_stays_within_its_width():
    from fpncli.viz.overview import OVERVIEW_MAX_WIDTH, overview_image

    overview = overview_image(ROW, [ROW_LEVEL], title="t")  # was 48,000 pixels wide
    assert overview.shape[1] <= OVERVIEW_MAX_WIDTH


def test_the_overlay_header_of_a_one_row_photo_stays_small():
    from fpncli.viz.visualize import overlay_image

    photo, level = ROW, ROW_LEVEL
    overlay = overlay_image(photo, level["map"], stride=4, scale_y=1, scale_x=1, label="p2")
    assert overlay.shape[0] < 100  # the header was 600 rows over a 1-row picture


# 3. --max-pixels past Pillow's own limit; 5. messages ----------------------------------------


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` (a few hundred bytes on disk)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + 3 * width), 9)  # one row: decoding stops at the end
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


def test_max_pixels_raised_past_pillows_limit_is_pillows_limit_for_the_load(tmp_path, monkeypatch):
    from fpncli.io import image_load, pillow_open

    seen = []
    real = pillow_open.Image.open

    def spy(*args, **kwargs):  # no 196 MP allocation: the limit Pillow checks with is enough
        seen.append(Image.MAX_IMAGE_PIXELS)
        raise ValueError("stop here")

    before = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(pillow_open.Image, "open", spy)
    with pytest.raises(ValueError, match="stop here"):
        image_load.load_image(_image(tmp_path / "a.png"), max_pixels=300_000_000)
    monkeypatch.setattr(pillow_open.Image, "open", real)
    assert seen == [300_000_000] and Image.MAX_IMAGE_PIXELS == before  # restored afterwards
    big = _png_header(tmp_path / "big.png", 14000, 14000)
    with pytest.raises(ValueError, match="decompression bomb") as refused:
        image_load.load_image(big)  # the default limit: refused, and says what to raise
    assert "--max-pixels" in str(refused.value) and "178956970" not in str(refused.value)


def test_a_small_limit_is_said_in_pixels(tmp_path):
    from fpncli.io.image_load import load_image

    with pytest.raises(ValueError, match=r"300x200 is 60,000 pixels, over the 10 pixels limit"):
        load_image(_image(tmp_path / "a.png", size=(300, 200)), max_pixels=10)


# 4. show with hostile images --------------------------------------------------------------------


def test_show_refuses_a_bomb_and_a_fifo_in_one_line(tmp_path):
    _png_header(tmp_path / "bomb.png", 100_000, 100_000)
    os.mkfifo(tmp_path / "f.jpg")
    for name, message in (("bomb.png", "decompression bomb"), ("f.jpg", "a FIFO")):
        done = _fpncli("show", str(tmp_path / name), "--weights", "random", "--save",
                       str(tmp_path / "x.png"))  # fmt: skip
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_symlink_loop_is_not_an_image_file(tmp_path):
    from fpncli.io.image_load import load_image

    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    with pytest.raises(ValueError, match="a symlink loop, not an image file"):
        load_image(tmp_path / "loop.jpg")


def test_an_image_file_opened_and_interrupted_anywhere_is_closed_once(tmp_path):
    """``open_regular`` closed the descriptor itself after ``os.fdopen`` had given it to the
    file object: a Ctrl-C just after the file object was made closed it twice, the second time
    raising EBADF in place of the KeyboardInterrupt, which the load then said was an
    "unreadable image ([Errno 9] Bad file descriptor)" (or closing a descriptor another thread
    had just been given); one just after ``os.open`` left the descriptor open. Interrupted
    wherever it can be, the load lets the KeyboardInterrupt out and leaves no descriptor open."""
    from interrupts import each_interrupt

    from fpncli.io import guard
    from fpncli.io.image_load import load_image

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)

    def lowest_free_descriptor() -> int:
        fd = os.open(path, os.O_RDONLY)
        os.close(fd)
        return fd

    free, points = lowest_free_descriptor(), 0
    functions = [
        f
        for f in vars(guard).values()
        if getattr(f, "__module__", None) == guard.__name__ and hasattr(f, "__code__")
    ]
    for where in each_interrupt(lambda: load_image(path), functions):
        assert lowest_free_descriptor() == free, f"a descriptor left open, interrupted at {where}"
        points += 1
    assert points >= 4
    assert load_image(path).rgb.shape == (8, 8, 3)
    with pytest.raises(ValueError, match="not a regular file \\(a folder\\)"):
        load_image(tmp_path)
    assert lowest_free_descriptor() == free


def _jpeg_with_orientation(path: Path, tagtype: int, payload: bytes, count: int = 1) -> Path:
    """A JPEG whose EXIF orientation tag has the given TIFF type and raw value."""
    import io
    import struct

    entry = struct.pack("<HHI", 0x0112, tagtype, count) + payload.ljust(4, b"\0")
    ifd = struct.pack("<H", 1) + entry + struct.pack("<I", 0)
    app1 = b"Exif\0\0" + b"II*\0" + struct.pack("<I", 8) + ifd
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])
    return path


def test_an_exif_orientation_that_is_not_1_to_8_is_ignored_as_detectron2_does(tmp_path):
    """Text, a float, 9 or 255 as the orientation: nothing is applied (Detectron2 looks the
    value up in a dict of 2..8), with a note, and the manifest says not transposed (a text one
    failed the image with int()'s bare message; 9 was recorded as transposed)."""
    import struct

    from fpncli.io.image_load import load_image

    cases = {
        "text": _jpeg_with_orientation(tmp_path / "text.jpg", 2, b"abc\0", 4),
        "float": _jpeg_with_orientation(tmp_path / "float.jpg", 11, struct.pack("<f", 6.5)),
        "nine": _jpeg_with_orientation(tmp_path / "nine.jpg", 3, struct.pack("<H", 9)),
        "six": _jpeg_with_orientation(tmp_path / "six.jpg", 3, struct.pack("<H", 6)),
    }
    for name, path in cases.items():
        image = load_image(path)
        if name == "six":  # the rotation Detectron2 applies: 96x64 stands up
            assert (image.width, image.height, image.exif_orientation) == (64, 96, 6)
            assert image.exif_transposed and not image.notes
        else:
            assert (image.width, image.height) == (96, 64), name
            assert not image.exif_transposed and image.exif_orientation == 1, name
            assert any("is not 1..8: ignored" in n for n in image.notes), name


def test_an_image_too_thin_for_max_size_fails_alone_naming_the_ratio(tmp_path):
    Image.fromarray(np.zeros((1, 5000, 3), np.uint8)).save(tmp_path / "thin.png")
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(tmp_path / "ok.png")
    result = _fpncli("extract", *_small(str(tmp_path / "thin.png"), str(tmp_path / "ok.png"),
                                        "-o", str(tmp_path / "out")))  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "thin.png: a 5000x1 image would be resized to 96x0" in result.stderr
    assert (tmp_path / "out" / "ok" / "manifest.json").is_file()


def test_a_postscript_file_named_like_an_image_is_never_rendered(tmp_path, monkeypatch):
    """Pillow's EPS plugin runs Ghostscript on the file: fpncli never opens that format."""
    from PIL import EpsImagePlugin

    from fpncli.io.image_load import load_image

    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a))
    path = tmp_path / "eps.png"
    path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ValueError, match="not an image Pillow can read"):
        load_image(path)
    assert ran == []


def test_a_folder_walk_takes_every_format_fpncli_reads_when_named(tmp_path):
    """``fpncli extract AV/p.avif`` read the file and ``fpncli extract AV`` passed over it without
    a word: the walk took a fixed list of 14 extensions, not AVIF's, TGA's, JPEG 2000's or
    QOI's. It takes the photo formats' extensions that this Pillow decodes itself (from
    Pillow's table; not those it only names: MPEG's header, the HDF5 stub), and not a folder's
    icons, textures or data files, whose formats are read when named."""
    from PIL import Image as PILImage
    from PIL import ImageFile

    from fpncli.io.image_load import load_image
    from fpncli.io.inputs import IMAGE_EXTENSIONS, discover_inputs
    from fpncli.io.pillow_open import pillow_extensions, pillow_formats

    folder = tmp_path / "AV"
    names = ["p.avif", "p.JP2", "p.png", "p.qoi", "p.tga"]
    for name in names:
        _image(folder / name)
    (folder / "clip.mpg").write_bytes(b"\x00\x00\x01\xb3\x04\x00\x30\x13\xff\xff\xe0" + bytes(20))
    (folder / "data.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(24))
    found = discover_inputs([str(folder)])
    assert [path.name for path, _ in found] == sorted(names)  # (sorted: "p.JP2" first)
    for path, _ in found:  # and each of them is read, as when named
        assert load_image(path).rgb.shape == (40, 48, 3), path
    assert IMAGE_EXTENSIONS <= pillow_extensions()  # only what this Pillow decodes itself
    for ext, name in PILImage.registered_extensions().items():
        if name in pillow_formats():
            stub = isinstance(PILImage.OPEN[name][0], type) and issubclass(
                PILImage.OPEN[name][0], ImageFile.StubImageFile
            )
            assert (ext in pillow_extensions()) != (stub or name == "MPEG"), (ext, name)
    # a folder's icons, textures and data files are no photos: read when named, not walked
    for name in ["icon.ico", "tex.dds", "track.fit"]:
        (folder / name).write_bytes(b"not a photo")
    assert [path.name for path, _ in discover_inputs([str(folder)])] == sorted(names)


def test_an_empty_file_is_said_to_be_empty(tmp_path):
    """The README lists "empty" apart from "not an image": a 0-byte file was "not an image
    Pillow can read", for extract and for show."""
    from fpncli.io.image_load import load_image

    _image(tmp_path / "in" / "ok.png")
    (tmp_path / "in" / "zero.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"zero\.png: empty file \(0 bytes\)$"):
        load_image(tmp_path / "in" / "zero.png")
    result = _fpncli("extract", *_small(str(tmp_path / "in"), "-o", str(tmp_path / "out")))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (failure,) = json.loads((tmp_path / "out" / "run.json").read_text())["failed"]
    assert failure["reason"].endswith("zero.png: empty file (0 bytes)"), failure
    assert (tmp_path / "out" / "ok" / "manifest.json").is_file()


def test_a_newline_in_a_failing_files_name_keeps_the_whole_reason(tmp_path):
    """The reason was cut at the first line: "nl/new" and no cause, in the summary and run.json."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "new\nline.png").write_text("not a picture")
    result = _fpncli("extract", *_small(str(tmp_path / "in"), "-o", str(tmp_path / "out")))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (failure,) = json.loads((tmp_path / "out" / "run.json").read_text())["failed"]
    assert failure["reason"].endswith("new\\nline.png: not an image Pillow can read")
    assert "\n" not in failure["reason"]


def test_float_and_32_bit_images_are_scaled_by_what_they_hold_with_a_true_note(tmp_path):
    """Over 255 they are scaled (top: the brightest value); within 0..255 (top None) they are
    what Pillow's convert("RGB") makes of them, as Detectron2 reads them."""
    from fpncli.io.image_load import load_image

    rng = np.random.default_rng(0)
    nan = np.full((8, 8), 100.0, np.float32)
    nan[0, 0], nan[0, 1] = np.nan, np.inf
    cases = {
        "i32.tif": (Image.fromarray((rng.random((8, 8)) * 2**31).astype(np.int32), "I"),
                    "I image scaled from 0..", 255),
        "i16.tif": (Image.fromarray(np.full((8, 8), 65535, np.int32), "I"),
                    "I image scaled from 16 bits", 255),
        "nan.tif": (Image.fromarray(nan, "F"), "2 non-finite value(s) read as Detectron2", None),
        "unit.tif": (Image.fromarray(rng.random((8, 8)).astype(np.float32), "F"),
                     "values 0..1 read as 0..255", None),
    }  # fmt: skip
    for name, (image, note, top) in cases.items():
        image.save(tmp_path / name)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy's "invalid value encountered in cast"
            loaded = load_image(tmp_path / name)
        assert any(note in n for n in loaded.notes), (name, loaded.notes)
        if top is not None:
            assert int(loaded.rgb.max()) == top, name
        else:
            pillow = np.asarray(Image.open(tmp_path / name).convert("RGB"))
            np.testing.assert_array_equal(loaded.rgb, pillow, err_msg=name)


def test_a_float_or_32_bit_image_within_0_255_is_pillows_conversion_exactly(tmp_path):
    """Rounded (np.rint), F pixels 0.4, 0.6, 254.6, 255 became 0, 1, 255, 255 where Detectron2's
    read_image (Pillow's convert("RGB"): clipped, fraction dropped) gives 0, 0, 254, 255; the
    features then differed by ~6e-3."""
    from fpncli.io.image_load import load_image

    floats = [0.4, 0.6, 254.6, 255.0, -1e30, -1, -0.5, -0.4, 0, 0.5, 0.999, 1, 1.5, 2.5, 127.5,
              128.49, 254.4, 254.5, 254.9999, np.nan, np.inf, -np.inf]  # fmt: skip
    ramp = np.linspace(-256, 255, 5120, dtype=np.float32).reshape(40, 128)  # steps of ~0.1
    cases = {
        "f.tif": Image.fromarray(np.array([floats], np.float32), "F"),
        "i.tif": Image.fromarray(np.array([[-70000, -1, 0, 1, 128, 255]], np.int32), "I"),
        "ramp.tif": Image.fromarray(ramp, "F"),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        loaded = load_image(tmp_path / name)
        pillow = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        np.testing.assert_array_equal(loaded.rgb, pillow, err_msg=name)
    assert load_image(tmp_path / "f.tif").rgb[0, :4, 0].tolist() == [0, 0, 254, 255]


@pytest.mark.parametrize("name, mode", [("dark.png", "I;16"), ("dark.tif", "I;16B")])
def test_a_dark_16_bit_image_is_scaled_from_16_bits_whatever_it_holds(tmp_path, name, mode):
    """A 16-bit image whose values were all <= 255 was read as 8-bit, 257 times too bright and
    with no note: the scale jumped with the content (255 gave 255, 256 gave 1)."""
    from fpncli.io.image_load import load_image

    for values, expected in (([0, 128, 255], [0, 0, 1]), ([255, 256, 65535], [1, 1, 255])):
        raw = np.array([values], dtype=">u2" if mode == "I;16B" else "<u2").tobytes()
        Image.frombytes(mode, (3, 1), raw).save(tmp_path / name)
        loaded = load_image(tmp_path / name)
        assert Image.open(tmp_path / name).mode == mode
        assert loaded.rgb[0, :, 0].tolist() == expected, values
        assert loaded.notes == [f"{mode} image scaled from 16 bits to 8 bits"]


def _bad_exif_images(folder: Path) -> dict[str, np.ndarray]:
    """Valid pictures whose EXIF block Pillow cannot parse: a PNG eXIf chunk and a WebP EXIF
    chunk of 0xff bytes (not a TIFF header), a PNG "Raw profile type exif" that is not hex, and
    a PNG eXIf chunk of a truncated TIFF header (``struct.error``)."""
    from PIL import PngImagePlugin

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:20, 0:30]
    pixels = np.stack([x * 8, y * 12, x + y], -1).astype(np.uint8)
    Image.fromarray(pixels).save(folder / "chunk.png", exif=b"\xff" * 40)
    Image.fromarray(pixels).save(folder / "webp.webp", exif=b"\xff" * 40, lossless=True)
    text = PngImagePlugin.PngInfo()
    text.add_text("Raw profile type exif", "\nexif\n       4\nzzzz\n")
    Image.fromarray(pixels).save(folder / "raw.png", pnginfo=text)
    Image.fromarray(pixels).save(folder / "short.png", exif=b"II*\x00")
    return {"chunk.png": pixels, "webp.webp": pixels, "raw.png": pixels, "short.png": pixels}


def test_a_damaged_exif_block_leaves_the_image_unturned_with_a_note(tmp_path):
    """Pillow's getexif raises on these ("not a TIFF file", bad hex): the image was refused as
    unreadable, where Detectron2 reads it (it catches getexif's errors) without turning it."""
    from fpncli.io.image_load import load_image

    for name, pixels in _bad_exif_images(tmp_path).items():
        loaded = load_image(tmp_path / name)
        np.testing.assert_array_equal(loaded.rgb, pixels, err_msg=name)
        assert (loaded.exif_orientation, loaded.exif_transposed) == (1, False), name
        assert loaded.notes == ["EXIF unreadable: orientation not applied"], name
    # a damaged image with it is still refused, for its pixels
    cut = tmp_path / "cut.png"
    cut.write_bytes((tmp_path / "chunk.png").read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"cut\.png: unreadable image \(image file is trunc"):
        load_image(cut)


def test_a_pillow_image_with_a_damaged_exif_block_extracts_as_its_file_does(tmp_path):
    """``fpncli.extract(Image.open(f))`` raised getexif's ValueError or struct.error where
    ``fpncli.extract(f)`` read the file, unturned, with a note: both read it the same way."""
    import fpncli

    model = fpncli.load_backbone("random")
    for name, pixels in _bad_exif_images(tmp_path).items():
        by_path = fpncli.extract(tmp_path / name, model, min_size=32, max_size=64)
        with Image.open(tmp_path / name) as pil:
            in_memory = fpncli.extract(pil, model, min_size=32, max_size=64)
        for got in (by_path, in_memory):
            np.testing.assert_array_equal(got.image.rgb, pixels, err_msg=name)
            assert got.image.notes == ["EXIF unreadable: orientation not applied"], name
            assert got.image.exif_orientation == 1, name
        for level, features in by_path.features.items():
            assert np.array_equal(features.numpy(), in_memory.features[level].numpy()), name


def test_a_damaged_exif_block_extracts_with_the_note_in_the_manifest(tmp_path):
    images = _bad_exif_images(tmp_path / "in")
    result = _fpncli("extract", *_small(str(tmp_path / "in"), "-o", str(tmp_path / "out")),
                     "--no-heatmaps", "--no-overview")  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in images:
        manifest = json.loads((tmp_path / "out" / Path(name).stem / "manifest.json").read_text())
        assert manifest["input"]["notes"] == ["EXIF unreadable: orientation not applied"], name
        assert manifest["input"]["exif_orientation"] == 1, name
