//! `cli::tune_allocator` keeps a freed 48 MiB block in the process: allocating it again touches no fresh pages
//! (no page faults), where glibc's default serves each such block with a new mapping (one fault per page).
//!
//! Its own process and `harness = false`: the test runs on the main thread (glibc's main arena; the harness's
//! test threads get arenas of their own, which hand a wholly free heap back regardless of the settings), and
//! the settings are changed before any other thread exists, as the programs do.

use std::hint::black_box;

/// Minor page faults of this process so far.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn minor_faults() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut u), 0);
        u.ru_minflt
    }
}

/// The page faults of allocating `bytes`, writing every byte and freeing the block.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn faults_of_block(bytes: usize) -> i64 {
    let f0 = minor_faults();
    let v = black_box(vec![1u8; bytes]);
    assert_eq!(v[bytes / 2], 1);
    drop(v);
    minor_faults() - f0
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        println!("allocator: skipped (GLIBC_TUNABLES is set, and tune_allocator then leaves malloc alone)");
        return;
    }
    let bytes = 48 << 20;
    let pages = (bytes / 4096) as i64;
    faults_of_block(bytes);
    let before = faults_of_block(bytes);
    vsdm_eval::cli::tune_allocator();
    faults_of_block(bytes);
    let after = faults_of_block(bytes);
    println!("allocator: faults of a reused 48 MiB block ({pages} pages): default {before}, tuned {after}");
    if before < pages / 2 {
        println!("allocator: skipped (fresh blocks take few faults here, e.g. transparent huge pages always on)");
        return;
    }
    assert!(
        after < pages / 100,
        "a freed 48 MiB block was faulted in again after tune_allocator: {after} faults (default: {before})"
    );
    println!("test allocator ... ok");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    println!("allocator: skipped (glibc only)");
}
