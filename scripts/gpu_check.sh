#!/usr/bin/env bash
# GPU check for fpncli: the GPU tests, model-only rows and end-to-end rows, as one table + JSON.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          (default OUT_DIR: ${OUT:-gpu_check_out})
#   DRY_RUN=1 bash scripts/gpu_check.sh OUT_DIR  (the same steps on the CPU, tiny sizes: checks
#                                                 the script itself, its time limits and table)
#
# Ends within about 7.5 minutes (BUDGET_S=450 seconds of steps, each with its own time limit cut
# to what is left; a step that fails or runs out of time is reported, and the others and the
# final table still run); on one H100 with 16 cores its steps took about 470 s in all
# (2026-11-26, torch 2.11, added up over three calls); on one H200, 2026-11-27, tests, model,
# e2e, procs (2-4), e2e_npy, host and defaults took 318 s (tests 91, procs 84): the rows after
# compile_b16 are the ones that BUDGET_S may cut. Needs no network. Everything is written under
# OUT_DIR: the scratch (temporary JPEGs and outputs, compile caches) in OUT_DIR/scratch, removed
# at the end (KEEP_SCRATCH=1 keeps it), and then OUT_DIR holds three files: gpu_check.txt (the
# table, the phase timings and the failures), gpu_check.json (every row, the machine, the
# phases) and steps.tar.gz (each step's log and JSON). An OUT_DIR whose steps/ or scratch/ this
# script did not make is refused, untouched (exit 2). The table is printed too. Where the
# preflight fails (no CUDA, a package missing) no step runs: the report says so and the exit
# code is 1, within seconds (DRY_RUN=1 runs the steps anyway); else it is 0, failed steps or not.
#
# Phases, in this order (the end-to-end heatmaps rows, the figure still short of its goal, come
# early; the later rows get the time that is left):
#   tests         pytest tests/test_gpu.py: the pipeline on cuda:0 (cuda:1) == the CPU, bf16/fp16
#                 bounds, --gpus workers, OOM splitting under a memory cap, streams and pinned
#                 buffers under a busy GPU, no host sync while a batch is queued (the CPU-side
#                 device tests, tests/test_device.py, run in CI)
#   model         model-only, 800x1344: fp32/bf16/fp16 eager at batch 1, 8, 16 (max rel. error
#                 vs fp32, % of the card's bf16 peak, peak GPU memory)
#   e2e           a generated folder of 1080p JPEGs (1080x1920 -> 756x1344, padded 768x1344),
#                 bf16 batch 16, heatmaps only, in one process (its stage split), with the
#                 decode rate of all cores (of_min_model_decode: the higher of one thread per
#                 core in one process, decode_img_s, and one process per core,
#                 decode_procs_img_s, a few seconds more per heatmaps row); cpu_busy: the
#                 machine's busy share during the row, gpu_busy: the GPU's (nvidia-smi's
#                 utilization, the share of time a kernel ran; every end-to-end row has them)
#   procs         the heatmaps row again in 2, 3, 4 and 6 worker processes sharing the GPU
#                 (extract --processes N; each warmed up, then started together): one
#                 process's Python threads (decoding, writing, feeding take turns at Python's
#                 lock) hold the GPU back. extract's default for a large folder without .npy
#                 is 4 with 16 cores (run/multi.py: auto_processes); 6 says whether more
#                 helps, cpu_busy whether the cores are what bounds them, and gpu_busy
#                 whether the card is (N processes time-share it, their kernels in turn)
#   profile       scripts/e2e_profile.py: the heatmaps row in one process once more, with each
#                 thread group's CPU ms per image (the feeding thread, decoders, writers) and
#                 where their time goes (an in-process stack sampler); then with OpenCV's
#                 pool of a thread per core (cvN), which runs leave out since session 21: the
#                 CPU its spinning threads cost, under "other (python)"
#   compile_b16   --compile (torch.compile, fixed shapes), bf16 batch 16: the >= 1,000 img/s row
#                 (a cold compile can take its whole limit: the rows after it may then be cut,
#                 and a second call with ONLY=... runs them)
#   e2e_npy       the heatmaps row's inputs with all levels as fp16 .npy (44 MB an image: fewer
#                 images) and the disk's write speed (of_disk_rate)
#   host          scripts/gil_held.py: one thread's decoding and heatmap writing per image on
#                 this CPU, and the filesystem's part of the writing ("files": a folder and six
#                 new files; 0.4-2.9 ms of the 3.9-8.3 ms of "write" across runs on a Zen 4 VM's
#                 ext4) (with py-spy on PATH also the share that holds Python's lock)
#   defaults      the defaults end to end (fp32, batch 8, every output), in one process
#                 (extract's default for them: with .npy written, 3 processes measured slower)
#   vs_detectron2 only with D2_DIR (below): fp32 batch 16 800x1344, fpncli against Detectron2's
#                 own model on the same card (scripts/bench_vs_detectron2.py --device cuda; the
#                 issue's stretch: >= 3x), Detectron2 with TF32 convolutions (torch's default)
#                 and without
#   compile_bf16  --compile bf16 at batch 8 and 1
#   compile_other --compile fp16 and fp32 at batch 16
#   unfused       bf16/fp16 eager at batch 8 and 16 with FPNCLI_CUDNN_FUSION=0 (variant
#                 "cudnn-off"): the same rows without cuDNN's fused conv+bias+ReLU kernels
#   compile_plain compile_b16 with FPNCLI_CUDNN_FUSION=eager (variant "comp-plain"): compiled
#                 over the plain ops, the A/B of compiling over cuDNN's fused ops (the default;
#                 both A/Bs were settled on an H100 and an H200, 2026-11-26)
#
# ONLY=step,step: run only these steps (and preflight), e.g. ONLY=vs_detectron2,compile_b16 for a
# second, shorter call; TESTS=pytest-node-ids: the tests step runs only these.
#
# D2_DIR=DIR: Detectron2 is never installed or committed here; to run vs_detectron2, carry its
# Python source and its dependencies' wheels (for the GPU machine's Python: 3.12 on the lent
# image; about 12 MB; torchvision's version is the one made for that torch: 0.26.0 for 2.11):
#     mkdir -p DIR/src && cp -r /path/to/detectron2-source/detectron2 DIR/src/
#     pip wheel --no-deps -w DIR/wheels fvcore iopath yacs tabulate termcolor portalocker \
#         pyyaml tqdm omegaconf hydra-core antlr4-python3-runtime==4.9.3 cloudpickle \
#         pycocotools torchvision==0.26.0
# The step unpacks the wheels into the scratch folder (no pip needed there).
#
# Python: $PYTHON, else python3, else python. What it must import: torch (with CUDA), numpy,
# opencv-python(-headless), matplotlib, click, pillow, pytest (and isal, below); fpncli runs from
# this checkout (PYTHONPATH), nothing to install. A preflight step says what is missing. The
# --compile rows also need a C compiler and Python's headers (Triton builds its launcher with
# them: gcc and python3-dev on Debian/Ubuntu); without them those rows fail with the reason and
# the others run.
#  - The lent H100/H200 image (python3 3.12, torch 2.11+cu130) has all of them but isal (the
#    PNG deflate; without it encode_png uses zlib, which a preflight warning names). Carry its
#    wheel in the git-ignored folder .whl (the device tool's carry: [".whl"]); where isal does
#    not import, this script installs .whl/isal-*.whl into its scratch folder and uses it:
#        pip download --no-deps --only-binary=:all: --python-version 3.12 \
#            --platform manylinux2014_x86_64 -d .whl isal
#  - A machine with only torch: carry these wheels, made where there is network with the same
#    Python version and platform:
#        pip download -d wheels numpy opencv-python-headless matplotlib contourpy cycler \
#            fonttools kiwisolver packaging pyparsing python-dateutil six tzdata click pillow \
#            isal pytest iniconfig pluggy pygments exceptiongroup tomli
#    (exceptiongroup and tomli: Python 3.10 only; six: python-dateutil 2.x, tzdata: 4.x), then
#        pip install --no-index --find-links wheels numpy opencv-python-headless matplotlib \
#            click pillow isal pytest
#    (opencv-python-headless provides the same cv2 module as opencv-python, without GUI libs).
#  - A machine without torch: add torch's CUDA wheel and its dependencies to the same folder
#    (`pip download torch --index-url https://download.pytorch.org/whl/cu128 -d wheels` brings
#    the nvidia-* wheels, triton, filelock, fsspec, jinja2, markupsafe, mpmath, networkx,
#    setuptools, sympy and typing-extensions; about 3 GB) and install torch the same way.
set -uo pipefail

