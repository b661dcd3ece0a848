"""The measuring scripts in ``scripts/`` refuse what they cannot run in one line, before any
work, never with a traceback."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def run_script(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)  # fmt: skip


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("gil_held.py", ["--seconds", "0"], "--seconds 0.0: give a number of seconds above 0"),
        ("gil_held.py", ["--seconds", "-1"], "--seconds -1.0: give a number of seconds above 0"),
        ("gil_held.py", ["--loop", "files", "--work", "/no/such/folder"],
         "--work /no/such/folder: no such folder"),
        ("memory_flatness.py", ["--small", "2", "--large", "2"],
         "need 1 <= --small < --large, got 2 and 2"),
        ("bench_vs_detectron2.py", ["--repeats", "0"], "--repeats 0: give 1 or more"),
    ],
)  # fmt: skip
def test_a_script_refuses_bad_arguments_in_one_line(name, args, message):
    """gil_held divided by zero calls, memory_flatness made its one folder twice
    (FileExistsError), bench_vs_detectron2 took the median of no runs."""
    result = run_script(name, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_gil_loop_over_files_runs_again_in_the_same_work_folder(tmp_path):
    """measure() runs each loop twice over one --work (with py-spy): the second ``files`` loop
    found the first one's folders (FileExistsError)."""
    for _ in range(2):
        result = run_script("gil_held.py", "--loop", "files", "--work", str(tmp_path),
                            "--seconds", "0.05")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("calls ")


def test_the_gil_script_times_one_call_at_least_however_short_its_seconds(tmp_path):
    """--seconds 1e-9 passed the check, and a loop over before its first call made none:
    _ms_per_call divided by zero calls (ZeroDivisionError). Each loop makes one call at least,
    and its time is printed to the microsecond (one 30 us call had read 0.000 s). Without
    py-spy (PATH holds none here): each loop's time per image only."""
    env = {**os.environ, "PATH": str(tmp_path)}  # no py-spy; the loops run sys.executable
    result = subprocess.run([sys.executable, str(SCRIPTS / "gil_held.py"), "--seconds", "1e-9"],
                            capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("no py-spy on PATH") and len(lines) == 5, result.stdout
    for line, what in zip(lines[1:], ("decode", "decode-defer", "write", "files"), strict=True):
        name, ms = line.split()[:2]
        assert name == what and float(ms) >= 0, line
    result = run_script("gil_held.py", "--loop", "files", "--work", str(tmp_path),
                        "--seconds", "1e-9")  # fmt: skip
    calls, seconds = result.stdout.split()[1::2]
    assert calls == "1" and float(seconds) > 0, result.stdout


@pytest.mark.skipif(importlib.util.find_spec("detectron2") is not None,
                    reason="Detectron2 imports here")  # fmt: skip
@pytest.mark.parametrize("name, args", [("bench_vs_detectron2.py", []),
                                        ("parity.py", ["samples/chelsea.png"])])  # fmt: skip
def test_a_detectron2_script_without_detectron2_says_what_it_needs(name, args):
    result = run_script(name, *args, cwd=SCRIPTS.parent)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"{name} needs Detectron2 importable (No module named 'detectron2'): put its source on "
        f"PYTHONPATH, e.g. PYTHONPATH=/path/to/detectron2 python scripts/{name} ..."
    )


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("timeout")),
                    reason="needs bash and timeout")  # fmt: skip
def test_the_gpu_check_without_cuda_stops_after_its_preflight(tmp_path):
    """Without CUDA (hidden here) and without DRY_RUN, the preflight's failure ends the check:
    the report is written, exit 1. It ran every step on the CPU until its budget was spent,
    exit 0, each failure line saying "(124: out of time)" whatever the code."""
    out = tmp_path / "gc"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "ONLY": "host",
           "BUDGET_S": "60", "DRY_RUN": "0"}  # fmt: skip
    result = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), str(out)], env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert [p["phase"] for p in report["phases"]] == ["preflight"]
    assert report["failures"] == [
        "!! preflight exited with 1",
        "!! preflight failed: no step run (DRY_RUN=1 runs them on the CPU)",
    ]
    assert "CUDA is not available" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.json", "gpu_check.txt", "steps.tar.gz"
    ]  # fmt: skip


def gpu_check(out: Path, **env: str) -> subprocess.CompletedProcess:
    """gpu_check.sh without CUDA: its preflight fails within seconds, no step runs."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "ONLY": "host",
           "BUDGET_S": "60", "DRY_RUN": "0", **env}  # fmt: skip
    return subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("timeout")),
                    reason="needs bash and timeout")  # fmt: skip
@pytest.mark.parametrize("folder", ["scratch", "steps"])
def test_the_gpu_check_refuses_an_out_whose_folder_it_did_not_make(tmp_path, folder):
    """OUT/scratch and OUT/steps are the script's working folders: it removed them first thing
    (and again at the end), whatever they held, so a user's OUT/scratch/mydata.txt was gone."""
    out = tmp_path / "gc"
    (out / folder).mkdir(parents=True)
    (out / folder / "mydata.txt").write_text("precious")
    result = gpu_check(out)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"gpu_check.sh: {out / folder} was not made by this script (it has no "
        ".made-by-gpu_check): give another OUT_DIR, or move it away"
    )
    assert (out / folder / "mydata.txt").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == [folder]


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("timeout")),
                    reason="needs bash and timeout")  # fmt: skip
