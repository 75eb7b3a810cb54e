//! Cheetah-style coefficient encodings for Conv2d and matrix–vector products.
//!
//! This module is pure integer bookkeeping (it depends on `std` only). It says
//! where each input value goes in which RLWE plaintext/ciphertext, which
//! plaintext weight polynomial each input ciphertext is multiplied by, and where
//! each output value can be read afterwards. The homomorphic side places the
//! inputs, computes `out_k = Σ_m in_m · ŵ_{k,m}` over the pairs for which
//! [`Conv2dLayout::weight_polynomial`] (or [`MatVecLayout::weight_polynomial`])
//! returns `Some`, and reads the listed output coefficients (partial
//! extraction: all other coefficients of `out_k` are garbage).
//!
//! All polynomials live in `Z[X]/(X^n + 1)` (negacyclic), `n` a power of two.
//! The encodings follow Huang et al., "Cheetah: Lean and Fast Secure Two-Party
//! Deep Neural Network Inference", USENIX Security 2022.
//!
//! # Conv2d
//!
//! Notation: `C` input channels, `H × W` input, `M` output channels, kernel
//! `kh × kw`, stride `s`, padding `p`, padded size `H' = H + 2p`, `W' = W + 2p`,
//! output size `Ho = (H' − kh)/s + 1`, `Wo = (W' − kw)/s + 1`.
//!
//! Only the first `Hu = (Ho − 1)·s + kh` padded rows and `Wu = (Wo − 1)·s + kw`
//! padded columns are ever read by a (strided) output, so the trailing ones are
//! dropped. `Wu ≤ W'` is the *row pitch* of the encoding. The stride-1
//! convolution is computed on this `Hu × Wu` padded image and only the
//! positions of the strided outputs (stride-1 row `i·s`, column `j·s`) are
//! reported.
//!
//! Input channels are split into blocks of `Cb` channels. Output rows are
//! split into blocks of `Q` rows; row block `rb` computes output rows
//! `rb·Q .. rb·Q + Q`, which read the `Hb = (Q − 1)·s + kh` padded rows starting
//! at padded row `rb·Q·s`. Consecutive row blocks thus overlap by `kh − s`
//! rows (`kh − 1` for stride 1, as in Cheetah; when `s > kh` the rows in the
//! gap are read by no output) and every output row `i` is computed in exactly
//! one row block, `⌊i / Q⌋`, at local stride-1 row `(i mod Q)·s ≤ Hb − kh`.
//! With `S = Cb·Hb·Wu ≤ n` (the *slot* size), the input polynomial of
//! (row block, channel block) is, with `c`, `i` local to the block and `j` the
//! padded column,
//!
//! ```text
//! x̂ = Σ x[c][i][j] · X^(c·Hb·Wu + i·Wu + j)          (deg x̂ < S)
//! ```
//!
//! Zero-padding positions, and values that no output of the block reads (the
//! gaps between windows when `s > kh` or `s > kw`), are not placed: they hold
//! 0, which changes no read coefficient. For an output channel `o` and a
//! channel block,
//!
//! ```text
//! ŵ = Σ w[o][c][k][l] · X^(O − c·Hb·Wu − k·Wu − l),
//! O = (Cb − 1)·Hb·Wu + (kh − 1)·Wu + (kw − 1)        (0 ≤ exponents ≤ O < S)
//! ```
//!
//! and coefficient `O + i·Wu + j` of `x̂·ŵ` (`0 ≤ i ≤ Hb − kh`, `0 ≤ j ≤ Wu − kw`)
//! is the stride-1 output at local row `i`, column `j`, restricted to the
//! block's channels; summing over channel blocks gives the full output.
//!
//! *Output-channel stacking.* `T = min(M, ⌊n / S⌋)` output channels share one
//! output ciphertext: the `t`-th (`0 ≤ t < T`) weight polynomial is shifted by
//! `X^(t·S)`, so its outputs are read at `t·S + O + i·Wu + j`. Output
//! ciphertext `rb·G + g` (with `G = ⌈M / T⌉`) holds output channels
//! `g·T .. g·T + T` of row block `rb`; input ciphertext `rb·Nc + cb` (with
//! `Nc = ⌈C / Cb⌉`) holds channel block `cb` of row block `rb`; the pair
//! interacts iff both have the same `rb`.
//!
//! ## Why the read coefficients are exact (no wrap-around, no collision)
//!
//! Terms of `x̂ · X^(t·S) ŵ` have exponent `e = a + t·S + b` with
//! `a = c·Hb·Wu + i'·Wu + j'` (`c < Cb`, `i' < Hb`, `j' < Wu`) and
//! `b = O − c'·Hb·Wu − k·Wu − l` (`c' < Cb`, `k < kh`, `l < kw`), so
//! `t·S ≤ e ≤ t·S + (S − 1) + O ≤ T·S − 1 + O < 2n`: a term wraps at most once.
//!
//! 1. *Wrap-around.* A term with `e ≥ n` lands (negated) on `e − n ≤
//!    (T − 1)·S + S − 1 + O − n = T·S − n + O − 1 ≤ O − 1`, since `T·S ≤ n`.
//!    Every read coefficient is `≥ O`, so no wrapped term is ever read. The
//!    largest read coefficient is `(T − 1)·S + O + (Hb − kh)·Wu + Wu − kw =
//!    T·S − 1 < n`, so every read coefficient exists.
//! 2. *Other stacked channels.* Terms of channel `t` lie in `[t·S, t·S + S − 1 + O]`
//!    while the read coefficients of channel `t'` lie in `[t'·S + O, t'·S + S − 1]`.
//!    For `t' > t` the latter starts at `≥ t·S + S + O`, past the former; for
//!    `t' < t` it ends at `≤ t·S − 1`, before the former. So no term of another
//!    stacked channel reaches a read coefficient.
//! 3. *Same channel.* A term hits read coefficient `t·S + O + i·Wu + j` iff
//!    `(c − c')·Hb·Wu + (i' − k − i)·Wu + (j' − l − j) = 0`. Since
//!    `0 ≤ j ≤ Wu − kw`, `|j' − l − j| ≤ Wu − 1`, which forces `j' = j + l`;
//!    dividing by `Wu` leaves `(c − c')·Hb + (i' − k − i) = 0`, and since
//!    `0 ≤ i ≤ Hb − kh`, `|i' − k − i| ≤ Hb − 1`, which forces `i' = i + k`
//!    and `c = c'`. So the coefficient is exactly
//!    `Σ_{c,k,l} x[c][i+k][j+l]·w[o][c][k][l]`, the stride-1 correlation.
//!
//! Input row `i + k ≤ Hb − 1` stays inside the block, and the global padded row
//! `rb·Q·s + i + k ≤ Hu − 1` for every reported output, so every needed input
//! value is present in the block.
//!
//! ## Block-size choice
//!
//! [`Conv2dLayout::new`] searches *all* `(Cb, Q)` with `1 ≤ Cb ≤ C`,
//! `1 ≤ Q ≤ Ho`, `Cb·Hb·Wu ≤ n` (`T` is then the largest stack that fits, and
//! `Nc = ⌈C / Cb⌉`, `Nr = ⌈Ho / Q⌉`, `G = ⌈M / T⌉`) and picks the one
//! minimising, in this order: (1) input + output ciphertexts `Nc·Nr + G·Nr`,
//! (2) plaintext–ciphertext products `Nc·Nr·G`, (3) input ciphertexts; the first
//! found (smallest `Cb`, then smallest `Q`) wins remaining ties. The search
//! visits at most about `n·ln n` pairs. A kernel row block that does not fit,
//! `kh·Wu > n`, is an error: columns are never split.
//!
//! # Matrix–vector product
//!
//! `y = W·x`, `W` of `rows × cols`. `x` is split into column blocks of `ni`
//! values and the rows into blocks of `no`, with `ni·no ≤ n`. Input ciphertext
//! `b` holds `x̂ = Σ_j x[b·ni + j] X^j`; for output ciphertext `a`,
//! `ŵ = Σ_{i,j} W[a·no + i][b·ni + j] X^(i·ni + ni − 1 − j)` and row `a·no + i` is
//! read at coefficient `i·ni + ni − 1` of `Σ_b x̂_b·ŵ_{a,b}`. Every (output,
//! input) pair interacts.
//!
//! *No wrap-around:* `deg x̂ ≤ ni − 1`, `deg ŵ ≤ ni·no − 1 ≤ n − 1`, so a wrapped
//! term lands on `≤ ni − 2 < ni − 1`, the smallest read coefficient. *No
//! collision:* a term `j'` × `(i', j)` hits `i·ni + ni − 1` iff
//! `(i − i')·ni = j' − j` with `|j' − j| ≤ ni − 1`, forcing `i = i'`, `j = j'`.
//!
//! *Block choice:* all `ni` in `1..=min(cols, n)` with `no = min(rows, ⌊n/ni⌋)`
//! are tried; minimise input + output ciphertexts, then products, first
//! (smallest `ni`) wins ties.

use std::fmt;
use std::ops::Range;

/// Largest ring degree accepted; bounds the exhaustive block search.
pub const MAX_RING_DEGREE: usize = 1 << 20;

/// Why a shape, ring degree, or call was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayoutError {
    /// A dimension that must be positive is zero.
    ZeroDimension {
        /// The shape field that is zero.
        field: &'static str,
    },
    /// A size derived from the shape does not fit in `usize`.
    SizeOverflow {
        /// The field whose derived size overflowed.
        field: &'static str,
    },
    /// The kernel is larger than the padded input along `field`.
    KernelLargerThanInput {
        /// `kernel_height` or `kernel_width`.
        field: &'static str,
        /// The kernel size along that axis.
        kernel: usize,
        /// The input size along that axis plus twice the padding.
        padded_input: usize,
    },
    /// The ring degree is not a power of two (0 included).
    RingDegreeNotPowerOfTwo {
        /// The ring degree given.
        n: usize,
    },
    /// The ring degree exceeds [`MAX_RING_DEGREE`].
    RingDegreeTooLarge {
        /// The ring degree given.
        n: usize,
        /// The limit, [`MAX_RING_DEGREE`].
        max: usize,
    },
    /// `kernel_height` padded rows of `row_width` coefficients do not fit in `n`.
    /// The encoding does not split columns, so the conv needs a larger ring.
    DoesNotFit {
        /// The kernel height: rows one output row reads.
        kernel_height: usize,
        /// The row pitch `Wu` of the encoding, in coefficients.
        row_width: usize,
        /// The ring degree `n`.
        ring_degree: usize,
    },
    /// The weight slice has the wrong length.
    WeightCountMismatch {
        /// Weights the shape implies.
        expected: usize,
        /// Length of the slice given.
        got: usize,
    },
    /// The input slice has the wrong length.
    InputCountMismatch {
        /// Input values the shape implies.
        expected: usize,
        /// Length of the slice given.
        got: usize,
    },
    /// The number of output polynomials given does not match the layout.
    CiphertextCountMismatch {
        /// Output polynomials the layout has.
        expected: usize,
        /// Number given.
        got: usize,
    },
    /// A polynomial does not have `n` coefficients.
    PolynomialLengthMismatch {
        /// The ring degree `n`.
        expected: usize,
        /// Coefficients in the polynomial given.
        got: usize,
    },
    /// An index (`field`) is not below `bound`.
    IndexOutOfRange {
        /// Which index.
        field: &'static str,
        /// Its value.
        index: usize,
        /// The exclusive upper bound it must stay below.
        bound: usize,
    },
    /// A reference computation overflowed `i64`.
    ArithmeticOverflow,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroDimension { field } => write!(f, "`{field}` must be positive, got 0"),
            Self::SizeOverflow { field } => write!(f, "size of `{field}` overflows usize"),
            Self::KernelLargerThanInput {
                field,
                kernel,
                padded_input,
            } => write!(
                f,
                "`{field}` = {kernel} exceeds the padded input size {padded_input}"
            ),
            Self::RingDegreeNotPowerOfTwo { n } => {
                write!(f, "ring degree {n} is not a power of two")
            }
            Self::RingDegreeTooLarge { n, max } => {
                write!(f, "ring degree {n} exceeds the maximum {max}")
            }
            Self::DoesNotFit {
                kernel_height,
                row_width,
                ring_degree,
            } => write!(
                f,
                "{kernel_height} padded rows of width {row_width} do not fit in ring degree \
                 {ring_degree} (columns are not split)"
            ),
            Self::WeightCountMismatch { expected, got } => {
                write!(f, "expected {expected} weights, got {got}")
            }
            Self::InputCountMismatch { expected, got } => {
                write!(f, "expected {expected} input values, got {got}")
            }
            Self::CiphertextCountMismatch { expected, got } => {
                write!(f, "expected {expected} output polynomials, got {got}")
            }
            Self::PolynomialLengthMismatch { expected, got } => {
                write!(
                    f,
                    "expected a polynomial of {expected} coefficients, got {got}"
                )
            }
            Self::IndexOutOfRange {
                field,
                index,
                bound,
            } => write!(f, "`{field}` = {index} is out of range (must be < {bound})"),
            Self::ArithmeticOverflow => write!(f, "reference computation overflowed i64"),
        }
    }
}

