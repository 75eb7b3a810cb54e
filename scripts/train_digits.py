#!/usr/bin/env python3
"""Train, quantise and export the `digits-cnn` model that safhire ships.

    pip install -r scripts/requirements.txt && python3 scripts/train_digits.py
    python3 scripts/train_digits.py --dp-sigma 1000 --out DIR   # noise-aware (DP-8)

Data: scikit-learn's bundled 8x8 handwritten digits (no download).
Model: conv 1->8 3x3 p1, ReLU, avgpool 2, conv 8->16 3x3 p1, ReLU, avgpool 2,
flatten (C,H,W order), linear 64->10. Trained in plain numpy (float, then
quantisation-aware fine-tuning), quantised so that every linear layer's
worst-case accumulator fits 16 signed bits (parameter set b16), evaluated
with a pure-integer reference, exported to models/. Deterministic: a fixed
seed and single-threaded BLAS, so two runs write byte-identical JSON.

With --dp-sigma S the quantisation-aware fine-tuning adds Gaussian noise of
standard deviation S integer accumulator units to every conv/linear
pre-activation, logits included: the float value of one unit is the layer's
input scale times its weight scale, which the fake quantiser recomputes from
the current weights at every step exactly as the export does, so the noise
is at the exported scales. That is the discrete Gaussian N_Z(0, S^2) the
`dp` policy adds (spec/dp.md, DP-8), approximated by a continuous one.
Such a run writes DIR/digits-cnn-dp.json and DIR/digits-cnn-dp-test.json
and leaves models/ alone. Without the option the run is the shipped one.
"""
import os

# One BLAS thread: the machine is shared, and a fixed thread count keeps the
# floating-point summation order (hence the exported integers) reproducible.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse, json, sys, time
from pathlib import Path
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 20240917
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "models"
ACT_MAX = 15                 # activations and inputs are 4-bit unsigned [0, 15]
POOL_MAX = 4 * ACT_MAX       # a 2x2 sum-pool of 4-bit values lies in [0, 60]
ACC_BITS = 16                # parameter set b16: |y| <= 2^15 - 1 (--accumulator-bits)
ACC_LIMIT = 2 ** (ACC_BITS - 1) - 1
W_BITS = {"1": 6, "2": 5, "3": 6}   # signed weight bits per layer (--weight-bits)
IN_MAX = {"1": ACT_MAX, "2": POOL_MAX, "3": POOL_MAX}  # max |x| feeding each layer


def rha(x):
    """Round half away from zero (the crate's rounding), elementwise."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


# ---------------------------------------------------------------- data
def load_data():
    d = load_digits()
    # 0..16 -> 4-bit 0..15 by round(x*15/16), half away from zero, in integers.
    q = (d.data.astype(np.int64) * 30 + 16) // 32
    xtr, xte, ytr, yte = train_test_split(q, d.target, test_size=360, stratify=d.target,
                                          random_state=SEED)
    return xtr.reshape(-1, 1, 8, 8), ytr, xte.reshape(-1, 1, 8, 8), yte


# ------------------------------------------- float layers (3x3, pad 1, stride 1)
def im2col(x):
    """(N,C,H,W) -> (N*H*W, C*9); column c*9+k matches OIHW weights reshaped (O, C*9)."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=2)
    return cols.transpose(0, 3, 4, 1, 2).reshape(n * h * w, c * 9)


def col2im(dcols, shape):
    n, c, h, w = shape
    d = dcols.reshape(n, h, w, c, 9).transpose(0, 3, 4, 1, 2)
    dxp = np.zeros((n, c, h + 2, w + 2))
    for k in range(9):
        i, j = divmod(k, 3)
        dxp[:, :, i:i + h, j:j + w] += d[:, :, k]
    return dxp[:, :, 1:-1, 1:-1]


def conv(x, w, b):
    cols = im2col(x)
    n, _, h, wd = x.shape
    out = cols @ w.reshape(w.shape[0], -1).T + b
    return out.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), cols


def conv_back(dout, cols, w, xshape):
    d = dout.transpose(0, 2, 3, 1).reshape(-1, w.shape[0])
    dw = (d.T @ cols).reshape(w.shape)
    return col2im(d @ w.reshape(w.shape[0], -1), xshape), dw, d.sum(0)


def pool(x):  # float model: mean; the integer model sums and folds 1/4 forward
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def pool_back(d):
    return np.repeat(np.repeat(d, 2, axis=2), 2, axis=3) / 4


