#!/usr/bin/env python3
"""Compute utilisation of data-parallel, DiLoCo and Streaming DiLoCo over a slow link (docs/simulator.md).

    simulate.py --params 1e9 --layers 24 --step-s 0.06 --gbps 10 --latency-ms 10   # every method
    simulate.py --params 1e9 --tokens 1048576 --chips 256 --tflops 989 --mfu 0.4 --gbps 10 --method streaming
    simulate.py --table [--plot results/simulator/utilisation.png]    # bandwidth for 50..99% at 1B, 10B, 100B
    simulate.py --calibrate runs/simulator/*    # predicted against measured compute_util of real runs

Utilisation = compute time / wall time. One replica's step is compute only; the across-replica link
carries one message at a time at --gbps (bytes / (gbps·1e9/8)) and delivers it --latency-ms later.
"""
import argparse
import json
import math
import os
import sys

QUANT_BITS = {"fp32": 32, "bf16": 16, "int8": 8, "e2m1": 4, "e3m0": 4}
BLOCK_FORMATS = ("int8", "e2m1", "e3m0")  # one fp32 scale per block (kernels/quantize.h)
METHODS = ("dp", "dp-blocking", "diloco", "streaming", "eager")
TARGETS = (0.5, 0.8, 0.9, 0.95, 0.99)


BLOCK = 128  # the trainer's --quant-block default (kernels/quantize.h)
EXCHANGE = "reduce-scatter"  # the trainer's --exchange default (optim/options.h)


def bits_per_value(quant, block=BLOCK):
    return QUANT_BITS[quant] + (32.0 / block if quant in BLOCK_FORMATS else 0.0)


