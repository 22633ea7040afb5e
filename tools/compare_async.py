#!/usr/bin/env python3
"""The tables of docs/results.md for tools/compare_async.sh: compare_async.py OUT SPEEDS H SEED...
or compare_async.py --best OUT NAME SEED: the outer lr of NAME's lowest final loss at SEED.

Runs live in OUT/NAME-lrLR-sSEED. Each method's outer lr is the one of its lowest final validation
loss at the first seed (its own grid); every table shows each method at that lr.

Synchronous DiLoCo runs no virtual clock of its own; on the same clock its rounds are set by the
slowest worker: a round of H inner steps ends at H * (1 / min speed) virtual seconds, and worker w
idles H * (1 / min speed - 1 / speed_w) of them. The async runs carry their clock in metrics.jsonl.
"""
import glob
import json
import os
import sys


def final_loss(path):
    for line in open(os.path.join(path, "metrics.jsonl")):
        rec = json.loads(line)
        if rec.get("summary"):
            return rec["final_val_loss"]
    return None


def grid(out, name, seed):
    """{outer lr: final val loss} of NAME's finished runs at SEED"""
    found = {}
    for path in glob.glob(os.path.join(out, f"{name}-lr*-s{seed}")):
        lr = path[len(os.path.join(out, name + "-lr")):].rsplit("-s", 1)[0]
        loss = final_loss(path) if os.path.exists(os.path.join(path, "metrics.jsonl")) else None
        if loss is not None:
            found[lr] = loss
    return found


def best_lr(out, name, seed):
    g = grid(out, name, seed)
    if not g:
        sys.exit(f"compare_async.py: no finished {name} runs at seed {seed} in {out}")
    return min(g, key=lambda lr: (g[lr] != g[lr], g[lr]))  # NaN losses last


if sys.argv[1] == "--best":
    print(best_lr(sys.argv[2], sys.argv[3], sys.argv[4]))
    sys.exit(0)

out, speeds, H = sys.argv[1], [float(v) for v in sys.argv[2].split(",")], int(sys.argv[3])
seeds = sys.argv[4:]
NAMES = {"sync": "synchronous DiLoCo", "naive": "async, Nesterov per arrival (naive)",
         "delayed": "async, delayed Nesterov (N = 4)", "dylu": "async, delayed Nesterov + dynamic local updates"}
M, slowest = len(speeds), min(speeds)


BEST = {}


def load(name, seed):
    lines = [json.loads(l) for l in open(os.path.join(out, f"{name}-lr{BEST[name]}-s{seed}", "metrics.jsonl"))]
    s = [l for l in lines if l.get("summary")][0]
    evals = [(l["step"], l["val_loss"], l.get("virtual_s")) for l in lines if "val_loss" in l and "step" in l]
    steps = s["step"]
    if name == "sync":
        evals = [(st, v, st / slowest) for st, v, _ in evals]  # one virtual second per speed-1 step
        busy = [steps / v for v in speeds]
        idle = [steps / slowest - b for b in busy]
        return dict(final=s["final_val_loss"], updates=steps // H, clock=steps / slowest, evals=evals,
                    idle=idle, busy=busy, steps=[steps] * M, wall=s["wall_s"])
    workers = sorted((l for l in lines if "pushes" in l), key=lambda l: l["worker"])
    a = [l for l in lines if l.get("async")][0]
    evals.append((steps, s["final_val_loss"], a["virtual_s"]))
    return dict(final=s["final_val_loss"], updates=a["updates"], clock=a["virtual_s"], evals=evals,
                idle=[w["virtual_idle_s"] for w in workers], busy=[w["steps"] / speeds[w["worker"]] for w in workers],
                steps=[w["steps"] for w in workers], wall=s["wall_s"])


mean = lambda xs: sum(xs) / len(xs)
fmt = lambda xs: " / ".join(f"{x:.4f}" for x in xs) + f" (mean **{mean(xs):.4f}**)"
print(f"Outer learning rate, each method on its own grid (final val loss, seed {seeds[0]}; best in bold):\n")
print("| run | outer lr: final val loss |")
print("|---|---|")
for n in NAMES:
    g = grid(out, n, seeds[0])
    if not g:
        continue
    BEST[n] = best_lr(out, n, seeds[0])
    cells = [(f"**{lr}: {g[lr]:.4f}**" if lr == BEST[n] else f"{lr}: {g[lr]:.4f}") for lr in sorted(g, key=float)]
    print(f"| {NAMES[n]} | {', '.join(cells)} |")
print()
runs = {n: [load(n, s) for s in seeds] for n in BEST if all(
    os.path.exists(os.path.join(out, f"{n}-lr{BEST[n]}-s{s}", "metrics.jsonl")) for s in seeds)}


def val_at(evals, key, limit):
    """the last evaluation at or before `limit` (key 0: global step, 2: virtual seconds)"""
    before = [e for e in evals if e[key] <= limit + 1e-9]
    return before[-1][1] if before else float("nan")


steps_total = runs["sync"][0]["steps"][0] if "sync" in runs else None
print(f"Per update (equal tokens; seeds {', '.join(seeds)}):\n")
print("| run | outer updates | val loss at step " + (f"{steps_total // 2}" if steps_total else "half") +
      " | final val loss (equal tokens) |")
print("|---|---|---|---|")
for n, rs in runs.items():
    half = [val_at(r["evals"], 0, r["steps"][0] // 2 if n == "sync" else steps_total // 2) for r in rs]
    print(f"| {NAMES[n]} (outer lr {BEST[n]}) | {' / '.join(str(r['updates']) for r in rs)} | {fmt(half)} | {fmt([r['final'] for r in rs])} |")

sync_round = H / slowest  # virtual seconds of one synchronous round
marks = [sync_round * k for k in (2, 4, 5)]
print(f"\nPer virtual second (a speed-1 inner step = 1 s; the last evaluation at or before each time):\n")
print("| run | virtual s to the end | " + " | ".join(f"val loss by {t:.0f} s" for t in marks) +
      " | wall s on this machine (load-dependent) |")
print("|---|---|" + "---|" * len(marks) + "---|")
for n, rs in runs.items():
    clocks = " / ".join("%.0f" % r["clock"] for r in rs)
    walls = " / ".join("%.0f" % r["wall"] for r in rs)
    cols = [fmt([val_at(r["evals"], 2, t) for r in rs]) for t in marks]
    print(f"| {NAMES[n]} (outer lr {BEST[n]}) | {clocks} | {' | '.join(cols)} | {walls} |")

print(f"\nIdle time (virtual seconds, seed {seeds[0]}; speeds {sys.argv[2]}):\n")
print("| run | inner steps per worker | idle s per worker | idle share of worker time |")
print("|---|---|---|---|")
for n, rs in runs.items():
    r = rs[0]
    share = sum(r["idle"]) / (sum(r["idle"]) + sum(r["busy"]))
    print(f"| {NAMES[n]} (outer lr {BEST[n]}) | {', '.join(str(s) for s in r['steps'])} | {', '.join(f'{i:.0f}' for i in r['idle'])} | "
          f"{share:.1%} |")
