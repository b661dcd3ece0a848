"""``fpncli bench`` on the CPU: rows, the stage split, a failing row that still lets the others
print, and the card-name peak table."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from fpncli.cli import cli
from fpncli.run.bench import STAGES
from fpncli.run.bench_model import bf16_peak_tflops


def test_bench_rows_stages_ratios_and_a_skipped_precision(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--sizes", "64x64", "--precisions", "fp16,fp32", "--seconds", "0",
            "--warmup", "1", "--images", "3", "--outputs", "heatmaps",
            "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output  # a precision unsuited to the CPU: said, skipped
    assert "skipped fp16: fp16 on the CPU is slower than fp32: use fp32" in result.output
    skipped = json.loads(out.read_text())["skipped"]
    assert [s.get("precision") for s in skipped] == ["fp16"]
    rows = json.loads(out.read_text())["rows"]
    model = next(r for r in rows if r["kind"] == "model" and r["precision"] == "fp32")
    assert model["error"] is None and model["images_per_s"] > 0 and model["images"] >= 3
    e2e = next(r for r in rows if r["kind"] == "end-to-end" and r["precision"] == "fp32")
    assert e2e["error"] is None and e2e["images"] == 3
    assert set(e2e["stage_ms_per_image"]) == set(STAGES)
    assert e2e["stage_ms_per_image"]["model"] > 0 and e2e["stage_ms_per_image"]["decode"] > 0
    assert e2e["bound"] in ("decode", "device", "write")
    assert e2e["ratios"]["of_model"] > 0 and e2e["ratios"]["decode_img_s"] > 0


def test_bench_json_to_stdout_is_the_json_alone():
    """``--json -``: stdout parses as JSON (the table went there first), the table on stderr."""
    import subprocess
    import sys

    args = ["bench", "--device", "cpu", "--sizes", "64x64", "--precisions", "fp32", "--seconds",
            "0", "--iters", "1", "--warmup", "0", "--model-only", "--json", "-"]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "fpncli", *args], capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["complete"] and data["rows"][0]["kind"] == "model"
    assert "img/s" in result.stderr and "64x64" in result.stderr


def test_bf16_peak_by_card_name():
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_peak_tflops("NVIDIA A10") == 125.0
    assert bf16_peak_tflops("NVIDIA H200") == 989.4
    assert bf16_peak_tflops("NVIDIA H200 NVL") == 835.0
    assert bf16_peak_tflops("Some Future GPU") is None
    # whole words: not the A100's peak for an RTX A1000, not B200's for a GB200; a laptop's 4090
    # is not the desktop card
    assert bf16_peak_tflops("NVIDIA RTX A1000 6GB Laptop GPU") is None
    assert bf16_peak_tflops("NVIDIA RTX A1000") is None
    assert bf16_peak_tflops("NVIDIA GB200") is None
    assert bf16_peak_tflops("NVIDIA GeForce RTX 4090 Laptop GPU") is None
    assert bf16_peak_tflops("NVIDIA GeForce RTX 4090") == 165.2
    assert bf16_peak_tflops("NVIDIA L40S") == 362.1 and bf16_peak_tflops("NVIDIA L4") == 121.0
    assert bf16_peak_tflops("NVIDIA GH200 480GB") == 989.4


def test_gpu_check_script_parses_and_sets_no_bash_special_variable():
    """bash gives some names a meaning of its own: ``SECONDS=2`` only resets the shell's clock,
    and ``$SECONDS`` then reads the seconds elapsed, so every row of the GPU check would have run
    for as long as the check had been running (it did, in a dry run)."""
    import re
    import shutil
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"
    text = script.read_text()
    special = {"SECONDS", "RANDOM", "SRANDOM", "LINENO", "BASHPID", "EPOCHSECONDS",
               "EPOCHREALTIME", "PPID", "UID", "EUID", "GROUPS", "HOSTNAME", "OLDPWD",
               "PIPESTATUS", "BASH_REMATCH", "FUNCNAME", "IFS"}  # fmt: skip
    assigned = set(re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", text, re.M))
    assert assigned and not assigned & special, assigned & special
    if shutil.which("bash"):
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_bench_unfused_adds_the_onednn_and_unfused_rows(tmp_path):
    """``--unfused``: beside fpncli's row, the same weights without the CPU kernels (oneDNN
    channels-last, where the kernels are in use) and without BN folding, each its own row."""
    from fpncli.model import cpu_kernels

    out = tmp_path / "bench.json"
    args = ["bench", "--sizes", "64x64", "--precisions", "fp32", "--seconds", "0.05",
            "--warmup", "1", "--model-only", "--unfused", "--weights", "random",
            "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    expected = ["eager", "onednn", "unfused"] if cpu_kernels.available() else ["eager", "unfused"]
    assert [r["variant"] for r in rows] == expected
    assert all(r["error"] is None and r["images_per_s"] > 0 for r in rows)


def test_an_end_to_end_row_lasts_its_seconds_with_more_images(tmp_path, monkeypatch):
    """Time-based rows: when the first run is shorter than the row's time, the row is run again
    with as many images as ``_images_for`` says fill it (the inputs repeat). How many that is
    depends on the machine's speed: its arithmetic has its own test below; here it says 5."""
    import fpncli
    from fpncli.run import bench
    from fpncli.run.bench import bench_end_to_end

    asked = []

    def five(summary, seconds, free_bytes):
        asked.append((summary.done, seconds))
        return 5

    monkeypatch.setattr(bench, "_images_for", five)
    model = fpncli.load_backbone("random")
    row = bench_end_to_end(model, height=64, width=64, images=2, batch_size=1, precision="fp32",
                           outputs="heatmaps", seconds=1.5, work_dir=tmp_path,
                           measure_disk=False)  # fmt: skip
    assert row.error is None, row.error
    assert asked == [(2, 1.5)] and row.images == 5 and row.images_per_s > 0
    assert list(tmp_path.iterdir()) == []  # the scratch folder is gone


