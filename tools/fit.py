#!/usr/bin/env python3
"""Fits the DiLoCo scaling laws to a sweep's results and draws its plots.

    python tools/fit.py RESULTS.csv [MORE.csv ...] [--out DIR] [--no-plots] [--n total|non-embedding]

Reads the tidy rows tools/sweep.py writes (results.csv; curves.csv beside it, same name with results -> curves, for the loss curves),
and writes into DIR (default: the first CSV's folder), with the first CSV's name after "results"
as a suffix (results-batch.csv: fit-batch.json, ...):
  fit.json   every number below, for scripts;
  fit.md     the same as markdown tables (docs/scaling.md quotes them);
  loss_vs_n.png, curves.png, outer_lr.png, and loss_vs_batch.png where several batches
  were run.

The fits, as in Charles et al. 2025:
  * runs that differ only in their seed are one point: its loss is their mean, with the spread
    (max - min) and the number of seeds beside it;
  * for each method, the best final validation loss over all hyperparameters at each size N
    (N counts all parameters, or with --n non-embedding those outside the embedding tables, as
    the paper does);
  * L(N) = A * N^alpha per method, least squares on log L against log N, and, with 3 sizes or
    more, L(N) = A * N^alpha + E with an irreducible loss E;
  * L(N, M) = A * N^alpha * M^beta jointly over the DiLoCo methods;
  * residuals of every fit, and a held-out check: fit without the largest N, predict it;
  * the best outer learning rate and global batch at each (M, N).
"""
import argparse
import csv
import json
import math
import os
import re
import sys
from collections import defaultdict

import numpy as np


def read_rows(paths):
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                for k in ("M", "H", "global_batch", "seq_len", "steps", "tokens", "params",
                          "non_embedding_params"):
                    r[k] = int(float(r[k]))
                for k in ("outer_lr", "inner_lr", "final_val_loss", "wall_s", "bytes_outer_total"):
                    r[k] = float(r[k])
                if math.isfinite(r["final_val_loss"]):
                    rows.append(r)
    seen, unique = set(), []
    for r in rows:  # two sweeps may share points
        if r["point"] not in seen:
            seen.add(r["point"])
            unique.append(r)
    return unique


def merge_seeds(rows, n_key):
    """One row per configuration: the mean loss over its seeds (names differing only in -sN),
    with loss_min, loss_max and seeds; N is the parameter count fits use."""
    groups = defaultdict(list)
    for r in rows:
        groups[re.sub(r"-s\d+$", "", r["point"])].append(r)
    out = []
    for config, rs in groups.items():
        losses = [r["final_val_loss"] for r in rs]
        m = dict(rs[0], point=config, final_val_loss=float(np.mean(losses)), loss_min=min(losses),
                 loss_max=max(losses), seeds=len(rs), N=rs[0][n_key])
        out.append(m)
    return out


def fit_with_floor(n, loss):
    """L = A * n^alpha + E (E >= 0, the irreducible loss): the E on a fine grid below min(L) whose
    log-space line through L - E leaves the smallest squared error in L. Returns (A, alpha, E)."""
    n, loss = np.asarray(n, float), np.asarray(loss, float)
    if len(set(n)) < 3:
        raise ValueError("a power law with a floor needs at least three distinct sizes")
    best = None
    for e in np.linspace(0.0, 0.999 * loss.min(), 2000):
        alpha, log_a = np.polyfit(np.log(n), np.log(loss - e), 1)
        sse = float(np.sum((math.exp(log_a) * n ** alpha + e - loss) ** 2))
        if best is None or sse < best[0]:
            best = (sse, float(math.exp(log_a)), float(alpha), float(e))
    return best[1:]


def fit_power_law(n, loss):
    """L = A * n^alpha by least squares in log space. Returns (A, alpha)."""
    n, loss = np.asarray(n, float), np.asarray(loss, float)
    if len(n) < 2 or len(set(n)) < 2:
        raise ValueError("a power law needs at least two distinct sizes")
    alpha, log_a = np.polyfit(np.log(n), np.log(loss), 1)
    return float(math.exp(log_a)), float(alpha)


