//! PRIV-1: without sanitisation a server response reveals the weights to the
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