def test_images_for_fills_the_time_within_half_the_free_disk():
    from fpncli.run.bench import _images_for
    from fpncli.run.pipeline import RunSummary

    ran = RunSummary(total=10, done=10, seconds=0.5, bytes_written=10 * 2**20)
    assert _images_for(ran, 2.0, free_bytes=2**40) == 48  # 20 img/s x 2 s x 1.2
    assert _images_for(ran, 2.0, free_bytes=40 * 2**20) == 20  # half the disk: 20 MiB
    assert _images_for(ran, 0.5, free_bytes=2**40) == 0  # it lasted long enough
    assert _images_for(RunSummary(total=1), 2.0, free_bytes=2**40) == 0


def test_a_hint_names_the_setting_where_onednn_beats_the_cpu_kernels():
    from fpncli.run.bench import BenchRow
    from fpncli.run.bench_table import kernel_hint

    def row(variant, seconds, height=800):
        return BenchRow("model", "cpu", height, 1216, 1, "fp32", variant, median_batch_s=seconds)

    assert kernel_hint(row("onednn", 1.53), row("eager", 1.18)) is None
    assert kernel_hint(row("onednn", 0.95), row("eager", 1.18)) == (
        "note: at 800x1216 batch 1 oneDNN took 950 ms against 1180 ms with fpncli's CPU "
        "kernels: on this CPU, FPNCLI_CPU_KERNELS=0 is faster"
    )
    assert kernel_hint(row("onednn", 0.98, 640), row("eager", 1.0, 640)) is None  # within 5%
    assert kernel_hint(row("onednn", 0.5), None) is None  # fpncli's row failed