def fit_joint(n, m, loss):
    """L = A * n^alpha * m^beta by least squares in log space. Returns (A, alpha, beta)."""
    X = np.column_stack([np.ones(len(n)), np.log(n), np.log(m)])
    coef, *_ = np.linalg.lstsq(X, np.log(loss), rcond=None)
    return float(math.exp(coef[0])), float(coef[1]), float(coef[2])


def best_per_size(rows):
    """{method: {N: best row}} over every hyperparameter (mean over seeds). Where some
    configurations of a (method, N) have more seeds than others, the best is taken among those
    with the most: the seeded one was picked as the optimum on one seed and then rerun, and a
    minimum over single draws would favour a lucky seed over that mean."""
    most = defaultdict(int)
    for r in rows:
        most[r["method"], r["N"]] = max(most[r["method"], r["N"]], r["seeds"])
    best = defaultdict(dict)
    for r in rows:
        if r["seeds"] < most[r["method"], r["N"]]:
            continue
        cur = best[r["method"]].get(r["N"])
        if cur is None or r["final_val_loss"] < cur["final_val_loss"]:
            best[r["method"]][r["N"]] = r
    return best


def replicas(name):
    """M of diloco-mM[-variant...]."""
    return int(re.match(r"diloco-m(\d+)", name).group(1))


def method_order(name):
    return (0, 0, "") if name == "dp" else (1, replicas(name), name)


def analyse(rows, n_key="params"):
    rows = merge_seeds(rows, n_key)
    best = best_per_size(rows)
    out = {"methods": {}, "joint": None, "best_outer_lr": [], "best_batch": []}
    for meth in sorted(best, key=method_order):
        pts = sorted(best[meth].items())
        ns = [n for n, _ in pts]
        ls = [r["final_val_loss"] for _, r in pts]
        entry = {"N": ns, "loss": ls, "best_point": [r["point"] for _, r in pts],
                 "spread": [r["loss_max"] - r["loss_min"] for _, r in pts], "seeds": [r["seeds"] for _, r in pts]}
        if len(set(ns)) >= 2:
            A, alpha = fit_power_law(ns, ls)
            pred = [A * n ** alpha for n in ns]
            entry.update(A=A, alpha=alpha, residual_pct=[100 * (l / p - 1) for l, p in zip(ls, pred)])
        if len(set(ns)) >= 3:
            A, alpha, E = fit_with_floor(ns, ls)
            pred = [A * n ** alpha + E for n in ns]
            entry["with_floor"] = {"A": A, "alpha": alpha, "E": E,
                                   "residual_pct": [100 * (l / p - 1) for l, p in zip(ls, pred)]}
        if len(set(ns)) >= 3:  # held out: fit without the largest size, predict it
            A2, a2 = fit_power_law(ns[:-1], ls[:-1])
            p = A2 * ns[-1] ** a2
            entry["held_out"] = {"N": ns[-1], "predicted": p, "measured": ls[-1],
                                 "error_pct": 100 * (ls[-1] / p - 1), "A": A2, "alpha": a2}
        out["methods"][meth] = entry
    dil = [(n, replicas(meth), r["final_val_loss"])  # plain DiLoCo only, not its variants
           for meth in best if re.fullmatch(r"diloco-m\d+", meth) for n, r in best[meth].items()]
    if len({d[0] for d in dil}) >= 2 and len({d[1] for d in dil}) >= 2:
        A, alpha, beta = fit_joint(*zip(*dil))
        res = [100 * (l / (A * n ** alpha * m ** beta) - 1) for n, m, l in dil]
        out["joint"] = {"A": A, "alpha": alpha, "beta": beta,
                        "rms_residual_pct": float(np.sqrt(np.mean(np.square(res))))}
    # Best outer lr per (M, N), at the batch and inner lr of that (M, N)'s best point.
    for meth in sorted(best, key=method_order):
        if meth == "dp":
            continue
        for n, b in sorted(best[meth].items()):
            grid = sorted((r["outer_lr"], r["final_val_loss"]) for r in rows
                          if r["method"] == meth and r["N"] == n and r["global_batch"] == b["global_batch"]
                          and r["inner_lr"] == b["inner_lr"] and r["H"] == b["H"])
            out["best_outer_lr"].append({"method": meth, "M": b["M"], "N": n, "best": b["outer_lr"],
                                         "batch": b["global_batch"], "grid": grid})
    # Best global batch per (method, N), where more than one batch was run.
    for meth in sorted(best, key=method_order):
        for n in sorted(best[meth]):
            per_batch = {}
            for r in rows:
                if r["method"] == meth and r["N"] == n:
                    b = r["global_batch"]
                    if b not in per_batch or r["final_val_loss"] < per_batch[b]:
                        per_batch[b] = r["final_val_loss"]
            if len(per_batch) > 1:
                out["best_batch"].append({"method": meth, "N": n, "best": min(per_batch, key=per_batch.get),
                                          "loss_by_batch": sorted(per_batch.items())})
    # How the optima move: per M, the geometric mean of the best outer lr over N, and the slopes of
    # log(best) against log N and log M (a grid of a few values makes these coarse).
    lr_pts = [(e["best"], e["N"], e["M"]) for e in out["best_outer_lr"]]
    if lr_pts:
        by_m = defaultdict(list)
        for lr, _, M in lr_pts:
            by_m[M].append(lr)
        out["outer_lr_summary"] = {
            "geomean_by_M": {str(M): float(np.exp(np.mean(np.log(v)))) for M, v in sorted(by_m.items())},
            "slope_in_N": trend([p[0] for p in lr_pts], [p[1] for p in lr_pts]),
            "slope_in_M": trend([p[0] for p in lr_pts], [p[2] for p in lr_pts])}
    if out["best_batch"]:
        by_m = defaultdict(list)
        for e in out["best_batch"]:
            by_m[e["method"]].append(e["best"])
        out["batch_summary"] = {m: float(np.exp(np.mean(np.log(v)))) for m, v in by_m.items()}
    return out


