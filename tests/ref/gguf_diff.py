#!/usr/bin/python3
"""gguf_diff.py: checks that every tensor and every metadata entry of a reference GGUF is present,
with equal value, in a candidate GGUF (the candidate may carry extra keys). Tensors must have the
same dims and type and identical bytes. Uses tools/gguf.py's reader.
usage: gguf_diff.py REFERENCE.gguf CANDIDATE.gguf [--ignore KEY ...]
Prints one line per mismatch and a last line "N passed, N failed"; exit 1 on any mismatch."""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import gguf  # noqa: E402


def same_value(a, b):
    ta, va = a
    tb, vb = b
    if ta != tb:
        return False
    if ta == gguf.ARRAY:
        if va[0] != vb[0] or len(va[1]) != len(vb[1]):
            return False
        if va[0] in (gguf.STRING, gguf.ARRAY):
            return list(va[1]) == list(vb[1])
        return np.array_equal(np.asarray(va[1]), np.asarray(vb[1]))
    return va == vb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ref")
    ap.add_argument("cand")
    ap.add_argument("--ignore", nargs="*", default=[])
    a = ap.parse_args()
    r, c = gguf.Reader(a.ref), gguf.Reader(a.cand)
    passed = failed = 0
    for key in r.kv_order:
        if key in a.ignore:
            continue
        if key not in c.kv:
            print("FAIL key %s: missing" % key)
            failed += 1
        elif not same_value(r.kv[key], c.kv[key]):
            print("FAIL key %s: %r != %r" % (key, str(r.kv[key])[:120], str(c.kv[key])[:120]))
            failed += 1
        else:
            passed += 1
    for name, t in r.tensors.items():
        u = c.tensors.get(name)
        if u is None:
            print("FAIL tensor %s: missing" % name)
            failed += 1
        elif (t.ne, t.type) != (u.ne, u.type):
            print("FAIL tensor %s: ne/type %s/%d != %s/%d" % (name, t.ne, t.type, u.ne, u.type))
            failed += 1
        elif t.raw != u.raw:
            diff = np.abs(t.array() - u.array()).max()
            print("FAIL tensor %s: bytes differ (max abs diff %g)" % (name, diff))
            failed += 1
        else:
            passed += 1
    extra = [n for n in c.tensors if n not in r.tensors]
    if extra:
        print("FAIL extra tensors in candidate: %s" % ", ".join(extra[:10]))
        failed += 1
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
