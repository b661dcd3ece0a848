"""Where the latest extraction is remembered for ``fpncli show`` with no target."""

from __future__ import annotations

import json
import re

import pytest

from fpncli.io.latest import latest_extraction, recent_extractions, record_latest


@pytest.fixture
def homes(tmp_path, monkeypatch):
    """No $FPNCLI_HOME; a $HOME and a $XDG_STATE_HOME of the test's own."""
    monkeypatch.delenv("FPNCLI_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path


def test_xdg_state_home_holds_it_in_an_fpncli_subfolder(homes, sample_extraction):
    """It was written as $XDG_STATE_HOME/latest.json, among the other applications' files."""
    record_latest(sample_extraction / "chelsea")
    written = homes / "state" / "fpncli" / "latest.json"
    assert json.loads(written.read_text())["folder"] == str(sample_extraction / "chelsea")
    assert sorted(p.name for p in (homes / "state").iterdir()) == ["fpncli"]
    assert latest_extraction() == sample_extraction / "chelsea"


def test_an_earlier_versions_record_is_read_until_a_new_one_is_written(homes, sample_extraction):
    old = homes / "state" / "latest.json"
    old.parent.mkdir()
    text = json.dumps({"folder": str(sample_extraction / "coffee"), "history": []})
    old.write_text(text)
    assert latest_extraction() == sample_extraction / "coffee"  # after an upgrade, as before
    record_latest(sample_extraction / "chelsea")
    assert recent_extractions() == [sample_extraction / "chelsea", sample_extraction / "coffee"]
    assert old.read_text() == text  # read, never written or removed
    old.write_text(json.dumps({"folder": "/elsewhere"}))  # the new file alone counts now
    assert latest_extraction() == sample_extraction / "chelsea"


def test_without_xdg_state_home_it_is_in_the_cache_folder(homes, monkeypatch, sample_extraction):
    monkeypatch.delenv("XDG_STATE_HOME")
    record_latest(sample_extraction / "chelsea")
    assert (homes / "home" / ".cache" / "fpncli" / "latest.json").is_file()
    monkeypatch.setenv("FPNCLI_HOME", str(homes / "mine"))
    record_latest(sample_extraction / "coffee")
    assert recent_extractions() == [sample_extraction / "coffee"]
    assert (homes / "mine" / "latest.json").is_file()


def test_the_readme_says_where_it_is():
    from pathlib import Path

    text = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    assert (
        "in `$FPNCLI_HOME/latest.json`, else `$XDG_STATE_HOME/fpncli/latest.json`, else "
        "`~/.cache/fpncli/latest.json`" in text
    )


def test_fpncli_home_with_a_tilde_is_the_home_folder(homes, monkeypatch, sample_extraction):
    """$FPNCLI_HOME="~/fpn" (quoted in a shell profile) is expanded, as the weights cache
    expands it; it made a folder named "~" in the current folder."""
    monkeypatch.setenv("FPNCLI_HOME", "~/fpn")
    monkeypatch.chdir(homes)
    record_latest(sample_extraction / "chelsea")
    assert (homes / "home" / "fpn" / "latest.json").is_file()
    assert not (homes / "~").exists()
    assert latest_extraction() == sample_extraction / "chelsea"


@pytest.mark.parametrize(
    "data,why",
    [
        (b'{"folder": ', "not valid JSON: Expecting value"),
        (b"[1, 2]", "it holds a list, not a record"),
        (b'{"folder": "\xff"}', "not valid JSON: 'utf-8' codec can't decode byte 0xff"),
        (b'{"history": []}', "it records no 'folder'"),
        ("fifo", "not a regular file (a FIFO)"),
    ],
)
def test_a_damaged_record_is_named_not_called_missing(tmp_path, monkeypatch, data, why):
    """A truncated latest.json, a list or bytes that are not UTF-8 made ``fpncli show`` say
    "no previous extraction recorded: run 'fpncli extract IMAGE' first", which was false: one
    line names the file and what is wrong with it. extract still writes a new one over it."""
    import os

    from click.testing import CliRunner

    from fpncli.cli import cli

    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path))
    state = tmp_path / "latest.json"
    if data == "fifo":
        os.mkfifo(state)
    else:
        state.write_bytes(data)
    with pytest.raises(ValueError, match=f"^{re.escape(str(state))} is damaged \\("):
        latest_extraction()
    result = CliRunner().invoke(cli, ["show", "--save", str(tmp_path / "s.png")])
    assert result.exit_code == 1, result.output
    (line,) = result.output.splitlines()
    assert line.startswith(f"Error: {state} is damaged ({why}"), line
    assert line.endswith("): name a TARGET or extract again"), line
    if data != "fifo":
        assert recent_extractions() == []  # what record_latest keeps of it: nothing
        record_latest(tmp_path)
        assert json.loads(state.read_text())["folder"] == str(tmp_path)


