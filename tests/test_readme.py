"""The README's commands run as pasted: every command line parses, every path it names exists."""

from __future__ import annotations

import glob
import re
import shlex
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
