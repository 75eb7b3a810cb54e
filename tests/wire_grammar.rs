//! WIRE-6, WIRE-7: the wire grammar (`spec/wire-grammar.toml`) against the
//! decoders.
//!
//! The grammar is parsed; encodings are generated from it (several per
//! entry, with a seeded generator: all-minimum, all-maximum and random
//! samples, so every range's boundaries come up) and must be accepted by
//! the real decoders, re-encoding to the same bytes; then every rule is
//! broken in turn, one field at a time (a value out of range, a wrong
//! length, a cut, a trailing byte, a wrong version or kind), and the
//! decoder must refuse it with exactly the typed error the grammar names.
//! The grammar is also read as a parser, which must agree with the decoders
//! on every case and accept what the crate itself encodes (real keys, a
//! real session, real control messages).
//! A variant of a decoder's error type, an object kind, a message kind or a
//! control message that exists in the code but not in the grammar fails
//! the completeness test. The fuzz dictionaries and seeds (WIRE-7) are
//! generated from the same grammar, and a test fails when the committed
//! ones are stale: regenerate them with
//! `cargo test --release --test wire_grammar -- --ignored write_fuzz_inputs`.

use safhire::params::ParameterSet;
use safhire::protocol::{self, ErrorKind, Fault, ProtocolError};
use safhire::rlwe::Context;
use safhire::wire::{self, WireError};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

// ------------------------------------------------------------- the grammar

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Grammar {
    constants: BTreeMap<String, String>,
    header: Vec<Layout>,
    message: Vec<Message>,
    group: Vec<Group>,
    errors: BTreeMap<String, ErrorList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Layout {
    name: String,
    truncated_header: String,
    truncated_body: String,
    trailing: String,
    short_body: Option<String>,
    extra_body: Option<String>,
    field: Vec<Field>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    name: String,
    layer: String,
    header: Option<String>,
    kind: Option<u8>,
    decoder: String,
    size: Option<String>,
    arg: Option<Arg>,
    limits: Option<Vec<String>>,
    truncated_body: Option<String>,
    #[serde(default)]
    field: Vec<Field>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Arg {
    name: String,
    min: String,
    max: String,
    error: String,
    fault: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    name: String,
    #[serde(default)]
    field: Vec<Field>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Field {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    value: Option<String>,
    min: Option<String>,
    max: Option<String>,
    at_least: Option<String>,
    length_of: Option<String>,
    #[serde(default)]
    deferred_below: bool,
    error: Option<String>,
    error_above: Option<String>,
    error_below: Option<String>,
    error_declared_more: Option<String>,
    error_declared_less: Option<String>,
    len: Option<String>,
    prefix: Option<String>,
    min_len: Option<String>,
    max_len: Option<String>,
    charset: Option<String>,
    error_len: Option<String>,
    error_content: Option<String>,
    count: Option<String>,
    modulus: Option<String>,
    object: Option<String>,
    level: Option<String>,
    group: Option<String>,
    variants: Option<Vec<Variant>>,
    unknown_tag_body: Option<String>,
    mutate_to: Option<Vec<String>>,
    req: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Variant {
    tag: u8,
    name: String,
    group: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorList {
    not_from_decoding: BTreeMap<String, String>,
}

const GRAMMAR_PATH: &str = "spec/wire-grammar.toml";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn grammar() -> &'static Grammar {
    static G: OnceLock<Grammar> = OnceLock::new();
    G.get_or_init(|| {
        let text = std::fs::read_to_string(root().join(GRAMMAR_PATH)).unwrap();
        toml::from_str(&text).unwrap_or_else(|e| panic!("{GRAMMAR_PATH}: {e}"))
    })
}

impl Grammar {
    fn layout(&self, name: &str) -> &Layout {
        self.header
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no header {name}"))
    }
    fn group(&self, name: &str) -> &Group {
        self.group
            .iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("no group {name}"))
    }
    fn message(&self, name: &str) -> &Message {
        self.message
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no message {name}"))
    }
    fn layer(&self, layer: &str) -> impl Iterator<Item = &Message> {
        let layer = layer.to_owned();
        self.message.iter().filter(move |m| m.layer == layer)
    }
}

// ------------------------------------------------------------ expressions

#[derive(Clone)]
struct Env {
    vars: BTreeMap<String, i128>,
}

impl Env {
    fn new(ctx: Option<&Context>) -> Self {
        let mut vars = BTreeMap::new();
        if let Some(ctx) = ctx {
            let n = ctx.n();
            vars.insert("N".into(), n as i128);
            vars.insert("L".into(), ctx.limbs() as i128);
            vars.insert("LOG2N".into(), n.trailing_zeros() as i128);
            vars.insert("ROWS".into(), ctx.params().gadget_levels() as i128);
            vars.insert("P".into(), ctx.params().p().value() as i128);
            vars.insert("FINGERPRINT".into(), ctx.params().fingerprint() as i128);
        }
        Env { vars }
    }
    fn set(&mut self, name: &str, v: i128) {
        self.vars.insert(name.to_owned(), v);
    }
    fn get(&self, name: &str) -> i128 {
        if let Some(&v) = self.vars.get(name) {
            return v;
        }
        match grammar().constants.get(name) {
            Some(e) => eval(e, self),
            None => panic!("unknown name {name} in a grammar expression"),
        }
    }
}

/// Evaluates an expression of the grammar: integers, names, + - * / ^ and
/// parentheses.
fn eval(expr: &str, env: &Env) -> i128 {
    let tokens: Vec<String> = {
        let mut t = Vec::new();
        let mut chars = expr.chars().peekable();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                chars.next();
            } else if c.is_ascii_alphanumeric() || c == '_' {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        s.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                t.push(s);
            } else {
                t.push(c.to_string());
                chars.next();
            }
        }
        t
    };
    struct P<'a> {
        t: &'a [String],
        i: usize,
        env: &'a Env,
    }
    impl P<'_> {
        fn peek(&self) -> Option<&str> {
            self.t.get(self.i).map(String::as_str)
        }
        fn sum(&mut self) -> i128 {
            let mut v = self.product();
            while let Some(op @ ("+" | "-")) = self.peek() {
                let plus = op == "+";
                self.i += 1;
                let r = self.product();
                v = if plus { v + r } else { v - r };
            }
            v
        }
        fn product(&mut self) -> i128 {
            let mut v = self.power();
            while let Some(op @ ("*" | "/")) = self.peek() {
                let times = op == "*";
                self.i += 1;
                let r = self.power();
                v = if times { v * r } else { v.div_euclid(r) };
            }
            v
        }
        fn power(&mut self) -> i128 {
            let base = self.atom();
            if self.peek() == Some("^") {
                self.i += 1;
                let e = self.power();
                return base.pow(u32::try_from(e).expect("small exponent"));
            }
            base
        }
        fn atom(&mut self) -> i128 {
            let tok = self.t.get(self.i).expect("expression ends early").clone();
            self.i += 1;
            if tok == "(" {
                let v = self.sum();
                assert_eq!(self.peek(), Some(")"), "unbalanced parentheses");
                self.i += 1;
                v
            } else if tok.chars().all(|c| c.is_ascii_digit()) {
                tok.parse().unwrap()
            } else {
                self.env.get(&tok)
            }
        }
    }
    let mut p = P {
        t: &tokens,
        i: 0,
        env,
    };
    let v = p.sum();
    assert_eq!(p.i, tokens.len(), "trailing tokens in {expr:?}");
    v
}

// ---------------------------------------------------------------- encoding

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum IntTy {
    U8,
    U16,
    U32,
    U64,
    I64,
    U32Be,
}

impl IntTy {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "u8" => IntTy::U8,
            "u16" => IntTy::U16,
            "u32" => IntTy::U32,
            "u64" => IntTy::U64,
            "i64" => IntTy::I64,
            "u32be" => IntTy::U32Be,
            _ => return None,
        })
    }
    fn bounds(self) -> (i128, i128) {
        match self {
            IntTy::U8 => (0, u8::MAX as i128),
            IntTy::U16 => (0, u16::MAX as i128),
            IntTy::U32 | IntTy::U32Be => (0, u32::MAX as i128),
            IntTy::U64 => (0, u64::MAX as i128),
            IntTy::I64 => (i64::MIN as i128, i64::MAX as i128),
        }
    }
    fn bytes(self, v: i128) -> Vec<u8> {
        let (lo, hi) = self.bounds();
        assert!((lo..=hi).contains(&v), "{v} does not fit a {self:?}");
        match self {
            IntTy::U8 => vec![v as u8],
            IntTy::U16 => (v as u16).to_le_bytes().to_vec(),
            IntTy::U32 => (v as u32).to_le_bytes().to_vec(),
            IntTy::U64 => (v as u64).to_le_bytes().to_vec(),
            IntTy::I64 => (v as i64).to_le_bytes().to_vec(),
            IntTy::U32Be => (v as u32).to_be_bytes().to_vec(),
        }
    }
}

