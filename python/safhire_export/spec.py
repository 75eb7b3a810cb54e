"""The integer model file format (spec/model-format.md), checked in Python.

Pure Python + numpy, no torch: field tables and canonical order (MODEL-6,
MODEL-8), validation and shape inference (MODEL-2), worst-case intervals and
accumulators (MODEL-5). Used by the exporter before it writes anything and
by the tests; the Rust parser stays the authority.
"""
import json

FORMAT_TAG = "safhire-model"
FORMAT_VERSION = 1
I64_MIN, I64_MAX = -(2 ** 63), 2 ** 63 - 1
MAX_TENSOR = 2 ** 26
MAX_NAME_BYTES = 256

# Fields each op takes, in canonical order (the Rust LayerV1 struct order,
# i.e. the field table of the spec). `groups` is optional for conv2d.
OP_FIELDS = {
    "conv2d": ["out_channels", "kernel_h", "kernel_w", "stride", "padding", "groups",
               "weights", "bias"],
    "linear": ["out_features", "weights", "bias"],
    "avgpool": ["kernel", "stride"],
    "global_avgpool": [],
    "flatten": [],
    "residual_add": ["from"],
    "branch": ["from"],
    "relu": [],
    "maxpool": ["kernel", "stride"],
    "requantize": ["multiplier", "shift", "min", "max"],
}
FIELD_ORDER = ["op", "out_channels", "kernel_h", "kernel_w", "stride", "padding", "groups",
               "out_features", "kernel", "from", "multiplier", "shift", "min", "max",
               "weights", "bias"]
OPTIONAL = {("conv2d", "groups")}
LINEAR_OPS = {"conv2d", "linear", "avgpool", "global_avgpool", "flatten", "residual_add",
              "branch"}
SIZE_FIELDS = {"out_channels", "kernel_h", "kernel_w", "stride", "padding", "groups",
               "out_features", "kernel", "from"}


class FormatError(ValueError):
    """The model object breaks a rule of spec/model-format.md."""


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(v, lo, hi, what):
    if not _is_int(v) or not lo <= v <= hi:
        raise FormatError(f"{what}: {v!r} is not an integer in [{lo}, {hi}]")


def check_fields(model, canonical_order=True):
    """MODEL-6 as far as a Python dict can break it: exact key sets, types and
    integer ranges; with canonical_order, also MODEL-8's key order (that of
    the crate's to_json: the field table's order, so `stride` before
    `kernel`) and no `groups` = 1."""
    if not isinstance(model, dict):
        raise FormatError("model is not a JSON object")
    if model.get("format") != FORMAT_TAG or model.get("version") != FORMAT_VERSION:
        raise FormatError(f"format/version must be {FORMAT_TAG!r}/{FORMAT_VERSION}")
    if list(model) != ["format", "version", "name", "input", "layers"]:
        raise FormatError(f"top-level keys {list(model)} are not format, version, name, input, layers")
    name = model["name"]
    if not isinstance(name, str) or len(name.encode()) > MAX_NAME_BYTES:
        raise FormatError("name must be a string of at most 256 bytes")
    inp = model["input"]
    if not isinstance(inp, dict) or list(inp) != ["shape", "min", "max"]:
        raise FormatError("input must be {shape, min, max} in that order")
    if not isinstance(inp["shape"], list) or len(inp["shape"]) != 3:
        raise FormatError("input.shape must be [C, H, W]")
    for v in inp["shape"]:
        _check_int(v, 0, 2 ** 64 - 1, "input.shape")
    _check_int(inp["min"], I64_MIN, I64_MAX, "input.min")
    _check_int(inp["max"], I64_MIN, I64_MAX, "input.max")
    layers = model["layers"]
    if not isinstance(layers, list) or not layers:
        raise FormatError("layers must be a non-empty array")
    for i, layer in enumerate(layers):
        where = f"layer {i}"
        if not isinstance(layer, dict) or layer.get("op") not in OP_FIELDS:
            raise FormatError(f"{where}: not an object with a known op")
        op = layer["op"]
        allowed = OP_FIELDS[op]
        keys = [k for k in layer if k != "op"]
        extra = [k for k in keys if k not in allowed]
        missing = [k for k in allowed if k not in layer and (op, k) not in OPTIONAL]
        if extra or missing:
            raise FormatError(f"{where} ({op}): unexpected {extra} / missing {missing}")
        canonical = [k for k in FIELD_ORDER if k in layer]
        if canonical_order and list(layer) != canonical:
            raise FormatError(f"{where} ({op}): keys {list(layer)} not in canonical order {canonical}")
        if canonical_order and layer.get("groups") == 1:
            raise FormatError(f"{where} ({op}): canonical form omits groups = 1")
        for k in keys:
            v = layer[k]
            if k in SIZE_FIELDS:
                _check_int(v, 0, 2 ** 64 - 1, f"{where} ({op}).{k}")
            elif k == "shift":
                _check_int(v, 0, 2 ** 32 - 1, f"{where} ({op}).shift")
            elif k in ("multiplier", "min", "max"):
                _check_int(v, I64_MIN, I64_MAX, f"{where} ({op}).{k}")
            else:  # weights, bias
                if not isinstance(v, list):
                    raise FormatError(f"{where} ({op}).{k} must be an array")
                for x in v:
                    _check_int(x, I64_MIN, I64_MAX, f"{where} ({op}).{k}[]")