# ---------------------------------------------------------- quantisation
def weight_scale(w, layer):
    """Per-layer scale: fill the signed weight range, but shrink the integers
    until max_row sum|w| * max|x| (and the layer's total sum|w|, which bounds
    any stacking of outputs into one ciphertext) leave ~7% headroom in b16."""
    wm = np.abs(w.reshape(w.shape[0], -1))
    qmax = 2 ** (W_BITS[layer] - 1) - 1
    return max(wm.max() / qmax,
               wm.sum(1).max() * IN_MAX[layer] / (0.93 * ACC_LIMIT),
               wm.sum() / (0.93 * 2 ** (ACC_BITS - 1)))


def fake_quant(P, S):
    """Weights/biases rounded to the integer grid (straight-through in backward).
    Q["unit" + l] is the float value of one integer accumulator unit."""
    Q, s_in = {}, {"1": 1 / ACT_MAX, "2": S["a1"] / 4, "3": S["a2"] / 4}
    for l in "123":
        sw = weight_scale(P["w" + l], l)
        qmax = 2 ** (W_BITS[l] - 1) - 1
        Q["w" + l] = np.clip(rha(P["w" + l] / sw), -qmax, qmax) * sw
        Q["b" + l] = rha(P["b" + l] / (s_in[l] * sw)) * (s_in[l] * sw)
        Q["unit" + l] = s_in[l] * sw
    return Q


def act(z, s):
    """ReLU (float) or ReLU + 4-bit requantise (QAT); returns value and grad mask."""
    if s is None:
        return np.maximum(z, 0), z > 0
    return np.clip(rha(z / s), 0, ACT_MAX) * s, (z > 0) & (z < (ACT_MAX + 0.5) * s)


# ------------------------------------------------------------- float model
def init_params(rng):
    he = lambda shape, fan: rng.normal(0, np.sqrt(2 / fan), shape)
    return {"w1": he((8, 1, 3, 3), 9), "b1": np.zeros(8),
            "w2": he((16, 8, 3, 3), 72), "b2": np.zeros(16),
            "w3": he((10, 64), 64) * 0.5, "b3": np.zeros(10)}


def forward(P, x, S=None, noise=None):
    """x real-valued (q/15). With scales S, simulates the quantised model;
    with noise = (sigma, rng) as well, adds N(0, (sigma * unit)^2) to every
    pre-activation (DP-8's noise, in the layer's accumulator units)."""
    W = fake_quant(P, S) if S else P
    noisy = lambda z, l: z if noise is None else z + noise[1].normal(
        0.0, noise[0] * W["unit" + l], z.shape)
    c = {"x": x}
    z1, c["cols1"] = conv(x, W["w1"], W["b1"])
    a1, c["m1"] = act(noisy(z1, "1"), S and S["a1"])
    c["p1"] = p1 = pool(a1)
    z2, c["cols2"] = conv(p1, W["w2"], W["b2"])
    a2, c["m2"] = act(noisy(z2, "2"), S and S["a2"])
    c["f"] = f = pool(a2).reshape(len(x), -1)
    c["W"], c["a1"], c["a2"] = W, a1, a2
    return noisy(f @ W["w3"].T + W["b3"], "3"), c


def backward(dlogits, c):
    W, G = c["W"], {}
    G["w3"], G["b3"] = dlogits.T @ c["f"], dlogits.sum(0)
    d = pool_back((dlogits @ W["w3"]).reshape(-1, 16, 2, 2)) * c["m2"]
    dp1, G["w2"], G["b2"] = conv_back(d, c["cols2"], W["w2"], c["p1"].shape)
    d = pool_back(dp1) * c["m1"]
    _, G["w1"], G["b1"] = conv_back(d, c["cols1"], W["w1"], c["x"].shape)
    return G


