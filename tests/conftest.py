"""Shared test set-up: every test gets its own weights cache and "latest extraction" record."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_session_home(tmp_path_factory):
    """Before any module- or session-scoped fixture runs a job: the user's own latest.json and
    weights cache are never the tests' (a module fixture's run_jobs had recorded its output as
    the user's latest extraction, which ``fpncli show`` then opened)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FPNCLI_HOME", str(tmp_path_factory.mktemp("fpncli-home-shared")))
        yield


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path_factory.mktemp("fpncli-home")))


_DRAWN: dict = {}


@pytest.fixture(autouse=True)
def _random_weights_drawn_once(monkeypatch):
    """``--weights random`` draws 25 M weights from numpy's legacy stream (a quarter of a second;
    hundreds of tests load them): each architecture's and seed's are drawn once per session by
    the real ``random_state_dict`` and every later caller gets a copy (callers may change it).
    Tests of ``random_state_dict`` itself call ``fpncli.weights.arch.random_state_dict``."""
    from fpncli import api
    from fpncli.weights import arch, synthetic

    def drawn_once(model, seed: int = 0):
        key = (tuple((k, tuple(v.shape)) for k, v in model.state_dict().items()), seed)
        if key not in _DRAWN:
            if len(_DRAWN) == 2:  # 100 MB each: the two latest
                del _DRAWN[next(iter(_DRAWN))]
            _DRAWN[key] = arch.random_state_dict(model, seed)
        return {k: v.clone() for k, v in _DRAWN[key].items()}

    monkeypatch.setattr(api, "random_state_dict", drawn_once)
    monkeypatch.setattr(synthetic, "random_state_dict", drawn_once)


_LOADED: dict = {}


@pytest.fixture(autouse=True)
def _random_backbone_loaded_once(monkeypatch):
    """``load_backbone("random", ...)`` builds, loads strictly and folds a 25 M-weight network
    (0.6 s here; a CLI test runs it once per ``extract`` or ``show`` it invokes): each set of
    arguments is loaded once per session by the real ``load_backbone`` and every later call
    gets a deep copy (callers convert, compile or move it). Only the string "random" is
    cached; checkpoint files, registry names and ``Path("random")`` always take the real path,
    and tests that replace ``api.load_backbone`` replace this too."""
    import copy

    from fpncli import api

    real = api.load_backbone

    def loaded_once(weights=api.DEFAULT_WEIGHTS, **kwargs):
        if not (isinstance(weights, str) and weights == "random"):
            return real(weights, **kwargs)
        options = {k: v for k, v in kwargs.items() if k not in ("download", "download_progress")}
        key = tuple(sorted((k, repr(v)) for k, v in options.items()))
        if key not in _LOADED:
            if len(_LOADED) == 3:  # 100 MB each: the three latest
                del _LOADED[next(iter(_LOADED))]
            _LOADED[key] = real(weights, **kwargs)
        return copy.deepcopy(_LOADED[key])

    monkeypatch.setattr(api, "load_backbone", loaded_once)


_HISTOGRAMS: dict = {}


@pytest.fixture(autouse=True)
def _histograms_drawn_once(monkeypatch):
    """``report`` draws its histograms with matplotlib, a second a call on two cores (most of
    the time of a report of a few images; a fifth of the time of the report, CLI and checkpoint
    test files): each set of histograms is drawn once per session by the real ``_histogram_png``
    and a later report of the same values writes the same PNG bytes. The key is everything the
    picture is drawn from: the levels in their order, each one's image count, counts and
    edges. Tests that replace ``_histogram_png`` replace this too."""
    import hashlib

    from fpncli.viz import report

    real = report._histogram_png

    def drawn_once(stats, path):
        key = hashlib.sha256()
        for name in report.order(stats):
            key.update(repr((name, stats[name].images)).encode())
            for array in stats[name].histogram():
                key.update(repr((array.dtype.str, array.shape)).encode() + array.tobytes())
        key = key.hexdigest()
        if key not in _HISTOGRAMS:
            real(stats, path)
            if len(_HISTOGRAMS) == 64:  # tens of KB each
                del _HISTOGRAMS[next(iter(_HISTOGRAMS))]
            _HISTOGRAMS[key] = path.read_bytes()
        else:
            path.write_bytes(_HISTOGRAMS[key])

    monkeypatch.setattr(report, "_histogram_png", drawn_once)


