"""``show``: folder, .npy, image and latest targets; levels; overlays; messages; errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fpncli.cli import cli
from fpncli.viz import show as show_module
from fpncli.viz import show_draw, targets
from fpncli.viz.show import P6_NOTE, show

SHAPES = {"p2": (16, 24), "p3": (8, 12), "p4": (4, 6), "p5": (2, 3), "p6": (1, 2)}


@pytest.fixture
def folder(tmp_path):
    """A fake extraction: a 50x80 photo resized by 1.2 to 60x96, padded to 64x96."""
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (50, 80, 3), np.uint8)).save(photo)
    out = tmp_path / "out" / "photo"
    out.mkdir(parents=True)
    levels = {}
    for name, (h, w) in SHAPES.items():
        stride = 2 ** int(name[1:])
        array = np.random.RandomState(h).randn(1, 4, h, w).astype(np.float32)
        np.save(out / f"{name}.npy", array)
        valid = {"valid_height": -(-60 // stride), "valid_width": -(-96 // stride)}
        levels[name] = {"file": f"{name}.npy", "shape": [1, 4, h, w], "stride": stride, **valid}
    manifest = {
        "input": {"path": str(photo), "width": 80, "height": 50},
        "preprocess": {"resized_height": 60, "resized_width": 96, "scale_y": 1.2, "scale_x": 1.2},
        "weights": {"name": "random", "random": True},
        "levels": levels,
        "complete": True,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_folder_target_saves_png_without_display(folder):
    result = show(str(folder), level="p3", display=False)
    assert result.saved == folder / "show_p3.png" and not result.displayed
    picture = Image.open(result.saved)
    assert picture.size[0] >= 256
    assert any("random" in m for m in result.messages)
    assert not list(folder.glob(".*fpncli-tmp*"))


def test_each_drawing_gets_its_own_default_name(folder):
    """One name per drawing: a --reduce pca picture was saved as show_p3.png, over the channel-0
    drawing, and --channels 0,2 and --channels 1,3 both as show_p3_channels.png."""
    drawings = [
        ({}, "show_p3.png"),  # the default drawing keeps its name
        ({"reduce": "pca"}, "show_p3_pca.png"),
        ({"reduce": "mean"}, "show_p3_mean.png"),
        ({"channel": 2}, "show_p3_channel2.png"),
        ({"reduce": "max", "channel": 2}, "show_p3_max.png"),  # --channel only counts alone
        ({"channels": "0,2"}, "show_p3_channels0,2.png"),
        ({"channels": [3, 1]}, "show_p3_channels3,1.png"),
        ({"top": 2}, "show_p3_top2.png"),
        ({"reduce": "l2", "overlay": True}, "show_p3_l2_overlay.png"),
    ]
    for options, name in drawings:
        assert show(str(folder), level="p3", display=False, **options).saved == folder / name
    assert show(str(folder), level="all", reduce="pca", display=False).saved == (
        folder / "show_all_pca.png"
    )
    pictures = {name: (folder / name).read_bytes() for _, name in drawings}
    assert len(set(pictures.values())) == len(drawings)  # none replaced another


def test_top_past_the_channels_a_level_has_says_so_and_names_what_it_drew(folder):
    result = show(str(folder), level="p3", top=300, display=False)
    assert "note: p3 has 4 channels: --top 300 draws all 4, the same as --top 4" in (
        result.messages
    )
    assert result.saved == folder / "show_p3_top4.png"
    assert show(str(folder), level="p3", top=4, display=False).messages == [
        m for m in result.messages if not m.startswith("note: p3 has")
    ]


def test_a_long_channel_list_is_named_within_a_file_names_length():
    from fpncli.viz.names import picture_suffix

    every = list(range(256))
    name = picture_suffix("p3", channels=every)
    assert name.startswith("_p3_channels0,1,2,") and "+240-" in name and len(name) < 80
    assert picture_suffix("p3", channels=every[::-1]) != name  # another order, another grid
    assert picture_suffix("p3", channels=every[:16]) == "_p3_channels" + ",".join(
        map(str, range(16))
    )


def test_valid_region_only(folder, drawn_heatmaps):
    drawn = drawn_heatmaps(show_draw)
    show(str(folder), level="p2", display=False)
    assert drawn[-1][0].shape == (15, 24)  # ceil(60 / 4) rows of image, not the 16 padded ones


def test_a_pca_map_is_fitted_on_the_valid_cells_only(folder, drawn_heatmaps):
    """show fitted a padded level's pca over its padding cells too, then cut the valid region:
    the map drawn changed with the padding. This p2's padding row (the 16th), set far off, now
    leaves the map drawn that of the valid cells alone."""
    from fpncli.viz.maps import reduce_channels

    p2 = np.load(folder / "p2.npy")
    p2[..., 15:, :] = 50 + 40 * np.random.RandomState(1).randn(1, 4, 1, 24)
    np.save(folder / "p2.npy", p2)
    drawn = drawn_heatmaps(show_draw)
    show(str(folder), level="p2", reduce="pca", display=False)
    assert np.array_equal(drawn[-1][0], reduce_channels(p2[..., :15, :], "pca"))


def test_p6_says_it_is_a_subsample_of_p5(folder):
    result = show(str(folder), level="p6", display=False)
    assert P6_NOTE in result.messages
    assert "stride-2 subsample of P5" in P6_NOTE


def test_npy_target_takes_its_level(folder):
    result = show(str(folder / "p4.npy"), display=False)
    assert result.saved == folder / "show_p4.png"
    with pytest.raises(ValueError, match="holds p4, not p2"):
        show(str(folder / "p4.npy"), level="p2", display=False)


def test_bare_npy_without_manifest(tmp_path):
    np.save(tmp_path / "p5.npy", np.ones((1, 3, 4, 5), np.float32))
    result = show(str(tmp_path / "p5.npy"), display=False, save=str(tmp_path / "x.png"))
    assert result.saved == tmp_path / "x.png" and result.saved.is_file()


def test_a_folder_where_the_picture_goes_is_one_line_and_kept(folder, tmp_path, monkeypatch):
    """Photos ``x.png`` and ``x/show_p3.png.png``: the second's output folder is where show
    writes the first's picture; it failed with "[Errno 21] Is a directory" on a temporary
    name. Now one line says what is there and how to write elsewhere; the folder is kept."""
    other = folder / "show_p3.png"
    other.mkdir()
    (other / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="a folder of that name is there"):
        show(str(folder), level="p3", display=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = CliRunner().invoke(cli, ["show", str(folder), "--level", "p3"])
    assert result.exit_code == 1, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("Error: ")]
    assert line == (
        f"Error: cannot save {other}: a folder of that name is there (another image's output "
        "folder?): pass --save FILE.png to write the picture elsewhere"
    )
    assert [p.name for p in other.iterdir()] == ["manifest.json"]
    assert not list(folder.glob(".*fpncli-tmp*"))
    saved = show(str(folder), level="p3", display=False, save=str(tmp_path / "p3.png"))
    assert saved.saved == tmp_path / "p3.png" and saved.saved.is_file()


def test_key_of_a_files_output_says_it_is_for_wds_and_names_the_images_folder(
    sample_extraction, tmp_path
):
    """``show OUT --key chelsea`` of a --format files output said "no image with key 'chelsea'"
    though OUT/chelsea is complete: --key is for a --format wds output, and the image's folder
    is the TARGET to give."""
    runner = CliRunner()
    save = ["--save", str(tmp_path / "s.png")]
    result = runner.invoke(cli, ["show", str(sample_extraction), "--key", "chelsea", *save])
    assert result.exit_code == 2, result.output
    assert "--key names an image of a --format wds output" in result.output, result.output
    assert f"show that image with fpncli show {sample_extraction / 'chelsea'}" in result.output
    assert "no image with key" not in result.output
    other = runner.invoke(cli, ["show", str(sample_extraction), "--key", "nope", *save])
    assert other.exit_code == 2 and "give the image's folder as TARGET" in other.output
    gone = runner.invoke(cli, ["show", str(tmp_path / "gone"), "--key", "chelsea", *save])
    assert gone.exit_code == 1 and f"no such folder: {tmp_path / 'gone'}" in gone.output
    assert not (tmp_path / "s.png").exists()


def test_network_options_with_key_name_the_key_s_problem_or_its_saved_maps(
    sample_extraction, sample_shards, tmp_path, monkeypatch
):
    """``show P --key k --weights random`` was refused with "--weights is an option of an image
    TARGET (an extraction's saved maps are read, not computed)" whatever P was: of a --format
    files output (where --key does not apply) or with no P, the user learned the real problem
    only on the next try; of a --format wds output, --key had named an image, so "an image
    TARGET" read as if one had been given. --key's own problem is now said first, and a wds
    output's image is refused as saved maps, as any saved extraction's."""
    import fpncli.api

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(fpncli.api, "load_backbone", no_model)
    runner, save = CliRunner(), ["--save", str(tmp_path / "s.png")]
    options = [["--weights", "random"], ["--device", "cpu"], ["--max-pixels", "1000"]]
    for args in options:
        files = runner.invoke(
            cli, ["show", str(sample_extraction), "--key", "chelsea", *args, *save]
        )
        assert files.exit_code == 2, (args, files.output)
        assert "--key names an image of a --format wds output" in files.output, files.output
        assert f"show that image with fpncli show {sample_extraction / 'chelsea'}" in files.output
        alone = runner.invoke(cli, ["show", "--key", "chelsea", *args, *save])
        assert alone.exit_code == 2 and alone.output.splitlines() == [
            "Error: --key needs TARGET: the output folder (or URL) of a --format wds run (see "
            "'cli show --help')"
        ], alone.output
        wds = runner.invoke(cli, ["show", str(sample_shards), "--key", "chelsea", *args, *save])
        assert wds.exit_code == 2 and wds.output.splitlines() == [
            f"Error: {args[0]} is an option of an image TARGET (--key names an image of a saved "
            "extraction: its saved maps are read, not computed) (see 'cli show --help')"
        ], wds.output
    assert not (tmp_path / "s.png").exists()


def test_network_options_with_a_key_a_local_wds_output_lacks_name_the_key_first(
    sample_shards, tmp_path, monkeypatch
):
    """``show OUT --key nope --weights random`` of a local --format wds output without that
    image was refused for --weights ("its saved maps are read"): the user learned on the next
    try that there were no saved maps. The local index is now read first, and the key's own
    problem said (exit 1, nothing drawn, no model built); a key that failed says why. A URL's
    index is not read for this: there the refusal stands."""
    import fpncli.api
    from fpncli.io.shards import open_root

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(fpncli.api, "load_backbone", no_model)
    runner, save = CliRunner(), ["--save", str(tmp_path / "s.png")]
    root = open_root(str(sample_shards))[1]
    for args in (["--weights", "random"], ["--device", "cpu"], ["--max-pixels", "1000"]):
        for key, why in [("nope", ""), ("broken", " (it failed: ")]:
            lacking = runner.invoke(cli, ["show", str(sample_shards), "--key", key, *args, *save])
            assert lacking.exit_code == 1, (args, lacking.output)
            said = f"Error: no image with key {key!r} in {root}{why}"
            assert lacking.output.startswith(said), lacking.output
    url = runner.invoke(cli, ["show", "memory://nowhere", "--key", "nope", "--weights", "random"])
    assert url.exit_code == 2 and "--weights is an option of an image TARGET" in url.output
    assert not (tmp_path / "s.png").exists()


def test_a_batch_of_maps_is_refused_naming_its_file(folder, tmp_path):
    """A p4.npy holding two images' maps (2, C, H, W) was read as a level and refused as "expected
    one image, got a batch of 2", naming no file; in an extraction folder it is not the level
    its manifest records."""
    batch = np.concatenate([np.load(folder / "p4.npy")] * 2)
    np.save(folder / "p4.npy", batch)
    (tmp_path / "loose").mkdir()
    np.save(tmp_path / "loose" / "p4.npy", batch)
    for target in (folder, folder / "p4.npy", tmp_path / "loose" / "p4.npy"):
        result = CliRunner().invoke(cli, ["show", str(target), "--level", "p4", "--save",
                                          str(tmp_path / "s.png")])  # fmt: skip
        assert result.exit_code == 1, result.output
        (line,) = result.output.splitlines()
        assert line.startswith("Error: ") and "p4.npy: holds a" in line, line
        assert "(2, 4, 4, 6)" in line and "(1, C, H, W)" in line, line


def test_a_npy_named_for_no_level_is_drawn_as_of_unknown_level(
    folder, tmp_path, monkeypatch, drawn_heatmaps
):
    """p4.npy renamed loose.npy was drawn labelled "p2  stride 4" as show_p2.png, which b.npy
    beside it then replaced; its level is unknown unless --level names it."""
    drawn = drawn_heatmaps(show_draw)
    loose = tmp_path / "loose"
    loose.mkdir()
    np.save(loose / "loose.npy", np.load(folder / "p4.npy"))
    np.save(loose / "b.npy", np.load(folder / "p3.npy"))
    result = show(str(loose / "loose.npy"), display=False)
    assert result.saved == loose / "show_loose.png"
    label = drawn[-1][1]["label"]
    assert label.startswith("level unknown  (1, 4, 4, 6)") and "stride" not in label
    assert any("the level of loose.npy is unknown" in m and "--level" in m for m in result.messages)
    assert show(str(loose / "b.npy"), display=False).saved == loose / "show_b.png"
    named = show(str(loose / "loose.npy"), level="p4", display=False)
    assert named.saved == loose / "show_loose_p4.png"
    assert drawn[-1][1]["label"].startswith("p4  stride 16")
    assert not any("unknown" in m for m in named.messages)
    from fpncli.viz import channels as channels_module

    titles, captions = [], []
    real_grid, real_overview = channels_module.channel_grid, show_draw.overview_image

    def grid_spy(*args, **kwargs):
        titles.append(kwargs["title"])
        return real_grid(*args, **kwargs)

    def overview_spy(image, levels, **kwargs):
        captions.extend(level["caption"] for level in levels)
        return real_overview(image, levels, **kwargs)

    monkeypatch.setattr(channels_module, "channel_grid", grid_spy)
    monkeypatch.setattr(show_draw, "overview_image", overview_spy)
    grid = show(str(loose / "loose.npy"), top=2, display=False)
    assert grid.saved == loose / "show_loose_top2.png"
    assert titles == ["loose  level unknown  top 2 channels by mean activation"]
    overview = show(str(loose / "loose.npy"), level="all", display=False)
    assert overview.saved == loose / "show_loose_all.png" and captions == ["level unknown"]
    assert show(str(folder / "p4.npy"), display=False).saved == folder / "show_p4.png"
    assert drawn[-1][1]["label"].startswith("p4  stride 16")


def test_all_and_overlay(folder, tmp_path):
    overview = show(str(folder), level="all", display=False, save=str(tmp_path / "all.png"))
    assert Image.open(overview.saved).size[0] >= 1500
    overlay = show(str(folder), level="p3", overlay=True, display=False)
    assert overlay.saved == folder / "show_p3_overlay.png"
    drawn = np.asarray(Image.open(overlay.saved).convert("RGB"))
    assert drawn.shape[0] > 50 and drawn.shape[1] >= 80  # the 80x50 photo under a caption
    assert (drawn[-50:, 80:] == 255).all()  # drawn on the original photo, at its size
    both = show(str(folder), level="all", overlay=True, display=False)
    assert Image.open(both.saved).size == (5 * 420, 126)  # five captioned overlays


def test_latest_when_no_target(folder, monkeypatch):
    monkeypatch.setattr(targets, "latest", lambda: (folder, []))  # resolve_source's
    assert show(None, level="p5", display=False).saved == folder / "show_p5.png"


def test_errors(folder, tmp_path):
    with pytest.raises(ValueError, match="unknown level 'p7'"):
        show(str(folder), level="p7", display=False)
    with pytest.raises(FileNotFoundError, match="no such folder, .npy or image"):
        show(str(tmp_path / "nope"), display=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no complete extraction"):
        show(str(empty), display=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["levels"]["p2"].update(file=None, heatmap="p2.png")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not saved, only its heatmap p2.png; re-extract"):
        show(str(folder), level="p2", display=False)
    manifest["levels"]["p2"]["heatmap"] = None  # --no-npy --no-heatmaps: statistics only
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"not saved, nor a heatmap \(only statistics\); re-"):
        show(str(folder), level="p2", display=False)
    manifest["levels"]["p2"]["overlay"] = "p2_overlay.png"  # --no-heatmaps --overlay
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not saved, only its overlay p2_overlay.png; re-"):
        show(str(folder), level="p2", display=False)


def test_image_target_extracts_on_the_fly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "cat.png")
    result = show("cat.png", level="p4", weights="random", device="cpu", display=False)
    assert result.saved.name == "fpn_show_cat_p4.png" and result.saved.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png", "fpn_show_cat_p4.png"]


def test_photos_sharing_a_stem_get_pictures_of_their_own(tmp_path, monkeypatch):
    """README: two drawings never share a name. show a.jpg then show a.PNG both wrote
    fpn_show_a_p4.png, the second over the first; now they are named as extract names such
    images' folders (a_jpg, a_png). A stem no other image in the folder has (b.png beside
    b.txt and a folder b.jpg) keeps its name."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (40, 60, 3), np.uint8)).save("a.jpg")
    Image.fromarray(rng.randint(0, 256, (40, 60, 3), np.uint8)).save("a.PNG", format="PNG")
    (tmp_path / "b.png").touch()
    (tmp_path / "b.txt").touch()
    (tmp_path / "b.jpg").mkdir()
    saved = [show(name, level="p4", weights="random", device="cpu", display=False).saved
             for name in ("a.jpg", "a.PNG")]  # fmt: skip
    assert [path.name for path in saved] == ["fpn_show_a_jpg_p4.png", "fpn_show_a_png_p4.png"]
    assert saved[0].read_bytes() != saved[1].read_bytes()  # both there, each its photo's
    from fpncli.io.jobs import image_stem

    assert image_stem(Path("b.png")) == "b" and image_stem(tmp_path / "a.PNG") == "a_png"