@pytest.mark.parametrize("data", [b'{"version": 3, "session": "abc"}', b"[1, 2]", b"{", "fifo"])
def test_another_applications_latest_json_in_xdg_state_home_is_not_fpncli_s(homes, data):
    """$XDG_STATE_HOME/latest.json, where earlier versions wrote theirs, is in a folder that
    all applications share: another application's (``{"version": 3}``, a list) was called
    fpncli's and damaged. It counts as nothing recorded; fpncli's own file in its subfolder
    is still named when damaged."""
    import os

    legacy = homes / "state" / "latest.json"
    legacy.parent.mkdir()
    if data == "fifo":
        os.mkfifo(legacy)
    else:
        legacy.write_bytes(data)
    with pytest.raises(FileNotFoundError, match="^no previous extraction recorded"):
        latest_extraction()
    assert recent_extractions() == []
    own = homes / "state" / "fpncli" / "latest.json"
    own.parent.mkdir()
    own.write_bytes(b"[1, 2]")
    with pytest.raises(ValueError, match=f"^{re.escape(str(own))} is damaged \\(it holds a list"):
        latest_extraction()


def test_the_only_recorded_extraction_gone_says_none_earlier_is_recorded(tmp_path, monkeypatch):
    """After the only extraction recorded was deleted, show said "... and so are the 0 before
    it"; with earlier ones, it counts them."""
    import shutil

    from click.testing import CliRunner

    from fpncli.cli import cli

    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "home"))
    folders = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"complete": True}))
        folders.append(folder)
    record_latest(folders[0])
    shutil.rmtree(folders[0])
    with pytest.raises(FileNotFoundError) as gone:
        latest_extraction()
    assert str(gone.value) == (
        f"the latest extraction {folders[0]} is gone or incomplete, and no earlier extraction "
        "is recorded: name a TARGET"
    )
    result = CliRunner().invoke(cli, ["show"])
    assert result.exit_code == 1 and result.output == f"Error: {gone.value}\n"
    record_latest(folders[1])
    shutil.rmtree(folders[1])
    with pytest.raises(FileNotFoundError, match=r"incomplete, and so are the 1 before it: name"):
        latest_extraction()