def _fake_bench(monkeypatch, model_rates, e2e_rates):
    """bench_model and bench_end_to_end replaced: each call returns a row whose rate is the
    next of ``model_rates`` / ``e2e_rates`` (its median batch time the inverse)."""
    import fpncli.run.bench as bench_module
    import fpncli.run.bench_model as bench_model_module
    from fpncli.run.bench import BenchRow

    model_rates, e2e_rates = iter(model_rates), iter(e2e_rates)

    def model(model, *, height, width, batch_size, precision, variant=None, **kwargs):
        row = BenchRow("model", "cpu", height, width, batch_size, precision, variant or "eager")
        row.images_per_s = next(model_rates)
        row.median_batch_s = batch_size / row.images_per_s
        return row

    def end_to_end(model, *, height, width, batch_size, precision, outputs, **kwargs):
        row = BenchRow("end-to-end", "cpu", height, width, batch_size, precision, outputs)
        row.images_per_s = next(e2e_rates)
        return row

    monkeypatch.setattr(bench_model_module, "bench_model", model)
    monkeypatch.setattr(bench_module, "bench_end_to_end", end_to_end)


def test_each_end_to_end_row_is_compared_with_its_own_passs_model_row(monkeypatch, tmp_path):
    """``--sizes 64x96,64x96`` (the README's own runs repeat a size): each end-to-end row's
    ratio is to the model row measured with it, in the table and in the JSON alike (the JSON
    divided the first end-to-end row by the second pass's model row)."""
    _fake_bench(monkeypatch, [8.0, 10.0], [6.0, 9.0])
    out = tmp_path / "b.json"
    args = ["bench", "--device", "cpu", "--sizes", "64x96,64x96", "--images", "2",
            "--seconds", "0", "--iters", "1", "--warmup", "1", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["ratios"].get("of_model") for r in rows] == [None, 0.75, None, 0.9]
    table = [line for line in result.output.splitlines() if line.startswith("e2e")]
    assert ["of_model=0.75" in table[0], "of_model=0.90" in table[1]] == [True, True]


