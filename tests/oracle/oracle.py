#!/usr/bin/env python3
"""Framework oracle: JAX (float64, CPU) and optax recompute what diloco computed.

Nobody here wrote JAX's attention, autodiff or optax's AdamW and SGD, so a mistake shared by our
kernels and our own float64 references (tests/reference.h) shows up here. diloco's side is
produced by the oracle_dump test program (and the diloco binary for the interchange case).

    oracle.py model|ops|outer|interchange --dump PATH/oracle_dump --diloco PATH/diloco

Prints one line per check and 'N passed, M failed'; exits non-zero on any failure, including a
missing JAX (the set-up script installs it into .venv).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import jax
    import jax.numpy as jnp
    import optax
except ImportError as e:  # fail loudly: an oracle that cannot run must not pass
    print(f"FAIL: cannot import the oracle framework ({e}); run tools/setup.sh", file=sys.stderr)
    sys.exit(1)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_platforms", "cpu")

RESULTS = []


def check(name, ok, detail):
    RESULTS.append(bool(ok))
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")


def rel_err(ours, ref):
    ours = np.asarray(ours, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-300))


def check_rel(name, ours, ref, tol):
    e = rel_err(ours, ref)
    check(name, e <= tol, f"relative error {e:.2e} (tolerance {tol:.0e})")


def load(path, dtype=np.float32, shape=None):
    a = np.fromfile(path, dtype=dtype)
    return a.reshape(shape) if shape is not None else a


# ---------------------------------------------------------------------------------------------
# llm.c model files and the GPT in JAX

LLMC_ORDER = ["wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b",
              "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"]


def llmc_shapes(maxT, V, L, C, Vp):
    return {"wte": (Vp, C), "wpe": (maxT, C), "ln1w": (L, C), "ln1b": (L, C), "qkvw": (L, 3 * C, C),
            "qkvb": (L, 3 * C), "attprojw": (L, C, C), "attprojb": (L, C), "ln2w": (L, C),
            "ln2b": (L, C), "fcw": (L, 4 * C, C), "fcb": (L, 4 * C), "fcprojw": (L, C, 4 * C),
            "fcprojb": (L, C), "lnfw": (C,), "lnfb": (C,)}


def read_llmc(path):
    raw = open(path, "rb").read()
    h = np.frombuffer(raw[:1024], dtype=np.int32)
    assert h[0] == 20240326 and h[1] == 3, f"{path}: not an llm.c fp32 model file"
    maxT, V, L, NH, C, Vp = (int(x) for x in h[2:8])
    body = np.frombuffer(raw[1024:], dtype=np.float32)
    params, off = {}, 0
    for name in LLMC_ORDER:
        shape = llmc_shapes(maxT, V, L, C, Vp)[name]
        n = int(np.prod(shape))
        params[name] = body[off:off + n].reshape(shape).astype(np.float64)
        off += n
    assert off == body.size, f"{path}: {body.size - off} floats left over"
    params["wte"] = params["wte"][:V]  # llm.c pads the vocabulary; the padded rows are not a model's
    return dict(maxT=maxT, V=V, L=L, NH=NH, C=C, Vp=Vp), params


def layer_norm(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + 1e-5) * w + b


def attention(qkv, NH):
    """qkv (B,T,3C) -> (B,T,C) through jax.nn.dot_product_attention(is_causal=True)."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, T, NH, C // NH) for i in range(3))
    return jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(B, T, C)


def gpt_logits(p, tokens, cfg):
    B, T = tokens.shape
    x = p["wte"][tokens] + p["wpe"][:T]
    for l in range(cfg["L"]):
        h = layer_norm(x, p["ln1w"][l], p["ln1b"][l])
        a = attention(h @ p["qkvw"][l].T + p["qkvb"][l], cfg["NH"])
        x = x + a @ p["attprojw"][l].T + p["attprojb"][l]
        h = layer_norm(x, p["ln2w"][l], p["ln2b"][l])
        h = jax.nn.gelu(h @ p["fcw"][l].T + p["fcb"][l], approximate=True)
        x = x + h @ p["fcprojw"][l].T + p["fcprojb"][l]
    x = layer_norm(x, p["lnfw"], p["lnfb"])
    return x @ p["wte"].T