OUT_DIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif command -v python3 >/dev/null; then PY=python3
else PY=python; fi
DRY_RUN="${DRY_RUN:-0}"
STEPS="$OUT_DIR/steps"
SCRATCH="$OUT_DIR/scratch"
# Only folders this script made are removed (a killed run's): each holds MARK. OUT_DIR's own
# steps/ or scratch/ (the user's data) is refused before anything is written or removed.
MARK=.made-by-gpu_check
for dir in "$STEPS" "$SCRATCH"; do
    if [ -L "$dir" ] || { [ -e "$dir" ] && [ ! -f "$dir/$MARK" ]; }; then
        echo "gpu_check.sh: $dir was not made by this script (it has no $MARK): give another" \
            "OUT_DIR, or move it away" >&2
        exit 2
    fi
done
rm -rf "$STEPS" "$SCRATCH" "$OUT_DIR/steps.tar.gz" "$OUT_DIR"/gpu_check.{txt,json}
mkdir -p "$STEPS" "$SCRATCH/tmp" "$SCRATCH/home" "$SCRATCH/mpl"
touch "$STEPS/$MARK" "$SCRATCH/$MARK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 OMP_WAIT_POLICY=PASSIVE
export TMPDIR="$SCRATCH/tmp" FPNCLI_HOME="$SCRATCH/home" MPLCONFIGDIR="$SCRATCH/mpl"
export TORCHINDUCTOR_CACHE_DIR="$SCRATCH/inductor" TRITON_CACHE_DIR="$SCRATCH/triton"
CORES=$(nproc)
WORKERS=$(( CORES > 4 ? CORES - 2 : 2 ))
WRITERS=$(( CORES > 8 ? 8 : 2 ))

