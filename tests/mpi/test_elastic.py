#!/usr/bin/env python3
"""Elastic restart under mpirun (optim/elastic.h): --resume on another number of workers M or ranks
per worker G than the checkpoint was written with, and tools/launch.sh relaunching a failed job.

    test_elastic.py --diloco build/diloco [--launch tools/launch.sh]

Each check prints one line; the last line is 'N passed, M failed'. Exits non-zero on failure.
"""
import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np

RESULTS = []
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
           OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
SMALL = ["--n-layer", "2", "--n-head", "2", "--d-model", "32", "--seq-len", "32", "--warmup", "5",
         "--lr", "3e-3", "--log-every", "0", "--eval-batches", "2", "--batch", "2", "--steps", "24",
         "--inner-steps", "6", "--ckpt-every", "6"]
B, T, H, S = 2, 32, 6, 12  # batch per rank, sequence length, inner steps, the step resumed from


def check(name, ok, detail):
    RESULTS.append(bool(ok))
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)


def run(args, ranks, env=None, expect_ok=True):
    cmd = ["mpirun", "--oversubscribe", "-np", str(ranks)] + args
    p = subprocess.run(cmd, env=env or ENV, capture_output=True, text=True, timeout=300)
    if expect_ok and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p


def read_ckpt(path):
    """A checkpoint (docs/formats.md): params, moments, extra arrays and the layout (version 4)."""
    raw = open(path, "rb").read()
    version = struct.unpack_from("<I", raw, 8)[0]
    n = struct.unpack_from("<Q", raw, 44)[0]
    step, cursor = struct.unpack_from("<qQ", raw, 52)
    f = lambda off, k: np.frombuffer(raw, dtype=np.float32, count=k, offset=off)
    out = {"version": version, "step": step, "cursor": cursor, "params": f(100, n),
           "m": f(100 + 4 * n, n), "v": f(100 + 8 * n, n), "extra": []}
    off = 100 + 12 * n
    if version >= 2:
        (count,) = struct.unpack_from("<Q", raw, off)
        off += 8
        for _ in range(count):
            (k,) = struct.unpack_from("<Q", raw, off)
            out["extra"].append(f(off + 8, k))
            off += 8 + 4 * k
    if version == 4:
        (name_len,) = struct.unpack_from("<I", raw, off)
        off += 4
        if name_len:
            (model_len,) = struct.unpack_from("<Q", raw, off + name_len)
            off += name_len + 8 + model_len
        out["workers"], out["ranks_per_worker"], out["row_origin"], out["origin_step"] = \
            struct.unpack_from("<iiQq", raw, off)
    return out


def metrics(rundir):
    return [json.loads(l) for l in open(os.path.join(rundir, "metrics.jsonl"))]


def resumed(rundir, m):
    return np.fromfile(os.path.join(rundir, f"replicas/step_{S:08d}.replica_{m:03d}.resumed.f32"), dtype=np.float32)


def tokens_ok(rundir, ranks_before, ranks_after):
    """Tokens: B*T per rank and step before the resize, then per rank of the new layout."""
    lines = {l["step"]: l["tokens"] for l in metrics(rundir) if "loss" in l}
    want = lambda s: (min(s, S) * ranks_before + max(0, s - S) * ranks_after) * B * T
    bad = [s for s in lines if lines[s] != want(s)]
    summary = [l for l in metrics(rundir) if l.get("summary")]
    ok = len(lines) == 24 and not bad and summary and summary[0]["tokens"] == want(24)
    return ok, f"step {S + 1}: {lines.get(S + 1)} (want {want(S + 1)}), summary {summary[0]['tokens'] if summary else None} (want {want(24)})"


def finished_ok(rundir):
    lines = metrics(rundir)
    losses = [l["loss"] for l in lines if "loss" in l]
    vals = [l["val_loss"] for l in lines if "val_loss" in l]
    ok = all(np.isfinite(losses)) and len(vals) > 0 and np.isfinite(vals[-1]) and losses[-1] < losses[0]
    return ok, f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, final val {vals[-1] if vals else None}"


def diloco_resize(bin_, data, work, name, before, after, extra=()):
    """Train to step S on `before` = (ranks, workers), resume on `after` with --dump-replicas."""
    out = os.path.join(work, name)
    base = [bin_, "train", "--data", data, "--out", out] + SMALL + list(extra)
    run(base + ["--workers", str(before[1]), "--stop-at", str(S)], before[0])
    old = [read_ckpt(os.path.join(out, f"ckpt/step_{S:08d}.rank_{r:05d}.ckpt")) for r in range(before[0])]
    p = run(base + ["--workers", str(after[1]), "--resume", "--dump-replicas"], after[0])
    return out, old, p


