//! Cryptographic randomness (KEY-1): AES-CTR (`tfhe-csprng`, AES-NI where present)
//! seeded from the operating system.
//!
//! Two kinds of generator are used and never mixed:
//! * secret generators (keys, noise, flooding), seeded from the OS;
//! * public generators (ciphertext masks of seeded ciphertexts), seeded by a
//!   16-byte seed that travels on the wire, so the peer can re-expand them.

use tfhe_csprng::generators::{DefaultRandomGenerator, RandomGenerator};
use tfhe_csprng::seeders::Seed;

/// A 128-bit seed. Public when it seeds a mask, secret otherwise.
pub type Seed128 = [u8; 16];

/// An AES-CTR generator with the samplers the scheme needs.
pub struct Csprng {
    inner: DefaultRandomGenerator,
}

// THREAT-2: the generator's state is secret; print nothing of it.
impl std::fmt::Debug for Csprng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Csprng(..)")
    }
}

/// Fresh 128 bits from the operating system (`getrandom`).
pub fn os_seed() -> Seed128 {
    use tfhe_csprng::seeders::{Seeder, UnixSeeder};
    UnixSeeder::new(0).seed().0.to_le_bytes()
}

impl Csprng {
    /// A deterministic generator: the same seed gives the same stream. Used
    /// to expand public masks from a seed on the wire, and for reproducible
    /// tests; a secret generator must come from [`Csprng::from_os`].
    pub fn from_seed(seed: Seed128) -> Self {
        Self {
            inner: DefaultRandomGenerator::new(Seed(u128::from_le_bytes(seed))),
        }
    }

    /// A generator for secret material.
    pub fn from_os() -> Self {
        Self::from_seed(os_seed())
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill_bytes(&mut self, out: &mut [u8]) {
        for b in out.iter_mut() {
            // An AES-CTR stream is bounded at 2^132 bytes: unreachable.
            *b = self.inner.next_byte().unwrap_or(0);
        }
    }

    /// The next 8 bytes of the stream, little-endian: uniform on `u64`.
    pub fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    /// Draws a fresh 128-bit seed from this stream, e.g. for the mask of a
    /// seeded ciphertext or key, which then travels on the wire in public.
    pub fn seed(&mut self) -> Seed128 {
        let mut s = [0u8; 16];
        self.fill_bytes(&mut s);
        s
    }

    /// Uniform in `[0, q)` by rejection (no modulo bias).
    pub fn uniform_below(&mut self, q: u64) -> u64 {
        debug_assert!(q > 0);
        // Largest multiple of q that fits; values at or above it are redrawn.
        let zone = u64::MAX - (u64::MAX % q + 1) % q;
        loop {
            let x = self.next_u64();
            if x <= zone {
                return x % q;
            }
        }
    }

    /// Fills `out` with independent uniform values in `[0, q)` (see
    /// [`Csprng::uniform_below`]); `q` must be positive.
    pub fn fill_uniform(&mut self, out: &mut [u64], q: u64) {
        for o in out.iter_mut() {
            *o = self.uniform_below(q);
        }
    }

    /// One sample of TUniform(b): uniform on `[−2^b, 2^b]` with half weight
    /// on the two end points (variance `(2^(2b+1)+1)/6`), as tfhe-rs defines it.
    pub fn tuniform(&mut self, bound_log2: u32) -> i64 {
        debug_assert!(bound_log2 <= 60);
        let r = self.next_u64() & ((1u64 << (bound_log2 + 2)) - 1);
        ((r >> 1) + (r & 1)) as i64 - (1i64 << bound_log2)
    }

    /// Binary secret-key coefficient.
    pub fn bit(&mut self) -> u64 {
        let mut b = [0u8; 1];
        self.fill_bytes(&mut b);
        (b[0] & 1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        let mut a = Csprng::from_seed([7; 16]);
        let mut b = Csprng::from_seed([7; 16]);
        let mut c = Csprng::from_seed([8; 16]);
        let (x, y, z) = (a.next_u64(), b.next_u64(), c.next_u64());
        assert_eq!(x, y);
        assert_ne!(x, z);
    }

    #[test]
    fn tuniform_stays_in_bounds_and_hits_both_ends() {
        let mut g = Csprng::from_seed([1; 16]);
        let samples: Vec<i64> = (0..20_000).map(|_| g.tuniform(2)).collect();
        assert!(samples.iter().all(|&x| (-4..=4).contains(&x)));
        assert!(samples.contains(&-4) && samples.contains(&4));
    }

    #[test]
    fn uniform_below_stays_below() {
        let mut g = Csprng::from_seed([2; 16]);
        for q in [
            3u64,
            1 << 40,
            crate::math::Modulus::new(0xffff_ffff_0000_0001)
                .unwrap()
                .value(),
        ] {
            assert!((0..1000).all(|_| g.uniform_below(q) < q));
        }
    }
}
