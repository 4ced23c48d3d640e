#!/usr/bin/env bash
# The whole story on scikit-learn's digits, with the same `nas` commands a user types:
#   1. train a small OFA-MBv3 supernet by progressive shrinking (or continue/reuse the one trained before),
#   2. build this CPU's per-layer latency lookup table,
#   3. search for the most accurate subnet within a latency budget (real accuracy through the supernet,
#      BatchNorm re-calibrated per subnet; latency from the lookup table),
#   4. export the best subnet (ONNX, TorchScript, state_dict), measure it here and test it.
# Usage: bash examples/digits.sh [RUN_FOLDER] [BUDGET_MS]    (nas must be on PATH)
set -euo pipefail
RUN=${1:-runs/digits}
BUDGET=${2:-3}
HERE=$(cd "$(dirname "$0")" && pwd)

resume=""
if [ -f "$RUN/supernet/train.json" ]; then resume="--resume"; fi
nas train ofa_mbv3 --data digits --config "$HERE/digits_train.yaml" --out "$RUN/supernet" $resume

if [ ! -f "$RUN/latency_cpu.npz" ]; then
  nas predictors build --device cpu --kind lut --supernet "$RUN/supernet/supernet.pt" --samples 20 \
      --out "$RUN/latency_cpu.npz"
fi

SEARCH="$RUN/search-$(date +%Y%m%d-%H%M%S)"
nas search --space ofa_mbv3 --supernet "$RUN/supernet/supernet.pt" --objectives accuracy,latency@cpu \
    --latency-predictor "cpu=$RUN/latency_cpu.npz" --constraint "latency@cpu<=${BUDGET}ms" \
    --searcher linas --evaluations 80 --run "$SEARCH"

nas export "$SEARCH" --device cpu