def trend(values, keys):
    """Slope of log(value) against log(key), for 'how does the optimum move'."""
    if len(set(keys)) < 2:
        return None
    return float(np.polyfit(np.log(keys), np.log(values), 1)[0])


def markdown(fit):
    lines = ["| method | A | alpha | residuals (%) | held out: N, predicted, measured, error |",
             "|---|---|---|---|---|"]
    for meth, e in fit["methods"].items():
        if "A" not in e:
            continue
        h = e.get("held_out")
        ho = f"{h['N']:,}, {h['predicted']:.4f}, {h['measured']:.4f}, {h['error_pct']:+.2f}%" if h else "–"
        lines.append(f"| {meth} | {e['A']:.3f} | {e['alpha']:.4f} | "
                     f"{' '.join(f'{x:+.1f}' for x in e['residual_pct'])} | {ho} |")
    floors = [(m, e["with_floor"]) for m, e in fit["methods"].items() if "with_floor" in e]
    if floors:
        lines += ["", "With an irreducible loss, L = A * N^alpha + E:", "",
                  "| method | A | alpha | E | residuals (%) |", "|---|---|---|---|---|"]
        for meth, f in floors:
            lines.append(f"| {meth} | {f['A']:.3f} | {f['alpha']:.4f} | {f['E']:.4f} | "
                         f"{' '.join(f'{x:+.1f}' for x in f['residual_pct'])} |")
    if fit["joint"]:
        j = fit["joint"]
        lines += ["", f"Joint fit over DiLoCo: L = {j['A']:.3f} * N^{j['alpha']:.4f} * M^{j['beta']:.4f} "
                      f"(rms residual {j['rms_residual_pct']:.2f}%)"]
    sizes = sorted({n for e in fit["methods"].values() for n in e["N"]})
    lines += ["", "Best final validation loss over the grid (mean over seeds ± half the spread, seeds):", "",
              "| N | " + " | ".join(fit["methods"]) + " |", "|---" * (len(fit["methods"]) + 1) + "|"]
    for n in sizes:
        cells = []
        for e in fit["methods"].values():
            if n not in e["N"]:
                cells.append("–")
                continue
            i = e["N"].index(n)
            cell = f"{e['loss'][i]:.4f}" + (f" ± {e['spread'][i] / 2:.4f} ({e['seeds'][i]})" if e["seeds"][i] > 1 else "")
            dp = fit["methods"].get("dp")
            if e is not dp and dp and n in dp["N"]:  # relative to data-parallel at the same N
                cell += f", {100 * (e['loss'][i] / dp['loss'][dp['N'].index(n)] - 1):+.1f}%"
            cells.append(cell)
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    if fit["best_outer_lr"]:
        lrs = sorted({lr for e in fit["best_outer_lr"] for lr, _ in e["grid"]})
        lines += ["", "Outer learning rate: final loss over the grid (best in bold):", "",
                  "| method | N | " + " | ".join(f"{lr:g}" for lr in lrs) + " |", "|---|---|" + "---|" * len(lrs)]
        for e in fit["best_outer_lr"]:
            got = dict(e["grid"])
            cells = [("–" if lr not in got else f"**{got[lr]:.4f}**" if lr == e["best"] else f"{got[lr]:.4f}")
                     for lr in lrs]
            lines.append(f"| {e['method']} | {e['N']:,} | " + " | ".join(cells) + " |")
    if fit.get("outer_lr_summary"):
        o = fit["outer_lr_summary"]
        fmt = lambda x: "–" if x is None else f"{x:+.3f}"
        lines += ["", "Best outer learning rate, geometric mean over N: " +
                  ", ".join(f"M={M}: {v:.2f}" for M, v in o["geomean_by_M"].items()) +
                  f"; slope of log(best) in log N {fmt(o['slope_in_N'])}, in log M {fmt(o['slope_in_M'])}."]
    if fit["best_batch"]:
        lines += ["", "Global batch (sequences): best final loss at each batch (best in bold):", "",
                  "| method | N | losses by batch |", "|---|---|---|"]
        for e in fit["best_batch"]:
            cells = [f"**{b}: {l:.4f}**" if b == e["best"] else f"{b}: {l:.4f}" for b, l in e["loss_by_batch"]]
            lines.append(f"| {e['method']} | {e['N']:,} | " + ", ".join(cells) + " |")
        lines += ["", "Best global batch, geometric mean over N: " +
                  ", ".join(f"{m}: {v:.1f}" for m, v in fit["batch_summary"].items()) + "."]
    return "\n".join(lines) + "\n"


