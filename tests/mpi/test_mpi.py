#!/usr/bin/env python3
"""Distributed training under mpirun on the CPU: 4 ranks oversubscribed on 2 cores.

    test_mpi.py --diloco build/diloco

Each check prints one line; the last line is 'N passed, M failed'. Exits non-zero on failure.
"""
import argparse
import glob
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

RESULTS = []
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
SMALL = ["--n-layer", "2", "--n-head", "2", "--d-model", "32", "--seq-len", "32", "--warmup", "5",
         "--lr", "3e-3", "--log-every", "0", "--eval-batches", "2"]


def check(name, ok, detail):
    RESULTS.append(bool(ok))
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)


def run(args, ranks=None, timeout=300, expect_ok=True):
    cmd = (["mpirun", "--oversubscribe", "-np", str(ranks)] if ranks else []) + args
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if expect_ok and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p


def metrics(rundir):
    lines = [json.loads(l) for l in open(os.path.join(rundir, "metrics.jsonl"))]
    losses = [l["loss"] for l in lines if "loss" in l]
    summary = [l for l in lines if l.get("summary")][0]
    return np.array(losses), summary


def bytes_inner(rundir):
    """rank 0's cumulative worker-link bytes at the last step"""
    lines = [json.loads(l) for l in open(os.path.join(rundir, "metrics.jsonl"))]
    return [l["bytes_inner"] for l in lines if "bytes_inner" in l][-1]


def max_rel(a, b):
    return float(np.max(np.abs(a - b) / np.abs(b)))


def llmc_floats(path):
    return np.fromfile(path, dtype=np.float32, offset=1024)


def ckpt_params(path):
    """The weights of a checkpoint (docs/formats.md): a 24-byte header, then 5 i32, u64 num_params,
    i64 step, u64 data cursor, 4 u64 of RNG state, then num_params floats."""
    raw = open(path, "rb").read()
    n = int(np.frombuffer(raw, dtype=np.uint64, count=1, offset=44)[0])
    return np.frombuffer(raw, dtype=np.float32, count=n, offset=100)


def outer_bytes_per_rank(summary, steps):
    """Across-worker bytes of the outer exchanges per rank: the run's total over all ranks, less the
    per-step losses sent to rank 0 (8 bytes per step and rank)."""
    return (summary["bytes_outer_total"] - 8 * steps * summary["ranks"]) / summary["ranks"]


def nesterov(theta, delta, mom, lr, mu):
    """optim/outer.h in float64: mom = mu mom + delta; theta -= lr (delta + mu mom)."""
    mom = mu * mom + delta
    return theta - lr * (delta + mu * mom), mom