if [ "$DRY_RUN" = 1 ]; then  # the flow on the CPU: tiny rows, short limits
    DEV=cpu SIZE=64x96 E2E=64x96 SRC=96x128 BATCHES=1,2 BIG=2 MID=1 SMALL=1 PRECS=fp32
    IMAGES=4 DEFAULT_IMAGES=3 ROW_SECONDS=0.05 TESTS="${TESTS:-tests/test_gpu.py}"
    COMPILE_PRECS=fp32
    UNFUSED_PRECS=fp32 PROCS=2 T_PROFILE=60 PROFILE_IMAGES=4
    T_TESTS=60 T_MODEL=60 T_E2E=60 T_DEFAULTS=60 T_PROCS=60 T_COMPILE=45 T_REST=45 LOW=fp32
    T_D2=60 DEFAULT_PROCS=1,2
    PROC_SECONDS=0.05 NPY_IMAGES=3 PROC_IMAGES=4 T_NPY=60
    BUDGET_S="${BUDGET_S:-300}" DEFAULT_SIZE=64x96 HOST_SECONDS=0.5
else
    DEV=auto SIZE=800x1344 E2E=768x1344 SRC=1080x1920 BATCHES=1,8,16 BIG=16 MID=8 SMALL=1
    PRECS=fp32,bf16,fp16 IMAGES=320 DEFAULT_IMAGES=64 ROW_SECONDS=2 COMPILE_PRECS=fp16,fp32
    TESTS="${TESTS:-tests/test_gpu.py}" UNFUSED_PRECS=bf16,fp16 PROCS=2,3,4,6 T_PROFILE=90
    PROFILE_IMAGES=600
    T_TESTS=180 T_MODEL=150 T_E2E=90 T_DEFAULTS=100 T_PROCS=150 T_COMPILE=150 T_REST=600 LOW=bf16
    T_D2=120 DEFAULT_PROCS=1
    PROC_SECONDS=3 NPY_IMAGES=96 PROC_IMAGES=1200 T_NPY=60
    DEFAULT_SIZE=800x1333 HOST_SECONDS=3
