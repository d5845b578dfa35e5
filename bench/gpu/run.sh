#!/usr/bin/env bash
# Issue 6's GPU checks in one device call, from the repository root on the lent machine:
#   run(command="bash bench/gpu/run.sh", carry=[".gpu-wheels"], timeout_s=600)
# after bench/gpu/fetch_wheels.sh here. It runs the CUDA tests (engine in bf16 against CPU fp32, packed
# rows through flash varlen attention), then the llama3-8b bench (random weights of real shapes, bf16),
# each under its own time limit (TESTS_S, BENCH_S; BENCH_GROUPS and ROWS size the bench), and leaves logs
# and the bench's JSON in $OUT. The defaults total under 6 minutes, leaving a 15-minute device budget room
# for the machine's start and one rerun. It exits non-zero if either step failed. First run on an H200
# on 2026-12-04 (torch 2.11.0+cu130, transformers 5.17.0): 150 s, both steps passed (bench/README.md).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-/tmp/xlreward-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DEPS=/tmp/xlreward-deps
python3 -m pip install --quiet --no-index --no-deps --target "$DEPS" "$ROOT"/.gpu-wheels/*.whl 2>&1 | tail -3
export PYTHONPATH="$DEPS:$ROOT/service:$ROOT/clients:$ROOT/trainer:$ROOT/worker"

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c 'import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__, torch.cuda.get_device_name())'
} 2>&1 | tee "$OUT/machine.txt"

timeout "${TESTS_S:-90}" python3 -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/test_engine_exact.py tests/test_packing.py tests/test_placement.py \
    -k "cuda or varlen or split or spreads" 2>&1 | tee "$OUT/cuda-tests.log" | tail -15
tests=${PIPESTATUS[0]}

RESULT=bench/results/gpu-llama3-8b.json
rm -f "$RESULT"
timeout "${BENCH_S:-240}" python3 bench/run.py --device cuda --dtype bfloat16 --config llama3-8b \
    --groups "${BENCH_GROUPS:-12}" --rows ${ROWS:-baseline engine prefix packed} --name gpu-llama3-8b \
    2>&1 | tee "$OUT/bench.log" | tail -30
bench=${PIPESTATUS[0]}
cp "$RESULT" "$OUT/" 2>/dev/null || echo "no bench JSON (see bench.log)"

echo "exit status: tests $tests, bench $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
