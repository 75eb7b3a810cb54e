#!/usr/bin/env python3
"""Noise budget of the shipped parameter sets (proofs/noise-budget.md).

Mirrors src/params/noise.rs and src/params/security.rs term by term, with the
standard library only. Reads spec/parameters.toml; prints Markdown tables.

    python3 proofs/budget_table.py

Section 1 is exactly what `NoiseBudget::derive` / `check` compute, with the
set's ℓ* (the largest the packer may choose; the bound is monotone in ℓ*) and
the γ handling: the unshuffle repack is max(4^γ·σ² + pack(γ), σ² + pack(0)),
conjugate-bearing against plain sources (packing.md, Lemma 5; noise-budget.md,
Lemma 3); the output pack uses γ = 0. Section 2
(security) repeats the two checks of security.rs, with tfhe-rs 1.8.2's
binary-key fit copied as a formula (secure_noise.rs,
minimal_lwe_variance_for_132_bits_security_tuniform_impl). Sections 3 (circuit
privacy), 4 (sensitivity), 5 (cost of ℓ*, with a mirror of
`pack::choose_shared_levels`) and 6 (γ) are derived quantities that the crate
does not compute; they are labelled as such.
"""

import math
import os
import tomllib

FAILURE_BITS = 40
HE_STANDARD_MAX_LOG_Q = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


# ---- mirror of src/params/security.rs -------------------------------------

def tuniform_variance(bound_log2):
    """Variance of TUniform(b): uniform on [-2^b, 2^b], half weight at the ends."""
    return (2.0 ** (2 * bound_log2 + 1) + 1.0) / 6.0


def tfhe_min_variance_132_tuniform(lwe_dimension, modulus):
    """tfhe-rs 1.8.2, core_crypto::commons::noise_formulas::secure_noise::
    minimal_lwe_variance_for_132_bits_security_tuniform_impl (torus units)."""
    return 2.0 ** (4.44 - 2.88539008177793 * math.log(modulus)) + (1.0 / 3.0) * modulus ** -2.0 * (
        2.0 ** (2.0 * math.ceil(-0.025167785 * lwe_dimension
                                + math.log2(math.e) * math.log(modulus) + 4.10067100000001))
        + 0.5
    )


# ---- mirror of src/params/noise.rs ----------------------------------------

def gaussian_tail_sigmas(bits):
    """k with erfc(k/sqrt 2) = 2^-bits, by bisection (as noise.rs, 200 steps)."""
    target = 2.0 ** -bits
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if math.erfc(mid / math.sqrt(2.0)) > target:
            lo = mid
        else:
            hi = mid
    return hi


def key_switch_parts(n, p, noise_bound_log2, base_log, levels):
    beta2 = 2.0 ** (2 * base_log)
    digits = n * levels * beta2 / 12.0 * tuniform_variance(noise_bound_log2) / (p * p)
    rounding = (1.0 + n / 2.0) / 12.0
    return digits, rounding


def key_switch_variance(n, p, noise_bound_log2, base_log, levels):
    d, r = key_switch_parts(n, p, noise_bound_log2, base_log, levels)
    return d + r


def pack_variance(log_n, shared_levels, conjugate_levels, key_switch, copies=None):
    """Sum over tree levels l of 4^(L-l) * copies_l * Var_KS, as noise.rs:

    copies_l = 0 for l <= conjugate_levels (client conjugates, no key switch),
    2^(3l-1) for l <= shared_levels (placement-independent Minkowski bound,
    packing.md Lemma 3(b)), 1 above. `copies` replaces the shared-level factor
    (sensitivity only; None is the code).
    """
    total = 0.0
    for l in range(1, log_n + 1):
        if l <= conjugate_levels:
            c = 0.0
        elif l <= shared_levels:
            c = copies(l) if copies is not None else 2.0 ** (3 * l - 1)
        else:
            c = 1.0
        total += 4.0 ** (log_n - l) * c * key_switch
    return total


# ---- mirror of pack::choose_shared_levels (src/pack.rs) --------------------

KEY_SWITCH_IN_ROTATIONS = 192


def _nodes_per_level(n, occupied):
    """Non-empty nodes at each level 0..L: distinct residues mod N/2^l."""
    log_n = n.bit_length() - 1
    return [len({p % (n >> l) for p, _ in occupied}) for l in range(log_n + 1)]


def shared_level_key_switches(n, occupied, shared):
    """Image key switches m·(2^ℓ−1) plus one per non-empty node above ℓ."""
    sources = len({src for _, src in occupied})
    return sources * (2 ** shared - 1) + sum(_nodes_per_level(n, occupied)[shared + 1:])