/// SplitMix64: a seeded generator, so every run sees the same samples.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in lo..=hi.
    fn range(&mut self, lo: i128, hi: i128) -> i128 {
        let width = (hi - lo + 1) as u128;
        let r = (self.next() as u128) | ((self.next() as u128) << 64);
        lo + (r % width) as i128
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Strategy {
    /// Every range at its lower end, every union on its first variant.
    Min,
    /// Every range at its upper end, every union on its last variant.
    Max,
    /// Values drawn from the seeded generator (counts kept small).
    Random,
}

/// A rule broken on purpose, and the error the grammar says it raises.
#[derive(Clone, Debug)]
struct Point {
    what: String,
    error: String,
    /// For `Unreduced`: the residue index the error must name (WIRE-3).
    index: Option<usize>,
    /// "peer", or "caller" for the decoder's argument.
    fault: &'static str,
    req: Option<String>,
    /// A caller argument out of range, passed instead of the sample's.
    level: Option<u32>,
}

/// Generates one encoding of a grammar entry; with `target`, breaks the
/// `target`-th rule met on the way (in the order the generator meets them,
/// which is the same on every run with the same seed).
struct Gen<'a> {
    g: &'a Grammar,
    ctx: Option<&'a Context>,
    rng: Rng,
    strategy: Strategy,
    target: Option<usize>,
    points: Vec<Point>,
    applied: Option<Point>,
    /// Rules inside the first item of a repeat only (keeps the count
    /// linear in the grammar, not in the data).
    mutable: bool,
    /// Error wrappers of the nesting: `Wire` inside a protocol message.
    wraps: Vec<&'static str>,
    /// Residues written so far in the current object (Unreduced's index).
    coeffs: usize,
    /// Where the generator is: nested objects and repeat items.
    path: Vec<String>,
    /// The sample's number, and the unions met so far in it.
    sample: usize,
    unions: usize,
    /// Union variants generated (for the coverage check).
    variants: BTreeSet<(String, u8)>,
    /// Bytes worth putting in a fuzz dictionary: magics, fixed values,
    /// range boundaries and the values just past them, tags.
    dict: BTreeSet<Vec<u8>>,
}

impl<'a> Gen<'a> {
    fn new(
        g: &'a Grammar,
        ctx: Option<&'a Context>,
        seed: u64,
        strategy: Strategy,
        target: Option<usize>,
    ) -> Self {
        Gen {
            g,
            ctx,
            rng: Rng(seed),
            strategy,
            target,
            points: Vec::new(),
            applied: None,
            mutable: true,
            wraps: Vec::new(),
            coeffs: 0,
            path: Vec::new(),
            sample: 0,
            unions: 0,
            variants: BTreeSet::new(),
            dict: BTreeSet::new(),
        }
    }

    /// Meets a rule; true if it is the one to break.
    fn point(&mut self, what: String, error: &str, req: &Option<String>) -> bool {
        self.point_full(what, error, req, None)
    }

    fn point_full(
        &mut self,
        what: String,
        error: &str,
        req: &Option<String>,
        index: Option<usize>,
    ) -> bool {
        if !self.mutable {
            return false;
        }
        let mut error = error.to_owned();
        for w in self.wraps.iter().rev() {
            error = format!("{w}({error})");
        }
        let what = match self.path.is_empty() {
            true => what,
            false => format!("{}: {what}", self.path.join(".")),
        };
        let p = Point {
            what,
            error,
            index,
            fault: "peer",
            req: req.clone(),
            level: None,
        };
        let hit = self.target == Some(self.points.len());
        if hit {
            self.applied = Some(p.clone());
        }
        self.points.push(p);
        hit
    }

    fn pick(&mut self, lo: i128, hi: i128, small: bool) -> i128 {
        match self.strategy {
            Strategy::Min => lo,
            Strategy::Max => hi,
            Strategy::Random if small => (lo + 1 + self.rng.range(0, 2)).min(hi),
            Strategy::Random => match self.rng.next() % 4 {
                0 => lo,
                1 => hi,
                _ => self.rng.range(lo, hi),
            },
        }
    }

    /// One entry: header, fields, and (at the top) the cuts, the trailing
    /// byte and the caller's argument. Returns the bytes and the Galois
    /// level the decoder is to be called with.
    fn top(&mut self, m: &Message, env: &mut Env) -> (Vec<u8>, Option<u32>) {
        let level = m.arg.as_ref().map(|a| {
            let (lo, hi) = (eval(&a.min, env), eval(&a.max, env));
            let l = self.pick(lo, hi, false);
            env.set(&a.name, l);
            l as u32
        });
        let mut bytes = self.entry(m, env);
        let (header_len, truncated_header, truncated_body, trailing) = match &m.header {
            Some(h) => {
                let h = self.g.layout(h);
                let len: usize = h.field.iter().map(field_width).sum();
                (
                    len,
                    h.truncated_header.clone(),
                    h.truncated_body.clone(),
                    Some(h.trailing.clone()),
                )
            }
            None => {
                let t = m.truncated_body.clone().expect("truncated_body");
                (4, t.clone(), t, None)
            }
        };
        // Cuts: inside the header, at its end, inside the body, one short.
        let total = bytes.len();
        let mut cuts: Vec<usize> = vec![1, header_len - 1, header_len, header_len + 1];
        cuts.push(header_len + (total - header_len) / 2);
        cuts.push(total - 1);
        if m.layer != "frame" {
            cuts.push(0);
        }
        let cuts: BTreeSet<usize> = cuts.into_iter().filter(|&c| c < total).collect();
        for cut in cuts {
            let error = if cut < header_len {
                &truncated_header
            } else {
                &truncated_body
            };
            if self.point(format!("cut to {cut} of {total} bytes"), error, &None) {
                bytes.truncate(cut);
            }
        }
        if let Some(t) = trailing {
            if self.point("one trailing byte".into(), &t, &None) {
                bytes.push(0);
            }
        }
        let mut level = level;
        if let Some(a) = &m.arg {
            let (lo, hi) = (eval(&a.min, env), eval(&a.max, env));
            for (what, l) in [("below", lo - 1), ("above", hi + 1)] {
                let fault = if a.fault == "caller" {
                    "caller"
                } else {
                    "peer"
                };
                let p = Point {
                    what: format!("{} {what} its range: {l}", a.name),
                    error: a.error.clone(),
                    index: None,
                    fault,
                    req: None,
                    level: Some(l as u32),
                };
                if self.target == Some(self.points.len()) {
                    self.applied = Some(p.clone());
                    level = Some(l as u32);
                }
                self.points.push(p);
            }
        }
        (bytes, level)
    }

    /// An entry without the top-level cuts: header (if any) around the body.
    fn entry(&mut self, m: &Message, env: &mut Env) -> Vec<u8> {
        if let Some(k) = m.kind {
            env.set("KIND", k as i128);
        }
        if let Some(s) = &m.size {
            let size = eval(s, env);
            env.set("SIZE", size);
        }
        self.coeffs = 0;
        let Some(h) = &m.header else {
            let mut out = Vec::new();
            self.fields(&m.field, env, &mut out, m.layer == "frame");
            return out;
        };
        let mut body = Vec::new();
        self.fields(&m.field, env, &mut body, false);
        if let Some(size) = env.vars.get("SIZE") {
            assert_eq!(
                body.len() as i128,
                *size,
                "{}: the fields add up to another size than `size`",
                m.name
            );
        }
        let h = self.g.layout(h);
        if let Some(e) = &h.short_body {
            if !body.is_empty() {
                if self.point("body one byte short, length adjusted".into(), e, &None) {
                    body.pop();
                }
                if self.point("body cut in half, length adjusted".into(), e, &None) {
                    body.truncate(body.len() / 2);
                }
            }
        }
        if let Some(e) = &h.extra_body {
            if self.point("one byte after the body, length adjusted".into(), e, &None) {
                body.push(0);
            }
        }
        let mut out = Vec::new();
        for f in &h.field {
            if f.length_of.is_some() {
                self.length_field(f, env, body.len(), true, &mut out);
            } else {
                self.field(f, env, &mut out);
            }
        }
        out.extend_from_slice(&body);
        out
    }

    fn fields(&mut self, fields: &[Field], env: &mut Env, out: &mut Vec<u8>, top: bool) {
        for (i, f) in fields.iter().enumerate() {
            if f.length_of.is_some() {
                // A length in front of the rest (a frame's prefix): its
                // value is drawn first, the rest is generated to match.
                let ty = IntTy::parse(&f.ty).unwrap();
                let (lo, hi) = int_range(f, ty, env);
                let intended = match self.strategy {
                    Strategy::Min => lo,
                    Strategy::Max => hi,
                    Strategy::Random => lo + self.rng.range(0, 63).min(hi - lo),
                };
                env.set(&f.name, intended);
                let mut rest = Vec::new();
                self.fields(&fields[i + 1..], env, &mut rest, top);
                self.length_field(f, env, rest.len(), top, out);
                out.extend_from_slice(&rest);
                return;
            }
            self.field(f, env, out);
        }
    }

    fn field(&mut self, f: &Field, env: &mut Env, out: &mut Vec<u8>) {
        if let Some(ty) = IntTy::parse(&f.ty) {
            return self.int_field(f, ty, env, out);
        }
        match f.ty.as_str() {
            "magic" => {
                let magic = f.value.as_ref().unwrap().as_bytes().to_vec();
                self.dict.insert(magic.clone());
                let mut emitted = magic;
                for (i, byte) in emitted.iter_mut().enumerate() {
                    let what = format!("{} byte {i} flipped", f.name);
                    if self.point(what, f.error.as_ref().unwrap(), &f.req) {
                        *byte ^= 0x20;
                    }
                }
                out.extend_from_slice(&emitted);
            }
            "bytes" => self.bytes_field(f, env, out),
            "string" => self.string_field(f, env, out),
            "poly" => self.poly_field(f, env, out),
            "object" => self.object_field(f, env, out),
            "repeat" => {
                let count = match env
                    .vars
                    .get(&format!("#items:{}", f.count.as_ref().unwrap()))
                {
                    Some(&c) => c,
                    None => eval(f.count.as_ref().unwrap(), env),
                };
                let group = self.g.group(f.group.as_ref().unwrap());
                let was = self.mutable;
                for i in 0..count {
                    let mut inner = env.clone();
                    inner.set("INDEX", i);
                    self.mutable = was && i == 0;
                    self.path.push(format!("{}[{i}]", f.name));
                    self.fields(&group.field, &mut inner, out, false);
                    self.path.pop();
                }
                self.mutable = was;
            }
            "union" => {
                let variants = f.variants.as_ref().unwrap();
                let i = match self.strategy {
                    Strategy::Min => 0,
                    Strategy::Max => variants.len() - 1,
                    // Cycles through the variants, sample after sample.
                    Strategy::Random => {
                        self.unions += 1;
                        (self.sample + self.unions) % variants.len()
                    }
                };
                let v = &variants[i];
                let max_tag = variants.iter().map(|v| v.tag).max().unwrap();
                let unknown: BTreeSet<u8> = [0, max_tag.saturating_add(1), u8::MAX]
                    .into_iter()
                    .filter(|t| variants.iter().all(|v| v.tag != *t))
                    .collect();
                let mut tag = v.tag;
                let mut group = self.g.group(&v.group);
                for t in unknown {
                    self.dict.insert(vec![t]);
                    let what = format!("{} = unknown tag {t}", f.name);
                    if self.point(what, f.error.as_ref().unwrap(), &f.req) {
                        tag = t;
                        if let Some(g) = &f.unknown_tag_body {
                            group = self.g.group(g);
                        }
                    }
                }
                for v in variants {
                    self.dict.insert(vec![v.tag]);
                }
                if tag == v.tag && self.mutable {
                    self.variants.insert((f.name.clone(), v.tag));
                }
                out.push(tag);
                let mut inner = env.clone();
                self.fields(&group.field, &mut inner, out, false);
            }
            other => panic!("unknown field type {other}"),
        }
    }

