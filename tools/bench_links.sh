#!/usr/bin/env bash
# Streaming DiLoCo over a real shaped link against the sleep emulation and the simulator (a
# benchmark, not a test; root, for tools/cluster.sh). docs/results.md, "Across two test hosts at
# 100 Mbit/s".
#
#   tools/bench_links.sh [OUTDIR] [REPEATS]
#
# For tau = 0 (no overlap), 1 and 5, each with fp32 and with e3m0 (4.25 bits a value) exchange:
#   shaped    2 hosts x 2 ranks (tools/cluster.sh, one datacentre each, uplinks tc-shaped to
#             GBPS Gbit/s), the outer link MPI over TCP, no emulation
#   emulated  the same 4 ranks on this machine, unshaped (shared memory), with
#             --outer-gbps GBPS --outer-latency-ms LAT
# then prints one row per (link, tau, quant) with the REPEATS measurements of each figure and
# the simulator's prediction (tools/simulate.py, fed each run's measured compute seconds).
# Environment: GBPS (default 0.1), LAT (ms, default 0), STEPS (default 40), RANKS (ranks a worker
# and a host, default 2), BATCH (sequences a rank, default 2), TAUS (default "0 1 5"), QUANTS
# (default "fp32 e3m0"), PROGRESS (--comm-progress values, default "steps thread"; each a run of
# its own), MPI_EXTRA (more mpirun options for both links, e.g. "--mca
# btl_tcp_progress_thread 1"), SUMMARY_ONLY=1 (print the tables of runs already in OUTDIR), DATA (a prepared
# folder; default runs/data-kjv, made from `bible` if missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/runs/links}
REPEATS=${2:-2}
GBPS=${GBPS:-0.1}
LAT=${LAT:-0}
STEPS=${STEPS:-40}
RANKS=${RANKS:-2}
BATCH=${BATCH:-2}
TAUS=${TAUS:-0 1 5}
QUANTS=${QUANTS:-fp32 e3m0}
PROGRESS=${PROGRESS:-steps thread}
read -r -a EXTRA <<< "${MPI_EXTRA:-}"
BIN="$ROOT/build/diloco"
DATA=${DATA:-$ROOT/runs/data-kjv}
CLUSTER=/tmp/diloco-cluster-diloco
[[ -x $BIN ]] || { echo "bench_links.sh: build $BIN first" >&2; exit 1; }
if [[ ! -f $DATA/meta.json ]]; then
    mkdir -p "$ROOT/runs"
    bible -f "Gen1:1-Rev22:21" > "$ROOT/runs/kjv.txt"
    "$BIN" prepare --input "$ROOT/runs/kjv.txt" --out "$DATA" > /dev/null
fi
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# the model and schedule of the DP-against-DiLoCo table of docs/results.md
COMMON="--data $DATA --n-layer 4 --n-head 4 --d-model 128 --seq-len 64 --warmup 5 --lr 3e-3
        --log-every 0 --eval-batches 2 --steps $STEPS --batch $BATCH --workers 2 --inner-steps 20
        --algo streaming --fragments 2"
EMU="--outer-gbps $GBPS --outer-latency-ms $LAT"

if [[ -z ${SUMMARY_ONLY:-} ]]; then
    trap '"$ROOT/tools/cluster.sh" down > /dev/null 2>&1 || true' EXIT
    "$ROOT/tools/cluster.sh" down > /dev/null 2>&1 || true
    "$ROOT/tools/cluster.sh" up --hosts 2 --dcs 2 --gbps "$GBPS" --slots "$RANKS"
    read -r -a MPI_ARGS < "$CLUSTER/mpirun.args"
    if command -v ping > /dev/null; then
        echo "ping h0 -> h1 across the shaped uplinks: $(ip netns exec diloco-h0 ping -c 5 -q 10.77.0.2 | tail -1)"
fi

# steps keeps the names of the runs made before --comm-progress existed
run_name() { echo "$1-tau$2-$3$([[ $4 == steps ]] || echo "-$4")-r$5"; }

# run NAME LINK ARGS...: args.txt carries the emulation's options for the shaped runs too, as
# the link the simulator is to assume
run() {
    local name=$1 link=$2; shift 2
    local dir=$OUT/$name
    rm -rf "$dir"; mkdir -p "$dir"
    printf '%s\n' $COMMON $EMU "$@" > "$dir/args.txt"
    if [[ $link == shaped ]]; then
        mpirun --oversubscribe --bind-to none -np $((2 * RANKS)) ${EXTRA[@]+"${EXTRA[@]}"} "${MPI_ARGS[@]}" "$BIN" train --out "$dir" \
            $COMMON "$@" > "$dir/log.txt" 2>&1
    else
        mpirun --oversubscribe --bind-to none -np $((2 * RANKS)) ${EXTRA[@]+"${EXTRA[@]}"} "$BIN" train --out "$dir" \
            $COMMON $EMU "$@" > "$dir/log.txt" 2>&1
    fi
    echo "$name done ($(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg))"
}

