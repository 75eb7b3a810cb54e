//! CHANGELOG.md records every change to the public API and the wire
//! formats: it must name the version of each format this build speaks, so
//! bumping a version without a changelog entry fails here.

const CHANGELOG: &str = include_str!("../CHANGELOG.md");

/// The value of `pub const NAME: u16 = V;` in a source file, read from its
/// text (the transport's constant sits behind feature `net`).
fn version_in(source: &str, name: &str) -> u16 {
    let needle = format!("pub const {name}: u16 = ");
    let start = source
        .find(&needle)
        .unwrap_or_else(|| panic!("{name} not found"))
        + needle.len();
    let end = start + source[start..].find(';').expect("a `;` after the value");
    source[start..end].trim().parse().expect("a u16 literal")
}

#[test]
fn changelog_names_every_wire_version_this_build_speaks() {
    let cases = [
        (
            "object format version",
            version_in(include_str!("../src/wire.rs"), "VERSION"),
        ),
        (
            "message format version",
            version_in(include_str!("../src/protocol/messages.rs"), "VERSION"),
        ),
        (
            "transport frame version",
            version_in(include_str!("../src/net/frame.rs"), "TRANSPORT_VERSION"),
        ),
    ];
    assert_eq!(cases[0].1, safhire::wire::VERSION);
    assert_eq!(cases[1].1, safhire::protocol::VERSION);
    for (what, v) in cases {
        let line = format!("**{what} {v}**");
        assert!(
            CHANGELOG.contains(&line),
            "CHANGELOG.md must name `{line}` in its header and record the change"
        );
    }
}

#[test]
fn changelog_has_an_unreleased_section_first() {
    let unreleased = CHANGELOG
        .find("## [Unreleased]")
        .expect("an Unreleased section");
    let first_release = CHANGELOG.find("## [0.").expect("a release section");
    assert!(unreleased < first_release);
}
