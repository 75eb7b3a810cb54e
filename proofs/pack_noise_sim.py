#!/usr/bin/env python3
"""Noise-only simulation of the hybrid key switch and of PackLWEs with shared
levels at N = 4096 (proofs/packing.md, Lemma 3(b) and Lemma 5;
proofs/noise-budget.md, Lemmas 1-2).

Optional cross-check, not a test and not part of CI: it needs numpy, which the
project does not install (`pip install numpy`, e.g. in a virtual env).
Standard-library scripts (budget_table.py) are what the proofs' tables come
from; this one only compares measured variances with noise.rs's model.

    python3 proofs/pack_noise_sim.py [trials] [seed]

Model. Every ciphertext operation of src/pack.rs is linear in phases, so the
packed noise is computed on noise polynomials alone (leaf noise 0, so only the
key-switch part is measured). One key switch adds the rounding noise of
src/rlwe/keyswitch.rs, ε = (Y − [Y]_P)/P with Y = r·s and r uniform centred
mod P (r is X_a mod P); the digit term Σ d_j e_j / P (variance 0.33 for b8)
is left out. Distinct key switches draw independent r. The secret s is one
fixed binary key, as in the crate. The tree mirrors pack.rs: symbolic terms
± X^e · D_t(c_source) for levels 1..ℓ*, one image D_t per (source, t), then
one key switch per node. With γ > 0 the images D_t, t ⊆ {1..γ}, are the
client's conjugates: they carry no key-switch noise (their fresh noise, up to
4^γ·σ² in total, packing.md Lemma 5(c), is left out like the leaf noise), and images with bits above γ are
key-switched from them, as in Images::compute.

"bound" is PackNoise::pack_variance (copies 0 for ℓ ≤ γ, 2^(3ℓ−1) for
ℓ ≤ ℓ*, 1 above): the ratios must stay ≤ 1 on average for every placement.
"uncorr." is the earlier estimate with 2^(2ℓ−1) uncorrelated copies.
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


def pack_noise(slots, shared, gamma=0):
    images = {}

    def image(src, t):
        if (src, t) not in images:
            if t < (1 << gamma):
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


def model(shared, v, gamma=0, exponent=3):
    """PackNoise::pack_variance (exponent 3); exponent 2 is the uncorrelated estimate."""
    def copies(l):
        if l <= gamma:
            return 0.0
        if l <= shared:
            return 2.0 ** (exponent * l - 1)
        return 1.0
    return sum(4.0 ** (L - l) * copies(l) * v for l in range(1, L + 1))


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
    print(f"| placement | ℓ* | γ | mean variance / bound | largest slot / bound | "
          f"mean variance / uncorr. ({trials} trials) |")
    print("|---|---:|---:|---:|---:|---:|")
    v = v_model
    cases = [("random permutation", 0, 0), ("random permutation", 4, 0),
             ("4 sources, random", 4, 0), ("reverse", 0, 0), ("reverse", 4, 0),
             ("bit reversal", 4, 0), ("same value everywhere", 4, 0), ("identity", 4, 0),
             ("random permutation", 4, 2), ("reverse", 4, 2), ("bit reversal", 4, 2)]
    for name, shared, gamma in cases:
        slots = placements(name)
        r = np.stack([pack_noise(slots, shared, gamma) for _ in range(trials)]).astype(np.float64)
        var = (r ** 2).mean(axis=0)
        m = model(shared, v, gamma)
        u = model(shared, v, gamma, exponent=2)
        print(f"| {name} | {shared} | {gamma} | {var.mean() / m:.2f} | {var.max() / m:.2f} | "
              f"{var.mean() / u:.2f} |")


if __name__ == "__main__":
    main()
