//! Cryptographic randomness (KEY-1): AES-128 in counter mode (the `aes`
//! crate: AES-NI or VAES where present, constant-time software otherwise),
//! seeded with 128 bits from a [`SeedSource`], the operating system unless
//! the application injects another.
//!
//! Two kinds of generator are used and never mixed:
//! * secret generators (keys, noise, flooding, session seeds and
//!   identifiers), seeded from the [`SeedSource`] of the party that owns
//!   them;
//! * public generators (ciphertext masks of seeded ciphertexts), seeded by a
//!   16-byte seed that travels on the wire, so the peer can re-expand them.
//!
//! **Injection** (KEY-3). The protocol's parties
//! ([`Client`](crate::protocol::Client),
//! [`Endpoint`](crate::protocol::Endpoint)) and the facade
//! ([`ModelServer`](crate::ModelServer), [`ModelClient`](crate::ModelClient))
//! take their seeds from a [`SeedSource`]: [`OsSeeds`] by default, or the
//! application's own (a hardware generator, an HSM). A deterministic source
//! for reproducible tests, `DeterministicSeeds`, and the public seeded
//! constructors (`Csprng::from_seed`, `SessionSeed::from_bytes`) exist only
//! with the test-only feature `deterministic-rng`, so a production build
//! cannot seed a secret generator by mistake.
//!
//! **Wiping** (KEY-1). A generator's state (the AES key schedule, the
//! counter and the unread keystream) is overwritten when it is dropped.
//!
//! The keystream is block i = AES_seed(i as 16 little-endian bytes), i = 0,
//! 1, …, read in order: the stream of `tfhe-csprng`'s AES-CTR generator for
//! the same seed (a test checks them byte for byte), so seeded ciphertexts
//! and keys expand to the same masks as before.

use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use aes::Aes128;
use std::sync::Arc;
use zeroize::Zeroize;

/// A 128-bit seed. Public when it seeds a mask, secret otherwise.
pub type Seed128 = [u8; 16];

/// Where a party's secret generators take their seeds (KEY-1).
///
/// An implementation must return bits that are uniform and unpredictable to
/// everyone else; one that cannot (the operating system's source failed)
/// must panic rather than return weak bytes, as [`OsSeeds`] does.
pub trait SeedSource: Send + Sync {
    /// Fills `out` with fresh secret bits.
    fn fill(&self, out: &mut [u8]);
}

/// The operating system's generator (`getrandom` on Linux, through
/// `tfhe-csprng`'s Unix seeder): the default [`SeedSource`].
#[derive(Clone, Copy, Debug, Default)]
pub struct OsSeeds;

impl SeedSource for OsSeeds {
    fn fill(&self, out: &mut [u8]) {
        use tfhe_csprng::seeders::{Seeder, UnixSeeder};
        let mut seeder = UnixSeeder::new(0);
        for chunk in out.chunks_mut(16) {
            let mut s = seeder.seed().0.to_le_bytes();
            chunk.copy_from_slice(&s[..chunk.len()]);
            s.zeroize();
        }
    }
}

/// The default source, shared: [`OsSeeds`].
pub fn os_seeds() -> Arc<dyn SeedSource> {
    Arc::new(OsSeeds)
}

/// Fresh 128 bits from the operating system.
pub fn os_seed() -> Seed128 {
    let mut s = [0u8; 16];
    OsSeeds.fill(&mut s);
    s
}

/// A deterministic [`SeedSource`] for reproducible tests (feature
/// `deterministic-rng`, never for production): every seed it hands out is
/// the next piece of one AES-CTR stream, so the same starting seed replays
/// the same keys, session seeds and noise.
#[cfg(feature = "deterministic-rng")]
#[derive(Debug)]
pub struct DeterministicSeeds {
    stream: std::sync::Mutex<Csprng>,
}

#[cfg(feature = "deterministic-rng")]
impl DeterministicSeeds {
    /// A source that replays the stream of `seed`.
    pub fn new(seed: Seed128) -> Self {
        Self {
            stream: std::sync::Mutex::new(Csprng::from_seed(seed)),
        }
    }
}

#[cfg(feature = "deterministic-rng")]
impl SeedSource for DeterministicSeeds {
    fn fill(&self, out: &mut [u8]) {
        // A poisoned lock only means another test thread panicked; the
        // stream itself is still consistent.
        let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        stream.fill_bytes(out);
    }
}

/// AES blocks encrypted per refill. VAES encrypts four per instruction:
/// 32 blocks (512 bytes) took flooding from 465 to 355–362 µs per b16
/// ciphertext against 8 (16: 374, 64: 349); the stream is the same.
const BLOCKS: usize = 32;
const BUFFER: usize = 16 * BLOCKS;

/// An AES-CTR generator with the samplers the scheme needs.
pub struct Csprng {
    cipher: Aes128,
    /// Index of the next block to encrypt.
    counter: u128,
    /// Keystream of the last refill, as AES blocks; bytes `used..` of it
    /// are not handed out yet.
    buffer: [[u8; 16]; BLOCKS],
    used: usize,
}

// THREAT-2: the generator's state is secret; print nothing of it.
impl std::fmt::Debug for Csprng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Csprng(..)")
    }
}

// KEY-1: the key schedule is wiped by `aes` itself (its `zeroize` feature);
// the counter and the unread keystream here.
impl Drop for Csprng {
    fn drop(&mut self) {
        self.buffer.as_flattened_mut().zeroize();
        self.counter.zeroize();
        self.used.zeroize();
    }
}

impl Csprng {
    /// A deterministic generator: the same seed gives the same stream. The
    /// crate uses it to expand public masks from a seed on the wire;
    /// outside the crate it exists only for reproducible tests (feature
    /// `deterministic-rng`). A secret generator comes from
    /// [`Csprng::from_source`] or [`Csprng::from_os`].
    #[cfg(feature = "deterministic-rng")]
    pub fn from_seed(seed: Seed128) -> Self {
        Self::keyed(seed)
    }

    /// See the public variant (feature `deterministic-rng`).
    #[cfg(not(feature = "deterministic-rng"))]
    pub(crate) fn from_seed(seed: Seed128) -> Self {
        Self::keyed(seed)
    }

    fn keyed(mut seed: Seed128) -> Self {
        let cipher = Aes128::new(&Array::from(seed));
        seed.zeroize();
        Self {
            cipher,
            counter: 0,
            buffer: [[0; 16]; BLOCKS],
            used: BUFFER,
        }
    }

    /// A generator for secret material, seeded from `source`.
    pub fn from_source(source: &dyn SeedSource) -> Self {
        let mut seed = [0u8; 16];
        source.fill(&mut seed);
        let rng = Self::keyed(seed);
        seed.zeroize();
        rng
    }

    /// A generator for secret material, seeded from the operating system.
    pub fn from_os() -> Self {
        Self::from_source(&OsSeeds)
    }

