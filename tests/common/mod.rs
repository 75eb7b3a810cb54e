//! Shared fixtures: one context and key set per test binary (key generation
//! is the slow part).

#![allow(dead_code)]

use safhire::model::{InputSpec, Layer, Model, Shape};
use safhire::params::ParameterSet;
use safhire::protocol::{
    Client, ClientId, ClientStep, Endpoint, Response, ServerStep, SessionAccept, SessionRequest,
    Upload,
};
use safhire::rlwe::{Context, GaloisKeys, PublicKey, SecretKey, SeededPublicKey};
use safhire::rng::Csprng;
use std::sync::{Arc, OnceLock};

pub struct Fixture {
    pub ctx: Context,
    pub sk: SecretKey,
    pub galois: GaloisKeys,
    pub pk: PublicKey,
}

pub fn fixture(set: &str) -> &'static Fixture {
    static B8: OnceLock<Fixture> = OnceLock::new();
    static B16: OnceLock<Fixture> = OnceLock::new();
    static B12: OnceLock<Fixture> = OnceLock::new();
    static B20: OnceLock<Fixture> = OnceLock::new();
    static B24: OnceLock<Fixture> = OnceLock::new();
    static WIDE: OnceLock<Fixture> = OnceLock::new();
    let cell = match set {
        "b8" => &B8,
        "b12" => &B12,
        "b16" => &B16,
        "b20" => &B20,
        "b24" => &B24,
        "wide" => &WIDE,
        other => panic!("no fixture for {other}"),
    };
    cell.get_or_init(|| {
        let ctx = Context::new(ParameterSet::shipped(set).unwrap());
        let mut rng = Csprng::from_seed([42; 16]);
        let sk = SecretKey::generate(&ctx, &mut rng);
        let seeded = GaloisKeys::generate_seeded(&ctx, &sk, &mut rng);
        let galois = GaloisKeys::from_seeded(&ctx, &seeded).unwrap();
        let pk = SeededPublicKey::generate(&ctx, &sk, &mut rng).expand(&ctx);
        Fixture {
            ctx,
            sk,
            galois,
            pk,
        }
    })
}

/// Uniform values in the plaintext range of `ctx`.
pub fn random_values(ctx: &Context, rng: &mut Csprng, len: usize) -> Vec<i64> {
    let half = ctx.plaintext_half_range() as u64;
    (0..len)
        .map(|_| rng.uniform_below(2 * half) as i64 - half as i64)
        .collect()
}

/// Runs a whole session of `server` as `who` through encoded messages (each
/// one encoded and decoded on its way); returns the logits.
pub fn encoded_session(
    ctx: &Arc<Context>,
    server: &mut Endpoint,
    who: &ClientId,
    input: &[i64],
) -> Vec<i64> {
    let (client, request) = Client::start(ctx.clone());
    let request = SessionRequest::decode(ctx, &request.encode(ctx)).unwrap();
    let (mut session, accept) = server.accept(who, request).unwrap();
    let accept = SessionAccept::decode(ctx, &accept.encode(ctx)).unwrap();
    let client = client.receive_accept(accept).unwrap();
    let (mut client, mut upload) = client.send_input(input).unwrap();
    loop {
        let up = Upload::decode(ctx, &upload.encode(ctx)).unwrap();
        let (next_server, response) = match session.receive_upload(up).unwrap() {
            ServerStep::Continue(s, r) => (Some(s), r),
            ServerStep::Closed(r) => (None, r),
        };
        let response = Response::decode(ctx, &response.encode(ctx)).unwrap();
        match client.receive_response(response).unwrap() {
            ClientStep::Continue(c, u) => {
                client = c;
                upload = u;
                session = next_server.expect("server closed before the client finished");
            }
            ClientStep::Done(logits) => {
                assert!(
                    next_server.is_none(),
                    "client finished before the server closed"
                );
                return logits;
            }
        }
    }
}

/// conv 1→2 3×3 on a 3×3 input → ReLU, requantise → linear 18 → 2: two
/// encrypted rounds, cheap enough for the state-machine and model-checking
/// tests to run hundreds of sessions. `seed` draws its small weights.
pub fn two_round_model(name: &str, seed: u8) -> Model {
    conv_then_linear(
        name,
        seed,
        ConvThenLinear {
            channels: 2,
            conv_bias: None,
            relu: true,
            out_features: 2,
        },
    )
}

/// The shape of a [`conv_then_linear`] model.
pub struct ConvThenLinear {
    /// Output channels of the conv.
    pub channels: usize,
    /// The conv's bias; `None` draws it.
    pub conv_bias: Option<Vec<i64>>,
    /// A ReLU after the conv.
    pub relu: bool,
    /// Logits of the linear layer.
    pub out_features: usize,
}

/// conv 1→`channels` 3×3 (padding 1) on a 3×3 input in 0..=15 → optional
/// ReLU → requantise to 0..=15 → linear 9·`channels` → `out_features`:
/// two encrypted rounds. `seed` draws the small weights (−7..=7), in the
/// order conv weights, conv bias (unless given), linear weights, bias.
pub fn conv_then_linear(name: &str, seed: u8, shape: ConvThenLinear) -> Model {
    let mut rng = Csprng::from_seed([seed; 16]);
    let mut small =
        |n: usize| -> Vec<i64> { (0..n).map(|_| rng.uniform_below(15) as i64 - 7).collect() };
    let c = shape.channels;
    let conv_weights = small(9 * c);
    let conv_bias = shape.conv_bias.unwrap_or_else(|| small(c));
    let mut layers = vec![Layer::Conv2d {
        out_channels: c,
        kernel_h: 3,
        kernel_w: 3,
        stride: 1,
        padding: 1,
        groups: 1,
        weights: conv_weights,
        bias: conv_bias,
    }];
    if shape.relu {
        layers.push(Layer::Relu);
    }
    layers.extend([
        Layer::Requantize {
            multiplier: 1,
            shift: 4,
            min: 0,
            max: 15,
        },
        Layer::Flatten,
        Layer::Linear {
            out_features: shape.out_features,
            weights: small(shape.out_features * 9 * c),
            bias: small(shape.out_features),
        },
    ]);
    Model::new(
        name,
        InputSpec {
            shape: Shape::new(1, 3, 3),
            min: 0,
            max: 15,
        },
        layers,
    )
    .unwrap()
}
