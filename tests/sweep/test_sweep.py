#!/usr/bin/env python3
"""Tests of tools/sweep.py and tools/fit.py.

    test_sweep.py --diloco build/diloco [--launcher "mpirun --oversubscribe -np {ranks}"]

  * a 2-point micro grid (DP and DiLoCo M=2) runs end to end through the launcher and leaves one
    tidy CSV row per point whose numbers match the runs' own summaries;
  * a second call skips both finished points without touching them, and a point whose run was cut
    short (no summary line) is run again; a finished run of another token budget is refused;
  * the fitter recovers known A and alpha (and the joint M exponent) from noisy synthetic losses,
    and its held-out prediction is accurate when the data follow the law.
"""
import argparse
import csv
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = None


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fit = load_tool("fit")
sweep = load_tool("sweep")


def word_text(n_words, seed):
    rng = random.Random(seed)
    words = ["the", "and", "of", "unto", "lord", "said", "shall", "he", "his", "in", "that", "land"]
    return " ".join(rng.choice(words) for _ in range(n_words)) + "\n"


class MicroSweep(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.tmp.name
        with open(os.path.join(d, "text.txt"), "w") as f:
            f.write(word_text(20000, 1))
        subprocess.run([ARGS.diloco, "prepare", "--input", os.path.join(d, "text.txt"),
                        "--out", os.path.join(d, "data")], check=True, capture_output=True)
        cls.sweep_file = os.path.join(d, "micro.json")
        with open(cls.sweep_file, "w") as f:
            json.dump({"name": "micro", "data": "data", "out": "out", "binary": ARGS.diloco,
                       "launcher": ARGS.launcher, "threads": 1, "tokens_per_param": 2,
                       "seq_len": 16, "methods": ["dp", "diloco-m2"], "H": [5], "outer_lr": [0.7],
                       "inner_lr": [3e-3], "global_batch": [8], "eval_rows": 16,
                       "env": {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"},
                       "models": [{"name": "m", "n_layer": 1, "d_model": 8, "n_head": 2}]}, f)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_sweep(self):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sweep.py"), self.sweep_file],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout

    def rows(self):
        with open(os.path.join(self.tmp.name, "out", "results.csv"), newline="") as f:
            return {r["point"]: r for r in csv.DictReader(f)}

    def test_1_runs_grid_and_writes_rows(self):
        out = self.run_sweep()
        self.assertIn("2 to run", out)
        rows = self.rows()
        self.assertEqual(sorted(rows), ["m-diloco-m2-b8-lr0.003-H5-olr0.7", "m-dp-b8-lr0.003"])
        params, non_emb = sweep.param_counts({"n_layer": 1, "d_model": 8}, 16)
        for name, r in rows.items():
            summary = sweep.summary_of(os.path.join(self.tmp.name, "out", name))
            self.assertAlmostEqual(float(r["final_val_loss"]), summary["final_val_loss"], places=6)
            self.assertEqual(int(r["params"]), summary["params"])  # the model's own count
            self.assertEqual(int(r["params"]), params)
            self.assertEqual(int(r["non_embedding_params"]), non_emb)
            self.assertEqual(int(r["tokens"]), summary["tokens"])
            # D = 2 N tokens, rounded up to whole rounds of H = 5 steps of 8 x 16 tokens
            self.assertEqual(int(r["steps"]), math.ceil(math.ceil(2 * params / 128) / 5) * 5)
            self.assertTrue(0 < float(r["final_val_loss"]) < math.log(256) + 0.5)
        self.assertEqual(int(rows["m-diloco-m2-b8-lr0.003-H5-olr0.7"]["M"]), 2)
        self.assertGreater(float(rows["m-diloco-m2-b8-lr0.003-H5-olr0.7"]["bytes_outer_total"]), 0)
        self.assertEqual(float(rows["m-dp-b8-lr0.003"]["bytes_outer_total"]), 0)
        with open(os.path.join(self.tmp.name, "out", "curves.csv")) as f:
            curves = list(csv.DictReader(f))
        self.assertGreaterEqual(len([c for c in curves if c["point"] == "m-dp-b8-lr0.003"]), 2)

    def test_2_resume_skips_finished_and_reruns_cut_points(self):
        out_dir = os.path.join(self.tmp.name, "out")
        dp = os.path.join(out_dir, "m-dp-b8-lr0.003", "metrics.jsonl")
        dil = os.path.join(out_dir, "m-diloco-m2-b8-lr0.003-H5-olr0.7", "metrics.jsonl")
        before = os.stat(dp).st_mtime_ns
        out = self.run_sweep()
        self.assertIn("2 finished already, 0 to run", out)
        self.assertEqual(os.stat(dp).st_mtime_ns, before)
        # cut the DiLoCo run short: drop its summary line
        with open(dil) as f:
            lines = [l for l in f if '"summary"' not in l]
        with open(dil, "w") as f:
            f.writelines(lines)
        out = self.run_sweep()
        self.assertIn("1 finished already, 1 to run", out)
        self.assertIn("[1/1] m-diloco-m2-b8-lr0.003-H5-olr0.7: val_loss", out)
        self.assertEqual(os.stat(dp).st_mtime_ns, before)
        self.assertEqual(len(self.rows()), 2)

    def test_3_a_finished_point_of_another_budget_is_refused(self):
        # same point names and `out`, twice the token budget: the finished runs do not fit it
        with open(self.sweep_file) as f:
            body = json.load(f)
        body["tokens_per_param"] = 4
        other = os.path.join(self.tmp.name, "other.json")
        with open(other, "w") as f:
            json.dump(body, f)
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sweep.py"), other],
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("give this sweep its own `out`", r.stderr)

    def test_4_bad_sweep_files_are_refused(self):
        bad = os.path.join(self.tmp.name, "bad.json")
        for body, msg in (({"data": "d", "out": "o", "models": [], "methods": ["fedavg"]}, "unknown method"),
                          ({"data": "d", "out": "o", "models": [], "outer_lrr": [1]}, "unknown keys"),
                          ({"data": "d", "models": []}, "lacks 'out'"),
                          ({"data": "d", "out": "o", "models": [{"name": "x", "n_layer": 1, "d_model": 10,
                                                                  "n_head": 3}]}, "not a multiple"),
                          ({"data": "d", "out": "o", "models": [], "H": ["abc"]}, "'H' must be a list, each item an integer"),
                          ({"data": "d", "out": "o", "models": [], "seq_len": "64"}, "'seq_len' must be an integer"),
                          ({"data": "d", "out": "o", "models": [{"name": "x", "n_layer": "2", "d_model": 8,
                                                                  "n_head": 2}]}, "'n_layer' must be an integer"),
                          ({"data": "d", "out": "o", "models": [{"name": "x", "n_layer": 2, "d_model": 8,
                                                                  "n_head": 2, "heads": 2}]}, "unknown keys in model")):
            with open(bad, "w") as f:
                json.dump(body, f)
            r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sweep.py"), bad, "--dry-run"],
                               capture_output=True, text=True)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn(msg, r.stderr)
        # a TOML file that does not parse: one line naming the file and the place, no traceback
        bad = os.path.join(self.tmp.name, "bad.toml")
        with open(bad, "w") as f:
            f.write('data = "d"\nout = "o"\nsteps = "abc"\n[[[\n')
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sweep.py"), bad, "--dry-run"],
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("bad.toml", r.stderr)
        self.assertIn("line 4", r.stderr)
        self.assertNotIn("Traceback", r.stderr)


    def test_5_seeds_method_grids_model_H_warmup_and_outer_rounds(self):
        # a dry run: the points and commands the grid expands to, nothing trained
        f = os.path.join(self.tmp.name, "grid.json")
        with open(f, "w") as fh:
            json.dump({"data": "data", "out": "out5", "binary": ARGS.diloco, "tokens_per_param": 2,
                       "seq_len": 16, "methods": ["dp", "diloco-m2"], "H": [5], "outer_lr": [0.7],
                       "inner_lr": [3e-3], "global_batch": [8], "eval_rows": 16, "seeds": [1337, 2],
                       "warmup_steps": 7, "min_outer_rounds": 10,
                       "grids": {"dp": {"inner_lr": [1e-2]}, "diloco-m2": {"inner_lr": [2e-3, 4e-3]}},
                       "models": [{"name": "m", "n_layer": 1, "d_model": 8, "n_head": 2, "H": [2, 100]}]}, fh)
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sweep.py"), f, "--dry-run"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = [l for l in r.stdout.splitlines() if l.startswith("m-")]
        names = sorted(l.split()[0] for l in lines)
        # dp at its own lr; diloco-m2 at both of its lrs, H=2 only: H=100 leaves < 10 rounds
        self.assertEqual(names, sorted(["m-dp-b8-lr0.01", "m-dp-b8-lr0.01-s2",
                                        "m-diloco-m2-b8-lr0.002-H2-olr0.7", "m-diloco-m2-b8-lr0.002-H2-olr0.7-s2",
                                        "m-diloco-m2-b8-lr0.004-H2-olr0.7", "m-diloco-m2-b8-lr0.004-H2-olr0.7-s2"]))
        self.assertIn("left out with fewer than 10 outer rounds", r.stdout)
        self.assertIn("H100", r.stdout)
        for l in lines:
            self.assertIn("--warmup 7", l)
            self.assertIn("--seed 2" if l.split()[0].endswith("-s2") else "--seed 1337", l)
        # method variants become train options
        r2 = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import sweep; "
                             "print(sweep.parse_method('diloco-m4-eager'), sweep.parse_method('diloco-m2-drop0.5'), "
                             "sweep.parse_method('diloco-m2-droplocal0.5'), sweep.parse_method('diloco-m2-drop2'), "
                             "sweep.parse_method('fedavg'))", os.path.join(ROOT, "tools")], capture_output=True, text=True)
        self.assertEqual(r2.stdout.strip(), "(4, ['--eager']) (2, ['--drop-prob', '0.5', '--drop-mode', 'gradient']) "
                                            "(2, ['--drop-prob', '0.5', '--drop-mode', 'replica']) None None")
        # every method of a model trains the same steps: whole rounds of every H (lcm of 2 and 100)
        steps = {l.split("--steps ")[1].split()[0] for l in lines}
        self.assertEqual(len(steps), 1)
        self.assertEqual(int(steps.pop()) % 100, 0)
        # effective_lr_band keeps the DiLoCo points with inner * outer / (1 - 0.9) inside, and every DP point:
        # 1e-3 * {0.5, 1, 2} / 0.1 = 5e-3, 1e-2, 2e-2; 4e-3 * {0.5, 1, 2} / 0.1 = 2e-2, 4e-2, 8e-2
        with open(f, "w") as fh:
            json.dump({"data": "data", "out": "out5b", "binary": ARGS.diloco, "tokens_per_param": 2,
                       "seq_len": 16, "methods": ["dp", "diloco-m2"], "H": [2], "outer_lr": [0.5, 1.0, 2.0],
                       "inner_lr": [1e-3, 4e-3], "global_batch": [8], "eval_rows": 16,
                       "effective_lr_band": [0.01, 0.02],
                       "models": [{"name": "m", "n_layer": 1, "d_model": 8, "n_head": 2}]}, fh)
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sweep.py"), f, "--dry-run"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        names = sorted(l.split()[0] for l in r.stdout.splitlines() if l.startswith("m-"))
        self.assertEqual(names, sorted(["m-dp-b8-lr0.001", "m-dp-b8-lr0.004", "m-diloco-m2-b8-lr0.001-H2-olr1",
                                        "m-diloco-m2-b8-lr0.001-H2-olr2", "m-diloco-m2-b8-lr0.004-H2-olr0.5"]))
        with open(f, "w") as fh:
            json.dump({"data": "d", "out": "o", "models": [], "effective_lr_band": [0.02, 0.01]}, fh)
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sweep.py"), f, "--dry-run"],
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("'effective_lr_band' must be [lo, hi]", r.stderr)


