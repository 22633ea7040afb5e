#!/usr/bin/env bash
# The GPU session script, rehearsed on the CPU: tools/gpu_bundle.sh makes the bundle a GPU
# machine gets (sm_90 binaries, Open MPI from its wheel, libraries), and tools/gpu_session.sh
# --dry-run unpacks it and runs every phase it can at a tiny size. Fails when any step fails or
# when results.md lacks what a session must report.
# usage: tests/gpu_session_dry_run.sh   (from anywhere; about 6 minutes on 2 cores, most of it the build)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mktemp -d /tmp/gpu_dry.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
bash "$ROOT/tools/gpu_bundle.sh" || { echo "FAIL: tools/gpu_bundle.sh"; exit 1; }
OUT="$OUT" GPU_WORK="$OUT/work" bash "$ROOT/tools/gpu_session.sh" --dry-run > "$OUT/stdout.txt" 2>&1
rc=$?
failures=0
check() {  # check DESCRIPTION COMMAND...
    if "${@:2}"; then echo "ok: $1"; else echo "FAIL: $1"; failures=$((failures + 1)); fi
}
check "the dry run exits 0 (exit $rc)" test $rc -eq 0
check "session.log and results.md are in \$OUT" test -s "$OUT/session.log" -a -s "$OUT/results.md"
check "the carried binaries started" grep -q "setup: the carried binaries start" "$OUT/session.log"
check "no step failed or timed out" bash -c "! grep -E '\| (FAILED|TIMEOUT)' '$OUT/results.md'"
for s in "gpt2 ours fp32 B=4" "oracle export" "native nccl (1 rank)" "bench attention" "train 20 steps"; do
    check "results.md reports '$s' as ok" grep -q "| $s | ok |" "$OUT/results.md"
done
check "the throughput figure is a number" grep -Eq "ours \(fp32, B=4, T=1024\): [0-9]+ tok/s" "$OUT/results.md"
check "train.jsonl came back with the time split" grep -q '"stage_s"' "$OUT/train.jsonl"
[ $failures -eq 0 ] || { echo "--- session.log (end)"; tail -40 "$OUT/session.log"; }
echo "$failures failure(s)"
exit $((failures > 0))
