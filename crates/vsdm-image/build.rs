//! Always: compiles `src/unet/gn_emu.c` (the group-norm and dropout kernels of `gn.cu` for the host, which the
//! tests run without a GPU). In a `cuda` build also: compiles `src/unet/im2col.cu` and `gn.cu` to PTX with the
//! CUDA toolkit's nvcc (the same one candle's kernels need; vsdm-build says where it is looked for).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/unet/gn.cu");
    vsdm_build::emulation("src/unet/gn_emu.c", "vsdm_gn_emu");
    vsdm_build::ptx(&["src/unet/im2col.cu", "src/unet/gn.cu"]);
}