    fn int_field(&mut self, f: &Field, ty: IntTy, env: &mut Env, out: &mut Vec<u8>) {
        let (lo, hi) = int_range(f, ty, env);
        let ruled = f.value.is_some() || f.min.is_some() || f.max.is_some();
        let v = match &f.value {
            Some(e) => eval(e, env),
            None => {
                let small = is_count(self.g, &f.name);
                if !ruled && f.at_least.is_none() && self.strategy == Strategy::Random {
                    self.rng.range(lo, hi)
                } else {
                    self.pick(lo, hi, small)
                }
            }
        };
        env.set(&f.name, v);
        // Exact values and range ends (not the random values in between).
        if f.value.is_some() {
            self.dict.insert(ty.bytes(v));
        }
        if f.min.is_some() || f.max.is_some() {
            self.dict.insert(ty.bytes(lo));
            self.dict.insert(ty.bytes(hi));
        }
        let mut emitted = v;
        let mut items = v;
        for (what, bad, error) in int_violations(f, ty, env, v) {
            self.dict.insert(ty.bytes(bad));
            let what = format!("{} = {bad} ({what})", f.name);
            if self.point(what.clone(), &error, &f.req) {
                emitted = bad;
                // A lower bound checked after the body (SessionAccept's
                // rounds) is met by as many items as declared.
                if f.deferred_below && bad < v {
                    items = bad;
                }
            }
        }
        env.set(&format!("#items:{}", f.name), items);
        out.extend_from_slice(&ty.bytes(emitted));
    }

    /// A length field: `actual` is the byte count of what it measures;
    /// `last` says nothing follows that within the input.
    fn length_field(
        &mut self,
        f: &Field,
        env: &mut Env,
        actual: usize,
        last: bool,
        out: &mut Vec<u8>,
    ) {
        let ty = IntTy::parse(&f.ty).unwrap();
        let actual = actual as i128;
        if let Some(e) = &f.value {
            assert_eq!(
                eval(e, env),
                actual,
                "{}: length differs from its value rule",
                f.name
            );
        }
        let mut emitted = actual;
        let mut violations = int_violations(f, ty, env, actual);
        if let Some(e) = &f.error_declared_more {
            let bad = if last { actual + 1 } else { ty.bounds().1 };
            violations.push(("past the end of the input".into(), bad, e.clone()));
        }
        if let Some(e) = &f.error_declared_less {
            if actual >= 1 {
                violations.push(("one byte short".into(), actual - 1, e.clone()));
            }
        }
        for (what, bad, error) in violations {
            if !what.starts_with("past") && !what.starts_with("one byte short") {
                self.dict.insert(ty.bytes(bad));
            }
            if self.point(format!("{} = {bad} ({what})", f.name), &error, &f.req) {
                emitted = bad;
            }
        }
        if f.value.is_some() {
            self.dict.insert(ty.bytes(actual));
        }
        out.extend_from_slice(&ty.bytes(emitted));
    }

    fn bytes_field(&mut self, f: &Field, env: &mut Env, out: &mut Vec<u8>) {
        if f.prefix.is_some() {
            return self.string_field(f, env, out);
        }
        let len = eval(f.len.as_ref().unwrap(), env) as usize;
        for _ in 0..len {
            let b = match self.strategy {
                Strategy::Min => 0,
                Strategy::Max => 0xff,
                Strategy::Random => self.rng.next() as u8,
            };
            out.push(b);
        }
    }

    /// A length-prefixed string or byte string.
    fn string_field(&mut self, f: &Field, env: &mut Env, out: &mut Vec<u8>) {
        let prefix = IntTy::parse(f.prefix.as_ref().unwrap()).unwrap();
        let min = f.min_len.as_ref().map_or(0, |e| eval(e, env));
        let max = eval(f.max_len.as_ref().unwrap(), env);
        let len = match self.strategy {
            Strategy::Min => min,
            Strategy::Max => max,
            Strategy::Random => min + self.rng.range(0, 40).min(max - min),
        };
        let charset = f.charset.as_deref();
        let mut content = self.text(charset, len as usize);
        let error_len = f.error_len.as_ref().unwrap();
        for l in [min - 1, max + 1] {
            if l >= 0 {
                self.dict.insert(prefix.bytes(l));
            }
        }
        self.dict.insert(prefix.bytes(min));
        self.dict.insert(prefix.bytes(max));
        if min >= 1
            && self.point(
                format!("{} length {} (below)", f.name, min - 1),
                error_len,
                &f.req,
            )
        {
            content.clear();
        }
        if self.point(
            format!("{} length {} (above)", f.name, max + 1),
            error_len,
            &f.req,
        ) {
            content = self.text(charset, max as usize + 1);
        }
        if let Some(e) = &f.error_content {
            if !content.is_empty() {
                let what = format!("{} with a byte outside its charset", f.name);
                if self.point(what, e, &f.req) {
                    content[0] = if charset == Some("id") { b' ' } else { 0xff };
                }
            }
        }
        out.extend_from_slice(&prefix.bytes(content.len() as i128));
        out.extend_from_slice(&content);
    }

    fn text(&mut self, charset: Option<&str>, len: usize) -> Vec<u8> {
        const ID: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._@-";
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            match (charset, self.strategy) {
                (Some("id"), Strategy::Min) => out.push(b'A'),
                (Some("id"), Strategy::Max) => out.push(b'-'),
                (Some("id"), Strategy::Random) => out.push(ID[self.rng.next() as usize % ID.len()]),
                (Some("utf8"), Strategy::Random)
                    if len - out.len() >= 2 && self.rng.next().is_multiple_of(4) =>
                {
                    out.extend_from_slice("é".as_bytes())
                }
                (Some("utf8"), _) => out.push(b'a' + (self.rng.next() % 26) as u8),
                _ => out.push(match self.strategy {
                    Strategy::Min => 0,
                    Strategy::Max => 0xff,
                    Strategy::Random => self.rng.next() as u8,
                }),
            }
        }
        out
    }

    fn poly_field(&mut self, f: &Field, env: &mut Env, out: &mut Vec<u8>) {
        let ctx = self.ctx.expect("a polynomial needs a context");
        let n = eval(f.count.as_ref().unwrap(), env) as usize;
        let moduli: Vec<u64> = match f.modulus.as_deref() {
            Some("q") => ctx.q().limbs().iter().map(|m| m.value()).collect(),
            Some("P") => vec![ctx.params().p().value()],
            other => panic!("unknown modulus {other:?}"),
        };
        let error = f.error.clone().unwrap();
        for (l, &m) in moduli.iter().enumerate() {
            self.dict.insert((m - 1).to_le_bytes().to_vec());
            self.dict.insert(m.to_le_bytes().to_vec());
            let start = self.coeffs;
            let mut block: Vec<u64> = (0..n)
                .map(|_| match self.strategy {
                    Strategy::Min => 0,
                    Strategy::Max => m - 1,
                    Strategy::Random => {
                        let r = self.rng.next();
                        match r & 7 {
                            0 => 0,
                            1 => m - 1,
                            _ => r % m,
                        }
                    }
                })
                .collect();
            let what = format!("{} limb {l} residue 0 = q_{l}", f.name);
            if self.point_full(what, &error, &f.req, Some(start)) {
                block[0] = m;
            }
            let what = format!("{} limb {l} last residue = 2^64 - 1", f.name);
            if self.point_full(what, &error, &f.req, Some(start + n - 1)) {
                block[n - 1] = u64::MAX;
            }
            for c in block {
                out.extend_from_slice(&c.to_le_bytes());
            }
            self.coeffs += n;
        }
    }

    fn object_field(&mut self, f: &Field, env: &mut Env, out: &mut Vec<u8>) {
        let m = self.g.message(f.object.as_ref().unwrap());
        let mut inner = Env::new(self.ctx);
        if let Some(l) = &f.level {
            inner.set("LEVEL", eval(l, env));
        }
        let saved = self.coeffs;
        self.wraps.push("Wire");
        self.path.push(f.name.clone());
        let obj = self.entry(m, &mut inner);
        self.path.pop();
        self.wraps.pop();
        self.coeffs = saved;
        let prefix = f.prefix.clone().unwrap();
        let pf = Field {
            name: format!("{} length prefix", f.name),
            ty: prefix,
            length_of: Some("object".into()),
            error_declared_more: f.error_declared_more.clone(),
            error_declared_less: f.error_declared_less.clone(),
            req: f.req.clone(),
            ..Field::default()
        };
        self.length_field(&pf, env, obj.len(), false, out);
        out.extend_from_slice(&obj);
    }
}

/// Bytes a fixed-width header field takes.
fn field_width(f: &Field) -> usize {
    match f.ty.as_str() {
        "magic" => f.value.as_ref().unwrap().len(),
        ty => IntTy::parse(ty).map(|t| t.bytes(0).len()).unwrap(),
    }
}

