"""``fpncli.load_extraction``: what the CLI wrote, read back without re-implementing paths."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import fpncli
from fpncli.io.extraction import find_extractions, find_manifests
from fpncli.io.manifest import is_complete, read_manifest
from fpncli.io.npy import read_npy
from fpncli.io.run_log import read_run_log


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4),
        np.asfortranarray(np.arange(24, dtype=np.float16).reshape(2, 3, 4)),
        np.arange(6, dtype=">f4").reshape(2, 3),
        np.zeros((1, 256, 0, 0), np.float32),
    ],
)
@pytest.mark.parametrize("mmap", [False, True])
def test_read_npy_reads_what_numpy_loads(tmp_path, array, mmap):
    """read_npy parses the header once and reads the data itself: the same array, order,
    byte order, type (np.memmap) and writeability as numpy's own loaders."""
    path = tmp_path / "a.npy"
    np.save(path, array)
    ours, numpys = read_npy(path, mmap=mmap), np.load(path, mmap_mode="r" if mmap else None)
    assert type(ours) is type(numpys) and ours.dtype == numpys.dtype
    assert ours.shape == numpys.shape and np.array_equal(ours, numpys)
    assert ours.flags.writeable == numpys.flags.writeable
    assert ours.flags.f_contiguous == numpys.flags.f_contiguous


def test_load_extraction_levels_manifest_image(sample_extraction):
    ex = fpncli.load_extraction(sample_extraction / "chelsea")
    assert ex.manifest["input"]["width"] == 451 and ex.random_weights
    assert sorted(ex.levels) == ["p2", "p3", "p4", "p5", "p6"]
    for name, array in ex.levels.items():
        assert isinstance(array, np.memmap) and not array.flags.writeable
        meta = ex.manifest["levels"][name]
        assert list(array.shape) == meta["shape"]
        valid = ex.valid(name)
        assert valid.shape[-2:] == (meta["valid_height"], meta["valid_width"])
        assert float(valid.min()) == pytest.approx(meta["min"])
        assert float(valid.max()) == pytest.approx(meta["max"])
    assert ex.image.shape == (300, 451, 3) and ex.image.dtype == np.uint8
    # a file inside the folder works too
    assert fpncli.load_extraction(sample_extraction / "chelsea" / "p3.npy").folder == ex.folder


def test_find_extractions_and_run_log(sample_extraction):
    names = [p.name for p in find_extractions(sample_extraction)]
    assert names == ["chelsea", "coffee", "rocket"]
    log = read_run_log(sample_extraction)
    assert log["done"] == 3 and log["failed"] == [] and log["weights"] == "random"


def test_load_extraction_errors(sample_extraction, tmp_path):
    with pytest.raises(FileNotFoundError, match="holds image folders"):
        fpncli.load_extraction(sample_extraction)
    with pytest.raises(FileNotFoundError, match="no such"):
        fpncli.load_extraction(tmp_path / "nope")
    bad = tmp_path / "bad"
    shutil.copytree(sample_extraction / "coffee", bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["levels"]["p2"]["file"] = "../../secret.npy"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="outside the folder"):
        fpncli.load_extraction(bad)


def test_a_manifest_that_is_not_json_is_said_to_be_so_and_redone_on_resume(
    sample_extraction, tmp_path
):
    """load_extraction names the file and what is wrong with it (it said the manifest was
    missing); resuming still takes the folder for not complete, to be redone."""
    root = tmp_path / "out"
    shutil.copytree(sample_extraction, root)
    bad = root / "coffee"
    (bad / "manifest.json").write_text("{bad")
    with pytest.raises(ValueError, match=r"coffee/manifest.json is not valid JSON: Expecting"):
        fpncli.load_extraction(bad)
    assert read_manifest(bad) is None and not is_complete(bad)  # extract redoes it
    assert [p.name for p in find_extractions(root)] == ["chelsea", "rocket"]
    assert [p.name for p in find_manifests(root)] == ["chelsea", "coffee", "rocket"]
    (bad / "manifest.json").unlink()  # none at all: missing, as before
    with pytest.raises(FileNotFoundError, match="coffee holds no extraction .manifest.json miss"):
        fpncli.load_extraction(bad)


def test_load_extraction_of_a_wds_output_says_how_to_load_its_images(sample_shards):
    """It said the folder held no complete extraction, as of a folder of photos."""
    with pytest.raises(FileNotFoundError) as error:
        fpncli.load_extraction(sample_shards)
    says = (f"{sample_shards} is a --format wds output, not one image's folder: load an image of "
            f"it with fpncli.io.catalog.open_extractions({str(sample_shards)!r}).load(KEY), KEY "
            "one of its .keys()")  # fmt: skip
    assert str(error.value) == says
    from fpncli.io.catalog import open_extractions  # what it says works

    found = open_extractions(sample_shards)
    assert sorted(found.load(found.keys()[0]).levels) == ["p2", "p3", "p4", "p5", "p6"]


