#!/usr/bin/env python3
"""Two corpora with document boundaries for DiPaCo (`prepare --documents paragraphs`): the King
James Bible by chapter (the `bible` program of Debian's bible-kjv) and the GCIDE dictionary by
entry (dict-gcide's /usr/share/dictd/gcide.dict.dz and its index), every STRIDE-th entry so that
both are about the same size. Documents are separated by one empty line; empty lines inside an
entry are dropped so that an entry stays one document.

    dipaco_corpus.py OUTDIR [--stride 9]   ->  OUTDIR/kjv_chapters.txt, OUTDIR/gcide_entries.txt
"""
import argparse
import gzip
import os
import subprocess

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64(s):
    v = 0
    for c in s:
        v = v * 64 + B64.index(c)
    return v


def bible_chapters():
    text = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    chapters, prev = [], None
    for line in text.splitlines():
        if not line.strip():
            continue
        ref = line.split(" ", 1)[0].split(":")[0]  # "Ge1:1" -> "Ge1"
        if ref != prev:
            chapters.append([])
            prev = ref
        chapters[-1].append(line)
    return ["\n".join(c) for c in chapters]


def gcide_entries(stride, root="/usr/share/dictd"):
    data = gzip.open(os.path.join(root, "gcide.dict.dz")).read()
    out = []
    lines = [l for l in open(os.path.join(root, "gcide.index"), encoding="utf-8").read().splitlines()
             if not l.startswith("00-database")]
    for i, line in enumerate(lines):
        if i % stride:
            continue
        _, off, n = line.split("\t")
        entry = data[b64(off):b64(off) + b64(n)].decode("utf-8", "replace")
        out.append("\n".join(l.rstrip() for l in entry.splitlines() if l.strip()))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--stride", type=int, default=9)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for name, docs in (("kjv_chapters.txt", bible_chapters()), ("gcide_entries.txt", gcide_entries(a.stride))):
        with open(os.path.join(a.out, name), "w", encoding="utf-8") as f:
            f.write("\n\n".join(docs) + "\n")
        print(f"{name}: {len(docs)} documents", flush=True)


if __name__ == "__main__":
    main()
