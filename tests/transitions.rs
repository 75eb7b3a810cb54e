//! PROTO-7: the state graph (`protocol::state_graph`, committed as
//! spec/state-machines.dot) is printed from the parties' transition tables;
//! this test derives the transitions from the typestate itself, the
//! signatures of the consuming methods in src/protocol/{client,server}.rs,
//! and checks that the tables hold exactly those (from, to) pairs. A
//! transition added to the code but not to the table (and so not to the
//! spec's graph), or left in the table after the code dropped it, fails.
//!
//! What counts as a transition: in `impl Client<S>` / `impl Server<S>`, a
//! method taking `self` by value whose return type names `Client<T>` /
//! `Server<T>` or the step enums (`ClientStep`, `ServerStep`, expanded to
//! their variants: a variant carrying the next state goes there, another
//! ends in a state named after it); a constructor without `self` returning
//! `Self` starts the party (pseudo-state `Start`); in `impl Endpoint`, a
//! method returning `Server<T>` opens a session from `Endpoint`.
//! `Rejected<Self>` is the refusal path, which leaves the state as it was,
//! and is not a transition.

use safhire::protocol::{CLIENT_TRANSITIONS, SERVER_TRANSITIONS};
use std::collections::BTreeSet;

const CLIENT: &str = include_str!("../src/protocol/client.rs");
const SERVER: &str = include_str!("../src/protocol/server.rs");

type Pairs = BTreeSet<(String, String)>;

/// The text between the `{` that follows `start` and its matching `}`.
fn block(text: &str, start: usize) -> &str {
    let open = start + text[start..].find('{').expect("a block");
    let mut depth = 0usize;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces")
}

/// Every `Party<State>` named in `text`.
fn states_named(text: &str, party: &str) -> Vec<String> {
    let needle = format!("{party}<");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&needle) {
        let after = &rest[i + needle.len()..];
        let end = after.find('>').expect("a closing >");
        out.push(after[..end].trim().to_owned());
        rest = &after[end..];
    }
    out
}

/// The states a step enum's variants lead to: the state a variant carries,
/// or the variant's own name for one that ends the session.
fn step_targets(text: &str, step: &str, party: &str) -> Vec<String> {
    let start = text
        .find(&format!("pub enum {step} "))
        .unwrap_or_else(|| panic!("enum {step}"));
    block(text, start)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with('#'))
        .map(|variant| {
            let name: String = variant
                .chars()
                .take_while(|c| c.is_alphanumeric())
                .collect();
            states_named(variant, party)
                .into_iter()
                .next()
                .unwrap_or(name)
        })
        .collect()
}

/// (from, to) pairs derived from the `impl` blocks of `party` in `text`.
fn derived(text: &str, party: &str, step: &str) -> Pairs {
    let mut pairs = Pairs::new();
    let impls = [format!("impl {party}<"), "impl Endpoint {".to_owned()];
    for header in &impls {
        let mut from_here = 0;
        while let Some(i) = text[from_here..].find(header.as_str()) {
            let at = from_here + i;
            from_here = at + header.len();
            let from = if header.ends_with('<') {
                let after = &text[at + header.len()..];
                after[..after.find('>').unwrap()].trim().to_owned()
            } else {
                "Endpoint".to_owned()
            };
            if from == "S" {
                continue; // a generic impl (Debug): no transition
            }
            let body = block(text, at);
            for sig in body.split("pub fn ").skip(1) {
                let sig = &sig[..sig.find('{').unwrap_or(sig.len())];
                let params = &sig[sig.find('(').unwrap()..sig.find(')').unwrap()];
                let takes_self = params.contains("self")
                    && !params.contains("&self")
                    && !params.contains("&mut self");
                let ret = sig.split("->").nth(1).unwrap_or("");
                let ret = ret.replace("Rejected<Self>", "");
                let mut to: Vec<String> = states_named(&ret, party);
                if ret.contains(step) {
                    to.extend(step_targets(text, step, party));
                }
                if header.ends_with('<') && !takes_self && !params.contains("&") {
                    // A constructor: `Self` is the first state.
                    if ret.contains("Self") {
                        pairs.insert(("Start".to_owned(), from.clone()));
                    }
                    continue;
                }
                let opens = from == "Endpoint" && !to.is_empty();
                if takes_self || opens {
                    for t in to {
                        pairs.insert((from.clone(), t));
                    }
                }
            }
        }
    }
    pairs
}

fn table(t: &[(&str, &str, &str)]) -> Pairs {
    t.iter()
        .map(|(from, _, to)| (from.to_string(), to.to_string()))
        .collect()
}

#[test]
fn tables_hold_exactly_the_typestate_transitions() {
    for (party, source, step, least, t, name) in [
        (
            "Client",
            CLIENT,
            "ClientStep",
            4,
            CLIENT_TRANSITIONS,
            "CLIENT_TRANSITIONS",
        ),
        (
            "Server",
            SERVER,
            "ServerStep",
            2,
            SERVER_TRANSITIONS,
            "SERVER_TRANSITIONS",
        ),
    ] {
        let code = derived(source, party, step);
        assert!(
            code.len() >= least,
            "{party}: the derivation found too little: {code:?}"
        );
        assert_eq!(
            code,
            table(t),
            "{party} transitions in the code (left) differ from {name} (right): \
             update the table and regenerate spec/state-machines.dot"
        );
    }
}

/// The derivation is not vacuous: a new consuming method that leads to a
/// new state shows up in it.
#[test]
fn a_new_transition_in_the_code_is_seen() {
    let patched = CLIENT.replacen(
        "impl Client<Ready> {",
        "impl Client<Ready> {\n    pub fn cancel(self) -> Client<Cancelled> { todo!() }\n",
        1,
    );
    let code = derived(&patched, "Client", "ClientStep");
    assert!(code.contains(&("Ready".to_owned(), "Cancelled".to_owned())));
    assert_ne!(code, table(CLIENT_TRANSITIONS));
}