def read_curves(paths):
    curves = defaultdict(list)
    for path in paths:
        base = os.path.basename(path)
        cpath = os.path.join(os.path.dirname(path), base.replace("results", "curves") if "results" in base
                             else "curves-" + base)
        if os.path.exists(cpath):
            with open(cpath, newline="") as f:
                for r in csv.DictReader(f):
                    curves[r["point"]].append((int(r["tokens"]), float(r["val_loss"])))
    return curves


def save_panels(fig, axes, ylabel, path):
    """The common ending of a row of panels: y label and legend on the first, then write."""
    import matplotlib.pyplot as plt
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plots(fit, curves, out_dir, suffix=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {m: plt.cm.viridis(i / max(1, len(fit["methods"]) - 1)) for i, m in enumerate(fit["methods"])}

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for meth, e in fit["methods"].items():
        ax.scatter(e["N"], e["loss"], color=colors[meth], zorder=3)
        if "A" in e:
            xs = np.geomspace(min(e["N"]), max(e["N"]), 50)
            ax.plot(xs, e["A"] * xs ** e["alpha"], color=colors[meth],
                    label=f"{meth}: {e['A']:.2f}·N^{e['alpha']:.3f}")
    ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="final validation loss (nats/byte)",
           title="Best loss over the grid against model size")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"loss_vs_n{suffix}.png"), dpi=120)
    plt.close(fig)

    if curves:
        sizes = sorted({n for e in fit["methods"].values() for n in e["N"]})
        fig, axes = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes), 3.4), squeeze=False)
        for ax, n in zip(axes[0], sizes):
            for meth, e in fit["methods"].items():
                if n in e["N"]:
                    pt = e["best_point"][e["N"].index(n)]
                    if pt in curves:
                        xs, ys = zip(*sorted(curves[pt]))
                        ax.plot(xs, ys, color=colors[meth], label=meth)
            ax.set(title=f"N = {n:,}", xlabel="tokens")
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
            ax.grid(True, alpha=0.3)
        fig.suptitle("Loss curves of the best run of each method and size", fontsize=10)
        save_panels(fig, axes, "validation loss", os.path.join(out_dir, f"curves{suffix}.png"))

    if fit["best_outer_lr"]:
        meths = [m for m in fit["methods"] if m != "dp"]
        fig, axes = plt.subplots(1, len(meths), figsize=(3.4 * len(meths), 3.4), squeeze=False, sharey=True)
        for ax, meth in zip(axes[0], meths):
            for e in fit["best_outer_lr"]:
                if e["method"] == meth:
                    lrs, ls = zip(*e["grid"])
                    dp = fit["methods"].get("dp")
                    ref = dp["loss"][dp["N"].index(e["N"])] if dp and e["N"] in dp["N"] else 1.0
                    ax.plot(lrs, [l / ref for l in ls], marker="o", label=f"N={e['N']:,}")
            ax.set(title=meth, xlabel="outer learning rate")
            ax.grid(True, alpha=0.3)
        save_panels(fig, axes, "final loss / DP loss at the same N", os.path.join(out_dir, f"outer_lr{suffix}.png"))