def train(P, X, y, rng, epochs, lr, S=None, batch=32, wd=1e-4, noise=None):
    """Adam with cosine learning-rate decay, softmax cross-entropy; noise
    as in forward (additive, so the backward pass is unchanged)."""
    m = {k: np.zeros_like(v) for k, v in P.items()}
    v = {k: np.zeros_like(v) for k, v in P.items()}
    steps, t = epochs * int(np.ceil(len(X) / batch)), 0
    for ep in range(epochs):
        order = rng.permutation(len(X))
        for i in range(0, len(X), batch):
            idx = order[i:i + batch]
            logits, cache = forward(P, X[idx], S, noise)
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1
            G = backward(p / len(idx), cache)
            t += 1
            rate = lr * 0.5 * (1 + np.cos(np.pi * t / steps))
            for k in P:
                g = G[k] + wd * P[k]
                m[k] = 0.9 * m[k] + 0.1 * g
                v[k] = 0.999 * v[k] + 0.001 * g * g
                P[k] -= rate * (m[k] / (1 - 0.9 ** t)) / (np.sqrt(v[k] / (1 - 0.999 ** t)) + 1e-8)
    return P


def accuracy(P, X, y, S=None):
    return float((forward(P, X, S)[0].argmax(1) == y).mean())


# ------------------------------------------------------- integer model
def requant_params(ratio):
    """multiplier/2^shift ~ ratio, multiplier in [2^14, 2^15): |y*M| < 2^30."""
    shift = 14 - int(np.floor(np.log2(ratio)))
    mult = int(rha(ratio * 2 ** shift))
    if mult == 2 ** 15:
        mult, shift = 2 ** 14, shift - 1
    assert 1 <= shift <= 62 and 2 ** 14 <= mult < 2 ** 15
    return mult, shift


def quantise(P, S):
    """Integer weights/biases/requantise steps from float params and activation scales."""
    Q, s_in = {}, {"1": 1 / ACT_MAX, "2": S["a1"] / 4, "3": S["a2"] / 4}
    s_out = {"1": S["a1"], "2": S["a2"]}
    for l in "123":
        sw = weight_scale(P["w" + l], l)
        qmax = 2 ** (W_BITS[l] - 1) - 1
        while True:  # exact check; widen the scale in the (rare) case rounding broke the bound
            w = np.clip(rha(P["w" + l] / sw), -qmax, qmax).astype(np.int64)
            b = rha(P["b" + l] / (s_in[l] * sw)).astype(np.int64)
            if worst_case(w, b, IN_MAX[l]) <= ACC_LIMIT:
                break
            sw *= 1.02
        Q["w" + l], Q["b" + l] = w, b
        if l in s_out:
            Q["rq" + l] = requant_params(s_in[l] * sw / s_out[l])
    return Q


def worst_case(w, b, xmax):
    """max over outputs of sum|w|*max|x| + |bias| (PARAM-6), exact in integers."""
    rows = np.abs(w.reshape(w.shape[0], -1)).sum(1)
    return int((rows * xmax + np.abs(b)).max())


def requantise(y, mult, shift, lo=0, hi=ACT_MAX):
    """clamp(round_half_away_from_zero(y*mult / 2^shift), lo, hi), in int64."""
    num, half = y * mult, 1 << (shift - 1)
    r = np.where(num >= 0, (num + half) >> shift, -((-num + half) >> shift))
    return np.clip(r, lo, hi)


def int_conv(x, w, b):
    """Exact integer 3x3 pad-1 conv (int64, no BLAS): same im2col layout."""
    n, _, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, i:i + h, j:j + wd] for i in range(3) for j in range(3)], axis=2)
    cols = cols.transpose(0, 3, 4, 1, 2).reshape(n * h * wd, -1)
    out = np.einsum("pk,ok->po", cols, w.reshape(w.shape[0], -1)) + b
    return out.reshape(n, h, wd, -1).transpose(0, 3, 1, 2)


def int_pool(x):  # integer SUM over 2x2 windows
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).sum(axis=(3, 5))


def int_forward(Q, x, noise=None):
    """The model exactly as exported: x int64 (N,1,8,8) in [0,15] -> int64 logits.
    With noise = (sigma, rng), every accumulator gets an integer sample
    round(N(0, sigma^2)) first (a stand-in for DP-8's discrete Gaussian)."""
    noisy = lambda y: y if noise is None else y + rha(noise[1].normal(
        0.0, noise[0], y.shape)).astype(np.int64)
    a = int_pool(requantise(noisy(int_conv(x, Q["w1"], Q["b1"])), *Q["rq1"]))
    a = int_pool(requantise(noisy(int_conv(a, Q["w2"], Q["b2"])), *Q["rq2"]))
    a = a.reshape(len(x), -1)
    assert a.min() >= 0 and a.max() <= POOL_MAX
    return noisy(np.einsum("ni,oi->no", a, Q["w3"]) + Q["b3"])


