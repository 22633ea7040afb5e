#!/usr/bin/env python3
"""Loads `diloco export --format hf` output with transformers' GPT2LMHeadModel.from_pretrained and
prints its mean loss on the rows `diloco eval` reads, so that the two can be compared.

    check_hf.py DIR --data DATA_DIR --batches K --batch B --seq-len T [--device cpu|cuda] [--expect LOSS]

With --expect (diloco eval's figure), exits non-zero unless the two agree to 1e-5 relative: both
are fp32 with the same weights, and each logit sums at most 4C products, so they differ by
rounding, ~1e-7 (a wrong transpose, GELU or epsilon moves the loss by far more).
Needs torch and transformers (the GPU machine has both).
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_torch import diloco_val_rows  # noqa: E402  (the same rows as data/dataset.h)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--data", required=True)
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--expect", type=float, help="diloco eval's loss: fail unless within 1e-5 relative")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    model = GPT2LMHeadModel.from_pretrained(a.dir, torch_dtype=torch.float32).to(a.device).eval()
    tied = model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    rows = diloco_val_rows(a.data, a.seq_len, a.batch * a.batches)
    total = 0.0
    with torch.no_grad():
        for r0 in range(0, len(rows), a.batch):
            chunk = torch.from_numpy(np.ascontiguousarray(rows[r0:r0 + a.batch])).to(a.device)
            logits = model(chunk[:, :-1]).logits.float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), chunk[:, 1:].reshape(-1))) * len(chunk)
    loss = total / len(rows)
    print(f"transformers {__import__('transformers').__version__}: GPT2LMHeadModel from {a.dir} "
          f"(lm_head tied to wte: {tied}) | loss {loss:.6f} over {len(rows)} rows of {a.seq_len}")
    if a.expect is not None:
        rel = abs(loss - a.expect) / abs(a.expect)
        ok = rel <= 1e-5 and tied
        print(f"{'ok' if ok else 'FAIL'}: diloco {a.expect:.6f}, transformers {loss:.6f}, relative difference {rel:.1e}")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
