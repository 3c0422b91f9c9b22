//! `vsdm-image`: CIFAR-10 with VSDM and VSMD.
//!
//! Not built yet: see the vsdm-image issue. The binary says so and exits non-zero rather than pretending.
fn main() {
    eprintln!(
        "vsdm-image: not implemented yet (CIFAR-10 loader, U-Net, training and sampling are still to be built; \
         see README.md, section 'Status')"
    );
    std::process::exit(2);
}
