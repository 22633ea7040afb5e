#!/usr/bin/env bash
# The fuzz benchmark: runs every libFuzzer target of tests/fuzz/ for SECONDS each and prints
# executions, coverage and crashes per target (docs/testing.md has the figures so far).
#
#   tools/fuzz.sh SECONDS [TARGET...]        a session: grows the committed corpora
#                                            (tests/fuzz/corpus/<target>/, minimised with -merge)
#                                            and appends one line per target to
#                                            tests/fuzz/executions.tsv, the running totals
#   tools/fuzz.sh --smoke SECONDS [TARGET...]  CI: the committed corpora are read, never written;
#                                            exit 1 when any target crashed
#
# Builds build-fuzz/ (clang, -DDILOCO_FUZZ=ON) when its targets are missing. Each run is held to
# the targets' memory budget (-malloc_limit_mb, tests/fuzz/targets.h) and runs under nice. A crash
# leaves its input in build-fuzz/crashes/<target>/; it goes to tests/fuzz/regressions/<target>/
# once fixed, where the plain test fuzz_replay runs it from then on.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
SECONDS_EACH=${1:?usage: tools/fuzz.sh [--smoke] SECONDS [TARGET...]}
shift
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(shard checkpoint llmc meta config)
BUILD=$ROOT/build-fuzz
BUDGET_MB=64  # = kAllocationBudgetBytes
declare -A MAX_LEN=([shard]=8192 [checkpoint]=65536 [llmc]=32768 [meta]=4096 [config]=4096)

need_build=0
for t in "${TARGETS[@]}"; do [ -x "$BUILD/tests/fuzz/fuzz_$t" ] || need_build=1; done
if [ $need_build = 1 ] || [ $SMOKE = 1 ]; then
    command -v clang++ >/dev/null || { echo "fuzz: clang++ is missing (apt-get install clang)" >&2; exit 2; }
    cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
          -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g" -DDILOCO_FUZZ=ON \
          -DDILOCO_WITH_MPI=OFF -DDILOCO_WITH_CUDA=OFF -DDILOCO_EMULATE_CUDA=OFF -DDILOCO_BUILD_TESTS=OFF >/dev/null
    nice -n 5 cmake --build "$BUILD" -j "$(nproc)" --target "${TARGETS[@]/#/fuzz_}" >/dev/null
fi

printf '%-11s %8s %12s %10s %8s %8s %8s\n' target seconds executions exec/s cov ft crashes
failed=0
for t in "${TARGETS[@]}"; do
    corpus=$ROOT/tests/fuzz/corpus/$t
    scratch=$(mktemp -d /tmp/diloco_fuzz_$t.XXXXXX)
    crashes=$BUILD/crashes/$t
    mkdir -p "$crashes"
    before=$(ls "$crashes" | wc -l)
    # new inputs go to the scratch folder (the first one named); the committed corpus is only read
    set +e
    started=$SECONDS
    nice -n 5 "$BUILD/tests/fuzz/fuzz_$t" "$scratch" "$corpus" -max_total_time="$SECONDS_EACH" \
        -max_len="${MAX_LEN[$t]}" -malloc_limit_mb=$BUDGET_MB -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$crashes/" -print_final_stats=1 >"$scratch.log" 2>&1
    rc=$?
    ran=$((SECONDS - started))  # shorter than asked when a crash stopped it
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch.log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$scratch.log" | tail -1)  # until a crash stops it
    last=$(grep -E '^#[0-9]+' "$scratch.log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    found=$(( $(ls "$crashes" | wc -l) - before ))
    [ $rc -eq 0 ] || [ $found -gt 0 ] || found=1  # died without leaving an input: still a failure
    printf '%-11s %8s %12s %10s %8s %8s %8s\n' "$t" "$ran" "${execs:-0}" \
        "${rate:-0}" "${cov:-?}" "${ft:-?}" "$found"
    if [ $found -gt 0 ]; then
        failed=1
        grep -m3 -E 'ERROR|fuzz target|SUMMARY' "$scratch.log" | sed 's/^/    /' || true
        cp "$scratch.log" "$crashes/last.log"
    fi
    if [ $SMOKE = 0 ]; then
        # minimise: the committed corpus becomes the smallest set with the coverage of both
        merged=$(mktemp -d /tmp/diloco_fuzz_merged.XXXXXX)
        nice -n 5 "$BUILD/tests/fuzz/fuzz_$t" -merge=1 -max_len="${MAX_LEN[$t]}" -malloc_limit_mb=$BUDGET_MB \
            "$merged" "$corpus" "$scratch" >/dev/null 2>&1 || true
        if [ -n "$(ls "$merged")" ]; then
            # the seeds stay, under their names; what the merge kept besides them replaces the rest
            seeds=$(sha1sum "$corpus"/seed-* | cut -d' ' -f1)
            find "$corpus" -type f ! -name 'seed-*' -delete
            for f in "$merged"/*; do
                grep -qx "$(sha1sum "$f" | cut -d' ' -f1)" <<<"$seeds" || cp "$f" "$corpus/"
            done
        fi
        rm -rf "$merged"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%F)" "$t" "$ran" "${execs:-0}" "${cov:-?}" "$found" \
            >> "$ROOT/tests/fuzz/executions.tsv"
    fi
    rm -rf "$scratch" "$scratch.log"
done
if [ $SMOKE = 0 ]; then
    echo "== executions so far, all sessions (tests/fuzz/executions.tsv)"
    awk -F'\t' '{n[$2] += $4; s[$2] += $3} END {for (t in n) printf "%-11s %12d executions in %d s\n", t, n[t], s[t]}' \
        "$ROOT/tests/fuzz/executions.tsv" | sort
fi
exit $failed