/// Whether a field is the count of a repeat somewhere in the grammar.
fn is_count(g: &Grammar, name: &str) -> bool {
    let all = g
        .message
        .iter()
        .flat_map(|m| &m.field)
        .chain(g.group.iter().flat_map(|g| &g.field));
    let mut all = all;
    all.any(|f| f.ty == "repeat" && f.count.as_deref() == Some(name))
}

/// The valid range of an integer field (its type's, narrowed by min, max
/// and at_least).
fn int_range(f: &Field, ty: IntTy, env: &Env) -> (i128, i128) {
    let (mut lo, mut hi) = ty.bounds();
    if let Some(e) = &f.min {
        lo = lo.max(eval(e, env));
    }
    if let Some(e) = &f.max {
        hi = hi.min(eval(e, env));
    }
    if let Some(other) = &f.at_least {
        lo = lo.max(env.get(other));
    }
    (lo, hi)
}

/// Values that break an integer field's rules, with the error each raises.
fn int_violations(f: &Field, ty: IntTy, env: &Env, v: i128) -> Vec<(String, i128, String)> {
    let (tlo, thi) = ty.bounds();
    let mut out: Vec<(String, i128, String)> = Vec::new();
    let above = f.error_above.as_ref().or(f.error.as_ref());
    let below = f.error_below.as_ref().or(f.error.as_ref());
    let mut push = |what: &str, bad: i128, error: Option<&String>| {
        if (tlo..=thi).contains(&bad) && out.iter().all(|(_, b, _)| *b != bad) {
            let error = error.unwrap_or_else(|| panic!("{}: a rule without an error", f.name));
            out.push((what.to_owned(), bad, error.clone()));
        }
    };
    if let Some(e) = &f.value {
        if f.length_of.is_some() {
            // A length with a value rule (an object's body length).
            let size = eval(e, env);
            for bad in [size + 1, size - 1, thi, 0] {
                if bad != size {
                    push("not the exact size", bad, f.error.as_ref());
                }
            }
            return out;
        }
        let candidates: Vec<i128> = match &f.mutate_to {
            Some(list) => list.iter().map(|e| eval(e, env)).collect(),
            None => vec![v + 1, v - 1, thi, 0],
        };
        for bad in candidates.into_iter().filter(|&b| b != v) {
            if bad > v {
                push("not the required value", bad, above);
            } else {
                push("not the required value", bad, below);
            }
        }
        return out;
    }
    if let Some(e) = &f.min {
        let min = eval(e, env);
        push("below the minimum", min - 1, below);
        push("the type's minimum", tlo, below);
    }
    if let Some(e) = &f.max {
        let max = eval(e, env);
        push("above the maximum", max + 1, above);
        push("the type's maximum", thi, above);
    }
    if let Some(other) = &f.at_least {
        push(
            &format!("one less than {other}"),
            env.get(other) - 1,
            f.error.as_ref(),
        );
    }
    out
}

// -------------------------------------------------------------- the parser

/// Reads bytes by the grammar: the grammar's own verdict on an encoding,
/// compared with the decoders' on every generated case and applied to
/// encodings the crate makes from real keys and sessions.
struct Parser<'a> {
    g: &'a Grammar,
    ctx: Option<&'a Context>,
    bytes: &'a [u8],
    pos: usize,
}

type Verdict = Result<(), String>;

impl<'a> Parser<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(len).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("{len} bytes past the end at {}", self.pos))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn int(&mut self, ty: IntTy) -> Result<i128, String> {
        let width = ty.bytes(0).len();
        let b = self.take(width)?;
        let mut w = [0u8; 8];
        Ok(match ty {
            IntTy::U32Be => u32::from_be_bytes(b.try_into().unwrap()) as i128,
            IntTy::I64 => i64::from_le_bytes(b.try_into().unwrap()) as i128,
            _ => {
                w[..width].copy_from_slice(b);
                u64::from_le_bytes(w) as i128
            }
        })
    }

    /// A whole input: the entry and nothing after it.
    fn top(&mut self, m: &Message, env: &mut Env) -> Verdict {
        self.entry(m, env)?;
        match self.bytes.len() - self.pos {
            0 => Ok(()),
            n => Err(format!("{n} bytes after the end")),
        }
    }

    fn entry(&mut self, m: &Message, env: &mut Env) -> Verdict {
        if let Some(k) = m.kind {
            env.set("KIND", k as i128);
        }
        if let Some(s) = &m.size {
            let size = eval(s, env);
            env.set("SIZE", size);
        }
        let Some(h) = &m.header else {
            return self.fields(&m.field, env);
        };
        // Without a length field (a control message) the body is the rest.
        let mut declared = None;
        for f in &self.g.layout(h).field {
            let v = self.field(f, env)?;
            if f.length_of.is_some() {
                declared = Some(v);
            }
        }
        let start = self.pos;
        let end = declared.map_or(self.bytes.len() as i128, |d| start as i128 + d);
        if end > self.bytes.len() as i128 {
            return Err("the body is shorter than declared".into());
        }
        let mut body = Parser {
            g: self.g,
            ctx: self.ctx,
            bytes: &self.bytes[..end as usize],
            pos: start,
        };
        body.fields(&m.field, env)?;
        if body.pos != end as usize {
            return Err("the body is longer than its fields".into());
        }
        self.pos = end as usize;
        Ok(())
    }

    fn fields(&mut self, fields: &[Field], env: &mut Env) -> Verdict {
        for (i, f) in fields.iter().enumerate() {
            let v = self.field(f, env)?;
            if f.length_of.is_some() {
                if self.bytes.len() - self.pos != v as usize {
                    return Err(format!("{} does not match what follows", f.name));
                }
                return self.fields(&fields[i + 1..], env);
            }
        }
        Ok(())
    }

    /// Reads one field, checks its rules; returns its value (integers).
    fn field(&mut self, f: &Field, env: &mut Env) -> Result<i128, String> {
        let bad = |what: &str| Err(format!("{}: {what}", f.name));
        if let Some(ty) = IntTy::parse(&f.ty) {
            let v = self.int(ty)?;
            if let Some(e) = &f.value {
                if v != eval(e, env) {
                    return bad("not its value");
                }
            }
            let (lo, hi) = int_range(f, ty, env);
            if v < lo || v > hi {
                return bad("out of range");
            }
            env.set(&f.name, v);
            return Ok(v);
        }
        match f.ty.as_str() {
            "magic" => {
                let want = f.value.as_ref().unwrap().as_bytes();
                if self.take(want.len())? != want {
                    return bad("wrong magic");
                }
            }
            "bytes" | "string" => {
                let len = match (&f.prefix, &f.len) {
                    (Some(p), _) => {
                        let len = self.int(IntTy::parse(p).unwrap())?;
                        let min = f.min_len.as_ref().map_or(0, |e| eval(e, env));
                        if len < min || len > eval(f.max_len.as_ref().unwrap(), env) {
                            return bad("length out of range");
                        }
                        len as usize
                    }
                    (None, Some(e)) => eval(e, env) as usize,
                    (None, None) => panic!("{}: no length", f.name),
                };
                let content = self.take(len)?;
                let ok = match f.charset.as_deref() {
                    Some("id") => content
                        .iter()
                        .all(|&c| c.is_ascii_alphanumeric() || b"._@-".contains(&c)),
                    Some("utf8") => std::str::from_utf8(content).is_ok(),
                    _ => true,
                };
                if !ok {
                    return bad("outside its charset");
                }
            }
            "poly" => {
                let ctx = self.ctx.expect("a context");
                let n = eval(f.count.as_ref().unwrap(), env) as usize;
                let moduli: Vec<u64> = match f.modulus.as_deref() {
                    Some("q") => ctx.q().limbs().iter().map(|m| m.value()).collect(),
                    _ => vec![ctx.params().p().value()],
                };
                for m in moduli {
                    for c in self.take(8 * n)?.chunks_exact(8) {
                        if u64::from_le_bytes(c.try_into().unwrap()) >= m {
                            return bad("unreduced");
                        }
                    }
                }
            }
            "object" => {
                let len = self.int(IntTy::parse(f.prefix.as_ref().unwrap()).unwrap())?;
                let bytes = self.take(len as usize)?;
                let mut inner = Env::new(self.ctx);
                if let Some(l) = &f.level {
                    inner.set("LEVEL", eval(l, env));
                }
                let m = self.g.message(f.object.as_ref().unwrap());
                let mut p = Parser {
                    g: self.g,
                    ctx: self.ctx,
                    bytes,
                    pos: 0,
                };
                p.top(m, &mut inner)?;
            }
            "repeat" => {
                let group = self.g.group(f.group.as_ref().unwrap());
                for i in 0..eval(f.count.as_ref().unwrap(), env) {
                    let mut inner = env.clone();
                    inner.set("INDEX", i);
                    self.fields(&group.field, &mut inner)?;
                }
            }
            "union" => {
                let tag = self.take(1)?[0];
                let Some(v) = f.variants.iter().flatten().find(|v| v.tag == tag) else {
                    return bad("unknown tag");
                };
                let mut inner = env.clone();
                self.fields(&self.g.group(&v.group).field, &mut inner)?;
            }
            other => panic!("unknown field type {other}"),
        }
        Ok(0)
    }
}

/// The grammar's verdict on `bytes` as an `m`.
fn parse(
    m: &Message,
    ctx: Option<&Context>,
    bytes: &[u8],
    level: Option<u32>,
    limit: Option<i128>,
) -> Verdict {
    let mut env = Env::new(ctx);
    if let Some(l) = level {
        env.set("LEVEL", l as i128);
    }
    if let Some(l) = limit {
        env.set("LIMIT", l);
    }
    if let Some(a) = &m.arg {
        let l = env.get(&a.name);
        if l < eval(&a.min, &env) || l > eval(&a.max, &env) {
            return Err(format!("{} out of range", a.name));
        }
    }
    let mut p = Parser {
        g: grammar(),
        ctx,
        bytes,
        pos: 0,
    };
    p.top(m, &mut env)
}

