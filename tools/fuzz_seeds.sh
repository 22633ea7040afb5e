#!/usr/bin/env bash
# Writes the fuzz targets' seed corpora (tests/fuzz/corpus/<target>/seed-*) from real files the
# project writes: shards and meta.json from `diloco prepare` (bytes and SentencePiece), checkpoints
# of every version from tiny runs (1: dp; 2: diloco in one process, its outer state as extra
# arrays; 3: a SentencePiece run, the tokenizer inside), an llm.c model file from `diloco export`,
# and the example config file. Tiny models (width 4, one block) keep every seed small.
# usage: tools/fuzz_seeds.sh [path/to/diloco]   (default build/diloco)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "${1:-$ROOT/build/diloco}")
CORPUS=$ROOT/tests/fuzz/corpus
WORK=$(mktemp -d /tmp/diloco_seeds.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
mkdir -p "$CORPUS"/{shard,checkpoint,llmc,meta,config}

python3 - > words.txt <<'PY'
import random
random.seed(7)
w = "in the beginning was a word and the cat sat on its mat while dogs ran far away home".split()
print(" ".join(random.choice(w) for _ in range(700)))
PY
python3 - > subword.txt <<'PY'
import random
random.seed(8)
for _ in range(600):
    print(" ".join("".join(random.choice("abcdefghijklmnop") for _ in range(random.randint(2, 7))) for _ in range(10)))
PY
"$BIN" prepare --input words.txt --out data-byte --val-fraction 0.2 >/dev/null 2>&1
"$BIN" prepare --input subword.txt --out data-sp --tokenizer sp --vocab-size 300 >/dev/null 2>&1

TINY="--n-layer 1 --n-head 1 --d-model 4 --seq-len 8 --max-seq-len 8 --batch 2 --steps 1 --log-every 0 --eval-batches 1"
"$BIN" train --data data-byte --out run-dp --algo dp $TINY >/dev/null 2>&1
"$BIN" train --data data-byte --out run-diloco --algo diloco --inner-steps 1 $TINY >/dev/null 2>&1
"$BIN" train --data data-sp --out run-sp --algo dp $TINY >/dev/null 2>&1
"$BIN" export --run run-dp --format llmc --out model.bin >/dev/null 2>&1

cp data-byte/*train*.bin "$CORPUS/shard/seed-byte-train.bin"
cp data-byte/*val*.bin "$CORPUS/shard/seed-byte-val.bin"
cp data-byte/meta.json "$CORPUS/meta/seed-byte.json"
cp data-sp/meta.json "$CORPUS/meta/seed-sp.json"
cp "$(ls run-dp/ckpt/*.ckpt | tail -1)" "$CORPUS/checkpoint/seed-v1-dp.ckpt"
cp "$(ls run-diloco/ckpt/*.ckpt | tail -1)" "$CORPUS/checkpoint/seed-v2-diloco-extras.ckpt"
cp "$(ls run-sp/ckpt/*.ckpt | tail -1)" "$CORPUS/checkpoint/seed-v3-sp-tokenizer.ckpt"
cp model.bin "$CORPUS/llmc/seed-export.bin"
cp "$ROOT/examples/train.toml" "$CORPUS/config/seed-example.toml"
printf '; INI spelling, bare values and flags\n[train]\ninner-steps = 5\nalgo = streaming\nfragments = 2\neager = true\nverify_sync = false\nquant = e3m0\n' \
    > "$CORPUS/config/seed-ini.ini"
for f in "$CORPUS"/*/seed-*; do
    od -An -tx1 -N12 "$f" >/dev/null  # exists and readable
    printf '%8d  %s\n' "$(stat -c %s "$f")" "${f#$ROOT/}"
done
