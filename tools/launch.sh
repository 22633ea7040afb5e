#!/usr/bin/env bash
# Supervises a training job: runs the given mpirun command; when it fails, relaunches it with
# --resume (from the newest complete checkpoint), at most --max-restarts times, optionally on
# fewer workers (elastic restart, docs/distributed.md).
#
#   tools/launch.sh [--max-restarts N] [--workers-after-failure M] [--hostfile-after-failure FILE]
#                   [--wait S] -- mpirun [mpirun options] -np R diloco train ... --workers M0 ...
#
#   --max-restarts N            relaunches allowed after the first attempt (default 3); once spent,
#                               the script exits with the last attempt's status
#   --workers-after-failure M   relaunches run on M workers: -np becomes M x (R / M0) (the ranks per
#                               worker stay; the command must give -np and --workers), --workers M
#   --hostfile-after-failure F  relaunches pass --hostfile F to mpirun (a list of the hosts that
#                               still answer, written by whoever watches the machines)
#   --wait S                    seconds between a failure and the relaunch (default 0)
#
# Every attempt appends to the run's stderr as usual; the script's own lines start with "launch:".
# Checkpoints at every outer sync (--ckpt-every H, or 1) bound the work lost to one round.
# An attempt has finished when the run's metrics.jsonl (--out) ends with a closing line written by
# this attempt (the summary, or the stop of --stop-at), whatever mpirun's exit status: under
# `mpirun --with-ft` it was 0 for a job that failed, and a lost rank's for one that went on without
# it and finished (docs/distributed.md). Without --out in the command, the exit status decides.
set -uo pipefail

max_restarts=3 workers_after= hostfile_after= wait_s=0
while [[ $# -gt 0 && $1 != -- ]]; do
    case $1 in
        --max-restarts) max_restarts=$2; shift 2 ;;
        --workers-after-failure) workers_after=$2; shift 2 ;;
        --hostfile-after-failure) hostfile_after=$2; shift 2 ;;
        --wait) wait_s=$2; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "launch: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[[ ${1:-} == -- ]] && shift
[[ $# -gt 0 ]] || { echo "launch: no command given: tools/launch.sh [options] -- mpirun ..." >&2; exit 2; }
[[ $max_restarts =~ ^[0-9]+$ ]] || { echo "launch: --max-restarts must be a number >= 0, got '$max_restarts'" >&2; exit 2; }
[[ -z $workers_after || $workers_after =~ ^[1-9][0-9]*$ ]] ||
    { echo "launch: --workers-after-failure must be a number >= 1, got '$workers_after'" >&2; exit 2; }

cmd=("$@")

# The value after option $1 in cmd (empty if absent).
value_of() {
    local i
    for ((i = 0; i + 1 < ${#cmd[@]}; i++)); do
        [[ ${cmd[i]} == "$1" ]] && { echo "${cmd[i+1]}"; return; }
    done
}

# Sets option $1 to $2 in cmd, in place.
set_value() {
    local i
    for ((i = 0; i + 1 < ${#cmd[@]}; i++)); do
        [[ ${cmd[i]} == "$1" ]] && { cmd[i+1]=$2; return; }
    done
}

# The command of a relaunch: --resume, and the smaller layout or the hostfile when asked.
prepare_relaunch() {
    local has_resume=0 a
    for a in "${cmd[@]}"; do [[ $a == --resume ]] && has_resume=1; done
    [[ $has_resume == 1 ]] || cmd+=(--resume)
    if [[ -n $workers_after ]]; then
        local np workers
        np=$(value_of -np) workers=$(value_of --workers)
        if [[ -z $np || -z $workers || $((np % workers)) -ne 0 ]]; then
            echo "launch: --workers-after-failure needs -np R and --workers M in the command, R a multiple of M" >&2
            exit 2
        fi
        set_value -np $((np / workers * workers_after))
        set_value --workers "$workers_after"
    fi
    if [[ -n $hostfile_after ]]; then
        if [[ -n $(value_of --hostfile) ]]; then set_value --hostfile "$hostfile_after"
        else cmd=("${cmd[0]}" --hostfile "$hostfile_after" "${cmd[@]:1}"); fi
    fi
}

# Whether the attempt that started when $1 was made wrote the closing line of the run (the summary or
# a stop): the file is newer than the mark, and its last line is one of the two.
closed_by_this_attempt() {
    local metrics="$(value_of --out)/metrics.jsonl"
    [[ -f $metrics && $metrics -nt $1 ]] || return 1
    tail -n 1 "$metrics" | grep -qE '"summary": true|"event": "stopped"'
}

restarts=0
mark=$(mktemp "${TMPDIR:-/tmp}/launch-mark.XXXXXX")
trap 'rm -f "$mark"' EXIT
while true; do
    touch "$mark"
    sleep 0.01  # a coarse clock must still order the mark before the attempt's writes
    "${cmd[@]}"
    rc=$?
    if [[ -n $(value_of --out) ]]; then
        if closed_by_this_attempt "$mark"; then
            [[ $rc -ne 0 ]] && echo "launch: attempt $((restarts + 1)) exited with $rc after writing its closing" \
                "line (a worker lost and survived under mpirun --with-ft): taking it as finished" >&2
            rc=0
        elif [[ $rc -eq 0 ]]; then
            echo "launch: attempt $((restarts + 1)) exited with 0 but left no summary or stop line in" \
                 "$(value_of --out)/metrics.jsonl (under mpirun --with-ft the ranks' failures do not reach the exit status): taking it as failed" >&2
            rc=1
        fi
    fi
    if [[ $rc -eq 0 ]]; then
        [[ $restarts -gt 0 ]] && echo "launch: finished after $restarts restart(s)" >&2
        exit 0
    fi
    if [[ $restarts -ge $max_restarts ]]; then
        echo "launch: attempt $((restarts + 1)) failed (exit $rc); no restarts left (--max-restarts $max_restarts)" >&2
        exit "$rc"
    fi
    restarts=$((restarts + 1))
    prepare_relaunch
    echo "launch: attempt $restarts failed (exit $rc); restart $restarts of $max_restarts: ${cmd[*]}" >&2
    sleep "$wait_s"
done
