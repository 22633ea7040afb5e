#!/usr/bin/env python3
"""A PyTorch peer of diloco's GPT-2 (docs/design.md "Model"), for throughput comparison on a GPU
and as an outside oracle of the loss. wte has Vp = V rounded up to a multiple of 128 rows, as
llm.c pads it; the padded rows are zero and the loss is over the first V logits only.

  throughput: peer_torch.py --model gpt2-small --batch 16 --steps 20 [--mode fp32] [--find-max-batch]
  oracle:     peer_torch.py --load-llmc m.bin --eval-rows-like-diloco DATA --batches K --batch B --seq-len T
              (the rows and the number `diloco eval --data DATA --batches K --batch B --seq-len T` gives)
"""
import argparse
import gc
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

LLMC_MAGIC, LLMC_VERSION_FP32 = 20240326, 3
SHARD_MAGIC, SHARD_VERSION = 20240520, 1
# name: (n_layer, n_head, d_model, max_seq_len), as model/gpt.cpp's presets
PRESETS = {"tiny": (2, 2, 64, 128), "mini": (4, 4, 128, 256), "small": (6, 6, 192, 256),
           "base": (8, 8, 256, 512), "gpt2-small": (12, 12, 768, 1024),
           "gpt2-medium": (24, 16, 1024, 1024)}


def padded_vocab(v):
    return (v + 127) // 128 * 128


class Block(nn.Module):
    def __init__(self, C, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(C, eps=1e-5)
        self.qkv = nn.Linear(C, 3 * C)
        self.attn_proj = nn.Linear(C, C)
        self.ln2 = nn.LayerNorm(C, eps=1e-5)
        self.fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, max_seq_len, n_layer, n_head, d_model):
        super().__init__()
        assert d_model % n_head == 0, "n_head must divide d_model"
        self.vocab, self.max_seq_len, self.n_layer, self.n_head, self.d_model = vocab, max_seq_len, n_layer, n_head, d_model
        self.wte = nn.Embedding(padded_vocab(vocab), d_model)
        self.wpe = nn.Embedding(max_seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head) for _ in range(n_layer))
        self.lnf = nn.LayerNorm(d_model, eps=1e-5)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        for name, p in self.named_parameters():
            if p.dim() == 1:  # biases 0, LayerNorm gains 1
                p.fill_(1.0 if name.endswith(("ln1.weight", "ln2.weight", "lnf.weight")) else 0.0)
            else:
                resid = name.endswith(("attn_proj.weight", "mlp_proj.weight"))
                p.normal_(0.0, 0.02 / math.sqrt(2 * self.n_layer) if resid else 0.02)
        self.wte.weight[self.vocab:].zero_()

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = F.linear(self.lnf(x), self.wte.weight)[..., :self.vocab]
        return F.cross_entropy(logits.reshape(-1, self.vocab).float(), targets.reshape(-1))

    def num_params(self):  # the real ones: the padded rows of wte are not counted
        return sum(p.numel() for p in self.parameters()) - (self.wte.weight.shape[0] - self.vocab) * self.d_model


# ---- llm.c model files (docs/formats.md) -------------------------------------------------------
BLOCK_TENSORS = ["ln1.weight", "ln1.bias", "qkv.weight", "qkv.bias", "attn_proj.weight", "attn_proj.bias",
                 "ln2.weight", "ln2.bias", "fc.weight", "fc.bias", "mlp_proj.weight", "mlp_proj.bias"]


def llmc_tensors(m):
    """The tensors after wte in llm.c's order: wpe, each per-layer tensor for all layers, lnf."""
    stacked = [b.get_parameter(name) for name in BLOCK_TENSORS for b in m.blocks]
    return [m.wpe.weight] + stacked + [m.lnf.weight, m.lnf.bias]


def load_llmc(path):
    h = np.fromfile(path, dtype="<i4", count=256)
    if h.size < 256 or h[0] != LLMC_MAGIC:
        sys.exit(f"{path}: not an llm.c model file (magic {h[0] if h.size else None}, expected {LLMC_MAGIC})")
    if h[1] != LLMC_VERSION_FP32:
        sys.exit(f"{path}: version {h[1]} is not supported (only 3, fp32)")
    max_t, V, L, NH, C, Vp = (int(x) for x in h[2:8])
    m = GPT(V, max_t, L, NH, C)
    n = Vp * C + sum(t.numel() for t in llmc_tensors(m))
    if os.path.getsize(path) != 1024 + 4 * n:
        sys.exit(f"{path}: size {os.path.getsize(path)} bytes, its header implies {1024 + 4 * n}")
    body = torch.from_numpy(np.fromfile(path, dtype="<f4", offset=1024).copy())
    with torch.no_grad():
        m.wte.weight.zero_()
        m.wte.weight[:V].copy_(body[:V * C].view(V, C))  # only the first V rows are real
        if Vp > V and body[V * C:Vp * C].abs().max().item() != 0.0:
            print(f"warning: {path}: the padded rows of wte are not zero; they are ignored", file=sys.stderr)
        off = Vp * C
        for t in llmc_tensors(m):
            t.copy_(body[off:off + t.numel()].view_as(t))
            off += t.numel()
    return m


