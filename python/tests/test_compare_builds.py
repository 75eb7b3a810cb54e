"""Tests of scripts/compare_builds.py: its statistics against exact
enumeration, and its refusals, with fake `safhire` binaries that print a
bench report (standard library only)."""
import itertools
import json
import stat

import pytest
from scripts_dir import load_script

cb = load_script("compare_builds")


@pytest.mark.parametrize("n", [1, 2, 5, 8, 11])
def test_interval_coverage_equals_exact_enumeration(n):
    # Every pair is below the true median or above it with probability 1/2:
    # [v_(k), v_(n+1-k)] covers it exactly when at least k lie on each side.
    for k in range(1, n // 2 + 1):
        hits = sum(1 for signs in itertools.product((0, 1), repeat=n)
                   if sum(signs) >= k and n - sum(signs) >= k)
        assert abs(hits / 2 ** n - (1 - 2 * cb.binomial_cdf(k - 1, n))) < 1e-12


def test_interval_is_the_narrowest_that_reaches_the_confidence():
    v = [0.91, 0.95, 0.97, 0.99, 1.00, 1.02, 1.04, 1.10]
    low, high, coverage = cb.median_interval(v, 0.9)
    # n = 8: k = 2 covers 1 - 2·9/256 = 0.930; k = 3 only 0.711.
    assert (low, high) == (0.95, 1.04)
    assert abs(coverage - (1 - 18 / 256)) < 1e-12
    assert cb.median_interval(v[:3], 0.9) is None  # 3 pairs reach 0.75 at best


def test_sign_test_is_exact_and_ignores_ties():
    assert cb.sign_test_faster([0.9] * 8) == pytest.approx(1 / 256)
    assert cb.sign_test_faster([1.1] * 8) == pytest.approx(1.0)
    assert cb.sign_test_faster([0.9, 1.0, 1.0]) == pytest.approx(0.5)
    assert cb.median([3, 1, 2, 10]) == 2.5


def fake(tmp_path, name, server_ms, bit_exact=True, kernels="avx2"):
    report = {
        "bit_exact": bit_exact,
        "server_ms": server_ms,
        "machine": {"cpu": "test CPU", "kernels": kernels, "logical_cpus": 2},
        "parameter_set": {"name": "b16"},
        "rounds": [{"server_phases_ms": {"repack": server_ms / 2, "linear": 0.0,
                                         "pack": server_ms / 2, "sanitise": 0.0}}],
    }
    path = tmp_path / name
    path.write_text("#!/bin/sh\ncat <<'EOF'\n" + json.dumps(report) + "\nEOF\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_a_faster_build_is_reported_faster(tmp_path):
    c = cb.compare(fake(tmp_path, "base", 100.0), fake(tmp_path, "new", 80.0),
                   "digits", 6, 1, 0.9)
    assert c["ratios"] == pytest.approx([0.8] * 6)
    assert c["geometric_mean_ratio"] == pytest.approx(0.8)
    assert c["pairs_faster"] == 6 and c["sign_test_p_faster"] == pytest.approx(1 / 64)
    assert c["phase_medians_ms"]["new"]["pack"] == pytest.approx(40.0)
    assert "6 of 6 pairs faster" in cb.text(c)


def test_refuses_runs_that_are_not_bit_exact(tmp_path):
    with pytest.raises(SystemExit, match="not bit-exact"):
        cb.compare(fake(tmp_path, "base", 100.0), fake(tmp_path, "new", 80.0, bit_exact=False),
                   "digits", 2, 1, 0.9)


def test_refuses_builds_that_ran_different_kernels(tmp_path):
    with pytest.raises(SystemExit, match="different kernels"):
        cb.compare(fake(tmp_path, "base", 100.0, kernels="avx512"),
                   fake(tmp_path, "new", 80.0), "digits", 2, 1, 0.9)
