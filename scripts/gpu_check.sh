#!/usr/bin/env bash
# GPU check for fpncli: the GPU tests, model-only rows and end-to-end rows, as one table + JSON.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          (default OUT_DIR: ${OUT:-gpu_check_out})
#
# Runs in at most ~8 minutes on one H100 (each step has its own time limit; a step that runs out
# of time is reported and the rest still run), needs no network, writes OUT_DIR/gpu_check.json
# (every row) and OUT_DIR/gpu_check.txt (the table), and prints the table.
#
#   1. pytest tests/test_gpu.py tests/test_device.py    (pipeline on cuda:0/cuda:1 == CPU, bf16/fp16
#      bounds, --gpus with two workers, OOM split under a memory cap)
#   2. model-only rows, 800x1344: fp32/bf16/fp16 eager at batch 1, 8, 16 (+ max rel. error vs fp32,
#      % of the card's bf16 peak, peak GPU memory)
#   3. end-to-end rows on a generated folder of 1080p JPEGs (1080x1920 -> 756x1344, padded
#      768x1344): heatmaps only and all levels as fp16 .npy (bf16, batch 16), each with the
#      matching model-only row, the decode rate with all cores and the disk's write speed, so the
#      ratios the issue asks for are printed (of_min_model_decode, of_disk_rate)
#   4. the defaults end to end (fp32, batch 8, every output)
#   5. --compile rows (torch.compile, fixed shapes): bf16 at batch 1, 8, 16; fp16 and fp32 at 16
#
# Wheels to carry to a machine that has only torch (no network there). On a machine with
# network and the same Python version, run
#     pip download -d wheels numpy opencv-python-headless matplotlib click pillow pytest
# and on the GPU machine
#     pip install --no-index --find-links wheels numpy opencv-python-headless matplotlib click \
#         pillow pytest
# (opencv-python-headless provides the same cv2 module as opencv-python, without GUI libraries).
# fpncli itself runs from this checkout (PYTHONPATH), nothing to install.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY=PASSIVE
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$OUT_DIR/inductor-cache}"
START=$(date +%s)
CORES=$(nproc)
WORKERS=$(( CORES > 4 ? CORES - 2 : 2 ))
WRITERS=$(( CORES > 8 ? 8 : 2 ))

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, never stop the script
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s, $(( $(date +%s) - START ))s elapsed)"
    timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || echo "!! $name exited with $rc (124: out of time)" | tee -a "$OUT_DIR/failures.txt"
}

nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm --format=csv \
    > "$OUT_DIR/nvidia-smi.csv" 2>&1 || echo "no nvidia-smi" > "$OUT_DIR/nvidia-smi.csv"
cat "$OUT_DIR/nvidia-smi.csv"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', \
torch.backends.cudnn.version(), 'gpus', torch.cuda.device_count())" | tee "$OUT_DIR/torch.txt"
rm -f "$OUT_DIR/failures.txt"

step tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_device.py -rs
step model 100 "$PY" -m fpncli bench --model-only --sizes 800x1344 --batch-sizes 1,8,16 \
    --precisions fp32,bf16,fp16 --seconds 2 --json "$OUT_DIR/model.json"
step e2e 110 "$PY" -m fpncli bench --sizes 768x1344 --batch-sizes 16 --precisions bf16 \
    --outputs heatmaps,npy16 --source-size 1080x1920 --images 320 --seconds 2 \
    --workers "$WORKERS" --writers "$WRITERS" --json "$OUT_DIR/e2e.json"
step defaults 60 "$PY" -m fpncli bench --e2e-only --sizes 800x1333 --batch-sizes 8 \
    --precisions fp32 --outputs all --source-size 1080x1920 --images 64 \
    --workers "$WORKERS" --writers "$WRITERS" --json "$OUT_DIR/defaults.json"
LEFT=$(( 470 - ($(date +%s) - START) ))
if [ "$LEFT" -gt 60 ]; then
    step compile_bf16 $(( LEFT * 3 / 5 )) "$PY" -m fpncli bench --model-only --compile \
        --sizes 800x1344 --batch-sizes 16,8,1 --precisions bf16 --seconds 2 \
        --json "$OUT_DIR/compile_bf16.json"
    LEFT=$(( 470 - ($(date +%s) - START) ))
    [ "$LEFT" -gt 40 ] && step compile_16 "$LEFT" "$PY" -m fpncli bench --model-only --compile \
        --sizes 800x1344 --batch-sizes 16 --precisions fp16,fp32 --seconds 2 \
        --json "$OUT_DIR/compile_16.json"
else
    echo "!! no time left for the --compile rows" | tee -a "$OUT_DIR/failures.txt"
fi

"$PY" - "$OUT_DIR" <<'EOF'
import json, sys
from pathlib import Path
from fpncli.run.bench import BenchRow, add_ratios, format_table

out = Path(sys.argv[1])
rows, info = [], {}
for name in ("model", "e2e", "defaults", "compile_bf16", "compile_16"):
    path = out / f"{name}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        info = {k: v for k, v in data.items() if k != "rows"}
        rows += [BenchRow(**r) for r in data["rows"]]
add_ratios(rows)
table = format_table(rows)
failures = (out / "failures.txt").read_text() if (out / "failures.txt").exists() else ""
(out / "gpu_check.txt").write_text(table + "\n" + failures)
(out / "gpu_check.json").write_text(json.dumps({**info, "rows": [r.__dict__ for r in rows]}, indent=2))
print(f"\n{info}\n{table}\n{failures}")
EOF
echo "total $(( $(date +%s) - START ))s; table and JSON in $OUT_DIR"