// ------------------------------------------------------------ the decoders

/// A decoder's typed error, reduced to what the grammar names: the variant
/// (and, inside `Wire(..)` or `Malformed(..)`, the wrapped variant or the
/// static reason), the residue index of `Unreduced`, and whose fault.
#[derive(Debug, PartialEq, Eq)]
struct Got {
    name: String,
    index: Option<usize>,
    fault: &'static str,
}

fn wire_name(e: &WireError) -> (String, Option<usize>) {
    let name = match e {
        WireError::Truncated { .. } => "Truncated",
        WireError::BadMagic => "BadMagic",
        WireError::UnsupportedVersion(_) => "UnsupportedVersion",
        WireError::WrongKind { .. } => "WrongKind",
        WireError::Reserved(_) => "Reserved",
        WireError::ParameterMismatch { .. } => "ParameterMismatch",
        WireError::BadLength { .. } => "BadLength",
        WireError::TrailingBytes(_) => "TrailingBytes",
        WireError::WrongRingDegree { .. } => "WrongRingDegree",
        WireError::Unreduced { index } => return ("Unreduced".into(), Some(*index)),
        WireError::WrongGaloisElement { .. } => "WrongGaloisElement",
        WireError::WrongRowCount { .. } => "WrongRowCount",
        WireError::NoSuchLevel { .. } => "NoSuchLevel",
        other => panic!("WireError variant unknown to this test: {other:?}"),
    };
    (name.into(), None)
}

fn wire_got(e: WireError) -> Got {
    let fault = if matches!(e, WireError::NoSuchLevel { .. }) {
        "caller"
    } else {
        "peer"
    };
    let (name, index) = wire_name(&e);
    Got { name, index, fault }
}

fn protocol_got(e: ProtocolError) -> Got {
    let fault = match e.fault {
        Fault::Peer => "peer",
        Fault::Local => "local",
    };
    let (name, index) = match &e.kind {
        ErrorKind::Wire(w) => {
            let (n, i) = wire_name(w);
            (format!("Wire({n})"), i)
        }
        ErrorKind::Malformed(reason) => (format!("Malformed({reason})"), None),
        ErrorKind::TooLarge { .. } => ("TooLarge".into(), None),
        ErrorKind::UnexpectedMessage { .. } => ("UnexpectedMessage".into(), None),
        ErrorKind::BadKeySet => ("BadKeySet".into(), None),
        other => (format!("not a decoding error: {other:?}"), None),
    };
    Got { name, index, fault }
}

fn object_decode(
    name: &str,
    ctx: &Context,
    bytes: &[u8],
    level: Option<u32>,
) -> Result<Vec<u8>, Got> {
    let r = match name {
        "Ciphertext" => {
            wire::decode_ciphertext(ctx, bytes).map(|x| wire::encode_ciphertext(ctx, &x))
        }
        "SeededCiphertext" => wire::decode_seeded_ciphertext(ctx, bytes)
            .map(|x| wire::encode_seeded_ciphertext(ctx, &x)),
        "SeededGaloisKey" => wire::decode_galois_key(ctx, bytes, level.unwrap())
            .map(|x| wire::encode_galois_key(ctx, &x)),
        "SeededPublicKey" => {
            wire::decode_public_key(ctx, bytes).map(|x| wire::encode_public_key(ctx, &x))
        }
        other => panic!("no decoder for object {other}"),
    };
    r.map_err(wire_got)
}

fn message_decode(name: &str, ctx: &Context, bytes: &[u8]) -> Result<Vec<u8>, Got> {
    use protocol::{Response, SessionAccept, SessionRequest, Upload};
    let r = match name {
        "SessionRequest" => SessionRequest::decode(ctx, bytes).map(|m| m.encode(ctx)),
        "SessionAccept" => SessionAccept::decode(ctx, bytes).map(|m| m.encode(ctx)),
        "Upload" => Upload::decode(ctx, bytes).map(|m| m.encode(ctx)),
        "Response" => Response::decode(ctx, bytes).map(|m| m.encode(ctx)),
        other => panic!("no decoder for message {other}"),
    };
    r.map_err(protocol_got)
}

#[cfg(feature = "net")]
mod net_decoders {
    use super::Got;
    use safhire::net::frame::{self, Payload, Timeouts};
    use safhire::net::{Control, FrameError, NetError, NetErrorKind};
    use safhire::protocol::Fault;
    use std::time::Duration;

    pub fn frame_name(e: &FrameError) -> String {
        match e {
            FrameError::TooLarge { .. } => "TooLarge".into(),
            FrameError::Empty => "Empty".into(),
            FrameError::Truncated { .. } => "Truncated".into(),
            FrameError::UnknownMagic => "UnknownMagic".into(),
            FrameError::UnsupportedVersion(_) => "UnsupportedVersion".into(),
            FrameError::UnknownKind(_) => "UnknownKind".into(),
            FrameError::Malformed(reason) => format!("Malformed({reason})"),
            other => panic!("FrameError variant unknown to this test: {other:?}"),
        }
    }

    /// Decodes a control message; on success returns its re-encoding and
    /// the Debug name of the decoded variant (and of the refusal's).
    pub fn control(bytes: &[u8]) -> Result<(Vec<u8>, String), Got> {
        let decoded = Control::decode(bytes);
        // Payload::parse dispatches on the magic to the same decoder.
        match (&decoded, Payload::parse(bytes)) {
            (Ok(c), Ok(Payload::Control(p))) => assert_eq!(c, &p),
            (Err(e), Err(p)) if bytes.len() >= 4 => assert_eq!(e, &p),
            (_, Err(FrameError::UnknownMagic)) if bytes.len() < 4 => {}
            (d, p) => panic!("Payload::parse disagrees with Control::decode: {d:?} / {p:?}"),
        }
        match decoded {
            Ok(c) => {
                let name = match &c {
                    Control::Refusal(r) => {
                        assert_eq!(r.code(), bytes[8], "refusal code");
                        format!("{r:?}")
                    }
                    other => format!("{other:?}"),
                };
                let name = name
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .next()
                    .unwrap()
                    .to_owned();
                Ok((c.encode(), name))
            }
            Err(e) => Err(Got {
                name: frame_name(&e),
                index: None,
                fault: "peer",
            }),
        }
    }

    /// Reads one frame; on success returns its re-encoding.
    pub fn read(bytes: &[u8], limit: usize) -> Result<Vec<u8>, Got> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let t = Timeouts {
            idle: Duration::from_secs(30),
            read: Duration::from_secs(30),
        };
        let mut reader = bytes;
        match rt.block_on(frame::read_frame(&mut reader, limit, t)) {
            Ok(Some(payload)) => Ok(frame::encode_frame(&payload).unwrap()),
            Ok(None) => Err(Got {
                name: "close".into(),
                index: None,
                fault: "peer",
            }),
            Err(NetError { fault, kind }) => {
                let name = match &kind {
                    NetErrorKind::Frame(e) => frame_name(e),
                    other => format!("not a frame error: {other:?}"),
                };
                let fault = if fault == Fault::Peer {
                    "peer"
                } else {
                    "local"
                };
                Err(Got {
                    name,
                    index: None,
                    fault,
                })
            }
        }
    }
}

// ------------------------------------------------------------- the driver

fn ctx(set: &str) -> &'static Context {
    static CTX: OnceLock<BTreeMap<&'static str, Context>> = OnceLock::new();
    let all = CTX.get_or_init(|| {
        ["b8", "b16", "s16"]
            .into_iter()
            .map(|s| (s, Context::new(ParameterSet::shipped(s).unwrap())))
            .collect()
    });
    &all[set]
}

/// One generated input and what must become of it.
struct Case {
    label: String,
    bytes: Vec<u8>,
    level: Option<u32>,
    /// `None`: the decoder must accept it and re-encode to the same bytes.
    expect: Option<Point>,
}

/// Random samples per layer: enough to reach every union variant.
fn random_samples(layer: &str) -> usize {
    match layer {
        "object" => 2,
        "message" => 3,
        "control" => 8,
        _ => 3,
    }
}

/// Every case of `m`: the samples, then, for the minimum sample and the
/// first two random ones, every single-rule violation. Calls `visit` on
/// each (the large ones are never kept together).
fn cases(
    m: &Message,
    ctx: Option<&Context>,
    limit: Option<i128>,
    dict: &mut BTreeSet<Vec<u8>>,
    variants: &mut BTreeSet<(String, u8)>,
    visit: &mut dyn FnMut(Case),
) {
    let g = grammar();
    let mut strategies = vec![Strategy::Min, Strategy::Max];
    strategies.extend(std::iter::repeat_n(
        Strategy::Random,
        random_samples(&m.layer),
    ));
    for (si, &strategy) in strategies.iter().enumerate() {
        let seed = m.name.bytes().fold(si as u64 + 1, |h, b| {
            h.wrapping_mul(31).wrapping_add(b as u64)
        });
        let base = || {
            let mut env = Env::new(ctx);
            if let Some(l) = limit {
                env.set("LIMIT", l);
            }
            env
        };
        let mut gen = Gen::new(g, ctx, seed, strategy, None);
        gen.sample = si;
        let (bytes, level) = gen.top(m, &mut base());
        dict.append(&mut gen.dict);
        variants.append(&mut gen.variants);
        let points = gen.points.len();
        let sample = format!("{}-{}{si}", m.name, format!("{strategy:?}").to_lowercase());
        visit(Case {
            label: sample.clone(),
            bytes,
            level,
            expect: None,
        });
        if !matches!(si, 0 | 2 | 3) {
            continue;
        }
        for t in 0..points {
            let mut gen = Gen::new(g, ctx, seed, strategy, Some(t));
            gen.sample = si;
            let (bytes, level) = gen.top(m, &mut base());
            dict.append(&mut gen.dict);
            let p = gen.applied.expect("the target rule was met");
            visit(Case {
                label: format!("{sample}: {}", p.what),
                bytes,
                level: p.level.or(level),
                expect: Some(p),
            });
        }
    }
}