def gpt_loss(p, tokens, targets, cfg):
    logits = gpt_logits(p, tokens, cfg)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def case_model(args, work):
    subprocess.run([args.dump, "model", work], check=True)
    man = json.load(open(os.path.join(work, "manifest.json")))
    cfg, p = read_llmc(os.path.join(work, "model.bin"))
    B, T, V = man["B"], man["T"], cfg["V"]
    tokens = load(os.path.join(work, "tokens.bin"), np.int32, (B, T))
    targets = load(os.path.join(work, "targets.bin"), np.int32, (B, T))

    logits = gpt_logits(p, tokens, cfg)
    check_rel("logits", load(os.path.join(work, "logits.bin"), shape=(B, T, V)), logits, 1e-5)
    loss, grads = jax.value_and_grad(gpt_loss)(p, tokens, targets, cfg)
    check("loss", abs(man["loss"] - float(loss)) <= 1e-5 * float(loss),
          f"diloco {man['loss']:.7f}, jax {float(loss):.7f}")
    _, ours = read_llmc(os.path.join(work, "grads.bin"))
    for name in LLMC_ORDER:  # our fp32 gradients against float64 autodiff, tensor by tensor
        check_rel(f"grad {name}", ours[name], grads[name], 1e-4)

    # 10 steps: AdamW with warmup + cosine, decay on 2-D tensors only, clipping at 1.0 the way
    # torch.nn.utils.clip_grad_norm_ does it (factor max_norm / (norm + 1e-6), capped at 1)
    steps, lr, warm, floor = man["steps"], man["lr"], man["warmup"], man["lr"] * man["min_lr_frac"]

    def schedule(count):  # optax counts from 0, the trainer from 1
        step = count + 1
        cos = floor + 0.5 * (1 + jnp.cos(math.pi * (step - warm) / (steps - warm))) * (lr - floor)
        return jnp.where(step <= warm, lr * step / warm, cos)

    def clip_like_torch(max_norm):
        def update(g, state, params=None):
            norm = optax.global_norm(g)
            scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
            return jax.tree_util.tree_map(lambda x: x * scale, g), state
        return optax.GradientTransformation(lambda params: optax.EmptyState(), update)

    decay_mask = {k: v.ndim >= 2 and k not in ("ln1w", "ln1b", "ln2w", "ln2b", "qkvb", "attprojb",
                                                "fcb", "fcprojb") for k, v in p.items()}
    opt = optax.chain(clip_like_torch(man["grad_clip"]),
                      optax.adamw(schedule, b1=man["beta1"], b2=man["beta2"], eps=man["eps"],
                                  weight_decay=man["weight_decay"], mask=decay_mask))
    state = opt.init(p)
    toks = load(os.path.join(work, "train_tokens.bin"), np.int32, (steps, B, T))
    tgts = load(os.path.join(work, "train_targets.bin"), np.int32, (steps, B, T))
    ours_losses = load(os.path.join(work, "train_losses.bin"))
    ours_norms = load(os.path.join(work, "train_norms.bin"))
    worst_loss = worst_norm = 0.0
    for s in range(steps):
        loss, g = jax.value_and_grad(gpt_loss)(p, toks[s], tgts[s], cfg)
        worst_loss = max(worst_loss, abs(ours_losses[s] - float(loss)) / float(loss))
        worst_norm = max(worst_norm, abs(ours_norms[s] - float(optax.global_norm(g))) / float(optax.global_norm(g)))
        updates, state = opt.update(g, state, p)
        p = optax.apply_updates(p, updates)
    check("10 AdamW steps: per-step losses", worst_loss <= 1e-4, f"worst relative difference {worst_loss:.2e} (tolerance 1e-04)")
    check("10 AdamW steps: gradient norms (clipping active)", worst_norm <= 1e-4 and ours_norms.max() > man["grad_clip"],
          f"worst relative difference {worst_norm:.2e}, largest norm {ours_norms.max():.2f}")
    _, after = read_llmc(os.path.join(work, "model_after.bin"))
    # The key bias has an exactly zero gradient (adding q.b_k to every score of a row leaves the
    # softmax unchanged). In float32 that gradient is rounding noise, which Adam's normalisation
    # turns into steps of up to lr * |g| / eps; float64 noise is 1e9 times smaller. So the key
    # third of qkvb is compared on its own terms: its gradient is noise-sized, and it is left out
    # of the parameter comparison.
    C = cfg["C"]
    k_grad = np.abs(ours["qkvb"][:, C:2 * C]).max()
    check("key-bias gradient is rounding noise", k_grad <= 1e-6 * np.abs(ours["qkvb"]).max(),
          f"max |grad| {k_grad:.1e} vs {np.abs(ours['qkvb']).max():.1e} for the whole tensor")
    for d in (after, p):
        d["qkvb"] = np.concatenate([np.asarray(d["qkvb"])[:, :C], np.asarray(d["qkvb"])[:, 2 * C:]], axis=1)
    worst = max(rel_err(after[k], p[k]) for k in LLMC_ORDER)
    check("10 AdamW steps: final parameters", worst <= 1e-4, f"worst tensor relative error {worst:.2e}")