def test_a_kernel_hint_compares_the_onednn_row_with_its_own_passs_row(monkeypatch):
    """Two passes of one size: the hint is each pass's oneDNN row against fpncli's row of that
    pass (the first eager row of the size was the one compared with every oneDNN row)."""
    from fpncli.model import cpu_kernels

    if not cpu_kernels.available():
        pytest.skip("no CPU kernels here: no onednn row")
    # fpncli, onednn, unfused; twice: oneDNN is 10% faster in the second pass only
    _fake_bench(monkeypatch, [10.0, 9.0, 5.0, 5.0, 5.5, 3.0], [])
    args = ["bench", "--device", "cpu", "--sizes", "64x96,64x96", "--model-only", "--unfused",
            "--seconds", "0", "--iters", "1", "--warmup", "0"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    hints = [line for line in result.output.splitlines() if "oneDNN took" in line]
    assert hints == [
        "note: at 64x96 batch 1 oneDNN took 182 ms against 200 ms with fpncli's CPU kernels: "
        "on this CPU, FPNCLI_CPU_KERNELS=0 is faster"
    ]


def test_ratios_across_runs_pair_only_the_rows_without_their_own():
    """gpu_check.sh joins its steps' rows: an ``--e2e-only`` step's row takes the nearest model
    row of its shape before it; a row paired when it was made keeps its ratio."""
    from fpncli.run.bench import BenchRow
    from fpncli.run.bench_table import add_ratios_across

    def row(kind, rate, variant="eager", height=64):
        return BenchRow(kind, "cpu", height, 96, 1, "fp32", variant, images_per_s=rate)

    paired = row("end-to-end", 6.0, "npy")
    paired.ratios["of_model"] = 0.6
    alone, other_size = row("end-to-end", 4.0, "heatmapsx2"), row("end-to-end", 4.0, "npy", 32)
    rows = [row("model", 5.0), row("model", 10.0), paired, alone, other_size, row("model", 1.0)]
    add_ratios_across(rows)
    assert paired.ratios == {"of_model": 0.6} and alone.ratios == {"of_model": 0.4}
    assert other_size.ratios == {}


def test_an_end_to_end_row_records_the_size_it_ran_at(tmp_path):
    """``--source-size``: the JPEGs are resized to fit the size, and the model runs at their
    padded size: the row says that size (64x192 to fit 64x96 is 32x96), a note says why, and it
    has no ratio to the 64x96 model row (it was labelled 64x96 and compared with it)."""
    out = tmp_path / "b.json"
    args = ["bench", "--device", "cpu", "--sizes", "64x96", "--source-size", "64x192",
            "--images", "2", "--seconds", "0", "--iters", "1", "--warmup", "0",
            "--outputs", "heatmaps", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    model, e2e = json.loads(out.read_text())["rows"]
    assert (model["height"], model["width"]) == (64, 96)
    assert (e2e["height"], e2e["width"]) == (32, 96) and e2e["error"] is None
    assert "of_model" not in e2e["ratios"] and "of_min_model_decode" not in e2e["ratios"]
    assert e2e["note"] == (
        "ran at 32x96 (64x192 JPEGs resized to fit 64x96, padded to multiples of 32): no "
        "of_model, only a model row of 32x96 compares with it"
    )
    assert "note: end-to-end heatmaps 64x96 batch 1 fp32: ran at 32x96" in result.output


def test_padded_size_is_what_the_model_runs_at():
    from fpncli.run.bench import padded_size

    assert padded_size(1080, 1920, 256, 384) == (224, 384)  # 216x384, padded
    assert padded_size(1080, 1920, 768, 1344) == (768, 1344)  # gpu_check.sh's E2E size
    assert padded_size(800, 1216, 800, 1216) == (800, 1216)
    assert padded_size(100, 150, 100, 150) == (128, 160)  # an --e2e-only resize target


def test_bench_with_no_precision_this_device_runs_is_a_usage_error(monkeypatch):
    """Every precision asked unsuited to the device: one line and exit 2, before the weights
    are loaded (it printed a line per precision, an empty table and exited 0)."""
    import fpncli.api

    def no_load(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(fpncli.api, "load_backbone", no_load)
    args = ["bench", "--device", "cpu", "--sizes", "64x96", "--precisions", "fp16",
            "--images", "2"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "'--precisions': none runs well on cpu (fp16: fp16 on the CPU is slower" in line


def test_the_bound_is_the_host_when_the_feeding_thread_outlasts_the_device():
    from fpncli.run.bench import _bound

    device = {"h2d": 1.0, "preprocess": 1.0, "model": 6.0, "reductions": 1.0, "d2h": 1.0}
    assert _bound({**device, "decode": 20.0, "write": 4.0, "host": 10.5}, 4, 2) == "device"
    assert _bound({**device, "decode": 20.0, "write": 4.0, "host": 12.5}, 4, 2) == "host"
    assert _bound({**device, "decode": 60.0, "host": 30.0}, 4, 2) == "decode"
    assert _bound({**device, "write": 30.0, "host": 11.0}, 4, 2) == "write"


def test_an_end_to_end_row_in_worker_processes(tmp_path):
    """``--processes 2``: the row runs in two worker processes sharing the device (extract's
    ``--processes 2``); its rate is over the workers' own run time, its variant says x2."""
    out = tmp_path / "bench.json"
    args = ["bench", "--sizes", "64x64", "--precisions", "fp32", "--seconds", "0", "--images",
            "4", "--outputs", "heatmaps", "--e2e-only", "--processes", "2", "--weights", "random",
            "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())["rows"]
    assert row["variant"] == "heatmapsx2" and row["error"] is None and row["images"] == 4
    assert 0 < row["seconds"] and row["images_per_s"] == pytest.approx(4 / row["seconds"])
    assert row["peak_gpu_mb"] is None and row["bound"] in ("decode", "device", "write", "host")
    assert "heatmapsx2" in result.output


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--sizes", "10x800", "each side >= 32"),
        ("--sizes", "10000x10000", "10000x10000 is over 89 MP"),
        ("--source-size", "100000x100000", "100000x100000 is over 89 MP"),
        ("--source-size", "32x70000", "a 65500-pixel side"),
    ],
)
def test_bench_refuses_sizes_it_could_not_build_before_any_work(option, value, message):
    """--source-size 100000x100000 built a 30 GB image until the OS killed the process."""
    result = CliRunner().invoke(cli, ["bench", "--device", "cpu", option, value])
    assert result.exit_code == 2 and message in result.output, result.output


def test_the_decode_rate_of_a_row_is_the_best_of_its_runs(monkeypatch, tmp_path):
    """The decode rate with all cores is a capacity: each end-to-end row measures it
    ``DECODE_RATE_RUNS`` times and keeps the best (noise only slows a run down)."""
    import fpncli
    from fpncli.run import bench
    from fpncli.run.bench import bench_end_to_end
    from fpncli.run.bench_table import add_ratios

    rates = iter([150.0, 240.0, 90.0])
    monkeypatch.setattr(bench, "decode_rate", lambda *args, **kwargs: next(rates))
    model = fpncli.load_backbone("random")
    row = bench_end_to_end(model, height=64, width=64, images=2, batch_size=1, precision="fp32",
                           outputs="heatmaps", work_dir=tmp_path, measure_disk=False)  # fmt: skip
    assert row.error is None, row.error
    assert bench.DECODE_RATE_RUNS == 2 and row.ratios["decode_img_s"] == 240.0
    assert "decode_procs_img_s" not in row.ratios  # on the CPU, by default, threads only
    model_row = bench.BenchRow("model", row.device, 64, 64, 1, "fp32", "eager")
    model_row.images_per_s = 1e6
    add_ratios(row, model_row)
    assert row.ratios["of_min_model_decode"] == pytest.approx(row.images_per_s / 240.0)


def test_the_cores_decode_rate_is_the_higher_of_threads_and_processes(monkeypatch, tmp_path):
    """One process's decoding threads take turns at its Python lock: the decode rate with all
    cores is also measured in processes, and the higher rate is the one the ratio divides by."""
    import fpncli
    from fpncli.run import bench
    from fpncli.run.bench import bench_end_to_end
    from fpncli.run.bench_table import add_ratios

    monkeypatch.setattr(bench, "decode_rate", lambda *args, **kwargs: 240.0)
    asked = []

    def in_processes(paths, options, fmt, processes, device):
        asked.append(processes)
        return [310.0, 330.0]

    monkeypatch.setattr(bench, "decode_rates_in_processes", in_processes)
    model = fpncli.load_backbone("random")
    row = bench_end_to_end(model, height=64, width=64, images=2, batch_size=1, precision="fp32",
                           outputs="heatmaps", work_dir=tmp_path, measure_disk=False,
                           decode_processes=3)  # fmt: skip
    assert row.error is None, row.error
    assert asked == [3] and row.ratios["decode_procs_img_s"] == 330.0
    model_row = bench.BenchRow("model", row.device, 64, 64, 1, "fp32", "eager")
    model_row.images_per_s = 1e6
    add_ratios(row, model_row)
    assert row.ratios["of_min_model_decode"] == pytest.approx(row.images_per_s / 330.0)


def test_decode_rates_in_processes_give_a_rate_per_run_or_the_decoding_error(tmp_path):
    from fpncli.io.outputs import OutputOptions
    from fpncli.run.pipeline import RunOptions
    from fpncli.run.rates import DECODE_PER_PROCESS, decode_rates_in_processes, make_images
    from fpncli.weights.registry import DETECTRON2_INPUT

    paths = make_images(tmp_path, 3, 48, 64)
    rates = decode_rates_in_processes(paths, RunOptions(output=OutputOptions()),
                                      DETECTRON2_INPUT, 2, runs=2)  # fmt: skip
    assert len(rates) == 2 and all(r > 0 for r in rates)
    assert DECODE_PER_PROCESS >= 4
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a JPEG")
    with pytest.raises(Exception, match="broken.jpg|cannot identify|image"):
        decode_rates_in_processes([broken], RunOptions(output=OutputOptions()), DETECTRON2_INPUT,
                                  2, runs=1)  # fmt: skip


def test_a_failed_row_keeps_its_whole_reason_on_one_line(monkeypatch):
    """A compile error's first line says only that the backend raised; the row keeps the
    rest, on one line (it kept the first line alone)."""
    from fpncli.api import load_backbone
    from fpncli.run import bench_model

    def raises(*args, **kwargs):
        raise RuntimeError("backend='inductor' raised:\nCompilationError: no C compiler found")

    monkeypatch.setattr(bench_model, "model_for_run", raises)
    row = bench_model.bench_model(load_backbone("random"), height=64, width=96, batch_size=1,
                                  precision="fp32", iters=1, warmup=0)  # fmt: skip
    assert row.error == (
        "RuntimeError: backend='inductor' raised:\\nCompilationError: no C compiler found"
    )


def test_an_end_to_end_rows_cpu_busy_share_is_over_its_runs_span(monkeypatch):
    """``cpu_busy``: the machine's busy share while the row's timed run ran, from ``/proc/stat``
    sampled in a thread, taken from the last sample before the run's span to the first after
    it (worker processes' start left out); steal counts as not busy; None where the file is
    missing or unreadable."""
    from fpncli.run import samplers

    clock = iter(range(100))
    readings = iter([(0, 100), (10, 200), (60, 300), (160, 400), (170, 500)])
    monkeypatch.setattr(samplers, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))
    monkeypatch.setattr(samplers, "cpu_jiffies", lambda: next(readings, None))
    sampler = samplers.CpuSampler(every=0.0)
    sampler.thread.join()  # (its readings ran out: the thread ended)
    assert sampler.stop((1.0, 3.0)) == pytest.approx((160 - 10) / (400 - 200))
    monkeypatch.setattr(samplers, "cpu_jiffies", lambda: None)
    assert samplers.CpuSampler().stop() is None


def test_an_end_to_end_rows_gpu_busy_share_is_nvidia_smis_over_its_span(monkeypatch):
    """``gpu_busy``: the mean of nvidia-smi's utilization lines read during the row's span (a
    line that is not a number skipped); nothing without a command, or one that cannot start."""
    import sys
    import threading
    import time

    import torch

    from fpncli.run import samplers

    script = ("import time\nfor v in ('40', '[N/A]', '60', '80'):\n"
              "    print(v, flush=True)\n    time.sleep(0.05)\ntime.sleep(30)")  # fmt: skip
    sampler = samplers.GpuSampler([sys.executable, "-c", script])
    deadline = time.monotonic() + 20
    while len(sampler.samples) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    assert sampler.stop() == pytest.approx(0.6)  # (and the sleeping command is ended)
    assert time.monotonic() - started < 10 and sampler.process.poll() is not None
    assert sampler.stop((0.0, sampler.samples[0][0])) == pytest.approx(0.4)
    assert samplers.GpuSampler(None).stop() is None
    # a command that does not flush its lines (as a C program writing into a pipe), started by
    # a wrapper that does not exec it: its samples arrive, and stopping it ends both
    unflushed = ("import sys, time\nfor v in ('30', '50'):\n    sys.stdout.write(v + '\\n')\n"
                 "    time.sleep(0.05)\ntime.sleep(60)")  # fmt: skip
    wrapped = samplers.GpuSampler(["/bin/sh", "-c", f'"{sys.executable}" -c "{unflushed}"; true'])
    deadline = time.monotonic() + 20
    while len(wrapped.samples) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    result = []
    stopper = threading.Thread(target=lambda: result.append(wrapped.stop()), daemon=True)
    stopper.start()
    stopper.join(timeout=20)
    assert result == [pytest.approx(0.4)]
    assert samplers.GpuSampler(["/no/such/nvidia-smi"]).stop() is None
    assert samplers.nvidia_smi_command(torch.device("cpu")) is None
    # on CUDA the card is named by its UUID (as torch prints it, without nvidia-smi's prefix)
    monkeypatch.setattr(samplers.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(uuid="5a1e-77"))  # fmt: skip
    command = samplers.nvidia_smi_command(torch.device("cuda", 1))
    assert command[0] == "nvidia-smi" and command[-2:] == ["-i", "GPU-5a1e-77"]
    assert "--query-gpu=utilization.gpu" in command


def test_cpu_jiffies_reads_the_machines_line_of_proc_stat(tmp_path, monkeypatch):
    from fpncli.run import samplers

    stat = tmp_path / "stat"
    #             user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 5 20 700 30 1 2 40 9 0\ncpu0 1 1 1 1 1 1 1 1 1 1\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
        stat if path == "/proc/stat" else path, *a, **k))  # fmt: skip
    assert samplers.cpu_jiffies() == (128, 128 + 700 + 30 + 40)
    stat.write_text("cpu  garbage\n")
    assert samplers.cpu_jiffies() is None
    stat.unlink()
    assert samplers.cpu_jiffies() is None