# ------------------------------------------------------------------ export
def dump(obj, lists_per_line):
    """JSON with one list (layer / sample) per line: diff-friendly, compact."""
    head = {k: v for k, v in obj.items() if k not in lists_per_line}
    parts = [json.dumps(k) + ":" + json.dumps(v, separators=(",", ":")) for k, v in head.items()]
    for k in lists_per_line:
        body = ",\n  ".join(json.dumps(e, separators=(",", ":")) for e in obj[k])
        parts.append(json.dumps(k) + ":[\n  " + body + "\n ]")
    return "{" + ",\n ".join(parts) + "}\n"


def model_json(Q, name="digits-cnn"):
    ints = lambda a: [int(v) for v in a.ravel()]
    conv_layer = lambda l: {"op": "conv2d", "out_channels": int(Q["w" + l].shape[0]),
                            "kernel_h": 3, "kernel_w": 3, "stride": 1, "padding": 1,
                            "weights": ints(Q["w" + l]), "bias": ints(Q["b" + l])}
    rq = lambda l: {"op": "requantize", "multiplier": Q["rq" + l][0], "shift": Q["rq" + l][1],
                    "min": 0, "max": ACT_MAX}
    pool_layer = {"op": "avgpool", "kernel": 2, "stride": 2}
    return {"format": "safhire-model", "version": 1, "name": name,
            "input": {"shape": [1, 8, 8], "min": 0, "max": ACT_MAX},
            "layers": [conv_layer("1"), rq("1"), pool_layer, conv_layer("2"), rq("2"), pool_layer,
                       {"op": "flatten"},
                       {"op": "linear", "out_features": 10, "weights": ints(Q["w3"]),
                        "bias": ints(Q["b3"])}]}


def layer_report(Q):
    """Per linear layer: worst-case accumulator (PARAM-6) and total sum|w| (LIN-3 bound)."""
    names = {"1": "conv2d 1->8", "2": "conv2d 8->16", "3": "linear 64->10"}
    rep = []
    for l in "123":
        wc = worst_case(Q["w" + l], Q["b" + l], IN_MAX[l])
        rep.append({"layer": names[l], "weight_bits": W_BITS[l], "in_max": IN_MAX[l],
                    "max_abs_w": int(np.abs(Q["w" + l]).max()), "worst_acc": wc,
                    "total_l1": int(np.abs(Q["w" + l]).sum()),
                    "b12": wc < 2 ** 11, "b16": wc < 2 ** 15})
    return rep


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dp-sigma", type=float, default=0.0,
                    help="noise-aware fine-tuning: Gaussian noise of this many integer accumulator "
                         "units on every pre-activation (DP-8's sigma; default 0: none)")
    ap.add_argument("--weight-bits", default="6,5,6",
                    help="signed weight bits of the three layers (default 6,5,6)")
    ap.add_argument("--accumulator-bits", type=int, default=16,
                    help="b: every worst-case accumulator < 2^(b-1) (default 16)")
    ap.add_argument("--qat-epochs", type=int, default=60,
                    help="quantisation-aware (and noise-aware) fine-tuning epochs (default 60)")
    ap.add_argument("--qat-lr", type=float, default=1e-3,
                    help="peak learning rate of that fine-tuning (default 1e-3)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output directory (default models/; required with any other option)")
    a = ap.parse_args()
    bits = [int(v) for v in a.weight_bits.split(",")]
    if len(bits) != 3 or not all(2 <= v <= 16 for v in bits):
        ap.error(f"--weight-bits {a.weight_bits!r}: three integers from 2 to 16")
    if not 8 <= a.accumulator_bits <= 30:
        ap.error(f"--accumulator-bits {a.accumulator_bits}: from 8 to 30")
    if a.dp_sigma < 0:
        ap.error(f"--dp-sigma {a.dp_sigma}: must be >= 0")
    a.weight_bits = dict(zip("123", bits))
    a.shipped = (a.dp_sigma == 0 and a.weight_bits == W_BITS and a.accumulator_bits == ACC_BITS
                 and a.qat_epochs == 60 and a.qat_lr == 1e-3)
    if a.out is None:
        if not a.shipped:
            ap.error("a run other than the shipped one needs --out DIR (models/ holds the shipped model)")
        a.out = OUT
    return a


