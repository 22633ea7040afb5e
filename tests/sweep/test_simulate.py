#!/usr/bin/env python3
"""Tests of tools/simulate.py, the compute-utilisation simulator (docs/simulator.md): the limits
its model must reach, the bisection, the byte model against the trainer's formulas, and the
calibration mode on a synthetic run directory.

    .venv/bin/python tests/sweep/test_simulate.py
"""
import importlib.util
import json
import math
import os
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("simulate", os.path.join(ROOT, "tools", "simulate.py"))
sim = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sim)

FAMILY = ("diloco", "streaming", "eager")


def config(**changes):
    """The command line's defaults (a 1B model), with changes."""
    a = sim.argparse.Namespace(params=1e9, layers=24, step_s=0.1, flops=None, tokens=2 ** 20, chips=256,
                               tflops=989, mfu=0.4, gbps=10, latency_ms=0.0, replicas=2, H=100, fragments=8,
                               tau=1, quant="e3m0", block=32, bits=None, dp_bits=16, exchange="allgather")
    a.__dict__.update(changes)
    return a


class Limits(unittest.TestCase):
    def test_infinite_bandwidth_is_full_utilisation(self):
        a = config()
        for m in sim.METHODS:
            self.assertAlmostEqual(sim.utilisation(a, m, math.inf), 1.0, places=12, msg=m)

    def test_dp_without_overlap_is_c_over_c_plus_k(self):
        c, k = 0.3, 0.2
        sends = {s: [(1e9 * k / 8, s)] for s in range(1, 11)}  # k seconds at 1 Gbit/s
        busy, ends = sim.run_schedule(10, c, sends, 1.0, 0.0)
        self.assertAlmostEqual(busy / ends[-1], c / (c + k), places=12)
        # the same through a configuration: 2 GB of bf16 gradients at M=2 over 100 Gbit/s
        a = config(step_s=c)
        k = sim.method_bytes(a, "dp-blocking")[0] * 8 / 100e9 + 0.005
        a.latency_ms = 5
        self.assertAlmostEqual(sim.utilisation(a, "dp-blocking", 100), c / (c + k), places=12)

    def test_dp_layer_overlap(self):
        # the reduction of the upper layers hides behind the backward of the lower ones: with k at
        # most the backward less one layer, only the last layer's share k/L and the latency remain
        c, L = 0.3, 24
        a = config(step_s=c, layers=L, latency_ms=2)
        nbytes = sim.method_bytes(a, "dp")[0]
        gbps = nbytes * 8 / 1e9 / (0.5 * c)  # k = c/2 < 2c/3 (1 - 1/L)
        k = 0.5 * c
        self.assertAlmostEqual(sim.utilisation(a, "dp", gbps), c / (c + k / L + 0.002), places=9)
        # a link slower than the whole step: the step is the forward, one layer's backward, k
        k = 3 * c
        expect = c / (c / 3 + 2 * c / 3 / L + k + 0.002)
        self.assertAlmostEqual(sim.utilisation(a, "dp", nbytes * 8 / 1e9 / k), expect, places=9)
        for g in (1, 10, 100, 1000):
            self.assertGreaterEqual(sim.utilisation(a, "dp", g), sim.utilisation(a, "dp-blocking", g))

    def test_diloco_blocking_sync_is_hc_over_hc_plus_k(self):
        c, H = 0.1, 50
        a = config(step_s=c, H=H, quant="fp32", latency_ms=30)
        gbps = 5.0
        k = sim.method_bytes(a, "diloco")[0] * 8 / (gbps * 1e9) + 0.03
        self.assertAlmostEqual(sim.utilisation(a, "diloco", gbps), H * c / (H * c + k), places=12)

    def test_streaming_with_tau_covering_the_exchange_is_full(self):
        c = 0.1
        a = config(step_s=c, tau=5, fragments=4, latency_ms=20)
        exchange = sim.method_bytes(a, "streaming")[0] * 8 / 1e9  # seconds at 1 Gbit/s
        gbps = exchange / (5 * c - 0.02)  # the exchange and its latency take exactly tau steps
        self.assertAlmostEqual(sim.utilisation(a, "streaming", gbps), 1.0, places=9)
        self.assertLess(sim.utilisation(a, "streaming", 0.5 * gbps), 1.0)
        a.tau = 0  # tau = 0 blocks: each of the P exchanges costs its whole time
        k = exchange / gbps + 0.02
        self.assertAlmostEqual(sim.utilisation(a, "streaming", gbps), a.H * c / (a.H * c + a.fragments * k), places=9)

    def test_eager_needs_the_average_bandwidth(self):
        # an exchange may take a whole round: the link only has to carry the round's traffic
        a = config(step_s=0.2, H=50, fragments=5)
        average = sum(sim.method_bytes(a, "eager")) * 8 / 1e9 / (a.H * a.step_s)  # Gbit/s
        self.assertAlmostEqual(sim.utilisation(a, "eager", 1.02 * average), 1.0, places=9)
        for f in (0.3, 0.6, 0.9):
            self.assertAlmostEqual(sim.utilisation(a, "eager", f * average), f, places=6)

    def test_utilisation_increases_with_bandwidth(self):
        grid = [10 ** (e / 4) for e in range(-12, 17)]
        for a in (config(), config(latency_ms=50, step_s=1.0, tau=3, quant="fp32")):
            for m in sim.METHODS:
                u = [sim.utilisation(a, m, g) for g in grid]
                for lo, hi in zip(u, u[1:]):
                    self.assertLessEqual(lo, hi + 1e-12, msg=m)
                self.assertGreater(u[-1], u[0], msg=m)

    def test_bisection_hits_the_target(self):
        a = config(latency_ms=5)
        for m in sim.METHODS:
            for target in (0.5, 0.9, 0.99):
                g = sim.bandwidth_for(a, m, target)
                if math.isinf(g):  # only where latency caps it: DP pays 5 ms every 0.1 s step
                    self.assertEqual((m.startswith("dp"), target), (True, 0.99))
                    self.assertLess(sim.utilisation(a, m, 1e6), target)
                    continue
                self.assertGreaterEqual(sim.utilisation(a, m, g), target - 1e-12)
                self.assertLess(sim.utilisation(a, m, g * 0.999), target, msg=(m, target))

    def test_latency_caps_data_parallel(self):
        # one latency per step on the critical path: c / (c + latency) at best, however fast the link
        a = config(step_s=0.1, latency_ms=20)
        self.assertTrue(math.isinf(sim.bandwidth_for(a, "dp-blocking", 0.9)))
        self.assertTrue(math.isfinite(sim.bandwidth_for(a, "dp-blocking", 0.8)))