def test_photos_whose_names_differ_in_case_get_pictures_of_their_own(tmp_path, monkeypatch):
    """show a.JPG then show a.jpg (a case-sensitive disk) both wrote fpn_show_a_jpg_p4.png, the
    second over the first; so did a_jpg.png beside a.jpg and a.png. Each photo's picture is now
    named as extract names the folders of a folder's images (plan_jobs: a_jpg, a_jpg_2 in sorted
    order), also in a folder where most photos are named alike (IMG_...)."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.RandomState(1)
    Image.fromarray(rng.randint(0, 256, (64, 96, 3), np.uint8)).save("a.jpg")
    Image.fromarray(rng.randint(0, 256, (64, 96, 3), np.uint8)).save("a.JPG", format="JPEG")
    if len(list(tmp_path.iterdir())) < 2:
        pytest.skip("a case-insensitive file system: a.JPG is a.jpg")
    saved = [show(name, level="p4", weights="random", device="cpu", display=False).saved
             for name in ("a.JPG", "a.jpg")]  # fmt: skip
    assert [path.name for path in saved] == ["fpn_show_a_jpg_p4.png", "fpn_show_a_jpg_2_p4.png"]
    assert saved[0].read_bytes() != saved[1].read_bytes()  # both there, each its photo's
    from fpncli.io.jobs import image_stem, plan_jobs
    from fpncli.io.pillow_open import pillow_extensions

    names = ["a_jpg.png", "a.png", "a_jpg_2.tif", "a_b.png", "b.png", "b_png.jpg", "report.jpg",
             "IMG_0001.jpg", "IMG_0002.jpg", "img.jpg", "..png", "c.ico", "c_ico.txt"]  # fmt: skip
    for name in names:
        (tmp_path / name).touch()
    photos = sorted(p.name for p in tmp_path.iterdir() if p.suffix.lower() in pillow_extensions())
    extracted = {job.path.name: job.folder.name
                 for job in plan_jobs([(tmp_path / "sub" / name, tmp_path) for name in photos],
                                      tmp_path)}  # fmt: skip
    stems = {name: image_stem(Path(name)) for name in photos}
    assert stems == extracted  # extract's names, in a folder below OUT's top (no "report_2")
    assert len({stem.casefold() for stem in stems.values()}) == len(photos)
    assert stems["a_jpg.png"] == "a_jpg_3" and stems["report.jpg"] == "report"
    assert stems["IMG_0001.jpg"] == "IMG_0001" and stems["..png"] == "._png"


def test_photos_of_a_folder_that_cannot_be_listed_get_pictures_of_their_own(monkeypatch):
    """A folder with search but no read permission: its photos can be shown, its other images
    cannot be seen. a.jpg and a.png there were both named a (one picture over the other); now
    each is named by stem and extension."""
    import fpncli.io.jobs as jobs

    def unlistable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(jobs.os, "scandir", unlistable)
    names = [jobs.image_stem(Path("x") / name) for name in ("a.jpg", "a.png", "b.JPG")]
    assert names == ["a_jpg", "a_png", "b_jpg"]


def test_a_picture_fpncli_drew_is_refused_naming_the_show_to_run(folder, tmp_path, monkeypatch):
    """A heatmap, overlay or overview in an extraction's folder (or any picture under a marked
    output folder) as TARGET ran the network on that picture (or tried to download the default
    weights for it), where extract refuses outputs as inputs: one line, before any weights
    are loaded, naming the folder and level to show instead; --receptive-field too."""
    import fpncli.api
    from fpncli.run.receptive import draw_receptive_fields

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded for a picture fpncli drew")

    monkeypatch.setattr(fpncli.api, "load_backbone", no_weights)
    monkeypatch.chdir(folder.parent)
    manifest = json.loads((folder / "manifest.json").read_text())  # as extract writes it
    (folder / "manifest.json").write_text(json.dumps({"fpncli_version": "0", **manifest}))
    picture = np.zeros((16, 24, 3), np.uint8)
    expected = {
        "p3.png": "to draw p3 of that extraction: fpncli show photo --level p3",
        "res4_overlay.png": "to draw res4 of that extraction: fpncli show photo --level res4",
        "overview.png": "to draw all levels of that extraction: fpncli show photo --level all",
        "show_p4_pca.png": "to draw p4 of that extraction: fpncli show photo --level p4",
        "mine.png": "to draw that extraction: fpncli show photo",
    }
    for name, advice in expected.items():
        Image.fromarray(picture).save(folder / name)
        message = f"^photo/{name} is a picture fpncli drew, not a photo; {advice}$"
        with pytest.raises(ValueError, match=message):
            show(f"photo/{name}", weights="random", device="cpu", display=False)
        with pytest.raises(ValueError, match=message):  # it reran the network on the picture
            draw_receptive_fields(f"photo/{name}", "1,1", weights="random", device="cpu")
    result = CliRunner().invoke(cli, ["show", "photo/p3.png"])  # the default weights
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        "Error: photo/p3.png is a picture fpncli drew, not a photo; to draw p3 of that "
        "extraction: fpncli show photo --level p3"
    ]
    (folder.parent / ".fpncli-output").write_text("")  # extract's marker on its -o
    (folder.parent / "report").mkdir()
    Image.fromarray(picture).save(folder.parent / "report" / "thumb.png")
    refused = r"^report/thumb.png is a file of the fpncli output folder \.: not a photo \(extract "
    with pytest.raises(ValueError, match=refused + r"skips it too\); name an extraction folder"):
        show("report/thumb.png", weights="random", device="cpu", display=False)
    assert not list(folder.parent.glob("fpn_show_*"))  # nothing drawn


def test_a_report_or_diff_picture_is_refused_naming_what_drew_it(
    sample_extraction, tmp_path, monkeypatch
):
    """A report's thumbnail or a diff picture as TARGET was "a file of the fpncli output folder
    A/report (or P) ... name an extraction folder in it": its folder is marked by report
    or diff, and holds no extraction. It names what drew it (the report of A: fpncli report A
    rewrites it) and says to show an extraction folder instead."""
    import shutil

    import fpncli.api

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded for a picture fpncli drew")

    monkeypatch.setattr(fpncli.api, "load_backbone", no_weights)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(sample_extraction, tmp_path / "A")
    runner = CliRunner()
    for args in (["report", "A"], ["diff", "A", "A", "-o", "P"]):
        assert runner.invoke(cli, args, catch_exceptions=False).exit_code == 0
    thumb = sorted((tmp_path / "A/report/thumbs").glob("*.png"))[0].relative_to(tmp_path)
    drew = (
        "is a picture fpncli report drew for the report of A, not a photo (extract skips it too; "
        "fpncli report A rewrites it): show an extraction folder in A instead"
    )
    refusals = {
        str(thumb): f"{thumb} {drew}",
        "A/report/histograms.png": f"A/report/histograms.png {drew}",
        "P/chelsea/diff.png": "P/chelsea/diff.png is a picture fpncli diff drew (in P), not a "
        "photo (extract skips it too): show an extraction folder instead",
    }
    for target, message in refusals.items():
        result = runner.invoke(cli, ["show", target, "--weights", "random", "--device", "cpu"])
        assert result.exit_code == 1, result.output
        assert result.output.splitlines() == [f"Error: {message}"]
    monkeypatch.chdir(tmp_path / "A" / "report")  # the report's folder named from inside it
    refused = r"report of \.\., not a photo \(extract skips it too; fpncli report \.\. rewrites"
    with pytest.raises(ValueError, match=refused):
        show(str(thumb.relative_to("A/report")), weights="random", device="cpu", display=False)
    assert not list(tmp_path.rglob("fpn_show_*"))  # nothing drawn


def test_a_picture_show_left_in_a_folder_is_never_read_as_a_photo(tmp_path, monkeypatch):
    """show's picture of a photo, fpn_show_NAME_LEVEL.png in the current folder, was read back
    as a photo: extract of the folder extracted it, and show drew it as an image TARGET. It
    carries show's PNG text chunk: extract passes it over with its "not reading outputs back"
    note, and show refuses it in one line; a user's own fpn_show_*.png (no chunk) is a photo."""
    from fpncli.io.inputs import discover_inputs
    from fpncli.io.markers import drawn_by_show

    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save("cat.png")
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save("fpn_show_mine.png")  # the user's own
    runner = CliRunner()
    args = ["--level", "p5", "--weights", "random", "--device", "cpu"]
    drawn = runner.invoke(cli, ["show", "cat.png", *args], catch_exceptions=False)
    assert drawn.exit_code == 0 and "saved fpn_show_cat_p5.png" in drawn.output, drawn.output
    assert Image.open("fpn_show_cat_p5.png").info["Software"] == "fpncli show"
    assert drawn_by_show("fpn_show_cat_p5.png") and not drawn_by_show("fpn_show_mine.png")
    again = runner.invoke(cli, ["show", "fpn_show_cat_p5.png", *args])
    assert again.exit_code == 1, again.output
    assert again.output.splitlines() == [
        "Error: fpn_show_cat_p5.png is a picture fpncli show drew, not a photo (extract skips it "
        "too): show the photo or the extraction it was drawn from instead"
    ]
    skipped: set = set()
    found = discover_inputs(["."], skipped=skipped)
    assert sorted(p.name for p, _ in found) == ["cat.png", "fpn_show_mine.png"]
    assert skipped == {tmp_path.resolve() / "fpn_show_cat_p5.png"}
    assert discover_inputs(["fpn_show_cat_p5.png"]) == []  # named, a glob, listed
    assert [p.name for p, _ in discover_inputs(["fpn_show_*.png"])] == ["fpn_show_mine.png"]
    listed = discover_inputs([], ["fpn_show_cat_p5.png\n", "cat.png\n"])
    assert [p.name for p, _ in listed] == ["cat.png"]
    extract = ["extract", ".", "-o", str(tmp_path.parent / f"{tmp_path.name}_out"), "--weights",
               "random", "--min-size", "64", "--max-size", "96"]  # fmt: skip
    result = runner.invoke(cli, extract, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    note = "note: not reading outputs back as inputs: skipped fpn_show_cat_p5.png"
    assert note in result.stderr.splitlines()
    out = tmp_path.parent / f"{tmp_path.name}_out"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["cat", "fpn_show_mine"]


def test_a_folder_show_cannot_write_in_is_named_not_its_temporary_file(folder, monkeypatch):
    """show in a read-only folder said "[Errno 13] Permission denied: 'photo/.show_p3.png.
    fpncli-tmp.26004.d2d788f2'": an internal temporary file, and nothing to do. It names the
    folder (the current one: so) and says to --save elsewhere; other errors are left as they
    are."""
    import errno

    failure = {}

    def refused(path, data):
        tmp = path.with_name(f".{path.name}.fpncli-tmp.1.x")
        raise OSError(failure["errno"], os.strerror(failure["errno"]), str(tmp))

    monkeypatch.setattr(show_module, "atomic_write_bytes", refused)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    runner = CliRunner()
    advice = "is not writable; pass --save FILE.png in a folder you can write"
    for code in (errno.EACCES, errno.EROFS):
        failure["errno"] = code
        monkeypatch.chdir(folder.parent)
        result = runner.invoke(cli, ["show", "photo", "--level", "p3"])
        assert result.exit_code == 1 and "fpncli-tmp" not in result.output, result.output
        assert result.output.splitlines()[-1] == (
            f"Error: cannot save show_p3.png: the folder photo {advice}"
        )
        monkeypatch.chdir(folder)
        result = runner.invoke(cli, ["show", ".", "--level", "p3"])
        assert result.output.splitlines()[-1] == (
            f"Error: cannot save show_p3.png: the current folder {advice}"
        )
    failure["errno"] = errno.ENOSPC  # not the folder's permission: said as it is
    result = runner.invoke(cli, ["show", ".", "--level", "p3"])
    assert result.exit_code == 1 and "No space left on device" in result.output, result.output


def test_cli_show_prints_where(folder, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = CliRunner().invoke(cli, ["show", str(folder), "--level", "p6"], catch_exceptions=False)
    assert result.exit_code == 0
    assert f"saved {folder / 'show_p6.png'}" in result.output
    assert "no display" in result.output  # headless: says why a PNG, and where it went
    assert "stride-2 subsample of P5" in result.output


def test_a_list_of_levels_is_a_usage_error_like_an_unknown_level(folder):
    """``--level p2,p3`` (a list: for --receptive-field only) was exit 1 in other words than
    ``--level P7``'s exit 2."""
    unknown = CliRunner().invoke(cli, ["show", str(folder), "--level", "P7"])
    listed = CliRunner().invoke(cli, ["show", str(folder), "--level", "p2,p3"])
    for result in (unknown, listed):
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: Invalid value for '--level': ")
        assert lines[0].endswith("show --help')"), lines[0]
    assert "one level at a time (a comma list is for --receptive-field)" in listed.output
    assert not list(folder.glob("show_*.png"))


def test_option_values_the_target_rules_out_are_usage_errors(folder, tmp_path, monkeypatch):
    """A value checked against the data (--channel past the map's channels, a --level the
    extraction lacks or a .npy is not, --top with --channels) was exit 1 where click's own
    refusals (--level p9) are exit 2: now a usage error too, one line in click's words."""
    monkeypatch.chdir(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["levels"]["p2"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for args, message in [
        ([folder, "--level", "p3", "--channel", "4"],
         "Invalid value for '--channel': channel 4 out of range: this map has 4"),
        ([folder, "--level", "all", "--channel", "9"],
         "Invalid value for '--channel': channel 9 out of range: this map has 4"),
        ([folder, "--level", "p2"],
         f"Invalid value for '--level': {folder} has no p2 (it has p3, p4, p5, p6); extract it "
         "with --levels"),
        ([folder / "p3.npy", "--level", "p5"],
         "Invalid value for '--level': this target holds p3, not p5"),
        (["--key", "k"], "--key needs TARGET: the output folder (or URL) of a --format wds run"),
    ]:  # fmt: skip
        result = CliRunner().invoke(cli, ["show", *map(str, args)])
        assert result.exit_code == 2, result.output
        assert result.output.splitlines() == [f"Error: {message} (see 'cli show --help')"]
    assert not list(folder.glob("show_*.png")) and not list(tmp_path.glob("fpn_show_*.png"))
    # a p4.npy its folder's manifest does not list: damaged data, not a bad --level (exit 1)
    del manifest["levels"]["p4"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["show", str(folder / "p4.npy")])
    assert result.exit_code == 1 and f"Error: {folder} has no p4 (it has" in result.output


def test_without_level_a_folder_lacking_p2_shows_its_first_level(folder, monkeypatch):
    """show FOLDER of an ``extract --levels p3,p4`` failed: "has no p2 (it has p3, p4) ...
    pass --level p3". The default is now p2 where it was saved, else the first level saved
    (p2..p6, then the bottom-up stages), said in a note; a --level given is still refused."""
    from fpncli.viz.show import level_figure_for

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert show(str(folder), display=False).saved == folder / "show_p2.png"  # p2: kept
    manifest = json.loads((folder / "manifest.json").read_text())
    levels = manifest["levels"]
    del levels["p2"], levels["p3"]
    levels["stem"] = {**levels["p4"], "stride": 4}  # (listed first, a stage: after p4)
    manifest["levels"] = {"stem": levels.pop("stem"), **levels}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    note = f"note: {folder} has no p2: showing p4, the first level it saved (--level picks another)"
    result = show(str(folder), display=False)
    assert result.saved == folder / "show_p4.png" and note in result.messages
    assert show(str(folder), reduce="mean", display=False).saved == folder / "show_p4_mean.png"
    assert len(level_figure_for(str(folder)).axes) >= 1  # the notebook's figure too
    result = CliRunner().invoke(cli, ["show", str(folder)], catch_exceptions=False)
    assert result.exit_code == 0 and f"saved {folder / 'show_p4.png'}" in result.output
    assert note in result.output
    given = CliRunner().invoke(cli, ["show", str(folder), "--level", "p2"])
    assert given.exit_code == 2 and f"{folder} has no p2 (it has stem, p4, p5, p6)" in given.output
    for name in ("p4", "p5", "p6"):  # only a bottom-up stage left: the first of them
        del manifest["levels"][name]
    manifest["levels"]["res4"] = {**manifest["levels"]["stem"], "stride": 16}
    manifest["levels"] = {"res4": manifest["levels"].pop("res4"), **manifest["levels"]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert show(str(folder), display=False).saved == folder / "show_stem.png"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--channel", "5", "--reduce", "mean"],
         "--channel is an option of --reduce channel (--reduce mean draws from every channel)"),
        (["--level", "p3", "--channels", "1,2", "--channel", "9"],
         "--channel is an option of --reduce channel, not of --channels (a grid of the channels "
         "it names)"),
        (["--level", "p3", "--top", "4", "--reduce", "pca"],
         "--reduce is not an option of --top: its grid draws each channel as it is"),
        (["--level", "p3", "--top", "4", "--reduce", "channel"],
         "--reduce is not an option of --top: its grid draws each channel as it is"),
        (["--weights", "random"], "--weights is an option of an image TARGET (an extraction's "
         "saved maps are read, not computed)"),
        (["--device", "cpu"], "--device is an option of an image TARGET (an extraction's saved "
         "maps are read, not computed)"),
        (["--max-pixels", "1000"], "--max-pixels is an option of an image TARGET (an "
         "extraction's saved maps are read, not computed)"),
        (["--receptive-field", "--at", "1,1", "--weights", "random"],
         "--weights is an option of an image TARGET (--receptive-field reruns an extraction "
         "with the weights it was made with)"),
        (["--receptive-field", "--at", "1,1", "--reduce", "l2", "--channel", "2"],
         "--channel is an option of --reduce channel (--reduce l2 draws from every channel)"),
    ],
)  # fmt: skip
def test_options_that_would_change_nothing_are_usage_errors(folder, monkeypatch, args, message):
    """show took them silently (exit 0): --channel 5 --reduce mean drew the mean, --top with
    --reduce pca a plain grid, --weights or --device of a saved extraction read its maps. Now
    refused as extract refuses its own (exit 2, one line), for a folder, a .npy and the latest
    extraction alike, before anything is read or drawn."""
    import fpncli.api

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(fpncli.api, "load_backbone", no_model)
    monkeypatch.setattr(targets, "latest", lambda: (folder, []))
    for target in ([str(folder)], [str(folder / "p3.npy")], []):
        if "--receptive-field" in args and target and target[0].endswith(".npy"):
            continue  # (it takes a folder or a photo)
        result = CliRunner().invoke(cli, ["show", *target, *args])
        assert result.exit_code == 2, (target, result.output)
        assert result.output.splitlines() == [f"Error: {message} (see 'cli show --help')"]
    assert not list(folder.glob("show_*.png"))


def test_a_target_with_no_saved_maps_is_said_before_the_network_options_are_refused(
    folder, tmp_path, monkeypatch
):
    """show P --weights random, P a folder of photos, said "--weights is an option of an image
    TARGET (an extraction's saved maps are read...)": nothing is read there, and the user
    learned the real problem only on the next try. A folder with no extraction in or below it
    (nor a wds index), or a folder or .npy that is not there, is now said to be so first; an
    extraction (a damaged one too), its .npy, a batch output folder and a wds output keep the
    refusal."""
    import fpncli.api

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(fpncli.api, "load_backbone", no_model)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "P").mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "P" / "cat.png")
    (tmp_path / "empty").mkdir()
    no_extraction = (
        "holds no complete extraction (manifest.json missing): run fpncli extract on an image "
        "first, or name an output folder"
    )
    options = [["--weights", "random"], ["--device", "cpu"], ["--max-pixels", "1000"]]
    for target, message in [
        ("P", f"P {no_extraction}"),
        ("empty", f"empty {no_extraction}"),
        ("nosuch", "no such folder, .npy or image: nosuch"),  # (a photo's name: as before)
        ("nosuch.npy", "no such folder, .npy or image: nosuch.npy"),
    ]:
        for args in options:
            result = CliRunner().invoke(cli, ["show", target, *args])
            assert result.exit_code == 1, (target, args, result.output)
            assert result.output.splitlines() == [f"Error: {message}"]
    field = CliRunner().invoke(cli, ["show", "P", "--receptive-field", "--at", "1,1",
                                     "--weights", "random"])  # fmt: skip
    assert field.exit_code == 1 and field.output.splitlines() == [
        "Error: P holds no extraction (manifest.json missing)"
    ]
    (tmp_path / "wds").mkdir()
    (tmp_path / "wds" / "index.parquet").write_bytes(b"")  # (found, not read: refused first)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")  # an extraction, damaged
    refused = "--weights is an option of an image TARGET (an extraction's saved maps are read"
    for target in (folder, folder.parent, folder / "p3.npy", tmp_path / "wds", "broken"):
        result = CliRunner().invoke(cli, ["show", str(target), "--weights", "random"])
        assert result.exit_code == 2 and refused in result.output, (target, result.output)
    assert not list(tmp_path.rglob("*show*.png"))


