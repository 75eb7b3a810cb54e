//! Bearer tokens (NET-5): the server keeps only SHA-256 digests, one per
//! client identity, and compares a presented token's digest with every
//! entry in constant time. The identity comes from the matching entry,
//! never from the client.

use super::error::NetError;
use super::frame::{valid_name, MAX_TOKEN_LEN};
use crate::protocol::ClientId;
use sha2::{Digest, Sha256};
use std::path::Path;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Largest token or token-table file read.
const MAX_FILE: u64 = 1 << 20;
/// Shortest token a client sends.
pub const MIN_TOKEN_LEN: usize = 16;

/// The server's token table: `(client id, SHA-256 of its token)` entries.
pub struct TokenTable {
    entries: Vec<(ClientId, [u8; 32])>,
}

impl std::fmt::Debug for TokenTable {
    // Digests are not secrets, but nothing needs them in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenTable({} identities)", self.entries.len())
    }
}

/// The SHA-256 digest of `token`.
pub fn token_digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// The digest as 64 lowercase hex digits, as in a token file.
pub fn token_digest_hex(token: &[u8]) -> String {
    token_digest(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn read_bounded(path: &Path, what: &str) -> Result<String, NetError> {
    let name = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| NetError::config(format!("{what} {name}: cannot be read: {}", e.kind())))?
        .len();
    if len > MAX_FILE {
        return Err(NetError::config(format!(
            "{what} {name}: {len} bytes, more than the limit of {MAX_FILE}"
        )));
    }
    std::fs::read_to_string(path).map_err(|e| {
        NetError::config(format!(
            "{what} {name}: cannot be read as UTF-8 text: {}",
            e.kind()
        ))
    })
}

impl TokenTable {
    /// Parses a token file (spec/transport.md § Token file); `file` names it
    /// in errors, which give the line number and never echo a digest.
    pub fn parse(file: &str, text: &str) -> Result<Self, NetError> {
        let mut entries: Vec<(ClientId, [u8; 32])> = Vec::new();
        for (k, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |why: &str| NetError::config(format!("{file}, line {}: {why}", k + 1));
            let mut fields = line.split_whitespace();
            let (Some(id), Some(hex), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(at("expected `CLIENT-ID SHA256-HEX`"));
            };
            if !valid_name(id) {
                return Err(at(
                    "the client id must be 1 to 64 characters of A-Z a-z 0-9 . _ @ -",
                ));
            }
            let digest = parse_hex(hex).ok_or_else(|| at("the digest must be 64 hex digits"))?;
            if entries.iter().any(|(other, _)| other.0 == id) {
                return Err(at(&format!("client id {id:?} appears twice")));
            }
            if entries.iter().any(|(_, d)| *d == digest) {
                return Err(at("this digest already belongs to another client id"));
            }
            entries.push((ClientId(id.to_owned()), digest));
        }
        if entries.is_empty() {
            return Err(NetError::config(format!(
                "{file}: no `CLIENT-ID SHA256-HEX` entries"
            )));
        }
        Ok(Self { entries })
    }

    /// Reads and parses a token file.
    pub fn load(path: &Path) -> Result<Self, NetError> {
        let text = read_bounded(path, "token file")?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// How many identities the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// NET-5: the identity whose digest equals the token's. Every entry is
    /// compared, in constant time, whether or not an earlier one matched.
    pub fn authenticate(&self, token: &[u8]) -> Option<ClientId> {
        let digest = token_digest(token);
        let mut found = u32::MAX;
        for (i, (_, d)) in self.entries.iter().enumerate() {
            found.conditional_assign(&(i as u32), d.ct_eq(&digest));
        }
        self.entries.get(found as usize).map(|(id, _)| id.clone())
    }
}

/// Reads a client's token file: the token alone on its first line, 16 to
/// 1024 printable ASCII characters without spaces. Errors never echo it.
pub fn read_token_file(path: &Path) -> Result<Vec<u8>, NetError> {
    let text = read_bounded(path, "token file")?;
    let token = text.lines().next().unwrap_or("").trim();
    let name = path.display();
    if token.len() < MIN_TOKEN_LEN || token.len() > MAX_TOKEN_LEN {
        return Err(NetError::config(format!(
            "token file {name}: the token on its first line must have {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters"
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(NetError::config(format!(
            "token file {name}: the token must be printable ASCII without spaces"
        )));
    }
    Ok(token.as_bytes().to_vec())
}

/// A fresh random token: 32 bytes from the OS, as 64 hex digits.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    crate::rng::Csprng::from_os().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // NET-5: the identity is the matching entry's; a wrong or empty token
    // matches nothing; the digest is SHA-256 as sha256sum prints it.
    #[test]
    fn tokens_match_their_own_entry_only() {
        assert_eq!(
            token_digest_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        let text = format!(
            "# clients\n\nalice {}\nbob  {}\n",
            token_digest_hex(a.as_bytes()),
            token_digest_hex(b.as_bytes()).to_uppercase()
        );
        let table = TokenTable::parse("tokens", &text).unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.authenticate(a.as_bytes()),
            Some(ClientId("alice".into()))
        );
        assert_eq!(
            table.authenticate(b.as_bytes()),
            Some(ClientId("bob".into()))
        );
        assert_eq!(table.authenticate(b"alice"), None);
        assert_eq!(table.authenticate(b""), None);
        assert!(!format!("{table:?}").contains(&token_digest_hex(a.as_bytes())));
    }

    #[test]
    fn bad_token_files_are_refused_naming_the_line() {
        let d = token_digest_hex(b"0123456789abcdef");
        for (text, says) in [
            ("", "no `CLIENT-ID"),
            ("alice\n", "line 1"),
            (&format!("al ice {d}\n"), "line 1"),
            (&format!("a/b {d}\n"), "client id"),
            ("alice 1234\n", "64 hex"),
            (&format!("a {d}\nb {d}\n"), "another client id"),
            (
                &format!("a {d}\n# x\na {}\n", token_digest_hex(b"x")),
                "line 3",
            ),
        ] {
            let err = TokenTable::parse("tokens", text).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(!err.contains(&d), "{err}");
        }
    }
}