class Bytes(unittest.TestCase):
    def test_formats(self):
        self.assertEqual(sim.bits_per_value("e3m0", block=32), 5.0)  # 4 bits and a 32-bit scale per 32 values
        self.assertEqual(sim.bits_per_value("e3m0"), 4.25)  # the trainer's default block, 128
        self.assertEqual(sim.bits_per_value("bf16"), 16)
        # the trainer's payloads (kernels/quantize_cpu.cpp) of fragment 0 of the bench model
        self.assertEqual(sim.quant_bytes("e3m0", 445696, block=32), 278560)
        self.assertEqual(sim.quant_bytes("e3m0", 445696), 4 * 3482 + 222848)
        self.assertEqual(sim.quant_bytes("int8", 33, block=32), 4 * 2 + 33)
        self.assertEqual(sim.quant_bytes("fp32", 10), 40)
        # per replica: all-gather (M-1) payloads, reduce-scatter and allreduce 2(M-1)/M
        self.assertEqual(sim.exchange_bytes(1000, 4, False), 3000)
        self.assertEqual(sim.exchange_bytes(1000, 4, False, "reduce-scatter"), 1500)
        self.assertEqual(sim.exchange_bytes(1000, 4, True), 1500)

    def test_collectives(self):
        self.assertEqual(sim.exchange_bytes(1000, 1, True), 0)
        self.assertEqual(sim.exchange_bytes(1000, 2, True), 1000)
        self.assertEqual(sim.exchange_bytes(1000, 4, True), 1500)   # 2(M-1)/M
        self.assertEqual(sim.exchange_bytes(1000, 4, False), 3000)  # (M-1), all-gather
        a = config(replicas=4, bits=4.25)
        self.assertAlmostEqual(sim.method_bytes(a, "streaming")[0], 3 * 1e9 / 8 * 4.25 / 8)
        a.bits = 32
        self.assertAlmostEqual(sim.method_bytes(a, "streaming")[0], 1.5 * 1e9 / 8 * 4)

    def test_fragments_of_the_bench_model(self):
        o = {"algo": "streaming", "n-layer": "4", "d-model": "128", "seq-len": "128", "fragments": "2"}
        self.assertEqual(sim.gpt_fragments(o, 256), [445696, 396800])  # 0.84M parameters in all
        o["fragment-pattern"] = "sequential"
        self.assertEqual(sum(sim.gpt_fragments(o, 256)), 842496)

    def test_schedule_follows_the_trainer(self):
        # P=2, H=20: fragment 1 at 10, 30, ..., fragment 0 at 20, 40, ...; tau=5; the last step syncs all
        s = sim.schedule("streaming", 100, 20, 5, [7, 9], final_bytes=[[7], [9]])
        self.assertEqual(sorted(s), [10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
        self.assertEqual(s[10], [(9, 15)])
        self.assertEqual(s[20], [(7, 25)])
        self.assertEqual(s[100], [(7, 100), (9, 100)])
        e = sim.schedule("eager", 100, 20, 0, [7, 9], final_bytes=[[7], [9]])
        self.assertEqual(e[90], [(9, 100)])  # needed a round later, at the latest at the end
        d = sim.schedule("diloco", 50, 20, 0, [5], final_bytes=[[5]])
        self.assertEqual(d, {20: [(5, 20)], 40: [(5, 40)], 50: [(5, 50)]})


class Calibration(unittest.TestCase):
    def test_a_synthetic_diloco_run(self):
        # a run whose only waits are its syncs: measured utilisation equals the prediction
        c, steps, H, gbps, lat = 0.05, 40, 20, 0.5, 10.0
        per = 2 * 842496 * 4 * 1 // 2  # fp32 allreduce at M = 2
        k = per * 8 / (gbps * 1e9) + lat / 1000
        wall = steps * c + 2 * k
        with tempfile.TemporaryDirectory() as d:
            args = (f"--data {d}/none --n-layer 4 --n-head 4 --d-model 128 --seq-len 128 --steps {steps} "
                    f"--workers 2 --inner-steps {H} --algo diloco --outer-gbps {gbps} --outer-latency-ms {lat}")
            with open(os.path.join(d, "args.txt"), "w") as f:
                f.write("\n".join(args.split()) + "\n")
            with open(os.path.join(d, "metrics.jsonl"), "w") as f:
                for s in range(1, steps + 1):
                    f.write(json.dumps({"step": s, "compute_s": c, "comm_s": 0.0, "stage_s": 0.0}) + "\n")
                f.write(json.dumps({"summary": True, "step": steps, "workers": 2, "ranks": 2, "wall_s": wall,
                                    "compute_s": steps * c, "comm_s": 2 * k, "stage_s": 0.0,
                                    "compute_util": steps * c / wall,
                                    "bytes_outer_total": 2 * 2 * per + 8 * steps * 2}) + "\n")
            r = sim.predict_run(d)
        self.assertAlmostEqual(r["predicted"], r["measured"], places=9)
        self.assertAlmostEqual(r["predicted_with_other"], r["measured"], places=9)
        self.assertEqual(r["bytes_predicted"], r["bytes_measured"])


if __name__ == "__main__":
    unittest.main()
