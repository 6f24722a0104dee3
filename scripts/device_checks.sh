#!/usr/bin/env bash
# The GPU lines of the batched-evaluation work, as one prepared run for a lent GPU machine.
#
#   scripts/device_checks.sh prepare   # here, once: wheels the GPU image lacks, into .whl/ (git-ignored)
#   scripts/device_checks.sh run       # there (device tool, carry [".whl"]): JSON lines into $OUT
#
# The GPU image has torch, numpy, safetensors, tokenizers and the rest, but not open_clip, hydra or
# our pins of transformers/huggingface_hub; those travel as wheels (about 17 MB). It has no pybullet
# either, and pybullet has no wheel for its Python (3.12): a build is ~140 MB, over what a call can
# carry, so the batched *evaluation* bench (simulators) cannot run there; bench_inference covers the
# policy side: step latency at B = 1, 8, 32 and peak GPU memory, fp32 and bf16, of3b_mpt1b with
# random weights (its real parameter count), plus tiny and mid.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 hydra-core==1.3.8 omegaconf==2.3.1
        transformers==5.24.0 huggingface_hub==2.4.0)

case "${1:-}" in
  prepare)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "${WHEELS[@]}"
    python3 -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl  # sdist only: pure Python
    du -sh .whl
    ;;
  run)
    : "${OUT:?run this through the device tool, which sets OUT}"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    python3 scripts/bench_inference.py --device cuda --configs tiny mid of3b_mpt1b --batches 1 8 32 \
      --precisions fp32 bf16 --reps 20 2>&1 | tee "$OUT/bench_inference.log"
    tail -n 1 "$OUT/bench_inference.log" > "$OUT/bench_inference.json"
    ;;
  *)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
