#!/usr/bin/env python3
"""Noise-only simulation of the hybrid key switch and of PackLWEs with shared
levels at N = 4096 (proofs/packing.md, Lemma P5; proofs/noise-budget.md, N2).

Optional cross-check, not a test: needs numpy (`pip install numpy`).

    python3 proofs/pack_noise_sim.py [trials] [seed]

Model. Every ciphertext operation of src/pack.rs is linear in phases, so the
packed noise is computed on noise polynomials alone (leaf noise 0, so only the
key-switch part is measured). One key switch adds the rounding noise of
src/rlwe/keyswitch.rs, ε = (Y − [Y]_P)/P with Y = r·s and r uniform centred
mod P (r is X_a mod P); the digit term Σ d_j e_j / P (variance 0.33 for b8)
is left out. Distinct key switches draw independent r. The secret s is one
fixed binary key, as in the crate. The tree mirrors pack.rs: symbolic terms
± X^e · D_t(c_source) for levels 1..ℓ*, one image D_t per (source, t), then
one key switch per node.
"""

import math
import sys

import numpy as np

P = 2147377153
N = 4096
L = 12
TWO_N = 2 * N

trials = int(sys.argv[1]) if len(sys.argv) > 1 else 16
rng = np.random.default_rng(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
s = rng.integers(0, 2, N).astype(np.int64)
S_FFT = np.fft.rfft(np.concatenate([s, np.zeros(N, np.int64)]))


def times_s(r):
    """Exact negacyclic r·s for |r| < 2^31 (two 15/16-bit halves, exact in float64)."""
    out = np.zeros(N, np.int64)
    for part, shift in ((r & 0x7FFF, 0), (r >> 15, 15)):
        c = np.fft.irfft(np.fft.rfft(np.concatenate([part, np.zeros(N, np.int64)])) * S_FFT, TWO_N)
        c = np.rint(c).astype(np.int64)
        out += (c[:N] - c[N:]) << shift
    return out


def ks_noise():
    r = rng.integers(0, P, N, dtype=np.int64)
    r = np.where(r > P // 2, r - P, r)
    y = times_s(r)
    rem = np.mod(y, P)
    rem = np.where(rem > P // 2, rem - P, rem)
    return (y - rem) // P


def rot(v, e, negate=False):
    """X^e · v in Z[X]/(X^N + 1)."""
    ext = np.concatenate([v, -v, v, -v])
    start = (TWO_N - e % TWO_N) % TWO_N
    out = ext[start:start + N]
    return -out if negate else out


def auto(v, g):
    out = np.zeros(N, np.int64)
    j = (np.arange(N) * g) % TWO_N
    low = j < N
    out[j[low]] = v[low]
    out[j[~low] - N] = -v[~low]
    return out


def pack_noise(slots, shared):
    images = {}

    def image(src, t):
        if (src, t) not in images:
            if t == 0:
                images[(src, t)] = np.zeros(N, np.int64)
            else:
                top = t.bit_length() - 1
                below = image(src, t & ~(1 << top))
                images[(src, t)] = auto(below, (1 << (top + 1)) + 1) + ks_noise()
        return images[(src, t)]

    nodes = [[(False, (TWO_N - v[1]) % TWO_N, v[0], 0)] if v is not None else [] for v in slots]
    for l in range(1, shared + 1):
        half, g, bit = N >> l, (1 << l) + 1, 1 << (l - 1)
        nxt = []
        for r in range(half):
            even, odd = nodes[r], nodes[r + half]
            terms = list(even) + [(t[0], (t[1] + half) % TWO_N, t[2], t[3]) for t in odd]
            switched = [(t[0] ^ (k >= len(even)), (t[1] * g) % TWO_N, t[2], t[3] | bit)
                        for k, t in enumerate(terms)]
            nxt.append(terms + switched)
        nodes = nxt
    level = []
    for terms in nodes:
        if not terms:
            level.append(None)
            continue
        acc = np.zeros(N, np.int64)
        for negate, e, src, t in terms:
            acc += rot(image(src, t), e, negate)
        level.append(acc)
    for l in range(shared + 1, L + 1):
        half, g = N >> l, (1 << l) + 1
        nxt = []
        for r in range(half):
            e, o = level[r], level[r + half]
            if e is None and o is None:
                nxt.append(None)
                continue
            e = np.zeros(N, np.int64) if e is None else e
            o = np.zeros(N, np.int64) if o is None else rot(o, half)
            nxt.append(e + o + auto(e - o, g) + ks_noise())
        level = nxt
    return level[0]


def model(shared, v):
    return sum(4.0 ** (L - l) * (2.0 ** (2 * l - 1) if l <= shared else 1.0) * v
               for l in range(1, L + 1))


def placements(name):
    if name == "random permutation":
        perm = rng.permutation(N)
        return [(0, int(perm[p])) for p in range(N)]
    if name == "4 sources, random":
        vals = [(src, int(i)) for src in range(4) for i in rng.permutation(N)[:N // 4]]
        return [vals[p] for p in rng.permutation(N)]
    if name == "identity":
        return [(0, p) for p in range(N)]
    if name == "reverse":
        return [(0, N - 1 - p) for p in range(N)]
    if name == "bit reversal":
        return [(0, int(format(p, "012b")[::-1], 2)) for p in range(N)]
    if name == "same value everywhere":
        return [(0, 0)] * N
    raise ValueError(name)


def main():
    h = int(s.sum())
    ks = np.stack([ks_noise() for _ in range(400)])
    v_model = (1 + N / 2) / 12
    print(f"one key switch (rounding part): Hamming weight {h}, variance {ks.var():.1f} "
          f"(model (1 + N/2)/12 = {v_model:.1f}), log2 std {0.5 * math.log2(ks.var()):.3f}")
    for d in (1, 1024, 2048, 3072):
        c = np.mean([np.corrcoef(ks[:, j], ks[:, j + d])[0, 1] for j in range(0, N - d, 61)])
        print(f"  correlation of coefficients at lag {d}: {c:+.3f} (1/2 − d/N = {0.5 - d / N:+.3f})")
    print()
    print(f"| placement | ℓ* | mean variance / model | largest slot variance / model ({trials} trials) |")
    print("|---|---:|---:|---:|")
    v = v_model
    for name in ("random permutation", "4 sources, random", "identity", "reverse",
                 "bit reversal", "same value everywhere"):
        slots = placements(name)
        for shared in (0, 4):
            if shared == 0 and name not in ("random permutation", "reverse"):
                continue
            r = np.stack([pack_noise(slots, shared) for _ in range(trials)]).astype(np.float64)
            var = (r ** 2).mean(axis=0)
            m = model(shared, v)
            print(f"| {name} | {shared} | {var.mean() / m:.2f} | {var.max() / m:.2f} |")


if __name__ == "__main__":
    main()
