//! Secret per-round permutations (spec/shuffling.md): σ_r from a session
//! seed by ChaCha20 and Fisher–Yates, at element or channel granularity.

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use thiserror::Error;

/// A permutation of `0..len`: `apply` moves item k to position `map[k]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Permutation {
    map: Vec<u32>,
}

// The map is a secret of the server: wiped when dropped (THREAT-2).
impl Drop for Permutation {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.map);
    }
}

impl std::fmt::Debug for Permutation {
    // The map is a secret of the server: print only its length (THREAT-2).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permutation(len = {})", self.map.len())
    }
}

/// What a session shuffles, per the server's policy; each stage turns it
/// into a [`Granularity`] with its own channel size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShuffleUnit {
    /// Permute every output value independently (SHUF-2).
    Element,
    /// Permute whole output channels, keeping the order inside each
    /// (SHUF-2); cheaper to attack (one chosen query per conv, PROTO-6).
    Channel,
}

/// The unit that is permuted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// Every output value independently (the paper's setting).
    Element,
    /// Whole channels of `channel_size` consecutive values.
    Channel {
        /// Consecutive values per channel (≥ 1); must divide the length.
        channel_size: usize,
    },
}

/// Why a permutation could not be derived, built or applied. Derivation
/// errors are the caller's (a stage geometry that does not fit the policy);
/// [`ShuffleError::NotAPermutation`] is the fault of whoever supplied the map.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShuffleError {
    /// A channel shuffle of a length that is not a whole number of channels
    /// (SHUF-2 requires refusing it).
    #[error("length {len} is not a multiple of the channel size {channel_size}")]
    RaggedChannels {
        /// Number of values to permute.
        len: usize,
        /// The channel size asked for.
        channel_size: usize,
    },
    /// A channel shuffle with `channel_size = 0`.
    #[error("channel size must be at least 1")]
    EmptyChannel,
    /// More items than a `u32` index can address (over `u32::MAX`).
    #[error("a permutation of {len} items cannot have more than 2^32 entries")]
    TooLong {
        /// Number of items asked for.
        len: usize,
    },
    /// An untrusted map repeats an index or holds one out of range (SHUF-3);
    /// the map must be refused.
    #[error("not a permutation: index {index} appears twice or is out of range 0..{len}")]
    NotAPermutation {
        /// The first offending index.
        index: u64,
        /// Length of the map.
        len: usize,
    },
    /// [`Permutation::apply`] on a slice of another length than the
    /// permutation's: a caller bug.
    #[error("permutation has length {got}, expected {expected}")]
    LengthMismatch {
        /// The permutation's length.
        expected: usize,
        /// The slice's length.
        got: usize,
    },
}

/// The server's per-session secret seed. Wiped on drop.
pub struct SessionSeed([u8; 32]);

impl std::fmt::Debug for SessionSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSeed(..)")
    }
}

impl Drop for SessionSeed {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl SessionSeed {
    /// A fresh seed from the operating system.
    pub fn generate() -> Self {
        Self::from_source(&crate::rng::OsSeeds)
    }

    /// A fresh seed from `source` (KEY-3: the party's injected randomness).
    pub fn from_source(source: &dyn crate::rng::SeedSource) -> Self {
        let mut s = Self([0; 32]);
        source.fill(&mut s.0);
        s
    }

