//! Always: compiles `src/unet/gn_emu.c` (the group-norm kernels of `gn.cu` for the host, which the tests run
//! without a GPU) with the C compiler. In a `cuda` build also: compiles `src/unet/im2col.cu` and `gn.cu` to PTX
//! with the CUDA toolkit's nvcc (the same one candle's kernels need: `$CUDA_ROOT/bin/nvcc`, else `nvcc` on the
//! PATH), for `CUDA_COMPUTE_CAP` (default 70: the PTX is compiled for the actual GPU by the driver when it is
//! loaded).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/unet/im2col.cu");
    println!("cargo:rerun-if-changed=src/unet/gn.cu");
    println!("cargo:rerun-if-changed=src/unet/gn_emu.c");
    println!("cargo:rerun-if-env-changed=CUDA_ROOT");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    cc::Build::new()
        .file("src/unet/gn_emu.c")
        .std("c11")
        .opt_level(2)
        .compile("vsdm_gn_emu");
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
    for name in ["im2col", "gn"] {
        let src = format!("src/unet/{name}.cu");
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("--gpu-architecture=compute_{cap}"))
            .arg(&src)
            .arg("-o")
            .arg(out_dir.join(format!("{name}.ptx")))
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