def batch_plot(fit, out_dir, suffix):
    """Best loss against the global batch, one panel per size, one line per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = sorted({e["N"] for e in fit["best_batch"]})
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.4 * len(sizes), 3.4), squeeze=False)
    methods = list(fit["methods"])
    for ax, n in zip(axes[0], sizes):
        for i, meth in enumerate(methods):
            for e in fit["best_batch"]:
                if e["method"] == meth and e["N"] == n:
                    bs, ls = zip(*e["loss_by_batch"])
                    ax.plot(bs, ls, marker="o", color=plt.cm.viridis(i / max(1, len(methods) - 1)), label=meth)
        ax.set(title=f"N = {n:,}", xlabel="global batch (sequences)", xscale="log")
        batches = sorted({b for e in fit["best_batch"] for b, _ in e["loss_by_batch"]})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
    save_panels(fig, axes, "best final validation loss", os.path.join(out_dir, f"loss_vs_batch{suffix}.png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv", nargs="+", help="results.csv files written by tools/sweep.py")
    ap.add_argument("--out", help="folder for fit.json, fit.md and the plots (default: the first CSV's)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--n", choices=["total", "non-embedding"], default="total",
                    help="the N of the fits: all parameters, or those outside the embedding tables")
    a = ap.parse_args()
    for p in a.csv:
        if not os.path.exists(p):
            sys.exit(f"fit: no such file {p}")
    rows = read_rows(a.csv)
    if not rows:
        sys.exit("fit: no finished runs in " + ", ".join(a.csv))
    out_dir = a.out or os.path.dirname(os.path.abspath(a.csv[0]))
    os.makedirs(out_dir, exist_ok=True)
    fit = analyse(rows, "params" if a.n == "total" else "non_embedding_params")
    fit["n"] = a.n
    # results-batch.csv gives fit-batch.json, fit-batch.md, loss_vs_n-batch.png, ...
    base = os.path.splitext(os.path.basename(a.csv[0]))[0]
    suffix = base[len("results"):] if base.startswith("results") else "-" + base
    for name, text in ((f"fit{suffix}.json", json.dumps(fit, indent=1) + "\n"), (f"fit{suffix}.md", markdown(fit))):
        tmp = os.path.join(out_dir, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out_dir, name))
    print(markdown(fit))
    if not a.no_plots:
        plots(fit, read_curves(a.csv), out_dir, suffix)
        if fit["best_batch"]:
            batch_plot(fit, out_dir, suffix)
        print(f"fit: wrote fit{suffix}.json, fit{suffix}.md and plots to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
