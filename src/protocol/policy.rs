//! The server's shuffling policy (spec/shuffling.toml, PROTO-6).

use super::error::{ErrorKind, ProtocolError};
use crate::dp::DiscreteGaussian;
use crate::engine::CompiledModel;
use crate::params::ParameterSet;
use crate::shuffle::ShuffleUnit;
use serde::Deserialize;

/// The shipped policies, embedded at build time.
pub const SHIPPED_POLICIES: &str = include_str!("../../spec/shuffling.toml");

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    name: String,
    granularity: String,
    query_budget: u64,
    allow_budget_above_attack_threshold: bool,
    /// PARAM-7: the least flooding headroom (bits of flooding above the
    /// weight-dependent noise tail) a parameter set must have to serve
    /// under this policy; absent = no requirement.
    #[serde(default)]
    min_flooding_headroom_bits: Option<i32>,
    /// DP-8: σ of the discrete Gaussian noise added to every released
    /// value (absent: none, the client gets exact accumulators).
    #[serde(default)]
    dp_sigma: Option<u32>,
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    spec: PolicySpec,
    unit: ShuffleUnit,
    noise: Option<DiscreteGaussian>,
}

fn bad(msg: String) -> ProtocolError {
    ProtocolError::local(ErrorKind::Policy(msg))
}

impl Policy {
    /// Loads one named policy from a TOML document of `[[policy]]` tables.
    pub fn load(toml_text: &str, name: &str) -> Result<Self, ProtocolError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            policy: Vec<PolicySpec>,
        }
        let file: File = toml::from_str(toml_text)
            .map_err(|e| bad(format!("policy file does not parse: {e}")))?;
        let spec = file
            .policy
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| bad(format!("no policy named {name:?}")))?;
        let unit = match spec.granularity.as_str() {
            "element" => ShuffleUnit::Element,
            "channel" => ShuffleUnit::Channel,
            other => {
                return Err(bad(format!(
                    "granularity {other:?} is not element or channel"
                )))
            }
        };
        if spec.query_budget == 0 {
            return Err(bad("query_budget must be at least 1".into()));
        }
        let noise = match spec.dp_sigma {
            None => None,
            Some(0) => {
                return Err(bad(
                    "dp_sigma must be at least 1 (omit it for no noise)".into()
                ))
            }
            Some(sigma) => Some(
                DiscreteGaussian::with_sigma(sigma)
                    .map_err(|e| bad(format!("dp_sigma = {sigma}: {e}")))?,
            ),
        };
        Ok(Self { spec, unit, noise })
    }

    /// Loads one of the policies shipped in spec/shuffling.toml
    /// ([`SHIPPED_POLICIES`]) by name; an unknown name is a local
    /// [`ErrorKind::Policy`] error.
    pub fn shipped(name: &str) -> Result<Self, ProtocolError> {
        Self::load(SHIPPED_POLICIES, name)
    }

    /// The policy's name in the TOML document.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
    /// What each round's secret permutation moves: single values or whole
    /// channels (SHUF-1, PROTO-3).
    pub fn unit(&self) -> ShuffleUnit {
        self.unit
    }
    /// Sessions each client identity may start (≥ 1), enforced through the
    /// endpoint's ledger (PROTO-5, PROTO-8).
    pub fn query_budget(&self) -> u64 {
        self.spec.query_budget
    }

    /// Whether the policy opts in to a budget within reach of the known
    /// attacks (PROTO-6's `allow_budget_above_attack_threshold`).
    pub fn allows_budget_above_attack_threshold(&self) -> bool {
        self.spec.allow_budget_above_attack_threshold
    }

    /// PROTO-6: the fewest chosen queries with which a known attack
    /// recovers some stage of `model` under this policy's granularity, and
    /// that stage's index; `None` when no stage holds secret weights.
    ///
    /// A conv at round 0 under element shuffling also falls to the
    /// single-pixel probes (AUDIT-7): the client writes round 0's input in
    /// true order, so the probes' cost (the bias probe and three sessions
    /// per probe group) counts when it is lower than the stage's fan-in + 1.
    pub fn attack_threshold(&self, model: &CompiledModel) -> Option<(u64, usize)> {
        model
            .stages()
            .iter()
            .enumerate()
            .filter_map(|(r, s)| {
                let probes = match (r, s.conv_shape(), self.unit) {
                    (0, Some(shape), ShuffleUnit::Element) if !s.has_public_weights() => {
                        Some(crate::audit::pixel_probe_sessions(&shape))
                    }
                    _ => None,
                };
                let q = s.attack_queries(self.unit)?;
                Some((probes.map_or(q, |p| p.min(q)), r))
            })
            .min()
    }

    /// DP-8: the noise added to every released value, if any.
    pub fn noise(&self) -> Option<&DiscreteGaussian> {
        self.noise.as_ref()
    }

    /// σ of that noise.
    pub fn dp_sigma(&self) -> Option<u32> {
        self.spec.dp_sigma
    }

    /// The least flooding headroom a set must have under this policy.
    pub fn min_flooding_headroom_bits(&self) -> Option<i32> {
        self.spec.min_flooding_headroom_bits
    }

    /// PARAM-7: refuses a parameter set with less flooding headroom than
    /// the policy requires.
    pub fn check_parameters(&self, params: &ParameterSet) -> Result<(), ProtocolError> {
        let have = params.budget().flooding_headroom_bits();
        match self.spec.min_flooding_headroom_bits {
            Some(need) if have < f64::from(need) => Err(bad(format!(
                "parameter set {:?} has {have:.1} bits of flooding headroom; policy {:?} requires {need}",
                params.name(),
                self.spec.name
            ))),
            _ => Ok(()),
        }
    }

    /// PROTO-6: refuses a budget with which the attack's query count is
    /// within reach — `budget ≥ queries − 1`, one query of margin — unless
    /// the policy opts in. A necessary condition against the attacks the
    /// crate knows, not a guarantee: a structure-aware attack may need fewer.
    pub fn check_model(&self, model: &CompiledModel) -> Result<(), ProtocolError> {
        let Some((queries, stage)) = self.attack_threshold(model) else {
            return Ok(());
        };
        let budget = self.spec.query_budget;
        if budget.saturating_add(1) >= queries && !self.spec.allow_budget_above_attack_threshold {
            let layer = model.stage_layers().get(stage).copied().unwrap_or(0);
            return Err(bad(format!(
                "query budget {budget} is within reach of a chosen-input attack: round {stage} (model layer {layer}) \
                 falls to {queries} chosen queries under {} shuffling; the budget must be at most {} \
                 (or the policy must set allow_budget_above_attack_threshold)",
                self.spec.granularity,
                queries.saturating_sub(2)
            )));
        }
        Ok(())
    }
}