fi
START=$(date +%s)
DEADLINE=$(( START + ${BUDGET_S:-450} ))

step() {  # step NAME LIMIT COMMAND...: run with a time limit cut to what is left; never stops
    local name=$1 limit=$2 now left t0 rc
    shift 2
    if [ -n "${ONLY:-}" ] && [ "$name" != preflight ] && [[ ",$ONLY," != *",$name,"* ]]; then
        return  # not among the steps ONLY names
    fi
    now=$(date +%s)
    left=$(( DEADLINE - now - 10 ))  # 10 s: the kill-after grace of a step that overruns
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 15 ]; then
        echo "!! $name skipped: no time left" | tee -a "$STEPS/failures.txt"
        printf '%s\t%s\t%s\n' "$name" 0 skipped >> "$STEPS/phases.tsv"
        return
    fi
    echo "== $name (limit ${limit}s, $(( now - START ))s elapsed)"
    t0=$(date +%s)
    timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$STEPS/$name.log"
    rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\n' "$name" $(( $(date +%s) - t0 )) "$rc" >> "$STEPS/phases.tsv"
    case $rc in  # timeout's codes: 124 it stopped the step, 137 it (or the OOM killer) killed it
        0) ;;
        124) echo "!! $name exited with 124 (out of time)" | tee -a "$STEPS/failures.txt" ;;
        137) echo "!! $name exited with 137 (killed: out of time, or out of memory)" \
            | tee -a "$STEPS/failures.txt" ;;
        *) echo "!! $name exited with $rc" | tee -a "$STEPS/failures.txt" ;;
    esac
    return "$rc"
}
bench() {  # [VAR=value] bench NAME LIMIT ARGS...: fpncli bench writing STEPS/NAME.json after
           # every row (bash passes a VAR=value prefix to the step's commands)
    local name=$1 limit=$2
    shift 2
    step "$name" "$limit" "$PY" -m fpncli bench --device "$DEV" --json "$STEPS/$name.json" "$@"
}

# isal (fpncli's PNG deflate) from a carried wheel, where this Python lacks it (header above;
# pip picks the one made for this Python among them)
if ! "$PY" -c "import isal" 2>/dev/null && compgen -G ".whl/isal-*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --find-links .whl --target "$SCRATCH/site" isal \
        && export PYTHONPATH="$PYTHONPATH:$SCRATCH/site" && echo "isal from .whl: $SCRATCH/site"
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm --format=csv \
        > "$STEPS/nvidia-smi.csv" 2>&1
else
    echo "no nvidia-smi" > "$STEPS/nvidia-smi.csv"
fi
cat "$STEPS/nvidia-smi.csv"
# the host CPU: whether its cores are SMT siblings (16 "cores" may be 8 that run two threads
# each, and a busy sibling slows a thread down), which the end-to-end rows' cpu_busy needs
{ lscpu 2>/dev/null | grep -E '^(Model name|CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)|L3 cache):' \
    | sed -E 's/:[[:space:]]+/: /' | paste -sd ';' -; } > "$STEPS/cpu.txt" || true
cat "$STEPS/cpu.txt"
step preflight 60 "$PY" -c "
import importlib.util, sys
missing = [m for m in ('torch', 'numpy', 'cv2', 'matplotlib', 'click', 'PIL', 'pytest')
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit('missing Python packages: ' + ', '.join(missing) + ' (see the wheels listed in '
             'scripts/gpu_check.sh)')
import torch
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'cudnn', torch.backends.cudnn.version(), 'gpus', torch.cuda.device_count())
if not torch.cuda.is_available() and '$DRY_RUN' != '1':
    sys.exit('CUDA is not available to torch here')
