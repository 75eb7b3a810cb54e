"""PyTorch -> safhire integer model, with accumulator-aware quantisation.

Post-training quantisation of an `nn.Sequential` CNN from calibration data:

* input: unsigned `input_bits` integers, real value = input_scale * q;
* every ReLU becomes a `requantize` (client side) to unsigned `act_bits`;
* conv2d / linear: one symmetric weight scale per layer (a per-channel scale
  would need a per-channel requantize, which the format does not have),
  biases at the accumulator scale;
* AvgPool2d / AdaptiveAvgPool2d(1) become integer SUM pools; their 1/k^2
  (1/(H*W)) goes into the scale of the next layer, hence into the next
  requantize multiplier (MODEL-3).

Accumulator-aware (in the spirit of A2Q): with b = accumulator_bits, every
conv2d/linear row must satisfy sum_j |w_oj| * max|x| + |bias_o| < 2^(b-1)
(MODEL-5 / PARAM-6, max|x| from exact interval propagation). Instead of
failing, each layer searches weight grids from the natural one (max|w| on
`weight_bits`) to coarser ones, projects every row that still exceeds its
L1 budget onto the L1 ball (soft threshold, then budget-preserving integer
rounding), and keeps the grid with the smallest output error on the
calibration data. The whole model is then checked exactly (spec.bounds)
before it is returned.
"""
import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from . import spec
from .reference import evaluate


class ExportError(ValueError):
    """The model cannot be exported (unsupported module, unreachable bound, ...)."""


# --------------------------------------------------------------- module walk
def _walk(model, prefix=""):
    if not isinstance(model, nn.Sequential):
        raise ExportError(f"module '{prefix or '<root>'}': {type(model).__name__} is not an "
                          f"nn.Sequential; only Sequential models are supported")
    for name, m in model.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(m, nn.Sequential):
            yield from _walk(m, path)
        else:
            yield path, m


def _unsupported(path, m, why):
    return ExportError(f"unsupported module at '{path}': {type(m).__name__} ({why})")


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _plan(model):
    """Float steps with BN folded: list of dicts {kind, path, ...} (numpy float64)."""
    steps = []
    for path, m in _walk(model):
        if isinstance(m, nn.Conv2d):
            kh, kw = _pair(m.kernel_size)
            sh, sw = _pair(m.stride)
            if m.groups != 1:
                raise _unsupported(path, m, f"groups={m.groups}, only groups=1")
            if _pair(m.dilation) != (1, 1):
                raise _unsupported(path, m, "dilation != 1")
            if m.padding_mode != "zeros":
                raise _unsupported(path, m, f"padding_mode={m.padding_mode!r}")
            pad = (0, 0) if m.padding == "valid" else m.padding
            if isinstance(pad, str) or _pair(pad)[0] != _pair(pad)[1]:
                raise _unsupported(path, m, f"padding={m.padding!r}: needs one integer for both dims")
            if sh != sw:
                raise _unsupported(path, m, f"stride={m.stride}: needs equal strides")
            w = m.weight.detach().double().numpy().copy()
            b = (m.bias.detach().double().numpy().copy() if m.bias is not None
                 else np.zeros(w.shape[0]))
            steps.append(dict(kind="conv2d", path=path, w=w, b=b, stride=sh,
                              padding=_pair(pad)[0], kh=kh, kw=kw))
        elif isinstance(m, nn.BatchNorm2d):
            if not steps or steps[-1]["kind"] != "conv2d" or steps[-1].get("bn"):
                raise _unsupported(path, m, "BatchNorm2d must directly follow a Conv2d")
            if m.running_mean is None:
                raise _unsupported(path, m, "track_running_stats=False: no statistics to fold")
            # Eval-mode BN: y = (x - mean) / sqrt(var + eps) * gamma + beta.
            g = 1.0 / np.sqrt(m.running_var.detach().double().numpy() + m.eps)
            if m.affine:
                g = g * m.weight.detach().double().numpy()
            beta = m.bias.detach().double().numpy() if m.affine else 0.0
            c = steps[-1]
            c["w"] = c["w"] * g.reshape(-1, 1, 1, 1)
            c["b"] = (c["b"] - m.running_mean.detach().double().numpy()) * g + beta
            c["bn"] = path
        elif isinstance(m, nn.Linear):
            w = m.weight.detach().double().numpy().copy()
            b = m.bias.detach().double().numpy().copy() if m.bias is not None else np.zeros(w.shape[0])
            steps.append(dict(kind="linear", path=path, w=w, b=b))
        elif isinstance(m, nn.ReLU):
            steps.append(dict(kind="relu", path=path))
        elif isinstance(m, nn.AvgPool2d):
            k = _pair(m.kernel_size)
            s = _pair(m.stride if m.stride is not None else m.kernel_size)
            if k[0] != k[1] or s != k or _pair(m.padding) != (0, 0) or m.ceil_mode \
                    or m.divisor_override is not None:
                raise _unsupported(path, m, "needs a square kernel, stride == kernel, no padding, "
                                   "no ceil_mode, no divisor_override")
            steps.append(dict(kind="avgpool", path=path, k=k[0]))
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            if _pair(m.output_size) != (1, 1):
                raise _unsupported(path, m, f"output_size={m.output_size}, only 1")
            steps.append(dict(kind="global_avgpool", path=path))
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise _unsupported(path, m, "only Flatten(start_dim=1, end_dim=-1)")
            steps.append(dict(kind="flatten", path=path))
        elif isinstance(m, (nn.Identity, nn.Dropout)):
            continue  # exact no-ops in eval mode
        else:
            raise _unsupported(path, m, "not one of Conv2d, BatchNorm2d, ReLU, AvgPool2d, "
                               "AdaptiveAvgPool2d(1), Flatten, Linear")
    if not any(s["kind"] in ("conv2d", "linear") for s in steps):
        raise ExportError("the model has no Conv2d or Linear layer")
    return steps