/// Checks one case against the decoder's verdict.
fn check(
    m: &Message,
    case: &Case,
    got: Result<Vec<u8>, Got>,
    grammar_says: Verdict,
    checked: &mut BTreeSet<String>,
) {
    let label = &case.label;
    // The grammar read as a parser agrees with the decoder.
    assert_eq!(
        grammar_says.is_ok(),
        got.is_ok(),
        "{label}: the grammar's parser says {grammar_says:?}, the decoder {:?}",
        got.as_ref().err()
    );
    match (&case.expect, got) {
        (None, Ok(reencoded)) => {
            assert!(
                reencoded == case.bytes,
                "{label}: re-encodes to other bytes"
            );
        }
        (None, Err(e)) => panic!("{label}: a grammar-valid encoding was refused: {e:?}"),
        (Some(p), Ok(_)) => panic!("{label}: accepted, the grammar says {}", p.error),
        (Some(p), Err(e)) => {
            assert_eq!(e.name, p.error, "{label} ({:?}): wrong error", p.req);
            assert_eq!(e.fault, p.fault, "{label}: wrong party at fault");
            if p.index.is_some() {
                assert_eq!(e.index, p.index, "{label}: Unreduced names another residue");
            }
            checked.insert(format!("{}: {}", m.name, p.error));
        }
    }
}

fn run_objects_on(set: &str) -> BTreeSet<String> {
    let c = ctx(set);
    let mut checked = BTreeSet::new();
    let (mut dict, mut variants) = (BTreeSet::new(), BTreeSet::new());
    for m in grammar().layer("object") {
        let kind = match m.name.as_str() {
            "Ciphertext" => wire::Kind::Ciphertext,
            "SeededCiphertext" => wire::Kind::SeededCiphertext,
            "SeededGaloisKey" => wire::Kind::SeededGaloisKey,
            "SeededPublicKey" => wire::Kind::SeededPublicKey,
            other => panic!("the grammar has an object {other} the code does not"),
        };
        let size = eval(m.size.as_ref().unwrap(), &Env::new(Some(c)));
        assert_eq!(wire::body_len(kind, c) as i128, size, "{}: size", m.name);
        let mut n = 0;
        cases(m, Some(c), None, &mut dict, &mut variants, &mut |case| {
            check(
                m,
                &case,
                object_decode(&m.name, c, &case.bytes, case.level),
                parse(m, Some(c), &case.bytes, case.level, None),
                &mut checked,
            );
            n += 1;
        });
        assert!(n > 20, "{}: only {n} cases", m.name);
    }
    checked
}

// WIRE-6, WIRE-1..WIRE-3: every object the grammar generates is accepted
// and canonical; every single-rule violation is refused with its error.
#[test]
fn objects_follow_the_grammar() {
    let checked = run_objects_on("b8");
    for e in [
        "BadMagic",
        "WrongKind",
        "BadLength",
        "Unreduced",
        "WrongRowCount",
        "NoSuchLevel",
    ] {
        assert!(checked.iter().any(|c| c.ends_with(e)), "{e} never checked");
    }
}

// WIRE-5, WIRE-6: the same on the RNS set s16 (two limbs, limb-major).
#[test]
fn objects_follow_the_grammar_under_an_rns_modulus() {
    assert_eq!(ctx("s16").limbs(), 2);
    let checked = run_objects_on("s16");
    assert!(checked.iter().any(|c| c.ends_with("Unreduced")));
}

// WIRE-6, PROTO-4, PROTO-10: the four protocol messages.
#[test]
fn messages_follow_the_grammar() {
    let c = ctx("b8");
    let mut checked = BTreeSet::new();
    let (mut dict, mut variants) = (BTreeSet::new(), BTreeSet::new());
    let max_body = Env::new(Some(c)).get("MAX_BODY") as usize;
    for m in grammar().layer("message") {
        cases(
            m,
            Some(c),
            None,
            &mut dict,
            &mut variants,
            &mut |mut case| {
                // A sample bigger than the body limit (the largest Response: the
                // count bound and the body bound are separate rules) must be
                // refused as too large.
                if case.expect.is_none() && case.bytes.len() > max_body + 20 {
                    case.expect = Some(Point {
                        what: "body over the limit".into(),
                        error: "TooLarge".into(),
                        index: None,
                        fault: "peer",
                        req: Some("PROTO-4".into()),
                        level: None,
                    });
                }
                check(
                    m,
                    &case,
                    message_decode(&m.name, c, &case.bytes),
                    parse(m, Some(c), &case.bytes, None, None),
                    &mut checked,
                );
            },
        );
    }
    assert!(variants.contains(&("tag".into(), 1)) && variants.contains(&("tag".into(), 2)));
    for e in [
        "BadKeySet",
        "UnexpectedMessage",
        "TooLarge",
        "Wire(Unreduced)",
        "Malformed(unknown client op)",
    ] {
        assert!(checked.iter().any(|c| c.ends_with(e)), "{e} never checked");
    }
}

// WIRE-6, NET-2, NET-7: the control messages.
#[cfg(feature = "net")]
#[test]
fn control_messages_follow_the_grammar() {
    let mut checked = BTreeSet::new();
    let (mut dict, mut variants) = (BTreeSet::new(), BTreeSet::new());
    for m in grammar().layer("control") {
        cases(m, None, None, &mut dict, &mut variants, &mut |case| {
            let got = net_decoders::control(&case.bytes).map(|(bytes, name)| {
                if case.expect.is_none() && m.name != "Refusal" {
                    assert_eq!(name, m.name, "{}: decoded as another message", case.label);
                }
                if m.name == "Refusal" {
                    let union = &m.field[0];
                    let v = union.variants.as_ref().unwrap();
                    assert!(v.iter().any(|v| v.name == name && v.tag == case.bytes[8]));
                }
                bytes
            });
            let parsed = parse(m, None, &case.bytes, None, None);
            check(m, &case, got, parsed, &mut checked);
        });
    }
    let refusals = grammar().message("Refusal").field[0]
        .variants
        .as_ref()
        .unwrap();
    for v in refusals {
        assert!(
            variants.contains(&("code".into(), v.tag)),
            "refusal {} never generated",
            v.name
        );
    }
    assert!(checked.iter().any(|c| c.ends_with("UnknownKind")));
}

// WIRE-6, NET-1: frames under both limits.
#[cfg(feature = "net")]
#[test]
fn frames_follow_the_grammar() {
    let m = grammar().message("Frame");
    let mut checked = BTreeSet::new();
    let (mut dict, mut variants) = (BTreeSet::new(), BTreeSet::new());
    for (name, limit) in [
        ("MAX_FRAME", safhire::net::MAX_FRAME),
        ("MAX_CONTROL_FRAME", safhire::net::MAX_CONTROL_FRAME),
    ] {
        assert!(m.limits.as_ref().unwrap().iter().any(|l| l == name));
        let l = Env::new(None).get(name);
        assert_eq!(l, limit as i128, "{name}");
        cases(m, None, Some(l), &mut dict, &mut variants, &mut |case| {
            check(
                m,
                &case,
                net_decoders::read(&case.bytes, limit),
                parse(m, None, &case.bytes, None, Some(l)),
                &mut checked,
            );
        });
        // An input that ends before a frame starts is a close, not an error.
        assert_eq!(net_decoders::read(&[], limit).unwrap_err().name, "close");
    }
    for e in ["Empty", "TooLarge", "Truncated"] {
        assert!(checked.iter().any(|c| c.ends_with(e)), "{e} never checked");
    }
}

