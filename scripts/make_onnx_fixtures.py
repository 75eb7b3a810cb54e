#!/usr/bin/env python3
"""Quantised ONNX fixtures for the ONNX importer (src/model/onnx.rs, MODEL-10).

    pip install -r scripts/requirements-onnx.txt
    python3 scripts/make_onnx_fixtures.py

No torch, no download: a small float CNN for scikit-learn's bundled
`load_digits` (8x8 pixels 0..16) is built with `onnx.helper`

    Conv 1->6 3x3 pad 1 (+bias) -> Relu -> AveragePool 2x2/2 -> Flatten
    -> Gemm 96->32 (transB=1, +bias) -> Relu -> MatMul 32->10 (no bias)

with fixed random conv filters and hidden layer (seeded) and least-squares
output weights, then quantised with onnxruntime's `quantize_static` (per
tensor, int8 symmetric weights, uint8 activations, MinMax calibration on 200
training images) in both formats. Writes, in models/fixtures/:

* digits-qdq.onnx   QDQ format (QuantizeLinear/DequantizeLinear around float ops)
* digits-qop.onnx   QOperator format (QLinearConv, QGemm, QLinearMatMul, ...)
* digits-onnx-expected.json  for each format: the input's and the output's
  scale and zero point, and for 40 test images the quantised integer input
  (onnxruntime's QuantizeLinear output), onnxruntime's quantised integer
  output (the tensor the final DequantizeLinear reads) and the label, and
  onnxruntime's quantised tensor after each stage (conv, pool, fc1, fc2)
* digits-maxpool-qdq.onnx  the same network with MaxPool instead of
  AveragePool: the importer must refuse it (unsupported operator)
* digits-wzp-qop.onnx  digits-qop.onnx with one weight zero point set to 1:
  the importer must refuse it (non-zero weight zero point)

Deterministic for the pinned versions (seed 20250101, one thread).
"""

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from sklearn.datasets import load_digits  # noqa: E402

SEED = 20250101
OUT = Path(__file__).resolve().parent.parent / "models" / "fixtures"
N_CALIB = 200
N_TEST = 40
OPSET = 13


def relu(x):
    return np.maximum(x, 0.0)


def conv3x3_pad1(x, w, b):
    """x: [N,1,8,8], w: [O,1,3,3] -> [N,O,8,8]"""
    n = x.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], 8, 8), dtype=np.float64)
    for o in range(w.shape[0]):
        for k in range(3):
            for l in range(3):
                out[:, o] += w[o, 0, k, l] * xp[:, 0, k : k + 8, l : l + 8]
        out[:, o] += b[o]
    return out


def features(x, conv_w, conv_b, fc1_w, fc1_b):
    h = relu(conv3x3_pad1(x, conv_w, conv_b))
    h = h.reshape(h.shape[0], h.shape[1], 4, 2, 4, 2).mean(axis=(3, 5))  # avgpool 2
    h = h.reshape(h.shape[0], -1)
    return relu(h @ fc1_w.T + fc1_b)


def train(x_train, y_train):
    rng = np.random.default_rng(SEED)
    conv_w = rng.normal(0.0, 0.25, size=(6, 1, 3, 3))
    conv_b = rng.normal(0.0, 0.1, size=6)
    fc1_w = rng.normal(0.0, 1.0 / np.sqrt(96), size=(32, 96))
    fc1_b = rng.normal(0.0, 0.1, size=32)
    h = features(x_train, conv_w, conv_b, fc1_w, fc1_b)
    target = np.eye(10)[y_train] * 2.0 - 1.0
    # Ridge least squares for the output layer (no bias).
    lam = 1e-1
    w2 = np.linalg.solve(h.T @ h + lam * np.eye(h.shape[1]), h.T @ target)  # [32, 10]
    f32 = np.float32
    return [a.astype(f32) for a in (conv_w, conv_b, fc1_w, fc1_b, w2)]


