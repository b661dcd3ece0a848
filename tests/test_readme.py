"""The README's commands run as pasted: every command line parses, every path it names exists."""

from __future__ import annotations

import glob
import re
import shlex
import shutil
import warnings
from pathlib import Path

import click
import pytest

from fpncli.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def _commands_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Commands\s+```bash\n(.*?)```", text, re.S)
    assert block, "README has no Commands block"
    return [line.split("  #")[0].strip() for line in block[1].splitlines() if line.strip()]


def _remaining(ctx: click.Context) -> list[str]:
    with warnings.catch_warnings():  # click 8.2 renamed protected_args; both are read here
        warnings.simplefilter("ignore", DeprecationWarning)
        return [*ctx.protected_args, *ctx.args]


def test_readme_commands_parse_and_name_files_that_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    lines = _commands_block()
    assert not any("|" in line for line in lines), "one command per line, no a | b | c"
    fpncli_lines = 0
    for line in lines:
        words = shlex.split(line)
        if words[0] == "ls":  # ls samples/*.png > files.txt: made here as the shell would
            pattern, target = words[1], words[-1]
            Path(target).write_text("\n".join(sorted(glob.glob(pattern))) + "\n")
            continue
        if words[:3] == ["python", "-m", "fpncli"]:
            words = ["fpncli", *words[3:]]
        assert words[0] == "fpncli", line
        fpncli_lines += 1
        if "--help" in words:
            with pytest.raises(click.exceptions.Exit):
                cli.make_context("fpncli", words[1:])
            continue
        ctx = cli.make_context("fpncli", words[1:])
        command: click.Command = cli
        while isinstance(command, click.Group) and _remaining(ctx):
            name, *rest = _remaining(ctx)
            command = command.get_command(ctx, name)
            assert command is not None, line
            ctx = command.make_context(name, rest, parent=ctx)  # runs every option's check
        if command.name == "extract":
            from fpncli.io.inputs import discover_inputs

            inputs = ctx.params["inputs"]
            assert not inputs or discover_inputs(inputs), f"{line}: no such input"
            assert all("street" not in w and "photos/" not in w for w in words), line
    assert fpncli_lines >= 10


@pytest.mark.parametrize("name", ["list", "download", "verify"])
def test_readme_shows_each_weights_command_on_its_own_line(name):
    assert any(line.startswith(f"fpncli weights {name}") for line in _commands_block())


def test_readme_has_the_default_and_the_cpu_only_install_lines():
    text = (ROOT / "README.md").read_text()
    setup = re.findall(r"^python3 -m venv .venv && .*$", text, re.M)
    assert len(setup) == 2, setup  # the default (CUDA wheels) and the CPU-only one
    default, cpu = setup
    assert 'pip install -e ".[test]"' in default and "index-url" not in default
    # PyTorch's CPU build first, from PyTorch's CPU index, then the package (torch is then met)
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu && " in cpu
    assert cpu.index("whl/cpu") < cpu.index('pip install -e ".[test]"')
    assert cpu.endswith("fpncli extract samples/chelsea.png")


def _manifest_table() -> dict[str, str]:
    """The README's manifest table: each row's field cell -> its description cell."""
    text = (ROOT / "README.md").read_text()
    table = text.split("`manifest.json`, field by field", 1)[1].split("\n\n", 2)[1]
    rows = [re.split(r"(?<!\\)\|", line) for line in table.splitlines()[2:]]
    assert all(len(row) == 4 for row in rows), table  # a bare | inside a cell splits the row
    return {field.strip(): what for _, field, what, _ in rows}


def test_the_manifest_table_lists_every_field_a_manifest_has(sample_extraction):
    """``overview`` (and the versions, ``created``) were in every manifest but not the table."""
    import json

    manifest = json.loads(next(sample_extraction.glob("*/manifest.json")).read_text())
    table = _manifest_table()
    fields = {name for cell in table for name in re.findall(r"`([^`]+)`", cell)}
    assert set(manifest) - {"levels"} <= fields, set(manifest) - fields
    assert "levels.pN" in fields
    for key, row in [("input", "input"), ("preprocess", "preprocess"), ("heatmap", "heatmap"),
                     ("weights", "`weights`, `device`, `precision`")]:  # fmt: skip
        described = set(re.findall(r"`([^`]+)`", table[f"`{key}`" if key == row else row]))
        assert set(manifest[key]) <= described, (key, set(manifest[key]) - described)
    level = manifest["levels"]["p2"]
    assert set(level) <= set(re.findall(r"`([^`]+)`", table["`levels.pN`"])), level


