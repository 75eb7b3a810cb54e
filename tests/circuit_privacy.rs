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
    let q = ctx.q();
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
    let q = ctx.q();
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
    // Each coefficient now reads w_k + U with U uniform over about ±2^24:
    // an exact hit has probability ≈ 2^-25 per coefficient, so more than 2
    // hits among 4096 happens with probability < 2^-45.
    let hits = seen.iter().zip(&w).filter(|(a, b)| a == b).count();
    assert!(hits <= 2, "{hits} of {} coefficients read exactly", ctx.n());
    // Both still decrypt to the product.
    assert_eq!(ctx.decrypt(&f.sk, &flooded), ctx.decrypt(&f.sk, &response));
}
