#!/usr/bin/env bash
# Remake docs/report_samples_random.png, the README's report screenshot: the sample photos
# extracted with --weights random into fpn_out/ of a temporary folder (a relative path, so the
# summary shows no machine's folder; never the checkout's own fpn_out/, which may be yours),
# `fpncli report --scale level`, a headless Chromium screenshot at 1000 px, cropped to the page
# and scaled to 800 px. The temporary folder is removed at the end. Needs Debian's chromium;
# PYTHON defaults to python; fpncli is this checkout's (PYTHONPATH).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null; then  # before any work: bash's "not found" said nothing
    echo "readme_report.sh needs chromium on PATH for the screenshot (Debian: apt-get install" \
        "chromium)" >&2
    exit 1
fi
PYTHON=${PYTHON:-python}
repo=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/fpncli-readme-report-XXXXXX")
trap 'rm -rf "$work"' EXIT
ln -s "$repo/samples" "$work/samples"
cd "$work"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
out=fpn_out
"$PYTHON" -m fpncli extract samples/ -o "$out" --weights random
"$PYTHON" -m fpncli report "$out" --scale level
shot="$work/shot.png"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1000,1600 \
    --screenshot="$shot" "file://$work/$out/report.html" 2>/dev/null \
    || { echo "readme_report.sh: chromium failed to screenshot $out/report.html" >&2; exit 1; }
"$PYTHON" - "$shot" "$repo/docs/report_samples_random.png" <<'EOF'
import sys

import numpy as np
from PIL import Image

image = Image.open(sys.argv[1]).convert("RGB")
ink = np.where((np.asarray(image) < 250).any(axis=2).any(axis=1))[0]
bottom = min(image.height, int(ink[-1]) + 20)
image = image.crop((0, 0, image.width, bottom))
image = image.resize((800, round(bottom * 800 / image.width)), Image.LANCZOS)
image.quantize(256).save(sys.argv[2], optimize=True)
print(f"wrote {sys.argv[2]} ({image.width}x{image.height})")
EOF
