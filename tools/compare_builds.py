#!/usr/bin/env python3
"""Two builds of `diloco` must train identically: a check for refactors of the training loop.

    tools/compare_builds.py OLD_BINARY NEW_BINARY [--only NAME...] [--keep DIR]

Runs one matrix of small training jobs (every algorithm and its variants, 1 and 4 ranks,
checkpoints, stop-and-resume, replica dumps) with each binary on the same data, then compares
  - every metrics.jsonl line, every field but the timings (wall_s, tok_per_s, compute_util and
    the seconds per step by kind, compute_s, comm_s, stage_s),
    as the exact printed text of each number;
  - every file each run wrote under ckpt/, replicas/ and modules/, byte for byte.
DiPaCo's job trains on a second copy of the corpus, cut into paragraphs and routed by the NEW
binary (`prepare --documents paragraphs`, `route --levels 2 --modules 2`).
Prints one line per job and exits non-zero on any difference. 4 ranks run oversubscribed, one
OpenMP thread per rank.
"""
import argparse
import filecmp
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

ENV = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
SMALL = ["--n-layer", "4", "--n-head", "2", "--d-model", "32", "--seq-len", "32", "--warmup", "5",
         "--lr", "3e-3", "--log-every", "0", "--eval-batches", "2", "--eval-every", "7", "--batch", "2",
         "--steps", "20", "--ckpt-every", "10"]
TIMINGS = {"wall_s", "tok_per_s", "compute_util", "compute_s", "comm_s", "stage_s"}

# name -> (ranks or None for one process, options, split: also run stop-at-10 + resume)
JOBS = {
    "dp-1proc": (None, ["--algo", "dp"], True),
    "dp-4": (4, ["--algo", "dp", "--workers", "2"], True),
    "diloco-1proc": (None, ["--algo", "diloco", "--inner-steps", "5"], True),
    "diloco-m2-drop": (4, ["--algo", "diloco", "--workers", "2", "--inner-steps", "5", "--drop-prob", "0.3",
                           "--verify-sync"], True),
    "diloco-m4-eager": (4, ["--algo", "diloco", "--workers", "4", "--inner-steps", "5", "--eager",
                            "--verify-sync"], True),
    "diloco-fedavg-dump": (4, ["--algo", "diloco", "--workers", "4", "--inner-steps", "5", "--outer-opt", "sgd",
                               "--outer-lr", "1", "--outer-momentum", "0", "--dump-replicas"], False),
    "diloco-stop-mid-round": (4, ["--algo", "diloco", "--workers", "2", "--inner-steps", "3"], False),
    "streaming-1proc": (None, ["--algo", "streaming", "--inner-steps", "10", "--fragments", "2", "--overlap", "1"],
                        True),
    "streaming-p2-e3m0-drop": (4, ["--algo", "streaming", "--workers", "2", "--inner-steps", "10", "--fragments", "2",
                                   "--overlap", "1", "--quant", "e3m0", "--drop-prob", "0.3"], True),
    "streaming-p4-fp32-seq": (4, ["--algo", "streaming", "--workers", "4", "--inner-steps", "8", "--fragments", "4",
                                  "--fragment-pattern", "sequential", "--overlap", "2", "--alpha", "0.3"], False),
    "streaming-eager-int8": (4, ["--algo", "streaming", "--workers", "2", "--inner-steps", "10", "--fragments", "2",
                                 "--eager", "--quant", "int8"], True),
    "diloco-link": (4, ["--algo", "diloco", "--workers", "4", "--inner-steps", "5", "--outer-gbps", "10",
                        "--outer-latency-ms", "1"], False),
    # on the routed data (DIPACO_DATA below); a build without DiPaCo differs here by failing
    "dipaco-2x2": (4, ["--algo", "dipaco", "--levels", "2", "--modules", "2", "--workers", "4", "--inner-steps", "5",
                       "--dump-replicas"], True),
}
DIPACO_JOBS = {"dipaco-2x2"}