def float_model(params, pool="AveragePool"):
    conv_w, conv_b, fc1_w, fc1_b, w2 = params
    inits = [
        numpy_helper.from_array(conv_w, "conv_w"),
        numpy_helper.from_array(conv_b, "conv_b"),
        numpy_helper.from_array(fc1_w, "fc1_w"),
        numpy_helper.from_array(fc1_b, "fc1_b"),
        numpy_helper.from_array(w2, "fc2_w"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["conv"], ["relu1"], name="relu1"),
        helper.make_node(pool, ["relu1"], ["pool"], name="pool1",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc1_w", "fc1_b"], ["fc1"], name="fc1", transB=1),
        helper.make_node("Relu", ["fc1"], ["relu2"], name="relu2"),
        helper.make_node("MatMul", ["relu2", "fc2_w"], ["logits"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="safhire-make_onnx_fixtures")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class Reader(CalibrationDataReader):
    def __init__(self, x):
        self.items = iter([{"input": x[i : i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.items, None)


def quantise(model, calib, fmt, path):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "float.onnx"
        onnx.save(model, src)
        quantize_static(
            str(src), str(path), Reader(calib), quant_format=fmt, per_channel=False,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
    return onnx.load(str(path))


def initializer(model, name):
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def run_quantised(model, x):
    """Runs the quantised model, returning the quantised input (the first
    QuantizeLinear's output) and the quantised output (what the final
    DequantizeLinear reads), with their scales and zero points."""
    g = model.graph
    out_name = g.output[0].name
    final_dq = next(n for n in g.node if n.output[0] == out_name)
    assert final_dq.op_type == "DequantizeLinear", final_dq.op_type
    first_q = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == g.input[0].name)
    # The quantised tensors after each computing stage (the outputs of
    # QuantizeLinear / QLinear* / QGemm nodes, except a QuantizeLinear of a
    # Flatten, which only repeats the previous stage), in graph order.
    producer = {n.output[0]: n for n in g.node}
    stages = []
    for n in g.node:
        if n.op_type in ("QLinearConv", "QLinearAveragePool", "QGemm", "QLinearMatMul") or (
            n.op_type == "QuantizeLinear"
            and n is not first_q
            and producer.get(n.input[0]) is not None
            and producer[n.input[0]].op_type not in ("Flatten", "Reshape")
        ):
            zp_name = n.input[7] if n.op_type in ("QLinearConv", "QLinearMatMul") else (
                n.input[4] if n.op_type == "QLinearAveragePool" else (
                    n.input[8] if n.op_type == "QGemm" else n.input[2]))
            stages.append((n.name, n.output[0], int(initializer(model, zp_name))))
    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = [first_q.output[0], final_dq.input[0]] + [s[1] for s in stages]
    for name in names:
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.UINT8, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    qin, qout = [], []
    staged = [[] for _ in stages]
    for i in range(len(x)):
        _, a, b, *rest = sess.run(None, {"input": x[i : i + 1]})
        qin.append(a.reshape(-1).astype(int).tolist())
        qout.append(b.reshape(-1).astype(int).tolist())
        for k, r in enumerate(rest):
            staged[k].append(r.reshape(-1).astype(int).tolist())
    return {
        "input_scale": float(initializer(model, first_q.input[1])),
        "input_zero_point": int(initializer(model, first_q.input[2])),
        "output_scale": float(initializer(model, final_dq.input[1])),
        "output_zero_point": int(initializer(model, final_dq.input[2])),
        "inputs": qin,
        "outputs": qout,
        "stages": [
            {"node": name, "tensor": tensor, "zero_point": zp, "values": staged[k]}
            for k, (name, tensor, zp) in enumerate(stages)
        ],
    }


def main():
    np.random.seed(SEED)
    digits = load_digits()
    x = digits.images.astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target
    perm = np.random.default_rng(SEED).permutation(len(x))
    train_idx, test_idx = perm[:1400], perm[1400:]
    params = train(x[train_idx].astype(np.float64), y[train_idx])
    model = float_model(params)

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    float_pred = np.argmax(sess.run(None, {"input": x[test_idx]})[0], axis=1)
    float_acc = float(np.mean(float_pred == y[test_idx]))

    calib = x[train_idx[:N_CALIB]]
    test_x = x[test_idx[:N_TEST]]
    OUT.mkdir(parents=True, exist_ok=True)
    expected = {
        "generator": "scripts/make_onnx_fixtures.py",
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "float_test_accuracy": round(float_acc, 4),
        "labels": [int(v) for v in y[test_idx[:N_TEST]]],
    }
    for key, fmt in (("qdq", QuantFormat.QDQ), ("qop", QuantFormat.QOperator)):
        q = quantise(model, calib, fmt, OUT / f"digits-{key}.onnx")
        res = run_quantised(q, test_x)
        acc = float(np.mean(np.argmax(np.array(res["outputs"]), axis=1) == y[test_idx[:N_TEST]]))
        res["quantised_accuracy_on_these"] = acc
        expected[key] = res
        print(f"{key}: {(OUT / f'digits-{key}.onnx').stat().st_size} bytes, accuracy {acc:.3f}")

    # Refusal fixtures.
    quantise(float_model(params, pool="MaxPool"), calib, QuantFormat.QDQ,
             OUT / "digits-maxpool-qdq.onnx")
    qop = onnx.load(str(OUT / "digits-qop.onnx"))
    conv = next(n for n in qop.graph.node if n.op_type == "QLinearConv")
    wzp = conv.input[5]
    for t in qop.graph.initializer:
        if t.name == wzp:
            t.CopyFrom(numpy_helper.from_array(np.array(1, dtype=np.int8), wzp))
    onnx.save(qop, str(OUT / "digits-wzp-qop.onnx"))

    with open(OUT / "digits-onnx-expected.json", "w") as f:
        json.dump(expected, f, separators=(",", ":"))
        f.write("\n")
    print(f"float accuracy {float_acc:.3f} on {len(test_idx)} test images")


if __name__ == "__main__":
    main()
