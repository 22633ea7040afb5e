#!/usr/bin/env bash
# "A worker lost mid-run" drills on the test cluster (tools/cluster.sh): DiLoCo on 2 hosts x 2
# ranks, one worker a host, checkpoints every outer round; then host 1 is lost
#   inner  every rank of host 1 killed (SIGKILL) during an inner phase
#   outer  the same during an outer sync (while the outer sync's bytes cross the uplinks)
#   cut    host 1's link cut (its veth set down) during an inner phase: nothing dies; the runtime's
#          TCP keepalive (mpirun.args of tools/cluster.sh) finds its daemon silent
#   freeze every rank of host 1 stopped (SIGSTOP) during an inner phase: nothing dies and every
#          link stays up, so only our --comm-timeout ends the job
# and for each checks that
#   - the job ends within BOUND seconds of the loss (mpirun returns, non-zero)
#   - one clear line names the lost worker and its host: Open MPI's own when a rank dies or a
#     daemon goes silent (it names the node, and the rank for a death; the "ranks:" line the
#     trainer prints at start maps them to workers), ours when a collective stalls
#   - the newest complete checkpoint from before the loss is intact: --resume on a fresh 2-host
#     cluster starts from it (or a newer one) and finishes the run
# Skips (exit 77) when namespaces cannot be made here (not root, no ip/tc/unshare).
#
#   tests/cluster_failure_test.sh build/diloco [inner|outer|cut|freeze ...]
set -euo pipefail

