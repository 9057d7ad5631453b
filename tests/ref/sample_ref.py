#!/usr/bin/python3
"""sample_ref.py: independent numpy reference of kiln's sampling distribution (vLLM v1 semantics).

Reads cases from stdin, one per line, whitespace-separated numbers:
  T top_p top_k min_p presence frequency repetition
  n_bias (token bias)*  n_prompt ids*  n_gen ids*  n_mask ids*  V logits*
and prints, per case, one line: the V probabilities the sampler draws from, then the V raw
log-probabilities (log-softmax of the unmodified logits). Written from vLLM's documented order
(logit bias -> repetition/frequency/presence penalties -> masks -> greedy | temperature -> min-p ->
top-k -> top-p as "ascending cumsum <= 1 - p is removed"), not from kiln's C code.
Run with /usr/bin/python3 (Debian's numpy).
"""
import sys
from collections import Counter

import numpy as np


def softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x)
    e = np.exp(x - m)
    return e / e.sum()


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x)
    return x - (m + np.log(np.exp(x - m).sum()))


def distribution(T, top_p, top_k, min_p, pres, freq, rep, bias, prompt, gen, mask, logits):
    V = len(logits)
    l = np.array(logits, dtype=np.float64)
    for tok, b in bias:
        l[tok] += min(100.0, max(-100.0, b))
    if rep != 1.0:
        for tok in set(prompt) | set(gen):
            l[tok] = l[tok] / rep if l[tok] > 0 else l[tok] * rep
    for tok, c in Counter(gen).items():
        l[tok] -= freq * c + pres
    for tok in mask:
        l[tok] = -np.inf
    if T < 1e-5:
        out = np.zeros(V)
        out[int(np.argmax(l))] = 1.0  # first maximum = lowest id
        return out
    l = l / T
    if min_p > 0:
        p = softmax(l)
        l[p < min_p * p.max()] = -np.inf
    ids = np.arange(V)
    if 0 < top_k < V:
        order = np.lexsort((ids, -l))  # by logit desc, then id asc
        l[order[top_k:]] = -np.inf
    if top_p < 1.0:
        order = np.lexsort((-ids, l))  # ascending: the reverse of (logit desc, id asc)
        p_sorted = softmax(l[order])
        remove = np.cumsum(p_sorted) <= 1.0 - top_p
        remove[-1] = False
        l[order[remove]] = -np.inf
    return softmax(l)


def main():
    for line in sys.stdin:
        f = line.split()
        if not f:
            continue
        pos = 0

        def take(n):
            nonlocal pos
            v = f[pos:pos + n]
            pos += n
            return v

        T, top_p, top_k, min_p, pres, freq, rep = take(7)
        T, top_p, min_p, pres, freq, rep = map(float, (T, top_p, min_p, pres, freq, rep))
        top_k = int(top_k)
        nb = int(take(1)[0])
        bv = take(2 * nb)
        bias = [(int(bv[2 * i]), float(bv[2 * i + 1])) for i in range(nb)]
        prompt = [int(x) for x in take(int(take(1)[0]))]
        gen = [int(x) for x in take(int(take(1)[0]))]
        mask = [int(x) for x in take(int(take(1)[0]))]
        V = int(take(1)[0])
        logits = [float(x) for x in take(V)]
        probs = distribution(T, top_p, top_k, min_p, pres, freq, rep, bias, prompt, gen, mask, logits)
        raw = log_softmax(logits)
        print(" ".join("%.9g" % x for x in probs) + " " + " ".join("%.9g" % x for x in raw))


if __name__ == "__main__":
    main()