impl std::error::Error for LayoutError {}

/// One position of one input value: `x[channel][row][col]` goes to
/// `coefficient` of input ciphertext `ciphertext`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InputPlacement {
    /// Index of the input ciphertext (`0..input_ciphertexts()`).
    pub ciphertext: usize,
    /// Coefficient of that ciphertext's plaintext, in `0..n`.
    pub coefficient: usize,
    /// Input channel of the value (0 for a mat-vec).
    pub channel: usize,
    /// Row of the value in the unpadded input (0 for a mat-vec).
    pub row: usize,
    /// Column of the value in the unpadded input (the vector index for a
    /// mat-vec).
    pub col: usize,
}

impl InputPlacement {
    /// The value's index in the flat (channel, row, column) input of a
    /// conv of `shape`.
    pub fn flat_index(&self, shape: &Conv2dShape) -> usize {
        (self.channel * shape.in_height + self.row) * shape.in_width + self.col
    }
}

fn check_ring_degree(n: usize) -> Result<(), LayoutError> {
    if !n.is_power_of_two() {
        return Err(LayoutError::RingDegreeNotPowerOfTwo { n });
    }
    if n > MAX_RING_DEGREE {
        return Err(LayoutError::RingDegreeTooLarge {
            n,
            max: MAX_RING_DEGREE,
        });
    }
    Ok(())
}

fn nonzero(value: usize, field: &'static str) -> Result<(), LayoutError> {
    if value == 0 {
        Err(LayoutError::ZeroDimension { field })
    } else {
        Ok(())
    }
}

fn product(factors: &[usize], field: &'static str) -> Result<usize, LayoutError> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .ok_or(LayoutError::SizeOverflow { field })
}

fn check_index(index: usize, bound: usize, field: &'static str) -> Result<(), LayoutError> {
    if index < bound {
        Ok(())
    } else {
        Err(LayoutError::IndexOutOfRange {
            field,
            index,
            bound,
        })
    }
}

fn check_weights(expected: usize, got: usize) -> Result<(), LayoutError> {
    if expected == got {
        Ok(())
    } else {
        Err(LayoutError::WeightCountMismatch { expected, got })
    }
}

fn check_inputs(expected: usize, got: usize) -> Result<(), LayoutError> {
    if expected == got {
        Ok(())
    } else {
        Err(LayoutError::InputCountMismatch { expected, got })
    }
}

/// Reads `positions` out of `polys` (one polynomial of `n` coefficients per
/// output ciphertext).
fn decode<T: Copy, P: AsRef<[T]>>(
    positions: &[(usize, usize)],
    ciphertexts: usize,
    n: usize,
    polys: &[P],
) -> Result<Vec<T>, LayoutError> {
    if polys.len() != ciphertexts {
        return Err(LayoutError::CiphertextCountMismatch {
            expected: ciphertexts,
            got: polys.len(),
        });
    }
    if let Some(bad) = polys.iter().find(|p| p.as_ref().len() != n) {
        return Err(LayoutError::PolynomialLengthMismatch {
            expected: n,
            got: bad.as_ref().len(),
        });
    }
    Ok(positions
        .iter()
        .map(|&(ct, coeff)| polys[ct].as_ref()[coeff])
        .collect())
}

/// Whether position `pos` (row or column, local to a block) is inside one of
/// the windows `[i·stride, i·stride + kernel)`, `0 ≤ i < count` (`count ≥ 1`).
fn read_by(pos: usize, count: usize, stride: usize, kernel: usize) -> bool {
    // Of the windows starting at or before `pos`, the last one has the
    // smallest offset, so it contains `pos` if any window does.
    let i = (pos / stride).min(count - 1);
    pos - i * stride < kernel
}

/// Places values into `ciphertexts` zero polynomials of `n` coefficients.
fn encode(
    placements: &[InputPlacement],
    ciphertexts: usize,
    n: usize,
    value: impl Fn(&InputPlacement) -> i64,
) -> Vec<Vec<i64>> {
    let mut polys = vec![vec![0i64; n]; ciphertexts];
    for pl in placements {
        polys[pl.ciphertext][pl.coefficient] = value(pl);
    }
    polys
}

// ---------------------------------------------------------------------------
// Conv2d
// ---------------------------------------------------------------------------

/// Shape of a 2-D convolution (cross-correlation, as in deep-learning
/// frameworks) on a `[in_channels][in_height][in_width]` input with a
/// `[out_channels][in_channels][kernel_height][kernel_width]` kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dShape {
    /// Input channels `C` (≥ 1).
    pub in_channels: usize,
    /// Input height `H` in rows, before padding (≥ 1).
    pub in_height: usize,
    /// Input width `W` in columns, before padding (≥ 1).
    pub in_width: usize,
    /// Output channels `M` (≥ 1).
    pub out_channels: usize,
    /// Kernel height `kh` (≥ 1, at most `H + 2p`).
    pub kernel_height: usize,
    /// Kernel width `kw` (≥ 1, at most `W + 2p`).
    pub kernel_width: usize,
    /// Stride `s`, the same along both axes (≥ 1).
    pub stride: usize,
    /// Zero padding `p` on every side.
    pub padding: usize,
}

/// Sizes derived from a validated [`Conv2dShape`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConvGeometry {
    out_h: usize,
    out_w: usize,
    /// Padded rows actually read: `(out_h − 1)·stride + kernel_height`.
    used_h: usize,
    /// Padded columns actually read, the row pitch of the encoding.
    used_w: usize,
    input_len: usize,
    weight_len: usize,
    output_len: usize,
}

impl Conv2dShape {
    fn geometry(&self) -> Result<ConvGeometry, LayoutError> {
        nonzero(self.in_channels, "in_channels")?;
        nonzero(self.in_height, "in_height")?;
        nonzero(self.in_width, "in_width")?;
        nonzero(self.out_channels, "out_channels")?;
        nonzero(self.kernel_height, "kernel_height")?;
        nonzero(self.kernel_width, "kernel_width")?;
        nonzero(self.stride, "stride")?;
        let pad2 = self
            .padding
            .checked_mul(2)
            .ok_or(LayoutError::SizeOverflow { field: "padding" })?;
        let padded_h = self
            .in_height
            .checked_add(pad2)
            .ok_or(LayoutError::SizeOverflow { field: "in_height" })?;
        let padded_w = self
            .in_width
            .checked_add(pad2)
            .ok_or(LayoutError::SizeOverflow { field: "in_width" })?;
        if self.kernel_height > padded_h {
            return Err(LayoutError::KernelLargerThanInput {
                field: "kernel_height",
                kernel: self.kernel_height,
                padded_input: padded_h,
            });
        }
        if self.kernel_width > padded_w {
            return Err(LayoutError::KernelLargerThanInput {
                field: "kernel_width",
                kernel: self.kernel_width,
                padded_input: padded_w,
            });
        }
        // Both are ≤ padded size − 1, so no overflow below.
        let steps_h = (padded_h - self.kernel_height) / self.stride;
        let steps_w = (padded_w - self.kernel_width) / self.stride;
        let used_h = steps_h * self.stride + self.kernel_height;
        let used_w = steps_w * self.stride + self.kernel_width;
        let out_h = steps_h + 1;
        let out_w = steps_w + 1;
        let input_len = product(&[self.in_channels, self.in_height, self.in_width], "input")?;
        let weight_len = product(
            &[
                self.out_channels,
                self.in_channels,
                self.kernel_height,
                self.kernel_width,
            ],
            "weights",
        )?;
        let output_len = product(&[self.out_channels, out_h, out_w], "output")?;
        Ok(ConvGeometry {
            out_h,
            out_w,
            used_h,
            used_w,
            input_len,
            weight_len,
            output_len,
        })
    }

    /// `(in_height + 2·padding − kernel_height)/stride + 1`, after validation.
    pub fn output_height(&self) -> Result<usize, LayoutError> {
        Ok(self.geometry()?.out_h)
    }

    /// `(in_width + 2·padding − kernel_width)/stride + 1`, after validation.
    pub fn output_width(&self) -> Result<usize, LayoutError> {
        Ok(self.geometry()?.out_w)
    }

    /// Number of input values `C·H·W`.
    pub fn input_len(&self) -> Result<usize, LayoutError> {
        Ok(self.geometry()?.input_len)
    }

    /// Number of weights `M·C·kh·kw`.
    pub fn weight_len(&self) -> Result<usize, LayoutError> {
        Ok(self.geometry()?.weight_len)
    }

    /// Number of output values `M·Ho·Wo`.
    pub fn output_len(&self) -> Result<usize, LayoutError> {
        Ok(self.geometry()?.output_len)
    }
}

/// A validated Conv2d coefficient-encoding plan for one ring degree. See the
/// module documentation for the encoding and its exactness proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conv2dLayout {
    shape: Conv2dShape,
    n: usize,
    geo: ConvGeometry,
    /// `Cb`: input channels per input ciphertext.
    block_channels: usize,
    /// `Hb = (Q − 1)·s + kh`: padded rows per input ciphertext.
    block_rows: usize,
    /// `Q`: output rows per row block.
    out_rows: usize,
    /// `Nc`: channel blocks.
    channel_blocks: usize,
    /// `Nr`: row blocks.
    row_blocks: usize,
    /// `T`: output channels stacked in one output ciphertext.
    stack: usize,
    /// `G`: output-channel groups.
    channel_groups: usize,
    /// `S = Cb·Hb·Wu`: coefficients per input block / per stacked output channel.
    slot: usize,
    /// `O`: offset of the local output (0, 0) in a slot.
    offset: usize,
    input_cts: usize,
    output_cts: usize,
}

/// A candidate of the block search.
#[derive(Debug, Clone, Copy)]
struct ConvChoice {
    /// (input + output ciphertexts, products, input ciphertexts): minimised.
    key: (usize, usize, usize),
    block_channels: usize,
    out_rows: usize,
    row_blocks: usize,
    stack: usize,
    input_cts: usize,
    output_cts: usize,
}

impl Conv2dLayout {
    /// Validates `shape` for ring degree `n` and chooses block sizes (see the
    /// module documentation for the rule).
    pub fn new(shape: Conv2dShape, n: usize) -> Result<Self, LayoutError> {
        Self::with_max_stack(shape, n, usize::MAX)
    }

    /// As [`Conv2dLayout::new`], stacking at most `max_stack` output channels
    /// into one output ciphertext (at least 1). Fewer stacked channels mean
    /// a smaller ‖ŵ‖₁ per output ciphertext (LIN-3), at the cost of more
    /// output ciphertexts.
    pub fn with_max_stack(
        shape: Conv2dShape,
        n: usize,
        max_stack: usize,
    ) -> Result<Self, LayoutError> {
        let geo = shape.geometry()?;
        check_ring_degree(n)?;
        let kh = shape.kernel_height;
        let pitch = geo.used_w;
        let fits = kh.checked_mul(pitch).is_some_and(|need| need <= n);
        if !fits {
            return Err(LayoutError::DoesNotFit {
                kernel_height: kh,
                row_width: pitch,
                ring_degree: n,
            });
        }
        let choice = Self::choose(&shape, &geo, n, max_stack.max(1))?;
        Ok(Self::from_choice(shape, n, geo, &choice))
    }

