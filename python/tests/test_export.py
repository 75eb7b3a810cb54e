"""Tests of safhire_export: python3 -m pytest python/tests (from the repo root).

Tests that need torch skip, with the reason printed (-rs), when torch is not
importable; the numpy-only ones (format rules, integer reference against the
shipped digits model) always run.
"""
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
PY = Path(__file__).resolve().parent.parent
ROOT = PY.parent
sys.path.insert(0, str(PY))
import safhire_export as se  # noqa: E402
from safhire_export import spec  # noqa: E402

try:
    import torch
    from torch import nn

    torch.set_num_threads(1)
    TORCH_MISSING = None
except Exception as e:  # ImportError, or a broken CUDA-library install
    torch = nn = None
    TORCH_MISSING = f"torch is not importable ({type(e).__name__}: {e}); run python/install-ci.sh"
    print(f"SKIPPING torch tests: {TORCH_MISSING}", file=sys.stderr)

needs_torch = pytest.mark.skipif(TORCH_MISSING is not None, reason=TORCH_MISSING or "")

# Agreement thresholds (argmax of the integer reference vs the float model, on
# the calibration = training split of the tiny digits model).
AGREE_MIN = {16: 0.97, 12: 0.90}


# ----------------------------------------------------------- numpy only
def test_reference_reproduces_shipped_digits_model():
    """The numpy evaluator is bit-exact with scripts/train_digits.py's integer_logits."""
    m = json.loads((ROOT / "models/digits-cnn.json").read_text())
    t = json.loads((ROOT / "models/digits-test.json").read_text())
    spec.check_fields(m, canonical_order=False)  # hand-laid file: avgpool has kernel, stride
    logits = se.evaluate(m, t["inputs"])
    assert (logits == np.array(t["integer_logits"])).all()
    wc = [r["acc"] for r in spec.bounds(m) if r["op"] in ("conv2d", "linear")]
    assert wc == [1811, 18721, 23400]  # models/README.md's table
    spec.check_accumulators(m, 16)
    with pytest.raises(spec.FormatError, match="layer 3 \\(conv2d, output 0\\)"):
        spec.check_accumulators(m, 12)


def test_requantize_rounds_half_away_from_zero():
    m = {"format": "safhire-model", "version": 1, "name": "rq",
         "input": {"shape": [4, 1, 1], "min": -10, "max": 10},
         "layers": [{"op": "requantize", "multiplier": 1, "shift": 1, "min": -100, "max": 100}]}
    assert se.evaluate(m, [[3, -3, 5, -5]]).tolist() == [[2, -2, 3, -3]]


def test_format_rules_reject_bad_models():
    good = {"format": "safhire-model", "version": 1, "name": "x",
            "input": {"shape": [1, 2, 2], "min": 0, "max": 3},
            "layers": [{"op": "flatten"}, {"op": "linear", "out_features": 1,
                                            "weights": [1, 2, 3, 4], "bias": [0]}]}
    spec.check_fields(good)
    spec.infer_shapes(good)
    bad_fields = json.loads(json.dumps(good))
    bad_fields["layers"][0]["kernel"] = 2
    with pytest.raises(spec.FormatError, match="layer 0"):
        spec.check_fields(bad_fields)
    bad_count = json.loads(json.dumps(good))
    bad_count["layers"][1]["weights"] = [1, 2, 3]
    with pytest.raises(spec.FormatError, match="layer 1 \\(linear\\)"):
        spec.infer_shapes(bad_count)
    bad_float = json.loads(json.dumps(good))
    bad_float["layers"][1]["bias"] = [0.5]
    with pytest.raises(spec.FormatError):
        spec.check_fields(bad_float)


# ------------------------------------------------------------- torch
def _tiny_digits():
    """The example's trained model and data (60 epochs, ~3 s)."""
    path = PY / "examples/train_tiny_digits.py"
    sp = importlib.util.spec_from_file_location("train_tiny_digits", path)
    mod = importlib.util.module_from_spec(sp)
    sp.loader.exec_module(mod)
    torch.manual_seed(mod.SEED)
    xtr, ytr, xte, yte = mod.load_data()
    return mod.train(mod.tiny_cnn(), xtr, ytr), xtr, ytr


@pytest.fixture(scope="module")
def tiny():
    if TORCH_MISSING:
        pytest.skip(TORCH_MISSING)
    return _tiny_digits()


@needs_torch
def test_bn_folding_equals_unfolded_model():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6),
                          nn.ReLU(), nn.Conv2d(6, 5, 3), nn.BatchNorm2d(5, affine=False),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))
    with torch.no_grad():  # non-trivial statistics and affine parameters
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.2, 3)
        model[1].weight.uniform_(0.5, 2)
        model[1].bias.uniform_(-1, 1)
    x = torch.rand(16, 3, 11, 11)
    ref = model.eval().double()(x.double())
    got = se.folded_forward(model, x)
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-10)


