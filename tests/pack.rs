//! PACK-1, PACK-2 (every ℓ* from 0 to the set's value): pack(select(extract(ct), order)) decrypts to exactly the selected
//! values, in that order, for any selection size, order and source count.

mod common;

use common::{fixture, random_values};
use proptest::prelude::*;
use safhire::extract::ValueRef;
use safhire::pack::{PackError, PackSource, Packer, Placement};
use safhire::rng::Csprng;

fn check_pack(sources: usize, k: usize, seed: u64, shared: Option<u32>) {
    let f = fixture("b8");
    let (ctx, sk) = (&f.ctx, &f.sk);
    let n = ctx.n();
    let mut rng = Csprng::from_seed([seed as u8; 16]);
    let plain: Vec<Vec<i64>> = (0..sources)
        .map(|_| random_values(ctx, &mut rng, n))
        .collect();
    let cts: Vec<_> = plain.iter().map(|v| ctx.encrypt(sk, v, &mut rng)).collect();
    // A random selection of k distinct values, in random order.
    let mut all: Vec<ValueRef> = (0..sources)
        .flat_map(|s| (0..n).map(move |i| ValueRef::new(s, i)))
        .collect();
    for i in (1..all.len()).rev() {
        let j = rng.uniform_below(i as u64 + 1) as usize;
        all.swap(i, j);
    }
    let order = &all[..k];
    let srcs: Vec<PackSource> = cts.iter().map(PackSource::plain).collect();
    let mut packer = Packer::new(ctx, &f.galois);
    if let Some(l) = shared {
        packer = packer.with_shared_levels(l).unwrap();
    }
    let packed = packer.pack_dense(&srcs, order).unwrap();
    assert_eq!(packed.len(), k.div_ceil(n));
    for (o, ct) in packed.iter().enumerate() {
        let got = ctx.decrypt(sk, ct);
        for (p, &value) in got.iter().enumerate() {
            let expect = order
                .get(o * n + p)
                .map(|v| plain[v.source as usize][v.coeff as usize])
                .unwrap_or(0);
            assert_eq!(value, expect, "output {o} position {p}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]
    #[test]
    fn pack_select_extract_round_trips(
        sources in 1usize..4,
        frac in 0.0f64..1.0,
        seed in any::<u64>(),
        shared in prop_oneof![Just(None), (0u32..=5).prop_map(Some)],
    ) {
        let k = 1 + (frac * (sources * 4096 - 1) as f64) as usize;
        check_pack(sources, k.min(sources * 4096), seed, shared);
    }
}

#[test]
fn packs_a_single_value() {
    check_pack(1, 1, 1, None);
}

#[test]
fn packs_a_full_ciphertext_in_reverse() {
    check_pack(1, 4096, 2, Some(0));
    check_pack(1, 4096, 3, None);
}

#[test]
fn packs_across_outputs() {
    check_pack(3, 4096 + 17, 4, None);
}

// PACK-3
#[test]
fn bad_requests_are_refused_without_panicking() {
    let f = fixture("b8");
    let ctx = &f.ctx;
    let mut rng = Csprng::from_seed([5; 16]);
    let ct = ctx.encrypt(&f.sk, &[1, 2, 3], &mut rng);
    let srcs = [PackSource::plain(&ct)];
    let packer = Packer::new(ctx, &f.galois);
    let at = |source, coeff, position| Placement {
        value: ValueRef::new(source, coeff),
        output: 0,
        position,
    };
    assert!(matches!(
        packer.pack(&srcs, &[at(1, 0, 0)]),
        Err(PackError::NoSuchSource { .. })
    ));
    assert!(matches!(
        packer.pack(&srcs, &[at(0, 4096, 0)]),
        Err(PackError::NoSuchCoefficient { .. })
    ));
    assert!(matches!(
        packer.pack(&srcs, &[at(0, 0, 4096)]),
        Err(PackError::PositionOutOfRange { .. })
    ));
    assert!(matches!(
        packer.pack(&srcs, &[at(0, 0, 5), at(0, 1, 5)]),
        Err(PackError::PositionTaken { .. })
    ));
    assert!(matches!(
        Packer::new(ctx, &f.galois).with_shared_levels(ctx.params().shared_pack_levels() + 1),
        Err(PackError::SharedLevelsOverBudget { .. })
    ));
}

#[test]
fn packs_into_arbitrary_positions_leaving_zeros() {
    let f = fixture("b8");
    let ctx = &f.ctx;
    let mut rng = Csprng::from_seed([6; 16]);
    let vals = random_values(ctx, &mut rng, 4096);
    let ct = ctx.encrypt(&f.sk, &vals, &mut rng);
    let placements: Vec<Placement> = (0..100)
        .map(|k| Placement {
            value: ValueRef::new(0, 7 * k),
            output: 1,
            position: 4095 - 3 * k,
        })
        .collect();
    let out = Packer::new(ctx, &f.galois)
        .pack(&[PackSource::plain(&ct)], &placements)
        .unwrap();
    assert_eq!(out.len(), 2);
    assert!(ctx.decrypt(&f.sk, &out[0]).iter().all(|&x| x == 0));
    let got = ctx.decrypt(&f.sk, &out[1]);
    for k in 0..100 {
        assert_eq!(got[4095 - 3 * k], vals[7 * k]);
    }
    let filled: std::collections::HashSet<usize> = (0..100).map(|k| 4095 - 3 * k).collect();
    assert!((0..4096)
        .filter(|p| !filled.contains(p))
        .all(|p| got[p] == 0));
}

// PACK-4
#[test]
fn client_conjugates_replace_the_lowest_levels() {
    // γ = 2 on a set that allows it: conjugate-bearing sources decode exactly.
    use safhire::params::ParameterSet;
    use safhire::rlwe::{Context, GaloisKeys, SecretKey};
    let mut spec = ParameterSet::shipped("b8").unwrap().spec().clone();
    spec.client_conjugate_levels = 2;
    let ctx = Context::new(ParameterSet::new(spec).unwrap());
    let mut rng = Csprng::from_seed([8; 16]);
    let sk = SecretKey::generate(&ctx, &mut rng);
    let keys =
        GaloisKeys::from_seeded(&ctx, &GaloisKeys::generate_seeded(&ctx, &sk, &mut rng)).unwrap();
    let vals = random_values(&ctx, &mut rng, 4096);
    let (base, conj) = ctx.encrypt_with_conjugates(&sk, &vals, 2, &mut rng);
    let base = base.expand(ctx.q());
    let conj: Vec<_> = conj.iter().map(|c| c.expand(ctx.q())).collect();
    assert_eq!(conj.len(), 3);
    let order: Vec<ValueRef> = (0..4096).rev().map(|i| ValueRef::new(0, i)).collect();
    let src = [PackSource {
        ciphertext: &base,
        conjugates: &conj,
    }];
    let packed = Packer::new(&ctx, &keys).pack_dense(&src, &order).unwrap();
    let expect: Vec<i64> = vals.iter().rev().copied().collect();
    assert_eq!(ctx.decrypt(&sk, &packed[0]), expect);
    // Too few conjugates, or fewer shared levels than γ, are refused.
    let short = [PackSource {
        ciphertext: &base,
        conjugates: &conj[..2],
    }];
    assert!(matches!(
        Packer::new(&ctx, &keys).pack_dense(&short, &order),
        Err(PackError::ConjugateCount { .. })
    ));
    let low = Packer::new(&ctx, &keys).with_shared_levels(1).unwrap();
    assert!(matches!(
        low.pack_dense(&src, &order),
        Err(PackError::ConjugatesNeedSharedLevels { .. })
    ));
}

// PACK-5
#[test]
fn sums_of_values_from_different_sources_pack_exactly() {
    use safhire::pack::SumPlacement;
    let f = fixture("b8");
    let ctx = &f.ctx;
    let mut rng = Csprng::from_seed([9; 16]);
    let a = random_values(ctx, &mut rng, 4096)
        .iter()
        .map(|v| v / 2)
        .collect::<Vec<_>>();
    let b = random_values(ctx, &mut rng, 4096)
        .iter()
        .map(|v| v / 2)
        .collect::<Vec<_>>();
    let (ca, cb) = (
        ctx.encrypt(&f.sk, &a, &mut rng),
        ctx.encrypt(&f.sk, &b, &mut rng),
    );
    let srcs = [PackSource::plain(&ca), PackSource::plain(&cb)];
    let placements: Vec<SumPlacement> = (0..4096)
        .map(|k| SumPlacement {
            values: vec![ValueRef::new(0, k), ValueRef::new(1, 4095 - k)],
            output: 0,
            position: k,
        })
        .collect();
    let out = Packer::new(ctx, &f.galois)
        .pack_sums(&srcs, &placements)
        .unwrap();
    let got = ctx.decrypt(&f.sk, &out[0]);
    for k in 0..4096 {
        assert_eq!(got[k], a[k] + b[4095 - k]);
    }
    let empty = [SumPlacement {
        values: vec![],
        output: 0,
        position: 0,
    }];
    assert!(matches!(
        Packer::new(ctx, &f.galois).pack_sums(&srcs, &empty),
        Err(PackError::EmptySum { .. })
    ));
}
