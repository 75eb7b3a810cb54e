//! PRIV-1, THREAT-1: without sanitisation a server response reveals the weights to the
//! key holder with no chosen input at all; re-randomisation removes that.
//!
//! The attack: the client knows its mask `a` (it derived it from the seed
//! it sent). A response to one plaintext product has mask `w·a`; dividing
//! by `a` in the NTT domain returns `w` exactly.

mod common;

use common::{fixture, random_values};
use safhire::math::NttPlan;
use safhire::rlwe::{Ciphertext, Context};
use safhire::rng::Csprng;

/// The client's attack: w = mask(response) / mask(query).
fn recover_weights(ctx: &Context, query: &Ciphertext, response: &Ciphertext) -> Option<Vec<i64>> {
    let q = ctx.q().limb(0); // single-limb set
    let plan = NttPlan::new(ctx.n(), q.value())?;
    let mut a = query.parts().0.to_vec();
    let mut r = response.parts().0.to_vec();
    plan.forward(&mut a);
    plan.forward(&mut r);
    for (ri, &ai) in r.iter_mut().zip(&a) {
        *ri = q.mul(*ri, q.inv(ai)?);
    }
    plan.backward(&mut r);
    Some(r.iter().map(|&x| q.centered(x)).collect())
}

#[test]
fn unsanitised_response_leaks_weights_sanitised_does_not() {
    let f = fixture("b8");
    let ctx = &f.ctx;
    let mut rng = Csprng::from_seed([3; 16]);
    let x = random_values(ctx, &mut rng, ctx.n());
    let query = ctx.encrypt(&f.sk, &x, &mut rng);
    let w: Vec<i64> = (0..ctx.n())
        .map(|i| if i < 9 { (i as i64 % 5) - 2 } else { 0 })
        .collect();

    let mut acc = ctx.ntt_zero();
    ctx.mul_plain_accumulate(&mut acc, &ctx.to_ntt(&query), &ctx.plaintext_ntt(&w));
    let response = ctx.from_ntt(acc);
    assert_eq!(
        recover_weights(ctx, &query, &response).unwrap(),
        w,
        "the attack works on raw responses"
    );

    let mut sanitised = response.clone();
    let mut server_rng = Csprng::from_os();
    ctx.rerandomize(&mut sanitised, &f.pk, &mut server_rng);
    ctx.flood(&mut sanitised, &mut server_rng);
    let recovered = recover_weights(ctx, &query, &sanitised).unwrap();
    assert_ne!(recovered, w);
    // Not even close: the recovered "weights" are spread over the whole ring.
    let large = recovered
        .iter()
        .filter(|&&v| v.unsigned_abs() > 1 << 40)
        .count();
    assert!(large > ctx.n() / 2, "only {large} large coefficients");
    // And the sanitised response still decrypts to the product.
    assert_eq!(
        ctx.decrypt(&f.sk, &sanitised),
        ctx.decrypt(&f.sk, &response)
    );
}

/// The noise channel (THREAT-1): a client that puts a spike of 2^30 into
/// the error of its upload (a malformed upload: its error is no longer
/// small) finds 2^30·w in the noise of the response, next to the server's
/// small re-randomisation noise, and reads w off it by rounding. Masks play
/// no part, so re-randomisation alone does not stop it; flooding with
/// 2^F ≫ 2^30·‖w‖∞ does, here F = 54 against 2^30·2 = 2^31. (A client free
/// to push the spike up to the decryption limit defeats any flooding that
/// still decrypts: bounded upload errors are an assumption of the threat
/// model, spec/threat-model.md.)
#[test]
fn flooding_hides_the_weights_in_the_noise_channel() {
    let f = fixture("b8");
    let ctx = &f.ctx;
    let q = ctx.q().limb(0); // single-limb set
    let mut rng = Csprng::from_seed([4; 16]);
    let x = random_values(ctx, &mut rng, ctx.n());
    let honest = ctx.encrypt(&f.sk, &x, &mut rng);
    // The spike: 2^30 added to coefficient 0 of the body.
    const SPIKE_LOG2: u32 = 30;
    let (a, b) = honest.parts();
    let mut b = b.to_vec();
    b[0] = q.add(b[0], 1 << SPIKE_LOG2);
    let query = Ciphertext::from_parts(a.to_vec(), b, ctx.n(), q).unwrap();
    let w: Vec<i64> = (0..ctx.n())
        .map(|i| if i < 9 { (i as i64 % 5) - 2 } else { 0 })
        .collect();
    let mut acc = ctx.ntt_zero();
    ctx.mul_plain_accumulate(&mut acc, &ctx.to_ntt(&query), &ctx.plaintext_ntt(&w));
    let response = ctx.from_ntt(acc);

    // The client's reading: noise = phase − Δ·(decrypted values), divided
    // by the spike and rounded. The negacyclic product puts w_k at
    // coefficient k of spike·w.
    let read = |ct: &Ciphertext| -> Vec<i64> {
        let values = ctx.decrypt(&f.sk, ct);
        ctx.noise(&f.sk, ct, &values)
            .iter()
            .map(|&e| (e as f64 / (1u64 << SPIKE_LOG2) as f64).round() as i64)
            .collect()
    };
    let mut server_rng = Csprng::from_os();
    let mut rerandomised = response.clone();
    ctx.rerandomize(&mut rerandomised, &f.pk, &mut server_rng);
    assert_eq!(
        read(&rerandomised),
        w,
        "re-randomisation alone leaves the noise channel open"
    );

    let mut flooded = rerandomised.clone();
    ctx.flood(&mut flooded, &mut server_rng);
    let seen = read(&flooded);
    // Each coefficient now reads w_k + G/2^30 with G ~ N_Z(0, σ_f²), σ_f =
    // 2^51 (PRIV-2): std 2^21 after the division, so an exact hit has
    // probability ≤ 1/(√(2π)·2^21) ≈ 2^-22.3 per coefficient, and more than
    // 2 hits among 4096 happens with probability ≤ C(4096, 3)·2^-66.9 < 2^-33.
    let hits = seen.iter().zip(&w).filter(|(a, b)| a == b).count();
    assert!(hits <= 2, "{hits} of {} coefficients read exactly", ctx.n());
    // Both still decrypt to the product.
    assert_eq!(ctx.decrypt(&f.sk, &flooded), ctx.decrypt(&f.sk, &response));
}

/// PRIV-2: the flooding is the discrete Gaussian N_Z(0, σ_f²) with σ_f =
/// 2^(F−3), not the uniform noise of the same bound. 4096 coefficients of
/// one flooded encryption of zero (fresh noise ≤ 2^4, negligible):
/// * the sample variance is within 15% of σ_f² (its standard error is
///   σ_f²·√(2/4096) ≈ 2.2%: a false failure needs a 6.8-sd deviation,
///   4.2e-11 from the χ²(4095) tails);
/// * the kurtosis is within 0.5 of a Gaussian's 3 (standard error
///   √(24/4096) ≈ 0.077, but the sample kurtosis is skewed right: above
///   3.5 with probability 4.7e-8 by Anscombe and Glynn's approximation,
///   which matches a simulation at 1e-3 and 1e-4; below 2.5, 6e-19); uniform
///   noise has 1.8 and fails. Both sets: ≈ 1e-7 per run;
/// * no coefficient reaches the bound 2^F = 8σ_f (P ≤ 4096·2^-49.5 < 2^-37).
#[test]
fn flooding_is_the_discrete_gaussian_of_the_set() {
    for name in ["b8", "b16"] {
        let f = fixture(name);
        let ctx = &f.ctx;
        let mut rng = Csprng::from_seed([9; 16]);
        let zeros = vec![0i64; ctx.n()];
        let mut ct = ctx.encrypt(&f.sk, &zeros, &mut rng);
        ctx.flood(&mut ct, &mut Csprng::from_os());
        let values = ctx.decrypt(&f.sk, &ct);
        assert_eq!(values, zeros, "{name}: flooding must keep decryption exact");
        let noise: Vec<f64> = ctx
            .noise(&f.sk, &ct, &values)
            .iter()
            .map(|&e| e as f64)
            .collect();
        let sigma = (2f64).powi(ctx.params().flooding_sigma_log2() as i32);
        let n = noise.len() as f64;
        let mean = noise.iter().sum::<f64>() / n;
        let var = noise.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let kurtosis = noise.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n / (var * var);
        assert!(
            (var / (sigma * sigma) - 1.0).abs() < 0.15,
            "{name}: variance {:.3}·σ_f²",
            var / (sigma * sigma)
        );
        assert!(
            (kurtosis - 3.0).abs() < 0.5,
            "{name}: kurtosis {kurtosis:.2}"
        );
        let bound = (2f64).powi(ctx.params().flooding_bound_log2() as i32);
        assert!(noise.iter().all(|x| x.abs() < bound), "{name}");
    }
}

/// PRIV-3: the model's circuit-privacy account. ρ of one session is the sum
/// over its stages of (response ciphertexts × ρ at the stage's own noise);
/// it composes linearly over the budget; ε is the accountant's at δ = 2^-41
/// and δ adds N·2^-64 per returned ciphertext. A stage's own ‖ŵ‖₁ is at most
/// the set's limit, so the model's ρ is at most the set's per-ciphertext ρ
/// times the ciphertexts it returns.
#[test]
fn model_circuit_privacy_composes_over_stages_and_sessions() {
    use safhire::dp::{Accountant, Verdict};
    use safhire::engine;
    use safhire::params::{CIRCUIT_PRIVACY_DELTA, PRIVACY_TAIL_BITS};
    use safhire::protocol::client_steps::response_ciphertexts;
    let model =
        safhire::model::Model::from_json(include_str!("../models/digits-cnn.json")).unwrap();
    for name in ["b16", "b24"] {
        let f = fixture(name);
        let p = f.ctx.params();
        let compiled = engine::compile(&f.ctx, &model).unwrap();
        let (mut rho, mut cts) = (0.0, 0usize);
        for s in compiled.stages() {
            let c = response_ciphertexts(f.ctx.n(), s.output_len());
            assert!(s.noise_l1() <= 1u128 << p.max_weight_l1_log2());
            rho += c as f64 * p.flooding_rho_at(p.budget().before_flooding_at(s.noise_l1() as f64));
            cts += c;
        }
        assert!(rho <= cts as f64 * p.flooding_rho_per_ciphertext() * (1.0 + 1e-12));
        let one = compiled.circuit_privacy(p, 1);
        assert!((one.rho / rho - 1.0).abs() < 1e-12, "{name}");
        let eight = compiled.circuit_privacy(p, 8);
        assert!((eight.rho / (8.0 * rho) - 1.0).abs() < 1e-12, "{name}");
        let want = Accountant::from_rho(8.0 * rho).epsilon(CIRCUIT_PRIVACY_DELTA);
        assert_eq!(eight.epsilon, want);
        let tail = (8 * cts) as f64 * f.ctx.n() as f64 * (2f64).powi(-(PRIVACY_TAIL_BITS as i32));
        assert!((eight.delta - (CIRCUIT_PRIVACY_DELTA + tail)).abs() < 1e-25);
        assert!(eight.epsilon > one.epsilon);
        // Less flooding headroom, less privacy: b24's 2^38 against b16's 2^46.
        if name == "b24" {
            assert_eq!(eight.verdict, Verdict::NoMeaningfulProtection);
        }
    }
}