def _run_step(st, x):
    """One float step on a float64 torch tensor (the BN-folded float model)."""
    k = st["kind"]
    if k == "conv2d":
        return F.conv2d(x, torch.from_numpy(st["w"]), torch.from_numpy(st["b"]),
                        stride=st["stride"], padding=st["padding"])
    if k == "linear":
        return F.linear(x, torch.from_numpy(st["w"]), torch.from_numpy(st["b"]))
    if k == "relu":
        return F.relu(x)
    if k == "avgpool":
        return F.avg_pool2d(x, st["k"])
    if k == "global_avgpool":
        return x.mean(dim=(2, 3), keepdim=True)
    return x.flatten(1)


def folded_forward(model, x):
    """The BN-folded float model (float64); equals model.eval()(x) up to rounding."""
    x = x.double()
    for st in _plan(model):
        x = _run_step(st, x)
    return x


# ------------------------------------------------------------- quantisation
def _rha(x):
    """Round half away from zero (the crate's rounding)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def requant_params(ratio):
    """multiplier / 2^shift ~ ratio with multiplier in [2^14, 2^15) (15 bits of precision)."""
    if not ratio > 0 or not math.isfinite(ratio):
        raise ExportError(f"requantize ratio {ratio} is not a positive number")
    shift = 14 - math.floor(math.log2(ratio))
    if shift > 62:
        raise ExportError(f"requantize ratio {ratio:g} needs shift {shift} > 62")
    if shift < 0:  # ratio >= 2^15: an integer multiplier without shift
        return int(_rha(ratio)), 0
    mult = int(_rha(ratio * 2.0 ** shift))
    if mult == 2 ** 15 and shift > 0:
        mult, shift = 2 ** 14, shift - 1
    return mult, shift


def _l1_int_row(v, budget, qmax):
    """Integers q, |q| <= qmax, sum|q| <= budget, close to the real row v.

    Round half away from zero if that fits; otherwise project |v| onto the L1
    ball of radius `budget` (soft threshold: small weights go to zero first),
    floor, and hand the remaining budget to the largest fractional parts."""
    a = np.minimum(np.abs(v), qmax)
    q = _rha(a)
    if q.sum() <= budget:
        return np.sign(v) * q, False
    if budget <= 0:
        return np.zeros_like(v), True
    if a.sum() > budget:  # Euclidean projection of a >= 0 onto {sum <= budget}
        u = np.sort(a)[::-1]
        css = np.cumsum(u)
        k = np.nonzero(u * np.arange(1, len(u) + 1) > css - budget)[0][-1]
        theta = (css[k] - budget) / (k + 1)
        a = np.maximum(a - theta, 0)
    f = np.floor(a)
    spare = int(budget - f.sum())
    frac = a - f
    order = np.argsort(-frac, kind="stable")[:max(spare, 0)]
    f[order[frac[order] > 0]] += 1
    f = np.minimum(f, qmax)
    return np.sign(v) * f, True


def _quantise_layer(st, x_in, s_x, in_max, acc_limit, total_limit, weight_bits):
    """Integer weights and bias for one conv2d/linear under the accumulator bound.

    x_in: float inputs of this layer on calibration data (torch float64),
    used to score candidate grids by relative output error."""
    wf = st["w"].reshape(st["w"].shape[0], -1)
    bf = st["b"]
    qmax = 2 ** (weight_bits - 1) - 1
    if in_max > acc_limit:
        raise ExportError(f"'{st['path']}': max|x| = {in_max} alone exceeds the accumulator "
                          f"limit {acc_limit}; use fewer activation/input bits or a larger b")
    # Calibration rows of this layer's input (im2col for conv), subsampled.
    if st["kind"] == "conv2d":
        cols = F.unfold(x_in, (st["kh"], st["kw"]), padding=st["padding"], stride=st["stride"])
        X = cols.transpose(1, 2).reshape(-1, wf.shape[1]).numpy()
    else:
        X = x_in.reshape(len(x_in), -1).numpy()
    X = X[:: max(1, len(X) // 20000)]
    ref = X @ wf.T + bf
    denom = max(float((ref ** 2).sum()), 1e-30)

    wmax = float(np.abs(wf).max())
    s_nat = wmax / qmax if wmax > 0 else 1.0
    best = None
    for step in range(0, 161):  # grids 2^(step/8) coarser than the natural one
        s_w = s_nat * 2.0 ** (step / 8)
        b = _rha(bf / (s_x * s_w))
        b = np.clip(b, -(acc_limit // 2), acc_limit // 2)  # leave room for the weights
        rows, clipped = [], 0
        for o in range(wf.shape[0]):
            budget = (acc_limit - abs(int(b[o]))) // in_max
            q, c = _l1_int_row(wf[o] / s_w, budget, qmax)
            rows.append(q)
            clipped += c
        w = np.array(rows, dtype=np.int64)
        if int(np.abs(w).sum()) > total_limit:  # LIN-3: any stacking of outputs must fit
            continue
        out = X @ (w * s_w).T + b * s_x * s_w
        err = float(((out - ref) ** 2).sum()) / denom
        if best is None or err < best[0] - 1e-12:
            best = (err, step, w, b.astype(np.int64), s_w, clipped)
        if clipped == 0:
            break  # every row fits as rounded: coarser grids only lose precision
    if best is None:
        raise ExportError(f"'{st['path']}': no weight grid meets the accumulator bound")
    err, step, w, b, s_w, clipped = best
    return w.reshape(st["w"].shape), b, s_w, dict(
        grid_factor=2.0 ** (step / 8), rows_clipped=int(clipped), rel_output_error=err,
        l1_acted=bool(step > 0 or clipped > 0))


def _pct(x, p):
    return float(np.percentile(np.abs(x.numpy()), p)) if x.numel() else 0.0


def export(model, calibration, accumulator_bits, input_bits=4, act_bits=4, weight_bits=8,
           input_scale=None, percentile=99.9, name="model", check_total_l1=True):
    """Quantise `model` (an nn.Sequential) to a safhire model dict.

    calibration: float tensor (N, C, H, W), real inputs >= 0.
    input_scale: real value of one input step (default max(calibration) /
      (2^input_bits - 1)); pass it when the input already is on an integer grid.
    Returns the model JSON object; `export.last_report` holds per-layer numbers
    (also returned by `export_with_report`)."""
    return export_with_report(model, calibration, accumulator_bits, input_bits, act_bits,
                              weight_bits, input_scale, percentile, name, check_total_l1)[0]


def export_with_report(model, calibration, accumulator_bits, input_bits=4, act_bits=4,
                       weight_bits=8, input_scale=None, percentile=99.9, name="model",
                       check_total_l1=True):
    if not 2 <= accumulator_bits <= 62:
        raise ExportError("accumulator_bits must be in [2, 62]")
    model = model.eval()
    steps = _plan(model)
    x = calibration.detach().double()
    if x.ndim != 4:
        raise ExportError("calibration must be (N, C, H, W)")
    if float(x.min()) < 0:
        raise ExportError("calibration inputs must be >= 0 (the input is unsigned, no zero point)")
    in_max = 2 ** input_bits - 1
    if input_scale is None:
        input_scale = max(float(x.max()), 1e-12) / in_max
    acc_limit = 2 ** (accumulator_bits - 1) - 1
    total_limit = 2 ** (accumulator_bits - 1) if check_total_l1 else float("inf")
    act_max = 2 ** act_bits - 1

    m = {"format": spec.FORMAT_TAG, "version": spec.FORMAT_VERSION, "name": name,
         "input": {"shape": list(x.shape[1:]), "min": 0, "max": in_max}, "layers": []}
    scale, at_acc, report = input_scale, False, []

    def interval():
        if not m["layers"]:
            return 0, in_max
        r = spec.bounds(m)[-1]
        return r["lo"], r["hi"]

    for i, st in enumerate(steps):
        k = st["kind"]
        if k in ("conv2d", "linear"):
            if at_acc:
                # Two linear layers with no client step between them: the
                # engine refuses that (ENG-3), so requantize to signed ints.
                half = 2 ** (act_bits - 1) - 1
                s_a = max(_pct(x, percentile), 1e-12) / half
                mult, shift = requant_params(scale / s_a)
                m["layers"].append({"op": "requantize", "multiplier": mult, "shift": shift,
                                    "min": -half, "max": half})
                scale, at_acc = s_a, False
            lo, hi = interval()
            x_max = max(abs(lo), abs(hi))
            w, b, s_w, info = _quantise_layer(st, x, scale, x_max, acc_limit, total_limit,
                                              weight_bits)
            if k == "conv2d":
                m["layers"].append({"op": "conv2d", "out_channels": int(w.shape[0]),
                                    "kernel_h": st["kh"], "kernel_w": st["kw"],
                                    "stride": st["stride"], "padding": st["padding"],
                                    "weights": [int(v) for v in w.ravel()],
                                    "bias": [int(v) for v in b]})
            else:
                m["layers"].append({"op": "linear", "out_features": int(w.shape[0]),
                                    "weights": [int(v) for v in w.ravel()],
                                    "bias": [int(v) for v in b]})
            wc = spec.bounds(m)[-1]["acc"]
            report.append(dict(layer=len(m["layers"]) - 1, path=st["path"], op=k,
                               folded_bn=st.get("bn"), in_max=x_max,
                               max_abs_w=int(np.abs(w).max()),
                               weight_bits=spec.signed_bits(int(np.abs(w).max())),
                               worst_acc=wc, acc_bits=spec.signed_bits(wc),
                               total_l1=int(np.abs(w).sum()), **info))
            scale, at_acc = scale * s_w, True
        elif k == "relu":
            lo, _ = interval()
            if at_acc:
                s_a = max(_pct(F.relu(_run_step(st, x)), percentile), 1e-12) / act_max
                mult, shift = requant_params(scale / s_a)
                m["layers"].append({"op": "requantize", "multiplier": mult, "shift": shift,
                                    "min": 0, "max": act_max})
                scale, at_acc = s_a, False
            elif lo < 0:
                m["layers"].append({"op": "relu"})
            # else: the values are already >= 0, ReLU is a no-op
        elif k == "avgpool":
            m["layers"].append({"op": "avgpool", "kernel": st["k"], "stride": st["k"]})
            scale /= st["k"] ** 2  # integer SUM of k^2 values; the mean is folded forward
        elif k == "global_avgpool":
            m["layers"].append({"op": "global_avgpool"})
            scale /= x.shape[2] * x.shape[3]
        elif k == "flatten":
            m["layers"].append({"op": "flatten"})
        x = _run_step(st, x)

    m = spec.canonical(m)
    spec.check_fields(m)
    spec.infer_shapes(m)
    spec.check_accumulators(m, accumulator_bits)  # the exact MODEL-5 check, before any write
    return m, dict(layers=report, output_scale=scale, input_scale=input_scale,
                   accumulator_bits=accumulator_bits)


def quantize_input(x, input_scale, input_bits=4):
    """Float inputs (N, C, H, W) -> flattened CHW integers in [0, 2^input_bits - 1]."""
    q = _rha(x.detach().double().numpy() / input_scale)
    return np.clip(q, 0, 2 ** input_bits - 1).astype(np.int64).reshape(len(q), -1)


def compare(model, int_model, x_float, input_scale, input_bits, labels=None):
    """Float vs integer: accuracies (if labels) and argmax agreement."""
    with torch.no_grad():
        f = model.eval()(x_float.float()).argmax(1).numpy()
    q = evaluate(int_model, quantize_input(x_float, input_scale, input_bits))
    i = q.argmax(1)  # first index on ties, as the crate's argmax
    out = {"agreement": float((f == i).mean())}
    if labels is not None:
        y = np.asarray(labels)
        out.update(float_acc=float((f == y).mean()), int_acc=float((i == y).mean()))
    return out
