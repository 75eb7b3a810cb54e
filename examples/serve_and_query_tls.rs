//! The same model served over TLS on localhost (feature `net`): a
//! throwaway CA and server certificate (`net::tls::dev_cert`), one bearer
//! token, the server on a thread and runtime of its own, the client through
//! `ModelClient::connect`.
//!
//! `cargo run --release --features net --example serve_and_query_tls`

use safhire::model::{Model, TestSet};
use safhire::net::{self, ConnectConfig, ServeConfig, TokenTable};
use safhire::{ModelClient, ModelServer, Policy};
use std::time::Duration;

const MODEL: &str = include_str!("../models/digits-cnn.json");
const TEST_SET: &str = include_str!("../models/digits-test.json");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = Model::from_json(MODEL)?;
    let tests = TestSet::from_json("digits-test", TEST_SET)?;

    // Credentials for a trial: certificates for localhost, alice's token.
    let dir = std::env::temp_dir().join(format!("safhire-example-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let certs = net::tls::dev_cert(&["localhost".to_owned()])?;
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&ca, &certs.ca_pem)?;
    std::fs::write(&cert, &certs.cert_pem)?;
    std::fs::write(&key, &certs.key_pem)?;
    let token = net::auth::generate_token();
    let digest = net::auth::token_digest_hex(token.as_bytes());

    // Server: the model under the default policy, on an ephemeral port.
    let server = ModelServer::builder(model.clone())
        .policy(Policy::shipped("default")?)
        .build()?;
    let tokens = TokenTable::parse("tokens", &format!("alice {digest}\n"))?;
    let config = ServeConfig::new(net::tls::server_config(&cert, &key)?, tokens);
    let runtime = tokio::runtime::Runtime::new()?;
    let service = runtime.block_on(server.bind("127.0.0.1:0", config))?;
    let addr = service.local_addr()?;
    let shutdown = service.shutdown_handle();
    let serving = std::thread::spawn(move || runtime.block_on(service.run()));
    println!("serving on {addr}");

    // Client: connect, check the certificate, authenticate, infer.
    let mut client = ModelClient::connect(&ConnectConfig {
        addr: addr.to_string(),
        server_name: "localhost".into(),
        tls: net::tls::client_config(&ca)?,
        token: token.into_bytes(),
        timeout: Duration::from_secs(120),
        parameters: None,
    })?;
    let info = client.server_info();
    println!(
        "connected as {:?} to set {}: {} of {} sessions used",
        info.client_id, info.set, info.used, info.budget
    );
    let mut exact = true;
    for input in tests.inputs.iter().take(2) {
        let inference = client.infer(input)?;
        let reference = model.evaluate(input)?;
        exact &= inference.logits == reference;
        let network: f64 = inference.rounds.iter().map(|r| r.transport_ms).sum();
        println!(
            "logits {:?}  reference {}  server {:.0} ms, network {:.1} ms",
            inference.logits,
            if inference.logits == reference {
                "equal (bit for bit)"
            } else {
                "DIFFERENT"
            },
            inference.server_ms(),
            network
        );
    }
    match client.infer(&tests.inputs[2]) {
        Err(e) if e.budget_exhausted().is_some() => println!("third session: {e}"),
        Err(e) => return Err(format!("the third session failed otherwise: {e}").into()),
        Ok(_) => return Err("the third session was not refused".into()),
    }
    drop(client);

    shutdown.shutdown();
    let summary = serving.join().map_err(|_| "the server thread panicked")?;
    println!(
        "server: {} connection(s), {} session(s)",
        summary.connections, summary.sessions
    );
    let _ = std::fs::remove_dir_all(&dir);
    if exact {
        Ok(())
    } else {
        Err("encrypted logits differ from the plaintext reference".into())
    }
}
