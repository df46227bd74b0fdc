#!/usr/bin/env bash
# The whole GPU measurement in one command (at most 8 minutes on one GPU), for the first GPU the
# project meets: the 512 px recipe end to end, the train step against the original recipe with MFU,
# bf16 and torch.compile, nvjpeg against CPU decoding, prediction images/s, peak memory against
# batch size. No network: what a bare CUDA image with torch, torchvision, timm, OpenCV, pandas and
# scikit-learn lacks is installed from the wheels brought along in .carry/wheels (make gpu-wheels).
#
#   OUT=/path/to/results bash benchmarks/gpu_check.sh            # on the GPU machine
#   OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh --dry-run    # the same script on the CPU, tiny sizes
#
# Writes $OUT/summary.md, results.json, steps.log (every step's command and output) and gpu_check.log
# (four files: the device tool brings back at most eight); scratch goes to a temporary folder. A step
# that fails or runs out of its time is recorded and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-.carry/wheels}"
export PYTHONUNBUFFERED=1
{
  echo "gpu_check $(date -u +%FT%TZ) on $(hostname), python $("$PYTHON" --version 2>&1)"
  missing=$("$PYTHON" - <<'EOF'
import importlib.util
need = {"kornia": "kornia", "kornia_rs": "kornia-rs", "facenet_pytorch": "facenet-pytorch",
        "omegaconf": "omegaconf"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
  if [ -n "$missing" ]; then
    echo "installing from $WHEELS (no network): $missing"
    "$PYTHON" -m pip install --no-index --find-links "$WHEELS" --no-deps $missing || echo "wheel install failed"
  else
    echo "every dependency importable: nothing to install"
  fi
  "$PYTHON" benchmarks/gpu_check.py --out "$OUT" "$@"
} 2>&1 | tee "$OUT/gpu_check.log"