def simulate_outer(dumps, mode, M, rounds, lr, mu):
    """The global model after each outer sync, per replica, from the replicas' weights before each
    sync alone (float64): DiLoCo, eager (own fresh + others' previous) or naive one-round delay.
    dumps(step_round, m, synced) reads a dump; round 0's synced dump is theta(0)."""
    g = [dumps(0, m, True) for m in range(M)]
    mom = [np.zeros_like(g[0]) for _ in range(M)]
    prev, out = None, []
    for r in range(1, rounds + 1):
        last = r == rounds
        pre = [dumps(r, m, False) for m in range(M)]
        d = [g[m] - pre[m] for m in range(M)]  # each replica against its own copy of theta
        if mode == "diloco" or (mode == "eager" and last):
            mean = sum(d) / M
            for m in range(M):
                g[m], mom[m] = nesterov(g[m], mean, mom[m], lr, mu)
            if mode == "eager":  # the last eager round ends on the replicas' mean
                g = [sum(g) / M] * M
        elif mode == "eager":
            for m in range(M):
                others = sum(prev[j] for j in range(M) if j != m) if prev else (M - 1) * d[m]
                g[m], mom[m] = nesterov(g[m], (d[m] + others) / M, mom[m], lr, mu)
        elif mode == "delayed":
            for m in range(M):
                if prev:
                    g[m], mom[m] = nesterov(g[m], sum(prev) / M, mom[m], lr, mu)
                if last:
                    g[m], mom[m] = nesterov(g[m], sum(d) / M, mom[m], lr, mu)
        prev = d
        out.append([x.copy() for x in g])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--diloco", required=True)
    ap.add_argument("--diloco-emu", help="the build whose --device cuda is the CUDA emulator")
    args = ap.parse_args()
    bin_ = os.path.abspath(args.diloco)
    work = tempfile.mkdtemp(prefix="diloco_mpi_")
    try:
        random.seed(1)
        words = "the cat sat on a mat and dog ran far away home".split()
        with open(os.path.join(work, "a.txt"), "w") as f:  # two corpora of different kinds of text
            f.write(" ".join(random.choice(words) for _ in range(30000)))
        with open(os.path.join(work, "b.txt"), "w") as f:
            f.write(" ".join(str(random.randint(0, 999)) for _ in range(30000)))
        data = os.path.join(work, "data")
        run([bin_, "prepare", "--input", os.path.join(work, "a.txt"), os.path.join(work, "b.txt"), "--out", data])
        D = lambda name: os.path.join(work, name)
        base = [bin_, "train", "--data", data] + SMALL

        # 1. DP over 4 ranks (2 workers x 2) = one process with 4x the batch
        run(base + ["--out", D("dp4"), "--steps", "20", "--batch", "2", "--algo", "dp", "--workers", "2"], ranks=4)
        run(base + ["--out", D("one"), "--steps", "20", "--batch", "8"])
        a, _ = metrics(D("dp4"))
        b, _ = metrics(D("one"))
        check("DP over 4 ranks = 1 process with 4x batch, 20 steps", len(a) == 20 and max_rel(a, b) <= 1e-5,
              f"max relative loss difference {max_rel(a, b):.1e} (tolerance 1e-5)")

        # 2. DiLoCo M=1 (one worker of 2 ranks), outer SGD lr 1 = single-process training, H=5
        run(base + ["--out", D("m1"), "--steps", "20", "--batch", "2", "--algo", "diloco", "--workers", "1",
                    "--inner-steps", "5", "--outer-opt", "sgd", "--outer-lr", "1", "--outer-momentum", "0"], ranks=2)
        run(base + ["--out", D("one4"), "--steps", "20", "--batch", "4"])
        a, _ = metrics(D("m1"))
        b, _ = metrics(D("one4"))
        check("DiLoCo M=1, outer SGD lr 1, H=5 = single-process training", max_rel(a, b) <= 1e-5,
              f"max relative loss difference {max_rel(a, b):.1e} (tolerance 1e-5)")

        # 3. FedAvg: M=4, outer SGD lr 1, no momentum: the global model is the replicas' mean
        run(base + ["--out", D("fedavg"), "--steps", "10", "--batch", "2", "--algo", "diloco", "--workers", "4",
                    "--inner-steps", "5", "--outer-opt", "sgd", "--outer-lr", "1", "--outer-momentum", "0",
                    "--dump-replicas", "--ckpt-every", "5"], ranks=4)
        ok, worst = True, 0.0
        for step in (5, 10):
            reps = sorted(glob.glob(D(f"fedavg/replicas/step_{step:08d}.replica_???.bin")))
            ok &= len(reps) == 4
            mean = np.mean([llmc_floats(r).astype(np.float64) for r in reps], axis=0)
            run([bin_, "export", "--ckpt", D(f"fedavg/ckpt/step_{step:08d}.ckpt"), "--out", D(f"g{step}.bin")])
            g = llmc_floats(D(f"g{step}.bin"))
            spread = np.max(np.abs(llmc_floats(reps[0]) - llmc_floats(reps[1])))
            ok &= spread > 1e-4  # the replicas really differ before the average
            worst = max(worst, float(np.max(np.abs(g - mean))))
        # theta - (theta - mean) in fp32: a few ulp of the weights' size (|w| < 1)
        check("FedAvg (M=4, outer SGD lr 1) gives the mean of the replicas", ok and worst <= 1e-6,
              f"max |global - mean| {worst:.1e} over 2 rounds (tolerance 1e-6)")

        # 4. 2 workers x 2 ranks trains, and all ranks agree after every outer sync
        p = run(base + ["--out", D("w2"), "--steps", "30", "--batch", "2", "--algo", "diloco", "--workers", "2",
                        "--inner-steps", "5", "--verify-sync", "--shard", "noniid"], ranks=4)
        a, s = metrics(D("w2"))
        check("2 workers x 2 ranks (noniid shards) train, replicas agree after each sync",
              a[-1] < a[0] - 1.0 and s["final_val_loss"] < a[0] - 1.0,
              f"loss {a[0]:.3f} -> {a[-1]:.3f}, val {s['final_val_loss']:.3f}; weights checked equal at 6 syncs")

        # 5. outer bytes: DP / DiLoCo(H=10) over the same steps is about 10
        run(base + ["--out", D("bdp"), "--steps", "20", "--batch", "2", "--algo", "dp", "--workers", "4"], ranks=4)
        run(base + ["--out", D("bdl"), "--steps", "20", "--batch", "2", "--algo", "diloco", "--workers", "4",
                    "--inner-steps", "10"], ranks=4)
        _, sdp = metrics(D("bdp"))
        _, sdl = metrics(D("bdl"))
        ratio = sdp["bytes_outer_total"] / sdl["bytes_outer_total"]
        check("DP's outer bytes / DiLoCo's with H=10 is about 10", 9.5 <= ratio <= 10.5,
              f"{sdp['bytes_outer_total']:.0f} / {sdl['bytes_outer_total']:.0f} = {ratio:.3f}")

        # 6. drop-out runs, is reproducible for a seed, and differs from no drop-out
        for name, p in (("drop1", "0.5"), ("drop2", "0.5"), ("drop0", "0")):
            run(base + ["--out", D(name), "--steps", "20", "--batch", "2", "--algo", "diloco", "--workers", "4",
                        "--inner-steps", "2", "--drop-prob", p, "--verify-sync"], ranks=4)
        a, _ = metrics(D("drop1"))
        b, _ = metrics(D("drop2"))
        c, _ = metrics(D("drop0"))
        check("--drop-prob 0.5 is reproducible and changes the run", np.array_equal(a, b) and not np.array_equal(a, c),
              f"two runs identical; final loss {a[-1]:.4f} with drops, {c[-1]:.4f} without")

        # 7. a configuration that differs between ranks ends cleanly, under a timeout
        cmd = ["mpirun", "--oversubscribe", "-np", "1"] + base + ["--out", D("mis"), "--steps", "5", "--batch", "2",
               "--lr", "1e-3", ":", "-np", "1"] + base + ["--out", D("mis"), "--steps", "5", "--batch", "2", "--lr", "2e-3"]
        try:
            p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=60)
            lines = [l for l in p.stderr.splitlines() if l.startswith("error:")]
            check("mismatched config across ranks: clean error, non-zero exit", p.returncode != 0 and len(lines) == 1
                  and "differs between rank 0 and rank 1" in lines[0], f"exit {p.returncode}: {lines}")
        except subprocess.TimeoutExpired:
            check("mismatched config across ranks: clean error, non-zero exit", False, "hung past 60 s")

        # 8. ranks not divisible by workers
        p = run(base + ["--out", D("div"), "--steps", "5", "--workers", "2"], ranks=3, expect_ok=False, timeout=60)
        errs = [l for l in p.stderr.splitlines() if l.startswith("error")]
        check("3 ranks with --workers 2: one clear error", p.returncode != 0 and len(errs) == 1 and "not a multiple of --workers" in errs[0],
              p.stderr.strip().splitlines()[0] if p.stderr.strip() else "(no stderr)")

        # 9. resume of a distributed run: 20 steps straight = 10, stop, resume 10 (bit for bit)
        # Streaming with P=2, H=10, tau=1 has fragment 0's exchange in flight at the checkpoint
        # (e3m0: by reduce-scatter, the default, and by all-gather).
        streaming_resume = ["--algo", "streaming", "--workers", "2", "--inner-steps", "10", "--fragments", "2"]
        for name, algo, extra, ranks in (
                ("diloco", "diloco", ["--workers", "2", "--inner-steps", "5", "--drop-prob", "0.3"], 4),
                ("dp", "dp", ["--workers", "2"], 4),
                ("diloco-eager", "diloco", ["--workers", "2", "--inner-steps", "5", "--eager"], 4),
                ("streaming-e3m0-drop", "streaming", streaming_resume[2:] + ["--overlap", "1", "--quant", "e3m0",
                                                                           "--drop-prob", "0.3"], 4),
                ("streaming-eager", "streaming", streaming_resume[2:] + ["--eager"], 4),
                ("streaming-ag-e3m0-drop", "streaming", streaming_resume[2:] + ["--overlap", "1", "--quant", "e3m0",
                                                                              "--exchange", "allgather",
                                                                              "--drop-prob", "0.3"], 4),
                ("streaming-1proc", "streaming", ["--inner-steps", "10", "--fragments", "2", "--overlap", "1"], None)):
            common = base + ["--steps", "20", "--batch", "2", "--algo", algo, "--eval-every", "7"] + extra
            run(common + ["--out", D(f"{name}-straight")], ranks=ranks)
            run(common + ["--out", D(f"{name}-split"), "--stop-at", "10"], ranks=ranks)
            run(common + ["--out", D(f"{name}-split"), "--resume"], ranks=ranks)
            a, sa = metrics(D(f"{name}-straight"))
            b, sb = metrics(D(f"{name}-split"))
            check(f"{name} on {ranks or 1} rank(s): stop at 10 + --resume = 20 straight, bit for bit",
                  len(a) == 20 and np.array_equal(a, b) and sa["final_val_loss"] == sb["final_val_loss"],
                  f"final loss {a[-1]:.6f} vs {b[-1]:.6f}, val {sa['final_val_loss']:.6f} vs {sb['final_val_loss']:.6f}")

        # 10. Streaming DiLoCo
        sbase = [bin_, "train", "--data", data, "--n-layer", "4", "--n-head", "2", "--d-model", "32", "--seq-len", "32",
                 "--warmup", "5", "--lr", "3e-3", "--log-every", "0", "--eval-batches", "2", "--steps", "20",
                 "--batch", "2", "--workers", "2", "--inner-steps", "10"]
        run(sbase + ["--out", D("s-diloco"), "--algo", "diloco"], ranks=4)
        run(sbase + ["--out", D("s-p1"), "--algo", "streaming", "--fragments", "1", "--overlap", "0", "--quant", "fp32"], ranks=4)
        a, _ = metrics(D("s-diloco"))
        b, s1 = metrics(D("s-p1"))
        check("streaming P=1, overlap 0, fp32 = diloco, loss for loss", np.array_equal(a, b), f"final loss {a[-1]:.6f} vs {b[-1]:.6f}")
        _, sd = metrics(D("s-diloco"))
        check("streaming fp32 goes through an allreduce: the same bytes as DiLoCo",
              sd["bytes_outer_total"] == s1["bytes_outer_total"], f"{s1['bytes_outer_total']} vs {sd['bytes_outer_total']}")
        # eager streaming: with M=1 it is plain streaming; with drop-out, replicas miss rounds
        one = sbase[:-6] + ["--batch", "2", "--workers", "1", "--inner-steps", "10", "--algo", "streaming", "--fragments", "2"]
        run(one + ["--out", D("s-eager-m1"), "--eager"], ranks=2)
        run(one + ["--out", D("s-plain-m1")], ranks=2)
        a, _ = metrics(D("s-eager-m1"))
        b, _ = metrics(D("s-plain-m1"))
        check("streaming eager with M=1 = streaming, loss for loss", np.array_equal(a, b), f"final loss {a[-1]:.6f} vs {b[-1]:.6f}")
        run(sbase + ["--out", D("s-p2"), "--algo", "streaming", "--fragments", "2"], ranks=4)
        _, s2 = metrics(D("s-p2"))
        ratio = s2["peak_bytes_step"] / s1["peak_bytes_step"]
        check("peak bytes per sync with P=2 are about half of P=1's", 0.4 <= ratio <= 0.6,
              f"{s2['peak_bytes_step']} / {s1['peak_bytes_step']} = {ratio:.3f}")
        # --verify-sync: every fragment's global values checked equal on both workers after each of its
        # syncs (the eager run: after the last, where the drifting copies end on their mean)
        run(sbase + ["--out", D("s-eager"), "--algo", "streaming", "--fragments", "2", "--eager", "--verify-sync"], ranks=4)
        run(sbase + ["--out", D("s-drop"), "--algo", "streaming", "--fragments", "2", "--drop-prob", "0.5", "--verify-sync"],
            ranks=4)
        a, se = metrics(D("s-eager"))
        b, sdr = metrics(D("s-drop"))
        c, _ = metrics(D("s-p2"))
        check("streaming eager (M=2) and streaming with drop-out train, differ from plain streaming, fragments verified equal",
              a[-1] < a[0] - 1.0 and b[-1] < b[0] - 1.0 and not np.array_equal(a, c) and not np.array_equal(b, c),
              f"val eager {se['final_val_loss']:.4f}, drop 0.5 {sdr['final_val_loss']:.4f}")
        run(sbase + ["--out", D("s-e3m0"), "--algo", "streaming", "--fragments", "1", "--quant", "e3m0", "--overlap", "1"], ranks=4)
        run(sbase + ["--out", D("s-fp32"), "--algo", "streaming", "--fragments", "1", "--quant", "fp32", "--overlap", "1"], ranks=4)
        _, se = metrics(D("s-e3m0"))
        _, sf = metrics(D("s-fp32"))
        ratio = se["bytes_outer_total"] / sf["bytes_outer_total"]
        check("e3m0 moves at most 1/6 of fp32's bytes", ratio <= 1 / 6 and np.isfinite(se["final_val_loss"]),
              f"{se['bytes_outer_total']:.0f} / {sf['bytes_outer_total']:.0f} = {ratio:.4f}")

        # 11. eager outer updates: M=1 is DiLoCo; with M=4 the replicas end on one model
        ebase = base + ["--steps", "20", "--batch", "2", "--inner-steps", "5", "--algo", "diloco"]
        run(ebase + ["--out", D("eager-m1"), "--workers", "1", "--eager"], ranks=2)
        run(ebase + ["--out", D("plain-m1"), "--workers", "1"], ranks=2)
        a, _ = metrics(D("eager-m1"))
        b, _ = metrics(D("plain-m1"))
        check("eager with M=1 = DiLoCo", np.array_equal(a, b), f"final loss {a[-1]:.6f} vs {b[-1]:.6f}")
        run(ebase + ["--out", D("eager-m4"), "--workers", "4", "--eager", "--verify-sync"], ranks=4)
        run(ebase + ["--out", D("plain-m4"), "--workers", "4"], ranks=4)
        a, se = metrics(D("eager-m4"))
        b, sp = metrics(D("plain-m4"))
        # Comm checks at every completion that a non-blocking send buffer was not written while in
        # flight; eager DiLoCo once wrote round t's gradient before waiting for round t-1's
        # all-gather of the same buffer, and these runs then ended with that error
        check("eager with M=4 trains (no send buffer written in flight), differs from DiLoCo, and ends with equal replicas",
              a[-1] < a[0] - 1.0 and not np.array_equal(a, b),
              f"val {se['final_val_loss']:.4f} (DiLoCo {sp['final_val_loss']:.4f}); weights checked equal at the end")

        # 13. the outer syncs of DiLoCo, eager DiLoCo and the naive one-round delay, M=3, against a
        # float64 reference fed only the replicas' weights before each sync (--dump-replicas)
        obase = base + ["--steps", "12", "--batch", "2", "--algo", "diloco", "--workers", "3", "--inner-steps", "3",
                        "--outer-lr", "0.7", "--outer-momentum", "0.9", "--dump-replicas"]
        sims = {}
        for mode, flag in (("diloco", []), ("eager", ["--eager"]), ("delayed", ["--delayed", "--verify-sync"])):
            run(obase + ["--out", D(f"ref-{mode}")] + flag, ranks=3)
            def dumps(r, m, synced, mode=mode):
                f = D(f"ref-{mode}/replicas/step_{3 * r:08d}.replica_{m:03d}{'.synced' if synced else ''}.bin")
                return llmc_floats(f).astype(np.float64)
            sims[mode] = (dumps, [[dumps(r, m, True) for m in range(3)] for r in range(1, 5)])
        for mode, (dumps, got) in sims.items():
            want = simulate_outer(dumps, mode, 3, 4, 0.7, 0.9)
            err = max(float(np.max(np.abs(w - g))) for wr, gr in zip(want, got) for w, g in zip(wr, gr))
            # the wrong rule on the same dumps must be far off, or the check could not tell them apart
            other = {"diloco": "eager", "eager": "delayed", "delayed": "diloco"}[mode]
            wrong = simulate_outer(dumps, other, 3, 4, 0.7, 0.9)
            far = max(float(np.max(np.abs(w - g))) for wr, gr in zip(wrong, got) for w, g in zip(wr, gr))
            # fp32 outer steps on weights |w| < 1 against float64: a few 1e-7 per round
            check(f"{mode} outer syncs (M=3, 4 rounds) = a float64 reference of the rule", err <= 1e-5 and far > 1e-3,
                  f"max |ours - reference| {err:.1e} (tolerance 1e-5); the {other} rule on the same weights: {far:.1e}")

        # 14. drop-out as in the DiLoCo paper: a lost outer gradient leaves the mean over the
        # replicas that delivered, and every replica takes the new global model
        run(base + ["--out", D("drop-fedavg"), "--steps", "12", "--batch", "2", "--algo", "diloco", "--workers", "3",
                    "--inner-steps", "2", "--drop-prob", "0.5", "--outer-opt", "sgd", "--outer-lr", "1",
                    "--outer-momentum", "0", "--dump-replicas", "--verify-sync"], ranks=3)
        ok, partial, worst = True, 0, 0.0
        for step in range(2, 13, 2):
            pre = [llmc_floats(D(f"drop-fedavg/replicas/step_{step:08d}.replica_{m:03d}.bin")).astype(np.float64)
                   for m in range(3)]
            got = [llmc_floats(D(f"drop-fedavg/replicas/step_{step:08d}.replica_{m:03d}.synced.bin")) for m in range(3)]
            ok &= all(np.array_equal(got[0], g) for g in got)  # every replica took the global model
            # FedAvg: the global model is the mean of the replicas that delivered, some non-empty subset
            fits = [s for s in range(1, 8) if np.max(np.abs(sum(pre[m] for m in range(3) if s >> m & 1)
                                                            / bin(s).count("1") - got[0])) <= 1e-6]
            ok &= len(fits) >= 1
            partial += bool(fits) and 7 not in fits
        check("--drop-prob 0.5 (paper): the mean of the delivered replicas, taken by every replica", ok and partial >= 1,
              f"6 rounds, {partial} with a replica's gradient lost; all replicas equal after each")

        # 15. the reduce-scatter exchange of compressed outer gradients (optim/exchange.h): trains at
        # M = 2 and 4, replicas end bit-identical, and a rank's bytes stay about 2(M-1)/M payloads
        # while the all-gather's grow as (M-1) payloads
        rbase = base + ["--steps", "20", "--batch", "2", "--algo", "streaming", "--inner-steps", "5",
                        "--fragments", "2", "--overlap", "1", "--quant", "e3m0", "--quant-block", "64"]
        per_rank, finals = {}, {}
        for M in (2, 4):
            for ex in ("allgather", "reduce-scatter"):
                name = f"rs-{ex}-m{M}"
                run(rbase + ["--out", D(name), "--workers", str(M), "--exchange", ex], ranks=M)
                a, sm = metrics(D(name))
                per_rank[ex, M] = outer_bytes_per_rank(sm, 20)
                finals[ex, M] = (a, sm, [ckpt_params(D(f"{name}/ckpt/step_00000020.rank_{r:05d}.ckpt")) for r in range(M)])
        for M in (2, 4):
            a, sm, w = finals["reduce-scatter", M]
            g, _, _ = finals["allgather", M]
            same = all(np.array_equal(w[0], x) for x in w[1:])
            check(f"streaming e3m0 by reduce-scatter, M={M}: trains, replicas end bit-identical, close to all-gather",
                  same and a[-1] < a[0] - 1.0 and not np.array_equal(a, g) and abs(a[-1] - g[-1]) < 0.05,
                  f"loss {a[0]:.3f} -> {a[-1]:.4f} (all-gather {g[-1]:.4f}), val {sm['final_val_loss']:.4f}")
        # same exchanges in every run, and each all-gather moves (M-1) payloads per rank: the
        # payload bytes per exchange round follow from the M=2 all-gather
        payload = per_rank["allgather", 2]
        want = {(ex, M): payload * ((M - 1) if ex == "allgather" else 2 * (M - 1) / M)
                for ex in ("allgather", "reduce-scatter") for M in (2, 4)}
        worst = max(abs(per_rank[k] / want[k] - 1) for k in want)
        check("bytes per rank: all-gather (M-1) payloads, reduce-scatter 2(M-1)/M (M = 2, 4)", worst <= 0.005
              and per_rank["allgather", 4] / per_rank["allgather", 2] > 2.9
              and per_rank["reduce-scatter", 4] / per_rank["reduce-scatter", 2] < 1.51,
              "per rank, in payloads: " + ", ".join(f"{ex} M={M} {per_rank[ex, M] / payload:.4f}" for ex, M in want)
              + f" (formula worst {worst:.1e})")
        run(rbase + ["--out", D("rs-eager"), "--workers", "4", "--exchange", "reduce-scatter", "--overlap", "0",
                     "--eager"], ranks=4)
        a, se = metrics(D("rs-eager"))
        w = [ckpt_params(D(f"rs-eager/ckpt/step_00000020.rank_{r:05d}.ckpt")) for r in range(4)]
        check("eager streaming by reduce-scatter, M=4: trains, replicas end bit-identical",
              a[-1] < a[0] - 1.0 and all(np.array_equal(w[0], x) for x in w[1:]),
              f"loss {a[0]:.3f} -> {a[-1]:.4f}, val {se['final_val_loss']:.4f}")

        # 15b. --comm-progress thread (comm/progress.h): a thread polls MPI while the exchanges are in
        # flight; what arrives does not depend on when, so the runs above come out bit for bit
        run(rbase + ["--out", D("rs-thread-m4"), "--workers", "4", "--exchange", "reduce-scatter",
                     "--comm-progress", "thread"], ranks=4)
        run(sbase + ["--out", D("s-fp32-thread"), "--algo", "streaming", "--fragments", "1", "--quant", "fp32",
                     "--overlap", "1", "--comm-progress", "thread"], ranks=4)
        a, st = metrics(D("rs-thread-m4"))
        w = [ckpt_params(D(f"rs-thread-m4/ckpt/step_00000020.rank_{r:05d}.ckpt")) for r in range(4)]
        b, sb, wb = finals["reduce-scatter", 4]
        c, sc = metrics(D("s-fp32-thread"))
        d, sd = metrics(D("s-fp32"))
        check("--comm-progress thread: streaming e3m0 reduce-scatter (M=4) and fp32 allreduce (overlap 1) = the runs "
              "without the thread, bit for bit; the thread polled, the others not",
              np.array_equal(a, b) and all(np.array_equal(x, y) for x, y in zip(w, wb)) and np.array_equal(c, d)
              and st["progress_polls"] > 0 and sc["progress_polls"] > 0 and sb["progress_polls"] == 0,
              f"polls {st['progress_polls']} and {sc['progress_polls']} (without: {sb['progress_polls']}), "
              f"val {st['final_val_loss']:.6f} vs {sb['final_val_loss']:.6f}")

        # 16. Asynchronous Local-SGD (optim/async_local_sgd.h): a server rank besides the M workers
        def async_run(name, M, extra, ranks=None):
            return run(base + ["--out", D(name), "--batch", "2", "--algo", "async", "--workers", str(M)] + extra,
                       ranks=ranks or M + 1)

        def async_lines(rundir):
            lines = [json.loads(l) for l in open(os.path.join(rundir, "metrics.jsonl"))]
            return ([l for l in lines if "update" in l and "loss" in l], [l for l in lines if "pushes" in l],
                    [l for l in lines if l.get("summary")][0])

        def final_weights(rundir, steps):
            return ckpt_params(os.path.join(rundir, "ckpt", f"step_{steps:08d}.ckpt"))

        # one worker: pull, H steps, push, one Nesterov step on the server = DiLoCo M=1, the same
        # float operations in the same order, so the final weights are equal bit for bit
        async_run("as-m1", 1, ["--steps", "20", "--inner-steps", "5"])
        run(base + ["--out", D("dl-m1"), "--steps", "20", "--batch", "2", "--algo", "diloco", "--workers", "1",
                    "--inner-steps", "5"])
        a, b = final_weights(D("as-m1"), 20), final_weights(D("dl-m1"), 20)
        _, _, sa = async_lines(D("as-m1"))
        _, sb = metrics(D("dl-m1"))
        check("async with one worker = DiLoCo M=1 (H=5, 20 steps), bit for bit", np.array_equal(a, b) and
              sa["final_val_loss"] == sb["final_val_loss"],
              f"max |difference| of the final weights {float(np.max(np.abs(a - b))):.1e}; val "
              f"{sa['final_val_loss']:.6f} vs {sb['final_val_loss']:.6f}")

        # the virtual clock fixes the arrival order: delayed Nesterov with a buffer of 1 is per-arrival
        # Nesterov (the same operations), and a buffer of 3 is not; a rerun repeats itself
        vc = ["--steps", "20", "--inner-steps", "4", "--virtual-step-s", "1", "--worker-speeds", "1,0.5,0.7"]
        async_run("as-nest", 3, vc)
        async_run("as-nest2", 3, vc)
        async_run("as-dn1", 3, vc + ["--outer-opt", "delayed-nesterov", "--delay-buffer", "1"])
        async_run("as-dn3", 3, vc + ["--outer-opt", "delayed-nesterov", "--delay-buffer", "3"])
        a, b = final_weights(D("as-nest"), 20), final_weights(D("as-dn1"), 20)
        a2, c = final_weights(D("as-nest2"), 20), final_weights(D("as-dn3"), 20)
        order = [l["worker"] for l in async_lines(D("as-nest"))[0]]
        # H = 4 steps at speeds 1, 0.5, 0.7: arrivals at 4, 5.7, 8, 8, 11.4, 12 virtual seconds from
        # workers 0, 2, 0, 1 (the tie at 8 to the lower worker), 2, 0
        check("virtual clock: delayed Nesterov --delay-buffer 1 = per-arrival Nesterov, bit for bit; buffer 3 differs; "
              "reruns identical", np.array_equal(a, b) and not np.array_equal(a, c) and np.array_equal(a, a2) and
              order[:6] == [0, 2, 0, 1, 2, 0],
              f"max |difference| {float(np.max(np.abs(a - b))):.1e} (buffer 1), {float(np.max(np.abs(a - c))):.1e} "
              f"(buffer 3); first arrivals from workers {order[:6]}")

        # exactly once, wall clock, slow workers, dynamic local updates: the server's update lines
        # against each worker's own count (its last stderr line), and every push and pull in the bytes
        p = async_run("as-wall", 3, ["--steps", "30", "--inner-steps", "5", "--worker-speeds", "1,0.5,0.25",
                                     "--outer-opt", "delayed-nesterov", "--delay-buffer", "3", "--dylu"])
        ups, per_worker, s = async_lines(D("as-wall"))
        own = {}
        for line in p.stderr.splitlines():
            if line.startswith("async: worker"):
                w = line.split()
                own[int(w[2])] = (int(w[4]), int(w[6]))
        lines_per = {w: sum(1 for u in ups if u["worker"] == w) for w in range(3)}
        steps_per = {w: sum(u["inner_steps"] for u in ups if u["worker"] == w) for w in range(3)}
        ok = ([u["update"] for u in ups] == list(range(1, len(ups) + 1)) and
              all(own.get(w) == (lines_per[w], steps_per[w]) == (pw["pushes"], pw["steps"])
                  for w, pw in enumerate(per_worker)) and sum(steps_per.values()) == 3 * 30)
        n = s["params"]
        pushes = len(ups)  # push: 48-byte header + n floats; pull: 32 + n floats (one per push, one
        # more per worker at the start); final report: 24 bytes per worker
        expect = pushes * (48 + 4 * n) + (pushes + 3) * (32 + 4 * n) + 3 * 24
        check("async, wall clock, speeds 1/0.5/0.25 with --dylu: every push applied exactly once; bytes count "
              "every push and pull", ok and s["bytes_outer_total"] == expect,
              f"updates {len(ups)}; per worker (pushes, steps): server {[(lines_per[w], steps_per[w]) for w in range(3)]}, "
              f"workers' own {[own.get(w) for w in range(3)]}; bytes {s['bytes_outer_total']:.0f} vs {expect}")

        # resume: --stop-at 10, then --resume = one run that checkpoints at step 10 (the same quiet
        # point), bit for bit on the virtual clock; on the wall clock, consistent: no update lost or repeated
        dl = vc + ["--outer-opt", "delayed-nesterov", "--delay-buffer", "2", "--dylu"]
        async_run("as-straight", 3, dl + ["--ckpt-every", "10"])
        async_run("as-resumed", 3, dl + ["--stop-at", "10"])
        async_run("as-resumed", 3, dl + ["--resume"])
        # wall seconds differ, and bytes_outer counts what the server process has sent since it started
        strip = lambda rows: [{k: v for k, v in r.items() if k not in ("wall_s", "idle_s", "bytes_outer")} for r in rows]
        ua, _, _ = async_lines(D("as-straight"))
        ub, _, _ = async_lines(D("as-resumed"))
        same = np.array_equal(final_weights(D("as-straight"), 20), final_weights(D("as-resumed"), 20))
        wall = ["--steps", "20", "--inner-steps", "4", "--worker-speeds", "1,0.5,0.7"]
        async_run("as-wall-r", 3, wall + ["--stop-at", "10"])
        async_run("as-wall-r", 3, wall + ["--resume"])
        uw, pw, _ = async_lines(D("as-wall-r"))
        consistent = ([u["update"] for u in uw] == list(range(1, len(uw) + 1)) and
                      sum(u["inner_steps"] for u in uw) == 3 * 20 == sum(x["steps"] for x in pw) and
                      sum(x["pushes"] for x in pw) == len(uw))
        check("async resume: virtual clock bit for bit with a straight run; wall clock consistent",
              same and strip(ua) == strip(ub) and consistent,
              f"{len(ua)} updates, weights {'equal' if same else 'DIFFER'}; wall-clock resume: {len(uw)} updates "
              f"numbered without gap, {sum(u['inner_steps'] for u in uw)} inner steps of 60")

        # 17. more ranks than cores, OpenMP's thread count left unset: each rank gets its share of the
        # cores, said in one line (tools/main.cpp). Unbound ranks (--bind-to none) share the machine,
        # and 3 ranks x one thread per core exceed the cores on any machine.
        cores = len(os.sched_getaffinity(0))
        env = {k: v for k, v in ENV.items() if k != "OMP_NUM_THREADS"}
        p = subprocess.run(["mpirun", "--oversubscribe", "--bind-to", "none", "-np", "3"] + base
                           + ["--out", D("cores"), "--steps", "2", "--batch", "2"],
                           env=env, capture_output=True, text=True, timeout=300)
        share = max(1, cores // 3)
        note = f"note: 3 ranks on {cores} cores: {share} OpenMP thread{'s' if share > 1 else ''} per rank"
        check("ranks x threads beyond the cores: each rank its share, said once", p.returncode == 0
              and (p.stderr + p.stdout).count(note) == 1 and f"cpu, {share} threads" in p.stderr + p.stdout,
              f"{cores} cores: '{note}' x{(p.stderr + p.stdout).count(note)}")

        # 12. --device cuda through the kernels' own source (emulated) = CPU training, 1, 2 and 4 ranks.
        # With MPI the emulated build has the emulated NCCL (kernels/emu/nccl_emu.h): a worker's gradient
        # average and an outer sync's all-gather of slices run on the "device" (comm/nccl.cpp), as its
        # log line says, and count the worker link's bytes as the MPI path does.
        if args.diloco_emu:
            via_nccl = "through the emulated NCCL"
            emu = [os.path.abspath(args.diloco_emu), "train", "--data", data] + SMALL + ["--device", "cuda"]
            run(emu + ["--out", D("emu1"), "--steps", "8", "--batch", "4"])
            run(base + ["--out", D("cpu1"), "--steps", "8", "--batch", "4", "--device", "cpu"])
            a, sa = metrics(D("emu1"))
            b, sb = metrics(D("cpu1"))
            check("--device cuda (emulated kernels) = CPU training, 8 steps", max_rel(a, b) <= 1e-5 and
                  abs(sa["final_val_loss"] - sb["final_val_loss"]) <= 1e-5 * sb["final_val_loss"],
                  f"max relative loss difference {max_rel(a, b):.1e}, val {sa['final_val_loss']:.6f} vs {sb['final_val_loss']:.6f}")
            # the loop waits for the device when it reads the steps' figures (a report), not at every
            # step: 12 more steps without a progress line (--log-every 0) cost at most one more wait,
            # however many the start and the end take (the emulator counts the host's waits)
            waits = {}
            for steps in (12, 24):
                p = run(emu + ["--out", D(f"emu-waits{steps}"), "--steps", str(steps), "--batch", "2"])
                said = re.findall(r"the host waited for the device (\d+) times", p.stderr)
                waits[steps] = int(said[0]) if said else None
            check("12 more device steps between two reports make the host wait at most once more, not 12 times more",
                  None not in waits.values() and waits[24] - waits[12] <= 1,
                  f"host waits: {waits[12]} in 12 steps, {waits[24]} in 24")
            # TF32 products (emulated: inputs rounded to 10 mantissa bits) change the numbers, slightly:
            # a relative rounding of 2^-11 per operand moves a loss of ~5 by well under 1e-2
            run(emu + ["--out", D("emu1-tf32"), "--steps", "8", "--batch", "4", "--matmul-precision", "tf32"])
            c, _ = metrics(D("emu1-tf32"))
            check("--matmul-precision tf32 (emulated) differs from fp32 training, by under 1e-2", 0 < max_rel(c, b) <= 1e-2,
                  f"max relative loss difference {max_rel(c, b):.1e}")
            run(emu + ["--out", D("emu2"), "--steps", "6", "--batch", "2", "--algo", "diloco", "--workers", "2",
                       "--inner-steps", "3", "--verify-sync"], ranks=2)
            run(base + ["--out", D("cpu2"), "--steps", "6", "--batch", "2", "--algo", "diloco", "--workers", "2",
                        "--inner-steps", "3", "--device", "cpu"], ranks=2)
            a, _ = metrics(D("emu2"))
            b, _ = metrics(D("cpu2"))
            check("DiLoCo M=2 with --device cuda (emulated) = on the CPU", max_rel(a, b) <= 1e-5,
                  f"max relative loss difference {max_rel(a, b):.1e}")

            # several ranks in a worker: the worker link is the emulated NCCL, the CPU's is MPI
            emu_stderr = {}

            def same_through_nccl(name, algo_args, ranks, steps):
                common = ["--steps", str(steps), "--batch", "2"] + algo_args
                t0 = time.time()
                p = run(emu + ["--out", D(f"emu-{name}")] + common, ranks=ranks)
                emu_stderr[name] = p.stderr
                took = time.time() - t0
                run(base + ["--out", D(f"cpu-{name}"), "--device", "cpu"] + common, ranks=ranks)
                a, _ = metrics(D(f"emu-{name}"))
                b, _ = metrics(D(f"cpu-{name}"))
                be, bc = bytes_inner(D(f"emu-{name}")), bytes_inner(D(f"cpu-{name}"))
                ok = len(a) == steps and max_rel(a, b) <= 1e-5 and via_nccl in p.stderr and be == bc > 0
                return ok, (f"max relative loss difference {max_rel(a, b):.1e}; "
                            f"{'through' if via_nccl in p.stderr else 'NOT through'} the emulated NCCL; "
                            f"bytes_inner {be} vs {bc}; {took:.0f} s emulated")

            ok, detail = same_through_nccl("dp-g2", ["--algo", "dp", "--workers", "1"], 2, 6)
            check("DP with 2 ranks in one worker, --device cuda (emulated NCCL average) = on the CPU", ok, detail)
            # the inner step as a CUDA Graph (the default) against kernel by kernel: the same kernels,
            # so the same bits, the NCCL average inside the graph included
            p = run(emu + ["--out", D("emu-dp-g2-nograph"), "--steps", "6", "--batch", "2", "--algo", "dp",
                           "--workers", "1", "--cuda-graph", "off"], ranks=2)
            graph_ckpt = open(os.path.join(D("emu-dp-g2"), "ckpt", "step_00000006.ckpt"), "rb").read()
            plain_ckpt = open(os.path.join(D("emu-dp-g2-nograph"), "ckpt", "step_00000006.ckpt"), "rb").read()
            a, _ = metrics(D("emu-dp-g2"))
            b, _ = metrics(D("emu-dp-g2-nograph"))
            launched = r"inner steps: (\d+) launched as a CUDA Graph, (\d+) kernel by kernel"
            said = re.findall(launched, emu_stderr["dp-g2"]) + re.findall(launched, p.stderr)
            check("--cuda-graph off = the CUDA Graph (emulated), bit for bit, with the NCCL average in the graph",
                  graph_ckpt == plain_ckpt and np.array_equal(a, b) and said == [("6", "0"), ("0", "6")],
                  f"checkpoints {'equal' if graph_ckpt == plain_ckpt else 'DIFFER'}, losses "
                  f"{'equal' if np.array_equal(a, b) else 'differ'}; (graph, kernel by kernel) steps: {said}")
            # one worker of 2 ranks: the outer sync stages only each rank's slice, then shares them
            ok, detail = same_through_nccl("g2", ["--algo", "diloco", "--workers", "1", "--inner-steps", "3"], 2, 6)
            check("DiLoCo with 2 ranks in one worker, --device cuda (emulated NCCL average and all-gather) = on the CPU",
                  ok, detail)
            ok, detail = same_through_nccl("w2g2", ["--algo", "diloco", "--workers", "2", "--inner-steps", "3",
                                                    "--verify-sync"], 4, 6)
            check("DiLoCo 2 workers x 2 ranks, --device cuda (emulated NCCL in each worker) = on the CPU", ok, detail)
            # async: the server and the workers stage theta and the pseudo-gradients through the
            # device copy (ReplicaWeights fetch/store); the fixed arrival order makes them comparable
            common = ["--steps", "8", "--batch", "2", "--algo", "async", "--workers", "2", "--inner-steps", "4",
                      "--virtual-step-s", "1", "--worker-speeds", "1,0.5", "--outer-opt", "delayed-nesterov",
                      "--delay-buffer", "2"]
            run(emu + ["--out", D("emu-async")] + common, ranks=3)
            run(base + ["--out", D("cpu-async"), "--device", "cpu"] + common, ranks=3)
            a = np.array([l["loss"] for l in async_lines(D("emu-async"))[0]])
            b = np.array([l["loss"] for l in async_lines(D("cpu-async"))[0]])
            va, vb = async_lines(D("emu-async"))[2]["final_val_loss"], async_lines(D("cpu-async"))[2]["final_val_loss"]
            check("async M=2 (virtual clock) with --device cuda (emulated) = on the CPU",
                  len(a) == len(b) > 0 and max_rel(a, b) <= 1e-5 and abs(va - vb) <= 1e-5 * vb,
                  f"{len(a)} updates, max relative loss difference {max_rel(a, b):.1e}; val {va:.6f} vs {vb:.6f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = RESULTS.count(False)
    print(f"{len(RESULTS) - failed} passed, {failed} failed")
    sys.exit(1 if failed or not RESULTS else 0)


if __name__ == "__main__":
    main()
