//! Spec ↔ code ↔ tests: every requirement ID defined in `spec/*.md` (as a
//! bold `**AREA-n**` bullet) must be cited by the implementing code in `src/`
//! and by a test (`tests/`, or a `#[cfg(test)]` part of `src/`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// IDs of the form `**AREA-n**` (A–Z letters, a dash, digits).
fn defined_ids(text: &str) -> Vec<String> {
    text.split("**")
        .skip(1)
        .step_by(2)
        .filter(|s| {
            let mut parts = s.splitn(2, '-');
            let (area, num) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            !area.is_empty()
                && area.chars().all(|c| c.is_ascii_uppercase())
                && !num.is_empty()
                && num.chars().all(|c| c.is_ascii_digit())
        })
        .map(str::to_owned)
        .collect()
}

/// Cites `id` as a whole word (so PACK-1 is not found inside PACK-12).
fn cites(text: &str, id: &str) -> bool {
    text.match_indices(id).any(|(i, _)| {
        let next = text[i + id.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_digit())
    })
}

#[test]
fn every_requirement_is_implemented_and_tested() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut specs = Vec::new();
    files(&root.join("spec"), "md", &mut specs);
    let mut ids = BTreeSet::new();
    for s in &specs {
        for id in defined_ids(&fs::read_to_string(s).unwrap()) {
            assert!(ids.insert(id.clone()), "{id} is defined twice");
        }
    }
    assert!(ids.len() >= 20, "found only {} requirement IDs", ids.len());

    let (mut code, mut tests) = (String::new(), String::new());
    let mut src = Vec::new();
    files(&root.join("src"), "rs", &mut src);
    for f in src {
        let text = fs::read_to_string(&f).unwrap();
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            tests.push_str(&text);
        } else if let Some(at) = text.find("#[cfg(test)]") {
            code.push_str(&text[..at]);
            tests.push_str(&text[at..]);
        } else {
            code.push_str(&text);
        }
    }
    let mut test_files = Vec::new();
    files(&root.join("tests"), "rs", &mut test_files);
    let this_file = root.join("tests/spec_ids.rs");
    for f in test_files.into_iter().filter(|f| *f != this_file) {
        tests.push_str(&fs::read_to_string(f).unwrap());
    }

    let missing: Vec<String> = ids
        .iter()
        .flat_map(|id| {
            let mut m = Vec::new();
            if !cites(&code, id) {
                m.push(format!("{id} not cited in src/"));
            }
            if !cites(&tests, id) {
                m.push(format!("{id} not cited by any test"));
            }
            m
        })
        .collect();
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn the_id_scanner_can_fail() {
    assert_eq!(
        defined_ids("- **PACK-1** x **bold** **A-b** **WIRE-12**"),
        ["PACK-1", "WIRE-12"]
    );
    assert!(cites("see PACK-1.", "PACK-1"));
    assert!(!cites("see PACK-12.", "PACK-1"));
}
