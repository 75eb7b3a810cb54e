#!/usr/bin/env python3
"""Exact fresh-noise variance of a repack with client conjugates
(proofs/packing.md, Lemma 5(c)). Standard library only:

    python3 proofs/conjugate_noise_check.py

Mirrors the symbolic levels of src/pack.rs (`pack_one`) and the image rule of
`Images::compute` for a conjugate-bearing source, at a small ring degree,
on noise alone: image t < 2^γ of source s is the client's noise polynomial
e_{s,t} (all i.i.d., unit variance), images with bits above γ are τ_g of the
image below (their key-switch noise is Lemma 3's business, left out), levels
above ℓ* are the plain tree C_ℓ. The pre-scale λ = 2^γ·N^(−1) = 2^(−(L−γ))
is left out so that the tree runs on integers; the root is divided by
2^(L−γ) at the end instead (exactly, by Corollary 2.1).

The root is linear in the noises, so the exact variance at position p is the
sum, over every basis vector (s, t, coefficient), of root[p]². The lemma says
it equals 2^γ·|S_p|, |S_p| the number of values present among the 2^γ
positions of p's level-γ node: 4^γ for a full node (what `NoiseBudget::derive`
now uses; an earlier version assumed 2^γ).

Mixed calls (noise-budget.md, Lemma 3(iii)): a plain source in the same call
has pre-scale N^(−1) and key-switched images (here: τ_g of the image below,
noise-free), so its fresh noise must reach its own positions with factor 1
and nowhere else. The script runs every source with conjugates, and also
source 1 plain next to a conjugate-bearing source 0; then the variance at p
must be 2^γ·|S_p^C| + [p holds a plain value], S_p^C the conjugate-bearing
values of p's level-γ node. To stay in integers, a conjugate-bearing basis
vector has value 2^γ, a plain one 1, and the root is divided by N.
"""

import random


def tree_root(n, slots, shared, gamma, basis, plain=()):
    log_n = n.bit_length() - 1
    two_n = 2 * n

    def rot(v, e, negate=False):
        out = [0] * n
        for j, x in enumerate(v):
            k = (j + e) % two_n
            if k >= n:
                k, x = k - n, -x
            out[k] += -x if negate else x
        return out

    def auto(v, g):
        out = [0] * n
        for j, x in enumerate(v):
            k = (j * g) % two_n
            if k >= n:
                k, x = k - n, -x
            out[k] += x
        return out

    images = {}

    def image(src, t):
        if (src, t) not in images:
            client = 0 if src in plain else gamma
            if t < (1 << client):
                v = [0] * n
                if (src, t) == basis[:2]:
                    v[basis[2]] = 1 << client
                images[(src, t)] = v
            else:
                top = t.bit_length() - 1
                images[(src, t)] = auto(image(src, t & ~(1 << top)), (1 << (top + 1)) + 1)
        return images[(src, t)]

    nodes = [[(False, (two_n - v[1]) % two_n, v[0], 0)] if v is not None else [] for v in slots]
    for l in range(1, shared + 1):
        half, g, bit = n >> l, (1 << l) + 1, 1 << (l - 1)
        nxt = []
        for r in range(half):
            even, odd = nodes[r], nodes[r + half]
            terms = list(even) + [(t[0], (t[1] + half) % two_n, t[2], t[3]) for t in odd]
            switched = [(t[0] ^ (k >= len(even)), (t[1] * g) % two_n, t[2], t[3] | bit)
                        for k, t in enumerate(terms)]
            nxt.append(terms + switched)
        nodes = nxt
    level = []
    for terms in nodes:
        acc = [0] * n
        for negate, e, src, t in terms:
            acc = [a + b for a, b in zip(acc, rot(image(src, t), e, negate))]
        level.append(acc)
    for l in range(shared + 1, log_n + 1):
        half, g = n >> l, (1 << l) + 1
        nxt = []
        for r in range(half):
            e, o = level[r], rot(level[r + half], half)
            s = [a + b for a, b in zip(e, o)]
            d = auto([a - b for a, b in zip(e, o)], g)
            nxt.append([a + b for a, b in zip(s, d)])
        level = nxt
    scale = n
    assert all(x % scale == 0 for x in level[0])
    return [x // scale for x in level[0]]


def placements(name, n, rnd):
    bits = n.bit_length() - 1
    if name == "identity":
        return [(0, p) for p in range(n)]
    if name == "reverse":
        return [(0, n - 1 - p) for p in range(n)]
    if name == "bit reversal":
        return [(0, int(format(p, f"0{bits}b")[::-1], 2)) for p in range(n)]
    if name == "same value everywhere":
        return [(0, 0)] * n
    if name == "random permutation":
        perm = list(range(n))
        rnd.shuffle(perm)
        return [(0, i) for i in perm]
    if name == "2 sources, random, repeats":
        return [(rnd.randrange(2), rnd.randrange(n)) for _ in range(n)]
    if name == "60 % present":
        perm = list(range(n))
        rnd.shuffle(perm)
        return [(0, perm[p]) if rnd.random() < 0.6 else None for p in range(n)]
    raise ValueError(name)


def main():
    n = 32
    rnd = random.Random(7)
    print(f"N = {n}: exact variance / (2^γ·|S_p^C| + [p plain]) over all positions "
          "(must be 1.00 / 1.00)\n")
    print("| placement | γ | ℓ* | plain sources | min | max | variance at a full node |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for gamma, shared in ((1, 1), (2, 2), (2, 4), (3, 3)):
        for name, plain in (("identity", ()), ("reverse", ()), ("bit reversal", ()),
                            ("same value everywhere", ()), ("random permutation", ()),
                            ("2 sources, random, repeats", ()), ("60 % present", ()),
                            ("2 sources, random, repeats", (1,))):
            slots = placements(name, n, rnd)
            var = [0] * n
            for src in range(2):
                for t in range(1 if src in plain else 1 << gamma):
                    for c in range(n):
                        root = tree_root(n, slots, shared, gamma, (src, t, c), plain)
                        var = [v + x * x for v, x in zip(var, root)]
            h = n >> gamma
            ratios, full = [], None
            for p in range(n):
                conj = sum(slots[q] is not None and slots[q][0] not in plain
                           for q in range(p % h, n, h))
                own = int(slots[p] is not None and slots[p][0] in plain)
                expected = 2 ** gamma * conj + own
                if expected == 0:
                    assert var[p] == 0
                    continue
                ratios.append(var[p] / expected)
                if conj == 1 << gamma:
                    full = var[p]
            assert min(ratios) == max(ratios) == 1.0, (name, gamma, shared, plain, ratios)
            print(f"| {name} | {gamma} | {shared} | {', '.join(map(str, plain)) or '—'} | "
                  f"{min(ratios):.2f} | {max(ratios):.2f} | "
                  f"{full if full is not None else '—'} (4^γ = {4 ** gamma}) |")


if __name__ == "__main__":
    main()