def save_llmc(m, path):
    h = np.zeros(256, dtype="<i4")
    h[:8] = [LLMC_MAGIC, LLMC_VERSION_FP32, m.max_seq_len, m.vocab, m.n_layer, m.n_head, m.d_model, padded_vocab(m.vocab)]
    wte = m.wte.weight.detach().float().cpu().clone()
    wte[m.vocab:] = 0
    parts = [wte] + [t.detach().float().cpu() for t in llmc_tensors(m)]
    with open(path + ".tmp", "wb") as f:
        f.write(h.tobytes())
        for t in parts:
            f.write(t.contiguous().numpy().astype("<f4").tobytes())
    os.replace(path + ".tmp", path)


# ---- tokens ------------------------------------------------------------------------------------
def read_tokens(path, raw_ok=True):
    """An llm.c token shard (1024-byte header, magic 20240520), or else a raw file of uint16 tokens."""
    h = np.fromfile(path, dtype="<i4", count=256)
    if h.size == 256 and h[0] == SHARD_MAGIC:
        if h[1] != SHARD_VERSION or h[2] <= 0 or os.path.getsize(path) != 1024 + 2 * int(h[2]):
            sys.exit(f"{path}: bad shard header (version {h[1]}, count {h[2]}) or size")
        return np.memmap(path, dtype="<u2", mode="r", offset=1024, shape=(int(h[2]),))
    if not raw_ok:
        sys.exit(f"{path}: not a token shard (magic {h[0] if h.size else None}, expected {SHARD_MAGIC})")
    return np.memmap(path, dtype="<u2", mode="r")


def diloco_val_rows(data_dir, T, rows):
    """Rows 0 .. rows-1 of data/dataset.h's unshuffled val TokenStream: the shards named *val*.bin in
    name order, each cut into chunks of T+1 tokens every T tokens, (n-1)//T of them (0 if n <= T),
    no chunk spanning two shards; row r is chunk r mod (total chunks)."""
    names = sorted(n for n in os.listdir(data_dir) if n.endswith(".bin") and "val" in n
                   and os.path.isfile(os.path.join(data_dir, n)))
    if not names:
        sys.exit(f"no val shards (*val*.bin) in {data_dir}")
    chunks = []  # (shard tokens, offset)
    for n in names:
        tok = read_tokens(os.path.join(data_dir, n), raw_ok=False)
        chunks += [(tok, c * T) for c in range((len(tok) - 1) // T if len(tok) > T else 0)]
    if not chunks:
        sys.exit(f"the val split of {data_dir} is too short for one sequence of {T + 1}")
    return np.stack([np.asarray(tok[o:o + T + 1], dtype=np.int64) for tok, o in (chunks[r % len(chunks)] for r in range(rows))])


@torch.no_grad()
def oracle_loss(model, rows, B, device):
    """Mean loss of consecutive batches of B rows, fp32, exact attention; each batch's mean is
    weighted by its rows, as optim/train.cpp's evaluate does."""
    if int(rows.max()) >= model.vocab:
        sys.exit(f"token {int(rows.max())} is outside the model's vocabulary of {model.vocab}")
    model.eval()
    total = 0.0
    with sdpa_kernel(SDPBackend.MATH):
        for r0 in range(0, len(rows), B):
            chunk = torch.from_numpy(rows[r0:r0 + B]).to(device)
            total += float(model(chunk[:, :-1], chunk[:, 1:])) * len(chunk)
    return total / len(rows)


# ---- training ----------------------------------------------------------------------------------
def lr_at(step, total, warmup, lr, min_lr_frac):
    """optim/schedule.h: step from 1; linear warmup, then cosine to lr * min_lr_frac at `total`."""
    if warmup > 0 and step <= warmup:
        return lr * step / warmup
    floor = lr * min_lr_frac
    if total <= warmup:
        return lr
    progress = min(1.0, (step - warmup) / (total - warmup))
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - floor)


def make_optimizer(model, a, device):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, **extra)


