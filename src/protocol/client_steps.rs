//! The client's steps of a round, in plaintext and under its secret key:
//! encrypting an upload, reading a response, applying the element-wise
//! [`ClientOp`]s. [`Client`](super::Client) takes every round through them;
//! the engine's in-process harness ([`crate::engine::run`]) and the audit
//! use the same functions, so every path reads a response the same way.
//!
//! The response's layout (how many ciphertexts, which coefficients) is
//! defined here, where it is read; the server's round
//! ([`crate::engine::RoundEvaluator`]) packs to it.

use crate::engine::ClientOp;
use crate::rlwe::{Ciphertext, Context, SecretKey, SeededCiphertext};
use crate::rng::Csprng;

/// Coefficient stride of a shuffle-pack of `k` values: 1 when they fill
/// whole ciphertexts, else N over the next power of two ≥ k.
pub(crate) fn output_stride(n: usize, k: usize) -> usize {
    if k >= n || k == 0 {
        1
    } else {
        n / k.next_power_of_two()
    }
}

/// The client's upload for one round: its values in chunks of N, seeded.
pub fn client_encrypt(
    ctx: &Context,
    sk: &SecretKey,
    values: &[i64],
    rng: &mut Csprng,
) -> Vec<SeededCiphertext> {
    values
        .chunks(ctx.n())
        .map(|c| ctx.encrypt_seeded(sk, c, rng))
        .collect()
}

/// Number of ciphertexts that carry `count` values in a response.
pub fn response_ciphertexts(n: usize, count: usize) -> usize {
    count.div_ceil(n).max(1)
}

/// The client's reading of a response: the `count` values, in slot order.
pub fn client_values(
    ctx: &Context,
    sk: &SecretKey,
    responses: &[Ciphertext],
    count: usize,
) -> Vec<i64> {
    let stride = output_stride(ctx.n(), count);
    let mut values = Vec::with_capacity(count);
    for ct in responses {
        values.extend(ctx.decrypt(sk, ct).into_iter().step_by(stride));
    }
    values.truncate(count);
    values
}

/// Applies a client step list to every value (it commutes with σ_r).
pub fn apply_client_ops(ops: &[ClientOp], values: &mut [i64]) {
    for v in values.iter_mut() {
        *v = ops.iter().fold(*v, |acc, op| op.apply(acc));
    }
}
