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
    for fraction in ("1.5", "0", "-1", "-2", "nan", "inf"):  # 0 and -1 passed as whole numbers
        result = _extract(tmp_path, "--engine", "ray", "--gpus-per-worker", fraction)
        assert result.exit_code == 2 and "--gpus-per-worker" in result.output, fraction
    # files are written one folder an image: a shard size would be ignored
    result = _extract(tmp_path, "--shard-size", "5MB")
    assert result.exit_code == 2 and "--shard-size is an option of --format wds" in result.output
    result = _extract(tmp_path, "--engine", "ray", "--device", "cuda:1")  # each actor: cuda:0
    assert result.exit_code == 2 and "Ray places the actors on GPUs" in result.output
    monkeypatch.setitem(sys.modules, "ray", None)
    result = _extract(tmp_path, "--engine", "ray")
    assert result.exit_code == 1 and "pip install 'fpncli[ray]'" in result.output


def test_ray_on_the_cpu_refuses_slow_precisions_like_the_local_engine(tmp_path):
    """fp16 on the CPU: refused before anything loads, with --engine ray --device cpu as with
    --engine local (it used to start Ray and fail in every actor: 'the Ray job failed ...;
    rerun to resume'); with auto, once the cluster shows no GPU, before any actor starts."""
    import types

    import pytest
    from PIL import Image

    from fpncli.run.ray_engine import RayOptions, _run
    from fpncli.run.steps import RunOptions

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    for engine in ("local", "ray"):
        out = tmp_path / engine
        result = _extract(tmp_path / "a.png", "-o", out, "--engine", engine, "--device", "cpu",
                          "--precision", "fp16")  # fmt: skip
        assert result.exit_code == 2, result.output
        assert "fp16 on the CPU is slower than fp32" in result.output and not out.exists()
    pytest.importorskip("ray.data", reason="the Ray engine needs fpncli[ray]")
    no_gpus = types.SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0}, nodes=lambda: [])
    with pytest.raises(ValueError, match="fp16 on the CPU is slower than fp32"):
        _run(no_gpus, [], str(tmp_path / "auto"), None, RunOptions(precision="fp16"),
             RayOptions(device="auto"), None, None)  # fmt: skip


def test_ray_refuses_a_memory_url_before_ray_starts(tmp_path, monkeypatch):
    """memory:// lives in one process: with --engine ray a usage error (exit 2) before anything
    loads, and run_ray's ValueError comes before Ray is imported (it came after Ray started,
    exit 1)."""
    import pytest
    from PIL import Image

    from fpncli.run.ray_engine import RayOptions, run_ray
    from fpncli.run.steps import RunOptions

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray never imported, installed or not
    result = _extract(tmp_path / "a.png", "-o", "memory://x", "--engine", "ray", "--format", "wds")
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        "Error: memory:// lives in one process: use it with --engine local only "
        "(see 'cli extract --help')"
    ]
    with pytest.raises(ValueError, match="memory:// lives in one process"):
        run_ray([], "memory://x", None, RunOptions(), RayOptions(out_format="wds"))


def test_ray_asking_for_more_gpus_than_the_cluster_has_names_the_option():
    """The actor pool's refusals are OptionErrors (usage errors, exit 2) naming the option that
    asks for the GPUs, not plain ValueErrors (exit 1)."""
    import types

    import pytest

    from fpncli.io.guard import OptionError
    from fpncli.run.ray_engine import RayOptions, _pool

    def cluster(gpus):
        return types.SimpleNamespace(cluster_resources=lambda: {"CPU": 4.0, "GPU": gpus})

    for gpus, options, option, message in [
        (0.0, RayOptions(device="cuda"), "--device", "has no GPU for the actors"),
        (1.0, RayOptions(gpus_per_worker=2.0), "--gpus-per-worker", "2 GPUs per worker, but"),
        (2.0, RayOptions(gpu_workers=3), "--gpu-workers", "3 workers x 1 GPUs each need 3"),
    ]:
        with pytest.raises(OptionError, match=message) as caught:
            _pool(cluster(gpus), options)
        assert caught.value.option == option
    assert _pool(cluster(2.0), RayOptions(gpus_per_worker=0.5)) == (4, 0.5)
    assert _pool(cluster(0.0), RayOptions()) == (1, 0.0)  # auto: one CPU actor