def test_diloco(bin_, data, work):
    # M 2 -> 4 (G 1): the global model, the momentum carried into the next outer step, tokens
    out, old, p = diloco_resize(bin_, data, work, "grow", (2, 2), (4, 4), ["--algo", "diloco"])
    theta = old[0]["extra"][0]
    same = all(np.array_equal(resumed(out, m), theta) for m in range(4))
    check("DiLoCo 2 -> 4 workers: every replica starts from the global model, bit for bit", same and
          "elastic: 2 workers x 1 rank -> 4 workers x 1 rank" in p.stderr,
          f"4 resumed replicas against theta({S}) of {theta.size} floats")
    # inner optimizer: replicas 0 and 1 keep their AdamW moments, 2 and 3 start from zero
    moments = [np.fromfile(os.path.join(out, f"replicas/step_{S:08d}.replica_{m:03d}.resumed_moments.f32"),
                           dtype=np.float32) for m in range(4)]
    kept = all(np.array_equal(moments[m], np.concatenate([old[m]["m"], old[m]["v"]])) for m in range(2))
    fresh = all(not moments[m].any() for m in range(2, 4)) and old[0]["v"].any()
    check("DiLoCo 2 -> 4: surviving replicas keep their AdamW moments, new ones start from zero", kept and fresh,
          f"kept {kept}, fresh {fresh}")
    # the next outer step (optim/outer.h, Nesterov, lr 0.7, mu 0.9): mom' = mu mom + delta and
    # theta' = theta - lr (delta + mu mom'); from theta(S), mom(S) (the old files) and mom', theta'
    # (the new ones at S + H), theta' is predicted only if mom(S) was carried over
    new = read_ckpt(os.path.join(out, f"ckpt/step_{S + H:08d}.rank_00000.ckpt"))
    theta_s, mom_s = (old[0]["extra"][k].astype(np.float64) for k in (0, 1))
    theta_n, mom_n = (new["extra"][k].astype(np.float64) for k in (0, 1))
    predict = lambda mom: theta_s - 0.7 * ((mom_n - 0.9 * mom) + 0.9 * mom_n)
    scale = np.max(np.abs(theta_n - theta_s))
    err = np.max(np.abs(predict(mom_s) - theta_n)) / scale
    err_zero = np.max(np.abs(predict(0 * mom_s) - theta_n)) / scale
    check("DiLoCo 2 -> 4: the outer momentum carries over into the next outer step", err < 1e-4 and err_zero > 1e-2,
          f"relative error {err:.1e} (with the momentum zeroed it would be {err_zero:.1e})")
    ok, detail = tokens_ok(out, 2, 4)
    check("DiLoCo 2 -> 4: tokens counted across the resize", ok, detail)
    ok, detail = finished_ok(out)
    check("DiLoCo 2 -> 4: trains on to the end", ok, detail)
    layout = (new["workers"], new["ranks_per_worker"], new["row_origin"], new["origin_step"])
    check("DiLoCo 2 -> 4: checkpoints record the new layout and the data origin", layout == (4, 1, 2 * S * B, S),
          f"(workers, ranks per worker, row origin, origin step) = {layout}, want (4, 1, {2 * S * B}, {S})")

    # M 4 -> 2 (G 1), and G 2 -> 1 (M 2)
    for name, before, after, ranks_before, ranks_after in (("shrink", (4, 4), (2, 2), 4, 2),
                                                             ("ranks", (4, 2), (2, 2), 4, 2)):
        out, old, p = diloco_resize(bin_, data, work, name, before, after, ["--algo", "diloco"])
        G = before[0] // before[1]
        theta = np.concatenate([old[g]["extra"][0] for g in range(G)])
        same = all(np.array_equal(resumed(out, m), theta) for m in range(after[1]))
        same &= np.array_equal(theta, old[0]["params"])  # after the sync every replica holds theta(S)
        ok_t, detail_t = tokens_ok(out, ranks_before, ranks_after)
        ok_f, detail_f = finished_ok(out)
        check(f"DiLoCo {before[1]}x{G} -> {after[1]}x{after[0] // after[1]}: the global model bit for bit, "
              f"tokens, trains on", same and ok_t and ok_f, f"{detail_t}; {detail_f}")