BIN=$(realpath "${1:?usage: cluster_failure_test.sh path/to/diloco [drill...]}")
shift
DRILLS=("$@")
[[ ${#DRILLS[@]} -gt 0 ]] || DRILLS=(inner outer cut freeze)
HERE=$(cd "$(dirname "$0")" && pwd)
CLUSTER=$HERE/../tools/cluster.sh
NAME=df$(($$ % 100000))            # this test's own cluster: never one a user has up
SUBNET=10.79.$(($$ % 250))
DIR=/tmp/diloco-cluster-$NAME
WORK=$(mktemp -d /tmp/diloco_failure_test.XXXXXX)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
COMM_TIMEOUT=${COMM_TIMEOUT-10}    # empty: run without --comm-timeout (what Open MPI does alone)
BOUND=${BOUND:-60}                 # seconds from the loss to mpirun's return
FAILED=0
MPIRUN_PID=""

check() {  # check NAME CONDITION-EXIT-STATUS DETAIL
    if [[ $2 == 0 ]]; then echo "ok   $1: $3"; else echo "FAIL $1: $3"; FAILED=1; fi
}
cleanup() {
    [[ -z $MPIRUN_PID ]] || kill -9 "$MPIRUN_PID" 2> /dev/null || true
    "$CLUSTER" down --name "$NAME" > /dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

skip() { echo "SKIP cluster failure test: $*"; exit 77; }
[[ $(id -u) -eq 0 ]] || skip "needs root to make network namespaces"
for t in ip tc unshare mpirun; do command -v $t > /dev/null || skip "no $t"; done
ip netns add "$NAME-probe" 2> /dev/null || skip "cannot make a network namespace here"
ip netns del "$NAME-probe"

python3 -c "
import random; random.seed(1); w='the cat sat on a mat and dog ran far away home'.split()
open('$WORK/a.txt', 'w').write(' '.join(random.choice(w) for _ in range(30000)))"
"$BIN" prepare --input "$WORK/a.txt" --out "$WORK/data" > /dev/null 2>&1
# d-model 128: about 1.7 MB of weights, so an outer sync takes about a second on the 10 Mbit/s
# uplinks, long enough to be caught in the act
TRAIN=(train --data "$WORK/data" --n-layer 2 --n-head 2 --d-model 128 --seq-len 32 --warmup 5 --lr 3e-3
       --log-every 0 --eval-batches 2 --steps 24 --batch 2 --algo diloco --workers 2 --inner-steps 8
       --ckpt-every 8 --ckpt-keep 0)
[[ -z $COMM_TIMEOUT ]] || TRAIN+=(--comm-timeout "$COMM_TIMEOUT")

cluster_up() {
    "$CLUSTER" up --hosts 2 --dcs 2 --gbps 0.01 --name "$NAME" --subnet "$SUBNET" > /dev/null
    read -r -a MPI_ARGS < "$DIR/mpirun.args"
}
uplink_bytes() { echo $(($(cat "/sys/class/net/$NAME-u1/statistics/tx_bytes") + $(cat "/sys/class/net/$NAME-u1/statistics/rx_bytes"))); }
# the newest step every rank has a complete checkpoint of (-1: none)
newest_complete() {
    local s best=-1
    for s in $(ls "$1/ckpt" 2> /dev/null | sed -n 's/^step_\([0-9]*\)\.rank_00000\.ckpt$/\1/p'); do
        [[ -f $1/ckpt/step_$s.rank_00001.ckpt && -f $1/ckpt/step_$s.rank_00002.ckpt &&
           -f $1/ckpt/step_$s.rank_00003.ckpt ]] && best=$((10#$s))
    done
    echo "$best"
}
wait_for() {  # wait_for SECONDS COMMAND...: polls COMMAND every 20 ms
    local end=$((SECONDS + $1)); shift
    until "$@"; do
        ((SECONDS < end)) || return 1
        sleep 0.02
    done
}
has_checkpoint() { [[ $(newest_complete "$1") -ge 8 ]]; }
# the uplink busy: an outer sync's bytes crossing (more than 100 kB in 50 ms)
syncing() { local a b; a=$(uplink_bytes); sleep 0.05; b=$(uplink_bytes); ((b - a > 100000)); }
quiet() { local a b; a=$(uplink_bytes); sleep 0.2; b=$(uplink_bytes); ((b - a < 20000)); }
lose_host1() {  # lose_host1 DRILL
    if [[ $1 == cut ]]; then
        ip link set dev "$NAME-h1" down
    else
        local pid sig=KILL
        [[ $1 != freeze ]] || sig=STOP
        for pid in $(ip netns pids "$NAME-h1"); do
            [[ $(cat "/proc/$pid/comm" 2> /dev/null) != diloco ]] || kill -s $sig "$pid"
        done
    fi
}

drill() {
    local d=$1 run=$WORK/run-$1 log=$WORK/$1.log
    cluster_up
    mpirun --oversubscribe -np 4 "${MPI_ARGS[@]}" "$BIN" "${TRAIN[@]}" --out "$run" > "$log" 2>&1 &
    MPIRUN_PID=$!
    wait_for 60 has_checkpoint "$run" || { check "$d: run reaches a checkpoint" 1 "$(tail -3 "$log")"; return; }
    case $d in
        inner | cut | freeze) wait_for 10 quiet ;;    # the outer sync that wrote it is over
        outer) wait_for 30 syncing ;;
    esac
    local saved t0 t1 rc=0
    saved=$(newest_complete "$run")
    t0=$(date +%s.%N)
    lose_host1 "$d"
    # mpirun itself returns: the bound is what a user waits for
    while kill -0 "$MPIRUN_PID" 2> /dev/null; do
        if (($(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print (b - a > '"$BOUND"' + 30) }'))); then
            kill -9 "$MPIRUN_PID"; break
        fi
        sleep 0.1
    done
    wait "$MPIRUN_PID" || rc=$?
    MPIRUN_PID=""
    t1=$(date +%s.%N)
    local took
    took=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    echo "$d: lost host 1 after checkpoint step $saved; mpirun returned $rc after $took s" >> "$WORK/times"
    check "$d: the job ends within $BOUND s of the loss" \
        $([[ $rc != 0 ]] && awk -v t="$took" -v b="$BOUND" 'BEGIN { exit !(t <= b) }'; echo $?) "rc $rc after $took s"
    local line
    case $d in
        inner | outer) line=$(grep -m1 "process rank [23] with PID .* on node $NAME-h1 exited on signal 9" "$log" || true) ;;
        cut) line=$(grep -m1 "Remote daemon: .* on node $NAME-h1\$" "$log" || true) ;;
        freeze) line=$(grep -m1 "^error: rank [01] (worker 0 on $NAME-h0): .* lost contact with worker 1 on $NAME-h1 (ranks 2-3)" "$log" || true) ;;
    esac
    # Open MPI names a rank or a node: the trainer's rank map turns it into a worker
    [[ $d == freeze ]] || grep -q "^ranks: worker 0 on $NAME-h0 (ranks 0-1), worker 1 on $NAME-h1 (ranks 2-3)$" "$log" || line=""
    check "$d: a clear line names the lost worker and host" $([[ -n $line ]]; echo $?) "${line:-none in $(tail -5 "$log")}"
    "$CLUSTER" down --name "$NAME" > /dev/null
    resume "$d" "$run" "$saved"
}

resume() {  # resume DRILL RUNDIR SAVED: on a fresh cluster, from what was saved
    local log=$WORK/$1-resume.log from
    cluster_up
    timeout 120 mpirun --oversubscribe -np 4 "${MPI_ARGS[@]}" "$BIN" "${TRAIN[@]}" --out "$2" --resume > "$log" 2>&1 || true
    "$CLUSTER" down --name "$NAME" > /dev/null
    from=$(sed -n 's/.*resume: .*(step \([0-9]*\)).*/\1/p' "$log" | head -1)
    check "$1: --resume on a fresh cluster starts from the newest checkpoint saved before the loss" \
        $([[ -n $from && $from -ge $3 ]]; echo $?) "saved $3, resumed from ${from:-nothing}"
    check "$1: the resumed run finishes" $(grep -q '"final_val_loss"' "$2/metrics.jsonl"; echo $?) "$(tail -2 "$log" | tr '\n' ' ')"
}

for d in "${DRILLS[@]}"; do drill "$d"; done
cat "$WORK/times"
[[ $FAILED == 0 ]] && echo "cluster failure test passed" || { echo "cluster failure test FAILED"; exit 1; }
