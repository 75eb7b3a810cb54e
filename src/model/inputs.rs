//! Input and label files for a model (MODEL-11): what `safhire infer
//! --inputs FILE [--labels FILE]` reads.
//!
//! * JSON: `{"inputs": [[x, ...], ...], "labels": [l, ...],
//!   "integer_logits": [[y, ...], ...]}` (`labels` and `integer_logits`
//!   optional; the latter are the exporter's own integer logits, checked
//!   against the crate's reference), or a bare array of input arrays. Each input is the model's
//!   input tensor flattened in CHW order, integers only.
//! * NumPy `.npy`: an integer array (`i1`…`i8`, `u1`…`u8`, C order) of shape
//!   `[n, ...]` whose trailing dimensions multiply to the model's input
//!   length. Labels: a JSON array of non-negative integers, or a 1-D integer
//!   `.npy`.
//!
//! Every error says the file is at fault and never echoes its content. The
//! values are checked against the model (length, declared range) by
//! [`TestSet::check_against`] before any encryption starts.

use super::ir::Model;
use std::path::Path;
use thiserror::Error;

/// Largest input or label file read (bytes).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Why an input or label file was refused: always the file's fault.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputsError {
    /// The file could not be opened or read (missing, permissions, I/O).
    #[error("{file}: cannot be read: {reason}")]
    Io {
        /// Path of the file, as given.
        file: String,
        /// The operating system's reason.
        reason: String,
    },
    /// The file exceeds [`MAX_FILE_BYTES`]; refused before reading.
    #[error("{file}: is {bytes} bytes, more than the limit of {max}")]
    TooLarge {
        /// Path of the file, as given.
        file: String,
        /// Size of the file in bytes.
        bytes: u64,
        /// The limit, [`MAX_FILE_BYTES`].
        max: u64,
    },
    /// The content is not a valid JSON or `.npy` input/label file (wrong
    /// structure, floats, negative labels, unsupported dtype, ragged rows).
    #[error("{file}: not a valid input file: {reason}")]
    Format {
        /// Path of the file, as given.
        file: String,
        /// What is wrong, without echoing the file's values.
        reason: String,
    },
    /// An input does not have the model's input length `C·H·W`; the file was
    /// written for another model or flattened wrongly.
    #[error("{file}: input {index} has {got} values, the model takes {expected}")]
    Length {
        /// Path of the inputs file.
        file: String,
        /// 0-based index of the offending input.
        index: usize,
        /// The model's input length.
        expected: usize,
        /// The input's length.
        got: usize,
    },
    /// An input holds a value outside the model's declared input range, so
    /// the accumulator check (MODEL-5) would not cover it; quantise or clamp
    /// the inputs as the model expects.
    #[error(
        "{file}: input {index} has a value outside the model's declared input range [{min}, {max}]"
    )]
    Range {
        /// Path of the inputs file.
        file: String,
        /// 0-based index of the offending input (its values are not echoed).
        index: usize,
        /// Lower end of the model's declared input range.
        min: i64,
        /// Upper end of the model's declared input range.
        max: i64,
    },
    /// The number of labels differs from the number of inputs.
    #[error("{file}: {labels} labels for {inputs} inputs")]
    LabelCount {
        /// Path of the file holding the labels.
        file: String,
        /// Number of labels found.
        labels: usize,
        /// Number of inputs.
        inputs: usize,
    },
    /// The inputs file holds no input.
    #[error("{file}: no inputs")]
    Empty {
        /// Path of the inputs file.
        file: String,
    },
}

/// Inputs (flattened CHW) with optional labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestSet {
    /// The inputs, each the model's input tensor flattened in CHW order (not
    /// empty; lengths and ranges are checked by [`TestSet::check_against`]).
    pub inputs: Vec<Vec<i64>>,
    /// The true class of each input, one per input, if given; used to report
    /// accuracy.
    pub labels: Option<Vec<usize>>,
    /// The integer logits the exporter computed, if the file has them: a
    /// cross-check of the exporter against the crate's reference evaluator.
    pub expected_logits: Option<Vec<Vec<i64>>>,
}

