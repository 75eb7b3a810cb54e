#!/usr/bin/env python3
"""Train a tiny float PyTorch CNN on scikit-learn's digits and export it.

    PYTHONPATH=python python3 python/examples/train_tiny_digits.py --out DIR --accumulator-bits 16

Data: sklearn's bundled 8x8 digits (no download), pixels 0..16 mapped to
4-bit integers 0..15 exactly as scripts/train_digits.py does; the float
model sees q/15, so the exported input quantisation is exact.
Model: conv(1->4, 3x3, pad 1)-BN-ReLU-AvgPool2-conv(4->8, 3x3, pad 1)-ReLU-
AvgPool2-Flatten-Linear(32->10). Deterministic: fixed seeds, one thread.
Writes DIR/tiny-digits.json (model) and DIR/tiny-digits-test.json (the
quantised test split: {"inputs": [[...]], "labels": [...]}).
"""
import os

# One thread everywhere: the machine is shared, and a fixed thread count keeps
# float summation order, hence the exported integers, reproducible.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # python/ for safhire_export
import safhire_export as se  # noqa: E402

SEED = 20240917
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def load_data():
    d = load_digits()
    q = (d.data.astype(np.int64) * 30 + 16) // 32  # 0..16 -> 0..15, round half up
    xtr, xte, ytr, yte = train_test_split(q, d.target, test_size=360, stratify=d.target,
                                          random_state=SEED)
    f = lambda a: torch.tensor(a.reshape(-1, 1, 8, 8), dtype=torch.float32) / 15
    return f(xtr), torch.tensor(ytr), f(xte), torch.tensor(yte)


def tiny_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32, 10))


def train(model, x, y, epochs=60, lr=1e-2, batch=32):
    """Adam + cosine decay; a torch.Generator fixes the batch order."""
    g = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * ((len(x) + batch - 1) // batch))
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--accumulator-bits", type=int, default=16, help="b: accumulators < 2^(b-1)")
    ap.add_argument("--act-bits", type=int, default=4, help="unsigned activation bits")
    ap.add_argument("--weight-bits", type=int, default=8, help="max signed weight bits")
    ap.add_argument("--epochs", type=int, default=60)
    a = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(SEED)
    xtr, ytr, xte, yte = load_data()
    model = train(tiny_cnn(), xtr, ytr, epochs=a.epochs)

    # Post-training quantisation, calibrated on the training split. The input
    # already is q/15 with q in 0..15, so input_scale = 1/15 is exact.
    int_model, rep = se.export_with_report(
        model, xtr, accumulator_bits=a.accumulator_bits, input_bits=4, act_bits=a.act_bits,
        weight_bits=a.weight_bits, input_scale=1 / 15, name="tiny-digits")
    te = se.compare(model, int_model, xte, 1 / 15, 4, yte.numpy())
    tr = se.compare(model, int_model, xtr, 1 / 15, 4, ytr.numpy())

    print(f"trained {a.epochs} epochs in {time.time() - t0:.1f}s")
    print(f"float accuracy:   train {tr['float_acc']:.4f}  test {te['float_acc']:.4f}")
    print(f"integer accuracy: train {tr['int_acc']:.4f}  test {te['int_acc']:.4f}  "
          f"(argmax agreement with float: test {te['agreement']:.4f})")
    b = a.accumulator_bits
    print(f"accumulator-aware quantisation for b = {b} (limit |acc| < 2^{b - 1} = {2 ** (b - 1)}):")
    print(f"  {'layer':<6} {'module':<10} {'max|x|':>6} {'w bits':>6} {'worst acc':>10} "
          f"{'acc bits':>8} {'sum|w|':>7} {'grid x':>7} {'rows L1-clipped':>15}")
    for r in rep["layers"]:
        mod = r["path"] + ("+" + r["folded_bn"] if r["folded_bn"] else "")
        print(f"  {r['layer']:<6} {mod:<10} {r['in_max']:>6} {r['weight_bits']:>6} "
              f"{r['worst_acc']:>10} {r['acc_bits']:>8} {r['total_l1']:>7} "
              f"{r['grid_factor']:>7.3f} {r['rows_clipped']:>15}")

    a.out.mkdir(parents=True, exist_ok=True)
    xq = se.quantize_input(xte, 1 / 15, 4)
    mpath, tpath = a.out / "tiny-digits.json", a.out / "tiny-digits-test.json"
    se.write_model(mpath, int_model)
    se.write_test_set(tpath, xq, yte.numpy())
    print(f"wrote {mpath} ({mpath.stat().st_size} B) and {tpath} ({tpath.stat().st_size} B); "
          f"total {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