def run(cmd, ranks):
    full = (["mpirun", "--oversubscribe", "-np", str(ranks)] if ranks else []) + cmd
    p = subprocess.run(full, env=ENV, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({p.returncode}):\n{p.stderr[-2000:]}")


def metric_lines(path):
    """Each metrics line with the timings dropped and every number kept as its printed text."""
    out = []
    for line in open(path):
        fields = json.loads(line, parse_float=str, parse_int=str)
        if fields.get("event") == "stopped":  # the closing line of --stop-at, newer than some builds
            continue
        out.append({k: v for k, v in fields.items() if k not in TIMINGS})
    return out


def files_under(rundir):
    found = []
    for sub in ("ckpt", "replicas", "modules"):
        d = os.path.join(rundir, sub)
        if os.path.isdir(d):
            found += [os.path.join(sub, f) for f in sorted(os.listdir(d))]
    return found


def compare(a, b):
    """Differences between two run directories, as text lines (empty: identical)."""
    diffs = []
    ma, mb = metric_lines(os.path.join(a, "metrics.jsonl")), metric_lines(os.path.join(b, "metrics.jsonl"))
    if len(ma) != len(mb):
        diffs.append(f"metrics.jsonl has {len(ma)} lines against {len(mb)}")
    for i, (x, y) in enumerate(zip(ma, mb)):
        if x != y:
            diffs.append(f"metrics line {i + 1}: {x} != {y}")
            break
    fa, fb = files_under(a), files_under(b)
    if fa != fb:
        diffs.append(f"files differ: {sorted(set(fa) ^ set(fb))}")
    for f in sorted(set(fa) & set(fb)):
        if not filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False):
            diffs.append(f"{f} differs")
    return diffs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--only", nargs="*", help="job names (default: all)")
    ap.add_argument("--keep", help="keep the run directories here")
    args = ap.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="diloco_cmp_")
    os.makedirs(work, exist_ok=True)
    random.seed(7)
    text = os.path.join(work, "corpus.txt")
    with open(text, "w") as f:
        words = "in the beginning was a word and then many more words came after it".split()
        f.write(" ".join(random.choice(words) for _ in range(40000)))
    data = os.path.join(work, "data")
    run([os.path.abspath(args.old), "prepare", "--input", text, "--out", data], None)
    routed = os.path.join(work, "data-routed")
    if any(n in DIPACO_JOBS for n in args.only or JOBS):
        with open(text) as f:
            words = f.read().split()
        paragraphs = os.path.join(work, "paragraphs.txt")
        with open(paragraphs, "w") as f:  # documents of 20 to 200 words
            at = 0
            while at < len(words):
                n = random.randint(20, 200)
                f.write(" ".join(words[at:at + n]) + "\n\n")
                at += n
        run([os.path.abspath(args.new), "prepare", "--input", paragraphs, "--out", routed, "--documents",
             "paragraphs"], None)
        run([os.path.abspath(args.new), "route", "--data", routed, "--levels", "2", "--modules", "2"], None)
    failed = 0
    for name in args.only or JOBS:
        ranks, opts, split = JOBS[name]
        try:
            dirs = {}
            for tag, binary in (("old", args.old), ("new", args.new)):
                base = [os.path.abspath(binary), "train", "--data", routed if name in DIPACO_JOBS else data] + SMALL + opts
                d = os.path.join(work, f"{name}.{tag}")
                shutil.rmtree(d, ignore_errors=True)
                if name == "diloco-stop-mid-round":  # a --stop-at slot that ends inside a round
                    run(base + ["--out", d, "--stop-at", "7"], ranks)
                else:
                    run(base + ["--out", d], ranks)
                dirs[tag] = [d]
                if split:
                    s = d + "-split"
                    shutil.rmtree(s, ignore_errors=True)
                    run(base + ["--out", s, "--stop-at", "10"], ranks)
                    run(base + ["--out", s, "--resume"], ranks)
                    dirs[tag].append(s)
            diffs = [line for a, b in zip(dirs["old"], dirs["new"]) for line in compare(a, b)]
        except Exception as e:  # a job that fails on one build is a difference too
            diffs = [str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)]
        failed += bool(diffs)
        print(f"{'same' if not diffs else 'DIFF'} {name}" + "".join(f"\n    {d}" for d in diffs[:5]), flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(args.only or JOBS) - failed} identical, {failed} different")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