    /// A fixed seed, for reproducible tests only (feature
    /// `deterministic-rng`).
    #[cfg(feature = "deterministic-rng")]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// σ_r for `len` outputs (SHUF-1, SHUF-2).
    pub fn permutation(
        &self,
        round: u64,
        len: usize,
        granularity: Granularity,
    ) -> Result<Permutation, ShuffleError> {
        if len > u32::MAX as usize {
            return Err(ShuffleError::TooLong { len });
        }
        let mut rng = WipedChaCha(ChaCha20Rng::from_seed(self.0));
        rng.0.set_stream(round);
        match granularity {
            Granularity::Element => Ok(fisher_yates(&mut rng.0, len)),
            Granularity::Channel { channel_size } => {
                if channel_size == 0 {
                    return Err(ShuffleError::EmptyChannel);
                }
                if !len.is_multiple_of(channel_size) {
                    return Err(ShuffleError::RaggedChannels { len, channel_size });
                }
                let channels = fisher_yates(&mut rng.0, len / channel_size);
                let map = (0..len)
                    .map(|k| {
                        (channels.map[k / channel_size] as usize * channel_size + k % channel_size)
                            as u32
                    })
                    .collect();
                Ok(Permutation { map })
            }
        }
    }
}

/// The permutation generator, wiped on drop (KEY-1): its state is derived
/// from the secret session seed.
struct WipedChaCha(ChaCha20Rng);

impl Drop for WipedChaCha {
    fn drop(&mut self) {
        // SAFETY: `ChaCha20Rng` (rand_chacha =0.10.0 on rand_core =0.10.1,
        // both pinned) holds only integer arrays: no pointers, and no
        // invariant that an all-zero value breaks. Its own `Drop` runs after
        // this one and only hands the output buffer to a no-op hook.
        unsafe { zeroize::zeroize_flat_type(&mut self.0 as *mut ChaCha20Rng) }
    }
}

/// Uniform in 0..=bound by rejection (no modulo bias).
fn uniform_inclusive(rng: &mut ChaCha20Rng, bound: u32) -> u32 {
    let range = bound as u64 + 1;
    let zone = u64::MAX - (u64::MAX % range + 1) % range;
    loop {
        let x = rng.next_u64();
        if x <= zone {
            return (x % range) as u32;
        }
    }
}

fn fisher_yates(rng: &mut ChaCha20Rng, len: usize) -> Permutation {
    let mut map: Vec<u32> = (0..len as u32).collect();
    for i in (1..len).rev() {
        let j = uniform_inclusive(rng, i as u32) as usize;
        map.swap(i, j);
    }
    Permutation { map }
}

impl Permutation {
    /// The permutation of `len` items that moves nothing. `len` is taken as a
    /// `u32`: for `len > u32::MAX` the result is shorter than asked (use
    /// [`SessionSeed::permutation`], which refuses such lengths).
    pub fn identity(len: usize) -> Self {
        Self {
            map: (0..len as u32).collect(),
        }
    }

    /// Validates an untrusted map (SHUF-3): every index exactly once.
    pub fn from_map(map: Vec<u32>) -> Result<Self, ShuffleError> {
        let len = map.len();
        let mut seen = vec![false; len];
        for &i in &map {
            match seen.get_mut(i as usize) {
                Some(s) if !*s => *s = true,
                _ => {
                    return Err(ShuffleError::NotAPermutation {
                        index: i as u64,
                        len,
                    })
                }
            }
        }
        Ok(Self { map })
    }

    /// Number of items it permutes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it permutes no items.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Where item k goes.
    pub fn image(&self, k: usize) -> usize {
        self.map[k] as usize
    }

    /// σ⁻¹: applying σ then σ⁻¹ is the identity (SHUF-3); the server applies
    /// σ_(r−1)⁻¹ when repacking upload r (PROTO-3).
    pub fn inverse(&self) -> Permutation {
        let mut inv = vec![0u32; self.map.len()];
        for (k, &to) in self.map.iter().enumerate() {
            inv[to as usize] = k as u32;
        }
        Permutation { map: inv }
    }

