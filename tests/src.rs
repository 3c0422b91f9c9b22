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

/// Runs `cmd` with its standard error piped, sends it SIGINT (Ctrl-C) once a line of its standard error
/// contains `marker`, and returns everything it wrote there with its exit status. Panics if it ends first.
#[cfg(unix)]
pub fn interrupt_when(
    mut cmd: std::process::Command,
    marker: &str,
) -> (String, std::process::ExitStatus) {
    use std::io::{BufRead, Read};
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the program starts");
    let mut err = std::io::BufReader::new(child.stderr.take().expect("piped"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = err.read_line(&mut line).expect("reads its stderr");
        assert!(n > 0, "ended before printing {marker:?}: {seen}");
        seen.push_str(&line);
        if line.contains(marker) {
            break;
        }
    }
    // SAFETY: a signal to the child process this function started and still holds.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    err.read_to_string(&mut seen).expect("reads its stderr");
    let status = child.wait().expect("waits for it");
    (seen, status)
}