def test_the_gpu_check_runs_again_over_its_own_scratch(tmp_path):
    """A scratch folder the script made (KEEP_SCRATCH=1, or a killed run) is its own to remove:
    the next run into the same OUT goes ahead."""
    import tarfile

    out = tmp_path / "gc"
    assert gpu_check(out, KEEP_SCRATCH="1").returncode == 1
    assert (out / "scratch").is_dir()
    result = gpu_check(out)
    assert result.returncode == 1, result.stdout + result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.json", "gpu_check.txt", "steps.tar.gz"
    ]  # fmt: skip
    with tarfile.open(out / "steps.tar.gz") as tar:
        assert "steps/preflight.log" in tar.getnames()
        assert not [n for n in tar.getnames() if "made-by" in n]


def fake_checkout(tmp_path: Path) -> Path:
    """A checkout holding readme_report.sh, one small sample and the user's own fpn_out/."""
    from PIL import Image

    repo = tmp_path / "repo"
    for folder in ("scripts", "samples", "docs", "fpn_out"):
        (repo / folder).mkdir(parents=True)
    shutil.copy(SCRIPTS / "readme_report.sh", repo / "scripts")
    Image.new("RGB", (48, 32), (200, 120, 40)).save(repo / "samples" / "tiny.png")
    (repo / "fpn_out" / "mine.txt").write_text("the user's extraction")
    return repo


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_the_readme_report_without_chromium_says_so_before_any_work(tmp_path):
    """Without chromium the script extracted into fpn_out/ first, then ended with exit 127 and
    no word (bash's "command not found" went to /dev/null with chromium's noise)."""
    repo = fake_checkout(tmp_path)
    bin_dir = tmp_path / "bin"  # PATH: dirname alone, no chromium
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    env = {**os.environ, "PATH": str(bin_dir), "PYTHON": sys.executable}
    result = subprocess.run([shutil.which("bash"), str(repo / "scripts" / "readme_report.sh")],
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (
        "readme_report.sh needs chromium on PATH for the screenshot (Debian: apt-get install "
        "chromium)"
    )
    assert [p.name for p in (repo / "fpn_out").iterdir()] == ["mine.txt"]


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_the_readme_report_leaves_the_checkouts_fpn_out_alone(tmp_path):
    """It extracted into the checkout's fpn_out/ (the CLI's default output, perhaps the user's
    own extraction) and wrote its report.html there. Now: a temporary folder's fpn_out/ (the
    report's summary still reads "fpn_out"), removed at the end; the screenshot goes to docs/."""
    repo = fake_checkout(tmp_path)
    (tmp_path / "tmp").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    chromium = bin_dir / "chromium"  # a stand-in: keeps the page, draws a page-like PNG
    chromium.write_text(f"""#!{sys.executable}
import shutil, sys
from PIL import Image
shot = next(a for a in sys.argv if a.startswith("--screenshot="))[len("--screenshot="):]
shutil.copy(sys.argv[-1].removeprefix("file://"), {str(tmp_path / "page.html")!r})
Image.new("RGB", (1000, 1600), "black").save(shot)
""")  # fmt: skip
    chromium.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": sys.executable,
           "TMPDIR": str(tmp_path / "tmp"), "PYTHONPATH": str(SCRIPTS.parent)}  # fmt: skip
    result = subprocess.run(["bash", str(repo / "scripts" / "readme_report.sh")], env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in (repo / "fpn_out").iterdir()] == ["mine.txt"]
    assert "<th>folder</th><td>fpn_out</td>" in (tmp_path / "page.html").read_text()
    shot = repo / "docs" / "report_samples_random.png"
    assert f"wrote {shot} (800x" in result.stdout and shot.is_file()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_an_interrupted_engines_bench_removes_its_work_folder(tmp_path):
    """bench_engines.py never removed its temporary folder (54 MB at --count 4, about 2.7 GB at
    its default 200), not even at the end of a run; now it does, however the run ends."""
    import signal
    import time

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "bench_engines.py"), "--count", "50"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not list(tmp_path.glob("fpncli-bench-engines-*/in/*.jpg")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # Ctrl-C while it generates images or runs locally
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode != 0
    assert list(tmp_path.glob("fpncli-bench-engines-*")) == []


def test_the_report_speed_script_builds_shards_the_index_accepts(tmp_path):
    """--format wds (its documented usage) wrote shard-000000.tar, a name the index refuses
    ("is not a shard name"): write_report found nothing and the script ended in a traceback."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(SCRIPTS.parent)}
    result = subprocess.run([sys.executable, str(SCRIPTS / "report_speed.py"), "--images", "2",
                             "--format", "wds", "--min-size", "32"], env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "report for 2 images (wds, p2 [1, 256, 8, 16]):" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_report_speed_script_says_in_one_line_that_extract_failed(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, str(SCRIPTS / "report_speed.py"), "--min-size", "0"],
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "report_speed.py: fpncli extract of the photo failed (exit 2)"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["/nonexistent.png"], "bf16_error.py: no such image file: /nonexistent.png"),
    # the default images are the checkout's samples, found from any folder: the weights fail
    (["--weights", "nope"], "bf16_error.py: unknown weights 'nope': not a file, nor one of "),
])  # fmt: skip
def test_the_bf16_script_refuses_in_one_line_from_any_folder(tmp_path, args, message):
    result = run_script("bf16_error.py", *args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
