//! The server's shuffling policy (spec/shuffling.toml, PROTO-6).

use super::error::{ErrorKind, ProtocolError};
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
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    spec: PolicySpec,
    unit: ShuffleUnit,
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
        Ok(Self { spec, unit })
    }

    pub fn shipped(name: &str) -> Result<Self, ProtocolError> {
        Self::load(SHIPPED_POLICIES, name)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }
    pub fn unit(&self) -> ShuffleUnit {
        self.unit
    }
    pub fn query_budget(&self) -> u64 {
        self.spec.query_budget
    }

    /// The published attack recovers a stage of input dimension d from d+1
    /// chosen queries; this is the smallest such d over the model's stages
    /// (independent inputs, so a folded pool counts its pooled values).
    pub fn attack_threshold(model: &CompiledModel) -> u64 {
        model
            .stages()
            .iter()
            .filter(|s| !s.has_public_weights())
            .map(|s| s.independent_inputs() as u64)
            .min()
            .unwrap_or(u64::MAX)
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

    /// PROTO-6: a budget reaching the threshold needs the explicit opt-in.
    pub fn check_model(&self, model: &CompiledModel) -> Result<(), ProtocolError> {
        let threshold = Self::attack_threshold(model);
        if self.spec.query_budget >= threshold && !self.spec.allow_budget_above_attack_threshold {
            return Err(bad(format!(
                "query budget {} reaches the model's attack threshold {threshold} (a stage with input dimension d falls to d+1 chosen queries)",
                self.spec.query_budget
            )));
        }
        Ok(())
    }
}