def test_a_failing_end_to_end_row_leaves_no_cpu_sampler_running(monkeypatch, tmp_path):
    """A row whose run raises (a full disk, a worker that does not start) reports its error,
    and its CPU sampler's thread ends with it: the next rows are not measured beside it."""
    import threading

    import fpncli
    from fpncli.run import bench

    real, calls = bench.run_jobs, []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return real(*args, **kwargs)  # the untimed warm-up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bench, "run_jobs", full_disk)
    model = fpncli.load_backbone("random")
    row = bench.bench_end_to_end(model, height=64, width=64, images=2, batch_size=1,
                                 precision="fp32", outputs="heatmaps", work_dir=tmp_path,
                                 measure_disk=False)  # fmt: skip
    assert row.error is not None and "No space left" in row.error
    assert [t for t in threading.enumerate() if t.name == "fpncli-cpu-sampler"] == []


def test_an_end_to_end_row_is_kept_when_the_disk_probe_cannot_run(monkeypatch, tmp_path):
    """A small TMPDIR: the row's run fitted, the disk probe after it did not. The row is kept,
    without the disk's rate, and a note says why (the row was thrown away, exit 1)."""
    import errno

    from fpncli.run import bench

    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bench, "disk_write_speed", full)
    out = tmp_path / "bench.json"
    args = ["bench", "--device", "cpu", "--sizes", "64x64", "--e2e-only", "--seconds", "0",
            "--images", "2", "--outputs", "npy", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())["rows"]
    assert row["error"] is None and row["images"] == 2 and row["images_per_s"] > 0
    assert row["disk_mb_per_s"] is None and "of_disk_rate" not in row["ratios"]
    assert "No space left on device" in row["note"] and "disk-speed probe" in row["note"]
    assert "note: end-to-end npy 64x64 batch 1 fp32: disk-speed probe could not run" in (
        result.output
    )


def test_the_disk_probe_takes_at_most_a_quarter_of_the_free_space(monkeypatch, tmp_path):
    import errno

    from fpncli.run import rates

    mib = 2**20
    assert rates.disk_probe_mb(100 * 2**30) == rates.DISK_PROBE_MB == 512
    assert rates.disk_probe_mb(2048 * mib) == 512
    assert rates.disk_probe_mb(1000 * mib) == 248  # 250 MiB, in whole 8 MiB writes
    assert rates.disk_probe_mb(60 * mib) == 8
    assert rates.disk_probe_mb(31 * mib) == 0
    assert rates.disk_write_speed(tmp_path, 8) > 0 and list(tmp_path.iterdir()) == []
    # by default sized from the folder's free space: too little is ENOSPC before any write
    monkeypatch.setattr(rates.shutil, "disk_usage", lambda folder: SimpleNamespace(free=20 * mib))
    with pytest.raises(OSError, match="too little free space") as info:
        rates.disk_write_speed(tmp_path)
    assert info.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []
