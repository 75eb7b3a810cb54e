#!/usr/bin/env python3
"""Two builds of `safhire` on one workload, alternating: is the new one faster?

    scripts/compare_builds.py BASE NEW [--workload resnet20] [--pairs 8]
                              [--threads 1] [--confidence 0.9] [--json]

BASE and NEW are `safhire` binaries (for a lever: the commit before and
the commit with it, each built with `cargo build --release`). Each pair
runs `BIN bench WORKLOAD --threads T --json` once per binary as a fresh
process, in alternating order (base first in odd pairs, new first in even
ones), so that drift in the machine's load falls on both. Per pair the
ratio new / base of the server time; the report gives their geometric
mean, their median with a distribution-free confidence interval (order
statistics of the pair ratios, exact binomial coverage), and the exact
one-sided sign test of "new is faster". Also the medians of each phase
(repack, linear, pack, sanitise) over the runs.

It refuses (exit 1) when a run's logits are not bit-exact, or when the two
builds ran different kernels or sets: such a ratio compares different
computations. Only the Python standard library; no timing of its own.

benches/README.md records every lever's figures this way, with the
command, because machines of this kind differ run to run by up to 1.3×.
"""
import argparse
import json
import math
import subprocess
import sys

PHASES = ("repack", "linear", "pack", "sanitise")


def binomial_cdf(k, n):
    """P(Bin(n, 1/2) <= k)."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(min(k, n) + 1)) / 2 ** n


def median(values):
    v = sorted(values)
    m = len(v) // 2
    return v[m] if len(v) % 2 else (v[m - 1] + v[m]) / 2


def median_interval(values, confidence):
    """The narrowest order-statistic interval [v_(k), v_(n+1-k)] (1-based,
    sorted) whose coverage of the median, 1 - 2·P(Bin(n, 1/2) <= k - 1), is at
    least `confidence`, with that coverage; None when n is too small for it.
    Exact for pairs drawn independently from any continuous distribution."""
    v = sorted(values)
    n = len(v)
    best = None
    for k in range(1, n // 2 + 1):
        coverage = 1 - 2 * binomial_cdf(k - 1, n)
        if coverage >= confidence:
            best = (v[k - 1], v[n - k], coverage)
    return best


def sign_test_faster(ratios):
    """One-sided exact sign test of "new is faster" (ratios below 1): the
    probability of at least this many pairs below 1 if each pair were a
    fair coin. Ties (ratio exactly 1) are dropped."""
    below = sum(r < 1 for r in ratios)
    n = sum(r != 1 for r in ratios)
    return 1 - binomial_cdf(below - 1, n) if n else 1.0


def run(binary, workload, threads):
    out = subprocess.run(
        [binary, "bench", workload, "--threads", str(threads), "--json"],
        capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{binary}: bench failed (exit {out.returncode}): {out.stderr.strip()}")
    report = json.loads(out.stdout)
    if report.get("bit_exact") is not True:
        raise SystemExit(f"{binary}: logits not bit-exact; no time of it is comparable")
    phases = {p: sum(r["server_phases_ms"][p] for r in report["rounds"]) for p in PHASES}
    return {
        "server_ms": report["server_ms"],
        "phases": phases,
        "kernels": report.get("machine", {}).get("kernels"),
        "set": report["parameter_set"]["name"],
        "cpu": report.get("machine", {}).get("cpu"),
    }


def compare(base, new, workload, pairs, threads, confidence):
    runs = {"base": [], "new": []}
    for i in range(pairs):
        order = [("base", base), ("new", new)]
        if i % 2:
            order.reverse()
        for tag, binary in order:
            runs[tag].append(run(binary, workload, threads))
    for key in ("kernels", "set"):
        # Builds before 7a8fd29 do not report their kernels (None).
        seen = {r[key] for r in runs["base"] + runs["new"] if r[key] is not None}
        if len(seen) > 1:
            raise SystemExit(f"the builds ran different {key}: {sorted(map(str, seen))}")
    ratios = [n["server_ms"] / b["server_ms"] for b, n in zip(runs["base"], runs["new"])]
    interval = median_interval(ratios, confidence)
    return {
        "workload": workload,
        "threads": threads,
        "pairs": pairs,
        "kernels": runs["new"][0]["kernels"],
        "cpu": runs["new"][0]["cpu"],
        "set": runs["base"][0]["set"],
        "base_server_ms": [r["server_ms"] for r in runs["base"]],
        "new_server_ms": [r["server_ms"] for r in runs["new"]],
        "ratios": ratios,
        "geometric_mean_ratio": math.exp(sum(map(math.log, ratios)) / len(ratios)),
        "median_ratio": median(ratios),
        "median_ratio_interval": None if interval is None else {
            "low": interval[0], "high": interval[1], "coverage": interval[2]},
        "pairs_faster": sum(r < 1 for r in ratios),
        "sign_test_p_faster": sign_test_faster(ratios),
        "phase_medians_ms": {
            tag: {p: median([r["phases"][p] for r in runs[tag]]) for p in PHASES}
            for tag in runs},
    }


def times(ms):
    if max(ms) >= 10_000:
        return "s: " + ", ".join(f"{t / 1e3:.2f}" for t in ms)
    return "ms: " + ", ".join(f"{t:.1f}" for t in ms)


def text(c):
    lines = [
        f"{c['workload']}, {c['threads']} thread(s), set {c['set']}, kernels {c['kernels']}"
        f" ({c['cpu']}), {c['pairs']} alternating pairs",
        "  base server " + times(c["base_server_ms"]),
        "  new  server " + times(c["new_server_ms"]),
        "  new / base per pair: " + ", ".join(f"{r:.3f}" for r in c["ratios"]),
        f"  geometric mean {c['geometric_mean_ratio']:.3f}, median {c['median_ratio']:.3f}",
    ]
    ci = c["median_ratio_interval"]
    lines.append(
        f"  median ratio in [{ci['low']:.3f}, {ci['high']:.3f}] with {100 * ci['coverage']:.1f}% confidence"
        if ci else "  too few pairs for a confidence interval of the median ratio")
    lines.append(
        f"  {c['pairs_faster']} of {c['pairs']} pairs faster; sign test of \"new is faster\":"
        f" p = {c['sign_test_p_faster']:.3f}")
    for tag in ("base", "new"):
        m = c["phase_medians_ms"][tag]
        lines.append(f"  {tag:>4} phase medians ms: " + ", ".join(f"{p} {m[p]:.0f}" for p in PHASES))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--workload", default="resnet20", choices=["resnet20", "resnet18", "digits"])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.pairs < 1 or a.threads < 1 or not 0 < a.confidence < 1:
        ap.error("--pairs and --threads must be positive, --confidence in (0, 1)")
    c = compare(a.base, a.new, a.workload, a.pairs, a.threads, a.confidence)
    print(json.dumps(c, indent=1) if a.json else text(c))


if __name__ == "__main__":
    sys.exit(main())