def test_a_wds_run_is_the_latest_extraction_shown_by_key(tmp_path, monkeypatch):
    """``extract a.png -o LA; extract b.png -o LB --format wds; show --level p3`` drew LA/a,
    an older and unrelated extraction: a wds run recorded nothing. Its output is now the
    latest, shown as that TARGET is: by --key, and without it one line naming the output and
    how to pick an image; a rerun that finds its image in the index records it again."""
    import shutil
    from pathlib import Path

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from fpncli.cli import cli

    pytest.importorskip("pyarrow.parquet", reason="--format wds needs pyarrow (fpncli[wds])")
    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for name in "ab":
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), np.uint8)).save(f"{name}.png")
    small = ["--weights", "random", "--min-size", "64", "--max-size", "128"]
    runner = CliRunner()

    def extract(*args: str) -> None:
        result = runner.invoke(cli, ["extract", *args, *small], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    extract("a.png", "-o", "LA")
    extract("b.png", "-o", "LB", "--format", "wds")
    wds = (tmp_path / "LB").resolve()
    assert latest_extraction() == wds
    bare = runner.invoke(cli, ["show", "--level", "p3"])
    assert bare.exit_code == 1 and bare.output.splitlines() == [
        f"Error: the latest extraction {wds} is a --format wds output: name an image in it with "
        f"--key KEY (its keys are in {wds}/index.parquet, and fpncli report {wds} lists them)"
    ], bare.output
    assert not list(Path("LA/a").glob("show_*"))
    keyed = runner.invoke(cli, ["show", "--level", "p3", "--key", "b", "--scale", "level"],
                          catch_exceptions=False)  # fmt: skip
    assert keyed.exit_code == 0, keyed.output
    assert f"colour scale level: ranges from the 1 image(s) in {wds}" in keyed.output
    assert keyed.output.splitlines()[-1] == "saved fpn_show_b_p3.png"
    named = runner.invoke(cli, ["show", "LB", "--level", "p3", "--key", "b", "--scale", "level",
                                "--save", "named.png"], catch_exceptions=False)  # fmt: skip
    assert named.exit_code == 0, named.output
    assert Path("fpn_show_b_p3.png").read_bytes() == Path("named.png").read_bytes()
    for target in ([], ["LB"]):  # --weights, of an image TARGET: refused as for that TARGET
        weights = runner.invoke(cli, ["show", *target, "--key", "b", "--weights", "random"])
        assert weights.exit_code == 2 and weights.output.splitlines() == [
            "Error: --weights is an option of an image TARGET (--key names an image of a saved "
            "extraction: its saved maps are read, not computed) (see 'cli show --help')"
        ], weights.output
        lacking = runner.invoke(cli, ["show", *target, "--key", "zz", "--weights", "random"])
        assert lacking.exit_code == 1 and "no image with key 'zz' in" in lacking.output
    receptive = runner.invoke(cli, ["show", "--receptive-field", "--at", "3,3"])
    assert receptive.exit_code == 1 and receptive.output == (
        f"Error: the latest extraction {wds} is a --format wds output: --receptive-field takes "
        "an extraction folder or an image, not an image of a shard; name one as TARGET\n"
    )
    shutil.rmtree("LB")  # gone: the extraction before it
    assert latest_extraction() == (tmp_path / "LA" / "a").resolve()
    extract("b.png", "-o", "LB", "--format", "wds")
    extract("a.png", "-o", "LA")  # already complete: the latest again
    assert latest_extraction() == (tmp_path / "LA" / "a").resolve()
    extract("b.png", "-o", "LB", "--format", "wds")  # in the index already: the latest again
    assert recent_extractions()[:2] == [wds, (tmp_path / "LA" / "a").resolve()]


def test_a_wds_output_at_a_url_is_recorded_as_it_is(monkeypatch, tmp_path):
    """A --format wds output in an object store is recorded by its URL (a Path made it
    ``s3:/bucket/out`` below the current folder), and not looked up to be shown."""
    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    record_latest("s3://bucket/out")
    assert json.loads((tmp_path / "home" / "latest.json").read_text())["folder"] == (
        "s3://bucket/out"
    )
    assert recent_extractions() == ["s3://bucket/out"]
    assert latest_extraction() == "s3://bucket/out"


def test_a_wds_output_at_a_file_url_is_recorded_as_the_folder_it_names(monkeypatch, tmp_path):
    """extract ... -o file://W --format wds, W relative: recorded as it was given, file://W was
    read from whatever folder show ran in, and drew another W's image there without a word.
    Now the folder it names, from the folder the run ran in."""
    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "home"))
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    record_latest("file://W")
    recorded = json.loads((tmp_path / "home" / "latest.json").read_text())["folder"]
    assert recorded == str((tmp_path / "a" / "W").resolve())
    record_latest(f"file://{tmp_path}/b/W")
    recorded = json.loads((tmp_path / "home" / "latest.json").read_text())["folder"]
    assert recorded == str((tmp_path / "b" / "W").resolve())
