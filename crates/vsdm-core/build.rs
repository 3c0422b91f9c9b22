//! Always: compiles `src/adamw/adamw_emu.c` (the AdamW kernels of `adamw.cu` for the host, which the tests run
//! without a GPU). In a `cuda` build also: compiles `src/adamw/adamw.cu` to PTX with nvcc (vsdm-build).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/adamw/adamw.cu");
    vsdm_build::emulation("src/adamw/adamw_emu.c", "vsdm_adamw_emu");
    vsdm_build::ptx(&["src/adamw/adamw.cu"]);
}
