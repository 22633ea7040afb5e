#!/bin/bash
# A plain `mpirun -np 4 diloco train` on a machine with fewer cores than ranks x threads: "before"
# is OpenMP's own thread count (one per core: OMP_NUM_THREADS=$(nproc)) with its default,
# spinning wait; "after" leaves the count to diloco, which gives each rank its share of the cores.
# Prints the wall time of each run; per-step times are in OUT/{before,after}-TRIAL/metrics.jsonl.
#   bash tools/bench_oversubscription.sh [DATA] [OUT] [STEPS]
# DATA is a prepared directory (the demo's runs/data-kjv by default). Run it on a quiet machine.
set -u
cd "$(dirname "$0")/.."
DATA=${1:-runs/data-kjv}; OUT=${2:-runs/oversubscription}; STEPS=${3:-16}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
B=build/diloco
for trial in 1 2 3; do
  for mode in before after; do
    out=$OUT/$mode-$trial; rm -rf $out
    if [ $mode = before ]; then envs="env OMP_NUM_THREADS=$(nproc)"; else envs="env -u OMP_NUM_THREADS"; fi
    s=$(date +%s.%N)
    $envs mpirun --oversubscribe -np 4 "$B" train --data "$DATA" --out $out --steps "$STEPS" --eval-every 0 > $out.log 2>&1
    e=$(date +%s.%N)
    echo "$mode trial $trial: $(echo "$e - $s" | bc) s wall; $(grep -m1 '^note' $out.log)"
  done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys, glob, os
for d in sorted(glob.glob(os.path.join(sys.argv[1], "*-[0-9]"))):
    r = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
    r = [x for x in r if "step" in x and "wall_s" in x]
    w = [b["wall_s"] - a["wall_s"] for a, b in zip(r, r[1:])]
    print(f"{os.path.basename(d)}: median step {1000 * statistics.median(w):.0f} ms (min {1000 * min(w):.0f}, "
          f"max {1000 * max(w):.0f}), {r[-1]['wall_s']:.1f} s to the last step")
PY
