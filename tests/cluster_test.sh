#!/usr/bin/env bash
# A DiLoCo run across two test hosts (tools/cluster.sh: network namespaces, one datacentre each,
# the link between them shaped), 2 workers x 2 ranks with each worker's ranks on one host:
#   - the losses equal, bit for bit, those of the same run on one host (every reduction in it is
#     over 2 ranks, where a sum is the same whatever the transport or algorithm)
#   - the outer syncs crossed the shaped link (its byte counters), the worker link did not leave
#     the host (shared memory: the host's loopback stays quiet)
#   - up is idempotent, refuses other settings, cleans up after a failure; down leaves nothing
# Skips (exit 77) when namespaces cannot be made here (not root, no ip/tc/unshare).
#
#   tests/cluster_test.sh build/diloco
set -euo pipefail

BIN=$(realpath "${1:?usage: cluster_test.sh path/to/diloco}")
HERE=$(cd "$(dirname "$0")" && pwd)
CLUSTER=$HERE/../tools/cluster.sh
NAME=dt$(($$ % 100000))            # this test's own cluster: never one a user has up
SUBNET=10.78.$(($$ % 250))
DIR=/tmp/diloco-cluster-$NAME
WORK=$(mktemp -d /tmp/diloco_cluster_test.XXXXXX)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
FAILED=0

check() {  # check NAME CONDITION-EXIT-STATUS DETAIL
    if [[ $2 == 0 ]]; then echo "ok   $1: $3"; else echo "FAIL $1: $3"; FAILED=1; fi
}
cleanup() {
    "$CLUSTER" down --name "$NAME" > /dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

skip() { echo "SKIP cluster test: $*"; exit 77; }
[[ $(id -u) -eq 0 ]] || skip "needs root to make network namespaces"
for t in ip tc unshare mpirun; do command -v $t > /dev/null || skip "no $t"; done
ip netns add "$NAME-probe" 2> /dev/null || skip "cannot make a network namespace here"
ip netns del "$NAME-probe"

leftovers() {  # what of the cluster exists: namespaces, interfaces (qdiscs live on them), state
    { ip netns list | awk '{print $1}' | grep "^$NAME-" || true
      ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep "^$NAME-" || true
      tc qdisc show | grep -w "dev $NAME-[a-z0-9]*" || true
      if [[ -e $DIR ]]; then echo "$DIR"; fi; } | tr '\n' ' '
}

# a failure half-way through up (an address the kernel refuses, after the core bridge exists)
rc=0; "$CLUSTER" up --hosts 2 --name "$NAME" --subnet 10.78.300 > "$WORK/bad.log" 2>&1 || rc=$?
left=$(leftovers)
check "up that fails removes what it made" $([[ $rc != 0 && -z $left ]]; echo $?) "rc $rc, left: '${left}'"

"$CLUSTER" up --hosts 2 --dcs 2 --gbps 1 --name "$NAME" --subnet "$SUBNET" > /dev/null
out=$("$CLUSTER" up --hosts 2 --dcs 2 --gbps 1 --name "$NAME" --subnet "$SUBNET")
check "up twice" $([[ $out == *"already up"* ]]; echo $?) "$out"
rc=0; "$CLUSTER" up --hosts 3 --name "$NAME" --subnet "$SUBNET" > /dev/null 2>&1 || rc=$?
check "up with other settings refused" $([[ $rc != 0 && -f $DIR/state ]]; echo $?) "rc $rc"
read -r -a MPI_ARGS < "$DIR/mpirun.args"

# rank = worker * 2 + local rank: the hostfile's 2 slots a host put each worker on one host
names=$(mpirun --oversubscribe -np 4 "${MPI_ARGS[@]}" sh -c 'echo $OMPI_COMM_WORLD_RANK $(hostname)' | sort | tr '\n' ' ')
check "ranks 0-1 (worker 0) on one host, 2-3 (worker 1) on the other, each host with its hostname" \
    $([[ $names == "0 $NAME-h0 1 $NAME-h0 2 $NAME-h1 3 $NAME-h1 " ]]; echo $?) "$names"

python3 -c "
import random; random.seed(1); w='the cat sat on a mat and dog ran far away home'.split()
open('$WORK/a.txt', 'w').write(' '.join(random.choice(w) for _ in range(30000)))"
"$BIN" prepare --input "$WORK/a.txt" --out "$WORK/data" > /dev/null 2>&1
TRAIN=(train --data "$WORK/data" --n-layer 2 --n-head 2 --d-model 32 --seq-len 32 --warmup 5 --lr 3e-3
       --log-every 0 --eval-batches 2 --steps 20 --batch 2 --algo diloco --workers 2 --inner-steps 5)

counter() { cat "/sys/class/net/$1/statistics/$2"; }
uplinks() { echo $(($(counter "$NAME-u0" tx_bytes) + $(counter "$NAME-u1" tx_bytes))); }
host_lo() { ip netns exec "$NAME-h0" cat /sys/class/net/lo/statistics/tx_bytes; }
up0=$(uplinks) lo0=$(host_lo)
mpirun --oversubscribe -np 4 "${MPI_ARGS[@]}" "$BIN" "${TRAIN[@]}" --out "$WORK/hosts" > "$WORK/hosts.log" 2>&1 ||
    { tail -20 "$WORK/hosts.log"; check "run across 2 hosts" 1 "failed"; exit 1; }
up1=$(uplinks) lo1=$(host_lo)
mpirun --oversubscribe -np 4 "$BIN" "${TRAIN[@]}" --out "$WORK/one" > "$WORK/one.log" 2>&1

losses() { grep -o '"\(loss\|val_loss\|final_val_loss\)": [^,}]*' "$1/metrics.jsonl"; }
n=$(losses "$WORK/hosts" | wc -l)
rc=0; cmp -s <(losses "$WORK/hosts") <(losses "$WORK/one") || rc=1
check "2 hosts x 2 ranks = one host, loss for loss, bit for bit" $rc "$n values, final $(losses "$WORK/hosts" | tail -1)"

summary() { grep '"summary"' "$1/metrics.jsonl" | grep -o "\"$2\": [0-9]*" | awk '{print $2}'; }
outer=$(summary "$WORK/hosts" bytes_outer_total)
crossed=$((up1 - up0))
check "the outer syncs crossed the shaped link" $([[ $outer -gt 0 && $crossed -ge $outer ]]; echo $?) \
    "$crossed bytes sent on the uplinks for $outer counted across workers"
inner=$(grep -o '"bytes_inner": [0-9]*' "$WORK/hosts/metrics.jsonl" | tail -1 | awk '{print $2}')
quiet=$((lo1 - lo0))
check "the worker link stayed in shared memory" $([[ $quiet -lt $((inner / 10)) ]]; echo $?) \
    "$quiet bytes on host 0's loopback, $inner counted on the worker link by rank 0"

st=$("$CLUSTER" status --name "$NAME")
check "status lists the hosts and the shaped uplinks" \
    $([[ $st == *"$NAME-h1: $SUBNET.2/24"* && $st == *"$NAME-u1: tbf"* && $st != *MISSING* ]]; echo $?) "$(echo "$st" | wc -l) lines"
"$CLUSTER" down --name "$NAME" > /dev/null
left=$(leftovers)
check "down leaves no namespace, interface, qdisc or state" $([[ -z $left ]]; echo $?) "left: '${left}'"
out=$("$CLUSTER" down --name "$NAME")
check "down twice" $([[ $out == "no cluster $NAME" ]]; echo $?) "$out"

[[ $FAILED == 0 ]] && echo "cluster test passed" || { echo "cluster test FAILED"; exit 1; }