import shutil, sysconfig, os
compiler = next((c for c in ('cc', 'gcc', 'clang') if shutil.which(c)), None)
header = os.path.join(sysconfig.get_paths()['include'], 'Python.h')
if importlib.util.find_spec('isal') is None:
    print('warning: no isal (a dependency of fpncli): PNGs are deflated with zlib, several times '
          'slower (carry its wheel: see the header of scripts/gpu_check.sh)')
if compiler is None or not os.path.isfile(header):
    print('warning: --compile rows will fail:', 'no C compiler' if compiler is None else
          'no Python.h (python3-dev)', '(Triton builds its launcher with them)')
"
PREFLIGHT=$?

run_steps() {  # every step after the preflight, in order
    step tests "$T_TESTS" "$PY" -m pytest -q -p no:cacheprovider --basetemp "$SCRATCH/pytest" \
        -rs $TESTS
    bench model "$T_MODEL" --model-only --sizes "$SIZE" --batch-sizes "$BATCHES" \
        --precisions "$PRECS" --seconds "$ROW_SECONDS"
    # (with its model-only row at the same size, batch and precision: the of_model ratios)
    bench e2e "$T_E2E" --sizes "$E2E" --batch-sizes "$BIG" --precisions "$LOW" \
        --outputs heatmaps --source-size "$SRC" --images "$IMAGES" --seconds "$ROW_SECONDS" \
        --workers "$WORKERS" --writers "$WRITERS" --processes 1
    # (enough images that one run fills the seconds: each rerun starts and warms the workers again)
    bench procs "$T_PROCS" --e2e-only --sizes "$E2E" --batch-sizes "$BIG" --precisions "$LOW" \
        --outputs heatmaps --source-size "$SRC" --images "$PROC_IMAGES" --seconds "$PROC_SECONDS" \
        --workers "$WORKERS" --writers "$WRITERS" --processes "$PROCS"
    step profile "$T_PROFILE" "$PY" scripts/e2e_profile.py --device "$DEV" \
        --images "$PROFILE_IMAGES" --size "$E2E" --source-size "$SRC" --batch-size "$BIG" \
        --precision "$LOW" --top 6 --variants "base,cv$CORES"
    bench compile_b16 "$T_COMPILE" --compile-only --sizes "$SIZE" --batch-sizes "$BIG" \
        --precisions "$LOW" --seconds "$ROW_SECONDS"
    bench e2e_npy "$T_NPY" --e2e-only --sizes "$E2E" --batch-sizes "$BIG" --precisions "$LOW" \
        --outputs npy16 --source-size "$SRC" --images "$NPY_IMAGES" --seconds "$ROW_SECONDS" \
        --workers "$WORKERS" --writers "$WRITERS" --processes 1
    # one thread's decoding and heatmap writing per image on this machine's cores (on a 2-core
    # Zen 4 EPYC: decode-defer 5.6-7.4 ms, write 5.1-8.8 ms): whether its CPU bounds the e2e rows
    step host 40 "$PY" scripts/gil_held.py --seconds "$HOST_SECONDS"
    bench defaults "$T_DEFAULTS" --e2e-only --sizes "$DEFAULT_SIZE" --batch-sizes "$MID" \
        --precisions fp32 --outputs all --source-size "$SRC" --images "$DEFAULT_IMAGES" \
        --workers "$WORKERS" --writers "$WRITERS" --processes "$DEFAULT_PROCS"
    if [ -n "${D2_DIR:-}" ]; then
        D2_SITE="$SCRATCH/d2site"
        if [ "$DRY_RUN" = 1 ]; then D2_ARGS="--device cpu --height 64 --width 96 --repeats 1"
        else D2_ARGS="--device cuda --height 800 --width 1344 --batch 16 --repeats 3 --seconds 2"
        fi
        "$PY" -c "import glob, sys, zipfile
[zipfile.ZipFile(w).extractall(sys.argv[2]) for w in glob.glob(sys.argv[1] + '/wheels/*.whl')]" \
            "$D2_DIR" "$D2_SITE"
        PYTHONPATH="$PYTHONPATH:$D2_SITE:$(cd "$D2_DIR" && pwd)/src:$PWD/scripts" \
            step vs_detectron2 "$T_D2" "$PY" scripts/bench_vs_detectron2.py --images 0 $D2_ARGS
    fi
    bench compile_bf16 "$T_REST" --compile-only --sizes "$SIZE" --batch-sizes "$MID,$SMALL" \
        --precisions "$LOW" --seconds "$ROW_SECONDS"
    bench compile_other "$T_REST" --compile-only --sizes "$SIZE" --batch-sizes "$BIG" \
        --precisions "$COMPILE_PRECS" --seconds "$ROW_SECONDS"
    FPNCLI_CUDNN_FUSION=0 bench unfused 60 --model-only --sizes "$SIZE" --batch-sizes "$MID,$BIG" \
        --precisions "$UNFUSED_PRECS" --seconds "$ROW_SECONDS"
    FPNCLI_CUDNN_FUSION=eager bench compile_plain "$T_COMPILE" --compile-only --sizes "$SIZE" \
        --batch-sizes "$BIG" --precisions "$LOW" --seconds "$ROW_SECONDS"
}