def case_ops(args, work):
    subprocess.run([args.dump, "ops", work], check=True)
    man = json.load(open(os.path.join(work, "manifest.json")))
    f = lambda name: os.path.join(work, name)
    for i, (B, T, C, NH) in enumerate(man["attention"]):
        qkv = load(f(f"attention{i}_qkv.bin"), shape=(B, T, 3 * C)).astype(np.float64)
        dout = load(f(f"attention{i}_dout.bin"), shape=(B, T, C)).astype(np.float64)
        out, vjp = jax.vjp(lambda x: attention(x, NH), qkv)
        check_rel(f"attention B={B} T={T} C={C} NH={NH} forward", load(f(f"attention{i}_out.bin")), out, 1e-5)
        check_rel(f"attention B={B} T={T} C={C} NH={NH} backward", load(f(f"attention{i}_dqkv.bin")), vjp(dout)[0], 1e-4)
    for i, (N, C) in enumerate(man["layernorm"]):
        x, w, b = (load(f(f"layernorm{i}_{n}.bin")).astype(np.float64) for n in "xwb")
        x = x.reshape(N, C)
        dout = load(f(f"layernorm{i}_dout.bin"), shape=(N, C)).astype(np.float64)
        out, vjp = jax.vjp(layer_norm, x, w, b)
        dx, dw, db = vjp(dout)
        check_rel(f"layernorm N={N} C={C} forward", load(f(f"layernorm{i}_out.bin")), out, 1e-5)
        check_rel(f"layernorm N={N} C={C} dx", load(f(f"layernorm{i}_dx.bin")), dx, 1e-4)
        check_rel(f"layernorm N={N} C={C} dw", load(f(f"layernorm{i}_dw.bin")), dw, 1e-4)
        check_rel(f"layernorm N={N} C={C} db", load(f(f"layernorm{i}_db.bin")), db, 1e-4)
    for i, n in enumerate(man["gelu"]):
        x = load(f(f"gelu{i}_x.bin")).astype(np.float64)
        dout = load(f(f"gelu{i}_dout.bin")).astype(np.float64)
        out, vjp = jax.vjp(lambda v: jax.nn.gelu(v, approximate=True), x)
        check_rel(f"gelu n={n} forward", load(f(f"gelu{i}_out.bin")), out, 1e-5)
        check_rel(f"gelu n={n} backward", load(f(f"gelu{i}_dx.bin")), vjp(dout)[0], 1e-5)
    for i, (N, V) in enumerate(man["crossentropy"]):
        logits = load(f(f"crossentropy{i}_logits.bin"), shape=(N, V)).astype(np.float64)
        tg = load(f(f"crossentropy{i}_targets.bin"), np.int32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, tg)
        dlogits = jax.grad(lambda z: optax.softmax_cross_entropy_with_integer_labels(z, tg).mean())(logits)
        check_rel(f"cross-entropy N={N} V={V} losses", load(f(f"crossentropy{i}_losses.bin")), losses, 1e-5)
        check_rel(f"cross-entropy N={N} V={V} dlogits", load(f(f"crossentropy{i}_dlogits.bin")), dlogits, 1e-5)


def case_outer(args, work):
    subprocess.run([args.dump, "outer", work], check=True)
    man = json.load(open(os.path.join(work, "manifest.json")))
    n, steps = man["n"], man["steps"]
    theta = load(os.path.join(work, "theta0.bin")).astype(np.float64)
    deltas = load(os.path.join(work, "deltas.bin"), shape=(steps, n)).astype(np.float64)
    ours = load(os.path.join(work, "thetas.bin"), shape=(steps, n))
    # the pseudo-gradient plays the gradient's role: optax's sgd with nesterov is PyTorch's
    # SGD(lr, momentum, nesterov=True, dampening=0): m = mu m + g; p -= lr (g + mu m)
    opt = optax.sgd(man["lr"], momentum=man["momentum"], nesterov=True)
    state = opt.init(theta)
    for s in range(steps):
        upd, state = opt.update(deltas[s], state, theta)
        theta = optax.apply_updates(theta, upd)
        check_rel(f"outer Nesterov step {s + 1}", ours[s], theta, 1e-6)


def case_interchange(args, work):
    # an llm.c file written here, independently of diloco: import then export must give it back
    rng = np.random.default_rng(3)
    maxT, V, L, NH, C = 32, 200, 2, 4, 48
    Vp = (V + 127) // 128 * 128
    header = np.zeros(256, dtype=np.int32)
    header[:8] = [20240326, 3, maxT, V, L, NH, C, Vp]
    tensors = []
    for name in LLMC_ORDER:
        t = rng.standard_normal(llmc_shapes(maxT, V, L, C, Vp)[name]).astype(np.float32)
        if name == "wte":
            t[V:] = 0.0
        tensors.append(t.ravel())
    src = os.path.join(work, "src.bin")
    with open(src, "wb") as fh:
        fh.write(header.tobytes() + np.concatenate(tensors).tobytes())
    ck, back = os.path.join(work, "imported.ckpt"), os.path.join(work, "back.bin")
    subprocess.run([args.diloco, "import", "--in", src, "--out", ck], check=True)
    subprocess.run([args.diloco, "export", "--ckpt", ck, "--out", back], check=True)
    same = open(src, "rb").read() == open(back, "rb").read()
    check("llm.c import then export gives back the same bytes", same, f"{os.path.getsize(src)} bytes")


