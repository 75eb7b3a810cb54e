//! Exact arithmetic modulo NTT-friendly primes: scalars, polynomials of
//! `Z_q[X]/(X^N+1)` and their number-theoretic transforms, and the RNS
//! product of several such primes that a ciphertext modulus may be.
//!
//! This is the crate-local seam between the protocol and the backend: nothing
//! outside `math` touches `tfhe-ntt` directly, so the transform can be swapped
//! or accelerated without changing callers.

mod goldilocks_ntt;
mod kernels;
mod modulus;
#[cfg(target_arch = "x86_64")]
mod narrow_ntt;
mod ntt;
pub mod poly;
mod rns;
pub(crate) mod slots;

/// AVX2 arithmetic modulo the Solinas prime on four lanes (reduced
/// operands and results), for kernels outside the transform.
#[cfg(target_arch = "x86_64")]
pub(crate) use goldilocks_ntt::avx2 as solinas_avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) use goldilocks_ntt::avx512 as solinas_avx512;
pub use kernels::{kernels, Kernels};
pub(crate) use modulus::{add_mod, mulhi_split, select, solinas_reduce_split, sub_mod, MulConst};
pub use modulus::{Modulus, SOLINAS};
pub(crate) use ntt::Narrow;
pub use ntt::{NttPlan, RnsNttPlan};
pub(crate) use rns::CrtComposer;
pub use rns::{RnsModulus, MAX_LIMBS};
