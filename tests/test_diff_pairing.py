"""``fpncli diff``: which image of A is compared with which image of B."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fpncli.cli import cli

_SMALL = ["--weights", "random", "--min-size", "64", "--max-size", "128", "--no-heatmaps",
          "--no-overview"]  # fmt: skip


def _noise(path, seed: int, size=(96, 64)) -> None:
    """A random-noise photo of ``size`` (width, height): two seeds, two different pyramids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), np.uint8)
    Image.fromarray(pixels).save(path)


def _extract(*args) -> None:
    result = CliRunner().invoke(cli, ["extract", *map(str, args), *_SMALL], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _diff(*args) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli, ["diff", *map(str, args), "--no-pictures"])
    assert "Traceback" not in result.output
    return result.exit_code, result.output.splitlines()


def test_a_folder_key_whose_earlier_wds_spelling_is_another_photos_key_stays_unpaired(tmp_path):
    """A folder output of a.b.png and a_b.png (two photos) against a wds output of a_b.png only:
    a.b fell back to the key an earlier version's shards gave it (a_b), though a_b was the key
    of the photo a_b.png, and was compared with that other photo. It is only in A now."""
    pytest.importorskip("pyarrow.parquet", reason="--format wds needs pyarrow (fpncli[wds])")
    _noise(tmp_path / "imgs3" / "a.b.png", 1)
    _noise(tmp_path / "imgs3" / "a_b.png", 2)
    shutil.copytree(tmp_path / "imgs3", tmp_path / "imgs4")
    (tmp_path / "imgs4" / "a.b.png").unlink()
    _extract(tmp_path / "imgs3", "-o", tmp_path / "F3")
    _extract(tmp_path / "imgs4", "-o", tmp_path / "W4", "--format", "wds")
    code, lines = _diff(tmp_path / "F3", tmp_path / "W4", "-o", tmp_path / "d")
    assert code == 1
    assert "not compared: a.b: only in A" in lines
    assert not any(line.startswith("differs: ") for line in lines), lines
    assert lines[-1].startswith("1 of 2 images compared: all 1 compared agree"), lines
    code, lines = _diff(tmp_path / "W4", tmp_path / "F3", "-o", tmp_path / "d")
    assert code == 1 and "not compared: a.b: only in B" in lines
    assert lines[-1].startswith("1 of 2 images compared: all 1 compared agree"), lines
