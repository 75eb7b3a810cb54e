"""Tests of scripts/train_digits.py's noise-aware option (--dp-sigma, DP-8).

numpy and scikit-learn only: they always run. The first one trains the
shipped model (about 15 s on one core).
"""
import subprocess
import sys

import numpy as np
from scripts_dir import SCRIPTS, load_script

ROOT = SCRIPTS.parent
SCRIPT = SCRIPTS / "train_digits.py"


def load_trainer():
    return load_script("train_digits")


def cpu_like_the_shipped_exports():
    # The shipped export was trained on an AMD Zen 5 (AVX-512). numpy and
    # OpenBLAS pick their float kernels per CPU: an AVX2-only Zen 3 and an
    # Intel Xeon with AVX-512 both train other weights from the same seed
    # (models/README.md), so only AMD CPUs with AVX-512 are held to its bytes.
    from numpy._core._multiarray_umath import __cpu_features__
    try:
        with open("/proc/cpuinfo") as f:
            amd = "AuthenticAMD" in f.read()
    except OSError:
        amd = False
    return amd and bool(__cpu_features__.get("AVX512F"))


def test_noise_off_reproduces_the_shipped_export_byte_for_byte(tmp_path):
    # Without --dp-sigma the run is the shipped one: the noise has its own
    # generator, so the training generator draws what it always drew. (A
    # difference here means the shipped path changed, or numpy/BLAS differ
    # from the pinned ones: models/README.md.)
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    assert not (tmp_path / "README.md").exists()  # models/README.md is only rewritten in models/
    if cpu_like_the_shipped_exports():
        expected = ROOT / "models"
    else:
        # Elsewhere the guarantee models/README.md states: a second
        # noise-off run on this machine writes the same bytes.
        expected = tmp_path / "again"
        subprocess.run([sys.executable, str(SCRIPT), "--out", str(expected)], check=True,
                       capture_output=True)
    for name in ("digits-cnn.json", "digits-test.json"):
        assert (tmp_path / name).read_bytes() == (expected / name).read_bytes(), name


def test_training_noise_is_sigma_accumulator_units_at_the_exported_scale():
    td = load_trainer()
    rng = np.random.default_rng(1)
    P = td.init_params(rng)
    S = {"a1": 0.05, "a2": 0.08}
    x = rng.integers(0, 16, (4, 1, 8, 8)) / td.ACT_MAX
    clean, _ = td.forward(P, x, S)
    again, _ = td.forward(P, x, S, None)
    assert np.array_equal(clean, again)
    # The unit the noise is scaled by is the one the export uses: the fake
    # quantised logits are the exported integer logits times that unit.
    Q, W = td.quantise(P, S), td.fake_quant(P, S)
    xi = np.rint(x * td.ACT_MAX).astype(np.int64)
    feats = td.int_pool(td.requantise(td.int_conv(xi, Q["w1"], Q["b1"]), *Q["rq1"]))
    feats = td.int_pool(td.requantise(td.int_conv(feats, Q["w2"], Q["b2"]), *Q["rq2"]))
    int_acc = np.einsum("ni,oi->no", feats.reshape(len(x), -1), Q["w3"]) + Q["b3"]
    assert np.allclose(int_acc * W["unit3"], clean, rtol=0, atol=1e-9 + 1e-6 * np.abs(clean).max())
    # The logits' own noise (given the noisy features the cache holds):
    # mean 0, standard deviation sigma * unit.
    sigma, diffs = 50.0, []
    for i in range(400):
        logits, c = td.forward(P, x, S, (sigma, np.random.default_rng(i)))
        diffs.append((logits - (c["f"] @ c["W"]["w3"].T + c["W"]["b3"])).ravel())
    diffs = np.concatenate(diffs) / W["unit3"]
    assert abs(diffs.std() - sigma) < 0.05 * sigma, diffs.std()
    assert abs(diffs.mean()) < 0.1 * sigma, diffs.mean()