HF_BLOCK = {"ln1w": ("ln_1.weight", False), "ln1b": ("ln_1.bias", False),
            "qkvw": ("attn.c_attn.weight", True), "qkvb": ("attn.c_attn.bias", False),
            "attprojw": ("attn.c_proj.weight", True), "attprojb": ("attn.c_proj.bias", False),
            "ln2w": ("ln_2.weight", False), "ln2b": ("ln_2.bias", False),
            "fcw": ("mlp.c_fc.weight", True), "fcb": ("mlp.c_fc.bias", False),
            "fcprojw": ("mlp.c_proj.weight", True), "fcprojb": ("mlp.c_proj.bias", False)}


def read_hf(directory):
    """A Hugging Face GPT-2 directory, read with the safetensors package (not our code), as the
    oracle's parameters: transformers' Conv1D matrices are (in, out), ours (out, in)."""
    from safetensors.numpy import load_file
    conf = json.load(open(os.path.join(directory, "config.json")))
    t = load_file(os.path.join(directory, "model.safetensors"))
    L = conf["n_layer"]
    p = {"wte": t["transformer.wte.weight"], "wpe": t["transformer.wpe.weight"],
         "lnfw": t["transformer.ln_f.weight"], "lnfb": t["transformer.ln_f.bias"]}
    for ours, (name, conv1d) in HF_BLOCK.items():
        p[ours] = np.stack([t[f"transformer.h.{l}.{name}"].T if conv1d else t[f"transformer.h.{l}.{name}"]
                            for l in range(L)])
    cfg = dict(maxT=conf["n_positions"], V=conf["vocab_size"], L=L, NH=conf["n_head"], C=conf["n_embd"])
    return conf, cfg, {k: v.astype(np.float64) for k, v in p.items()}, sorted(t)


def case_hf(args, work):
    # our export for transformers, read back by the safetensors package into the JAX model: its
    # logits must be ours (model.bin and logits.bin from the model case's dump)
    subprocess.run([args.dump, "model", work], check=True)
    man = json.load(open(os.path.join(work, "manifest.json")))
    ck, out = os.path.join(work, "model.ckpt"), os.path.join(work, "hf")
    subprocess.run([args.diloco, "import", "--in", os.path.join(work, "model.bin"), "--out", ck], check=True)
    subprocess.run([args.diloco, "export", "--ckpt", ck, "--format", "hf", "--out", out], check=True)
    conf, cfg, p, names = read_hf(out)
    want = {"model_type": "gpt2", "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": True, "n_inner": None, "resid_pdrop": 0.0}
    bad = {k: conf.get(k) for k, v in want.items() if conf.get(k) != v}
    check("config.json: GPT-2 with tanh GELU, eps 1e-5, tied head, no dropout", not bad, f"differs: {bad}" if bad else
          f"n_layer {conf['n_layer']}, n_head {conf['n_head']}, n_embd {conf['n_embd']}, vocab {conf['vocab_size']}")
    check("no lm_head.weight stored (tied to wte)", "lm_head.weight" not in names, f"{len(names)} tensors")
    _, src = read_llmc(os.path.join(work, "model.bin"))
    same = all(np.array_equal(p[k], src[k]) for k in LLMC_ORDER)
    check("every tensor equals the model's, bit for bit, after undoing the Conv1D transposes", same,
          f"{sum(v.size for v in p.values())} values")
    B, T, V = man["B"], man["T"], cfg["V"]
    tokens = load(os.path.join(work, "tokens.bin"), np.int32, (B, T))
    check_rel("logits of the exported weights = diloco's logits", load(os.path.join(work, "logits.bin"), shape=(B, T, V)),
              gpt_logits(p, tokens, cfg), 1e-5)
    # an export never overwrites: a directory that exists and is not empty is refused
    r = subprocess.run([args.diloco, "export", "--ckpt", ck, "--format", "hf", "--out", out],
                       capture_output=True, text=True)
    check("export into a non-empty directory is refused", r.returncode != 0 and "not an empty directory" in r.stderr,
          r.stderr.strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=["model", "ops", "outer", "interchange", "hf"])
    ap.add_argument("--dump", required=True)
    ap.add_argument("--diloco", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="diloco_oracle_") as work:
        globals()["case_" + args.case](args, work)
    failed = RESULTS.count(False)
    print(f"{len(RESULTS) - failed} passed, {failed} failed")
    sys.exit(1 if failed or not RESULTS else 0)


if __name__ == "__main__":
    main()