def test_streaming(bin_, data, work):
    # two sequential fragments of a 2-layer model: fragment 0 is the flat buffer's first part
    # (embeddings, block 0), fragment 1 the rest, so their global values joined are theta
    args = ["--algo", "streaming", "--fragments", "2", "--fragment-pattern", "sequential"]
    out, old, p = diloco_resize(bin_, data, work, "stream", (2, 2), (4, 4), args)
    theta = np.concatenate([old[0]["extra"][0], old[0]["extra"][5]])
    same = all(np.array_equal(resumed(out, m), theta) for m in range(4))
    ok_t, detail_t = tokens_ok(out, 2, 4)
    ok_f, detail_f = finished_ok(out)
    check("Streaming 2 -> 4 workers: every replica starts from the fragments' global values, bit for bit; "
          "tokens; trains on", same and ok_t and ok_f, f"{detail_t}; {detail_f}")
    # with overlap, fragment 0's exchange is in flight at the checkpoint: applied at the resize
    out, old, p = diloco_resize(bin_, data, work, "stream-tau", (4, 4), (2, 2), args + ["--overlap", "1"])
    meta = old[0]["extra"][4]
    reps = [resumed(out, m) for m in range(2)]
    ok_f, detail_f = finished_ok(out)
    check("Streaming 4 -> 2 with an exchange in flight (overlap 1): replicas start equal and train on",
          meta[0] == 1 and np.array_equal(reps[0], reps[1]) and ok_f, f"pending {meta[0]:.0f}; {detail_f}")


def test_dp(bin_, data, work):
    out, old, p = diloco_resize(bin_, data, work, "dp", (4, 1), (2, 1), ["--algo", "dp"])
    ok_t, detail_t = tokens_ok(out, 4, 2)
    ok_f, detail_f = finished_ok(out)
    check("data-parallel 4 -> 2 ranks: tokens, trains on", ok_t and ok_f, f"{detail_t}; {detail_f}")


def downgrade(path):
    """Rewrites a version 4 checkpoint as version 2 (no tokenizer, no layout): a file of a build
    older than elastic restart."""
    raw = bytearray(open(path, "rb").read())
    assert struct.unpack_from("<I", raw, 8)[0] == 4
    payload = raw[24:-(4 + 24)]  # the empty tokenizer section and the layout
    raw = raw[:8] + struct.pack("<IIQ", 2, zlib.crc32(payload), len(payload)) + payload
    open(path, "wb").write(raw)


def test_compat(bin_, data, work):
    # files older than version 4 record no layout: they resume with the layout that wrote them,
    # bit for bit, and another is refused with one line
    out = os.path.join(work, "old")
    base = [bin_, "train", "--data", data, "--out", out, "--algo", "diloco", "--workers", "2"] + SMALL
    run(base + ["--stop-at", str(S)], 2)
    ref = os.path.join(work, "old-ref")
    shutil.copytree(out, ref)
    for r in range(2):
        downgrade(os.path.join(out, f"ckpt/step_{S:08d}.rank_{r:05d}.ckpt"))
    for d in (out, ref):
        for f in os.listdir(os.path.join(d, "ckpt")):
            if not f.startswith(f"step_{S:08d}"):
                os.remove(os.path.join(d, "ckpt", f))
    p = run([a if a != "2" or i != base.index("--workers") + 1 else "4" for i, a in enumerate(base)] + ["--resume"], 4,
            expect_ok=False)
    refused = p.returncode != 0 and "records no layout (written before elastic restart" in p.stderr
    run(base + ["--resume"], 2)
    run([a if a != out else ref for a in base] + ["--resume"], 2)
    a = [l.get("loss") for l in metrics(out) if "loss" in l]
    b = [l.get("loss") for l in metrics(ref) if "loss" in l]
    check("version 2 checkpoints of 2 workers: resumed on 2 bit for bit as version 4; on 4 refused", refused and a == b,
          f"refused: {refused}; {len(a)} losses equal: {a == b}")
    # asynchronous Local-SGD keeps the refusal (its server holds per-worker pushes in flight)
    out = os.path.join(work, "async")
    base = [bin_, "train", "--data", data, "--out", out, "--algo", "async", "--virtual-step-s", "1"] + SMALL
    run(base + ["--workers", "2", "--stop-at", str(S)], 3)
    p = run(base + ["--workers", "1", "--resume"], 2, expect_ok=False)
    errors = [l for l in p.stderr.splitlines() if l.startswith("error:")]
    check("async 2 -> 1 workers: refused with one line", p.returncode != 0 and len(errors) == 1 and
          "--algo async cannot change its layout" in errors[0], errors[0][:200] if errors else "no error line")