def test_options_a_photo_target_uses_are_taken(tmp_path, monkeypatch):
    """--weights, --device and --max-pixels of an image TARGET: the network runs on it."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "cat.png")
    args = ["show", "cat.png", "--level", "p5", "--weights", "random", "--device", "cpu",
            "--max-pixels", "100000", "--reduce", "mean"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0 and "saved fpn_show_cat_p5_mean.png" in result.output


def test_a_photo_of_a_format_read_when_named_is_shown_not_refused(tmp_path, monkeypatch):
    """README: a format Pillow decodes beyond the photo formats a folder walk takes (``.ico``)
    is read when the file is named; extract read it, and show refused it as "not an image"."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "cat.ico")
    args = ["show", "cat.ico", "--level", "p5", "--weights", "random", "--device", "cpu"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0 and "saved fpn_show_cat_p5.png" in result.output, result.output
    saved = CliRunner().invoke(cli, [*args, "--save", "x.ico"])  # a PNG named .ico: refused
    assert saved.exit_code == 2 and "the picture is a PNG; name it .png" in saved.output


def _copy_extraction(folder, name):
    import shutil

    copy = folder.parent / name
    shutil.copytree(folder, copy)
    return copy


def test_latest_gone_falls_back_to_the_newest_that_still_exists(folder, tmp_path, monkeypatch):
    import shutil

    from fpncli.io.latest import latest_extraction, record_latest

    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "home"))
    newer = _copy_extraction(folder, "newer")
    record_latest(folder)
    record_latest(newer)
    assert latest_extraction() == newer.resolve()
    shutil.rmtree(newer)
    assert latest_extraction() == folder.resolve()
    result = show(None, level="p4", display=False)
    assert result.saved == folder.resolve() / "show_p4.png"
    assert any(f"{newer.resolve()} is gone" in m for m in result.messages)


