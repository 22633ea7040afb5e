#!/usr/bin/env python3
"""DiPaCo under mpirun on the CPU (optim/dipaco.h): 2 and 4 ranks, a small corpus of two kinds of
paragraphs routed by `diloco route`.

    test_dipaco.py --diloco build/diloco

Each check prints one line; the last line is 'N passed, M failed'. Exits non-zero on failure.
"""
import argparse
import glob
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

RESULTS = []
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
N_LAYER, C, T = 2, 32, 32
SMALL = ["--n-layer", str(N_LAYER), "--n-head", "2", "--d-model", str(C), "--seq-len", str(T), "--warmup", "2",
         "--lr", "3e-3", "--log-every", "0", "--eval-batches", "2", "--batch", "2"]


def check(name, ok, detail):
    RESULTS.append(bool(ok))
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)


def run(args, ranks=None):
    cmd = (["mpirun", "--oversubscribe", "-np", str(ranks)] if ranks else []) + args
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, errors="replace", timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p


def metrics(rundir):
    lines = [json.loads(l) for l in open(os.path.join(rundir, "metrics.jsonl"))]
    return np.array([l["loss"] for l in lines if "loss" in l]), [l for l in lines if l.get("summary")][0]


def all_lines(rundir):
    return [json.loads(l) for l in open(os.path.join(rundir, "metrics.jsonl")) if "summary" not in l]


def ckpt_params(path):
    """The weights of a checkpoint (docs/formats.md), as tests/mpi/test_mpi.py reads them."""
    raw = open(path, "rb").read()
    n = int(np.frombuffer(raw, dtype=np.uint64, count=1, offset=44)[0])
    return np.frombuffer(raw, dtype=np.float32, count=n, offset=100)


def llmc(path):
    return np.fromfile(path, dtype=np.float32, offset=1024).astype(np.float64)


def llmc_levels(vocab, max_t):
    """Level of every element of an llm.c model file (docs/formats.md: tensor-major), -1 for the
    shared module (wte with its padded rows, wpe, the final LayerNorm); one block per level here."""
    vp = (vocab + 127) // 128 * 128
    per_layer = [C, C, 3 * C * C, 3 * C, C * C, C, C, C, 4 * C * C, 4 * C, 4 * C * C, C]
    parts = [np.full(vp * C + max_t * C, -1)]
    for s in per_layer:
        parts.append(np.repeat(np.arange(N_LAYER), s))
    parts.append(np.full(2 * C, -1))
    return np.concatenate(parts)


def path_shares(data, P):
    """Each path's share of the training tokens, from DIR/train.docs and DIR/routes.idx."""
    docs = open(os.path.join(data, "train.docs"), "rb").read()
    n = struct.unpack_from("<i", docs, 8)[0]
    starts = np.frombuffer(docs, dtype=np.uint64, count=n + 1, offset=16).astype(np.int64)
    routes = open(os.path.join(data, "routes.idx"), "rb").read()
    path = np.frombuffer(routes, dtype=np.uint16, count=n, offset=48)
    share = np.zeros(P)
    for d in range(n):
        share[path[d]] += starts[d + 1] - starts[d]
    return share / share.sum()


def read_routes(data):
    """DIR/routes.idx (docs/formats.md): header, paths, and the routing tree's centroids."""
    raw = open(os.path.join(data, "routes.idx"), "rb").read()
    _, _, L, K, prefix, F, nt, nv, kind, _ = struct.unpack_from("<10i", raw, 0)
    assert kind == 0, "the byte histogram"
    paths = np.frombuffer(raw, dtype=np.uint16, count=nt + nv, offset=48)
    cents = np.frombuffer(raw, dtype=np.float32, offset=48 + 2 * (nt + nv)).astype(np.float64)
    return L, K, prefix, F, paths, cents


def walk(tokens, L, K, prefix, F, cents):
    """A document's path down the tree: at each level the nearest of its parent's K centroids, to
    the byte histogram of its first `prefix` tokens (data/routing.h)."""
    first = np.asarray(tokens[:prefix]).astype(np.int64) % F
    f = np.bincount(first, minlength=F) / max(len(first), 1)
    q, off, parents = 0, 0, 1
    for _ in range(L):
        c = cents[off + q * K * F: off + (q + 1) * K * F].reshape(K, F)
        q = q * K + int(np.argmin(((c - f) ** 2).sum(axis=1)))
        off += parents * K * F
        parents *= K
    return q