    fn refill(&mut self) {
        for block in self.buffer.iter_mut() {
            // 2^128 blocks are out of reach: the counter never wraps.
            *block = self.counter.to_le_bytes();
            self.counter = self.counter.wrapping_add(1);
        }
        self.cipher
            .encrypt_blocks(Array::cast_slice_from_core_mut(&mut self.buffer));
        self.used = 0;
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill_bytes(&mut self, mut out: &mut [u8]) {
        while !out.is_empty() {
            if self.used == BUFFER {
                self.refill();
            }
            let take = out.len().min(BUFFER - self.used);
            let stream = self.buffer.as_flattened();
            out[..take].copy_from_slice(&stream[self.used..self.used + take]);
            self.used += take;
            out = &mut out[take..];
        }
    }

    /// The next 8 bytes of the stream, little-endian: uniform on `u64`.
    pub fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        // The samplers' hot path: a fixed-size read while the buffer holds
        // 8 bytes (`fill_bytes`'s variable-length copy was a `memmove`
        // call per draw, 13 % of flooding's samples); the same bytes.
        if let Some(word) = self.buffer.as_flattened().get(self.used..self.used + 8) {
            b.copy_from_slice(word);
            self.used += 8;
        } else {
            self.fill_bytes(&mut b);
        }
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
        if q.is_power_of_two() {
            // Nothing is redrawn for q = 2^k and x mod 2^k is x's low k
            // bits: the value the loop below returns, without a division.
            return self.next_u64() & (q - 1);
        }
        // Largest multiple of q that fits; values at or above it are
        // redrawn. 2^64 mod q = (2^64 − q) mod q: one division.
        let zone = u64::MAX - q.wrapping_neg() % q;
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
        if self.used == BUFFER {
            self.refill();
        }
        let byte = self.buffer.as_flattened()[self.used];
        self.used += 1;
        (byte & 1) as u64
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

    /// The keystream is tfhe-csprng's AES-CTR stream for the same seed, so
    /// seeded masks (KEY-2) expand as they always did; reads of odd sizes
    /// across refills see the same bytes.
    #[test]
    fn stream_equals_tfhe_csprng_for_the_same_seed() {
        use tfhe_csprng::generators::{DefaultRandomGenerator, RandomGenerator};
        for seed in [[0u8; 16], [7; 16], *b"0123456789abcdef"] {
            let mut theirs =
                DefaultRandomGenerator::new(tfhe_csprng::seeders::Seed(u128::from_le_bytes(seed)));
            let expected: Vec<u8> = (0..1000).map(|_| theirs.next_byte().unwrap()).collect();
            let mut ours = Csprng::from_seed(seed);
            let mut got = Vec::new();
            for size in [1usize, 7, 8, 100, 300, 584] {
                let mut chunk = vec![0u8; size];
                ours.fill_bytes(&mut chunk);
                got.extend(chunk);
            }
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn deterministic_seeds_replay_and_differ_by_seed() {
        let (a, b, c) = (
            DeterministicSeeds::new([1; 16]),
            DeterministicSeeds::new([1; 16]),
            DeterministicSeeds::new([2; 16]),
        );
        let draw = |s: &DeterministicSeeds| {
            let mut x = [0u8; 16];
            s.fill(&mut x);
            x
        };
        let first = draw(&a);
        assert_eq!(first, draw(&b));
        assert_ne!(first, draw(&c));
        assert_ne!(first, draw(&a), "a source never repeats a seed");
    }

    #[test]
    fn os_seeds_are_fresh() {
        assert_ne!(os_seed(), os_seed());
    }

    #[test]
    fn tuniform_stays_in_bounds_and_hits_both_ends() {
        let mut g = Csprng::from_seed([1; 16]);
        let samples: Vec<i64> = (0..20_000).map(|_| g.tuniform(2)).collect();
        assert!(samples.iter().all(|&x| (-4..=4).contains(&x)));
        assert!(samples.contains(&-4) && samples.contains(&4));
    }

    // The shortcuts (no division for q = 2^k, one for the zone) return the
    // value the plain rejection returns from the same stream, draw for draw.
    #[test]
    fn uniform_below_matches_the_plain_rejection() {
        fn plain(g: &mut Csprng, q: u64) -> u64 {
            let zone = u64::MAX - (u64::MAX % q + 1) % q;
            loop {
                let x = g.next_u64();
                if x <= zone {
                    return x % q;
                }
            }
        }
        let moduli = [
            1u64,
            2,
            3,
            7,
            64,
            1 << 43,
            (1 << 63) + 1,
            u64::MAX,
            0xffff_ffff_0000_0001,
        ];
        for (i, &q) in moduli.iter().enumerate() {
            let (mut a, mut b) = (
                Csprng::from_seed([i as u8; 16]),
                Csprng::from_seed([i as u8; 16]),
            );
            for _ in 0..2000 {
                assert_eq!(a.uniform_below(q), plain(&mut b, q), "q = {q}");
            }
            assert_eq!(
                a.next_u64(),
                b.next_u64(),
                "q = {q}: the streams stay aligned"
            );
        }
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