@pytest.fixture(autouse=True)
def _photos_shown_small(request, monkeypatch):
    """``fpncli show PHOTO`` (and its ``--receptive-field``) extracts the photo at Detectron2's
    800-pixel size, seconds a call on two cores: tests draw at 64 to 128 pixels, as their
    ``extract`` runs do, unless marked ``photo_size`` (the real size)."""
    if request.node.get_closest_marker("photo_size") is None:
        from fpncli.viz import photo_source

        monkeypatch.setattr(photo_source, "PHOTO_SIZE", (64, 128))


@pytest.fixture(scope="session")
def sample_extraction(tmp_path_factory):
    """``fpncli extract samples/ --weights random`` at a small size (three images), made once:
    the folder of image folders, with ``run.json``. Tests must not modify it."""
    from pathlib import Path

    from click.testing import CliRunner

    from fpncli.cli import cli

    out = tmp_path_factory.mktemp("sample-extraction") / "out"
    samples = Path(__file__).resolve().parent.parent / "samples"
    args = ["extract", str(samples), "-o", str(out), "--weights", "random", "--min-size", "64"]
    args += ["--max-size", "128", "--workers", "1"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FPNCLI_HOME", str(tmp_path_factory.mktemp("fpncli-home-session")))
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory):
    """The same extraction as ``sample_extraction`` written with ``--format wds`` (one image per
    shard: three shards), plus a broken input that fails (its row in the index says why).
    Skipped without pyarrow and fsspec. Tests must not modify it."""
    from pathlib import Path

    from click.testing import CliRunner

    from fpncli.cli import cli

    pytest.importorskip("pyarrow.parquet", reason="--format wds needs pyarrow (fpncli[wds])")
    pytest.importorskip("fsspec", reason="--format wds needs fsspec (fpncli[wds])")
    base = tmp_path_factory.mktemp("sample-shards")
    broken = base / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    samples = Path(__file__).resolve().parent.parent / "samples"
    args = ["extract", str(samples), str(broken), "-o", str(base / "out"), "--format", "wds"]
    args += ["--shard-size", "500KB", "--weights", "random", "--min-size", "64"]
    args += ["--max-size", "128", "--workers", "1"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FPNCLI_HOME", str(tmp_path_factory.mktemp("fpncli-home-session")))
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 1 and "broken.jpg" in result.output, result.output
    return base / "out"


@pytest.fixture
def drawn_heatmaps(monkeypatch):
    """``drawn_heatmaps(module)``: the heatmaps ``module`` draws from then on, in order, as
    ``(map2d, kwargs)`` (a copy of each map: what it was when drawn): those of its
    ``heatmap_image`` (``show``), or of ``visualize.heatmap_indexed``, which draws every heatmap
    (the written PNGs and ``heatmap_image``'s pictures)."""

    def spy_on(module) -> list[tuple]:
        name = "heatmap_indexed" if hasattr(module, "heatmap_indexed") else "heatmap_image"
        drawn, real = [], getattr(module, name)

        def spy(map2d, **kwargs):
            drawn.append((map2d.copy(), kwargs))
            return real(map2d, **kwargs)

        monkeypatch.setattr(module, name, spy)
        return drawn

    return spy_on


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty weights cache (``$FPNCLI_HOME``) of this test's own."""
    monkeypatch.setenv("FPNCLI_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    """The bytes of a Detectron2 ``.pkl`` of a seeded R-50 (what a download serves)."""
    from fpncli.weights.synthetic import seeded_state_dict, write_detectron2_pkl

    path = tmp_path_factory.mktemp("ckpt") / "seeded.pkl"
    write_detectron2_pkl(path, seeded_state_dict(0))
    return path.read_bytes()


@pytest.fixture
def dangling_outputs(tmp_path):
    """Output folders ``-o`` must refuse before writing: ``gone`` (a symlink to a missing
    folder), ``gone/sub`` below it, and ``loop`` (a symlink to itself), in ``tmp_path``, as
    ``[(out, the line naming the link)]``."""
    (tmp_path / "gone").symlink_to(tmp_path / "missing" / "folder")
    (tmp_path / "loop").symlink_to("loop")
    missing = (
        f"is a symbolic link to a missing folder ({tmp_path / 'missing' / 'folder'}): make that "
        "folder, or give another output folder (-o)"
    )
    loops = "is a symbolic link that loops (to loop): give another output folder (-o)"
    return [(tmp_path / out, f"Error: {tmp_path / link} {what}")
            for out, link, what in [("gone", "gone", missing), ("gone/sub", "gone", missing),
                                    ("loop", "loop", loops)]]  # fmt: skip