def shared_level_cost(n, occupied, shared):
    """pack.rs's cost in rotate-adds: K·2^ℓ + key switches · 192."""
    return len(occupied) * 2 ** shared + \
        shared_level_key_switches(n, occupied, shared) * KEY_SWITCH_IN_ROTATIONS


def choose_shared_levels(n, occupied, lo, hi):
    """occupied: (position, source) pairs of one output. First minimum wins,
    as Rust's Iterator::min_by_key."""
    return min(range(lo, hi + 1), key=lambda l: shared_level_cost(n, occupied, l))


def uncorrelated_copies(l):
    """The previous model: 2^(2l-1) rotated copies counted as uncorrelated."""
    return 2.0 ** (2 * l - 1)


def derive(s, pack_copies=None, linear_factor=1.0, k=None, ks_factor=1.0, gamma=None,
           shared=None):
    """NoiseBudget::derive and check. The keyword arguments are for the
    sensitivity sections only; with their defaults this is exactly noise.rs.

    gamma overrides client_conjugate_levels, shared overrides
    shared_pack_levels. The result also carries the two cases noise.rs takes
    the maximum of (repack_conjugates, repack_plain).
    """
    n = s["ring_degree"]
    log_n = n.bit_length() - 1
    q = s["ciphertext_modulus"]
    fresh = tuniform_variance(s["noise_bound_log2"])
    ks_digits, ks_round = key_switch_parts(n, s["special_modulus"], s["noise_bound_log2"],
                                           s["gadget_base_log"], s["gadget_levels"])
    ks = (ks_digits + ks_round) * ks_factor
    shared = s["shared_pack_levels"] if shared is None else shared
    g = s["client_conjugate_levels"] if gamma is None else gamma
    pack = pack_variance(log_n, shared, 0, ks, pack_copies)
    # noise.rs: conjugate-bearing sources 4^γ·σ² + pack(γ); plain sources,
    # which pack.rs accepts in every set, σ² + pack(0); the budget takes the
    # larger (equal when γ = 0).
    repack = pack_variance(log_n, shared, g, ks, pack_copies)
    repack_conjugates = 4.0 ** g * fresh + repack
    repack_plain = fresh + pack
    after_repack = max(repack_conjugates, repack_plain)
    after_linear_std = linear_factor * 2.0 ** s["max_weight_l1_log2"] * math.sqrt(after_repack)
    rerandomize = (n + 1.0) * fresh
    before_flooding = after_linear_std ** 2 + pack + rerandomize
    t = 2.0 ** s["plaintext_bits"]
    delta = float(q >> s["plaintext_bits"])
    margin = delta / 2.0 - t / 2.0 - 1.0
    k = gaussian_tail_sigmas(FAILURE_BITS) if k is None else k
    flooding = 2.0 ** s["flooding_bound_log2"]
    worst = flooding + k * math.sqrt(before_flooding)
    return dict(
        n=n, log_n=log_n, q=q, fresh=fresh, gamma=g, ks_digits=ks_digits, ks_round=ks_round,
        ks=ks, pack=pack, pack_plain=pack_variance(log_n, 0, 0, ks),
        pack_uncorrelated=pack_variance(log_n, shared, 0, ks, uncorrelated_copies),
        repack=repack, repack_conjugates=repack_conjugates, repack_plain=repack_plain,
        after_repack=after_repack, after_linear_std=after_linear_std,
        rerandomize=rerandomize, before_flooding=before_flooding, k=k, flooding=flooding,
        worst=worst, margin=margin, ok=worst < margin, delta=delta, t=t,
    )


def largest_w(s, **kw):
    """Largest max_weight_l1_log2 (<= 40, PARAM-2) for which the check passes."""
    best = None
    for w in range(0, 41):
        if derive(dict(s, max_weight_l1_log2=w), **kw)["ok"]:
            best = w
    return best


def largest_w_with_headroom(s, any_f=False):
    """Largest W (<= 40) whose check passes with flooding headroom
    F − log2(k·σ_bf) > 0: at the set's F, or (any_f) at some integer F < 64.
    Not computed by the crate; it explains the choice of W (table 4)."""
    best = None
    for w in range(0, 41):
        for f in (range(0, 64) if any_f else [s["flooding_bound_log2"]]):
            d = derive(dict(s, max_weight_l1_log2=w, flooding_bound_log2=f))
            if d["ok"] and f - lg(d["k"] * math.sqrt(d["before_flooding"])) > 0:
                best = w
                break
    return best


# ---- printing --------------------------------------------------------------