fn format_err(file: &str, reason: impl Into<String>) -> InputsError {
    InputsError::Format {
        file: file.to_owned(),
        reason: reason.into(),
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, InputsError> {
    let file = path.display().to_string();
    let io = |e: std::io::Error| InputsError::Io {
        file: file.clone(),
        reason: e.kind().to_string(),
    };
    let bytes = std::fs::metadata(path).map_err(io)?.len();
    if bytes > MAX_FILE_BYTES {
        return Err(InputsError::TooLarge {
            file,
            bytes,
            max: MAX_FILE_BYTES,
        });
    }
    std::fs::read(path).map_err(io)
}

fn is_npy(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

/// Without feature `npy` the crate does not parse `.npy` files.
#[cfg(not(feature = "npy"))]
fn npy_integers(file: &str, _bytes: &[u8]) -> Result<(Vec<u64>, Vec<i64>), InputsError> {
    Err(format_err(
        file,
        "reading .npy files needs the crate's `npy` feature (on by default)",
    ))
}

/// The shape and values of an integer `.npy` array, widened to `i64`.
#[cfg(feature = "npy")]
fn npy_integers(file: &str, bytes: &[u8]) -> Result<(Vec<u64>, Vec<i64>), InputsError> {
    use npyz::{DType, TypeChar};
    let npy = npyz::NpyFile::new(bytes)
        .map_err(|e| format_err(file, format!("not a .npy file ({})", e.kind())))?;
    let shape = npy.shape().to_vec();
    let DType::Plain(ty) = npy.dtype() else {
        return Err(format_err(file, "structured arrays are not supported"));
    };
    if npy.order() != npyz::Order::C {
        return Err(format_err(
            file,
            "Fortran-order arrays are not supported (save with C order)",
        ));
    }
    // The header's shape is untrusted: refuse one that claims more data
    // than the file holds before anything is allocated for it.
    let claimed = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|count| count.checked_mul(ty.size_field()));
    if claimed.is_none_or(|needed| needed > bytes.len() as u64) {
        return Err(format_err(
            file,
            "the header's shape claims more data than the file holds",
        ));
    }
    let bad = |e: std::io::Error| format_err(file, format!("array data: {}", e.kind()));
    let values: Vec<i64> = match (ty.type_char(), ty.size_field()) {
        (TypeChar::Int, 1) => npy
            .into_vec::<i8>()
            .map_err(bad)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Int, 2) => npy
            .into_vec::<i16>()
            .map_err(bad)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Int, 4) => npy
            .into_vec::<i32>()
            .map_err(bad)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Int, 8) => npy.into_vec::<i64>().map_err(bad)?,
        (TypeChar::Uint, 1) => npy
            .into_vec::<u8>()
            .map_err(bad)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Uint, 2) => npy
            .into_vec::<u16>()
            .map_err(bad)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Uint, 4) => npy
            .into_vec::<u32>()
            .map_err(bad)?
            .into_iter()
            .map(i64::from)
            .collect(),
        (TypeChar::Uint, 8) => npy
            .into_vec::<u64>()
            .map_err(bad)?
            .into_iter()
            .map(|v| i64::try_from(v).map_err(|_| format_err(file, "a u64 value exceeds i64")))
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(format_err(
                file,
                "the array must hold integers (quantise the inputs first; floats are refused)",
            ))
        }
    };
    Ok((shape, values))
}