def test_no_target_options_name_the_latest_extraction_that_is_gone(folder, tmp_path, monkeypatch):
    """``show --key K`` after the latest extraction was deleted said "--key needs TARGET", and
    ``show --weights random`` "--weights is an option of an image TARGET (an extraction's saved
    maps are read ...)": neither said that the latest was gone, which may have been the wds
    output --key was meant for. Both now name it (exit 1, as ``show`` alone); where an older
    image's folder is left, --key's refusal names the one that is gone and the one left."""
    import shutil

    from fpncli.io.latest import record_latest

    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    newer = _copy_extraction(folder, "newer")
    record_latest(newer)
    shutil.rmtree(newer)
    gone = (f"Error: the latest extraction {newer.resolve()} is gone or incomplete, and no "
            "earlier extraction is recorded: name a TARGET")  # fmt: skip
    for args in (
        ["--key", "k"],
        ["--key", "k", "--level", "p3"],
        ["--key", "k", "--device", "cpu"],
    ):
        result = CliRunner().invoke(cli, ["show", *args])
        assert result.exit_code == 1 and result.output.splitlines() == [
            f"{gone}; with --key, TARGET is the output folder (or URL) of a --format wds run"
        ], (args, result.output)
    for option in (["--weights", "random"], ["--device", "cpu"], ["--max-pixels", "9"]):
        result = CliRunner().invoke(cli, ["show", *option])
        assert result.exit_code == 1 and result.output.splitlines() == [gone], result.output
    record_latest(folder)
    newer = _copy_extraction(folder, "newer")
    record_latest(newer)
    shutil.rmtree(newer)
    result = CliRunner().invoke(cli, ["show", "--key", "k"])
    assert result.exit_code == 2 and result.output.splitlines() == [
        "Error: --key needs TARGET: the output folder (or URL) of a --format wds run (the latest "
        f"extraction {newer.resolve()} is gone; the newest one left, {folder.resolve()}, is an "
        "image's folder) (see 'cli show --help')"
    ], result.output
    assert not list(tmp_path.glob("fpn_show_*.png")) and not list(folder.glob("show_*.png"))


