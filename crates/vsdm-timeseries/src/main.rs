//! `vsdm-timeseries`: conditional multivariate forecasting with VSDM and VSMD.
//!
//! Not built yet: see the vsdm-timeseries issue. The binary says so and exits non-zero rather than pretending.
fn main() {
    eprintln!(
        "vsdm-timeseries: not implemented yet (loaders, conditional transformer and training are still to be built; \
         see README.md, section 'Status')"
    );
    std::process::exit(2);
}