def test_image_gone_is_none_with_a_warning(sample_extraction, tmp_path, caplog):
    """README: ``saved.image`` is "None, with a warning, once the photo is moved or deleted";
    it was None without one (as a photo unreadable or replaced since says why). A dangling
    symlink's photo is gone too."""
    copy = tmp_path / "c"
    shutil.copytree(sample_extraction / "coffee", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (tmp_path / "link.jpg").symlink_to(tmp_path / "deleted.jpg")
    for gone in (tmp_path / "gone.jpg", tmp_path / "link.jpg"):
        manifest["input"]["path"] = str(gone)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        caplog.clear()
        assert fpncli.load_extraction(copy).image is None
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
            f"the input photo {gone} is gone (moved or deleted)"
        ]


def test_check_manifest_takes_every_colour_range_fpncli_writes(sample_extraction):
    """A level's ``range`` as extract writes it: two numbers, equal for a constant map
    (``value_range``), ``[0, 0]`` for one with no finite value; or none (not drawn)."""
    from fpncli.io.manifest import check_manifest

    manifest = json.loads((sample_extraction / "chelsea" / "manifest.json").read_text())
    assert all(isinstance(m["range"], list) for m in manifest["levels"].values())
    for vrange in ([0.0, 0.0], [3.5, 3.5], [-3.4e38, 3.4e38], [-1, 2], None):
        manifest["levels"]["p3"]["range"] = vrange
        assert check_manifest(manifest, "m") is manifest
    del manifest["levels"]["p3"]["range"]
    assert check_manifest(manifest, "m") is manifest
    manifest["levels"]["p3"]["range"] = [0.0, float("nan")]
    with pytest.raises(ValueError, match=r"^m is malformed: 'levels.p3.range' is a list"):
        check_manifest(manifest, "m")


def test_check_manifest_bounds_the_resize_scale(sample_extraction):
    """A resize scale is positive and at most 1e5 (an image of 1e10 pixels: no run holds one);
    a forged 1e300 passed, and show --overlay then cast it past int64 (a RuntimeWarning and a
    garbage overlay, exit 0)."""
    from fpncli.io.manifest import check_manifest

    manifest = json.loads((sample_extraction / "chelsea" / "manifest.json").read_text())
    for scale in (1e-3, 1, 9459.0, 1e5):  # 9459: a 1-pixel side at the default --max-pixels
        manifest["preprocess"].update(scale_x=scale, scale_y=scale)
        assert check_manifest(manifest, "m") is manifest
    for key, scale in (("scale_x", 1e300), ("scale_y", 100001), ("scale_y", 0)):
        manifest["preprocess"].update(scale_x=1.0, scale_y=1.0)
        manifest["preprocess"][key] = scale
        with pytest.raises(
            ValueError,
            match=rf"^m is malformed: 'preprocess.{key}' is an? "
            r"(float|int) \(.*\), not a positive number up to 100000; re-extract$",
        ):
            check_manifest(manifest, "m")


def test_check_manifest_bounds_a_levels_nonfinite_count_by_its_valid_values(sample_extraction):
    """``nonfinite`` counts values of the level's valid region (valid_height x valid_width x
    its shape's channels): a forged larger count passed and changed the report's statistics
    (``stats.accumulate`` takes it out of the level's count of values)."""
    from fpncli.io.manifest import check_manifest

    manifest = json.loads((sample_extraction / "chelsea" / "manifest.json").read_text())
    p3 = manifest["levels"]["p3"]
    every = p3["valid_height"] * p3["valid_width"] * p3["shape"][1]
    for count in (0, 1, every):  # every: a level with no finite value
        p3["nonfinite"] = count
        assert check_manifest(manifest, "m") is manifest
    says = r"^m is malformed: 'levels.p3.nonfinite' is an int \({}\), not at most the level's"
    p3["nonfinite"] = every + 1
    with pytest.raises(ValueError, match=says.format(every + 1)):
        check_manifest(manifest, "m")
    del p3["shape"]  # every manifest with a count has its shape: without, only 0 is sound
    with pytest.raises(ValueError, match=says.format(every + 1)):
        check_manifest(manifest, "m")
    p3["nonfinite"] = 0
    assert check_manifest(manifest, "m") is manifest
