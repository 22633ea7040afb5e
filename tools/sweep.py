#!/usr/bin/env python3
"""Runs a scaling-law sweep: every (model size x method x hyperparameter) point of a grid.

    python tools/sweep.py SWEEP.toml [--dry-run] [--parallel K] [--only SUBSTRING]

The sweep file (TOML or JSON; docs/scaling.md lists every key) names the model sizes, the methods
(dp, diloco-m1, diloco-m2, ...), the H / outer lr / inner lr / global batch grids, the token budget
as a multiple of the parameter count, and the launcher. Each point trains in its own run directory
under `out`; a point whose metrics.jsonl already holds a summary line is skipped, so an interrupted
sweep continues where it stopped. After every finished point the tidy table `out/results.csv` (key
`results_csv`) is rewritten (atomically) from all finished points, with `curves.csv` beside it.

The launcher is a command template: `{ranks}` becomes the point's rank count (the replica count M
for DiLoCo, `dp_ranks` for data-parallel). `mpirun -np {ranks}`, `srun -n {ranks}` or
`mpirun --hostfile hosts -np {ranks}` all work without code changes.
"""
import argparse
import concurrent.futures as futures
import csv
import itertools
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

DEFAULTS = {
    "binary": "build/diloco",
    "launcher": "mpirun --oversubscribe -np {ranks}",
    "parallel": 1,            # points trained at once
    "threads": 0,             # OpenMP threads per point, split over its ranks (0: cores / parallel)
    "tokens_per_param": 20.0,  # token budget D = tokens_per_param * N (N: total parameters)
    "seq_len": 64,
    "methods": ["dp", "diloco-m1", "diloco-m2", "diloco-m4"],
    "H": [30],
    "outer_lr": [0.7],
    "inner_lr": [1e-3],
    "global_batch": [32],      # sequences per inner step, summed over all replicas
    "dp_ranks": 1,
    "warmup_frac": 0.05,       # warmup steps as a fraction of the run (when warmup_steps is 0)
    "warmup_steps": 0,         # a fixed warmup, as the scaling-law paper's 1000 steps
    "seeds": [1337],           # every point once per seed (initialisation and data order)
    "min_outer_rounds": 0,     # DiLoCo points with fewer outer rounds are left out, said so
    "grids": {},               # per method, lists that replace the ones above: {"dp": {"inner_lr": [...]}}
    # [lo, hi]: run only the DiLoCo points whose inner lr times the outer Nesterov's steady-state
    # gain, inner_lr * outer_lr / (1 - 0.9), lies within (the diagonal of the two grids that
    # matters); finished points outside it stay in the tables
    "effective_lr_band": [],
    "min_lr_frac": 0.05,       # cosine floor
    "eval_every_frac": 0.1,    # evaluations along the run, for the loss curves
    "eval_rows": 512,          # validation sequences per evaluation, the same for every point
    "extra_args": "",          # passed to every `diloco train`
    "prepare": "",             # shell command that makes `data` when it is missing ({data}, {binary})
    "results_csv": "results.csv",  # in `out`; curves go to the same name with results -> curves
    "env": {},
}
CSV_FIELDS = ["point", "model", "method", "algo", "M", "H", "outer_lr", "inner_lr", "global_batch",
              "seq_len", "steps", "tokens", "params", "non_embedding_params", "n_layer", "d_model",
              "n_head", "final_val_loss", "wall_s", "bytes_outer_total", "ranks", "seed", "outer_rounds",
              "warmup"]
GRID_KEYS = ("H", "outer_lr", "inner_lr", "global_batch")


def type_error(key, value, expected):
    """The complaint when `value` does not have the type of `expected` (a default), else None."""
    def fits(v, e):
        if isinstance(e, bool):
            return isinstance(v, bool)
        if isinstance(e, int):
            return isinstance(v, int) and not isinstance(v, bool)
        if isinstance(e, float):
            return isinstance(v, (int, float)) and not isinstance(v, bool)
        return isinstance(v, type(e))
    def kind(e):
        return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                dict: "a table"}.get(type(e), type(e).__name__)
    if isinstance(expected, list):
        if not isinstance(value, list) or not all(fits(v, expected[0]) for v in value):
            return f"'{key}' must be a list, each item {kind(expected[0])}, not {value!r}"
    elif not fits(value, expected):
        return f"'{key}' must be {kind(expected)}, not {value!r}"
    return None