// WIRE-6: what the crate sends is in the grammar: objects made from real
// keys, the four messages of a real session of the shipped model, and
// (feature `net`) real control messages and frames.
#[test]
fn real_encodings_follow_the_grammar() {
    use safhire::engine;
    use safhire::model::Model;
    use safhire::protocol::{Client, ClientId, Endpoint, Policy, ServerStep};
    use safhire::rlwe::{GaloisKeys, SecretKey, SeededPublicKey};
    use safhire::rng::Csprng;
    use std::sync::Arc;

    let g = grammar();
    let obey = |name: &str, ctx: Option<&Context>, bytes: &[u8], level: Option<u32>| {
        let verdict = parse(g.message(name), ctx, bytes, level, None);
        assert_eq!(
            verdict,
            Ok(()),
            "{name} made by the crate breaks the grammar"
        );
    };
    for set in ["b8", "s16"] {
        let c = ctx(set);
        let mut rng = Csprng::from_seed([7; 16]);
        let sk = SecretKey::generate(c, &mut rng);
        let seeded = c.encrypt_seeded(&sk, &[1, -2, 3], &mut rng);
        obey(
            "SeededCiphertext",
            Some(c),
            &wire::encode_seeded_ciphertext(c, &seeded),
            None,
        );
        let full = c.encrypt(&sk, &[4, 5], &mut rng);
        obey(
            "Ciphertext",
            Some(c),
            &wire::encode_ciphertext(c, &full),
            None,
        );
        let pk = SeededPublicKey::generate(c, &sk, &mut rng);
        obey(
            "SeededPublicKey",
            Some(c),
            &wire::encode_public_key(c, &pk),
            None,
        );
        let keys = GaloisKeys::generate_seeded(c, &sk, &mut rng);
        for (i, k) in keys.iter().enumerate().step_by(5) {
            let bytes = wire::encode_galois_key(c, k);
            obey("SeededGaloisKey", Some(c), &bytes, Some(i as u32 + 1));
            // The same bytes are not a key of the next level.
            assert!(parse(
                g.message("SeededGaloisKey"),
                Some(c),
                &bytes,
                Some(i as u32 + 2),
                None
            )
            .is_err());
        }
    }

    // One round of a real session on b16, every message encoded.
    let c = Arc::new(Context::new(ParameterSet::shipped("b16").unwrap()));
    let model = Model::from_json(include_str!("../models/digits-cnn.json")).unwrap();
    let model = Arc::new(engine::compile(&c, &model).unwrap());
    let policy = Policy::shipped("benchmark").unwrap();
    let mut server = Endpoint::new(c.clone(), model, policy).unwrap();
    let (client, request) = Client::start(c.clone());
    obey("SessionRequest", Some(&c), &request.encode(&c), None);
    let (session, accept) = server.accept(&ClientId("grammar".into()), request).unwrap();
    obey("SessionAccept", Some(&c), &accept.encode(&c), None);
    let input = vec![accept.input_range().0; accept.input_len() as usize];
    let client = client.receive_accept(accept).unwrap();
    let (_, upload) = client.send_input(&input).unwrap();
    obey("Upload", Some(&c), &upload.encode(&c), None);
    let response = match session.receive_upload(upload).unwrap() {
        ServerStep::Continue(_, r) | ServerStep::Closed(r) => r,
    };
    obey("Response", Some(&c), &response.encode(&c), None);
    // A message is not another message.
    assert!(parse(
        g.message("Upload"),
        Some(&c),
        &response.encode(&c),
        None,
        None
    )
    .is_err());

    #[cfg(feature = "net")]
    {
        use safhire::net::frame::encode_frame;
        use safhire::net::{Control, Refusal, MAX_CONTROL_FRAME, MAX_FRAME};
        let controls = [
            Control::Hello {
                protocol_version: protocol::VERSION,
                fingerprint: c.params().fingerprint(),
                set: "b16".into(),
            },
            Control::Auth {
                token: b"a-token-of-some-length".to_vec(),
            },
            Control::Welcome {
                used: 1,
                budget: 8,
                input_len: 64,
                input_min: 0,
                input_max: 15,
                client_id: "alice@example.org".into(),
            },
            Control::Refusal(Refusal::BudgetExhausted { used: 8, budget: 8 }),
            Control::Refusal(Refusal::ProtocolViolation("round 3, expected 2: é".into())),
            Control::Refusal(Refusal::ServerError),
            Control::ServerTime { micros: 12_345 },
        ];
        for control in controls {
            let bytes = control.encode();
            obey(&control.to_string(), None, &bytes, None);
            let frame = encode_frame(&bytes).unwrap();
            for limit in [MAX_FRAME, MAX_CONTROL_FRAME] {
                let verdict = parse(g.message("Frame"), None, &frame, None, Some(limit as i128));
                assert_eq!(verdict, Ok(()), "a frame of {control}");
            }
        }
    }
}

// ------------------------------------------------------------ completeness

/// The variant names of `pub enum NAME` in a source file.
fn enum_variants(file: &str, name: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let start = text
        .find(&format!("pub enum {name} {{"))
        .unwrap_or_else(|| panic!("no enum {name} in {file}"));
    let mut out = BTreeSet::new();
    for line in text[start..].lines().skip(1) {
        if line.starts_with('}') {
            break;
        }
        let Some(rest) = line.strip_prefix("    ") else {
            continue;
        };
        if rest.starts_with(|c: char| c.is_ascii_uppercase()) {
            let v: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            out.insert(v);
        }
    }
    assert!(!out.is_empty(), "no variants found in {name}");
    out
}

/// Every error string the grammar names, by layer.
fn grammar_errors(layer: &str) -> BTreeSet<String> {
    let g = grammar();
    let mut out = BTreeSet::new();
    let add_field = |f: &Field, out: &mut BTreeSet<String>| {
        for e in [
            &f.error,
            &f.error_above,
            &f.error_below,
            &f.error_declared_more,
            &f.error_declared_less,
            &f.error_len,
            &f.error_content,
        ]
        .into_iter()
        .flatten()
        {
            out.insert(e.clone());
        }
    };
    let mut groups = BTreeSet::new();
    for m in g.layer(layer) {
        if let Some(h) = &m.header {
            let h = g.layout(h);
            for e in [&h.truncated_header, &h.truncated_body, &h.trailing] {
                out.insert(e.clone());
            }
            for e in [&h.short_body, &h.extra_body].into_iter().flatten() {
                out.insert(e.clone());
            }
            for f in &h.field {
                add_field(f, &mut out);
            }
        }
        if let Some(e) = &m.truncated_body {
            out.insert(e.clone());
        }
        if let Some(a) = &m.arg {
            out.insert(a.error.clone());
        }
        let mut todo: Vec<&Field> = m.field.iter().collect();
        while let Some(f) = todo.pop() {
            add_field(f, &mut out);
            let mut names: Vec<&String> = f.group.iter().collect();
            for v in f.variants.iter().flatten() {
                names.push(&v.group);
            }
            names.extend(&f.unknown_tag_body);
            for n in names {
                if groups.insert(n.clone()) {
                    todo.extend(g.group(n).field.iter());
                }
            }
        }
    }
    out
}

fn outer(e: &str) -> &str {
    e.split('(').next().unwrap()
}

fn inner(e: &str) -> Option<&str> {
    e.strip_prefix("Wire(").and_then(|s| s.strip_suffix(')'))
}

// WIRE-6: every message type, object kind, control message, refusal and
// decoder error variant in the code is in the grammar, and the grammar
// names nothing the code lacks.
#[test]
fn the_grammar_covers_every_type_and_error_variant() {
    let g = grammar();
    let names =
        |layer: &str| -> BTreeSet<String> { g.layer(layer).map(|m| m.name.clone()).collect() };

    // Object kinds: the enum in the code, and its numbers.
    assert_eq!(enum_variants("src/wire.rs", "Kind"), names("object"));
    for m in g.layer("object") {
        let k = match m.name.as_str() {
            "Ciphertext" => wire::Kind::Ciphertext,
            "SeededCiphertext" => wire::Kind::SeededCiphertext,
            "SeededGaloisKey" => wire::Kind::SeededGaloisKey,
            "SeededPublicKey" => wire::Kind::SeededPublicKey,
            other => panic!("{other}"),
        };
        // An exhaustive match: a new kind does not compile until listed.
        match k {
            wire::Kind::Ciphertext
            | wire::Kind::SeededCiphertext
            | wire::Kind::SeededGaloisKey
            | wire::Kind::SeededPublicKey => {}
        }
        assert_eq!(m.kind, Some(k as u8), "{}", m.name);
        assert_eq!(m.header.as_deref(), Some("object"));
        assert_eq!(m.decoder, format!("wire::decode_{}", snake_object(&m.name)));
    }
    // Message kinds.
    assert_eq!(
        enum_variants("src/protocol/messages.rs", "MessageKind"),
        names("message")
    );
    for m in g.layer("message") {
        use protocol::MessageKind as K;
        let k = match m.name.as_str() {
            "SessionRequest" => K::SessionRequest,
            "SessionAccept" => K::SessionAccept,
            "Upload" => K::Upload,
            "Response" => K::Response,
            other => panic!("{other}"),
        };
        match k {
            K::SessionRequest | K::SessionAccept | K::Upload | K::Response => {}
        }
        assert_eq!(m.kind, Some(k as u8), "{}", m.name);
        assert_eq!(m.decoder, format!("protocol::{}::decode", m.name));
    }
    // Control messages and refusals (non-exhaustive enums: read from the
    // source).
    assert_eq!(
        enum_variants("src/net/frame.rs", "Control"),
        names("control")
    );
    let refusals: BTreeSet<String> = g.message("Refusal").field[0]
        .variants
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.clone())
        .collect();
    assert_eq!(enum_variants("src/net/frame.rs", "Refusal"), refusals);
    assert_eq!(names("frame"), BTreeSet::from(["Frame".to_owned()]));
    for l in g.message("Frame").limits.as_ref().unwrap() {
        assert!(Env::new(None).get(l) > 0, "{l}");
    }

    // Error variants: the grammar's rules plus the listed exceptions are
    // exactly the enums' variants.
    let object_errors = grammar_errors("object");
    let message_errors = grammar_errors("message");
    let mut wire_used: BTreeSet<String> =
        object_errors.iter().map(|e| outer(e).to_owned()).collect();
    wire_used.extend(
        message_errors
            .iter()
            .filter_map(|e| inner(e))
            .map(|e| outer(e).to_owned()),
    );
    let kind_used: BTreeSet<String> = message_errors.iter().map(|e| outer(e).to_owned()).collect();
    let mut frame_used: BTreeSet<String> = grammar_errors("control")
        .iter()
        .map(|e| outer(e).to_owned())
        .collect();
    frame_used.extend(grammar_errors("frame").iter().map(|e| outer(e).to_owned()));
    for (ty, file, used) in [
        ("WireError", "src/wire.rs", wire_used),
        ("ErrorKind", "src/protocol/error.rs", kind_used),
        ("FrameError", "src/net/frame.rs", frame_used),
    ] {
        let code = enum_variants(file, ty);
        let exempt: BTreeSet<String> = g.errors[ty].not_from_decoding.keys().cloned().collect();
        for e in used.iter().chain(&exempt) {
            assert!(
                code.contains(e),
                "the grammar names {ty}::{e}, which the code lacks"
            );
        }
        for v in &code {
            assert!(
                used.contains(v) || exempt.contains(v),
                "{ty}::{v} is in the code but not in {GRAMMAR_PATH}"
            );
        }
        assert!(
            used.is_disjoint(&exempt),
            "{ty}: a variant both used and exempt"
        );
    }
    assert_eq!(g.errors.len(), 3);
}

fn snake_object(name: &str) -> &'static str {
    match name {
        "Ciphertext" => "ciphertext",
        "SeededCiphertext" => "seeded_ciphertext",
        "SeededGaloisKey" => "galois_key",
        "SeededPublicKey" => "public_key",
        other => panic!("{other}"),
    }
}