    /// ENG-9: the best `Q` for each number of channel blocks, at the
    /// smallest `Cb` (channels per input ciphertext) giving it (a larger
    /// one only pads: a longer slot, fewer stacked outputs), for a caller
    /// that prices layouts by more than ciphertext counts; among them
    /// [`Conv2dLayout::with_max_stack`]'s choice. Empty where that fails.
    pub(crate) fn block_alternatives(shape: Conv2dShape, n: usize, max_stack: usize) -> Vec<Self> {
        let Ok(geo) = shape.geometry() else {
            return Vec::new();
        };
        let kh = shape.kernel_height;
        if check_ring_degree(n).is_err() || kh.checked_mul(geo.used_w).is_none_or(|need| need > n) {
            return Vec::new();
        }
        let c = shape.in_channels;
        let max_cb = c.min(n / (kh * geo.used_w));
        let mut widths: Vec<usize> = (1..=c)
            .map(|blocks| c.div_ceil(blocks))
            .filter(|&cb| cb <= max_cb)
            .collect();
        widths.dedup();
        widths
            .into_iter()
            .filter_map(|cb| Self::choose_with(&shape, &geo, n, max_stack.max(1), cb..=cb).ok())
            .map(|choice| Self::from_choice(shape, n, geo, &choice))
            .collect()
    }

    fn from_choice(shape: Conv2dShape, n: usize, geo: ConvGeometry, choice: &ConvChoice) -> Self {
        let kh = shape.kernel_height;
        let pitch = geo.used_w;
        let cb = choice.block_channels;
        // All products below are ≤ n because cb·hb·pitch ≤ n.
        let hb = (choice.out_rows - 1) * shape.stride + kh;
        let slot = cb * hb * pitch;
        let offset = (cb - 1) * hb * pitch + (kh - 1) * pitch + (shape.kernel_width - 1);
        Self {
            shape,
            n,
            geo,
            block_channels: cb,
            block_rows: hb,
            out_rows: choice.out_rows,
            channel_blocks: shape.in_channels.div_ceil(cb),
            row_blocks: choice.row_blocks,
            stack: choice.stack,
            channel_groups: shape.out_channels.div_ceil(choice.stack),
            slot,
            offset,
            input_cts: choice.input_cts,
            output_cts: choice.output_cts,
        }
    }

    /// Exhaustive search over `(Cb, Q)`; requires `kh·Wu ≤ n`.
    fn choose(
        shape: &Conv2dShape,
        geo: &ConvGeometry,
        n: usize,
        max_stack: usize,
    ) -> Result<ConvChoice, LayoutError> {
        let max_cb = shape
            .in_channels
            .min(n / (shape.kernel_height * geo.used_w));
        Self::choose_with(shape, geo, n, max_stack, 1..=max_cb)
    }

    /// The search over `Q` for every `Cb` in `channels` (each at most
    /// `n / (kh·Wu)`).
    fn choose_with(
        shape: &Conv2dShape,
        geo: &ConvGeometry,
        n: usize,
        max_stack: usize,
        channels: std::ops::RangeInclusive<usize>,
    ) -> Result<ConvChoice, LayoutError> {
        let (kh, s) = (shape.kernel_height, shape.stride);
        let pitch = geo.used_w;
        let out_ch = shape.out_channels;
        let mut best: Option<ConvChoice> = None;
        for cb in channels {
            let channel_blocks = shape.in_channels.div_ceil(cb);
            // cb·kh·pitch ≤ n, hence max_hb ≥ kh and max_q ≥ 1.
            let max_hb = n / (cb * pitch);
            let max_q = geo.out_h.min((max_hb - kh) / s + 1);
            for q in 1..=max_q {
                // hb ≤ max_hb, so cb·hb·pitch ≤ n.
                let hb = (q - 1) * s + kh;
                let row_blocks = geo.out_h.div_ceil(q);
                let stack = out_ch.min(n / (cb * hb * pitch)).min(max_stack);
                let groups = out_ch.div_ceil(stack);
                let (Some(input_cts), Some(output_cts)) = (
                    channel_blocks.checked_mul(row_blocks),
                    groups.checked_mul(row_blocks),
                ) else {
                    continue;
                };
                let Some(total) = input_cts.checked_add(output_cts) else {
                    continue;
                };
                let key = (total, input_cts.saturating_mul(groups), input_cts);
                if best.is_none_or(|b| key < b.key) {
                    best = Some(ConvChoice {
                        key,
                        block_channels: cb,
                        out_rows: q,
                        row_blocks,
                        stack,
                        input_cts,
                        output_cts,
                    });
                }
            }
        }
        best.ok_or(LayoutError::SizeOverflow {
            field: "ciphertexts",
        })
    }

    /// The validated shape.
    pub fn shape(&self) -> &Conv2dShape {
        &self.shape
    }

    /// The ring degree `n` (polynomial length).
    pub fn ring_degree(&self) -> usize {
        self.n
    }

    /// `Cb`: input channels per input ciphertext.
    pub fn block_channels(&self) -> usize {
        self.block_channels
    }

    /// `Hb`: padded input rows per input ciphertext. Blocks start `Q·s` rows
    /// apart, so they overlap by `kh − s` rows (`kh − 1` for stride 1).
    pub fn block_rows(&self) -> usize {
        self.block_rows
    }

    /// `Q`: output rows computed per row block.
    pub fn output_rows_per_block(&self) -> usize {
        self.out_rows
    }

    /// `Nc`: number of channel blocks.
    pub fn channel_blocks(&self) -> usize {
        self.channel_blocks
    }

    /// `Nr`: number of row blocks.
    pub fn row_blocks(&self) -> usize {
        self.row_blocks
    }

    /// `T`: output channels stacked in one output ciphertext.
    pub fn output_channels_per_ciphertext(&self) -> usize {
        self.stack
    }

    /// `Wu`: the row pitch (padded columns actually used).
    pub fn row_pitch(&self) -> usize {
        self.geo.used_w
    }

    /// `Ho`: output rows.
    pub fn output_height(&self) -> usize {
        self.geo.out_h
    }

    /// `Wo`: output columns.
    pub fn output_width(&self) -> usize {
        self.geo.out_w
    }

    /// Number of input ciphertexts (indices `0..input_ciphertexts()`).
    pub fn input_ciphertexts(&self) -> usize {
        self.input_cts
    }

    /// Number of output ciphertexts (indices `0..output_ciphertexts()`).
    pub fn output_ciphertexts(&self) -> usize {
        self.output_cts
    }