def load_sweep(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".json"):
            cfg = json.loads(raw)
        else:
            if tomllib is None:
                sys.exit("sweep: TOML needs Python 3.11 (tomllib); use a .json sweep file instead")
            cfg = tomllib.loads(raw.decode())
    except (OSError, ValueError) as e:  # tomllib's and json's errors name the line and column
        sys.exit(f"sweep: {path}: {e}")
    if not isinstance(cfg, dict):
        sys.exit(f"sweep: {path}: not a table of keys")
    unknown = set(cfg) - set(DEFAULTS) - {"name", "data", "out", "models"}
    if unknown:
        sys.exit(f"sweep: unknown keys in {path}: {', '.join(sorted(unknown))}")
    types = dict(DEFAULTS, name="", data="", out="", models=[{}], seeds=[1], effective_lr_band=[1.0])
    for key, value in cfg.items():
        problem = type_error(key, value, types[key])
        if problem:
            sys.exit(f"sweep: {path}: {problem}")
    for key in ("data", "out", "models"):
        if key not in cfg:
            sys.exit(f"sweep: {path} lacks '{key}'")
    out = dict(DEFAULTS, **cfg)
    base = os.path.dirname(os.path.abspath(path))
    for key in ("data", "out", "binary"):  # relative paths are relative to the sweep file
        if not os.path.isabs(out[key]):
            out[key] = os.path.normpath(os.path.join(base, out[key]))
    for m in out["models"]:
        for k, t in (("name", str), ("n_layer", int), ("d_model", int), ("n_head", int)):
            if k not in m:
                sys.exit(f"sweep: a model lacks '{k}': {m}")
            if not isinstance(m[k], t) or isinstance(m[k], bool):
                sys.exit(f"sweep: {path}: a model's '{k}' must be {'a string' if t is str else 'an integer'}, not {m[k]!r}")
        extra = set(m) - {"name", "n_layer", "d_model", "n_head", "H"}  # a model may have its own H grid
        if extra:
            sys.exit(f"sweep: {path}: unknown keys in model {m['name']}: {', '.join(sorted(extra))}")
        if "H" in m and type_error("H", m["H"], [1]):
            sys.exit(f"sweep: {path}: model {m['name']}: {type_error('H', m['H'], [1])}")
        if m["d_model"] % m["n_head"]:
            sys.exit(f"sweep: model {m['name']}: d_model {m['d_model']} is not a multiple of n_head")
    band = out["effective_lr_band"]
    if band and (len(band) != 2 or not 0 <= band[0] <= band[1]):
        sys.exit(f"sweep: {path}: 'effective_lr_band' must be [lo, hi] with 0 <= lo <= hi, not {band!r}")
    for meth, overrides in out["grids"].items():
        if meth not in out["methods"]:
            sys.exit(f"sweep: {path}: grids names '{meth}', which is not among the methods")
        for k, v in overrides.items():
            if k not in GRID_KEYS:
                sys.exit(f"sweep: {path}: grids.{meth}: unknown key '{k}' (one of {', '.join(GRID_KEYS)})")
            problem = type_error(f"grids.{meth}.{k}", v, DEFAULTS[k])
            if problem:
                sys.exit(f"sweep: {path}: {problem}")
    for meth in out["methods"]:
        if parse_method(meth) is None:
            sys.exit(f"sweep: unknown method '{meth}' (dp, or diloco-mM with -eager, -delayed, -dropP, -droplocalP)")
    return out


def parse_method(meth):
    """dp, or diloco-mM followed by variants: -eager, -delayed, -dropP (P a probability: the paper's
    drop-out, the outer gradient lost), -droplocalP (the replica also keeps its weights).
    Returns (M, extra train options), or None when the name does not parse."""
    if meth == "dp":
        return 0, []
    parts = meth.split("-")
    if len(parts) < 2 or parts[0] != "diloco" or not parts[1].startswith("m") or not parts[1][1:].isdigit():
        return None
    extra = []
    for v in parts[2:]:
        if v in ("eager", "delayed"):
            extra.append(f"--{v}")
        elif v.startswith("droplocal") or v.startswith("drop"):
            p = v[9:] if v.startswith("droplocal") else v[4:]
            try:
                if not 0 < float(p) < 1:
                    return None
            except ValueError:
                return None
            extra += ["--drop-prob", p, "--drop-mode", "replica" if v.startswith("droplocal") else "gradient"]
        else:
            return None
    return int(parts[1][1:]), extra