// WIRE-6: the grammar's constants and magics are the code's.
#[test]
fn the_grammar_constants_are_the_codes() {
    let env = Env::new(None);
    let k = |name: &str| env.get(name);
    assert_eq!(k("OBJECT_VERSION"), wire::VERSION as i128);
    assert_eq!(k("MESSAGE_VERSION"), protocol::VERSION as i128);
    assert_eq!(k("OBJECT_HEADER_LEN"), wire::HEADER_LEN as i128);
    assert_eq!(k("ENVELOPE_LEN"), protocol::ENVELOPE_LEN as i128);
    assert_eq!(k("MAX_BODY"), protocol::MAX_BODY as i128);
    assert_eq!(k("MAX_ROUNDS"), protocol::MAX_ROUNDS as i128);
    assert_eq!(k("MAX_OPS"), protocol::MAX_OPS as i128);
    assert_eq!(k("MAX_BATCH"), protocol::MAX_BATCH as i128);
    let g = grammar();
    let magic = |h: &str| g.layout(h).field[0].value.clone().unwrap().into_bytes();
    assert_eq!(magic("object"), wire::MAGIC);
    assert_eq!(magic("envelope"), protocol::MAGIC);
    let header_len = |h: &str| g.layout(h).field.iter().map(field_width).sum::<usize>();
    assert_eq!(header_len("object"), wire::HEADER_LEN);
    assert_eq!(header_len("envelope"), protocol::ENVELOPE_LEN);
    #[cfg(feature = "net")]
    {
        use safhire::net::frame;
        assert_eq!(k("TRANSPORT_VERSION"), frame::TRANSPORT_VERSION as i128);
        assert_eq!(k("MAX_FRAME"), frame::MAX_FRAME as i128);
        assert_eq!(k("MAX_CONTROL_FRAME"), frame::MAX_CONTROL_FRAME as i128);
        assert_eq!(k("MAX_TOKEN_LEN"), frame::MAX_TOKEN_LEN as i128);
        assert_eq!(k("MAX_NAME_LEN"), frame::MAX_NAME_LEN as i128);
        assert_eq!(k("MAX_DETAIL_LEN"), frame::MAX_DETAIL_LEN as i128);
        assert_eq!(magic("control"), frame::CONTROL_MAGIC);
    }
    // The expression evaluator itself.
    assert_eq!(eval("12 + 3 * (16 + 8 * (1 + 1) * 4096)", &env), 196_668);
    assert_eq!(eval("2^12 + 1", &env), 4097);
    assert_eq!(eval("64 * 2^20 / (16 * 4096)", &env), 1024);
}

// WIRE-6: wire-format.md points to the grammar, and every requirement the
// grammar cites exists in spec/.
#[test]
fn the_grammar_is_referenced_and_cites_real_requirements() {
    let spec = std::fs::read_to_string(root().join("spec/wire-format.md")).unwrap();
    assert!(spec.contains("wire-grammar.toml"));
    let mut all_spec = String::new();
    for f in std::fs::read_dir(root().join("spec")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "md") {
            all_spec.push_str(&std::fs::read_to_string(p).unwrap());
        }
    }
    let g = grammar();
    let fields = g
        .header
        .iter()
        .flat_map(|h| &h.field)
        .chain(g.message.iter().flat_map(|m| &m.field))
        .chain(g.group.iter().flat_map(|g| &g.field));
    for f in fields {
        if let Some(r) = &f.req {
            assert!(
                all_spec.contains(&format!("**{r}**")),
                "{}: {r} is not defined in spec/",
                f.name
            );
        }
    }
}

// ------------------------------------------------------ fuzzing (WIRE-7)

/// libFuzzer's default -max_len: seeds no longer than this keep it.
const SEED_MAX: usize = 4096;

/// The byte layout of `fuzz/fuzz_targets/wire_decode.rs`: byte 0 is the
/// Galois level (low 7 bits) and the mode (high bit); in the synthesised
/// mode byte 1 is the kind (bits 0–1), the corruption (bits 2–6, of 12)
/// and whether to corrupt (bit 7).
const WIRE_DECODE_CORRUPTIONS: u8 = 12;

/// Every file the grammar generates under fuzz/: dictionaries and seeds.
fn fuzz_inputs() -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    // wire_decode: the four objects on b8.
    {
        let c = ctx("b8");
        let (mut dict, mut variants) = (BTreeSet::new(), BTreeSet::new());
        let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
        let mut first_bodies: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        for m in grammar().layer("object") {
            cases(m, Some(c), None, &mut dict, &mut variants, &mut |case| {
                if case.expect.is_none() || case.label.contains("-min0") {
                    let mut seed = vec![case.level.unwrap_or(1).min(0x7f) as u8];
                    seed.extend_from_slice(seed_bytes(&case.bytes[..], SEED_MAX - 1));
                    seeds.push((format!("raw-{}", case.label), seed));
                }
                if case.expect.is_none() {
                    let body = case.bytes[20..84.min(case.bytes.len())].to_vec();
                    first_bodies.entry(m.kind.unwrap()).or_insert(body);
                }
            });
        }
        for (&kind, body) in &first_bodies {
            for corruption in std::iter::once(None).chain((0..WIRE_DECODE_CORRUPTIONS).map(Some)) {
                let select = (kind - 1) | corruption.map_or(0, |c| 0x80 | (c << 2));
                let mut seed = vec![0x80 | 1, select];
                seed.extend_from_slice(body);
                let name = match corruption {
                    None => format!("synth-kind{kind}"),
                    Some(c) => format!("synth-kind{kind}-corruption{c}"),
                };
                seeds.push((name, seed));
            }
        }
        add_target(&mut files, "wire_decode", &dict, seeds);
    }
    // protocol_decode: the four messages on b16, as raw bytes.
    {
        let c = ctx("b16");
        let (mut dict, mut variants) = (BTreeSet::new(), BTreeSet::new());
        let mut seeds = Vec::new();
        for m in grammar().layer("message") {
            cases(m, Some(c), None, &mut dict, &mut variants, &mut |case| {
                if case.expect.is_none() || case.label.contains("-min0") {
                    seeds.push((case.label, seed_bytes(&case.bytes, SEED_MAX).to_vec()));
                }
            });
        }
        add_target(&mut files, "protocol_decode", &dict, seeds);
    }
    files
}

/// An input as a seed: whole if it fits the default -max_len, else its
/// first bytes (the header and the first fields, where the rules are).
fn seed_bytes(bytes: &[u8], max: usize) -> &[u8] {
    if bytes.len() <= max {
        bytes
    } else {
        &bytes[..256]
    }
}

fn add_target(
    files: &mut BTreeMap<PathBuf, Vec<u8>>,
    target: &str,
    dict: &BTreeSet<Vec<u8>>,
    seeds: Vec<(String, Vec<u8>)>,
) {
    let mut text = format!(
        "# libFuzzer dictionary for {target}: magics, versions, kinds, tags, exact\n\
         # values, range boundaries and the values just past them, as the wire\n\
         # holds them. Generated from spec/wire-grammar.toml (WIRE-7) by\n\
         # `cargo test --release --test wire_grammar -- --ignored write_fuzz_inputs`;\n\
         # do not edit.\n"
    );
    for word in dict {
        text.push('"');
        for &b in word {
            if b.is_ascii_alphanumeric() {
                text.push(b as char);
            } else {
                text.push_str(&format!("\\x{b:02x}"));
            }
        }
        text.push_str("\"\n");
    }
    files.insert(
        PathBuf::from(format!("fuzz/dictionaries/{target}.dict")),
        text.into_bytes(),
    );
    let mut seen = BTreeSet::new();
    for (label, bytes) in seeds {
        if !seen.insert(bytes.clone()) {
            continue;
        }
        let name: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut name = name.trim_matches('_').to_owned();
        name.truncate(100);
        let path = PathBuf::from(format!("fuzz/seeds/{target}/{name}"));
        assert!(
            files.insert(path, bytes).is_none(),
            "two seeds named {name}"
        );
    }
}

/// The files now under the generated directories.
fn committed_fuzz_inputs() -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for dir in [
        "fuzz/dictionaries",
        "fuzz/seeds/wire_decode",
        "fuzz/seeds/protocol_decode",
    ] {
        let Ok(entries) = std::fs::read_dir(root().join(dir)) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_file() {
                let rel = p.strip_prefix(root()).unwrap().to_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

// WIRE-7: the committed dictionaries and seeds are what the grammar
// generates now.
#[test]
fn fuzz_dictionaries_and_seeds_are_up_to_date() {
    let want = fuzz_inputs();
    assert!(want.keys().any(|p| p.ends_with("wire_decode.dict")));
    assert!(want.len() > 50, "only {} fuzz inputs", want.len());
    let have = committed_fuzz_inputs();
    let stale: Vec<_> = want
        .iter()
        .filter(|(p, b)| have.get(*p) != Some(b))
        .map(|(p, _)| p)
        .chain(have.keys().filter(|p| !want.contains_key(*p)))
        .collect();
    assert!(
        stale.is_empty(),
        "fuzz inputs differ from the grammar (regenerate with `cargo test --release \
         --test wire_grammar -- --ignored write_fuzz_inputs`): {stale:?}"
    );
    let dict = String::from_utf8(want[Path::new("fuzz/dictionaries/protocol_decode.dict")].clone())
        .unwrap();
    assert!(dict.contains("\"SFHP\"") && dict.contains("\"SFHR\""));
}

// WIRE-7: writes the dictionaries and seeds (ignored: run by hand after a
// grammar change).
#[test]
#[ignore]
fn write_fuzz_inputs() {
    for dir in ["fuzz/seeds/wire_decode", "fuzz/seeds/protocol_decode"] {
        let _ = std::fs::remove_dir_all(root().join(dir));
    }
    for (path, bytes) in fuzz_inputs() {
        let path = root().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}