# Without CUDA (or a package) no step could measure anything: the rows would run on the CPU at
# 800x1344 until the budget was spent. DRY_RUN=1 runs them anyway (it checks the script itself).
if [ "$PREFLIGHT" -eq 0 ] || [ "$DRY_RUN" = 1 ]; then
    run_steps
else
    echo "!! preflight failed: no step run (DRY_RUN=1 runs them on the CPU)" \
        | tee -a "$STEPS/failures.txt"
fi

# The table and the JSON: whatever steps wrote, even when some failed (stdlib only here, so a
# broken install still gets its phases and failures reported).
"$PY" - "$OUT_DIR" "$DRY_RUN" "$(( $(date +%s) - START ))" "$SIZE" "$BIG" "$LOW" <<'EOF'
import json
import re
import sys
from pathlib import Path

out, dry_run, elapsed = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
size, big, low = sys.argv[4], int(sys.argv[5]), sys.argv[6]
steps = out / "steps"
names = ("model", "e2e", "procs", "compile_b16", "e2e_npy", "defaults", "compile_bf16",
         "compile_other", "unfused", "compile_plain")
rows, skipped, info = [], [], {}
for name in names:
    path = steps / f"{name}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            skipped.append({"row": name, "reason": f"unreadable JSON: {e}"})
            continue
        info.update({k: v for k, v in data.items() if k not in ("rows", "skipped", "complete")})
        rows += data["rows"]
        skipped += [{**s, "step": name} for s in data["skipped"]]
        if not data.get("complete", True):
            skipped.append({"row": name, "reason": "interrupted: the rows before are kept"})
phases = []
if (steps / "phases.tsv").is_file():
    for line in (steps / "phases.tsv").read_text().splitlines():
        name, seconds, status = line.split("\t")
        phases.append({"phase": name, "seconds": int(seconds), "exit": status})
failures = (steps / "failures.txt").read_text() if (steps / "failures.txt").is_file() else ""
profile_log = steps / "profile.log"
# only the lines each script starts with its own words: not a traceback's source lines (indented,
# they name the same figures), which a step that failed on a broken install prints
profile = [ln for ln in profile_log.read_text().splitlines()
           if ln.startswith(("===", "timed run", "this process", "error:"))
           or re.match(r"[0-9.]+ img/s, ms/img", ln)
           or ln.endswith("CPU ms/img") and ln.startswith("  ")] \
    if profile_log.is_file() else []  # fmt: skip
host_log = steps / "host.log"  # gil_held.py's lines start with the loop's name
loops = ("decode ", "decode-defer ", "write ", "files ")
host = [ln for ln in host_log.read_text().splitlines()
        if ln.startswith(loops) and "ms per image" in ln] if host_log.is_file() else []  # fmt: skip
d2_log = steps / "vs_detectron2.log"  # bench_vs_detectron2.py's lines with a speed-up
versus = [ln for ln in d2_log.read_text().splitlines()
          if ln.startswith(("backbone forward ", "forward on ")) and "speed-up" in ln] \
    if d2_log.is_file() else []  # fmt: skip