def param_counts(m, seq_len, vocab=256):
    """Total and non-embedding parameters of the GPT (model/gpt.cpp), tied LM head."""
    C, L = m["d_model"], m["n_layer"]
    embedding = vocab * C + seq_len * C
    blocks = L * (12 * C * C + 13 * C) + 2 * C
    return embedding + blocks, blocks


def grid(cfg, m, meth):
    """The lists one (model, method) pair sweeps: the file's, a model's own H, then the method's grids."""
    g = {k: cfg[k] for k in GRID_KEYS}
    if "H" in m:
        g["H"] = m["H"]
    g.update(cfg["grids"].get(meth, {}))
    return g


def points(cfg, dropped=None):
    """Every run of the grid, as dicts; DP ignores H and the outer learning rate. DiLoCo points
    with fewer than min_outer_rounds rounds are left out (appended to `dropped`, if given)."""
    seen = set()
    for m, meth, seed in itertools.product(cfg["models"], cfg["methods"], cfg["seeds"]):
        yield from model_points(cfg, m, meth, seed, seen, dropped)


def in_band(cfg, meth, inner_lr, outer_lr, outer_momentum=0.9):
    band = cfg["effective_lr_band"]
    if meth == "dp" or not band:
        return True
    effective = inner_lr * outer_lr / (1 - outer_momentum)
    return band[0] * (1 - 1e-9) <= effective <= band[1] * (1 + 1e-9)