def main():
    global ACC_BITS, ACC_LIMIT, W_BITS
    a = parse_args()
    ACC_BITS, W_BITS = a.accumulator_bits, a.weight_bits
    ACC_LIMIT = 2 ** (ACC_BITS - 1) - 1
    t0 = time.time()
    rng = np.random.default_rng(SEED)
    xtr, ytr, xte, yte = load_data()
    ftr, fte = xtr / ACT_MAX, xte / ACT_MAX   # float view of the 4-bit input

    P = train(init_params(rng), ftr, ytr, rng, epochs=150, lr=5e-3)
    float_acc = accuracy(P, fte, yte)
    print(f"float: train {accuracy(P, ftr, ytr):.4f} test {float_acc:.4f}  ({time.time() - t0:.1f}s)")

    # Activation scales: 4 bits spread over [0, 99.9th percentile] of the
    # training activations; then fine-tune with the quantiser in the loop.
    _, c = forward(P, ftr)
    S = {k: float(np.percentile(c[k], 99.9)) / ACT_MAX for k in ("a1", "a2")}
    print(f"fake-quant before QAT: test {accuracy(P, fte, yte, S):.4f}")
    # The noise has its own generator: without it, `rng` draws exactly what
    # the shipped run draws, and the export is byte for byte the shipped one.
    noise = (a.dp_sigma, np.random.default_rng(SEED + 1)) if a.dp_sigma > 0 else None
    P = train(P, ftr, ytr, rng, epochs=a.qat_epochs, lr=a.qat_lr, S=S, noise=noise)
    qat_acc = accuracy(P, fte, yte, S)
    print(f"fake-quant after QAT:  test {qat_acc:.4f}  ({time.time() - t0:.1f}s)")

    Q = quantise(P, S)
    logits = int_forward(Q, xte)
    int_acc = float((logits.argmax(1) == yte).mean())
    int_train = float((int_forward(Q, xtr).argmax(1) == ytr).mean())
    rep = layer_report(Q)
    for r in rep:
        # PARAM-6, LIN-3 for the chosen b
        assert r["worst_acc"] <= ACC_LIMIT and r["total_l1"] <= 2 ** (ACC_BITS - 1), r
        print(r)
    print(f"integer: train {int_train:.4f} test {int_acc:.4f}  requantise {Q['rq1']} {Q['rq2']}")
    if a.dp_sigma > 0:
        # Test accuracy of the integer model with integer noise of this sigma on
        # every accumulator, mean of 10 draws (a simulation; `safhire infer
        # --policy dp --dp-sigma S` measures the real mechanism).
        g = np.random.default_rng(SEED + 2)
        accs = [float((int_forward(Q, xte, (a.dp_sigma, g)).argmax(1) == yte).mean())
                for _ in range(10)]
        print(f"integer under noise sigma {a.dp_sigma:g}: test {np.mean(accs):.4f} "
              f"(min {min(accs):.4f}, max {max(accs):.4f}, 10 draws)")
        for r in rep:
            print(f"  {r['layer']}: one weight step is 1/{r['max_abs_w']} "
                  f"= {100 / r['max_abs_w']:.2f}% of max|w|")

    a.out.mkdir(parents=True, exist_ok=True)
    stem, name = ("digits-cnn", "digits-test") if a.shipped else ("digits-cnn-dp", "digits-cnn-dp-test")
    mpath, tpath = a.out / f"{stem}.json", a.out / f"{name}.json"
    mpath.write_text(dump(model_json(Q, stem), ["layers"]))
    tpath.write_text(dump({"inputs": [[int(v) for v in x.ravel()] for x in xte],
                           "labels": [int(v) for v in yte],
                           "integer_logits": [[int(v) for v in r] for r in logits]},
                          ["inputs", "labels", "integer_logits"]))
    stats = {"float_acc": float_acc, "qat_acc": qat_acc, "int_acc": int_acc, "int_train": int_train,
             "n_train": len(ytr), "n_test": len(yte), "rq": (Q["rq1"], Q["rq2"]),
             "sizes": {p.name: p.stat().st_size for p in (mpath, tpath)}, "layers": rep}
    if a.shipped and a.out == OUT:
        write_readme(stats)
    print(f"wrote {mpath} ({stats['sizes'][mpath.name]} B), {tpath} "
          f"({stats['sizes'][tpath.name]} B); total {time.time() - t0:.1f}s")
    if a.shipped:
        assert float_acc >= 0.95 and int_acc >= 0.93, "accuracy targets missed"


