//! Writes a generated GluonTS archive with electricity_nips's shape (370 hourly series, 5833 training hours,
//! 7 rolling windows of 24 hours; synthetic load curves, not real data) and unpacks it:
//! `cargo run --release -p vsdm-timeseries --example synthetic_archive -- OUT_DIR`
//! then `vsdm-timeseries --data OUT_DIR/electricity_nips ...`.
use vsdm_timeseries::data::download::unpack_tar_gz;
use vsdm_timeseries::data::synthetic::SyntheticArchive;

fn main() -> anyhow::Result<()> {
    let out = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: synthetic_archive OUT_DIR"))?,
    );
    std::fs::create_dir_all(&out)?;
    let arch = SyntheticArchive::default();
    let tgz = out.join(format!("{}.tar.gz", arch.name));
    arch.write(&tgz)?;
    unpack_tar_gz(&tgz, &out)?;
    println!(
        "wrote {} and {}",
        tgz.display(),
        out.join(&arch.name).display()
    );
    Ok(())
}
