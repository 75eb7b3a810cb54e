//! Choosing the parameter set for a model (PARAM-7).
//!
//! The shipped sets are tried cheapest first ([`ParameterSet::cost_order`]),
//! except those marked `auto_select = false` (s16), which only a pin uses;
//! the first one that meets the policy's flooding requirement, carries every
//! worst-case accumulator of the model (MODEL-5) and whose noise budget
//! covers every stage once compiled (LIN-3, with the pool rewrite of ENG-6)
//! is chosen. The result says why each cheaper set was passed over. A user
//! can pin a set instead; then that set's own refusal is returned.

use crate::engine::{self, CompiledModel, EngineError};
use crate::model::Model;
use crate::params::{accumulator_bits, ParamError, ParameterSet};
use crate::rlwe::Context;
use thiserror::Error;

/// What the deployment requires of a set beyond carrying the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requirement {
    /// The least flooding headroom, in bits (a policy's
    /// `min_flooding_headroom_bits`); `None`: no requirement.
    pub min_flooding_headroom_bits: Option<i32>,
    /// DP noise the set must carry on top of every accumulator (DP-8).
    pub noise: Option<crate::dp::DiscreteGaussian>,
}

impl Requirement {
    /// What `policy` asks of a set: its flooding floor and its DP noise.
    pub fn of(policy: &crate::protocol::Policy) -> Self {
        Requirement {
            min_flooding_headroom_bits: policy.min_flooding_headroom_bits(),
            noise: policy.noise().copied(),
        }
    }
}

/// Compiles `model` for `context` and checks that the set also carries
/// the requirement's noise (DP-8).
fn compile_carrying(
    context: &Context,
    model: &Model,
    requirement: &Requirement,
) -> Result<CompiledModel, EngineError> {
    let compiled = engine::compile(context, model)?;
    compiled.check_noise(context, requirement.noise.as_ref())?;
    Ok(compiled)
}

/// How one set fared.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The set's name.
    pub set: String,
    /// `None` for the chosen set; otherwise why it was passed over.
    pub refused: Option<String>,
}

/// The chosen set, the model compiled for it, and why cheaper sets were not.
#[derive(Debug)]
pub struct Selection {
    /// The arithmetic context of the chosen set.
    pub context: Context,
    /// The model compiled for it, including any exact rewrite the noise budget
    /// needed (ENG-6).
    pub model: CompiledModel,
    /// The sets tried, in order; the last is the chosen one.
    pub candidates: Vec<Candidate>,
    /// Whether the user pinned the set.
    pub pinned: bool,
}

impl Selection {
    /// One line per set tried, saying why.
    pub fn explain(&self) -> String {
        let chosen = self.context.params();
        let budget = chosen.budget();
        let mut out = String::new();
        for c in &self.candidates {
            match &c.refused {
                Some(why) => out.push_str(&format!("  {}: passed over: {why}\n", c.set)),
                None => out.push_str(&format!(
                    "  {}: {} (b = {} bits, noise budget ‖ŵ‖₁ ≤ 2^{}, flooding headroom {:.1} bits)\n",
                    c.set,
                    if self.pinned {
                        "pinned by the user"
                    } else {
                        "chosen: the cheapest shipped set that carries the model"
                    },
                    chosen.plaintext_bits(),
                    chosen.max_weight_l1_log2(),
                    budget.flooding_headroom_bits()
                )),
            }
        }
        out
    }
}

