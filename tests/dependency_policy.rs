//! The dependency policy, checked offline from `Cargo.lock`: every crate comes from crates.io,
//! and none of the crates known to be unmaintained or vulnerable is in the tree. `deny.toml`
//! states the same policy for `cargo deny` (plus licenses); the advisory check itself needs the
//! RustSec database and runs where it can be fetched (see SECURITY.md).

use std::collections::BTreeMap;

/// Crates that must not come back, and why (RustSec advisory or archive notice).
const BANNED: &[(&str, &str)] = &[
    (
        "rustls-pemfile",
        "archived, RUSTSEC-2025-0134; parse PEM with rustls-pki-types' PemObject",
    ),
    (
        "atty",
        "unmaintained and unsound, RUSTSEC-2021-0145; use std::io::IsTerminal",
    ),
    ("ansi_term", "unmaintained, RUSTSEC-2021-0139"),
    (
        "yaml-rust",
        "unmaintained, RUSTSEC-2024-0320; use yaml-rust2",
    ),
    ("proc-macro-error", "unmaintained, RUSTSEC-2024-0370"),
    ("instant", "unmaintained, RUSTSEC-2024-0384"),
    ("derivative", "unmaintained, RUSTSEC-2024-0388"),
    ("paste", "unmaintained, RUSTSEC-2024-0436"),
    ("net2", "deprecated, RUSTSEC-2020-0016"),
    ("failure", "deprecated, RUSTSEC-2020-0036"),
    ("tempdir", "deprecated, RUSTSEC-2018-0017; use tempfile"),
];

/// The only registry crates may come from.
const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

/// `Cargo.lock`'s packages: name to (version, source) of each.
fn locked_packages() -> Vec<(String, String, Option<String>)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .expect("Cargo.lock");
    let lock: BTreeMap<String, toml::Value> = toml::from_str(&text).expect("Cargo.lock is TOML");
    lock["package"]
        .as_array()
        .expect("[[package]] entries")
        .iter()
        .map(|package| {
            let field = |name: &str| package.get(name).and_then(|v| v.as_str()).map(String::from);
            (
                field("name").expect("name"),
                field("version").expect("version"),
                field("source"),
            )
        })
        .collect()
}

#[test]
fn no_banned_crate_is_in_the_lock_file() {
    let found: Vec<String> = locked_packages()
        .into_iter()
        .filter_map(|(name, version, _)| {
            let (_, why) = BANNED.iter().find(|(banned, _)| *banned == name)?;
            Some(format!("{name} {version}: {why}"))
        })
        .collect();
    assert!(
        found.is_empty(),
        "banned crates in Cargo.lock:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_dependency_comes_from_crates_io() {
    let packages = locked_packages();
    assert!(packages.len() > 100, "Cargo.lock parsed badly");
    let foreign: Vec<String> = packages
        .into_iter()
        .filter(|(name, _, source)| name != "outboxd" && source.as_deref() != Some(CRATES_IO))
        .map(|(name, version, source)| format!("{name} {version} from {source:?}"))
        .collect();
    assert!(
        foreign.is_empty(),
        "crates not from crates.io:\n{}",
        foreign.join("\n")
    );
}