    /// Every (ciphertext, coefficient) where an input value must be placed,
    /// ordered by ciphertext, then channel, row, column. A value is listed
    /// once for each row block in which some output reads it (for stride 1,
    /// blocks overlap by `kh − 1` rows, so such values appear in several
    /// input ciphertexts, never twice in one). Zero
    /// padding and values no output of the block reads (trailing rows and
    /// columns, gaps when `stride > kernel`) are not listed; they hold 0.
    pub fn input_placements(&self) -> Vec<InputPlacement> {
        let s = &self.shape;
        let p = s.padding;
        let pitch = self.geo.used_w;
        // Padded columns holding real values: [p, min(pitch, p + W)).
        let col_end = pitch.min(p.saturating_add(s.in_width));
        let mut out = Vec::new();
        for rb in 0..self.row_blocks {
            // rb·Q ≤ Ho − 1, so start ≤ (Ho − 1)·s and start + rows_here ≤ Hu.
            let start = rb * self.out_rows * s.stride;
            let outs_here = self.out_rows.min(self.geo.out_h - rb * self.out_rows);
            let rows_here = (outs_here - 1) * s.stride + s.kernel_height;
            for cbk in 0..self.channel_blocks {
                let ciphertext = rb * self.channel_blocks + cbk;
                let first_channel = cbk * self.block_channels;
                let channels_here = self.block_channels.min(s.in_channels - first_channel);
                for c in 0..channels_here {
                    for li in 0..rows_here {
                        let pr = start + li;
                        let real = pr >= p && pr - p < s.in_height;
                        if !real || !read_by(li, outs_here, s.stride, s.kernel_height) {
                            continue;
                        }
                        for col in p..col_end {
                            if !read_by(col, self.geo.out_w, s.stride, s.kernel_width) {
                                continue;
                            }
                            out.push(InputPlacement {
                                ciphertext,
                                coefficient: (c * self.block_rows + li) * pitch + col,
                                channel: first_channel + c,
                                row: pr - p,
                                col: col - p,
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// Builds the `input_ciphertexts()` plaintext polynomials (length `n`) from
    /// `input` in `[in_channels][in_height][in_width]` row-major order.
    pub fn encode_input(&self, input: &[i64]) -> Result<Vec<Vec<i64>>, LayoutError> {
        check_inputs(self.geo.input_len, input.len())?;
        let (h, w) = (self.shape.in_height, self.shape.in_width);
        Ok(encode(
            &self.input_placements(),
            self.input_cts,
            self.n,
            |pl| input[(pl.channel * h + pl.row) * w + pl.col],
        ))
    }

    /// `(ciphertext, coefficient)` of output `y[o][i][j]`.
    pub fn output_position(
        &self,
        o: usize,
        i: usize,
        j: usize,
    ) -> Result<(usize, usize), LayoutError> {
        check_index(o, self.shape.out_channels, "o")?;
        check_index(i, self.geo.out_h, "i")?;
        check_index(j, self.geo.out_w, "j")?;
        let s = self.shape.stride;
        let (rb, local_out_row) = (i / self.out_rows, i % self.out_rows);
        let (g, t) = (o / self.stack, o % self.stack);
        let ciphertext = rb * self.channel_groups + g;
        // Local stride-1 row (i mod Q)·s ≤ Hb − kh and column j·s ≤ Wu − kw,
        // so the coefficient is < T·S ≤ n (see the module docs).
        let coefficient = t * self.slot + self.offset + local_out_row * s * self.geo.used_w + j * s;
        Ok((ciphertext, coefficient))
    }

    /// All output positions in `(o, i, j)` row-major order.
    pub fn output_positions(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for o in 0..self.shape.out_channels {
            for i in 0..self.geo.out_h {
                for j in 0..self.geo.out_w {
                    if let Ok(pos) = self.output_position(o, i, j) {
                        out.push(pos);
                    }
                }
            }
        }
        out
    }

    /// Reads the outputs (in `(o, i, j)` order) from the decrypted output
    /// polynomials, one per output ciphertext.
    pub fn decode_output<T: Copy, P: AsRef<[T]>>(
        &self,
        polys: &[P],
    ) -> Result<Vec<T>, LayoutError> {
        decode(&self.output_positions(), self.output_cts, self.n, polys)
    }

    /// The input ciphertexts that contribute to `output_ct` (those for which
    /// [`Self::weight_polynomial`] returns `Some`).
    pub fn input_ciphertexts_for_output(
        &self,
        output_ct: usize,
    ) -> Result<Range<usize>, LayoutError> {
        check_index(output_ct, self.output_cts, "output_ct")?;
        let rb = output_ct / self.channel_groups;
        let start = rb * self.channel_blocks;
        Ok(start..start + self.channel_blocks)
    }

    /// The weight polynomial (length `n`) by which input ciphertext `input_ct`
    /// is multiplied to contribute to output ciphertext `output_ct`, or `None`
    /// if the pair does not interact (different row blocks). `weights` is in
    /// `[out_channels][in_channels][kernel_height][kernel_width]` row-major order.
    pub fn weight_polynomial(
        &self,
        weights: &[i64],
        output_ct: usize,
        input_ct: usize,
    ) -> Result<Option<Vec<i64>>, LayoutError> {
        check_weights(self.geo.weight_len, weights.len())?;
        check_index(output_ct, self.output_cts, "output_ct")?;
        check_index(input_ct, self.input_cts, "input_ct")?;
        let (rb_out, g) = (
            output_ct / self.channel_groups,
            output_ct % self.channel_groups,
        );
        let (rb_in, cbk) = (
            input_ct / self.channel_blocks,
            input_ct % self.channel_blocks,
        );
        if rb_out != rb_in {
            return Ok(None);
        }
        let s = &self.shape;
        let (kh, kw, pitch) = (s.kernel_height, s.kernel_width, self.geo.used_w);
        let first_channel = cbk * self.block_channels;
        let channels_here = self.block_channels.min(s.in_channels - first_channel);
        let first_out = g * self.stack;
        let outs_here = self.stack.min(s.out_channels - first_out);
        let mut poly = vec![0i64; self.n];
        for t in 0..outs_here {
            let o = first_out + t;
            let base = t * self.slot + self.offset;
            for c in 0..channels_here {
                let w_base = (o * s.in_channels + first_channel + c) * kh * kw;
                for k in 0..kh {
                    for l in 0..kw {
                        // Exponent ≥ t·S ≥ 0 since c·Hb·Wu + k·Wu + l ≤ O.
                        let e = base - (c * self.block_rows + k) * pitch - l;
                        poly[e] = weights[w_base + k * kw + l];
                    }
                }
            }
        }
        Ok(Some(poly))
    }
}

/// Direct integer Conv2d (the oracle): `input` in `[C][H][W]`, `weights` in
/// `[M][C][kh][kw]` row-major order; returns `[M][Ho][Wo]`.
///
/// Exact: where max |x| · max_o Σ|w_o| fits an `i64`, no partial sum can
/// leave it, so the sums run in `i64` tap by tap over whole output rows
/// (the compile's self-check and the plaintext baseline run this on whole
/// models); otherwise every product and sum is checked in `i128`, and a
/// result outside `i64` is [`LayoutError::ArithmeticOverflow`].
pub fn conv2d_reference(
    shape: &Conv2dShape,
    input: &[i64],
    weights: &[i64],
) -> Result<Vec<i64>, LayoutError> {
    let geo = shape.geometry()?;
    check_inputs(geo.input_len, input.len())?;
    check_weights(geo.weight_len, weights.len())?;
    let max_x = u128::from(input.iter().map(|x| x.unsigned_abs()).max().unwrap_or(0));
    let per_output = shape.in_channels * shape.kernel_height * shape.kernel_width;
    let max_l1 = weights
        .chunks(per_output.max(1))
        .map(|w| w.iter().map(|x| u128::from(x.unsigned_abs())).sum::<u128>())
        .max()
        .unwrap_or(0);
    if max_x.saturating_mul(max_l1) <= i64::MAX as u128 {
        Ok(conv2d_in_i64(shape, &geo, input, weights))
    } else {
        conv2d_checked(shape, &geo, input, weights)
    }
}

/// [`conv2d_reference`] where no partial sum can leave `i64`: for each
/// weight, its products added to the output rows it reaches.
fn conv2d_in_i64(
    shape: &Conv2dShape,
    geo: &ConvGeometry,
    input: &[i64],
    weights: &[i64],
) -> Vec<i64> {
    let (c_in, h, w) = (shape.in_channels, shape.in_height, shape.in_width);
    let (kh, kw, s, p) = (
        shape.kernel_height,
        shape.kernel_width,
        shape.stride,
        shape.padding,
    );
    let (out_h, out_w) = (geo.out_h, geo.out_w);
    // Output j reads padded column j·s + l, the input column j·s + l − p
    // when that is in 0..w: j in lo(l)..hi(l).
    let columns = |l: usize| {
        let lo = p.saturating_sub(l).div_ceil(s);
        let hi = if p + w > l {
            ((p + w - 1 - l) / s + 1).min(out_w)
        } else {
            0
        };
        (lo, hi.max(lo))
    };
    let mut out = vec![0i64; geo.output_len];
    for o in 0..shape.out_channels {
        let plane = &mut out[o * out_h * out_w..(o + 1) * out_h * out_w];
        for c in 0..c_in {
            for k in 0..kh {
                for l in 0..kw {
                    let wt = weights[((o * c_in + c) * kh + k) * kw + l];
                    if wt == 0 {
                        continue;
                    }
                    let (lo, hi) = columns(l);
                    for i in 0..out_h {
                        let pr = i * s + k;
                        if pr < p || pr - p >= h {
                            continue;
                        }
                        let row = &input[(c * h + pr - p) * w..][..w];
                        let dst = &mut plane[i * out_w..(i + 1) * out_w];
                        for j in lo..hi {
                            dst[j] += wt * row[j * s + l - p];
                        }
                    }
                }
            }
        }
    }
    out
}

/// [`conv2d_reference`] with every product and sum checked in `i128`.
fn conv2d_checked(
    shape: &Conv2dShape,
    geo: &ConvGeometry,
    input: &[i64],
    weights: &[i64],
) -> Result<Vec<i64>, LayoutError> {
    let (c_in, h, w) = (shape.in_channels, shape.in_height, shape.in_width);
    let (kh, kw, s, p) = (
        shape.kernel_height,
        shape.kernel_width,
        shape.stride,
        shape.padding,
    );
    let mut out = Vec::with_capacity(geo.output_len);
    for o in 0..shape.out_channels {
        for i in 0..geo.out_h {
            for j in 0..geo.out_w {
                let mut acc: i128 = 0;
                for c in 0..c_in {
                    for k in 0..kh {
                        let pr = i * s + k;
                        if pr < p || pr - p >= h {
                            continue;
                        }
                        for l in 0..kw {
                            let pc = j * s + l;
                            if pc < p || pc - p >= w {
                                continue;
                            }
                            let x = input[(c * h + pr - p) * w + pc - p];
                            let wt = weights[((o * c_in + c) * kh + k) * kw + l];
                            acc = acc
                                .checked_add(i128::from(x) * i128::from(wt))
                                .ok_or(LayoutError::ArithmeticOverflow)?;
                        }
                    }
                }
                out.push(i64::try_from(acc).map_err(|_| LayoutError::ArithmeticOverflow)?);
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Strided convs over their input's phases (ENG-13)
// ---------------------------------------------------------------------------

/// ENG-13: a strided conv (stride s ≥ 2) as a stride-1 conv over its
/// input's s² phases: phase (α, β) of channel c is the image
/// `X[c, α, β][r, t] = x[c, s·r + α, s·t + β]` (0 past the input), a
/// channel of its own, ⌈H/s⌉ × ⌈W/s⌉. Writing a kernel tap u − p as
/// s·a + α, the strided output `y[i] = Σ_u w[u]·x[s·i + u − p]` reads
/// `X[α][i + a]`: a stride-1 conv with padding p' = ⌈p/s⌉ and tap
/// t = a + p' carrying `w[s·(t − p') + α + p]` (0 where that is not a tap).
/// Its kernel is sized so that it has exactly the strided conv's outputs;
/// every weight appears once, so the sums are the same bit for bit
/// (proofs/pool-folding.md, "Strided convs over their phases").
///
/// A layout of the phase form has every output position densely, where a
/// strided layout computes the stride-1 conv and keeps 1 in s² of its
/// positions; which one a stage takes is priced (ENG-13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseSplit {
    strided: Conv2dShape,
    phases: Conv2dShape,
}

/// One axis of a [`PhaseSplit`]: (phase length ⌈len/s⌉, padding p',
/// kernel k''), or `None` when the phase form cannot have the strided
/// conv's `out` outputs with a kernel that holds every tap.
fn phase_axis(
    len: usize,
    kernel: usize,
    s: usize,
    p: usize,
    out: usize,
) -> Option<(usize, usize, usize)> {
    let len2 = len.div_ceil(s);
    let pad2 = p.div_ceil(s);
    // The last tap's phase offset a = ⌊(k − 1 − p)/s⌋ sits at t = a + p'.
    let last = (kernel as i64 - 1 - p as i64).div_euclid(s as i64) + pad2 as i64;
    let kernel2 = (len2 + 2 * pad2 + 1).checked_sub(out)?;
    (last >= 0 && kernel2 as i64 > last).then_some((len2, pad2, kernel2))
}

impl PhaseSplit {
    /// The phase form of `strided`; `None` for stride 1, an invalid shape,
    /// or (not met by usual convs) a kernel that would not fit.
    pub fn new(strided: Conv2dShape) -> Option<Self> {
        let geo = strided.geometry().ok()?;
        let s = strided.stride;
        if s < 2 {
            return None;
        }
        let p = strided.padding;
        let (h, pad_h, kh) = phase_axis(strided.in_height, strided.kernel_height, s, p, geo.out_h)?;
        let (w, pad_w, kw) = phase_axis(strided.in_width, strided.kernel_width, s, p, geo.out_w)?;
        debug_assert_eq!(pad_h, pad_w);
        let phases = Conv2dShape {
            in_channels: strided.in_channels.checked_mul(s * s)?,
            in_height: h,
            in_width: w,
            out_channels: strided.out_channels,
            kernel_height: kh,
            kernel_width: kw,
            stride: 1,
            padding: pad_h,
        };
        let g = phases.geometry().ok()?;
        (g.out_h == geo.out_h && g.out_w == geo.out_w).then_some(Self { strided, phases })
    }

    /// The conv as stated (stride s).
    pub fn strided(&self) -> &Conv2dShape {
        &self.strided
    }

    /// The stride-1 conv over the phases: s²·C channels, phase c·s² + α·s + β.
    pub fn phases(&self) -> &Conv2dShape {
        &self.phases
    }

    /// The phase form's weights (OIHW) from the strided conv's.
    pub fn weights(&self, weights: &[i64]) -> Result<Vec<i64>, LayoutError> {
        let (a, b) = (&self.strided, &self.phases);
        check_weights(a.geometry()?.weight_len, weights.len())?;
        let s = a.stride as i64;
        let shift = a.padding as i64 - b.padding as i64 * s;
        let (kh, kw) = (b.kernel_height, b.kernel_width);
        let mut out = vec![0i64; b.geometry()?.weight_len];
        for o in 0..a.out_channels {
            for c2 in 0..b.in_channels {
                let (c, alpha, beta) = self.phase_of(c2);
                for t in 0..kh {
                    let u = s * t as i64 + alpha as i64 + shift;
                    if !(0..a.kernel_height as i64).contains(&u) {
                        continue;
                    }
                    for v in 0..kw {
                        let x = s * v as i64 + beta as i64 + shift;
                        if !(0..a.kernel_width as i64).contains(&x) {
                            continue;
                        }
                        let from = ((o * a.in_channels + c) * a.kernel_height + u as usize)
                            * a.kernel_width
                            + x as usize;
                        out[((o * b.in_channels + c2) * kh + t) * kw + v] = weights[from];
                    }
                }
            }
        }
        Ok(out)
    }

    /// (channel c, row phase α, column phase β) of phase channel `c2`.
    fn phase_of(&self, c2: usize) -> (usize, usize, usize) {
        let s = self.strided.stride;
        (c2 / (s * s), (c2 / s) % s, c2 % s)
    }

    /// The strided conv's flat input index that the phase form's input
    /// `k` holds, or `None` for a phase position past the input (a 0).
    pub fn source(&self, k: usize) -> Option<usize> {
        let (a, b) = (&self.strided, &self.phases);
        let (col, rest) = (k % b.in_width, k / b.in_width);
        let (row, c2) = (rest % b.in_height, rest / b.in_height);
        let (c, alpha, beta) = self.phase_of(c2);
        let (y, x) = (a.stride * row + alpha, a.stride * col + beta);
        (c < a.in_channels && y < a.in_height && x < a.in_width)
            .then(|| (c * a.in_height + y) * a.in_width + x)
    }

    /// The phase form's input from the strided conv's.
    pub fn gather(&self, input: &[i64]) -> Result<Vec<i64>, LayoutError> {
        check_inputs(self.strided.geometry()?.input_len, input.len())?;
        Ok((0..self.phases.geometry()?.input_len)
            .map(|k| self.source(k).map_or(0, |i| input[i]))
            .collect())
    }
}

// ---------------------------------------------------------------------------
// Matrix–vector product
// ---------------------------------------------------------------------------

/// `y = W·x` with `W` of `rows × cols`, stored row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatVecShape {
    /// Outputs: rows of `W` (≥ 1).
    pub rows: usize,
    /// Inputs: columns of `W`, the length of `x` (≥ 1).
    pub cols: usize,
}

impl MatVecShape {
    /// Number of weights `rows·cols`, after validation.
    pub fn weight_len(&self) -> Result<usize, LayoutError> {
        nonzero(self.rows, "rows")?;
        nonzero(self.cols, "cols")?;
        product(&[self.rows, self.cols], "weights")
    }
}

/// A validated matrix–vector coefficient-encoding plan for one ring degree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatVecLayout {
    shape: MatVecShape,
    n: usize,
    weight_len: usize,
    /// `ni`: input values per input ciphertext.
    block_cols: usize,
    /// `no`: output rows per output ciphertext.
    block_rows: usize,
    input_cts: usize,
    output_cts: usize,
}

impl MatVecLayout {
    /// Validates `shape` for ring degree `n` and chooses block sizes (see the
    /// module documentation for the rule).
    pub fn new(shape: MatVecShape, n: usize) -> Result<Self, LayoutError> {
        Self::with_max_rows(shape, n, usize::MAX)
    }

    /// As [`MatVecLayout::new`], with at most `max_rows` output rows per
    /// output ciphertext (at least 1): a smaller ‖ŵ‖₁ per output
    /// ciphertext (LIN-3), at the cost of more output ciphertexts.
    pub fn with_max_rows(
        shape: MatVecShape,
        n: usize,
        max_rows: usize,
    ) -> Result<Self, LayoutError> {
        let weight_len = shape.weight_len()?;
        check_ring_degree(n)?;
        // (total, products, ni, no, inputs, outputs)
        let mut best: Option<(usize, usize, usize, usize, usize, usize)> = None;
        for ni in 1..=shape.cols.min(n) {
            let no = shape.rows.min(n / ni).min(max_rows.max(1));
            let inputs = shape.cols.div_ceil(ni);
            let outputs = shape.rows.div_ceil(no);
            // inputs·outputs ≤ rows·cols, which is representable; the sum
            // saturates instead of overflowing for astronomically many blocks.
            let key = (inputs.saturating_add(outputs), inputs * outputs);
            if best.is_none_or(|b| key < (b.0, b.1)) {
                best = Some((key.0, key.1, ni, no, inputs, outputs));
            }
        }
        let (_, _, block_cols, block_rows, input_cts, output_cts) =
            best.ok_or(LayoutError::ZeroDimension { field: "cols" })?;
        Ok(Self {
            shape,
            n,
            weight_len,
            block_cols,
            block_rows,
            input_cts,
            output_cts,
        })
    }

    /// The validated shape.
    pub fn shape(&self) -> &MatVecShape {
        &self.shape
    }

    /// The ring degree `n` (polynomial length).
    pub fn ring_degree(&self) -> usize {
        self.n
    }

    /// `ni`: input values per input ciphertext.
    pub fn block_cols(&self) -> usize {
        self.block_cols
    }

    /// `no`: output rows per output ciphertext.
    pub fn block_rows(&self) -> usize {
        self.block_rows
    }

    /// Number of input ciphertexts (indices `0..input_ciphertexts()`).
    pub fn input_ciphertexts(&self) -> usize {
        self.input_cts
    }

    /// Number of output ciphertexts (indices `0..output_ciphertexts()`).
    pub fn output_ciphertexts(&self) -> usize {
        self.output_cts
    }

    /// Where each `x[j]` goes (`channel = row = 0`, `col = j`), in `j` order;
    /// each value is placed exactly once.
    pub fn input_placements(&self) -> Vec<InputPlacement> {
        (0..self.shape.cols)
            .map(|j| InputPlacement {
                ciphertext: j / self.block_cols,
                coefficient: j % self.block_cols,
                channel: 0,
                row: 0,
                col: j,
            })
            .collect()
    }

    /// Builds the `input_ciphertexts()` plaintext polynomials (length `n`).
    pub fn encode_input(&self, input: &[i64]) -> Result<Vec<Vec<i64>>, LayoutError> {
        check_inputs(self.shape.cols, input.len())?;
        Ok(encode(
            &self.input_placements(),
            self.input_cts,
            self.n,
            |pl| input[pl.col],
        ))
    }

    /// `(ciphertext, coefficient)` of output `y[i]`.
    pub fn output_position(&self, i: usize) -> Result<(usize, usize), LayoutError> {
        check_index(i, self.shape.rows, "i")?;
        let ni = self.block_cols;
        Ok((i / self.block_rows, (i % self.block_rows) * ni + ni - 1))
    }

    /// All output positions in row order.
    pub fn output_positions(&self) -> Vec<(usize, usize)> {
        (0..self.shape.rows)
            .filter_map(|i| self.output_position(i).ok())
            .collect()
    }

    /// Reads the outputs (in row order) from the decrypted output polynomials.
    pub fn decode_output<T: Copy, P: AsRef<[T]>>(
        &self,
        polys: &[P],
    ) -> Result<Vec<T>, LayoutError> {
        decode(&self.output_positions(), self.output_cts, self.n, polys)
    }

    /// The weight polynomial (length `n`) for the pair; every pair interacts,
    /// so this is `Some` for all valid indices. `weights` is row-major.
    pub fn weight_polynomial(
        &self,
        weights: &[i64],
        output_ct: usize,
        input_ct: usize,
    ) -> Result<Option<Vec<i64>>, LayoutError> {
        check_weights(self.weight_len, weights.len())?;
        check_index(output_ct, self.output_cts, "output_ct")?;
        check_index(input_ct, self.input_cts, "input_ct")?;
        let (ni, no) = (self.block_cols, self.block_rows);
        let (first_row, first_col) = (output_ct * no, input_ct * ni);
        let rows_here = no.min(self.shape.rows - first_row);
        let cols_here = ni.min(self.shape.cols - first_col);
        let mut poly = vec![0i64; self.n];
        for i in 0..rows_here {
            let row = &weights[(first_row + i) * self.shape.cols + first_col..][..cols_here];
            for (j, &w) in row.iter().enumerate() {
                poly[i * ni + ni - 1 - j] = w;
            }
        }
        Ok(Some(poly))
    }
}

/// Direct integer matrix–vector product (the oracle): `input` has `cols`
/// values, `weights` is `rows × cols` row-major.
pub fn matvec_reference(
    shape: &MatVecShape,
    input: &[i64],
    weights: &[i64],
) -> Result<Vec<i64>, LayoutError> {
    let weight_len = shape.weight_len()?;
    check_inputs(shape.cols, input.len())?;
    check_weights(weight_len, weights.len())?;
    weights
        .chunks_exact(shape.cols)
        .map(|row| {
            let acc = row.iter().zip(input).try_fold(0i128, |acc, (&w, &x)| {
                acc.checked_add(i128::from(w) * i128::from(x))
            });
            acc.and_then(|a| i64::try_from(a).ok())
                .ok_or(LayoutError::ArithmeticOverflow)
        })
        .collect()
}

/// ENG-9: `poly`, a polynomial of `Z[Y]/(Y^n' + 1)`, mapped into
/// `Z[X]/(X^N + 1)` by `Y ↦ X^dilation`, `N = n'·dilation`: coefficient `j`
/// moves to `dilation·j`, every other coefficient is zero. The map is an
/// injective ring homomorphism (`(X^dilation)^n' = X^N = −1`), so a layout
/// built for ring degree `n'` computes the same values at `N` with every
/// position multiplied by `dilation` (proofs/pool-folding.md, "Dilated
/// layouts"). `dilation` 1 returns `poly` as is; 0 is treated as 1.
pub fn dilate_polynomial(poly: &[i64], dilation: usize) -> Vec<i64> {
    let dilation = dilation.max(1);
    let mut out = vec![0i64; poly.len() * dilation];
    for (j, &c) in poly.iter().enumerate() {
        out[j * dilation] = c;
    }
    out
}

/// Schoolbook product in `Z[X]/(X^n + 1)` with `n = max(a.len(), b.len())`
/// (the shorter operand is zero-extended). **Reference only** (for tests and
/// debugging): `O(n²)`, and sums wrap silently on `i128` overflow, which cannot
/// happen for `n·max|a|·max|b| < 2^127`.
pub fn negacyclic_mul(a: &[i64], b: &[i64]) -> Vec<i128> {
    let n = a.len().max(b.len());
    let mut out = vec![0i128; n];
    for (i, &ai) in a.iter().enumerate() {
        // Skipping zeros keeps sparse test inputs cheap.
        if ai == 0 {
            continue;
        }
        for (j, &bj) in b.iter().enumerate() {
            let prod = i128::from(ai) * i128::from(bj);
            let e = i + j;
            if e < n {
                out[e] = out[e].wrapping_add(prod);
            } else {
                // X^n = −1.
                out[e - n] = out[e - n].wrapping_sub(prod);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    /// Input polynomials built from placements only (independent of `encode`).
    fn polys_from_placements(
        placements: &[InputPlacement],
        ciphertexts: usize,
        n: usize,
        value: impl Fn(&InputPlacement) -> i64,
    ) -> Vec<Vec<i64>> {
        let mut polys = vec![vec![0i64; n]; ciphertexts];
        for pl in placements {
            polys[pl.ciphertext][pl.coefficient] = value(pl);
        }
        polys
    }

    /// The homomorphic side in the clear: out_k = Σ_m x̂_m · ŵ_{k,m}.
    fn simulate(
        inputs: &[Vec<i64>],
        output_cts: usize,
        n: usize,
        weight_poly: impl Fn(usize, usize) -> Result<Option<Vec<i64>>, LayoutError>,
    ) -> Vec<Vec<i128>> {
        (0..output_cts)
            .map(|k| {
                let mut acc = vec![0i128; n];
                for (m, x) in inputs.iter().enumerate() {
                    if let Some(w) = weight_poly(k, m).unwrap() {
                        assert_eq!(w.len(), n);
                        for (a, p) in acc.iter_mut().zip(negacyclic_mul(x, &w)) {
                            *a += p;
                        }
                    }
                }
                acc
            })
            .collect()
    }

    fn read(outputs: &[Vec<i128>], positions: &[(usize, usize)]) -> Vec<i128> {
        positions.iter().map(|&(ct, c)| outputs[ct][c]).collect()
    }

    fn conv_shape(
        c: usize,
        h: usize,
        w: usize,
        m: usize,
        k: (usize, usize),
        s: usize,
        p: usize,
    ) -> Conv2dShape {
        Conv2dShape {
            in_channels: c,
            in_height: h,
            in_width: w,
            out_channels: m,
            kernel_height: k.0,
            kernel_width: k.1,
            stride: s,
            padding: p,
        }
    }

    // A conv layout places every input value once: the flat indices of its
    // placements are 0..input_len, each once, and decode to the
    // placement's (channel, row, column).
    #[test]
    fn placements_flat_indices_cover_the_input_once() {
        for (shape, n) in [
            (conv_shape(3, 5, 7, 4, (3, 3), 1, 1), 256),
            (conv_shape(16, 32, 32, 16, (3, 3), 1, 1), 4096),
        ] {
            let layout = Conv2dLayout::new(shape, n).unwrap();
            let mut seen = vec![false; shape.input_len().unwrap()];
            for p in layout.input_placements() {
                let k = p.flat_index(&shape);
                assert!(!std::mem::replace(&mut seen[k], true), "index {k} twice");
                let (plane, col) = (k / shape.in_width, k % shape.in_width);
                assert_eq!(
                    (plane / shape.in_height, plane % shape.in_height, col),
                    (p.channel, p.row, p.col)
                );
            }
            assert!(seen.iter().all(|&s| s), "a value placed by no one");
        }
    }

    /// Runs the full encode → multiply → extract pipeline and returns the
    /// extracted outputs next to the reference.
    fn conv_pipeline(
        layout: &Conv2dLayout,
        input: &[i64],
        weights: &[i64],
    ) -> (Vec<i128>, Vec<i128>) {
        let s = layout.shape();
        let (h, w) = (s.in_height, s.in_width);
        let polys = polys_from_placements(
            &layout.input_placements(),
            layout.input_ciphertexts(),
            layout.ring_degree(),
            |pl| input[(pl.channel * h + pl.row) * w + pl.col],
        );
        assert_eq!(layout.encode_input(input).unwrap(), polys);
        let outs = simulate(
            &polys,
            layout.output_ciphertexts(),
            layout.ring_degree(),
            |k, m| layout.weight_polynomial(weights, k, m),
        );
        let got = read(&outs, &layout.output_positions());
        assert_eq!(layout.decode_output(&outs).unwrap(), got);
        let want = conv2d_reference(s, input, weights)
            .unwrap()
            .into_iter()
            .map(i128::from)
            .collect();
        (got, want)
    }

    fn matvec_pipeline(
        layout: &MatVecLayout,
        input: &[i64],
        weights: &[i64],
    ) -> (Vec<i128>, Vec<i128>) {
        let polys = polys_from_placements(
            &layout.input_placements(),
            layout.input_ciphertexts(),
            layout.ring_degree(),
            |pl| input[pl.col],
        );
        assert_eq!(layout.encode_input(input).unwrap(), polys);
        let outs = simulate(
            &polys,
            layout.output_ciphertexts(),
            layout.ring_degree(),
            |k, m| layout.weight_polynomial(weights, k, m),
        );
        let got = read(&outs, &layout.output_positions());
        assert_eq!(layout.decode_output(&outs).unwrap(), got);
        let want = matvec_reference(layout.shape(), input, weights)
            .unwrap()
            .into_iter()
            .map(i128::from)
            .collect();
        (got, want)
    }

    /// Row pitch computed independently of the module: last padded column
    /// read by a strided output, plus one.
    fn expected_pitch(s: &Conv2dShape) -> usize {
        (s.in_width + 2 * s.padding - s.kernel_width) / s.stride * s.stride + s.kernel_width
    }

    // ----- deterministic, hand-checked cases -----

    // ENG-9: the block alternatives a priced choice considers: one per
    // number of channel blocks (8 channels: 8, 4, 3, 2, 1 per block, those
    // that fit), each computing the same convolution, with
    // `with_max_stack`'s own choice among them.
    #[test]
    fn block_alternatives_cover_every_channel_block_count() {
        let shape = conv_shape(8, 8, 8, 16, (3, 3), 1, 1);
        let input: Vec<i64> = (0..8 * 8 * 8).map(|i| (i % 7) as i64 - 3).collect();
        let weights: Vec<i64> = (0..16 * 8 * 9).map(|i| (i % 5) as i64 - 2).collect();
        for n in [256, 1024, 4096] {
            let alternatives = Conv2dLayout::block_alternatives(shape, n, usize::MAX);
            let widths: Vec<usize> = alternatives.iter().map(|l| l.block_channels()).collect();
            let fitting: Vec<usize> = [8, 4, 3, 2, 1]
                .into_iter()
                .filter(|&cb| cb * 3 * 10 <= n)
                .collect();
            assert_eq!(widths, fitting, "n = {n}");
            let default = Conv2dLayout::new(shape, n).unwrap();
            assert!(
                alternatives
                    .iter()
                    .any(|l| l.block_channels() == default.block_channels()
                        && l.input_ciphertexts() == default.input_ciphertexts()
                        && l.output_ciphertexts() == default.output_ciphertexts()),
                "n = {n}: the default choice is missing"
            );
            for layout in &alternatives {
                let (got, want) = conv_pipeline(layout, &input, &weights);
                assert_eq!(got, want, "n = {n}, Cb = {}", layout.block_channels());
            }
        }
    }

    #[test]
    fn conv_1x3x3_kernel_2x2_by_hand() {
        let shape = conv_shape(1, 3, 3, 1, (2, 2), 1, 0);
        let layout = Conv2dLayout::new(shape, 16).unwrap();
        // Everything fits in one slot: Cb = 1, Hb = 3, Wu = 3, S = 9, O = 3 + 1.
        assert_eq!(
            (layout.input_ciphertexts(), layout.output_ciphertexts()),
            (1, 1)
        );
        assert_eq!((layout.block_rows(), layout.row_pitch()), (3, 3));
        let placements = layout.input_placements();
        assert_eq!(placements.len(), 9);
        for pl in &placements {
            assert_eq!(pl.coefficient, 3 * pl.row + pl.col);
        }
        let weights = [1, 2, 3, 4];
        // w[k][l] at 4 − 3k − l.
        let mut expected = vec![0i64; 16];
        expected[..5].copy_from_slice(&[4, 3, 0, 2, 1]);
        assert_eq!(
            layout.weight_polynomial(&weights, 0, 0).unwrap(),
            Some(expected)
        );
        assert_eq!(
            layout.output_positions(),
            vec![(0, 4), (0, 5), (0, 7), (0, 8)]
        );
        let input = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(
            conv2d_reference(&shape, &input, &weights).unwrap(),
            vec![37, 47, 67, 77]
        );
        let (got, want) = conv_pipeline(&layout, &input, &weights);
        assert_eq!(got, vec![37, 47, 67, 77]);
        assert_eq!(got, want);
    }

    #[test]
    fn conv_stride_2_padding_1_by_hand() {
        let shape = conv_shape(1, 3, 3, 1, (3, 3), 2, 1);
        let input = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        let weights = [1; 9];
        assert_eq!(shape.output_height(), Ok(2));
        assert_eq!(shape.output_width(), Ok(2));
        assert_eq!(
            conv2d_reference(&shape, &input, &weights).unwrap(),
            vec![12, 16, 24, 28]
        );
        for n in [16, 32, 64] {
            let layout = Conv2dLayout::new(shape, n).unwrap();
            let (got, want) = conv_pipeline(&layout, &input, &weights);
            assert_eq!(got, vec![12, 16, 24, 28]);
            assert_eq!(got, want);
        }
    }

    #[test]
    fn conv_drops_unread_trailing_rows_and_columns() {
        // 6 + 0 − 2 = 4, stride 3: outputs read padded columns 0..2 and 3..5,
        // so column 5 is never used and the pitch is 5.
        let shape = conv_shape(1, 6, 6, 1, (2, 2), 3, 0);
        let layout = Conv2dLayout::new(shape, 64).unwrap();
        assert_eq!(layout.row_pitch(), 5);
        assert!(layout
            .input_placements()
            .iter()
            .all(|pl| pl.row < 5 && pl.col < 5));
    }

    #[test]
    fn conv_multiple_row_and_channel_blocks() {
        // Wu = 8, kh = 3: 3 rows (24 coefficients) per channel at least, so with
        // n = 32 only one channel fits per ciphertext and rows must be split.
        let shape = conv_shape(3, 8, 8, 2, (3, 3), 1, 0);
        let layout = Conv2dLayout::new(shape, 32).unwrap();
        assert_eq!(layout.block_channels(), 1);
        assert_eq!(layout.channel_blocks(), 3);
        assert_eq!(layout.block_rows(), 4);
        assert_eq!(layout.output_rows_per_block(), 2);
        assert_eq!(layout.row_blocks(), 3);
        assert_eq!(layout.input_ciphertexts(), 9);
        assert_eq!(layout.output_ciphertexts(), 6);
        // A value in row 2 sits in row blocks 0 and 1 (overlap kh − 1 = 2 rows).
        let cts: Vec<usize> = layout
            .input_placements()
            .iter()
            .filter(|pl| (pl.channel, pl.row, pl.col) == (0, 2, 0))
            .map(|pl| pl.ciphertext)
            .collect();
        assert_eq!(cts, vec![0, 3]);
        let input: Vec<i64> = (0..3 * 64).map(|v| (v * 37 % 255) - 128).collect();
        let weights: Vec<i64> = (0..2 * 3 * 9).map(|v| (v * 91 % 255) - 128).collect();
        let (got, want) = conv_pipeline(&layout, &input, &weights);
        assert_eq!(got, want);
        assert_eq!(layout.weight_polynomial(&weights, 0, 3).unwrap(), None);
        assert_eq!(layout.input_ciphertexts_for_output(2).unwrap(), 3..6);
    }

    #[test]
    fn conv_stacks_output_channels() {
        // One channel of 2×2 with a 1×1 kernel takes S = 4 coefficients, so four
        // output channels share one output ciphertext of degree 16.
        let shape = conv_shape(1, 2, 2, 5, (1, 1), 1, 0);
        let layout = Conv2dLayout::new(shape, 16).unwrap();
        assert_eq!(layout.output_channels_per_ciphertext(), 4);
        assert_eq!(layout.output_ciphertexts(), 2);
        assert_eq!(layout.output_position(3, 1, 1), Ok((0, 15)));
        assert_eq!(layout.output_position(4, 0, 0), Ok((1, 0)));
        let input = [3, -5, 7, 11];
        let weights = [2, -3, 5, 7, -11];
        let (got, want) = conv_pipeline(&layout, &input, &weights);
        assert_eq!(got, want);
    }

    #[test]
    fn conv_stride_larger_than_kernel() {
        let shape = conv_shape(2, 9, 9, 3, (2, 2), 3, 1);
        let input: Vec<i64> = (0..2 * 81).map(|v| (v * 53 % 255) - 128).collect();
        let weights: Vec<i64> = (0..3 * 2 * 4).map(|v| (v * 29 % 255) - 128).collect();
        for n in [32, 64, 128, 256] {
            let layout = Conv2dLayout::new(shape, n).unwrap();
            let (got, want) = conv_pipeline(&layout, &input, &weights);
            assert_eq!(got, want, "n = {n}");
        }
    }

    #[test]
    fn matvec_2x2_by_hand() {
        let shape = MatVecShape { rows: 2, cols: 2 };
        let layout = MatVecLayout::new(shape, 4).unwrap();
        assert_eq!((layout.block_cols(), layout.block_rows()), (2, 2));
        let weights = [1, 2, 3, 4];
        assert_eq!(
            layout.weight_polynomial(&weights, 0, 0).unwrap(),
            Some(vec![2, 1, 4, 3])
        );
        assert_eq!(layout.output_positions(), vec![(0, 1), (0, 3)]);
        let (got, want) = matvec_pipeline(&layout, &[5, 6], &weights);
        assert_eq!(got, vec![17, 39]);
        assert_eq!(got, want);
    }

    #[test]
    fn matvec_block_choice() {
        // 300 × 300 in n = 1024: ni = 30, no = 34 gives 10 + 9 ciphertexts,
        // better than the square 32·32 (10 + 10).
        let layout = MatVecLayout::new(
            MatVecShape {
                rows: 300,
                cols: 300,
            },
            1024,
        )
        .unwrap();
        assert_eq!((layout.block_cols(), layout.block_rows()), (30, 34));
        assert_eq!(layout.input_ciphertexts() + layout.output_ciphertexts(), 19);
        // A tall matrix with few columns: splitting x in two halves the output
        // ciphertexts (2 + 2 beats 1 + 4).
        let layout = MatVecLayout::new(
            MatVecShape {
                rows: 1000,
                cols: 4,
            },
            1024,
        )
        .unwrap();
        assert_eq!(
            (layout.input_ciphertexts(), layout.output_ciphertexts()),
            (2, 2)
        );
    }

    #[test]
    fn negacyclic_mul_wraps_with_sign() {
        // (1 + X)·X^3 = X^3 + X^4 = X^3 − 1 mod X^4 + 1.
        assert_eq!(
            negacyclic_mul(&[1, 1, 0, 0], &[0, 0, 0, 1]),
            vec![-1, 0, 0, 1]
        );
        assert_eq!(negacyclic_mul(&[2, 3], &[5, 7]), vec![10 - 21, 14 + 15]);
        assert!(negacyclic_mul(&[], &[]).is_empty());
    }

    #[test]
    fn errors_name_the_problem() {
        let good = conv_shape(1, 3, 3, 1, (2, 2), 1, 0);
        let zero = Conv2dShape { stride: 0, ..good };
        assert_eq!(
            Conv2dLayout::new(zero, 16).unwrap_err(),
            LayoutError::ZeroDimension { field: "stride" }
        );
        let big_kernel = Conv2dShape {
            kernel_width: 6,
            padding: 1,
            ..good
        };
        assert!(matches!(
            Conv2dLayout::new(big_kernel, 16),
            Err(LayoutError::KernelLargerThanInput {
                field: "kernel_width",
                kernel: 6,
                padded_input: 5
            })
        ));
        assert_eq!(
            Conv2dLayout::new(good, 24).unwrap_err(),
            LayoutError::RingDegreeNotPowerOfTwo { n: 24 }
        );
        assert_eq!(
            Conv2dLayout::new(good, 0).unwrap_err(),
            LayoutError::RingDegreeNotPowerOfTwo { n: 0 }
        );
        let wide = conv_shape(1, 2, 100, 1, (1, 1), 1, 0);
        assert_eq!(
            Conv2dLayout::new(wide, 64).unwrap_err(),
            LayoutError::DoesNotFit {
                kernel_height: 1,
                row_width: 100,
                ring_degree: 64
            }
        );
        let huge = Conv2dShape {
            padding: usize::MAX / 2 + 1,
            ..good
        };
        assert_eq!(
            Conv2dLayout::new(huge, 16).unwrap_err(),
            LayoutError::SizeOverflow { field: "padding" }
        );
        let layout = Conv2dLayout::new(good, 16).unwrap();
        assert_eq!(
            layout.weight_polynomial(&[1, 2, 3], 0, 0).unwrap_err(),
            LayoutError::WeightCountMismatch {
                expected: 4,
                got: 3
            }
        );
        assert_eq!(
            layout.weight_polynomial(&[1, 2, 3, 4], 1, 0).unwrap_err(),
            LayoutError::IndexOutOfRange {
                field: "output_ct",
                index: 1,
                bound: 1
            }
        );
        assert_eq!(
            layout.output_position(0, 2, 0).unwrap_err(),
            LayoutError::IndexOutOfRange {
                field: "i",
                index: 2,
                bound: 2
            }
        );
        assert_eq!(
            layout.encode_input(&[0; 8]).unwrap_err(),
            LayoutError::InputCountMismatch {
                expected: 9,
                got: 8
            }
        );
        assert_eq!(
            layout.decode_output::<i64, Vec<i64>>(&[]).unwrap_err(),
            LayoutError::CiphertextCountMismatch {
                expected: 1,
                got: 0
            }
        );
        assert_eq!(
            layout.decode_output(&[vec![0i64; 15]]).unwrap_err(),
            LayoutError::PolynomialLengthMismatch {
                expected: 16,
                got: 15
            }
        );
        assert_eq!(
            MatVecLayout::new(MatVecShape { rows: 0, cols: 3 }, 16).unwrap_err(),
            LayoutError::ZeroDimension { field: "rows" }
        );
        assert_eq!(
            MatVecLayout::new(MatVecShape { rows: 1, cols: 1 }, MAX_RING_DEGREE * 2).unwrap_err(),
            LayoutError::RingDegreeTooLarge {
                n: MAX_RING_DEGREE * 2,
                max: MAX_RING_DEGREE
            }
        );
        assert_eq!(
            matvec_reference(&MatVecShape { rows: 1, cols: 1 }, &[i64::MAX], &[i64::MAX]),
            Err(LayoutError::ArithmeticOverflow)
        );
        for e in [
            LayoutError::ZeroDimension { field: "stride" },
            LayoutError::ArithmeticOverflow,
            LayoutError::DoesNotFit {
                kernel_height: 1,
                row_width: 2,
                ring_degree: 1,
            },
        ] {
            assert!(!e.to_string().is_empty());
        }
    }

    // ----- properties -----

    fn conv_shape_strategy() -> impl Strategy<Value = (Conv2dShape, usize)> {
        (
            1..=5usize,
            1..=12usize,
            1..=12usize,
            1..=5usize,
            0..=2usize,
            1..=3usize,
            5..=10u32,
        )
            .prop_flat_map(|(c, h, w, m, p, s, log_n)| {
                let kh_max = (h + 2 * p).min(5);
                let kw_max = (w + 2 * p).min(5);
                (1..=kh_max, 1..=kw_max).prop_map(move |(kh, kw)| {
                    (conv_shape(c, h, w, m, (kh, kw), s, p), 1usize << log_n)
                })
            })
    }

    fn conv_case() -> impl Strategy<Value = (Conv2dShape, usize, Vec<i64>, Vec<i64>)> {
        conv_shape_strategy().prop_flat_map(|(s, n)| {
            let input_len = s.in_channels * s.in_height * s.in_width;
            let weight_len = s.out_channels * s.in_channels * s.kernel_height * s.kernel_width;
            (
                Just(s),
                Just(n),
                vec(-128i64..=127, input_len),
                vec(-128i64..=127, weight_len),
            )
        })
    }

    fn matvec_case() -> impl Strategy<Value = (MatVecShape, usize, Vec<i64>, Vec<i64>)> {
        (1..=300usize, 1..=300usize, 6..=10u32).prop_flat_map(|(rows, cols, log_n)| {
            (
                Just(MatVecShape { rows, cols }),
                Just(1usize << log_n),
                vec(-128i64..=127, cols),
                vec(-128i64..=127, rows * cols),
            )
        })
    }

    // ENG-13: the strided convs of the shipped models (ResNet stages and
    // projections, the digits model's folded pool) have a phase form with
    // dense outputs; stride 1 has none.
    #[test]
    fn shipped_strided_convs_have_a_phase_form() {
        for (c, h, m, k, p) in [
            (16, 32, 32, 3, 1),
            (16, 32, 32, 1, 0),
            (32, 16, 64, 3, 1),
            (8, 8, 16, 6, 2),
        ] {
            let shape = conv_shape(c, h, h, m, (k, k), 2, p);
            let split = PhaseSplit::new(shape).unwrap();
            let phases = split.phases();
            assert_eq!(
                (phases.in_channels, phases.in_height, phases.stride),
                (4 * c, h / 2, 1)
            );
            assert_eq!(phases.output_len().unwrap(), shape.output_len().unwrap());
            assert_eq!(phases.input_len().unwrap(), shape.input_len().unwrap());
        }
        assert_eq!(
            PhaseSplit::new(conv_shape(16, 32, 32, 16, (3, 3), 1, 1)),
            None
        );
    }

    /// ENG-9: the layout's inputs and weight polynomials spread by
    /// `dilation` into ring degree `dilation·n`, multiplied there, and read
    /// at `dilation` times the layout's output positions. Every other
    /// coefficient of the products must be zero (Y ↦ X^s is a ring
    /// homomorphism onto the multiples of s).
    fn dilated_outputs(
        inputs: &[Vec<i64>],
        output_cts: usize,
        positions: &[(usize, usize)],
        dilation: usize,
        weight_poly: impl Fn(usize, usize) -> Result<Option<Vec<i64>>, LayoutError>,
    ) -> Vec<i128> {
        let n = inputs[0].len() * dilation;
        let spread: Vec<Vec<i64>> = inputs
            .iter()
            .map(|x| dilate_polynomial(x, dilation))
            .collect();
        let outs = simulate(&spread, output_cts, n, |k, m| {
            weight_poly(k, m).map(|w| w.map(|w| dilate_polynomial(&w, dilation)))
        });
        for out in &outs {
            assert!(out
                .iter()
                .enumerate()
                .all(|(c, &v)| c.is_multiple_of(dilation) || v == 0));
        }
        let at_n: Vec<(usize, usize)> = positions
            .iter()
            .map(|&(ct, c)| (ct, c * dilation))
            .collect();
        read(&outs, &at_n)
    }

    #[test]
    fn dilate_polynomial_spreads_coefficients() {
        assert_eq!(dilate_polynomial(&[1, -2, 3], 2), vec![1, 0, -2, 0, 3, 0]);
        assert_eq!(dilate_polynomial(&[5, 7], 1), vec![5, 7]);
        assert_eq!(dilate_polynomial(&[5, 7], 0), vec![5, 7]);
    }

    /// Usize values that stress validation: zero, tiny, huge, and arbitrary.
    fn wild_usize() -> impl Strategy<Value = usize> {
        prop_oneof![
            Just(0usize),
            Just(1usize),
            Just(usize::MAX),
            Just(usize::MAX / 2),
            Just(usize::MAX / 2 + 1),
            Just(1usize << 32),
            0..8usize,
            any::<usize>(),
        ]
    }

    fn wild_ring_degree() -> impl Strategy<Value = usize> {
        prop_oneof![
            Just(0usize),
            Just(3usize),
            Just(usize::MAX),
            Just(MAX_RING_DEGREE * 2),
            (0..=16u32).prop_map(|k| 1usize << k),
            any::<usize>(),
        ]
    }

    proptest! {
        // No regression files: failures found here become unit tests above.
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// (1) Encode → multiply → sum → extract equals the direct convolution.
        #[test]
        fn prop_conv_matches_reference((shape, n, input, weights) in conv_case()) {
            match Conv2dLayout::new(shape, n) {
                Ok(layout) => {
                    let (got, want) = conv_pipeline(&layout, &input, &weights);
                    prop_assert_eq!(got, want);
                }
                Err(LayoutError::DoesNotFit { kernel_height, row_width, ring_degree }) => {
                    prop_assert_eq!(row_width, expected_pitch(&shape));
                    prop_assert!(kernel_height * row_width > ring_degree);
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }

        /// (2) The same for matrix–vector products.
        #[test]
        fn prop_matvec_matches_reference((shape, n, input, weights) in matvec_case()) {
            let layout = MatVecLayout::new(shape, n).unwrap();
            prop_assert!(layout.block_cols() * layout.block_rows() <= n);
            let (got, want) = matvec_pipeline(&layout, &input, &weights);
            prop_assert_eq!(got, want);
        }

        /// (3) Conv placements and output positions are distinct and in range,
        /// every value an output reads is placed, and nothing else is.
        #[test]
        fn prop_conv_layout_round_trip((shape, n) in conv_shape_strategy()) {
            let Ok(layout) = Conv2dLayout::new(shape, n) else {
                prop_assume!(false);
                unreachable!()
            };
            let s = shape;
            let pitch = expected_pitch(&s);
            prop_assert_eq!(layout.row_pitch(), pitch);
            prop_assert!(layout.block_channels() * layout.block_rows() * pitch <= n);
            let mut slots = HashSet::new();
            let mut cts_of: HashMap<(usize, usize, usize), Vec<usize>> = HashMap::new();
            for pl in layout.input_placements() {
                prop_assert!(pl.ciphertext < layout.input_ciphertexts());
                prop_assert!(pl.coefficient < n);
                prop_assert!(pl.channel < s.in_channels && pl.row < s.in_height && pl.col < s.in_width);
                prop_assert!(slots.insert((pl.ciphertext, pl.coefficient)), "shared slot {:?}", pl);
                cts_of.entry((pl.channel, pl.row, pl.col)).or_default().push(pl.ciphertext);
            }
            // Independently: the input ciphertexts in which each value must
            // appear are those of the row blocks of the outputs that read it.
            let (ho, wo) = (layout.output_height(), layout.output_width());
            let q = layout.output_rows_per_block();
            let mut expected: HashMap<(usize, usize, usize), HashSet<usize>> = HashMap::new();
            for i in 0..ho {
                for j in 0..wo {
                    for c in 0..s.in_channels {
                        for k in 0..s.kernel_height {
                            for l in 0..s.kernel_width {
                                let (r, col) = (i * s.stride + k, j * s.stride + l);
                                if r < s.padding || col < s.padding {
                                    continue;
                                }
                                let (r, col) = (r - s.padding, col - s.padding);
                                if r < s.in_height && col < s.in_width {
                                    let ct = (i / q) * layout.channel_blocks() + c / layout.block_channels();
                                    expected.entry((c, r, col)).or_default().insert(ct);
                                }
                            }
                        }
                    }
                }
            }
            prop_assert_eq!(expected.len(), cts_of.len());
            for (value, cts) in &cts_of {
                let distinct: HashSet<usize> = cts.iter().copied().collect();
                prop_assert_eq!(distinct.len(), cts.len(), "value {:?} twice in one ciphertext", value);
                prop_assert_eq!(Some(&distinct), expected.get(value), "value {:?}", value);
            }
            prop_assert_eq!(ho, (s.in_height + 2 * s.padding - s.kernel_height) / s.stride + 1);
            prop_assert_eq!(wo, (s.in_width + 2 * s.padding - s.kernel_width) / s.stride + 1);
            let positions = layout.output_positions();
            prop_assert_eq!(positions.len(), s.out_channels * ho * wo);
            let distinct: HashSet<_> = positions.iter().collect();
            prop_assert_eq!(distinct.len(), positions.len());
            let mut used_cts = HashSet::new();
            for (idx, &(ct, coeff)) in positions.iter().enumerate() {
                prop_assert!(ct < layout.output_ciphertexts() && coeff < n);
                let (o, i, j) = (idx / (ho * wo), idx / wo % ho, idx % wo);
                prop_assert_eq!(layout.output_position(o, i, j), Ok((ct, coeff)));
                used_cts.insert(ct);
            }
            // No output ciphertext is wasted.
            prop_assert_eq!(used_cts.len(), layout.output_ciphertexts());
            prop_assert!(layout.output_position(s.out_channels, 0, 0).is_err());
            prop_assert!(layout.output_position(0, ho, 0).is_err());
            prop_assert!(layout.output_position(0, 0, wo).is_err());
            // Never worse than one channel and one output row per ciphertext.
            let naive = (s.in_channels + s.out_channels) * ho;
            prop_assert!(layout.input_ciphertexts() + layout.output_ciphertexts() <= naive);
            let weights = vec![1i64; s.out_channels * s.in_channels * s.kernel_height * s.kernel_width];
            for k in 0..layout.output_ciphertexts() {
                let inputs = layout.input_ciphertexts_for_output(k).unwrap();
                for m in 0..layout.input_ciphertexts() {
                    let w = layout.weight_polynomial(&weights, k, m).unwrap();
                    prop_assert_eq!(w.is_some(), inputs.contains(&m));
                }
            }
        }

        /// (3) The same for matrix–vector products.
        #[test]
        fn prop_matvec_layout_round_trip(rows in 1..=300usize, cols in 1..=300usize, log_n in 0..=10u32) {
            let n = 1usize << log_n;
            let layout = MatVecLayout::new(MatVecShape { rows, cols }, n).unwrap();
            let placements = layout.input_placements();
            prop_assert_eq!(placements.len(), cols);
            let slots: HashSet<_> = placements.iter().map(|p| (p.ciphertext, p.coefficient)).collect();
            prop_assert_eq!(slots.len(), cols);
            for (j, pl) in placements.iter().enumerate() {
                prop_assert_eq!(pl.col, j);
                prop_assert!(pl.ciphertext < layout.input_ciphertexts() && pl.coefficient < n);
            }
            let positions = layout.output_positions();
            let distinct: HashSet<_> = positions.iter().collect();
            prop_assert_eq!(distinct.len(), rows);
            for (i, &(ct, coeff)) in positions.iter().enumerate() {
                prop_assert!(ct < layout.output_ciphertexts() && coeff < n);
                prop_assert_eq!(layout.output_position(i), Ok((ct, coeff)));
            }
            prop_assert!(layout.output_position(rows).is_err());
        }

        /// (4) Arbitrary (including zero and huge) shapes never panic; errors
        /// agree with an independent u128 check of the shape.
        #[test]
        fn prop_conv_bad_shapes_do_not_panic(
            f in vec(wild_usize(), 8),
            n in wild_ring_degree(),
        ) {
            let shape = Conv2dShape {
                in_channels: f[0],
                in_height: f[1],
                in_width: f[2],
                out_channels: f[3],
                kernel_height: f[4],
                kernel_width: f[5],
                stride: f[6],
                padding: f[7],
            };
            let result = Conv2dLayout::new(shape, n);
            let any_zero = f[..7].contains(&0);
            let wide = |v: usize| v as u128;
            let padded_h = wide(f[1]) + 2 * wide(f[7]);
            let padded_w = wide(f[2]) + 2 * wide(f[7]);
            match &result {
                Err(LayoutError::ZeroDimension { .. }) => prop_assert!(any_zero),
                Err(LayoutError::RingDegreeNotPowerOfTwo { .. }) => prop_assert!(!n.is_power_of_two()),
                Err(LayoutError::RingDegreeTooLarge { .. }) => prop_assert!(n > MAX_RING_DEGREE),
                Err(LayoutError::KernelLargerThanInput { .. }) => {
                    prop_assert!(wide(f[4]) > padded_h || wide(f[5]) > padded_w)
                }
                Err(LayoutError::SizeOverflow { .. }) | Err(LayoutError::DoesNotFit { .. }) => {}
                Err(e) => prop_assert!(false, "unexpected error {e}"),
                Ok(layout) => {
                    prop_assert!(!any_zero && n.is_power_of_two() && n <= MAX_RING_DEGREE);
                    prop_assert!(wide(f[4]) <= padded_h && wide(f[5]) <= padded_w);
                    prop_assert!(wide(f[4]) * wide(layout.row_pitch()) <= wide(n));
                    let pos = layout.output_position(0, 0, 0);
                    prop_assert!(matches!(pos, Ok((0, c)) if c < n));
                    prop_assert!(layout.output_position(f[3], 0, 0).is_err());
                    prop_assert!(layout.input_ciphertexts_for_output(layout.output_ciphertexts()).is_err());
                    let mismatch = matches!(
                        layout.weight_polynomial(&[], 0, 0),
                        Err(LayoutError::WeightCountMismatch { .. })
                    );
                    prop_assert!(mismatch);
                }
            }
            if let Err(e) = &result {
                prop_assert!(!e.to_string().is_empty());
            }
            // The oracle validates too; no shape has zero inputs, so empty
            // slices are always rejected.
            prop_assert!(conv2d_reference(&shape, &[], &[]).is_err());
            let _ = shape.output_height();
            let _ = shape.output_len();
        }

        /// (4) The same for matrix–vector products.
        #[test]
        fn prop_matvec_bad_shapes_do_not_panic(
            rows in wild_usize(),
            cols in wild_usize(),
            n in wild_ring_degree(),
        ) {
            let shape = MatVecShape { rows, cols };
            match MatVecLayout::new(shape, n) {
                Ok(layout) => {
                    prop_assert!(rows > 0 && cols > 0 && n.is_power_of_two());
                    prop_assert!((rows as u128) * (cols as u128) <= usize::MAX as u128);
                    prop_assert!(layout.block_cols() * layout.block_rows() <= n);
                    prop_assert!(matches!(layout.output_position(rows - 1), Ok((_, c)) if c < n));
                    prop_assert!(layout.weight_polynomial(&[], 0, 0).is_err());
                    prop_assert!(layout.encode_input(&[]).is_err());
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            prop_assert!(matvec_reference(&shape, &[], &[]).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 64,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// (5) ENG-9: a conv layout built for ring degree n and dilated by s
        /// into ring degree s·n gives the undilated values, which are the
        /// direct convolution.
        #[test]
        fn prop_dilated_conv_matches_undilated(
            (shape, n, input, weights) in conv_case(),
            log_s in 1..=2u32,
        ) {
            let Ok(layout) = Conv2dLayout::new(shape, n) else {
                prop_assume!(false);
                unreachable!()
            };
            let (got, want) = conv_pipeline(&layout, &input, &weights);
            let inputs = layout.encode_input(&input).unwrap();
            let dilated = dilated_outputs(
                &inputs,
                layout.output_ciphertexts(),
                &layout.output_positions(),
                1 << log_s,
                |k, m| layout.weight_polynomial(&weights, k, m),
            );
            prop_assert_eq!(&dilated, &got);
            prop_assert_eq!(dilated, want);
        }

        /// (7) ENG-13: a strided conv's phase form, on the gathered input
        /// with the rewritten weights, gives the strided conv's outputs bit
        /// for bit, through the coefficient encoding too; its input is the
        /// strided input once each, padded with zeros.
        #[test]
        fn prop_phase_split_matches_the_strided_conv((shape, n, input, weights) in conv_case()) {
            let Some(split) = PhaseSplit::new(shape) else {
                prop_assert!(shape.stride == 1 || shape.padding >= shape.kernel_height
                    || shape.padding >= shape.kernel_width, "{:?}", shape);
                return Ok(());
            };
            prop_assert!(shape.stride >= 2);
            let want = conv2d_reference(&shape, &input, &weights).unwrap();
            let (phased, w2) = (split.gather(&input).unwrap(), split.weights(&weights).unwrap());
            prop_assert_eq!(&conv2d_reference(split.phases(), &phased, &w2).unwrap(), &want);
            let mut seen = vec![0u8; input.len()];
            for (k, &value) in phased.iter().enumerate() {
                match split.source(k) {
                    Some(i) => {
                        seen[i] += 1;
                        prop_assert_eq!(value, input[i]);
                    }
                    None => prop_assert_eq!(value, 0),
                }
            }
            prop_assert!(seen.iter().all(|&c| c == 1));
            prop_assert_eq!(w2.iter().filter(|&&w| w != 0).count(),
                weights.iter().filter(|&&w| w != 0).count());
            if let Ok(layout) = Conv2dLayout::new(*split.phases(), n) {
                let (got, direct) = conv_pipeline(&layout, &phased, &w2);
                let want: Vec<i128> = want.into_iter().map(i128::from).collect();
                prop_assert_eq!(&direct, &want);
                prop_assert_eq!(got, want);
            }
        }

        /// (8) The reference's `i64` path gives the checked sums exactly,
        /// and large values (partial sums past `i64`) take the checked path.
        #[test]
        fn prop_reference_in_i64_equals_the_checked_sums(
            (shape, _n, input, weights) in conv_case(),
            scale in 0..=3u32,
        ) {
            let geo = shape.geometry().unwrap();
            let checked = conv2d_checked(&shape, &geo, &input, &weights).unwrap();
            prop_assert_eq!(&conv2d_in_i64(&shape, &geo, &input, &weights), &checked);
            prop_assert_eq!(conv2d_reference(&shape, &input, &weights).unwrap(), checked);
            // Scaled by 2^(18·scale) and 2^(17·scale) (products near 2^119 at
            // scale 3, past i64): both paths agree, errors included.
            let x: Vec<i64> = input.iter().map(|&v| v << (18 * scale)).collect();
            let w: Vec<i64> = weights.iter().map(|&v| v << (17 * scale)).collect();
            prop_assert_eq!(
                conv2d_reference(&shape, &x, &w),
                conv2d_checked(&shape, &geo, &x, &w)
            );
        }

        /// (6) The same for matrix–vector products.
        #[test]
        fn prop_dilated_matvec_matches_undilated(
            (shape, n, input, weights) in matvec_case(),
            log_s in 1..=2u32,
        ) {
            let layout = MatVecLayout::new(shape, n).unwrap();
            let (got, want) = matvec_pipeline(&layout, &input, &weights);
            let inputs = layout.encode_input(&input).unwrap();
            let dilated = dilated_outputs(
                &inputs,
                layout.output_ciphertexts(),
                &layout.output_positions(),
                1 << log_s,
                |k, m| layout.weight_polynomial(&weights, k, m),
            );
            prop_assert_eq!(&dilated, &got);
            prop_assert_eq!(dilated, want);
        }
    }
}