def test_the_readme_says_where_show_writes_without_a_display(sample_extraction, tmp_path):
    """``show`` with no display writes ``show_*.png`` into the extraction's folder, where a
    re-extraction leaves it: the README says so, with the names show uses."""
    from fpncli.viz.show import show

    text = " ".join((ROOT / "README.md").read_text().split())
    assert "Without one it writes a PNG and prints its path: `show_LEVEL.png`" in text
    assert "extracting the folder again neither redraws nor removes it" in text
    folder = tmp_path / "chelsea"
    shutil.copytree(sample_extraction / "chelsea", folder)
    for level, overlay, name in [("p4", False, "show_p4.png"), ("all", False, "show_all.png"),
                                 ("p4", True, "show_p4_overlay.png")]:  # fmt: skip
        result = show(str(folder), level=level, overlay=overlay, display=False)
        assert result.saved == folder / name and f"`{name}`" in text
    for options, name in [({"reduce": "pca"}, "show_p4_pca.png"),
                          ({"channel": 5}, "show_p4_channel5.png"),
                          ({"top": 16}, "show_p4_top16.png"),
                          ({"channels": "0,5,17"}, "show_p4_channels0,5,17.png")]:  # fmt: skip
        result = show(str(folder), level="p4", display=False, **options)
        assert result.saved == folder / name and f"→ `{name}`" in text


def test_the_readme_exit_codes_are_those_of_its_examples(sample_extraction, tmp_path):
    """The README's exit codes, on its examples: a value the extraction rules out is a usage
    error (2); an -o holding the other format's outputs, a missing extraction, a failure (1)."""
    from click.testing import CliRunner

    from fpncli.cli import cli

    text = " ".join((ROOT / "README.md").read_text().split())
    assert "or an `-o` that cannot take the run (one holding the other `--format`'s outputs)" in (
        text
    )
    assert "(`show --channel 300` of a level with 256 channels, a `show --level` the " in text
    assert "a tensor `--no-npy` did not save, a photo gone" in text
    out = tmp_path / "out"
    shutil.copytree(sample_extraction / "chelsea", out / "chelsea")
    photo = sample_extraction / "chelsea" / "overview.png"
    runner = CliRunner()
    for args, code in [
        (["show", str(out / "chelsea"), "--level", "p3", "--channel", "300"], 2),
        (["show", str(out / "chelsea"), "--level", "stem"], 2),
        (["extract", str(photo), "-o", str(out), "--format", "wds", "--weights", "random"], 1),
        (["show", str(tmp_path / "missing")], 1),
    ]:
        result = runner.invoke(cli, args)
        assert result.exit_code == code, (args, result.output)
    assert not list(out.glob("*.tar"))  # the refused -o: nothing written


def test_the_readme_show_examples_run(tmp_path, monkeypatch):
    """show refuses options that would change nothing: every ``fpncli show`` line of the
    README's command blocks still draws (exit 0), on an extraction of chelsea with the
    bottom-up stages (``--level res4``), the latest one (``show --level p6``)."""
    from click.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    text = (ROOT / "README.md").read_text()
    lines = [shlex.split(line, comments=True)
             for block in re.findall(r"```bash\n(.*?)```", text, re.S)
             for line in block.splitlines() if line.startswith("fpncli show")]  # fmt: skip
    assert len(lines) >= 7 and any("--receptive-field" in words for words in lines), lines
    runner = CliRunner()
    extract = ["extract", str(ROOT / "samples" / "chelsea.png"), "--weights", "random",
               "--levels", "stem,res2,res3,res4,res5,all", "--min-size", "64", "--max-size",
               "128"]  # fmt: skip
    assert runner.invoke(cli, extract, catch_exceptions=False).exit_code == 0
    for words in lines:
        result = runner.invoke(cli, words[1:], catch_exceptions=False)
        assert result.exit_code == 0 and "saved " in result.output, (words, result.output)
