#!/usr/bin/env bash
# Every GPU benchmark in one go (device time is scarce: one start, one run).
# Usage on the accelerator machine, from the repo root:
#   OUT=/some/dir DATA=path/to/shakespeare.txt bash bench/gpu_all.sh [engine symbio search sink]
# Each benchmark prints one JSON line; logs and JSON land in $OUT.
set -uo pipefail
OUT="${OUT:-/tmp/alpha-bench}"; mkdir -p "$OUT"
DATA="${DATA:-.benchdata/shakespeare.txt}"
export PYTHONUNBUFFERED=1
what="${*:-engine symbio search}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
for b in $what; do
  case $b in
    engine) python3 bench/bench_engine.py --data "$DATA" --device cuda ${ENGINE_ARGS:-} ;;
    symbio) python3 bench/bench_symbio.py --gpu --data "$DATA" --device cuda ${SYMBIO_ARGS:-} ;;
    search) python3 bench/bench_search.py --data "$DATA" --device cuda ${SEARCH_ARGS:-} ;;
    sink) python3 bench/bench_sink.py ${SINK_ARGS:-} ;;
  esac > "$OUT/$b.json" 2> "$OUT/$b.log"
  echo "== $b rc=$? =="; tail -n 3 "$OUT/$b.log"; cat "$OUT/$b.json"
done