uptime
for rep in $(seq 1 "$REPEATS"); do
    for link in shaped emulated; do
        for quant in $QUANTS; do
            for tau in $TAUS; do
                for progress in $PROGRESS; do
                    run "$(run_name $link $tau $quant $progress $rep)" $link --overlap $tau --quant $quant \
                        --comm-progress $progress
                done
            done
        done
    done
done
uptime
"$ROOT/tools/cluster.sh" down

fi

python3 - "$OUT" "$REPEATS" "$ROOT/tools" "$TAUS" "$QUANTS" "$PROGRESS" << 'PY'
import json, os, sys
out, reps = sys.argv[1], int(sys.argv[2])
TAUS, QUANTS, PROGRESS = [int(t) for t in sys.argv[4].split()], sys.argv[5].split(), sys.argv[6].split()

def name(link, tau, quant, progress, r):
    return os.path.join(out, f"{link}-tau{tau}-{quant}{'' if progress == 'steps' else '-' + progress}-r{r}")
sys.path.insert(0, sys.argv[3])
import simulate

def lines(d):
    with open(os.path.join(d, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f if l.strip()]

def summary(d):
    return next(l for l in lines(d) if l.get("summary"))

def exchange_wait(d, tau, H=20, P=2):
    """Rank 0's comm seconds from each mid-run sync step s through its completion step s + tau
    (fragment p syncs at s = p*H/P mod H; the final step, where all fragments sync, left out)."""
    comm = {l["step"]: l["comm_s"] for l in lines(d) if "comm_s" in l and not l.get("summary")}
    last = max(comm)
    syncs = [s for s in range(1, last) if any((s - p * H // P) % H == 0 for p in range(P))]
    return (sum(comm.get(t, 0.0) for s in syncs for t in range(s, min(s + tau, last - 1) + 1)),
            sum(comm.get(s + tau, 0.0) for s in syncs))

def two(xs, f):
    return ", ".join(f.format(x) for x in xs)

print("| link | tau | exchange | progress | compute util | wall s | comm s | comm s, sync to completion | of which at completion | predicted util | final val loss | across-worker MB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for link in ("shaped", "emulated"):
    for quant in QUANTS:
        for tau, progress in ((t, p) for t in TAUS for p in PROGRESS):
            dirs = [name(link, tau, quant, progress, r) for r in range(1, reps + 1)]
            s = [summary(d) for d in dirs]
            p = [simulate.predict_run(d)["predicted_with_other"] for d in dirs]
            w = [exchange_wait(d, tau) for d in dirs]
            print(f"| {link} | {tau} | {quant} | {progress} | {two([x['compute_util'] for x in s], '{:.3f}')} "
                  f"| {two([x['wall_s'] for x in s], '{:.1f}')} | {two([x['comm_s'] for x in s], '{:.2f}')} | {two([x[0] for x in w], '{:.2f}')} | {two([x[1] for x in w], '{:.2f}')} "
                  f"| {two(p, '{:.3f}')} | {two([x['final_val_loss'] for x in s], '{:.4f}')} "
                  f"| {s[0]['bytes_outer_total'] / 1e6:.2f} |")

print()
print("rank 0's comm s at each mid-run exchange's completion step (steps 10+tau, 20+tau, 30+tau), each repeat:")
print("| link | exchange | progress | " + " | ".join(f"tau {t}" for t in TAUS) + " |")
print("|---|---|---|" + "---|" * len(TAUS))
for link, quant, progress in ((l, q, p) for l in ("shaped", "emulated") for q in QUANTS for p in PROGRESS):
        cells = []
        for tau in TAUS:
            reps_ = []
            for r in range(1, reps + 1):
                comm = {l["step"]: l["comm_s"] for l in lines(name(link, tau, quant, progress, r))
                        if "comm_s" in l and not l.get("summary")}
                reps_.append(" ".join(f"{comm[s + tau]:.2f}" for s in (10, 20, 30)))
            cells.append("; ".join(reps_))
        print(f"| {link} | {quant} | {progress} | " + " | ".join(cells) + " |")
PY