@needs_torch
def test_exported_json_follows_the_format(tiny, tmp_path):
    model, xtr, _ = tiny
    m = se.export(model, xtr, accumulator_bits=16, input_bits=4, input_scale=1 / 15, name="t")
    path = tmp_path / "t.json"
    se.write_model(path, m)
    text = path.read_text()
    back = json.loads(text)
    spec.check_fields(back)  # exact keys, canonical order, integer types and ranges
    spec.infer_shapes(back)  # MODEL-2
    assert spec.to_json(back) + "\n" == text  # canonical and compact (MODEL-8)
    assert "." not in text.replace('"safhire-model"', "")  # no float anywhere
    assert back["input"] == {"shape": [1, 8, 8], "min": 0, "max": 15}
    assert [L["op"] for L in back["layers"]] == [
        "conv2d", "requantize", "avgpool", "conv2d", "requantize", "avgpool", "flatten", "linear"]
    for L in back["layers"]:
        if L["op"] == "requantize":
            assert (L["min"], L["max"]) == (0, 15) and L["multiplier"] > 0 and L["shift"] <= 62
        if L["op"] == "avgpool":
            assert L["kernel"] == L["stride"] == 2
    tpath = tmp_path / "t-test.json"
    xq = se.quantize_input(xtr[:5], 1 / 15, 4)
    se.write_test_set(tpath, xq, [0, 1, 2, 3, 4])
    t = json.loads(tpath.read_text())
    assert set(t) == {"inputs", "labels"} and len(t["inputs"][0]) == 64
    assert all(isinstance(v, int) and 0 <= v <= 15 for row in t["inputs"] for v in row)


def _wide_model():
    """Wide layers with large weights: naive 8-bit quantisation overflows b16."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 10))
    return model.eval(), torch.rand(64, 2, 8, 8)


@needs_torch
@pytest.mark.parametrize("bits", [12, 16])
def test_accumulator_bound_enforced_by_l1_constraint(bits):
    model, x = _wide_model()
    # Naive per-layer 8-bit quantisation of the second conv (input: 2x2 sum of
    # 4-bit activations, max|x| = 60) would need far more than b bits:
    w = model[3].weight.detach().double().numpy().reshape(16, -1)
    naive = np.round(w / (np.abs(w).max() / 127))
    naive_acc = np.abs(naive).sum(1).max() * 60
    assert naive_acc >= 2 ** (bits - 1), naive_acc
    m, rep = se.export_with_report(model, x, accumulator_bits=bits, input_bits=8, act_bits=4)
    for r in spec.bounds(m):  # independent MODEL-5 recomputation
        if "acc" in r:
            assert r["acc"] < 2 ** (bits - 1)
    layers = {r["path"]: r for r in rep["layers"]}
    assert layers["3"]["l1_acted"]  # the constraint had to act on the wide conv
    assert all(r["acc_bits"] <= bits for r in rep["layers"])
    assert layers["3"]["worst_acc"] == spec.bounds(m)[layers["3"]["layer"]]["acc"]


@needs_torch
def test_unreachable_bound_raises():
    model, x = _wide_model()
    # b = 8 with 8-bit inputs: max|x| = 255 alone exceeds 2^7 - 1.
    with pytest.raises(se.ExportError, match="exceeds the accumulator limit"):
        se.export(model, x, accumulator_bits=8, input_bits=8)


@needs_torch
@pytest.mark.parametrize("bits", [16, 12])
def test_integer_reference_agrees_with_float_model(tiny, bits):
    model, xtr, ytr = tiny
    m = se.export(model, xtr, accumulator_bits=bits, input_scale=1 / 15)
    res = se.compare(model, m, xtr, 1 / 15, 4, ytr.numpy())
    print(f"b={bits}: {res}")
    assert res["agreement"] >= AGREE_MIN[bits], res


@needs_torch
def test_export_is_deterministic(tiny):
    model, xtr, _ = tiny
    a = se.to_json(se.export(model, xtr, accumulator_bits=12, input_scale=1 / 15))
    b = se.to_json(se.export(model, xtr, accumulator_bits=12, input_scale=1 / 15))
    assert a == b


@needs_torch
@pytest.mark.parametrize("bad, path, kind", [
    (lambda: nn.MaxPool2d(2, padding=1), "1", "MaxPool2d"),
    (lambda: nn.Conv2d(4, 4, 3, groups=2), "1", "Conv2d"),
    (lambda: nn.GELU(), "1", "GELU"),
    (lambda: nn.AvgPool2d(3, stride=1), "1", "AvgPool2d"),
    (lambda: nn.BatchNorm2d(4), "1", "BatchNorm2d"),  # after ReLU, not a conv
])
def test_unsupported_module_is_named(bad, path, kind):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sequential(nn.ReLU(), bad()), nn.Flatten(),
                          nn.LazyLinear(10))
    # The bad module sits at "1.1" inside a nested Sequential.
    with pytest.raises(se.ExportError, match=f"'{path}.1': {kind}"):
        se.export(model, torch.rand(4, 1, 8, 8), accumulator_bits=16)


@needs_torch
def test_non_sequential_is_refused():
    with pytest.raises(se.ExportError, match="not an nn.Sequential"):
        se.export(nn.Linear(4, 2), torch.rand(2, 1, 2, 2), accumulator_bits=16)