class Fitter(unittest.TestCase):
    def test_seeds_are_merged_and_the_floor_is_recovered(self):
        # three seeds of one configuration become one point: the mean, with the spread
        rows = [dict(point=f"a-dp-b8-lr0.01{s}", method="dp", params=1000, non_embedding_params=600, M=1, H=1,
                     outer_lr=0.0, inner_lr=0.01, global_batch=8, final_val_loss=l)
                for s, l in (("", 2.0), ("-s2", 2.2), ("-s3", 2.1))]
        merged = fit.merge_seeds(rows, "non_embedding_params")
        self.assertEqual(len(merged), 1)
        self.assertAlmostEqual(merged[0]["final_val_loss"], 2.1)
        self.assertAlmostEqual(merged[0]["loss_max"] - merged[0]["loss_min"], 0.2)
        self.assertEqual((merged[0]["seeds"], merged[0]["N"]), (3, 600))
        # a single lucky seed elsewhere on the grid does not beat the three-seed mean of the optimum
        lucky = dict(rows[0], point="a-dp-b8-lr0.02", inner_lr=0.02, final_val_loss=2.05)
        best = fit.best_per_size(fit.merge_seeds(rows + [lucky], "non_embedding_params"))
        self.assertAlmostEqual(best["dp"][600]["final_val_loss"], 2.1)
        self.assertEqual(best["dp"][600]["seeds"], 3)
        # L = 5 N^-0.3 + 1.2, exactly: the floor fit finds E, the plain power law cannot
        n = [1e4, 3e4, 1e5, 3e5, 1e6]
        A, alpha, E = fit.fit_with_floor(n, [5 * x ** -0.3 + 1.2 for x in n])
        self.assertAlmostEqual(E, 1.2, delta=0.01)
        self.assertAlmostEqual(alpha, -0.3, delta=0.01)
        with self.assertRaises(ValueError):
            fit.fit_with_floor(n[:2], [1.0, 0.9])

    def test_recovers_power_law_from_noisy_data(self):
        rng = random.Random(7)
        A, alpha = 19.0, -0.098
        ns = [3e7 * 2 ** k for k in range(7)]
        ls = [A * n ** alpha * math.exp(rng.gauss(0, 0.003)) for n in ns]
        A_fit, alpha_fit = fit.fit_power_law(ns, ls)
        # 0.3% noise over a 64x range of N: alpha's standard error is ~0.003 / (sd of ln N * sqrt 7)
        # = 0.0007; allow 4 standard errors. A inherits it through N^alpha at N ~ 1e8 (x e^(18*dalpha)).
        self.assertAlmostEqual(alpha_fit, alpha, delta=0.003)
        self.assertLess(abs(math.log(A_fit / A)), 18.5 * 0.003 + 0.01)

    def test_joint_fit_recovers_m_exponent(self):
        rng = random.Random(3)
        A, alpha, beta = 19.2, -0.0985, 0.0116
        n, m, l = [], [], []
        for N in (3.5e7, 9e7, 1.8e8, 5.5e8, 2.4e9):
            for M in (1, 2, 4, 8):
                n.append(N), m.append(M), l.append(A * N ** alpha * M ** beta * math.exp(rng.gauss(0, 0.002)))
        A_fit, alpha_fit, beta_fit = fit.fit_joint(n, m, l)
        self.assertAlmostEqual(alpha_fit, alpha, delta=0.002)
        self.assertAlmostEqual(beta_fit, beta, delta=0.002)
        self.assertLess(abs(math.log(A_fit / A)), 0.05)

    def test_analysis_takes_best_over_grid_and_predicts_held_out(self):
        rows = []
        for meth, M, A in (("dp", 1, 18.0), ("diloco-m1", 1, 17.8), ("diloco-m2", 2, 18.5)):
            for N in (1e4, 3e4, 1e5, 3e5):
                best = A * N ** -0.1
                for olr, penalty in ((0.3, 1.02), (0.6, 1.0), (1.0, 1.05)):
                    rows.append(dict(point=f"{meth}-{N}-{olr}", method=meth, M=M, H=30, outer_lr=olr,
                                     inner_lr=1e-3, global_batch=32, params=int(N),
                                     final_val_loss=best * penalty))
        out = fit.analyse(rows)
        for meth, A in (("dp", 18.0), ("diloco-m1", 17.8), ("diloco-m2", 18.5)):
            e = out["methods"][meth]
            self.assertAlmostEqual(e["alpha"], -0.1, places=6)
            self.assertAlmostEqual(e["A"], A, places=4)
            self.assertLess(abs(e["held_out"]["error_pct"]), 1e-6)
        self.assertTrue(all(e["best"] == 0.6 for e in out["best_outer_lr"]))
        self.assertAlmostEqual(out["joint"]["beta"], math.log(18.5 / 17.8) / math.log(2), places=6)

    def test_command_line_writes_fits_and_plots(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "results.csv")
            curves = []
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=sweep.CSV_FIELDS)
                w.writeheader()
                for meth, M in (("dp", 1), ("diloco-m1", 1), ("diloco-m2", 2)):
                    for N in (1e4, 4e4, 1.6e5):
                        for olr, b in ((0.3, 16), (0.6, 16), (0.6, 32)):
                            name = f"{meth}-{N:g}-{olr}-{b}"
                            loss = 20 * M ** 0.02 * N ** -0.2 * (1.03 if olr == 0.3 else 1.0) * (1.01 if b == 32 else 1.0)
                            w.writerow(dict(point=name, model="m", method=meth, algo="x", M=M, H=30, outer_lr=olr,
                                            inner_lr=1e-3, global_batch=b, seq_len=64, steps=100, tokens=6400,
                                            params=int(N), non_embedding_params=int(N), n_layer=1, d_model=8,
                                            n_head=2, final_val_loss=loss, wall_s=1, bytes_outer_total=0, ranks=M))
                            curves += [dict(point=name, step=s, tokens=s * 64, val_loss=loss + 1 / s) for s in (10, 50, 100)]
            sweep.write_atomic_csv(os.path.join(d, "curves.csv"), ["point", "step", "tokens", "val_loss"], curves)
            r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "fit.py"), path],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            for name in ("fit.json", "fit.md", "loss_vs_n.png", "curves.png", "outer_lr.png", "loss_vs_batch.png"):
                self.assertGreater(os.path.getsize(os.path.join(d, name)), 100, name)
            with open(os.path.join(d, "fit.json")) as f:
                out = json.load(f)
            self.assertAlmostEqual(out["methods"]["dp"]["alpha"], -0.2, places=6)
            self.assertAlmostEqual(out["joint"]["beta"], 0.02, places=6)
            self.assertTrue(all(e["best"] == 16 for e in out["best_batch"]))

    def test_needs_two_sizes(self):
        with self.assertRaises(ValueError):
            fit.fit_power_law([1e4, 1e4], [3.0, 3.1])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--diloco", required=True)
    ap.add_argument("--launcher", default="mpirun --oversubscribe -np {ranks}")
    ARGS, rest = ap.parse_known_args()
    ARGS.diloco = os.path.abspath(ARGS.diloco)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