def infer_shapes(model):
    """MODEL-2: validate and return the output shape (C, H, W) of every layer
    (index -1 is the input). Errors name the layer index and op."""
    c, h, w = model["input"]["shape"]
    if min(c, h, w) == 0:
        raise FormatError("input: zero dimension")
    if model["input"]["min"] > model["input"]["max"]:
        raise FormatError("input: min > max")
    if len(model["name"].encode()) > MAX_NAME_BYTES:
        raise FormatError("name longer than 256 bytes")
    shapes = []
    cur = (c, h, w)
    for i, L in enumerate(model["layers"]):
        op = L["op"]

        def fail(msg):
            raise FormatError(f"layer {i} ({op}): {msg}")

        C, H, W = cur
        if op == "conv2d":
            o, kh, kw, s, p = (L[k] for k in ("out_channels", "kernel_h", "kernel_w", "stride", "padding"))
            if 0 in (o, kh, kw, s):
                fail("zero size")
            if L.get("groups", 1) != 1:
                fail("groups must be 1")
            if kh > H + 2 * p or kw > W + 2 * p:
                fail("kernel larger than the padded input")
            if len(L["weights"]) != o * C * kh * kw or len(L["bias"]) != o:
                fail(f"expected {o * C * kh * kw} weights and {o} biases")
            cur = (o, (H + 2 * p - kh) // s + 1, (W + 2 * p - kw) // s + 1)
        elif op == "linear":
            n = L["out_features"]
            if n == 0:
                fail("zero size")
            if (H, W) != (1, 1):
                fail("input is not flat")
            if len(L["weights"]) != n * C or len(L["bias"]) != n:
                fail(f"expected {n * C} weights and {n} biases")
            cur = (n, 1, 1)
        elif op in ("avgpool", "maxpool"):
            k, s = L["kernel"], L["stride"]
            if k == 0 or s == 0:
                fail("zero size")
            if k > H or k > W:
                fail("kernel larger than the input")
            cur = (C, (H - k) // s + 1, (W - k) // s + 1)
        elif op == "global_avgpool":
            cur = (C, 1, 1)
        elif op == "flatten":
            cur = (C * H * W, 1, 1)
        elif op in ("residual_add", "branch"):
            f = L["from"]
            if f >= i:
                fail(f"from = {f} does not name an earlier layer")
            if op == "residual_add" and shapes[f] != cur:
                fail(f"layer {f} has shape {shapes[f]}, input has {cur}")
            if op == "branch":
                cur = shapes[f]
        elif op == "requantize":
            if L["multiplier"] <= 0 or L["shift"] > 62 or L["min"] > L["max"]:
                fail("needs multiplier > 0, shift <= 62, min <= max")
        if cur[0] * cur[1] * cur[2] > MAX_TENSOR:
            fail("tensor of more than 2^26 values")
        shapes.append(cur)
    return shapes


def requantize_scalar(y, mult, shift, lo, hi):
    """clamp(round_half_away_from_zero(y*mult / 2^shift), lo, hi), exact (Python ints)."""
    num = y * mult
    if shift:
        half = 1 << (shift - 1)
        num = (num + half) >> shift if num >= 0 else -((-num + half) >> shift)
    return min(max(num, lo), hi)


def _affine_interval(weights, bias, rows, lo, hi):
    """Per output o: [bias + sum min(w*lo, w*hi), bias + sum max(...)], unioned,
    and the PARAM-6 accumulator max_o(sum|w|*max|x| + |bias|). Python ints."""
    import numpy as np

    w = np.asarray(weights, dtype=object).reshape(rows, -1)
    pos = np.where(w > 0, w, 0).sum(axis=1)
    neg = np.where(w < 0, w, 0).sum(axis=1)
    b = list(bias)
    los = [b[o] + pos[o] * lo + neg[o] * hi for o in range(rows)]
    his = [b[o] + pos[o] * hi + neg[o] * lo for o in range(rows)]
    mx = max(abs(lo), abs(hi))
    acc = [(pos[o] - neg[o]) * mx + abs(b[o]) for o in range(rows)]
    worst = max(range(rows), key=lambda o: acc[o])
    return int(min(los)), int(max(his)), int(acc[worst]), worst


def bounds(model):
    """MODEL-5: per layer a dict {lo, hi} (interval of every output value) and,
    for linear ops, `acc` (worst-case accumulator) and `output` (the argmax
    output row for conv2d/linear). Exact Python integers."""
    shapes = infer_shapes(model)
    lo, hi = model["input"]["min"], model["input"]["max"]
    out = []
    for i, L in enumerate(model["layers"]):
        op = L["op"]
        C, H, W = model["input"]["shape"] if i == 0 else shapes[i - 1]
        rec = {"op": op}
        if op in ("conv2d", "linear"):
            if op == "conv2d" and L["padding"] > 0:
                lo, hi = min(lo, 0), max(hi, 0)  # padding feeds zeros
            rows = L["out_channels"] if op == "conv2d" else L["out_features"]
            nlo, nhi, acc, worst = _affine_interval(L["weights"], L["bias"], rows, lo, hi)
            rec.update(in_max=max(abs(lo), abs(hi)), acc=acc, output=worst)
            lo, hi = nlo, nhi
        elif op in ("avgpool", "global_avgpool"):
            n = L["kernel"] ** 2 if op == "avgpool" else H * W
            lo, hi = lo * n, hi * n
        elif op == "residual_add":
            lo, hi = lo + out[L["from"]]["lo"], hi + out[L["from"]]["hi"]
        elif op == "branch":
            lo, hi = out[L["from"]]["lo"], out[L["from"]]["hi"]
        elif op == "relu":
            lo, hi = max(lo, 0), max(hi, 0)
        elif op == "requantize":
            args = (L["multiplier"], L["shift"], L["min"], L["max"])
            lo, hi = requantize_scalar(lo, *args), requantize_scalar(hi, *args)
        # flatten, maxpool keep the interval
        if op in LINEAR_OPS and "acc" not in rec:
            rec["acc"] = max(abs(lo), abs(hi))
        rec.update(lo=lo, hi=hi)
        out.append(rec)
    return out


def check_accumulators(model, bits):
    """Raise unless every linear layer's worst-case accumulator is < 2^(bits-1)."""
    for i, r in enumerate(bounds(model)):
        if "acc" in r and r["acc"] >= 2 ** (bits - 1):
            where = f", output {r['output']}" if "output" in r else ""
            raise FormatError(f"layer {i} ({r['op']}{where}): worst-case accumulator {r['acc']} "
                              f"needs {signed_bits(r['acc'])} bits, more than b = {bits}")


def signed_bits(v):
    """Bits of a signed integer type holding +-v."""
    return int(v).bit_length() + 1


def canonical(model):
    """A copy with keys in canonical order and `groups` dropped when 1 (MODEL-8)."""
    layers = []
    for L in model["layers"]:
        L = {k: L[k] for k in FIELD_ORDER if k in L}
        if L.get("groups") == 1:
            del L["groups"]
        layers.append(L)
    inp = model["input"]
    return {"format": FORMAT_TAG, "version": FORMAT_VERSION, "name": model["name"],
            "input": {"shape": list(inp["shape"]), "min": inp["min"], "max": inp["max"]},
            "layers": layers}


def to_json(model):
    """Compact canonical JSON, as the crate's Model::to_json writes it."""
    return json.dumps(canonical(model), separators=(",", ":"), ensure_ascii=False)
