#!/usr/bin/env bash
# The main job, on a fresh machine: set up .venv, train a GPT on the shipped
# Shakespeare corpus (CPU), then a Symbio run, both landing in the local lake
# ./lake; prints where the results are and the one command that opens the
# dashboard on them.  `./run.sh dashboard` serves the dashboard.
set -euo pipefail
cd "$(dirname "$0")"
source .ci/ensure-env.sh
export ALPHA_LAKE="${ALPHA_LAKE:-$PWD/lake}"

if [ "${1:-}" = "dashboard" ]; then
  shift
  exec alpha dashboard --lake "$ALPHA_LAKE" "$@"
fi

echo "==> 1/2 plain run: char-level GPT on the shipped corpus (CPU)"
alpha train --device cpu --run-dir runs/demo-plain "$@"

echo "==> 2/2 symbio run: SwiGLU, CUSUM monitors, adaptive batch, symbio metrics and a small FFN activation search"
alpha train --device cpu --symbio --symbio-config deployments/configs/symbio-demo.json \
  --run-dir runs/demo-symbio "$@"

echo
echo "Runs in the lake ($ALPHA_LAKE):"
alpha runs --lake "$ALPHA_LAKE"
echo
echo "Open the dashboard on them:  ./run.sh dashboard   (http://127.0.0.1:8050)"
