#!/usr/bin/env python3
"""Loss curves of several runs on one figure, with the bytes they sent across workers beside them.

    tools/plot.py RUNDIR... [--x tokens|steps|wall] [--labels A,B,...] [--out runs.png] [--title T]

Left: the training loss of each run (a moving average over 1% of its steps, the raw curve faint)
and its validation losses (dots), against tokens (default, so that runs of different batch or
replica count compare at equal data), inner steps, or wall-clock seconds. Right: the cumulative
bytes rank 0 sent on the across-worker link, on a log scale; the legend gives each run's final
validation loss and the job's total across-worker bytes. Reads RUNDIR/metrics.jsonl (docs/formats.md).
Writes the PNG atomically.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_run(rundir):
    path = os.path.join(rundir, "metrics.jsonl")
    if not os.path.exists(path):
        sys.exit(f"plot: {path} does not exist")
    train, val, summary = [], [], None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                r = json.loads(line)
            except ValueError:
                sys.exit(f"plot: {path}:{n}: not a JSON line")
            if r.get("summary"):
                summary = r
            elif "val_loss" in r:
                val.append(r)
            elif "loss" in r:
                train.append(r)
    if not train:
        sys.exit(f"plot: {path} has no training lines")
    return train, val, summary


def smooth(ys, width):
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= width:
            acc -= ys[i - width]
        out.append(acc / min(i + 1, width))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories")
    ap.add_argument("--x", choices=["tokens", "steps", "wall"], default="tokens")
    ap.add_argument("--labels", help="comma-separated names (default: the directories' names)")
    ap.add_argument("--out", default="runs.png")
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    labels = a.labels.split(",") if a.labels else [os.path.basename(os.path.normpath(r)) for r in a.runs]
    if len(labels) != len(a.runs):
        sys.exit(f"plot: {len(labels)} labels for {len(a.runs)} runs")
    key = {"tokens": "tokens", "steps": "step", "wall": "wall_s"}[a.x]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (rundir, label) in enumerate(zip(a.runs, labels)):
        train, val, summary = read_run(rundir)
        color = f"C{i}"
        xs = [r[key] for r in train]
        ys = [r["loss"] for r in train]
        ax.plot(xs, ys, color=color, alpha=0.15, lw=0.8)
        ax.plot(xs, smooth(ys, max(1, len(ys) // 100)), color=color, lw=1.5)
        # a validation line carries only its step: place it at that step's x
        at = {r["step"]: r[key] for r in train}
        vx = [at[v["step"]] for v in val if v["step"] in at]
        vy = [v["val_loss"] for v in val if v["step"] in at]
        final = f"val {summary['final_val_loss']:.3f}" if summary else "unfinished"
        ax.plot(vx, vy, "o", color=color, ms=4, label=f"{label}: {final}")
        sent = [max(r.get("bytes_outer", 0), 1) for r in train]
        total = f"{summary['bytes_outer_total'] / 1e6:.1f} MB in all" if summary else ""
        bx.plot(xs, sent, color=color, lw=1.5, label=f"{label} {total}".strip())
    xlabel = {"tokens": "tokens (all replicas)", "steps": "inner step", "wall": "seconds"}[a.x]
    ax.set(xlabel=xlabel, ylabel="loss (nats per token)", title="training loss (line), validation (dots)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    bx.set(xlabel=xlabel, ylabel="bytes sent across workers, rank 0 (cumulative)", yscale="log",
           title="communication")
    bx.grid(alpha=0.3, which="both")
    bx.legend(fontsize=8)
    if a.title:
        fig.suptitle(a.title)
    fig.tight_layout()
    tmp = a.out + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, a.out)
    print(f"plot: wrote {a.out}")


if __name__ == "__main__":
    main()
