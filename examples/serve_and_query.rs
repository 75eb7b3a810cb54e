//! Serves the shipped digits model and queries it in the same process
//! through the facade (`safhire::service`): the server side is a model, a
//! policy and a ledger; the client side is an identity and a loop. Every
//! message is encoded and decoded exactly as over a network.
//!
//! `cargo run --release --example serve_and_query` prints the logits of
//! two test images, checks them bit for bit against the plaintext
//! reference, and shows the default policy refusing a third session of
//! the same identity (its budget is 2).

use safhire::model::{Model, TestSet};
use safhire::{ClientId, ModelServer, Policy};

const MODEL: &str = include_str!("../models/digits-cnn.json");
const TEST_SET: &str = include_str!("../models/digits-test.json");

/// What the example found: per image the logits and whether they equal
/// the reference, then the refusal of the session over budget.
pub struct Outcome {
    /// (encrypted logits, plaintext reference logits) per image.
    pub images: Vec<(Vec<i64>, Vec<i64>)>,
    /// The typed error of the session over the budget.
    pub over_budget: Option<safhire::ServiceError>,
}

/// The example's logic, shared with `tests/facade.rs`.
pub fn run(print: bool) -> Result<Outcome, Box<dyn std::error::Error>> {
    let model = Model::from_json(MODEL)?;
    let tests = TestSet::from_json("digits-test", TEST_SET)?;

    // Server: the model under a policy; the parameter set is chosen, the
    // policy checked against the model, sessions counted in memory
    // (`.ledger(..)` takes another ledger, e.g. SqliteLedger).
    let server = ModelServer::builder(model.clone())
        .policy(Policy::shipped("default")?)
        .build()?;
    if print {
        println!(
            "serving {} rounds on set {}, policy {:?}, budget {} per identity",
            server.model().rounds(),
            server.context().params().name(),
            server.policy().name(),
            server.policy().query_budget()
        );
    }

    // Client: one identity (the application authenticates it), one
    // session per inference.
    let mut client = server.client(ClientId("alice".into()));
    let mut images = Vec::new();
    for input in tests.inputs.iter().take(2) {
        let inference = client.infer(input)?;
        let reference = model.evaluate(input)?;
        if print {
            println!(
                "logits {:?}  reference {}  server {:.0} ms, client {:.1} ms",
                inference.logits,
                if inference.logits == reference {
                    "equal (bit for bit)"
                } else {
                    "DIFFERENT"
                },
                inference.server_ms(),
                inference.client_ms()
            );
        }
        images.push((inference.logits, reference));
    }

    // A third session of the same identity is over the policy's budget.
    let over_budget = client.infer(&tests.inputs[2]).err();
    if print {
        if let Some(e) = &over_budget {
            println!("third session: {e}");
        }
    }
    Ok(Outcome {
        images,
        over_budget,
    })
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let outcome = run(true)?;
    if outcome
        .images
        .iter()
        .any(|(logits, reference)| logits != reference)
    {
        return Err("encrypted logits differ from the plaintext reference".into());
    }
    match outcome.over_budget {
        Some(e) if e.budget_exhausted().is_some() => Ok(()),
        Some(e) => Err(format!("the third session failed otherwise: {e}").into()),
        None => Err("the third session was not refused".into()),
    }
}