def split_docs(data, split):
    tok = np.concatenate([np.fromfile(f, dtype=np.uint16, offset=1024)
                          for f in sorted(glob.glob(os.path.join(data, f"{split}_*.bin")))])
    raw = open(os.path.join(data, f"{split}.docs"), "rb").read()
    n = struct.unpack_from("<i", raw, 8)[0]
    at = np.frombuffer(raw, dtype=np.uint64, count=n + 1, offset=16).astype(np.int64)
    return [tok[at[i]:at[i + 1]] for i in range(n)]


def make_corpus(path):
    """Verses-like lines and dictionary-like entries, as paragraphs."""
    rng = random.Random(5)
    words = "and the lord said unto him thou shalt not go in to the land of israel".split()
    out = []
    for i in range(300):
        if rng.random() < 0.5:
            out.append("\n".join(f"Ge{i}:{v} " + " ".join(rng.choice(words) for _ in range(12)) for v in range(4)))
        else:
            out.append(f"<hw>W{i}</hw> (n.) " + " ".join(rng.choice("abcdefgh") * 3 for _ in range(30)))
    open(path, "w").write("\n\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--diloco", required=True)
    ap.add_argument("--diloco-emu", help="the build whose --device cuda is the CUDA emulator")
    args = ap.parse_args()
    B = os.path.abspath(args.diloco)
    tmp = tempfile.mkdtemp(prefix="diloco_dipaco_")
    D = lambda *p: os.path.join(tmp, *p)
    try:
        make_corpus(D("corpus.txt"))
        for name, L, K in (("d11", 1, 1), ("d22", 2, 2)):
            run([B, "prepare", "--input", D("corpus.txt"), "--out", D(name), "--documents", "paragraphs",
                 "--val-fraction", "0.1"])
            run([B, "route", "--data", D(name), "--levels", str(L), "--modules", str(K), "--prefix", "64"])
        base = [B, "train"] + SMALL

        # 1. L = K = 1 is DiLoCo loss for loss: M = 2 workers of 1 rank and of 2 ranks
        for ranks in (2, 4):
            common = ["--data", D("d11"), "--workers", "2", "--steps", "12", "--inner-steps", "4"]
            run(base + common + ["--out", D(f"dl{ranks}"), "--algo", "diloco"], ranks=ranks)
            run(base + common + ["--out", D(f"dp{ranks}"), "--algo", "dipaco"], ranks=ranks)
            a, _ = metrics(D(f"dl{ranks}"))
            b, _ = metrics(D(f"dp{ranks}"))
            wa = ckpt_params(D(f"dl{ranks}", "ckpt", "step_00000012.ckpt"))
            wb = ckpt_params(D(f"dp{ranks}", "ckpt", "step_00000012.ckpt"))
            check(f"L=1 K=1 = DiLoCo M=2 on {ranks} ranks, loss for loss and the final weights bit for bit",
                  len(a) == 12 and np.array_equal(a, b) and np.array_equal(wa, wb),
                  f"{len(a)} losses, max |diff| {np.max(np.abs(a - b)):.3g}, weights equal {np.array_equal(wa, wb)}")

        # 2. a module shared by paths gets the weighted mean of their outer gradients: one round of
        # H = 4 on L = 2, K = 2 (4 paths, one worker each) against a float64 computation from the
        # dumped paths before and after the sync
        lr, mu = 0.7, 0.9
        share = path_shares(D("d22"), 4)
        level = llmc_levels(256, T)
        for mode in ("share", "uniform"):
            run(base + ["--data", D("d22"), "--out", D(f"mean-{mode}"), "--algo", "dipaco", "--levels", "2",
                        "--modules", "2", "--workers", "4", "--steps", "4", "--inner-steps", "4", "--outer-lr", str(lr),
                        "--outer-momentum", str(mu), "--dump-replicas", "--module-weights", mode], ranks=4)
            rep = lambda m, s: llmc(D(f"mean-{mode}", "replicas", f"step_{4 if s != 0 else 0:08d}.replica_{m:03d}"
                                                                  f"{'.synced' if s != 'pre' else ''}.bin"))
            theta0 = rep(0, 0)
            pre = [rep(m, "pre") for m in range(4)]
            post = [rep(m, "post") for m in range(4)]
            worst, other_gap = 0.0, 0.0
            for m in range(4):  # path m = (module m // 2 at level 0, module m % 2 at level 1)
                for lv in (-1, 0, 1):
                    mine = (m // 2, m % 2)[lv] if lv >= 0 else 0
                    members = [q for q in range(4) if lv < 0 or (q // 2, q % 2)[lv] == mine]
                    sel = level == lv
                    means = {}
                    for name, w in (("share", [share[q] for q in members]), ("uniform", [1.0] * len(members))):
                        means[name] = sum(w[i] * (theta0[sel] - pre[q][sel]) for i, q in enumerate(members)) / sum(w)
                    step = lambda d: theta0[sel] - lr * (1 + mu) * d  # Nesterov from zero momentum
                    worst = max(worst, float(np.max(np.abs(post[m][sel] - step(means[mode])))))
                    other = "uniform" if mode == "share" else "share"
                    other_gap = max(other_gap, float(np.max(np.abs(post[m][sel] - step(means[other])))))
            check(f"--module-weights {mode}: each module steps with that mean of its paths' outer gradients "
                  "(float64 reference)", worst < 1e-6 and other_gap > 100 * worst and np.ptp(share) > 0.01,
                  f"max |diff| {worst:.2e}; the other weighting would be off by {other_gap:.2e}; "
                  f"shares {np.round(share, 3)}")

        # 3. bytes: every round, each rank sends the ring allreduce of each of its modules over the
        # paths holding it: the shared module over 4, each level module over 2
        ring = lambda nbytes, p: 2 * nbytes * (p - 1) // p
        n_shared = 256 * C + T * C + 2 * C
        n_block = 12 * C * C + 13 * C
        _, s = metrics(D("mean-share"))
        per_rank = (s["bytes_outer_total"] - 8 * 4 * 4) / 4
        want = ring(4 * n_shared, 4) + 2 * ring(4 * n_block, 2)
        check("bytes counted per module exchange", per_rank == want, f"{per_rank:.0f} per rank, expected {want}")

        # 4. resume is bit-exact: 12 steps straight, against 8 then --resume
        dp = base + ["--data", D("d22"), "--algo", "dipaco", "--levels", "2", "--modules", "2", "--workers", "4",
                     "--steps", "12", "--inner-steps", "4", "--ckpt-every", "4"]
        run(dp + ["--out", D("straight")], ranks=4)
        run(dp + ["--out", D("resumed"), "--stop-at", "8"], ranks=4)
        run(dp + ["--out", D("resumed"), "--resume"], ranks=4)
        a, sa = metrics(D("straight"))
        b, sb = metrics(D("resumed"))
        files = sorted(os.path.basename(f) for f in glob.glob(D("straight", "modules", "module_*.bin")))
        same = files == [f"module_{i:03d}.bin" for i in range(5)] and all(
            open(D("straight", "modules", f), "rb").read() == open(D("resumed", "modules", f), "rb").read()
            for f in files)
        check("resume after 8 of 12 steps: losses, routed val loss and every module (stored once each) bit for bit",
              np.array_equal(a, b) and sa["final_val_loss"] == sb["final_val_loss"] and same,
              f"{len(a)} losses, val {sa['final_val_loss']:.6f} / {sb['final_val_loss']:.6f}, modules {files} equal {same}")

        # 5. routing at evaluation and generation time: every document, training and held-out, sits
        # on the path the stored tree gives it; `eval --routed` of the run's paths is its val loss;
        # a prompt picks the path the tree gives it
        L, K, prefix, F, paths, cents = read_routes(D("d22"))
        docs = split_docs(D("d22"), "train") + split_docs(D("d22"), "val")
        walked = [walk(d, L, K, prefix, F, cents) for d in docs]
        ev = run([B, "eval", "--routed", "--modules", D("resumed", "modules"), "--data", D("d22"), "--seq-len", str(T)])
        offline = float(ev.stdout.split("val_loss ")[-1])
        picks = []
        for prompt in ("Ge7:1 and the lord said", "<hw>W3</hw> (n.) aaa bbb"):
            g = run([B, "generate", "--run", D("resumed"), "--route", D("d22"), "--prompt", prompt, "--tokens", "4"])
            said = int(g.stderr.split("routes to path ")[1].split()[0])
            picks.append((said, walk(np.frombuffer(prompt.encode(), dtype=np.uint8), L, K, prefix, F, cents)))
        check("routing: documents on the tree's paths; offline routed eval = the run's; prompts pick the tree's path",
              list(paths) == walked and abs(offline - sb["final_val_loss"]) < 1e-6 and all(a == b for a, b in picks)
              and len(set(paths)) == 4,
              f"{len(docs)} documents, paths used {sorted(set(int(p) for p in paths))}; eval {offline:.6f}; prompts {picks}")
        # generate --best-prefix: the path with the lowest of the four prompt losses it reports
        # (tests/test_dipaco.cpp checks those losses against a float64 forward)
        g = run([B, "generate", "--run", D("resumed"), "--route", D("d22"), "--prompt", "<hw>W3</hw> (n.) aaa bbb",
                 "--tokens", "4", "--best-prefix", "prompt"]).stderr
        said = int(g.split("generate: path ")[1].split()[0])
        losses = [float(x) for x in g.split("losses by path: ")[1].split(";")[0].split()]
        check("generate --best-prefix prompt takes the path of the lowest prompt loss",
              len(losses) == 4 and said == int(np.argmin(losses)), f"path {said}, losses {losses}")

        # 6. several paths per worker: each path's computation does not depend on which worker runs
        # it or beside which others, so 4 paths on 4, 2 and 1 workers (and on 2 and 1 workers of 2
        # ranks) give the same losses, token counts, routed val loss and modules, bit for bit
        dp4 = base + ["--data", D("d22"), "--algo", "dipaco", "--levels", "2", "--modules", "2", "--steps", "12",
                      "--inner-steps", "4", "--ckpt-every", "4"]
        def same_run(a, b):
            la = [(l.get("step"), l.get("loss"), l.get("val_loss"), l.get("tokens")) for l in all_lines(D(a))]
            lb = [(l.get("step"), l.get("loss"), l.get("val_loss"), l.get("tokens")) for l in all_lines(D(b))]
            mods = [f"module_{i:03d}.bin" for i in range(5)]
            same_mods = all(open(D(a, "modules", f), "rb").read() == open(D(b, "modules", f), "rb").read() for f in mods)
            return la == lb and same_mods, f"{len(la)} lines equal {la == lb}, modules equal {same_mods}"
        # (--verify-sync on these: after every outer step each module's copies, across workers, across
        # a worker's paths and in each rank's slice, must be equal, or the run stops)
        run(dp4 + ["--out", D("turns-4x2"), "--workers", "4", "--verify-sync"], ranks=8)
        for workers, G in ((2, 1), (1, 1), (2, 2), (1, 2)):
            name = f"turns-{workers}x{G}"
            run(dp4 + ["--out", D(name), "--workers", str(workers), "--verify-sync"],
                ranks=workers * G if workers * G > 1 else None)
            ok, detail = same_run("straight" if G == 1 else "turns-4x2", name)
            check(f"4 paths on {workers} worker(s) of {G} rank(s) = on 4 workers of {G}, bit for bit", ok, detail)
        log = run(dp4 + ["--out", D("turns-log"), "--workers", "2", "--steps", "4"], ranks=2).stderr
        check("worker 0 trains paths 0 and 1, worker 1 paths 2 and 3", "worker 0 (paths 0 1)" in log
              and "worker 1 (paths 2 3)" in log, [l for l in log.splitlines() if l.startswith("dipaco: worker")])

        # 7. resume with several paths per worker: each path's AdamW moments and data cursor come
        # back, so 8 steps then --resume is the straight run, on 2 workers and on 1
        for workers, ranks in ((2, 2), (1, None)):
            name = f"turns-resumed-{workers}"
            run(dp4 + ["--out", D(name), "--workers", str(workers), "--stop-at", "8"], ranks=ranks)
            run(dp4 + ["--out", D(name), "--workers", str(workers), "--resume"], ranks=ranks)
            ok, detail = same_run("straight", name)
            check(f"resume after 8 of 12 steps with {4 // workers} paths per worker: losses, val loss and modules "
                  "bit for bit", ok, detail)

        # 8. the same with --device cuda through the CUDA emulator: a worker's paths change places
        # on the "device" (weights and moments through the host), and a run of 4 paths on 1 worker,
        # resumed, equals 4 workers of one path each
        if args.diloco_emu:
            E = os.path.abspath(args.diloco_emu)
            emu4 = [E] + dp4[1:] + ["--device", "cuda"]
            run(emu4 + ["--out", D("emu-4"), "--workers", "4"], ranks=4)
            run(emu4 + ["--out", D("emu-1"), "--workers", "1", "--stop-at", "8"])
            run(emu4 + ["--out", D("emu-1"), "--workers", "1", "--resume"])
            ok, detail = same_run("emu-4", "emu-1")
            check("--device cuda (emulated): 4 paths on 1 worker, stopped at 8 and resumed = 4 workers, bit for bit",
                  ok, detail)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    passed = sum(RESULTS)
    print(f"{passed} passed, {len(RESULTS) - passed} failed")
    sys.exit(0 if passed == len(RESULTS) else 1)


if __name__ == "__main__":
    main()