impl TestSet {
    /// Parses a JSON input file (see the module documentation).
    pub fn from_json(file: &str, text: &str) -> Result<Self, InputsError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct WithLabels {
            inputs: Vec<Vec<i64>>,
            #[serde(default)]
            labels: Option<Vec<usize>>,
            #[serde(default)]
            integer_logits: Option<Vec<Vec<i64>>>,
        }
        let fail = |e: serde_json::Error| {
            format_err(
                file,
                format!(
                    "expected {{\"inputs\": [[integers]], \"labels\": [integers]}} or [[integers]]: {} at line {}, column {}",
                    match e.classify() {
                        serde_json::error::Category::Io => "read error",
                        serde_json::error::Category::Syntax => "syntax error",
                        serde_json::error::Category::Data => "wrong type or field",
                        serde_json::error::Category::Eof => "unexpected end",
                    },
                    e.line(),
                    e.column()
                ),
            )
        };
        let set = if text.trim_start().starts_with('{') {
            let w: WithLabels = serde_json::from_str(text).map_err(fail)?;
            Self {
                inputs: w.inputs,
                labels: w.labels,
                expected_logits: w.integer_logits,
            }
        } else {
            Self {
                inputs: serde_json::from_str(text).map_err(fail)?,
                labels: None,
                expected_logits: None,
            }
        };
        set.checked(file)
    }

    /// Parses a `.npy` input array of shape `[n, ...]`.
    pub fn from_npy(file: &str, bytes: &[u8]) -> Result<Self, InputsError> {
        let (shape, values) = npy_integers(file, bytes)?;
        let Some((&n, rest)) = shape.split_first() else {
            return Err(format_err(file, "a scalar is not a list of inputs"));
        };
        let per: u64 = rest.iter().product();
        if n == 0 || per == 0 {
            return Err(InputsError::Empty {
                file: file.to_owned(),
            });
        }
        let inputs = values.chunks(per as usize).map(<[i64]>::to_vec).collect();
        Self {
            inputs,
            labels: None,
            expected_logits: None,
        }
        .checked(file)
    }

    /// Reads inputs (`.npy` by extension, else JSON) and optional labels.
    pub fn load(inputs: &Path, labels: Option<&Path>) -> Result<Self, InputsError> {
        let name = inputs.display().to_string();
        let bytes = read_bounded(inputs)?;
        let mut set = if is_npy(inputs) {
            Self::from_npy(&name, &bytes)?
        } else {
            let text =
                std::str::from_utf8(&bytes).map_err(|_| format_err(&name, "not UTF-8 text"))?;
            Self::from_json(&name, text)?
        };
        if let Some(path) = labels {
            let file = path.display().to_string();
            let bytes = read_bounded(path)?;
            let labels = if is_npy(path) {
                let (shape, values) = npy_integers(&file, &bytes)?;
                if shape.len() != 1 {
                    return Err(format_err(&file, "labels must be a 1-D array"));
                }
                values
                    .into_iter()
                    .map(|v| {
                        usize::try_from(v).map_err(|_| format_err(&file, "a label is negative"))
                    })
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                let text =
                    std::str::from_utf8(&bytes).map_err(|_| format_err(&file, "not UTF-8 text"))?;
                serde_json::from_str::<Vec<usize>>(text).map_err(|_| {
                    format_err(&file, "expected a JSON array of non-negative integers")
                })?
            };
            if labels.len() != set.inputs.len() {
                return Err(InputsError::LabelCount {
                    file,
                    labels: labels.len(),
                    inputs: set.inputs.len(),
                });
            }
            set.labels = Some(labels);
        }
        Ok(set)
    }

    fn checked(self, file: &str) -> Result<Self, InputsError> {
        if self.inputs.is_empty() {
            return Err(InputsError::Empty {
                file: file.to_owned(),
            });
        }
        if let Some(logits) = &self.expected_logits {
            if logits.len() != self.inputs.len() {
                return Err(format_err(
                    file,
                    "`integer_logits` needs one entry per input",
                ));
            }
        }
        if let Some(labels) = &self.labels {
            if labels.len() != self.inputs.len() {
                return Err(InputsError::LabelCount {
                    file: file.to_owned(),
                    labels: labels.len(),
                    inputs: self.inputs.len(),
                });
            }
        }
        Ok(self)
    }

    /// MODEL-11: every input has the model's length and lies in its
    /// declared range; `file` names the inputs file in the error.
    pub fn check_against(&self, file: &str, model: &Model) -> Result<(), InputsError> {
        let spec = model.input();
        let expected = spec.shape.len().unwrap_or(0);
        for (index, x) in self.inputs.iter().enumerate() {
            if x.len() != expected {
                return Err(InputsError::Length {
                    file: file.to_owned(),
                    index,
                    expected,
                    got: x.len(),
                });
            }
            if x.iter().any(|v| !(spec.min..=spec.max).contains(v)) {
                return Err(InputsError::Range {
                    file: file.to_owned(),
                    index,
                    min: spec.min,
                    max: spec.max,
                });
            }
        }
        Ok(())
    }
}
