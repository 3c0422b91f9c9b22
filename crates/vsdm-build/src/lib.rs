//! Build-script helpers shared by the crates with CUDA kernels of their own (vsdm-core's AdamW, vsdm-image's
//! patch and group-norm kernels): [`emulation`] compiles a kernel source's host build (a `*_emu.c` file that
//! includes the `.cu` after `vsdm_emulate.h`) for the tests, [`ptx`] compiles `.cu` files to PTX with nvcc in a
//! `cuda` build.

use std::path::PathBuf;
use std::process::Command;

/// The folder of `vsdm_emulate.h`.
pub fn include_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include")
}

/// Compiles the C file `src` (a host build of CUDA kernels) into the static library `lib`, in C11 with no
/// contraction of a product and a sum into one fused operation (the kernels round each, as `__fmul_rn` and
/// `__fadd_rn` or plain CUDA arithmetic without `--use_fast_math` do where it matters), and asks cargo to rerun
/// the build script when it or the header changes.
pub fn emulation(src: &str, lib: &str) {
    println!("cargo:rerun-if-changed={src}");
    println!(
        "cargo:rerun-if-changed={}",
        include_dir().join("vsdm_emulate.h").display()
    );
    cc::Build::new()
        .file(src)
        .include(include_dir())
        .std("c11")
        .opt_level(2)
        .flag_if_supported("-ffp-contract=off")
        .compile(lib);
}

/// In a `cuda` build (the calling crate's `cuda` feature on), compiles each `.cu` file of `sources` to
/// `$OUT_DIR/<stem>.ptx` with the CUDA toolkit's nvcc (`$CUDA_ROOT/bin/nvcc`, else `nvcc` on the PATH) for
/// `CUDA_COMPUTE_CAP` (default 70: the driver compiles the PTX for the actual GPU when it is loaded); otherwise
/// nothing. Panics, naming the file and the compiler, when nvcc is missing or fails.
pub fn ptx(sources: &[&str]) {
    println!("cargo:rerun-if-env-changed=CUDA_ROOT");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    for src in sources {
        println!("cargo:rerun-if-changed={src}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var_os("CUDA_ROOT")
        .map(|r| PathBuf::from(r).join("bin").join("nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .map(|c| c.trim().replace('.', ""))
        .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_digit()))
        .unwrap_or_else(|| "70".into());
    for src in sources {
        let stem = PathBuf::from(src)
            .file_stem()
            .expect("a kernel source has a file name")
            .to_owned();
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("--gpu-architecture=compute_{cap}"))
            .arg(src)
            .arg("-o")
            .arg(out_dir.join(stem).with_extension("ptx"))
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{} failed on {src} ({s})", nvcc.display()),
            Err(e) => panic!(
                "the `cuda` feature needs nvcc to build {src}: {} could not run ({e}); \
                 set CUDA_ROOT or see the README's GPU build (scripts/setup-cuda-build.sh)",
                nvcc.display()
            ),
        }
    }
}
