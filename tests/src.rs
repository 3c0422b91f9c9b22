//! End-to-end tests that run the workspace's programs as a user does, across programs: `tests/tests/`.
//!
//! They run the release (or debug) binaries that `cargo test --workspace` builds beside the test executables
//! (every program crate has command-line tests, so cargo builds its binary first); run alone
//! (`cargo test -p vsdm-tests`) they use whatever binaries are there, and skip with a printed reason when
//! there are none. The programs' own command-line tests live in each crate's `tests/cli.rs`.

use std::path::PathBuf;

/// The folder of the workspace's binaries for this test build (`target/<profile>`), if `name` is there.
pub fn binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/<test executable>
    let dir = exe.parent()?.parent()?;
    let p = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    p.is_file().then_some(p)
}

/// The workspace's root folder.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}