def test_bench_scratch_runs_do_not_become_the_latest(folder, tmp_path, monkeypatch):
    from fpncli.api import load_backbone
    from fpncli.io.latest import latest_extraction, record_latest
    from fpncli.run.bench import bench_end_to_end

    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "home"))
    record_latest(folder)
    model = load_backbone("random")
    bench_end_to_end(model, height=64, width=96, images=2, batch_size=1, precision="fp32",
                     measure_disk=False, work_dir=tmp_path)  # fmt: skip
    assert latest_extraction() == folder.resolve()


def test_a_batch_output_root_lists_its_images_and_how_to_pick_one(folder):
    _copy_extraction(folder, "second")
    with pytest.raises(ValueError, match="batch output folder with 2 extraction") as error:
        show(str(folder.parent), display=False)
    assert f"fpncli show {folder}" in str(error.value)
    assert "photo, second" in str(error.value)


def test_the_suggested_commands_quote_a_folder_with_spaces(folder, tmp_path):
    """The command a message suggests can be pasted as printed: ``fpncli show my out/x`` was
    two arguments."""
    import shlex

    batch = folder.parent / "my out"
    _copy_extraction(folder, "my out/photo")
    with pytest.raises(ValueError, match="batch output folder") as error:
        show(str(batch), display=False)
    suggested = str(error.value).split("e.g. ", 1)[1]
    assert shlex.split(suggested) == ["fpncli", "show", str(batch / "photo")]
    shards = tmp_path / "my shards"
    shards.mkdir()
    (shards / "index.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="--format wds output") as error:
        show(str(shards), display=False)
    assert f"fpncli report {shlex.quote(str(shards))} lists" in str(error.value)


def test_level_all_shows_the_levels_an_extraction_has(folder):
    assert P6_NOTE in show(str(folder), level="all", display=False).messages  # P6 among them
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in ("p2", "p6"):
        del manifest["levels"][name]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = show(str(folder), level="all", display=False)
    assert result.saved.is_file()
    assert P6_NOTE not in result.messages  # no P6 drawn: nothing to say about it


def test_the_window_draws_the_values_in_image_pixels(folder):
    """What the show window holds (checked with the Agg backend, no display needed)."""
    from fpncli.viz.maps import value_range
    from fpncli.viz.show import level_figure_for

    fig = level_figure_for(str(folder), level="p3")
    image_axes = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(image_axes) == 1 and len(fig.axes) == 2  # the level and its colour bar
    ax = image_axes[0]
    shown = ax.images[-1]
    values = np.load(folder / "p3.npy")[0, 0, :8, :12]  # valid region: ceil(60/8) x ceil(96/8)
    np.testing.assert_array_equal(shown.get_array(), values)
    assert shown.get_extent() == pytest.approx([0, 12 * 8 / 1.2, 8 * 8 / 1.2, 0])
    assert ax.get_xlim() == (0, 80) and ax.get_ylim() == (50, 0)  # the 80x50 photo's pixels
    assert shown.get_clim() == pytest.approx(value_range(values))
    # hovering at photo pixel (20, 10): resized (24, 12) -> cell (1, 3)
    text = ax.format_coord(20.0, 10.0)
    assert "x=20 y=10 px" in text and "cell (1, 3)" in text and f"{values[1, 3]:.5g}" in text
    assert "RANDOM" in fig._suptitle.get_text() and fig._suptitle.get_color() == "#c00000"
    # titled as extract's overview is: the photo's file name, the weights, what is drawn
    assert fig._suptitle.get_text().startswith("photo.png  (random, channel 0, viridis)")


def test_shows_overview_is_titled_as_extracts(folder, monkeypatch):
    from fpncli.io.outputs import OutputOptions, overview_title

    drawn = {}

    def fake_overview(image, panels, **kwargs):
        drawn.update(kwargs)
        return np.zeros((4, 4, 3), np.uint8)

    monkeypatch.setattr(show_draw, "overview_image", fake_overview)
    show(str(folder), level="all", save=str(folder.parent / "all.png"), display=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    extract = overview_title(manifest["input"]["path"], manifest["weights"], OutputOptions())
    assert drawn["title"] == extract == "photo.png  (random, channel 0)"
    show(str(folder), level="all", reduce="pca", save=str(folder.parent / "all.png"),
         display=False)  # fmt: skip
    assert drawn["title"] == "photo.png  (random, pca)"


def test_the_window_has_one_subplot_per_level_and_a_p6_as_large_as_p2(folder):
    from fpncli.viz.show import level_figure_for

    fig = level_figure_for(str(folder), level="all")
    image_axes = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    titles = [ax.get_title().split()[0] for ax in image_axes]
    assert titles == ["p2", "p3", "p4", "p5", "p6", "input"]  # the photo in the sixth slot
    assert len(fig.axes) == 11  # and a colour bar per level
    assert {ax.get_xlim() for ax in image_axes} == {(0, 80)}  # all cover the whole photo
    width, height = fig.get_size_inches()
    assert 8 <= width <= 16 and 3 <= height <= 10
    overlay = level_figure_for(str(folder), level="p4", overlay=True)
    ax = next(ax for ax in overlay.axes if len(ax.images) == 2)  # photo, then the map
    assert ax.images[0].get_array().shape == (50, 80, 3) and ax.images[1].get_alpha() == 0.5


def test_show_opens_the_data_window_when_there_is_a_display(folder, monkeypatch):
    import fpncli.viz.window as window

    opened = {}

    def fake_open(window_title, panels, **options):
        opened.update(title=window_title, panels=panels, options=options)
        return True

    monkeypatch.setattr(show_module, "open_window", fake_open)
    result = show(str(folder), level="all", display=True)
    assert result.displayed and result.saved is None
    assert [p["name"] for p in opened["panels"]] == ["p2", "p3", "p4", "p5", "p6"]
    assert opened["options"]["scale"] == (1.2, 1.2) and "RANDOM" in opened["options"]["note"]
    fig = window.level_figure(opened["panels"], **opened["options"])  # what the window draws
    assert len(fig.axes) == 11


def test_show_diff_and_report_of_saved_outputs_do_not_load_torch(folder, tmp_path):
    """Reading extractions back needs numpy and matplotlib, not torch (1.3 s of the 2.2 s that
    ``show`` took): checked in a fresh interpreter."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import fpncli

    root = str(Path(fpncli.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
           "FPNCLI_HOME": str(tmp_path / "home")}  # fmt: skip
    commands = [
        ["show", str(folder), "--level", "all", "--save", str(tmp_path / "all.png")],
        ["diff", str(folder), str(folder), "-o", str(tmp_path / "diff")],
        ["report", str(folder.parent)],
    ]
    code = (
        "import sys\nfrom fpncli.cli import cli\n"
        "try:\n    cli.main(sys.argv[1:], standalone_mode=False)\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code\nprint('torch' in sys.modules)\n"
    )
    for args in commands:
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, (args, done.stderr[-2000:])
        assert done.stdout.strip().splitlines()[-1] == "False", (args[0], done.stdout)


def test_a_rerun_of_a_complete_extraction_becomes_the_latest(tmp_path, monkeypatch):
    """extract a -o L1; extract d -o L2; extract a -o L1 ("already complete"): a bare show
    showed L2/d, the folder of the command before the last."""
    from pathlib import Path

    from fpncli.io.latest import latest_extraction

    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "home"))
    samples = Path(__file__).resolve().parent.parent / "samples"
    small = ["--weights", "random", "--min-size", "64", "--max-size", "96", "--no-heatmaps"]
    runner = CliRunner()
    for name, out in (("chelsea.png", "L1"), ("coffee.png", "L2"), ("chelsea.png", "L1")):
        args = ["extract", str(samples / name), "-o", str(tmp_path / out), *small]
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert "already complete" in result.output
    assert latest_extraction() == (tmp_path / "L1" / "chelsea").resolve()
    # a folder of images, every one complete: the last of them (in the order extract takes)
    for out in ("L2", "L3", "L2"):
        result = runner.invoke(cli, ["extract", str(samples), "-o", str(tmp_path / out), *small])
        assert result.exit_code == 0, result.output
    assert "skipped 3 (already complete)" in result.output, result.output
    assert latest_extraction() == (tmp_path / "L2" / "rocket").resolve()


def test_a_replaced_photo_is_not_drawn_beside_the_maps_of_another(folder, tmp_path, caplog):
    """The photo at the manifest's path replaced by one of another size: show's overlay refuses
    (its maps would be stretched over another picture), the overview and the report leave its
    panel out, each saying why; a photo of the recorded size is still drawn."""
    from fpncli.io.extraction import load_extraction
    from fpncli.viz.report import write_report

    manifest = json.loads((folder / "manifest.json").read_text())
    photo = manifest["input"]["path"]
    assert load_extraction(folder).image.shape == (50, 80, 3)
    Image.fromarray(np.zeros((500, 300, 3), np.uint8)).save(photo)
    assert load_extraction(folder).image is None
    assert "is 300x500, the extracted one was 80x50: replaced since" in caplog.text
    with pytest.raises(ValueError, match="--overlay needs the extracted photo: it is gone, repl"):
        show(str(folder), level="p3", overlay=True, display=False)
    overview = show(str(folder), level="all", display=False, save=str(tmp_path / "all.png"))
    assert Image.open(overview.saved).size[0] >= 1500
    write_report(folder.parent)
    page = (folder.parent / "report.html").read_text()
    assert "photo gone or replaced" in page and "_input.png" not in page
    assert "300x500, the extracted photo was 80x50" in caplog.text


def test_the_notebook_figure_takes_the_level_a_npy_is_named_after(tmp_path):
    """level_figure_for("p4.npy") raised KeyError 'p2' (its level defaulted to p2, where show
    takes a .npy's own); a .npy named after no level is labelled "level unknown"."""
    import matplotlib

    matplotlib.use("agg")
    from fpncli.viz.show import level_figure_for

    values = np.random.RandomState(0).rand(1, 256, 8, 10).astype(np.float32)
    np.save(tmp_path / "p4.npy", values)
    np.save(tmp_path / "loose.npy", values)
    titles = [ax.get_title() for ax in level_figure_for(str(tmp_path / "p4.npy")).axes]
    assert titles[0].startswith("p4  stride 16"), titles
    titles = [ax.get_title() for ax in level_figure_for(str(tmp_path / "loose.npy")).axes]
    assert titles[0].startswith("level unknown"), titles
    titles = [ax.get_title() for ax in level_figure_for(str(tmp_path / "loose.npy"),
                                                        level="p5").axes]  # fmt: skip
    assert titles[0].startswith("p5  stride 32"), titles


@pytest.mark.photo_size
def test_a_photo_is_shown_at_detectron2s_size(tmp_path):
    """show extracts a photo as extract does by default: shortest edge 800, longest at most
    1333 (the other tests draw smaller: conftest's ``_photos_shown_small``)."""
    from fpncli.viz.photo_source import PHOTO_SIZE, from_image

    assert PHOTO_SIZE == (800, 1333)
    Image.fromarray(np.zeros((40, 120, 3), np.uint8)).save(tmp_path / "a.png")
    source = from_image(tmp_path / "a.png", "random", "cpu", max_pixels=10**6)
    assert source.resized == (444, 1333) and source.features["p2"].shape[-2:] == (112, 336)