class Batches:
    """Synthetic random tokens, or consecutive windows of B*T+1 tokens of a shard."""

    def __init__(self, a, V, device):
        self.tok = read_tokens(a.data) if a.data else None
        self.V, self.device, self.pos = V, device, 0
        self.gen = torch.Generator(device=device).manual_seed(a.seed)

    def next(self, B, T):
        if self.tok is None:
            t = torch.randint(0, self.V, (B, T + 1), device=self.device, generator=self.gen)
        else:
            if self.pos + B * T + 1 > len(self.tok):
                self.pos = 0
            if B * T + 1 > len(self.tok):
                sys.exit(f"{self.tok.filename}: {len(self.tok)} tokens, fewer than one batch of {B * T + 1}")
            w = np.asarray(self.tok[self.pos:self.pos + B * T + 1], dtype=np.int64)
            self.pos += B * T
            t = torch.from_numpy(np.stack([w[r * T:r * T + T + 1] for r in range(B)])).to(self.device)
        return t[:, :-1], t[:, 1:]


def train_step(step_fn, opt, batches, B, T, step, a, total):
    x, y = batches.next(B, T)
    if a.fake_oom_above and B > a.fake_oom_above:
        raise torch.cuda.OutOfMemoryError(f"simulated out of memory at batch {B}")
    loss = step_fn(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    for g in opt.param_groups:
        g["lr"] = lr_at(step, total, a.lr_warmup, a.lr, a.min_lr_frac)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def is_oom(e):
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def find_max_batch(step_fn, opt, batches, T, a, device):
    best, B = None, 4
    while B <= a.max_batch:
        try:
            for s in range(2):
                train_step(step_fn, opt, batches, B, T, s + 1, a, 2)
            synchronize(device)
            print(f"batch {B}: fits", flush=True)
            best, B = B, 2 * B
        except Exception as e:  # an OOM may also arrive wrapped by the compiler
            if not is_oom(e):
                raise
            print(f"batch {B}: out of memory", flush=True)
            break
        finally:
            opt.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return best


def flops_per_token(m, T):
    """nanoGPT/PaLM: 6 N + 12 L T C, N = params without wpe (wte counted once, as the tied head,
    with its V real rows). diloco (model/gpt.cpp, docs/performance.md): 6 N_all + 6 L T C, N_all
    including wpe and the causal half of attention only."""
    N = m.num_params()
    L, C = m.n_layer, m.d_model
    return 6 * (N - m.wpe.weight.numel()) + 12 * L * T * C, 6 * N + 6 * L * T * C


def throughput(model, a, device, T):
    opt = make_optimizer(model, a, device)

    def step_fn(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.mode == "bf16"):
            return model(x, y)

    batches, result = Batches(a, model.vocab, device), {}
    if a.find_max_batch:  # compiled with dynamic batch after the second size: two compilations
        best = find_max_batch(torch.compile(step_fn) if a.compile else step_fn, opt, batches, T, a, device)
        if best is None:
            sys.exit("find-max-batch: even batch 4 does not fit")
        print(f"max batch {best} (doubling from 4, cap {a.max_batch})")
        result["max_batch"] = a.batch = best
        if a.steps <= 0:
            return result
        torch._dynamo.reset()  # the timed run gets a graph specialised to its batch
    step_fn_c = torch.compile(step_fn, dynamic=False) if a.compile else step_fn
    B, total = a.batch, a.warmup_steps + a.steps
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for s in range(1, total + 1):
        if s == a.warmup_steps + 1:  # the first timed step
            synchronize(device)
            if cuda:
                ev0.record()
            t0 = time.perf_counter()
        loss = train_step(step_fn_c, opt, batches, B, T, s, a, total)
    if cuda:
        ev1.record()
    synchronize(device)
    secs = ev0.elapsed_time(ev1) / 1e3 if cuda else time.perf_counter() - t0
    ms = 1e3 * secs / a.steps
    tps = B * T * a.steps / secs
    fpt, fpt_diloco = flops_per_token(model, T)
    peak = a.peak_tflops if a.peak_tflops else (989.4 if a.mode == "bf16" else 66.9)
    mfu, mfu_d = fpt * tps / (peak * 1e12), fpt_diloco * tps / (peak * 1e12)
    print(f"{a.mode}{' + compile' if a.compile else ''} on {device_name(device)} | {model.num_params() / 1e6:.2f}M params "
          f"| B={B} T={T} | {a.steps} timed steps after {a.warmup_steps} warmup")
    print(f"ms/step {ms:.2f} | tokens/s {tps:.1f} | final loss {loss.item():.4f}")
    print(f"MFU {100 * mfu:.2f}% of {peak} TFLOP/s with 6N + 12LTC = {fpt / 1e6:.1f} MFLOP/token "
          f"(N without wpe) | {100 * mfu_d:.2f}% with diloco's 6N_all + 6LTC = {fpt_diloco / 1e6:.1f} MFLOP/token")
    if cuda:
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(f"peak memory {result['peak_mem_gib']} GiB")
    result.update(mode=a.mode, compile=a.compile, device=device_name(device), torch=torch.__version__,
                  n_layer=model.n_layer, n_head=model.n_head, d_model=model.d_model, vocab=model.vocab,
                  padded_vocab=padded_vocab(model.vocab), params=model.num_params(), batch=B, seq_len=T,
                  steps=a.steps, warmup_steps=a.warmup_steps, ms_per_step=ms, tokens_per_s=tps,
                  flops_per_token=fpt, flops_per_token_diloco=fpt_diloco, peak_tflops=peak, mfu=mfu,
                  mfu_diloco=mfu_d, final_loss=loss.item(), data=a.data or "synthetic")
    return result


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mode", choices=["bf16", "fp32"], help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the step (default: on for cuda, off for cpu)")
    p.add_argument("--model", choices=sorted(PRESETS), help="preset (overrides the sizes)")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--seq-len", type=int, help="default: max_seq_len")
    p.add_argument("--max-seq-len", type=int, help="position rows (default: the preset's, or --seq-len)")
    p.add_argument("--vocab", type=int, default=50257, help="real vocabulary; wte is padded to a multiple of 128")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first (compilation happens here)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-warmup", type=int, default=100, help="linear LR warmup steps")
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--data", help="llm.c token shard to train on (default: random tokens)")
    p.add_argument("--peak-tflops", type=float, help="default: 989.4 for bf16, 66.9 for fp32 (H100/H200 SXM)")
    p.add_argument("--find-max-batch", action="store_true", help="double the batch from 4 until out of memory")
    p.add_argument("--max-batch", type=int, default=1024, help="cap for --find-max-batch")
    p.add_argument("--json-out", help="append one JSON line of results to this file")
    p.add_argument("--load-llmc", help="start from an llm.c fp32 model file (diloco export)")
    p.add_argument("--save-llmc", help="write the model as an llm.c fp32 model file at the end")
    p.add_argument("--check-loss", help="fp32 loss of the first B*T+1 tokens of this shard or uint16 file")
    p.add_argument("--eval-rows-like-diloco", metavar="DATA_DIR",
                   help="fp32 loss of the val rows `diloco eval --batches K --batch B --seq-len T` uses")
    p.add_argument("--batches", type=int, default=1, help="K for --eval-rows-like-diloco")
    p.add_argument("--fake-oom-above", type=int, default=0, help=argparse.SUPPRESS)  # tests the OOM path
    a = p.parse_args()

    device = torch.device(a.device)
    a.mode = a.mode or ("bf16" if device.type == "cuda" else "fp32")
    a.compile = (device.type == "cuda") if a.compile is None else a.compile
    if a.mode == "fp32" or a.check_loss or a.eval_rows_like_diloco:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    else:
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(a.seed)
    if a.load_llmc:
        model = load_llmc(a.load_llmc)
    else:
        L, NH, C, max_t = PRESETS[a.model] if a.model else (a.n_layer, a.n_head, a.d_model, None)
        max_t = a.max_seq_len or max_t or a.seq_len or 1024
        model = GPT(a.vocab, max_t, L, NH, C)
    model.to(device)
    T = a.seq_len or model.max_seq_len
    if T > model.max_seq_len:
        sys.exit(f"--seq-len {T} exceeds the model's max_seq_len {model.max_seq_len}")
    print(f"model: vocab={model.vocab} (wte rows {padded_vocab(model.vocab)}) max_seq_len={model.max_seq_len} "
          f"n_layer={model.n_layer} n_head={model.n_head} d_model={model.d_model} | {model.num_params()} params", flush=True)

    result = None
    if a.check_loss or a.eval_rows_like_diloco:
        if a.check_loss:
            tok = read_tokens(a.check_loss)
            if len(tok) < a.batch * T + 1:
                sys.exit(f"{a.check_loss}: {len(tok)} tokens, fewer than B*T+1 = {a.batch * T + 1}")
            w = np.asarray(tok[:a.batch * T + 1], dtype=np.int64)
            rows = np.stack([w[r * T:r * T + T + 1] for r in range(a.batch)])
        else:
            rows = diloco_val_rows(a.eval_rows_like_diloco, T, a.batch * a.batches)
        loss = oracle_loss(model, rows, a.batch, device)
        print(f"val_loss {loss:.6f}")
        print(f"loss {loss:.9g} over {len(rows)} rows of {T} (fp32, exact attention)")
        result = dict(loss=loss, rows=len(rows), seq_len=T, batch=a.batch)
    elif a.steps > 0 or a.find_max_batch:
        result = throughput(model, a, device, T)
    if a.save_llmc:
        save_llmc(model, a.save_llmc)
        print(f"wrote {a.save_llmc}")
    if a.json_out and result is not None:
        with open(a.json_out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