def quant_bytes(quant, n, block=BLOCK):
    """Payload bytes of n values, as kernels/quantize_cpu.cpp lays them out."""
    if quant in ("fp32", "bf16"):
        return n * QUANT_BITS[quant] // 8
    return 4 * -(-n // block) + (n if quant == "int8" else (n + 1) // 2)


def exchange_bytes(payload, M, allreduce, exchange="allgather"):
    """Bytes one replica sends (docs/distributed.md): ring allreduce 2(M-1)/M·S (fp32); compressed
    payloads by all-gather of the M payloads (M-1)·S, or by reduce-scatter (an all-to-all of chunks
    to their owners, then an all-gather of the encoded sums) 2(M-1)/M·S."""
    if M <= 1:
        return 0
    if allreduce or exchange == "reduce-scatter":
        return 2 * payload * (M - 1) // M
    return (M - 1) * payload


# ---- the two timelines --------------------------------------------------------------------------

def run_schedule(steps, compute, sends, gbps, latency_s, overhead=0.0, shared_link=True):
    """Walks `steps` inner steps of `compute` seconds each (a number, or one per step) plus
    `overhead` seconds of other local work. sends[s] lists (bytes, need): an exchange that starts
    when step s ends and must have arrived before step need+1 starts (need == s: it blocks).
    shared_link: messages queue on one link; otherwise each gets the whole link, as the emulated
    link does (comm/comm.cpp). Returns (compute seconds, wall clock at the end of each step)."""
    rate = gbps * 1e9 / 8
    t = link_free = busy = 0.0
    waits, ends = {}, []
    for s in range(1, steps + 1):
        c = compute[s - 1] if isinstance(compute, (list, tuple)) else compute
        t += c + overhead
        busy += c
        t = max(t, waits.pop(s, 0.0))  # exchanges started earlier and needed now
        for nbytes, need in sends.get(s, ()):
            begin = max(t, link_free) if shared_link else t
            link_free = begin + nbytes / rate
            arrive = link_free + latency_s
            if need <= s:
                t = max(t, arrive)
            else:
                waits[need] = max(waits.get(need, 0.0), arrive)
        ends.append(t)
    return busy, ends


def run_dp_layers(steps, c, layers, nbytes, gbps, latency_s):
    """Data-parallel as the paper's per-layer DAG: forward takes c/3 and backward 2c/3, split evenly
    over the layers; a layer's gradient goes on the link as soon as its backward is done (last
    layer first), and layer l's forward in the next step waits for layer l's reduced gradient.
    Layer 0 is reduced last, so the next step cannot start before the whole reduction is over:
    what overlaps is the reduction of layers L-1..1 with the backward of the layers below them."""
    rate = gbps * 1e9 / 8
    f, b, chunk = c / (3 * layers), 2 * c / (3 * layers), nbytes / layers
    ready = [0.0] * layers
    t = link_free = 0.0
    ends = []
    for _ in range(steps):
        for l in range(layers):
            t = max(t, ready[l]) + f
        for l in reversed(range(layers)):
            t += b
            link_free = max(t, link_free) + chunk / rate
            ready[l] = link_free + latency_s
        ends.append(t)
    return c * steps, ends


def fragment_offset(p, H, P):
    return int(p * H / P + 0.5)  # t_p = round(p·H/P), as std::lround in optim/streaming.cpp


def schedule(method, steps, H, tau, frag_bytes, final_bytes=None):
    """{step: [(bytes, need)]} of a DiLoCo-family run. frag_bytes[p]: what fragment p's exchange
    sends (one fragment: DiLoCo). Fragment p syncs at the steps t >= t_p, t > 0, with
    (t - t_p) mod H = 0; its exchange is needed tau steps later (DiLoCo and tau = 0: at once;
    eager: at the fragment's next sync, a whole round later). final_bytes: a finite run, whose
    last step syncs every fragment and waits (what the trainer does so that it ends on one
    model); final_bytes[p] lists what fragment p then sends."""
    P = len(frag_bytes)
    sends = {}
    for p, nbytes in enumerate(frag_bytes):
        t = fragment_offset(p, H, P) or H
        while t <= steps:
            need = t + (H if method == "eager" else 0 if method == "diloco" else tau)
            if final_bytes is None or t < steps:
                sends.setdefault(t, []).append((nbytes, min(need, steps) if final_bytes else need))
            t += H
        if final_bytes is not None:
            sends.setdefault(steps, []).extend((b, steps) for b in final_bytes[p])
    return sends


# ---- a configuration ----------------------------------------------------------------------------

def step_seconds(a):
    if a.step_s:
        return a.step_s
    flops = a.flops or 6.0 * a.params * a.tokens  # 6N FLOPs per token: forward and backward
    return flops / (a.chips * a.tflops * 1e12 * a.mfu)


def method_bytes(a, method):
    """Bytes one replica sends per exchange, one entry per fragment (DP: per step)."""
    if method in ("dp", "dp-blocking"):
        return [exchange_bytes(a.params * a.dp_bits / 8, a.replicas, True)]
    bits = a.bits if a.bits else bits_per_value(a.quant, a.block)
    P = 1 if method == "diloco" else a.fragments
    # fp32 payloads need no decoding and go by allreduce; compressed ones by --exchange
    return [exchange_bytes(a.params / P * bits / 8, a.replicas, bits >= 32, a.exchange)] * P


def utilisation(a, method, gbps):
    """Compute utilisation of a long run: measured over whole periods after a warm-up, and at most
    what the link can carry. The cap matters where exchanges may queue for longer than the
    window (eager, a whole round of slack): there a link slower than the average traffic builds a
    backlog that stalls compute only after many rounds, and in the long run the wall clock is
    the link's busy time."""
    c, lat = step_seconds(a), a.latency_ms / 1000
    per_period = sum(method_bytes(a, method)) * 8 / (gbps * 1e9)  # link seconds per step or round
    if method == "dp":
        _, ends = run_dp_layers(6, c, a.layers, method_bytes(a, method)[0], gbps, lat)
        return min(4 * c / (ends[5] - ends[1]), c / per_period if per_period else 1.0)
    period = 1 if method == "dp-blocking" else a.H
    if method == "dp-blocking":
        sends = {s: [(method_bytes(a, method)[0], s)] for s in range(1, 7)}
    else:
        sends = schedule(method, 6 * period, a.H, a.tau, method_bytes(a, method))
    _, ends = run_schedule(6 * period, c, sends, gbps, lat)
    window = 3 * period * c / (ends[-1] - ends[3 * period - 1])
    return min(window, period * c / per_period if per_period else 1.0)


def bandwidth_for(a, method, target, lo=1e-4, hi=1e6):
    """The least bandwidth (Gbit/s) with utilisation >= target, by bisection on log(bandwidth);
    inf when even `hi` falls short (latency or the step's own shape caps the utilisation)."""
    if utilisation(a, method, hi) < target:
        return math.inf
    if utilisation(a, method, lo) >= target:
        return lo
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if utilisation(a, method, mid) < target else (lo, mid)
    return hi


# ---- the planning table and the plot ------------------------------------------------------------

SIZES = ((1e9, 24), (1e10, 48), (1e11, 96))  # parameters and layers; 3 layers per fragment
ROWS = (("data-parallel, bf16 gradients, reduction overlapped with the backward", "dp", {"dp_bits": 16}),
        ("DiLoCo, fp32, blocking sync", "diloco", {"quant": "fp32"}),
        ("Streaming, fp32, τ=1", "streaming", {"quant": "fp32", "tau": 1}),
        ("Streaming, e3m0 (4 bits + a scale per block), τ=1", "streaming", {"quant": "e3m0", "tau": 1}),
        ("Streaming, e3m0, τ=5", "streaming", {"quant": "e3m0", "tau": 5}),
        ("Streaming eager, e3m0 (overlaps a round)", "eager", {"quant": "e3m0"}))


def with_size(a, params, layers, **changes):
    """a at another size: the step time comes from the chips (a fixed --step-s would not scale with
    N), and P = L/3, the paper's 3 blocks per fragment."""
    b = argparse.Namespace(**vars(a))
    b.params, b.layers, b.fragments, b.step_s = params, layers, max(1, layers // 3), None
    b.__dict__.update(changes)
    return b


def fmt_gbps(x):
    return "unreachable" if math.isinf(x) else f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def table(a):
    """The bandwidth each method needs for each target at each size, as markdown, and a line that
    sets the 95% column beside the paper's headline."""
    head = "| N | step s | method | " + " | ".join(f"{int(t * 100)}%" for t in TARGETS) + " |"
    lines, at95 = [head, "|" + "---|" * (3 + len(TARGETS))], {}
    for params, layers in SIZES:
        for label, method, changes in ROWS:
            b = with_size(a, params, layers, **changes)
            need = [bandwidth_for(b, method, t) for t in TARGETS]
            at95.setdefault(label, []).append(need[TARGETS.index(0.95)])
            lines.append(f"| {params / 1e9:g}B | {step_seconds(b):.3g} | {label} | "
                         + " | ".join(map(fmt_gbps, need)) + " |")
    span = lambda label: f"{fmt_gbps(min(at95[label]))}-{fmt_gbps(max(at95[label]))} Gbit/s"
    dp, s1, s5 = ROWS[0][0], ROWS[3][0], ROWS[4][0]
    lines.append(f"\nAt 95% utilisation over 1B-100B: data-parallel needs {span(dp)} (the paper: 100-300); "
                 f"Streaming with 4-bit e3m0 needs {span(s1)} at τ=1 and {span(s5)} at τ=5 (the paper: 1-5).")
    return "\n".join(lines)


def plot(a, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = [10 ** (k / 20) for k in range(-60, 81)]  # 1e-3 .. 1e4 Gbit/s
    fig, ax = plt.subplots(figsize=(7, 5.5))
    for label, method, changes in ROWS:
        b = argparse.Namespace(**{**vars(a), **changes})
        ax.plot(xs, [utilisation(b, method, x) for x in xs], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("bandwidth per replica (Gbit/s)")
    ax.set_ylabel("compute utilisation")
    ax.set_title(f"{a.params / 1e9:g}B parameters, {a.layers} layers, step {step_seconds(a):.3g} s, "
                 f"M={a.replicas}, H={a.H}, P={a.fragments}, latency {a.latency_ms:g} ms", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    fig.tight_layout()
    tmp = f"{path}.tmp.{os.getpid()}.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)  # atomic: a reader never sees half a file


# ---- calibration against the trainer's own runs -------------------------------------------------

def parse_train_args(tokens):
    """The `diloco train` options of a run (args.txt: its arguments, one per line)."""
    opts, i = {}, 0
    while i < len(tokens):
        key = tokens[i].lstrip("-")
        if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            opts[key], i = tokens[i + 1], i + 2
        else:
            opts[key], i = True, i + 1
    return opts


def gpt_fragments(o, vocab):
    """Parameters of each fragment of the trainer's GPT (model/gpt.cpp layout, optim/streaming.cpp
    homes: the embeddings with block 0's fragment, the final LayerNorm with the last block's)."""
    if "model" in o:
        sys.exit("--calibrate reads --n-layer/--d-model runs; give those instead of a --model preset")
    L, C = int(o.get("n-layer", 4)), int(o.get("d-model", 128))  # the trainer's defaults (optim/options.h)
    T = int(o.get("max-seq-len", 0)) or int(o.get("seq-len", 128))
    P = int(o.get("fragments", 1)) if o["algo"] == "streaming" else 1
    strided = o.get("fragment-pattern", "strided") == "strided"
    home = [(l % P if strided else l * P // L) for l in range(L)]
    sizes = [0] * P
    for l in range(L):
        sizes[home[l]] += 12 * C * C + 13 * C
    sizes[home[0]] += (vocab + T) * C
    sizes[home[L - 1]] += 2 * C
    return sizes


def predict_run(run_dir):
    """Feeds the simulator a run's options, its measured compute seconds of every step and its
    message sizes; returns the figures of one calibration row."""
    if not os.path.exists(os.path.join(run_dir, "args.txt")):
        sys.exit(f"{run_dir}: no args.txt (the run's `diloco train` arguments, one per line; docs/simulator.md)")
    with open(os.path.join(run_dir, "args.txt")) as f:
        o = parse_train_args(f.read().split())
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        lines = [json.loads(l) for l in f if l.strip()]
    summary = next(l for l in lines if l.get("summary"))
    compute = [l["compute_s"] for l in lines if "compute_s" in l and not l.get("summary")]
    meta = os.path.join(o["data"], "meta.json")
    vocab = 256
    if os.path.exists(meta):
        with open(meta) as f:
            vocab = json.load(f)["vocab"]
    M, R, steps = summary["workers"], summary["ranks"], summary["step"]
    G, algo, quant = R // M, o["algo"], o.get("quant", "fp32")
    H, tau, eager = int(o.get("inner-steps", 50)), int(o.get("overlap", 0)), bool(o.get("eager"))
    delayed = bool(o.get("delayed"))  # DiLoCo's one-round delay: eager's timing, no final average
    first = lambda n: -(-n // G)  # rank 0 holds the first slice, the larger one (comm/comm.h)
    frags = gpt_fragments(o, vocab)
    if algo == "dp":
        per_msg = [exchange_bytes(4 * first(sum(frags)), M, True)]
        sends = {s: [(per_msg[0], s)] for s in range(1, steps + 1)}
        total = per_msg[0] * steps
    else:
        # fp32 goes by allreduce, except eager or delayed DiLoCo, which all-gather fp32 gradients
        allreduce = quant == "fp32" and not (algo == "diloco" and (eager or delayed))
        block, exchange = int(o.get("quant-block", BLOCK)), o.get("exchange", EXCHANGE) if algo == "streaming" else "allgather"
        per_msg = [exchange_bytes(quant_bytes(quant, first(n), block), M, allreduce, exchange) for n in frags]
        final = [[b] for b in per_msg]
        if eager and not delayed:  # the last round also averages the replicas' copies of theta
            final = [[b, exchange_bytes(4 * first(n), M, True)] for b, n in zip(per_msg, frags)]
        eager = eager or delayed
        method = "eager" if eager else algo
        sends = schedule(method, steps, H, tau, per_msg, final)
        total = sum(b for msgs in sends.values() for b, _ in msgs)
    gbps, lat = float(o.get("outer-gbps", 0)), float(o.get("outer-latency-ms", 0)) / 1000
    if gbps <= 0:
        gbps = math.inf
    # time that is neither compute nor communication (data, logging, the final evaluation)
    other = (summary["wall_s"] - summary["compute_s"] - summary["comm_s"] - summary["stage_s"]) / steps
    busy, ends = run_schedule(steps, compute, sends, gbps, lat, shared_link=False)
    busy2, ends2 = run_schedule(steps, compute, sends, gbps, lat, other, shared_link=False)
    telemetry = 8 * steps * R  # per-step losses to rank 0, exempt from the link emulation
    return {"run": os.path.basename(os.path.normpath(run_dir)), "algo": algo, "quant": quant, "H": H, "tau": tau,
            "eager": eager, "delayed": delayed, "P": len(frags) if algo == "streaming" else 1, "gbps": gbps, "latency_ms": lat * 1000,
            "steps": steps, "compute_per_step": busy / steps, "other_per_step": other,
            "predicted": busy / ends[-1], "predicted_with_other": busy2 / ends2[-1],
            "measured": summary["compute_util"], "bytes_predicted": total * R,
            "bytes_measured": summary["bytes_outer_total"] - telemetry}


def calibrate(run_dirs):
    print("| run | method | link | compute s/step | other s/step | predicted | predicted + other | measured "
          "| bytes predicted / measured |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in run_dirs:
        r = predict_run(d)
        what = r["algo"] + (f" P={r['P']} τ={r['tau']}" if r["algo"] == "streaming" and not r["eager"] else "")
        what += (" delayed" if r["delayed"] else " eager" if r["eager"] else "") + (f" {r['quant']}" if r["algo"] != "dp" else "")
        print(f"| {r['run']} | {what} | {r['gbps']:g} Gbit/s, {r['latency_ms']:g} ms | {r['compute_per_step']:.3f} "
              f"| {r['other_per_step']:.3f} | {r['predicted']:.3f} | {r['predicted_with_other']:.3f} "
              f"| {r['measured']:.3f} | {r['bytes_predicted'] / max(r['bytes_measured'], 1):.4f} |")


# ---- command line -------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=1e9, help="parameters N")
    ap.add_argument("--layers", type=int, default=24, help="transformer blocks (DP reduces them one by one)")
    ap.add_argument("--step-s", type=float, help="compute seconds of one inner step (else from FLOPs)")
    ap.add_argument("--flops", type=float, help="FLOPs of one replica's step (default 6·N·tokens)")
    ap.add_argument("--tokens", type=float, default=2 ** 20, help="tokens per replica per step")
    ap.add_argument("--chips", type=int, default=256, help="chips per replica")
    ap.add_argument("--tflops", type=float, default=989, help="a chip's peak TFLOP/s (H100 bf16 dense)")
    ap.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation")
    ap.add_argument("--gbps", type=float, default=10, help="link bandwidth per replica, Gbit/s")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="latency of one message")
    ap.add_argument("--replicas", "-M", type=int, default=2)
    ap.add_argument("--H", type=int, default=100, help="inner steps per round")
    ap.add_argument("--fragments", "-P", type=int, default=8)
    ap.add_argument("--tau", type=int, default=1, help="overlap: inner steps an exchange may take")
    ap.add_argument("--quant", default="e3m0", choices=sorted(QUANT_BITS), help="exchange format of the DiLoCo family")
    ap.add_argument("--block", type=int, default=BLOCK, help="values per fp32 scale of the block formats")
    ap.add_argument("--exchange", default=EXCHANGE, choices=("allgather", "reduce-scatter"),
                    help="how compressed payloads travel (the trainer's --exchange)")
    ap.add_argument("--bits", type=float, help="bits per value of the exchange, overriding --quant (e.g. 4.25)")
    ap.add_argument("--dp-bits", type=float, default=16, help="bits per gradient value of data-parallel")
    ap.add_argument("--method", default="all", choices=("all",) + METHODS)
    ap.add_argument("--table", action="store_true", help="bandwidth for 50..99%% utilisation at 1B, 10B, 100B")
    ap.add_argument("--plot", help="PNG of utilisation against bandwidth for the methods of the table")
    ap.add_argument("--calibrate", nargs="+", metavar="RUNDIR", help="predicted against measured compute_util")
    a = ap.parse_args(argv)
    if a.calibrate:
        return calibrate(a.calibrate)
    if a.table:
        print(f"Each replica: {a.chips} chips × {a.tflops:g} TFLOP/s × MFU {a.mfu:g}, {a.tokens:.0f} tokens per step "
              f"(6·N FLOPs per token); M={a.replicas}, H={a.H}, P = layers/3, latency {a.latency_ms:g} ms. "
              "Gbit/s per replica:\n")
        print(table(a))
    if a.plot:
        plot(a, a.plot)
    if a.table or a.plot:
        return
    c = step_seconds(a)
    print(f"N={a.params:.3g}, {a.layers} layers, step {c:.4g} s, M={a.replicas}, H={a.H}, P={a.fragments}, "
          f"τ={a.tau}, link {a.gbps:g} Gbit/s + {a.latency_ms:g} ms")
    for m in (METHODS if a.method == "all" else (a.method,)):
        sent = method_bytes(a, m)
        need = ", ".join(f"{int(t * 100)}%: {fmt_gbps(bandwidth_for(a, m, t))}" for t in TARGETS)
        print(f"  {m:12s} utilisation {utilisation(a, m, a.gbps):.4f}  ({len(sent)} × {sent[0] / 1e6:.4g} MB "
              f"per {'step' if m.startswith('dp') else 'round'}; Gbit/s needed for {need})")


if __name__ == "__main__":
    sys.exit(main())