def write_readme(s):
    """models/README.md from this run's numbers (no timings: it stays deterministic)."""
    pct = lambda x: f"{100 * x:.2f}%"
    yes = lambda b: "yes" if b else "no"
    rows = "\n".join(
        f"| {r['layer']} | {r['weight_bits']} (max \\|w\\| {r['max_abs_w']}) | {r['in_max']} | "
        f"{r['worst_acc']} | {r['worst_acc'].bit_length() + 1} | {yes(r['b12'])} | {yes(r['b16'])} | "
        f"{r['total_l1']} |" for r in s["layers"])
    no12 = [r["layer"] for r in s["layers"] if not (r["b12"] and r["total_l1"] <= 2 ** 11)]
    fit = ("It fits b12 as well as b16." if not no12 else
           "It fits b16 (every layer) but **not b12**: " + ", ".join(no12) + " exceed 2^11.")
    (m1, s1), (m2, s2) = s["rq"]
    sizes = dict(s["sizes"])
    for name in ("digits-cnn-dp.json", "digits-cnn-dp-test.json"):  # the noise-aware run's
        if (OUT / name).exists():
            sizes[name] = (OUT / name).stat().st_size
    text = f"""# models

Generated by `scripts/train_digits.py`; do not edit by hand. Re-run with

```sh
pip install -r scripts/requirements.txt && python3 scripts/train_digits.py
```

(numpy and scikit-learn only, no download: the data set ships inside
scikit-learn; well under a minute on one core). The script is deterministic
(seed {SEED}, one BLAS thread): two runs write byte-identical JSON with the
pinned versions on the same machine. numpy and OpenBLAS pick their float
kernels per CPU, so the bytes depend on it: the shipped export was trained on
an AMD Zen 5 (AVX-512); an AVX2-only Zen 3 and an Intel Xeon with AVX-512
train slightly different weights from the same seed
(`python/tests/test_train_digits.py` compares with the shipped export on AMD
CPUs with AVX-512, and two runs with each other elsewhere).

## Your own model: from PyTorch to an encrypted inference

Every command, from the repository root (`python/README.md` explains each
step; `bash python/walkthrough.sh` runs them all, and CI runs it on a tiny
model):

```sh
bash python/install-ci.sh                      # torch (CPU), numpy, scikit-learn, pytest; pinned
PYTHONPATH=python python3 python/examples/train_tiny_digits.py \
    --out target/walkthrough --accumulator-bits 16   # train, quantise for b = 16, export
python3 -m pytest python/tests -q               # the exporter's tests
cargo run --release -- infer --model target/walkthrough/tiny-digits.json \
    --inputs target/walkthrough/tiny-digits-test.json --images 20
```

For a model of your own, call `safhire_export.export_with_report(model,
calibration, accumulator_bits=B)` on a float `torch.nn.Sequential` of the
supported layers (python/README.md) and write the result with
`write_model` / `write_test_set`. `infer` picks the cheapest parameter set
that carries the model and says why (`--set NAME` pins one); a model no set
carries is refused naming the layer, the quantity and the limit. Inputs may
also be an integer `.npy` array (`--inputs x.npy --labels y.npy`). A
quantised ONNX graph runs with `cargo run --release --features onnx --
infer --model model.onnx --inputs inputs.json` (fixtures and their
generator: `models/fixtures/`, `scripts/make_onnx_fixtures.py`).

## `digits-cnn.json`: the model

A small CNN for scikit-learn's handwritten digits (`load_digits`: 1797
grey-scale 8x8 images, pixels 0..16, classes 0..9):

conv2d 1->8 3x3 pad 1 -> requantize (ReLU) -> avgpool 2 -> conv2d 8->16 3x3
pad 1 -> requantize (ReLU) -> avgpool 2 -> flatten (16x2x2 = 64) -> linear
64->10. The predicted class is the argmax of the 10 integer logits (first
index on ties).

Integer semantics (what the Rust evaluator must reproduce bit for bit):

- **input**: shape [1, 8, 8], integers 0..15; a raw pixel p in 0..16 becomes
  round_half_away_from_zero(p*15/16) = (30p + 16) div 32.
- **conv2d**: weights OIHW flattened, stride 1, zero padding 1; the integer
  bias is added to the accumulator: y = sum w*x + bias.
- **requantize**: clamp(round_half_away_from_zero(y * multiplier / 2^shift),
  min, max) with min = 0, max = 15, so it is also the ReLU. Layer 1:
  multiplier {m1}, shift {s1}; layer 2: multiplier {m2}, shift {s2}.
  |y * multiplier| < 2^30.
- **avgpool** kernel 2 stride 2 is an integer SUM over the window (values
  0..60); the 1/4 is folded into the next layer's scale.
- **flatten**: channel-major (C, H, W), i.e. index c*4 + h*2 + w.
- **linear**: weights row-major out x in, y = W x + bias; its outputs are the
  logits (no requantize).

## Training

- Split: `train_test_split(test_size=360, stratify=labels,
  random_state={SEED})`: {s['n_train']} train / {s['n_test']} test images.
- Float training in plain numpy (hand-written forward/backward): Adam,
  batch 32, cosine-decayed learning rate 5e-3, weight decay 1e-4, 150
  epochs, He initialisation from `numpy.random.default_rng({SEED})`; the
  input is the 4-bit image divided by 15.
- Quantisation-aware fine-tuning, 60 epochs at 1e-3: weights, biases and
  activations rounded to their integer grids in the forward pass
  (straight-through gradients). Activation scales: 4 bits over [0, 99.9th
  percentile] of the float model's training activations.
- Quantisation: per-layer weight scale; signed weights of 6 / 5 / 6 bits;
  biases at the accumulator scale. The scale is also widened until every
  output's worst-case accumulator, and each layer's total sum|w|, leave
  about 7% headroom under 2^15 (accumulator-aware), then checked exactly.

| accuracy | train | test |
|---|---|---|
| float | | {pct(s['float_acc'])} |
| quantisation-aware (float simulation) | | {pct(s['qat_acc'])} |
| **integer model (as exported)** | {pct(s['int_train'])} | **{pct(s['int_acc'])}** |

## Accumulator bounds

Worst-case accumulator of a layer = max over outputs of sum|w|*max|x| +
|bias| (spec/parameters.md, PARAM-6), with max|x| = 15 for the input and 60
after a sum-pool. b12 needs < 2^11 = 2048, b16 < 2^15 = 32768. The total
sum|w| of a layer bounds the weight norm of any output ciphertext however
outputs are stacked (LIN-3: at most 2^W, W = 11 for b12, 15 for b16).

| layer | weight bits | max\\|x\\| | worst-case accumulator | signed bits | b12 | b16 | total sum\\|w\\| |
|---|---|---|---|---|---|---|---|
{rows}

{fit}
The largest |accumulator| actually reached on the test split is far smaller;
the bound above is what the crate checks.

## `digits-test.json`: the test split, for bit-exact checks

`inputs`: the {s['n_test']} quantised test images, each 64 integers 0..15
(row-major 8x8); `labels`: their classes; `integer_logits`: the 10 logits of
the integer reference above for each image. An evaluator of
`digits-cnn.json` must reproduce `integer_logits` exactly; its argmax
accuracy against `labels` is {pct(s['int_acc'])}.

## `digits-cnn-dp.json`: trained for the `dp` policy's noise, σ = 500

The same architecture, integer semantics, weight bits (6 / 5 / 6) and
split as `digits-cnn.json`, with its own weights and requantisation
constants; its quantisation-aware fine-tuning (200 epochs at 3e-3) added
Gaussian noise of 500 integer accumulator units to every pre-activation,
logits included (python/README.md, "Noise-aware training"). Made with

```sh
python3 scripts/train_digits.py --dp-sigma 500 --qat-epochs 200 --qat-lr 3e-3 --out models
```

and run under that noise with

```sh
cargo run --release -- infer --policy dp --dp-sigma 500 --images 120 --model models/digits-cnn-dp.json --inputs models/digits-cnn-dp-test.json
```

`digits-cnn-dp-test.json` holds the same test images and labels with this
model's `integer_logits`. Without noise it classifies 88.06% of the test
split (the shipped model: {pct(s['int_acc'])}); with the σ = 500 noise,
encrypted, 68.6% of all 360 (the shipped model: 26.4%; one run each,
proofs/dp.md, section 8). The `dp` policy's ε at σ = 500 is
8.68 (weak, budget 8, one step of one parameter, in-range uploads):
proofs/dp.md, section 8, says what that covers and what it does not.

## Files

| file | bytes |
|---|---|
""" + "\n".join(f"| `{k}` | {v} |" for k, v in sizes.items()) + "\n"
    (OUT / "README.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