try:
    from fpncli.run.bench import BenchRow
    from fpncli.run.bench_table import add_ratios_across, format_table

    bench_rows = [BenchRow(**r) for r in rows]
    add_ratios_across(bench_rows)  # the --e2e-only steps' rows: the e2e step's model rows
    rows = [r.__dict__ for r in bench_rows]
    table = format_table(bench_rows)

    def best(value, kind, variant, at_size=False):  # the best figure among the matching rows
        found = [value(r) for r in bench_rows if r.error is None and r.kind == kind
                 and r.variant.startswith(variant) and r.precision == low and r.batch_size == big
                 and (not at_size or f"{r.height}x{r.width}" == size)]  # fmt: skip
        return max((v for v in found if v is not None), default=None)

    rate, ratio = (lambda r: r.images_per_s), (lambda name: lambda r: r.ratios.get(name))
    goals = [  # issue 9's figures (600 and 1,000 images/s: bf16, batch 16, 800x1344, one H100)
        (f"model {low} batch {big} {size} eager, images/s", 600,
         best(rate, "model", "eager", True)),
        (f"model {low} batch {big} {size} --compile, images/s", 1000,
         best(rate, "model", "compile", True)),
        ("heatmaps end to end (best of 1-6 processes), of min(model, decode)", 0.70,
         best(ratio("of_min_model_decode"), "end-to-end", "heatmaps")),
        ("all levels fp16 .npy end to end, of the disk's rate", 0.80,
         best(ratio("of_disk_rate"), "end-to-end", "npy16")),
    ]  # fmt: skip
    targets = [f"{'-' if got is None else 'yes' if got >= goal else 'NO':>4}  {what}: "
               f"{'unmeasured' if got is None else format(got, '.3g')} (goal >= {goal:g})"
               for what, goal, got in goals]  # fmt: skip
except Exception as e:  # noqa: BLE001 - the phases and failures are still worth reporting
    table, targets = f"(no table: {type(e).__name__}: {e})", []
machine = (steps / "nvidia-smi.csv").read_text().strip()
cpu = steps / "cpu.txt"
if cpu.exists() and cpu.read_text().strip():
    machine += "\ncpu: " + cpu.read_text().strip()
phase_lines = [f"{p['phase']:<14}{p['seconds']:>5} s  exit {p['exit']}" for p in phases]
text = "\n".join([
    f"gpu_check {'(DRY RUN on the CPU) ' if dry_run else ''}{elapsed} s", machine,
    json.dumps(info), "", table, "", "targets (issue 9):", *targets, "",
    *(f"vs Detectron2: {ln}" for ln in versus),
    *(f"host, one thread: {ln}" for ln in host),
    *(f"profile: {ln}" for ln in profile),
    "phases:", *phase_lines, "",
    *(f"skipped {s.get('step', '')} {s.get('row', s.get('precision', ''))}: {s['reason']}"
      for s in skipped),
    failures.strip(),
])  # fmt: skip
(out / "gpu_check.txt").write_text(text + "\n")
(out / "gpu_check.json").write_text(json.dumps(
    {**info, "machine": machine, "dry_run": dry_run, "seconds": elapsed, "phases": phases,
     "rows": rows, "skipped": skipped, "targets": targets, "vs_detectron2": versus, "host": host,
     "profile": profile,
     "failures": failures.splitlines()}, indent=2))
print("\n" + text)
EOF
tar -czf "$OUT_DIR/steps.tar.gz" -C "$OUT_DIR" --exclude="steps/$MARK" steps && rm -rf "$STEPS"
[ "${KEEP_SCRATCH:-0}" = 1 ] || rm -rf "$SCRATCH"
echo "total $(( $(date +%s) - START ))s; $OUT_DIR: gpu_check.txt, gpu_check.json, steps.tar.gz"
[ "$PREFLIGHT" -eq 0 ] || [ "$DRY_RUN" = 1 ] || exit 1
