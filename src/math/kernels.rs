//! Which instruction set the hot loops run on (SIMD-1), for reports: the
//! same computation takes about four times as long on AVX2 as on AVX-512
//! (benches/README.md), so a figure without it cannot be compared.

use std::fmt;

/// The widest instruction set that every dispatched hot loop (transforms,
/// key products, the packer's rotate-adds) selects on this CPU. Results are
/// the same on each (SIMD-1); only the time differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// AVX-512 (F, VL and DQ).
    Avx512,
    /// AVX2, without AVX-512.
    Avx2,
    /// Neither: portable code (and tfhe-ntt's own choice for its transforms).
    Portable,
}

impl Kernels {
    /// Short lower-case name, as `bench --json` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Avx512 => "avx512",
            Kernels::Avx2 => "avx2",
            Kernels::Portable => "portable",
        }
    }
}

impl fmt::Display for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kernels::Avx512 => "AVX-512",
            Kernels::Avx2 => "AVX2 (no AVX-512)",
            Kernels::Portable => "portable (neither AVX-512 nor AVX2)",
        })
    }
}

/// The kernels this CPU runs, detected at run time like the dispatch.
pub fn kernels() -> Kernels {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512vl") && has!("avx512dq") {
            return Kernels::Avx512;
        }
        if has!("avx2") {
            return Kernels::Avx2;
        }
    }
    Kernels::Portable
}

#[cfg(test)]
mod tests {
    use super::*;

    // SIMD-1: the report names the instruction set the dispatch detects.
    #[test]
    fn kernels_match_the_detected_features() {
        let k = kernels();
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512dq");
            let avx2 = std::arch::is_x86_feature_detected!("avx2");
            let want = match (avx512, avx2) {
                (true, _) => Kernels::Avx512,
                (false, true) => Kernels::Avx2,
                _ => Kernels::Portable,
            };
            assert_eq!(k, want);
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(k, Kernels::Portable);
        // The transform mod q, the largest dispatched kernel, runs the
        // crate's own code exactly when the report names an instruction set.
        assert_eq!(
            super::super::goldilocks_ntt::GoldilocksNtt::supported(),
            k != Kernels::Portable
        );
        assert!(!k.name().is_empty() && !k.to_string().is_empty());
    }
}
