"""Integer reference evaluator for safhire model files (MODEL-3), numpy only.

Every op of spec/model-format.md, batched, exact: int64 when the MODEL-5
bounds prove nothing can exceed 2^62, Python integers (dtype=object)
otherwise. No floats anywhere. Products go through np.tensordot, which for
integer dtypes never calls BLAS, so it is exact.
"""
import numpy as np

from .spec import FormatError, bounds, infer_shapes

_SAFE = 2 ** 62


def _dtype_for(model, b):
    """int64 if every intermediate (accumulators, requantize products) fits."""
    worst = max(max(abs(r["lo"]), abs(r["hi"]), r.get("acc", 0)) for r in b)
    worst = max(worst, abs(model["input"]["min"]), abs(model["input"]["max"]))
    for i, L in enumerate(model["layers"]):
        if L["op"] == "requantize":
            prev = b[i - 1] if i else {"lo": model["input"]["min"], "hi": model["input"]["max"]}
            worst = max(worst, max(abs(prev["lo"]), abs(prev["hi"])) * L["multiplier"])
    return np.int64 if worst < _SAFE else object


def _requantize(y, mult, shift, lo, hi):
    num = y * mult
    if shift:
        half = 1 << (shift - 1)
        mag = (abs(num) + half) >> shift
        num = np.where(num >= 0, mag, -mag)
    return np.clip(num, lo, hi)


def _conv(x, w, b, s, p):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
    ho, wo = (h + 2 * p - kh) // s + 1, (wd + 2 * p - kw) // s + 1
    y = np.zeros((n, ho, wo, o), dtype=x.dtype)
    for k in range(kh):
        for l in range(kw):
            win = xp[:, :, k:k + s * (ho - 1) + 1:s, l:l + s * (wo - 1) + 1:s]
            y = y + np.tensordot(win, w[:, :, k, l], axes=([1], [1]))  # (n, ho, wo, o)
    return y.transpose(0, 3, 1, 2) + b.reshape(1, o, 1, 1)


def _pool(x, k, s, reduce):
    n, c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    wins = [x[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]
            for i in range(k) for j in range(k)]
    return reduce(np.stack(wins), axis=0)


def evaluate(model, inputs):
    """inputs: (N, C*H*W) integers in the declared input range (flattened CHW).
    Returns the last layer's output as an (N, C*H*W) integer array."""
    shapes = infer_shapes(model)
    b = bounds(model)
    dt = _dtype_for(model, b)
    c, h, w = model["input"]["shape"]
    x = np.asarray(inputs, dtype=object if dt is object else np.int64)
    if x.ndim != 2 or x.shape[1] != c * h * w:
        raise FormatError(f"inputs must be (N, {c * h * w}), got {x.shape}")
    if x.size and (x.min() < model["input"]["min"] or x.max() > model["input"]["max"]):
        raise FormatError("an input value lies outside the declared input range")
    x = x.astype(dt).reshape(-1, c, h, w)
    outs = []
    for i, L in enumerate(model["layers"]):
        op = L["op"]
        if op == "conv2d":
            o = L["out_channels"]
            wt = np.asarray(L["weights"], dtype=dt).reshape(o, x.shape[1], L["kernel_h"], L["kernel_w"])
            x = _conv(x, wt, np.asarray(L["bias"], dtype=dt), L["stride"], L["padding"])
        elif op == "linear":
            o = L["out_features"]
            wt = np.asarray(L["weights"], dtype=dt).reshape(o, -1)
            x = (np.tensordot(x.reshape(len(x), -1), wt, axes=([1], [1]))
                 + np.asarray(L["bias"], dtype=dt)).reshape(-1, o, 1, 1)
        elif op == "avgpool":
            x = _pool(x, L["kernel"], L["stride"], np.sum)  # a SUM: 1/k^2 is folded forward
        elif op == "maxpool":
            x = _pool(x, L["kernel"], L["stride"], np.max)
        elif op == "global_avgpool":
            x = x.sum(axis=(2, 3), keepdims=True)
        elif op == "flatten":
            x = x.reshape(len(x), -1, 1, 1)
        elif op == "residual_add":
            x = x + outs[L["from"]]
        elif op == "branch":
            x = outs[L["from"]]
        elif op == "relu":
            x = np.maximum(x, 0)
        elif op == "requantize":
            x = _requantize(x, L["multiplier"], L["shift"], L["min"], L["max"])
        assert x.shape[1:] == shapes[i], (i, op, x.shape, shapes[i])
        if dt is object and x.size and (x.min() < -(2 ** 63) or x.max() >= 2 ** 63):
            raise OverflowError(f"layer {i} ({op}): a value does not fit i64")
        outs.append(x)
    return x.reshape(len(x), -1)