    /// `out[σ(k)] = items[k]`.
    pub fn apply<T: Clone>(&self, items: &[T]) -> Result<Vec<T>, ShuffleError> {
        if items.len() != self.map.len() {
            return Err(ShuffleError::LengthMismatch {
                expected: self.map.len(),
                got: items.len(),
            });
        }
        let mut out: Vec<Option<T>> = vec![None; items.len()];
        for (item, &to) in items.iter().zip(&self.map) {
            out[to as usize] = Some(item.clone());
        }
        // Every slot was written exactly once: `map` is a permutation.
        Ok(out.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // SHUF-3: σ⁻¹∘σ is the identity, and the map is a permutation.
        #[test]
        fn inverse_undoes_apply(seed in any::<[u8; 32]>(), round in any::<u64>(), len in 0usize..500) {
            let p = SessionSeed::from_bytes(seed).permutation(round, len, Granularity::Element).unwrap();
            let items: Vec<usize> = (0..len).collect();
            let shuffled = p.apply(&items).unwrap();
            prop_assert_eq!(p.inverse().apply(&shuffled).unwrap(), items);
            prop_assert!(Permutation::from_map(p.map.clone()).is_ok());
        }

        // SHUF-2: channel shuffles move whole channels, order kept inside.
        #[test]
        fn channel_shuffle_keeps_channels_whole(seed in any::<[u8; 32]>(), channels in 1usize..20, size in 1usize..20) {
            let len = channels * size;
            let p = SessionSeed::from_bytes(seed)
                .permutation(3, len, Granularity::Channel { channel_size: size })
                .unwrap();
            for k in 0..len {
                let base = p.image(k - k % size);
                prop_assert_eq!(base % size, 0);
                prop_assert_eq!(p.image(k), base + k % size);
            }
        }

        #[test]
        fn untrusted_maps_are_validated(map in proptest::collection::vec(0u32..20, 0..20)) {
            let mut sorted = map.clone();
            sorted.sort_unstable();
            let is_perm = sorted.iter().enumerate().all(|(i, &v)| v as usize == i);
            prop_assert_eq!(Permutation::from_map(map).is_ok(), is_perm);
        }
    }

    // SHUF-1: deterministic per (seed, round), fresh per round and per seed.
    #[test]
    fn derivation_is_deterministic_and_round_separated() {
        let s = SessionSeed::from_bytes([7; 32]);
        let a = s.permutation(1, 1000, Granularity::Element).unwrap();
        assert_eq!(a, s.permutation(1, 1000, Granularity::Element).unwrap());
        assert_ne!(a, s.permutation(2, 1000, Granularity::Element).unwrap());
        assert_ne!(
            a,
            SessionSeed::from_bytes([8; 32])
                .permutation(1, 1000, Granularity::Element)
                .unwrap()
        );
        // THREAT-2: σ_r's Debug shows only its length.
        assert_eq!(format!("{a:?}"), "Permutation(len = 1000)");
    }

    #[test]
    fn bad_shapes_are_refused() {
        let s = SessionSeed::from_bytes([1; 32]);
        assert_eq!(
            s.permutation(0, 10, Granularity::Channel { channel_size: 3 }),
            Err(ShuffleError::RaggedChannels {
                len: 10,
                channel_size: 3
            })
        );
        assert_eq!(
            s.permutation(0, 10, Granularity::Channel { channel_size: 0 }),
            Err(ShuffleError::EmptyChannel)
        );
        let p = Permutation::identity(3);
        assert!(matches!(
            p.apply(&[1, 2]),
            Err(ShuffleError::LengthMismatch { .. })
        ));
    }

    /// Every position is equally likely for item 0 (χ² test, 1 − 10⁻⁶).
    #[test]
    fn element_shuffle_is_uniform() {
        use statrs::distribution::{ChiSquared, ContinuousCDF};
        let len = 8;
        let trials = 40_000;
        let s = SessionSeed::from_bytes([9; 32]);
        let mut counts = vec![0f64; len];
        for r in 0..trials {
            counts[s
                .permutation(r, len, Granularity::Element)
                .unwrap()
                .image(0)] += 1.0;
        }
        let expect = trials as f64 / len as f64;
        let chi2: f64 = counts.iter().map(|c| (c - expect).powi(2) / expect).sum();
        let limit = ChiSquared::new((len - 1) as f64)
            .unwrap()
            .inverse_cdf(1.0 - 1e-6);
        assert!(chi2 < limit, "χ² = {chi2} ≥ {limit}");
    }
}