def model_points(cfg, m, meth, seed, seen, dropped):
    g = grid(cfg, m, meth)
    # every method of a model trains the same steps, whole rounds of every H any method uses
    all_H = sorted({h for mt in cfg["methods"] if mt != "dp" for h in grid(cfg, m, mt)["H"]} or {1})
    for H, olr, ilr, gb in itertools.product(g["H"], g["outer_lr"], g["inner_lr"], g["global_batch"]):
        M = parse_method(meth)[0]
        if meth == "dp":
            H, olr = 1, 0.0
        name = f"{m['name']}-{meth}-b{gb}-lr{ilr:g}" + ("" if meth == "dp" else f"-H{H}-olr{olr:g}")
        if seed != DEFAULTS["seeds"][0]:
            name += f"-s{seed}"
        if name in seen:
            continue
        seen.add(name)
        ranks = cfg["dp_ranks"] if meth == "dp" else M
        if gb % ranks or cfg["eval_rows"] % gb:
            sys.exit(f"sweep: global batch {gb} must split over {ranks} ranks and divide "
                     f"eval_rows {cfg['eval_rows']} ({name})")
        params, non_emb = param_counts(m, cfg["seq_len"])
        # Whole outer rounds: a last partial round would end DiLoCo on a short, momentum-driven
        # outer step. Every method gets the same steps, hence the same tokens.
        steps = max(1, math.ceil(cfg["tokens_per_param"] * params / (gb * cfg["seq_len"])))
        whole = math.lcm(*all_H)
        steps = math.ceil(steps / whole) * whole
        if meth != "dp" and steps // H < cfg["min_outer_rounds"]:
            if dropped is not None:
                dropped.append(f"{name} ({steps // H} outer rounds)")
            continue
        warmup = cfg["warmup_steps"] or max(1, round(cfg["warmup_frac"] * steps))
        yield dict(point=name, model=m["name"], method=meth, algo="dp" if meth == "dp" else "diloco",
                   M=M or 1, H=H, outer_lr=olr, inner_lr=ilr, global_batch=gb, seq_len=cfg["seq_len"],
                   steps=steps, tokens=steps * gb * cfg["seq_len"], params=params,
                   non_embedding_params=non_emb, n_layer=m["n_layer"], d_model=m["d_model"],
                   n_head=m["n_head"], ranks=ranks, seed=seed, outer_rounds=steps // H, warmup=warmup)


def command(cfg, p, run_dir):
    eval_every = max(1, round(cfg["eval_every_frac"] * p["steps"]))
    args = [cfg["binary"], "train", "--data", cfg["data"], "--out", run_dir,
            "--n-layer", p["n_layer"], "--d-model", p["d_model"], "--n-head", p["n_head"],
            "--seq-len", p["seq_len"], "--batch", p["global_batch"] // p["ranks"],
            "--steps", p["steps"], "--warmup", p["warmup"], "--lr", p["inner_lr"], "--seed", p["seed"],
            "--min-lr-frac", cfg["min_lr_frac"], "--eval-every", eval_every,
            "--eval-batches", cfg["eval_rows"] // p["global_batch"],
            "--log-every", max(1, p["steps"] // 10), "--algo", p["algo"]]
    if p["algo"] == "dp":
        args += ["--workers", 1]
    else:
        args += ["--workers", p["M"], "--inner-steps", p["H"], "--outer-lr", p["outer_lr"]] + parse_method(p["method"])[1]
    launcher = shlex.split(cfg["launcher"].format(ranks=p["ranks"]))
    return launcher + [str(a) for a in args] + shlex.split(cfg["extra_args"])


def summary_of(run_dir):
    """The summary line of a finished run, or None."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        for line in f:
            if '"summary"' in line:
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return None
    return None


def val_curve(run_dir, p):
    """(step, tokens, val_loss) of every evaluation of a run."""
    out = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            if '"val_loss"' in line and '"summary"' not in line:
                e = json.loads(line)
                out.append((e["step"], e["step"] * p["global_batch"] * p["seq_len"], e["val_loss"]))
    return out


def curves_name(results_name):
    return results_name.replace("results", "curves") if "results" in results_name else "curves-" + results_name


def write_atomic_csv(path, fields, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def write_csv(cfg, pts, finished):
    """results.csv, one row per finished point, and curves.csv, its validation losses along the run.
    `finished` maps a point to its (row, curve rows), read from the run directory once: a finished
    run never changes."""
    rows, curves = [], []
    for p in pts:
        if p["point"] not in finished:
            run_dir = os.path.join(cfg["out"], p["point"])
            s = summary_of(run_dir)
            if s is None:
                continue
            finished[p["point"]] = (
                dict(p, final_val_loss=s["final_val_loss"], wall_s=s["wall_s"],
                     bytes_outer_total=s["bytes_outer_total"], tokens=s["tokens"], params=s.get("params", p["params"])),
                [dict(point=p["point"], step=st, tokens=tok, val_loss=v) for st, tok, v in val_curve(run_dir, p)])
        row, curve = finished[p["point"]]
        rows.append(row)
        curves += curve
    write_atomic_csv(os.path.join(cfg["out"], cfg["results_csv"]), CSV_FIELDS, rows)
    write_atomic_csv(os.path.join(cfg["out"], curves_name(cfg["results_csv"])), ["point", "step", "tokens", "val_loss"], curves)
    return len(rows)


def run_point(cfg, p, threads):
    run_dir = os.path.join(cfg["out"], p["point"])
    s = summary_of(run_dir)
    if s is not None:  # finished meanwhile by another sweep sharing `out`
        return 0, 0.0, s
    if os.path.exists(run_dir):  # an unfinished run: start it again from scratch
        shutil.rmtree(run_dir)
    os.makedirs(run_dir)
    env = dict(os.environ, **{k: str(v) for k, v in cfg["env"].items()})
    env["OMP_NUM_THREADS"] = str(max(1, threads // p["ranks"]))
    cmd = command(cfg, p, run_dir)
    t0 = time.time()
    with open(os.path.join(run_dir, "log.txt"), "w") as log:
        log.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    return rc, time.time() - t0, summary_of(run_dir)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweep", help="sweep file (.toml or .json)")
    ap.add_argument("--dry-run", action="store_true", help="print the points and commands only")
    ap.add_argument("--parallel", type=int, help="points at once (overrides the file)")
    ap.add_argument("--only", default="", help="run only points whose name contains this")
    ap.add_argument("--binary", help="the diloco program (overrides the file; e.g. a copy that a rebuild cannot touch)")
    a = ap.parse_args()

    cfg = load_sweep(a.sweep)
    if a.parallel:
        cfg["parallel"] = a.parallel
    if a.binary:
        cfg["binary"] = os.path.abspath(a.binary)
    dropped = []
    pts = list(points(cfg, dropped))
    if dropped:
        print(f"sweep: {len(dropped)} DiLoCo points left out with fewer than {cfg['min_outer_rounds']} "
              f"outer rounds: {', '.join(dropped[:6])}{' ...' if len(dropped) > 6 else ''}", flush=True)
    summaries = {p["point"]: summary_of(os.path.join(cfg["out"], p["point"])) for p in pts}
    # points outside effective_lr_band are not run, but their finished runs stay in the tables
    todo = [p for p in pts if a.only in p["point"] and summaries[p["point"]] is None
            and in_band(cfg, p["method"], p["inner_lr"], p["outer_lr"])]
    done_before = sum(1 for p in pts if a.only in p["point"] and summaries[p["point"]] is not None)
    for p in pts:  # a finished run under this name must be this point (two sweeps may share `out`)
        s = summaries[p["point"]]
        if s is not None and (s["step"] != p["steps"] or s.get("params", p["params"]) != p["params"]):
            sys.exit(f"sweep: {p['point']} in {cfg['out']} finished with {s['step']} steps and "
                     f"{s.get('params')} parameters, but this sweep wants {p['steps']} and {p['params']}: "
                     f"give this sweep its own `out`")
    threads = cfg["threads"] or max(1, (os.cpu_count() or 1) // cfg["parallel"])
    print(f"sweep: {len(pts)} points, {done_before} finished already, {len(todo)} to run "
          f"({len(pts) - done_before - len(todo)} outside effective_lr_band or --only), "
          f"{cfg['parallel']} at once, {threads} threads each; results in {cfg['out']}", flush=True)
    if a.dry_run:
        for p in todo:
            print(p["point"], " ".join(shlex.quote(c) for c in command(cfg, p, os.path.join(cfg["out"], p["point"]))))
        return 0
    if not os.path.exists(cfg["binary"]):
        sys.exit(f"sweep: no binary at {cfg['binary']} (build with tools/build.sh)")
    if not os.path.exists(os.path.join(cfg["data"], "meta.json")) and cfg["prepare"]:
        cmd = cfg["prepare"].format(data=shlex.quote(cfg["data"]), binary=shlex.quote(cfg["binary"]))
        print(f"sweep: preparing the data: {cmd}", flush=True)
        os.makedirs(os.path.dirname(cfg["data"]), exist_ok=True)
        if subprocess.call(cmd, shell=True) != 0:
            sys.exit("sweep: the prepare command failed")
    if not os.path.exists(os.path.join(cfg["data"], "meta.json")):
        sys.exit(f"sweep: no prepared data at {cfg['data']} (diloco prepare --input FILE --out DIR)")
    os.makedirs(cfg["out"], exist_ok=True)
    # Cheapest points first: early results, and the sizes' trend is visible sooner.
    todo.sort(key=lambda p: p["params"] * p["tokens"])
    failed = []
    finished = {}
    start = time.time()
    with futures.ThreadPoolExecutor(max_workers=cfg["parallel"]) as pool:
        jobs = {pool.submit(run_point, cfg, p, threads): p for p in todo}
        # results are taken here, in the main thread, one at a time
        for k, job in enumerate(futures.as_completed(jobs), 1):
            p = jobs[job]
            rc, secs, s = job.result()
            if s is None:
                failed.append(p["point"])
                status = f"FAILED (exit {rc}; see {os.path.join(cfg['out'], p['point'], 'log.txt')})"
            else:
                status = f"val_loss {s['final_val_loss']:.4f}"
            n = write_csv(cfg, pts, finished)
            elapsed = time.time() - start
            print(f"[{k}/{len(todo)}] {p['point']}: {status} in {secs:.0f} s "
                  f"({n} rows in {cfg['results_csv']}, {elapsed / 60:.1f} min so far)", flush=True)
    write_csv(cfg, pts, finished)
    if failed:
        print(f"sweep: {len(failed)} points failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("sweep: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