def test_launch(bin_, data, work, launch):
    out = os.path.join(work, "launch")
    cmd = ["mpirun", "--oversubscribe", "-np", "4", bin_, "train", "--data", data, "--out", out, "--algo", "diloco",
           "--workers", "4"] + SMALL
    env = dict(ENV, DILOCO_TEST_FAIL_AFTER_STEP=str(S))
    hosts = os.path.join(work, "hosts")  # the hosts that still answer: this one
    with open(hosts, "w") as f:
        f.write("localhost slots=2\n")
    p = subprocess.run(["bash", launch, "--max-restarts", "2", "--workers-after-failure", "2", "--hostfile-after-failure",
                        hosts, "--"] + cmd + ["--shard", "noniid"], env=env, capture_output=True, text=True, timeout=300)
    summary = [l for l in metrics(out) if l.get("summary")] if os.path.exists(os.path.join(out, "metrics.jsonl")) else []
    check("launch.sh: a job failing after step 12 is relaunched on 2 workers (a hostfile, noniid shards) from step 12 "
          "and finishes", p.returncode == 0 and p.stderr.count("test failure injected") == 1 and
          "--hostfile " + hosts in p.stderr and
          "elastic: 4 workers x 1 rank -> 2 workers x 1 rank" in p.stderr and summary and summary[0]["workers"] == 2,
          f"exit {p.returncode}, {p.stderr.count('launch: attempt')} relaunch(es)")
    # a failure before the first checkpoint repeats on every attempt: the budget ends it
    out = os.path.join(work, "launch-budget")
    cmd = [c if c != os.path.join(work, "launch") else out for c in cmd]
    env = dict(ENV, DILOCO_TEST_FAIL_AFTER_STEP="3")
    p = subprocess.run(["bash", launch, "--max-restarts", "2", "--"] + cmd, env=env, capture_output=True, text=True,
                       timeout=300)
    check("launch.sh: --max-restarts 2 gives up after 3 attempts with the job's exit status",
          p.returncode == 42 and p.stderr.count("test failure injected") == 3 and "no restarts left" in p.stderr,
          f"exit {p.returncode}, {p.stderr.count('test failure injected')} failed attempts")
    # a stop asked for (--stop-at) is a finished attempt: its closing line is the stop, not a summary
    out = os.path.join(work, "launch-stop")
    cmd = [c if c != os.path.join(work, "launch-budget") else out for c in cmd]
    p = subprocess.run(["bash", launch, "--max-restarts", "2", "--"] + cmd + ["--stop-at", "8"], env=ENV,
                       capture_output=True, text=True, timeout=300)
    last = metrics(out)[-1] if os.path.exists(os.path.join(out, "metrics.jsonl")) else {}
    check("launch.sh: a run stopped by --stop-at 8 is taken as finished (its last metrics line is the stop)",
          p.returncode == 0 and "launch:" not in p.stderr and last == {"step": 8, "event": "stopped"},
          f"exit {p.returncode}, last line {last}, launch lines {p.stderr.count('launch:')}")
    # an attempt that exits with 0 but writes no closing line (mpirun --with-ft after a lost daemon,
    # docs/distributed.md) is a failure; and a summary left by an earlier run does not count
    out = os.path.join(work, "launch-silent")
    os.makedirs(out)
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.write('{"step": 1, "loss": 5.0}\n{"summary": true, "step": 24}\n')
    os.utime(os.path.join(out, "metrics.jsonl"), (1e9, 1e9))  # written long before this attempt
    p = subprocess.run(["bash", launch, "--max-restarts", "1", "--", "bash", "-c", "exit 0", "--out", out], env=ENV,
                       capture_output=True, text=True, timeout=60)
    check("launch.sh: an attempt that exits with 0 but leaves no closing line of its own is relaunched, then given up",
          p.returncode == 1 and p.stderr.count("exited with 0 but left no summary or stop line") == 2
          and "no restarts left" in p.stderr, f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--diloco", required=True)
    ap.add_argument("--launch", default=os.path.join(os.path.dirname(__file__), "../../tools/launch.sh"))
    ap.add_argument("--only", choices=["diloco", "streaming", "dp", "compat", "launch"])
    args = ap.parse_args()
    bin_ = os.path.abspath(args.diloco)
    work = tempfile.mkdtemp(prefix="diloco_elastic_")
    try:
        random.seed(1)
        words = "the cat sat on a mat and dog ran far away home".split()
        with open(os.path.join(work, "a.txt"), "w") as f:
            f.write(" ".join(random.choice(words) for _ in range(30000)))
        data = os.path.join(work, "data")
        subprocess.run([bin_, "prepare", "--input", os.path.join(work, "a.txt"), "--out", data], check=True,
                       capture_output=True)
        if args.only in (None, "diloco"):
            test_diloco(bin_, data, work)
        if args.only in (None, "streaming"):
            test_streaming(bin_, data, work)
        if args.only in (None, "dp"):
            test_dp(bin_, data, work)
        if args.only in (None, "compat"):
            test_compat(bin_, data, work)
        if args.only in (None, "launch"):
            test_launch(bin_, data, work, os.path.abspath(args.launch))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = RESULTS.count(False)
    print(f"{RESULTS.count(True)} passed, {failed} failed")
    sys.exit(1 if failed or not RESULTS else 0)


if __name__ == "__main__":
    main()
