"""``extract --engine/--format`` options: checked before anything loads, one-line errors, and
the install hint when Ray is missing (runs with or without fpncli[ray] installed)."""

from __future__ import annotations

import sys

from click.testing import CliRunner

from fpncli.cli import cli


def _extract(*args):
    return CliRunner().invoke(cli, ["extract", *map(str, args), "--weights", "random"])


def test_engine_options_are_checked_before_loading(tmp_path, monkeypatch):
    result = _extract(tmp_path, "--gpu-workers", "2")
    assert result.exit_code == 2 and "--gpu-workers is an option of --engine ray" in result.output
    result = _extract(tmp_path, "--engine", "ray", "--gpus-per-worker", "1.5")
    assert result.exit_code == 2 and "--gpus-per-worker" in result.output
    result = _extract(tmp_path, "--engine", "ray", "--device", "cuda:1")  # each actor: cuda:0
    assert result.exit_code == 2 and "Ray places the actors on GPUs" in result.output
    monkeypatch.setitem(sys.modules, "ray", None)
    result = _extract(tmp_path, "--engine", "ray")
    assert result.exit_code == 1 and "pip install 'fpncli[ray]'" in result.output