def lg(x):
    return math.log2(x)


def lgs(var):
    """log2 of the standard deviation of a variance."""
    return 0.5 * math.log2(var)


def table(header, rows, sets):
    print("| " + header + " | " + " | ".join(s["name"] for s in sets) + " |")
    print("|---|" + "---:|" * len(sets))
    for label, f in rows:
        print("| " + label + " | " + " | ".join(f(s) for s in sets) + " |")
    print()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "spec", "parameters.toml"), "rb") as fh:
        sets = tomllib.load(fh)["set"]
    for s in sets:
        # PARAM-8: an RNS modulus is the product of its limbs (exact, as the
        # crate's u128); everything below uses q as one integer.
        q = s["ciphertext_modulus"]
        if isinstance(q, list):
            s["limbs"] = len(q)
            s["ciphertext_modulus"] = math.prod(q)
        else:
            s["limbs"] = 1
        s["b"] = derive(s)

    print("## 1. Noise budget as NoiseBudget::derive computes it (log2 of std unless noted)\n")
    f2 = lambda x: f"{x:.2f}"
    kstd = lambda s: s["b"]["k"] * math.sqrt(s["b"]["before_flooding"])
    table("term", [
        ("plaintext bits b (t = 2^b)", lambda s: str(s["plaintext_bits"])),
        ("W: Σ_m ‖ŵ_{k,m}‖₁ ≤ 2^W per output ciphertext", lambda s: str(s["max_weight_l1_log2"])),
        ("gadget B × l", lambda s: f'{s["gadget_base_log"]} × {s["gadget_levels"]}'),
        ("ℓ* (shared levels), γ (conjugate levels)",
         lambda s: f'{s["shared_pack_levels"]}, {s["client_conjugate_levels"]}'),
        ("fresh σ, TUniform(b_e)", lambda s: f2(lgs(s["b"]["fresh"]))),
        ("key switch: digit part Σd·e/P", lambda s: f2(lgs(s["b"]["ks_digits"]))),
        ("key switch: rounding part", lambda s: f2(lgs(s["b"]["ks_round"]))),
        ("key switch total", lambda s: f2(lgs(s["b"]["ks"]))),
        ("pack, ℓ* = 0 (reference)", lambda s: f2(lgs(s["b"]["pack_plain"]))),
        ("pack, set's ℓ*, uncorrelated copies 2^(2ℓ−1) (reference, not used)",
         lambda s: f2(lgs(s["b"]["pack_uncorrelated"]))),
        ("pack, set's ℓ*, copies 2^(3ℓ−1) (`pack.pack`)", lambda s: f2(lgs(s["b"]["pack"]))),
        ("repack key switches, levels ≤ γ skipped", lambda s: f2(lgs(s["b"]["repack"]))),
        ("after repack max(4^γ·σ² + repack, σ² + pack)", lambda s: f2(lgs(s["b"]["after_repack"]))),
        ("after linear (2^W · std)", lambda s: f2(lg(s["b"]["after_linear_std"]))),
        ("output pack (γ = 0)", lambda s: f2(lgs(s["b"]["pack"]))),
        ("re-randomisation (N+1)σ²", lambda s: f2(lgs(s["b"]["rerandomize"]))),
        ("σ_bf, everything before flooding", lambda s: f2(lgs(s["b"]["before_flooding"]))),
        ("k (erfc(k/√2) = 2^-40), plain number", lambda s: f"{s['b']['k']:.4f}"),
        ("k · σ_bf", lambda s: f2(lg(kstd(s)))),
        ("flooding bound 2^F", lambda s: f2(lg(s["b"]["flooding"]))),
        ("worst case 2^F + k·σ_bf", lambda s: f"{lg(s['b']['worst']):.6f}"),
        ("margin Δ/2 − t/2 − 1", lambda s: f"{lg(s['b']['margin']):.6f}"),
        ("check passes", lambda s: "yes" if s["b"]["ok"] else "**no**"),
        ("slack: log2((margin − 2^F)/(k·σ_bf))",
         lambda s: f2(lg((s["b"]["margin"] - s["b"]["flooding"]) / kstd(s)))),
        ("flooding headroom F − log2(k·σ_bf)",
         lambda s: f2(s["flooding_bound_log2"] - lg(kstd(s)))),
    ], sets)

    print("## 2. Security checks of security.rs\n")
    table("quantity", [
        ("log2(P·q)", lambda s: f"{lg(s['ciphertext_modulus']) + lg(s['special_modulus']):.3f}"),
        ("HE-standard bound for N", lambda s: str(HE_STANDARD_MAX_LOG_Q[s["ring_degree"]])),
        ("tfhe-rs fit: min variance (integer units)", lambda s: f"{tfhe_min_variance_132_tuniform(s['ring_degree'], float(s['ciphertext_modulus']) * s['special_modulus']) * (float(s['ciphertext_modulus']) * s['special_modulus']) ** 2:.2f}"),
        ("fit's bound term ⌈−0.02517·N + log2(Pq) + 4.10⌉", lambda s: str(math.ceil(-0.025167785 * s["ring_degree"] + lg(float(s["ciphertext_modulus"]) * s["special_modulus"]) + 4.10067100000001))),
        ("TUniform variance used", lambda s: f"{tuniform_variance(s['noise_bound_log2']):.2f}"),
    ], sets)

    print("## 3. Gaussian flooding as circuit privacy (ParameterSet::flooding_rho_per_ciphertext, circuit_privacy_log2)\n")
    n_log = lambda s: s["b"]["log_n"]
    k64 = gaussian_tail_sigmas(64)
    sigma_f = lambda s: 2.0 ** (s["flooding_bound_log2"] - 3)
    b64 = lambda s: k64 * math.sqrt(s["b"]["before_flooding"])
    rho_ct = lambda s: s["b"]["n"] * (2.0 * b64(s)) ** 2 / (2.0 * sigma_f(s) ** 2)
    # PARAM-9: flooding beyond σ = 2^57 is two samples, N·2^-127 more.
    wide = lambda s: s["b"]["n"] * 2.0 ** -127 if s["flooding_bound_log2"] - 3 > 57 else 0.0
    sd_ct = lambda s: math.sqrt(rho_ct(s) / 2.0) + s["b"]["n"] * 2.0 ** -64 + wide(s)
    table("quantity (log2 unless noted)", [
        ("k_64 (erfc(k/√2) = 2^-64), plain number", lambda s: f"{k64:.4f}"),
        ("σ_f = 2^(F−3)", lambda s: str(s["flooding_bound_log2"] - 3)),
        ("B = k_64 · σ_bf", lambda s: f2(lg(b64(s)))),
        ("ρ per coefficient: (2B)²/(2σ_f²)", lambda s: f2(lg(rho_ct(s)) - n_log(s))),
        ("ρ per ciphertext: N·(2B)²/(2σ_f²)", lambda s: f2(lg(rho_ct(s)))),
        ("statistical distance per ciphertext: √(ρ/2) + N·2^-64 (+ N·2^-127, PARAM-9)", lambda s: f2(lg(sd_ct(s)))),
        ("F needed for ρ ≤ 2^-40 per ciphertext", lambda s: f2(s["flooding_bound_log2"] + (lg(rho_ct(s)) + 40) / 2)),
    ], sets)

    print("## 4. Sensitivity of the check (not computed by the crate)\n")
    hoeffding_k = math.sqrt(2.0 * math.log(2.0 ** (FAILURE_BITS + 1))) * math.sqrt(3.0)
    heavy_key = lambda s: (1.0 + (s["ring_degree"] / 2 + 2 * math.sqrt(s["ring_degree"]))) / (1.0 + s["ring_degree"] / 2)
    rows = []
    for label, kw in [
        ("the crate's model", {}),
        ("uncorrelated copies 2^(2ℓ−1) (previous model; fits random placements only)",
         dict(pack_copies=uncorrelated_copies)),
        (f"rigorous (Hoeffding) tail, k = {hoeffding_k:.2f} instead of 7.14", dict(k=hoeffding_k)),
        ("key weight h = N/2 + 4·√N/2 (4σ of a uniform binary key): Var_KS × 1.06",
         None),
    ]:
        def fmt(s, kw=kw):
            kw = kw if kw is not None else dict(ks_factor=heavy_key(s))
            d = derive(s, **kw)
            slack = lg((d["margin"] - d["flooding"]) / (d["k"] * math.sqrt(d["before_flooding"]))) \
                if d["margin"] > d["flooding"] else float("-inf")
            return f"{lgs(d['before_flooding']):.2f} / {slack:.2f} / {'yes' if d['ok'] else '**no**'}"
        rows.append((label + ": log2 σ_bf / slack / passes", fmt))
    rows.append(("largest W the check admits (crate's model)", lambda s: str(largest_w(s))))
    rows.append((f"largest W with the Hoeffding tail", lambda s: str(largest_w(s, k=hoeffding_k))))
    rows.append(("largest W with flooding headroom > 0 at the set's F",
                 lambda s: str(largest_w_with_headroom(s))))
    rows.append(("largest W with flooding headroom > 0 at any integer F",
                 lambda s: str(largest_w_with_headroom(s, any_f=True))))
    table("variant", rows, sets)

    print("## 5. Choice of ℓ*: one output, K = N values from m = 1 source (set b8)\n")
    s = sets[0]
    n = s["ring_degree"]
    log_n = n.bit_length() - 1
    ks = s["b"]["ks"]
    print("| ℓ* | key switches m·(2^ℓ*−1) + N/2^ℓ* − 1 | monomial rotations K·2^ℓ* | "
          f"cost in rotations at c = KS/rotation = {KEY_SWITCH_IN_ROTATIONS} (pack.rs) | "
          "cost in key switches at c = 64 / 256 / 1024 | "
          "pack std (log2), code's bound 2^(3ℓ−1) | pack std (log2), uncorrelated 2^(2ℓ−1) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for l_star in range(0, 8):
        kss = (2 ** l_star - 1) + n // 2 ** l_star - 1
        rot = n * 2 ** l_star
        print(f"| {l_star} | {kss} | {rot} | {rot + kss * KEY_SWITCH_IN_ROTATIONS} | "
              f"{kss + rot / 64:.0f} / {kss + rot / 256:.0f} / {kss + rot / 1024:.0f} | "
              f"{lgs(pack_variance(log_n, l_star, 0, ks)):.2f} | "
              f"{lgs(pack_variance(log_n, l_star, 0, ks, uncorrelated_copies)):.2f} |")
    print()

    print("### 5b. The packer's per-output choice (mirror of pack::choose_shared_levels, N = 4096)\n")
    print(f"cost(ℓ) = K·2^ℓ + (m·(2^ℓ − 1) + Σ_(levels > ℓ) non-empty nodes)·{KEY_SWITCH_IN_ROTATIONS}, "
          "minimised over γ..=ℓ*_max (first minimum on ties). Engine output packs put k < N "
          "values at stride N/2^⌈log2 k⌉.\n")
    examples = [
        ("dense, K = N, 1 source", [(p, 0) for p in range(n)]),
        ("dense, K = N, 2 sources", [(p, p % 2) for p in range(n)]),
        ("512 values at positions 0..511, 1 source", [(p, 0) for p in range(512)]),
        ("2048 values at positions 0..2047, 1 source", [(p, 0) for p in range(2048)]),
        ("engine output pack, 512 values, stride 8, 1 source", [(8 * p, 0) for p in range(512)]),
        ("engine output pack, 10 values, stride 256, 1 source", [(256 * p, 0) for p in range(10)]),
    ]
    print("| placement | ℓ* chosen (max 4) | ℓ* chosen (max 5) | cost at ℓ* = 3 / 4 / 5 / 6 | "
          "key switches at the chosen ℓ* (max 5) |")
    print("|---|---:|---:|---|---:|")
    for name, occ in examples:
        c4 = choose_shared_levels(n, occ, 0, 4)
        c5 = choose_shared_levels(n, occ, 0, 5)
        costs = " / ".join(str(shared_level_cost(n, occ, l)) for l in (3, 4, 5, 6))
        print(f"| {name} | {c4} | {c5} | {costs} | {shared_level_key_switches(n, occ, c5)} |")
    print()

    print("## 6. Client conjugates: γ = 0..ℓ* on each set (not shipped; γ = 0 everywhere)\n")
    print("log2 std after the unshuffle repack: conjugate-bearing sources 4^γ·σ² + pack(γ) / "
          "plain sources σ² + pack(0) / what noise.rs uses, the maximum; then the largest W the "
          "check admits. The key-switch part is the same for every set.\n")
    rows = []
    for g in range(0, max(s["shared_pack_levels"] for s in sets) + 1):
        def fmt(s, g=g):
            if g > s["shared_pack_levels"]:
                return "—"
            d = derive(s, gamma=g)
            return (f"{lgs(d['repack_conjugates']):.3f} / {lgs(d['repack_plain']):.3f} / "
                    f"{lgs(d['after_repack']):.3f}; W ≤ {largest_w(s, gamma=g)}")
        rows.append((f"γ = {g}", fmt))
    rows.append(("mixed call (noise-budget.md, Lemma 3(iii)): log2 of 2^(2L−1)·Var_KS / (2^ℓ*·σ²), "
                 "must be ≥ 0", lambda s: f2(lg(2.0 ** (2 * s["b"]["log_n"] - 1) * s["b"]["ks"]
                                             / (2.0 ** s["shared_pack_levels"] * s["b"]["fresh"])))))
    table("γ", rows, sets)


if __name__ == "__main__":
    main()