/// Why no set could be chosen.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SelectError {
    /// Every shipped set refused the model; one reason per set.
    #[error("no shipped parameter set carries this model (worst accumulator {worst_bits} bits):\n{}", list(.reasons))]
    NoSetFits {
        /// Signed bits of the model's worst-case accumulator ([`accumulator_bits`]).
        worst_bits: u32,
        /// `(set, reason)` for every shipped set, in cost order, then the sets used
        /// only when pinned.
        reasons: Vec<(String, String)>,
    },
    /// The pinned set refused the model.
    #[error("parameter set {set:?}: {source}")]
    Pinned {
        /// The pinned set's name.
        set: String,
        /// Why compiling the model for it failed.
        source: EngineError,
    },
    /// The pinned set does not meet the requirement.
    #[error(
        "parameter set {set:?} has {have:.1} bits of flooding headroom; the policy requires {need}"
    )]
    Requirement {
        /// The pinned set's name.
        set: String,
        /// Its flooding headroom, in bits.
        have: f64,
        /// The policy's `min_flooding_headroom_bits`.
        need: i32,
    },
    /// The pinned name is no shipped set ([`ParamError::UnknownSet`]), or the
    /// shipped parameter file failed its own checks (a build defect).
    #[error(transparent)]
    Param(#[from] ParamError),
}

fn list(reasons: &[(String, String)]) -> String {
    reasons
        .iter()
        .map(|(set, why)| format!("  {set}: {why}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// PARAM-7: the cheapest shipped set that carries `model` under
/// `requirement`, or the `pinned` one.
pub fn select(
    model: &Model,
    requirement: Requirement,
    pinned: Option<&str>,
) -> Result<Selection, SelectError> {
    if let Some(name) = pinned {
        let params = ParameterSet::shipped(name)?;
        if let Some(need) = requirement.min_flooding_headroom_bits {
            let have = params.budget().flooding_headroom_bits();
            if have < f64::from(need) {
                return Err(SelectError::Requirement {
                    set: name.to_owned(),
                    have,
                    need,
                });
            }
        }
        let context = Context::new(params);
        let compiled = compile_carrying(&context, model, &requirement).map_err(|source| {
            SelectError::Pinned {
                set: name.to_owned(),
                source,
            }
        })?;
        return Ok(Selection {
            context,
            model: compiled,
            candidates: vec![Candidate {
                set: name.to_owned(),
                refused: None,
            }],
            pinned: true,
        });
    }
    let mut candidates = Vec::new();
    let mut pinned_only = Vec::new();
    for params in ParameterSet::shipped_all()? {
        let set = params.name().to_owned();
        // PARAM-7: a set marked `auto_select = false` (s16: statistical
        // circuit privacy at about four times b16's cost) is used only when
        // pinned; a refusal names it so the user knows it exists.
        if !params.auto_select() {
            pinned_only.push(set);
            continue;
        }
        let refused = match requirement.min_flooding_headroom_bits {
            Some(need) if params.budget().flooding_headroom_bits() < f64::from(need) => {
                Some(format!(
                    "flooding headroom {:.1} bits is below the policy's {need}",
                    params.budget().flooding_headroom_bits()
                ))
            }
            // The cheap check first: compiling encodes every weight.
            _ => model.check_against(&params).err().map(|e| e.to_string()),
        };
        if let Some(why) = refused {
            candidates.push(Candidate {
                set,
                refused: Some(why),
            });
            continue;
        }
        let context = Context::new(params);
        match compile_carrying(&context, model, &requirement) {
            Ok(compiled) => {
                candidates.push(Candidate { set, refused: None });
                return Ok(Selection {
                    context,
                    model: compiled,
                    candidates,
                    pinned: false,
                });
            }
            Err(e) => candidates.push(Candidate {
                set,
                refused: Some(e.to_string()),
            }),
        }
    }
    let worst = model
        .accumulator_bounds()
        .into_iter()
        .map(|(_, a)| a)
        .max()
        .unwrap_or(0);
    let mut reasons: Vec<(String, String)> = candidates
        .into_iter()
        .map(|c| (c.set, c.refused.unwrap_or_default()))
        .collect();
    reasons.extend(pinned_only.into_iter().map(|set| {
        let why = format!("not tried automatically: used only when pinned (--set {set})");
        (set, why)
    }));
    Err(SelectError::NoSetFits {
        worst_bits: accumulator_bits(worst),
        reasons,
    })
}
