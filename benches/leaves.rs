//! What bounds the packing leaves (issue 9; benches/README.md, "Pack leaves:
//! what bounds them"). Run: `cargo bench --bench leaves`.
//!
//! A level-ℓ* node of the packer is materialised as a fresh zero ciphertext
//! plus T monomial rotate-adds `± X^e · image`, the images drawn from the m
//! images of the output's sources (`Packer::subtree`). This times exactly
//! that (b16: N = 4096, one 64-bit limb) over m, T and the rotation's
//! alignment, against plain-add and copy baselines of the same bytes, and
//! prints ns per rotate-add, nominal bytes/s (image read + accumulator
//! read + write: 3 × 64 KiB per rotate-add) and coefficient adds/s.

use safhire::math::{poly, Modulus};
use safhire::params::ParameterSet;
use safhire::rlwe::{Ciphertext, Context, SecretKey};
use safhire::rng::Csprng;
use std::hint::black_box;
use std::time::Instant;

/// `cargo bench -- --test` (as CI runs every bench): each line once, small,
/// to show that it runs; its figures mean nothing.
fn quick() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// Rotate-adds per measurement (the node count is this over T).
fn rotations() -> usize {
    if quick() {
        1024
    } else {
        32768
    }
}

/// Timed runs per line; the minimum is reported.
fn repeats() -> usize {
    if quick() {
        1
    } else {
        5
    }
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Rotation {
    /// e = 0: no split, a plain modular add.
    None,
    /// e a multiple of 8 (whole 64-byte lines).
    Aligned,
    /// e uniform in 0..2N.
    Any,
}

#[derive(Clone, Copy)]
struct Term {
    image: usize,
    exp: usize,
    negate: bool,
}

fn terms(rng: &mut XorShift, count: usize, images: usize, rot: Rotation, n: usize) -> Vec<Term> {
    (0..count)
        .map(|_| {
            let r = rng.next();
            let exp = match rot {
                Rotation::None => 0,
                Rotation::Aligned => (r as usize % (2 * n)) & !7,
                Rotation::Any => r as usize % (2 * n),
            };
            Term {
                image: (r >> 32) as usize % images,
                exp,
                negate: (r >> 20) & 1 == 1,
            }
        })
        .collect()
}

/// Minimum over `repeats()` of `f`'s time, in ns.
fn best(mut f: impl FnMut()) -> f64 {
    (0..repeats())
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn report(label: &str, ns_per_rotation: f64, n: usize) {
    let bytes = 3.0 * 2.0 * n as f64 * 8.0;
    let adds = 2.0 * n as f64;
    println!(
        "{label:<58} {ns_per_rotation:8.0} ns  {:6.1} GB/s  {:5.2} Gadd/s",
        bytes / ns_per_rotation,
        adds / ns_per_rotation
    );
}

/// `out += inp` on u64 words without reduction: the add's bandwidth floor.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wrapping_add_avx512(out: &mut [u64], inp: &[u64]) {
    for (o, &i) in out.iter_mut().zip(inp) {
        *o = o.wrapping_add(i);
    }
}

fn wrapping_add(out: &mut [u64], inp: &[u64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: detected on this CPU.
        return unsafe { wrapping_add_avx512(out, inp) };
    }
    for (o, &i) in out.iter_mut().zip(inp) {
        *o = o.wrapping_add(i);
    }
}

fn main() {
    let ctx = Context::new(ParameterSet::shipped("b16").unwrap());
    let (n, q) = (ctx.n(), ctx.q());
    let m = Modulus::new(safhire::math::SOLINAS).unwrap();
    let mut crng = Csprng::from_seed([7; 16]);
    let sk = SecretKey::generate(&ctx, &mut crng);
    let vals: Vec<i64> = (0..n as i64).map(|i| i % 50).collect();
    let all_images: Vec<Ciphertext> = (0..256)
        .map(|_| ctx.encrypt(&sk, &vals, &mut crng))
        .collect();
    // Plain u64 copies of the same images for the baselines.
    let raw: Vec<Vec<u64>> = (0..256)
        .map(|k| {
            (0..2 * n)
                .map(|i| ((k * 7919 + i) as u64 * 2654435761) % m.value())
                .collect()
        })
        .collect();
    let mut rng = XorShift(0x9e3779b97f4a7c15);
    println!(
        "N = {n}, one limb, {} rotate-adds per line, min of {}",
        rotations(),
        repeats()
    );

    println!("\n-- allocation of a zero accumulator alone (per node)");
    let ns = best(|| {
        for _ in 0..4096 {
            black_box(ctx.zero_ciphertext());
        }
    }) / 4096.0;
    println!("zero_ciphertext + drop: {ns:.0} ns per node");

    println!("\n-- packer's path: zero ciphertext + T × Ciphertext::monomial_mul_add");
    for &images in &[1usize, 4, 16, 64, 256] {
        for &t in &[4usize, 16, 64, 256] {
            for (rot, name) in [
                (Rotation::None, "e=0"),
                (Rotation::Aligned, "e%8=0"),
                (Rotation::Any, "any e"),
            ] {
                let nodes = rotations() / t;
                let plan: Vec<Vec<Term>> = (0..nodes)
                    .map(|_| terms(&mut rng, t, images, rot, n))
                    .collect();
                let ns = best(|| {
                    for node in &plan {
                        let mut ct = ctx.zero_ciphertext();
                        for term in node {
                            ct.monomial_mul_add(q, &all_images[term.image], term.exp, term.negate);
                        }
                        black_box(&ct);
                    }
                }) / rotations() as f64;
                report(
                    &format!("m={images:3} ({:5} KiB) T={t:3} {name}", images * 64),
                    ns,
                    n,
                );
            }
        }
    }

    println!("\n-- blocked: per part, per block of B output coefficients, all T terms");
    for &images in &[4usize, 16, 64, 256] {
        for &t in &[16usize, 64, 256] {
            let nodes = rotations() / t;
            let plan: Vec<Vec<Term>> = (0..nodes)
                .map(|_| terms(&mut rng, t, images, Rotation::Any, n))
                .collect();
            for &block in &[512usize, 1024, 2048, 4096] {
                let mut check = Vec::new();
                let ns = best(|| {
                    check.clear();
                    for node in &plan {
                        let mut acc = vec![0u64; 2 * n];
                        for part in 0..2 {
                            let out = &mut acc[part * n..(part + 1) * n];
                            for (k, chunk) in out.chunks_mut(block).enumerate() {
                                for term in node {
                                    let img = &raw[term.image][part * n..(part + 1) * n];
                                    poly::monomial_mul_add_block(
                                        m,
                                        chunk,
                                        k * block,
                                        img,
                                        term.exp,
                                        term.negate,
                                    );
                                }
                            }
                        }
                        check.push(acc[0] ^ acc[n + 5]);
                        black_box(&acc);
                    }
                }) / rotations() as f64;
                report(&format!("m={images:3} T={t:3} any e, B={block}"), ns, n);
            }
            // The packer's kernel: all T terms of a block in one call (lazy
            // on AVX2 without AVX-512, else the per-term blocks above).
            let ns = best(|| {
                for node in &plan {
                    let mut acc = vec![0u64; 2 * n];
                    for part in 0..2 {
                        let out = &mut acc[part * n..(part + 1) * n];
                        for (k, chunk) in out.chunks_mut(2048).enumerate() {
                            let inputs = node.iter().map(|term| {
                                let img = &raw[term.image][part * n..(part + 1) * n];
                                (img, term.exp, term.negate)
                            });
                            poly::monomial_sum_block(m, chunk, k * 2048, inputs);
                        }
                    }
                    black_box(&acc);
                }
            }) / rotations() as f64;
            report(
                &format!("m={images:3} T={t:3} any e, B=2048, monomial_sum_block"),
                ns,
                n,
            );
            // The same plan term by term, on the same raw images, to compare.
            let ns = best(|| {
                for node in &plan {
                    let mut acc = vec![0u64; 2 * n];
                    for term in node {
                        for part in 0..2 {
                            let r = part * n..(part + 1) * n;
                            poly::monomial_mul_add(
                                m,
                                &mut acc[r.clone()],
                                &raw[term.image][r],
                                term.exp,
                                term.negate,
                            );
                        }
                    }
                    black_box(&acc);
                }
            }) / rotations() as f64;
            report(&format!("m={images:3} T={t:3} any e, term by term"), ns, n);
        }
    }

    println!("\n-- compute bound: 512 coefficients of accumulator and image, both in L1");
    {
        let mut acc = vec![0u64; 512];
        let img = &raw[0][..512];
        let reps = rotations() * 16;
        let ns = best(|| {
            for _ in 0..reps {
                poly::add_assign(m, &mut acc, img);
            }
            black_box(&acc);
        }) / reps as f64;
        report(
            "modular add, per 512 (scaled ×16 to a rotate-add)",
            ns * 16.0,
            n,
        );
        let ns = best(|| {
            for _ in 0..reps {
                wrapping_add(&mut acc, img);
            }
            black_box(&acc);
        }) / reps as f64;
        report("wrapping add, per 512 (scaled ×16)", ns * 16.0, n);
    }

    println!("\n-- baselines on the same bytes (T = 64, accumulator kept across terms)");
    for &images in &[1usize, 16, 64, 256] {
        let plan = terms(&mut rng, rotations(), images, Rotation::Any, n);
        let mut acc = vec![0u64; 2 * n];
        let ns = best(|| {
            for term in &plan {
                acc.copy_from_slice(&raw[term.image]);
            }
            black_box(&acc);
        }) / rotations() as f64;
        report(&format!("m={images:3} copy image → accumulator"), ns, n);
        let ns = best(|| {
            for term in &plan {
                wrapping_add(&mut acc, &raw[term.image]);
            }
            black_box(&acc);
        }) / rotations() as f64;
        report(&format!("m={images:3} wrapping add (no reduction)"), ns, n);
        acc.fill(0);
        let ns = best(|| {
            for term in &plan {
                poly::add_assign(m, &mut acc, &raw[term.image]);
            }
            black_box(&acc);
        }) / rotations() as f64;
        report(
            &format!("m={images:3} modular add, whole 2N (one slice)"),
            ns,
            n,
        );
        let ns = best(|| {
            for term in &plan {
                let img = &raw[term.image];
                poly::add_assign(m, &mut acc[..n], &img[..n]);
                poly::add_assign(m, &mut acc[n..], &img[n..]);
            }
            black_box(&acc);
        }) / rotations() as f64;
        report(&format!("m={images:3} modular add, a then b"), ns, n);
        let ns = best(|| {
            for term in &plan {
                let img = &raw[term.image];
                for part in 0..2 {
                    let r = part * n..(part + 1) * n;
                    poly::monomial_mul_add(m, &mut acc[r.clone()], &img[r], term.exp, term.negate);
                }
            }
            black_box(&acc);
        }) / rotations() as f64;
        report(
            &format!("m={images:3} poly::monomial_mul_add, any e"),
            ns,
            n,
        );
    }
}
