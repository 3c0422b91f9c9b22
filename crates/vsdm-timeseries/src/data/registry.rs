//! Named data sets, the local cache they live in, and how a missing one is obtained: from the cache, else from
//! the bundled `assets/` folder, else downloaded from the archive GluonTS's `get_dataset` uses (for the
//! `*_nips` sets: `datasets/<name>.tar.gz` on the `mv_release` branch of mbohlkeschneider/gluon-ts).
//!
//! Checksums: the SHA-256 of `exchange_rate_nips.tar.gz` and of `ETTh1.csv` were taken from copies verified on
//! this project's machines. Those of the electricity, solar and traffic archives could not be obtained here
//! (no network); for them the download is accepted after checking the archive's structure (`<name>/train/
//! train.json`, `<name>/test/test.json`, `<name>/metadata/metadata.json`) and then the full content checks
//! of the loader (series count, frequency, start dates, lengths, no NaN).

use super::date_csv::load_date_csv;
use super::download::{
    download, partial_path, unpack_tar_gz, verify_sha256, verify_sha256_gunzipped,
};
use super::freq::Freq;
use super::gluonts::load_gluonts_dir;
use super::series::Dataset;
use crate::error::{DataError, Result};
use crate::window::Scaling;
use std::path::{Path, PathBuf};

/// Default base URL of the GluonTS multivariate archives.
pub const GLUONTS_BASE_URL: &str =
    "https://raw.githubusercontent.com/mbohlkeschneider/gluon-ts/mv_release/datasets";
/// Default base URL of the ETT data sets (ETDataset repository, `ETT-small` folder).
pub const ETT_BASE_URL: &str =
    "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small";
/// Environment variable that overrides the cache folder.
pub const CACHE_ENV: &str = "VSDM_DATASETS_DIR";
/// Environment variable that overrides the bundled-assets folder.
pub const ASSETS_ENV: &str = "VSDM_ASSETS_DIR";

/// Where a registered data set comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source {
    /// A GluonTS archive `<base>/<archive>.tar.gz` unpacking to `<archive>/{train,test,metadata}`.
    GluonTs {
        /// Archive (and folder) name, e.g. `electricity_nips`.
        archive: &'static str,
    },
    /// An ETT CSV `<ett base>/<file>`, split by the last-fraction protocol.
    EttCsv {
        /// File name, e.g. `ETTh1.csv`.
        file: &'static str,
        /// Fraction of the series at the end used for testing.
        test_fraction: f64,
    },
}

/// A registered data set and its forecasting protocol.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DatasetSpec {
    /// Registry name (`--dataset NAME`).
    pub name: &'static str,
    /// Where the files come from.
    pub source: Source,
    /// Number of series D.
    pub num_series: usize,
    /// Sampling frequency.
    pub freq: Freq,
    /// Forecast horizon H.
    pub prediction_length: usize,
    /// Normalisation used when `--scaling` is not given: `last` on exchange_rate, a near random walk where it was
    /// measured to help, pytorch-ts' `std` elsewhere (docs/results/timeseries.md has both measurements).
    pub scaling: Scaling,
    /// SHA-256 of the downloaded file, where known.
    pub sha256: Option<&'static str>,
    /// One-line description.
    pub description: &'static str,
}

/// SHA-256 of `exchange_rate_nips.tar.gz` (checked against `../shared/data/SHA256SUMS`).
pub const EXCHANGE_RATE_NIPS_SHA256: &str =
    "83f3cf364ae7854b0a74ef9825c47b8314896de820de877fd466cdffd94027d1";
/// SHA-256 of `ETTh1.csv` (the decompressed `../shared/data/timeseries/ETTh1.csv.gz`, itself checked there).
pub const ETTH1_SHA256: &str = "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066";

/// The registry. Protocols follow ALGORITHM.md §F.3 (TimeGrad's) and, for ETTh1, prediction length 24 with the
/// last 20% of the series as rolling daily test windows.
pub const DATASETS: &[DatasetSpec] = &[
    DatasetSpec {
        name: "electricity",
        source: Source::GluonTs {
            archive: "electricity_nips",
        },
        num_series: 370,
        freq: Freq::Hours(1),
        prediction_length: 24,
        scaling: Scaling::Std,
        sha256: None,
        description: "hourly electricity consumption of 370 clients (GluonTS electricity_nips)",
    },
    DatasetSpec {
        name: "solar",
        source: Source::GluonTs {
            archive: "solar_nips",
        },
        num_series: 137,
        freq: Freq::Hours(1),
        prediction_length: 24,
        scaling: Scaling::Std,
        sha256: None,
        description: "hourly photovoltaic production of 137 plants (GluonTS solar_nips)",
    },
    DatasetSpec {
        name: "traffic",
        source: Source::GluonTs {
            archive: "traffic_nips",
        },
        num_series: 963,
        freq: Freq::Hours(1),
        prediction_length: 24,
        scaling: Scaling::Std,
        sha256: None,
        description: "hourly occupancy of 963 San Francisco freeway lanes (GluonTS traffic_nips)",
    },
    DatasetSpec {
        name: "exchange_rate",
        source: Source::GluonTs {
            archive: "exchange_rate_nips",
        },
        num_series: 8,
        freq: Freq::BusinessDays,
        prediction_length: 30,
        scaling: Scaling::Last,
        sha256: Some(EXCHANGE_RATE_NIPS_SHA256),
        description:
            "daily exchange rates of 8 currencies (GluonTS exchange_rate_nips); bundled in assets/",
    },
    DatasetSpec {
        name: "etth1",
        source: Source::EttCsv {
            file: "ETTh1.csv",
            test_fraction: 0.2,
        },
        num_series: 7,
        freq: Freq::Hours(1),
        prediction_length: 24,
        scaling: Scaling::Std,
        sha256: Some(ETTH1_SHA256),
        description:
            "hourly electricity-transformer load and oil temperature, 7 variables (ETDataset ETTh1)",
    },
];

/// Looks a data set up by registry name, or by its archive name (`electricity_nips`).
pub fn spec(name: &str) -> Result<&'static DatasetSpec> {
    DATASETS
        .iter()
        .find(|s| {
            s.name.eq_ignore_ascii_case(name)
                || matches!(s.source, Source::GluonTs { archive } if archive.eq_ignore_ascii_case(name))
        })
        .ok_or_else(|| DataError::UnknownDataset {
            name: name.to_string(),
            known: DATASETS.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
        })
}

/// Where data sets are looked for and fetched from.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSources {
    /// The cache folder (default `~/.cache/vsdm/datasets`).
    pub cache_dir: PathBuf,
    /// Folder of bundled archives (`assets/` of this repository by default).
    pub assets_dir: Option<PathBuf>,
    /// Base URL of the GluonTS archives.
    pub gluonts_base_url: String,
    /// Base URL of the ETT CSV files.
    pub ett_base_url: String,
    /// Whether a missing data set may be downloaded.
    pub allow_download: bool,
}

/// The default cache folder: `$VSDM_DATASETS_DIR`, else `$XDG_CACHE_HOME/vsdm/datasets`, else
/// `$HOME/.cache/vsdm/datasets` (`./.cache/vsdm/datasets` if there is no home).
pub fn default_cache_dir() -> PathBuf {
    cache_dir_from(
        std::env::var_os(CACHE_ENV),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

/// [`default_cache_dir`] from the values of `$VSDM_DATASETS_DIR`, `$XDG_CACHE_HOME` and `$HOME`.
fn cache_dir_from(
    own: Option<std::ffi::OsString>,
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> PathBuf {
    if let Some(d) = own.filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    // A relative XDG_CACHE_HOME is invalid by the XDG specification and ignored, as there.
    let base = xdg
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
        .or_else(|| home.map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("vsdm").join("datasets")
}

/// The default assets folder: `$VSDM_ASSETS_DIR`, else this repository's `assets/` when it exists.
pub fn default_assets_dir() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
        .join("assets");
    assets_dir_from(std::env::var_os(ASSETS_ENV), repo)
}

/// [`default_assets_dir`] from the value of `$VSDM_ASSETS_DIR` and the repository's `assets/` path.
fn assets_dir_from(own: Option<std::ffi::OsString>, repo: PathBuf) -> Option<PathBuf> {
    if let Some(d) = own.filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    repo.is_dir().then_some(repo)
}

impl DataSources {
    /// Sources with the defaults above; `cache_flag` (a `--cache-dir` flag) takes precedence over the
    /// environment.
    pub fn new(cache_flag: Option<PathBuf>) -> Self {
        Self {
            cache_dir: cache_flag.unwrap_or_else(default_cache_dir),
            assets_dir: default_assets_dir(),
            gluonts_base_url: GLUONTS_BASE_URL.to_string(),
            ett_base_url: ETT_BASE_URL.to_string(),
            allow_download: true,
        }
    }

    /// The URL a registered data set is downloaded from.
    pub fn url(&self, spec: &DatasetSpec) -> String {
        match spec.source {
            Source::GluonTs { archive } => {
                format!(
                    "{}/{archive}.tar.gz",
                    self.gluonts_base_url.trim_end_matches('/')
                )
            }
            Source::EttCsv { file, .. } => {
                format!("{}/{file}", self.ett_base_url.trim_end_matches('/'))
            }
        }
    }

    /// Loads a registered data set, obtaining it first if the cache lacks it (see the module doc).
    pub fn load(&self, name: &str) -> Result<Dataset> {
        let spec = spec(name)?;
        let ds = match spec.source {
            Source::GluonTs { archive } => {
                let dir = self.ensure_gluonts(spec, archive)?;
                load_gluonts_dir(&dir, spec.name, Some(spec.prediction_length))?
            }
            Source::EttCsv {
                file,
                test_fraction,
            } => {
                let path = self.ensure_ett(spec, file)?;
                let csv = load_date_csv(&path, Some(spec.freq))?;
                Dataset::from_full_series(
                    spec.name,
                    csv.series,
                    spec.prediction_length,
                    test_fraction,
                    spec.freq.periods_per_day(),
                )?
                .with_series_names(csv.columns)?
            }
        };
        if ds.num_series() != spec.num_series || ds.train.freq != spec.freq {
            return Err(DataError::file(
                self.cache_dir.join(spec.name),
                format!(
                    "data set `{}` has {} series at frequency {}, the registry expects {} at {}",
                    spec.name,
                    ds.num_series(),
                    ds.train.freq,
                    spec.num_series,
                    spec.freq
                ),
            ));
        }
        Ok(ds)
    }

    /// Ensures `<cache>/<archive>/` holds the unpacked GluonTS folder and returns it.
    fn ensure_gluonts(&self, spec: &DatasetSpec, archive: &str) -> Result<PathBuf> {
        let dir = self.cache_dir.join(archive);
        if dir.join("train").join("train.json").is_file() {
            return Ok(dir);
        }
        let tarball = self.cache_dir.join(format!("{archive}.tar.gz"));
        let url = self.url(spec);
        if tarball.is_file() {
            tracing::info!(path = %tarball.display(), "unpacking cached archive");
            verify_sha256(&tarball, spec.sha256, &tarball.display().to_string())?;
        } else if let Some(asset) = self
            .assets_dir
            .as_ref()
            .map(|a| a.join(format!("{archive}.tar.gz")))
            .filter(|a| a.is_file())
        {
            tracing::info!(path = %asset.display(), "using bundled archive");
            verify_sha256(&asset, spec.sha256, &asset.display().to_string())?;
            return self.unpack_gluonts(&asset, archive);
        } else if self.allow_download {
            download(&url, &tarball, spec.sha256)?;
        } else {
            return Err(DataError::Download {
                url,
                reason: "downloads are disabled".into(),
                expected: tarball,
            });
        }
        self.unpack_gluonts(&tarball, archive)
    }

    /// Unpacks a GluonTS archive into a temporary folder, checks its structure, and moves `<archive>/` into the
    /// cache.
    fn unpack_gluonts(&self, tarball: &Path, archive: &str) -> Result<PathBuf> {
        let dir = self.cache_dir.join(archive);
        let tmp = self
            .cache_dir
            .join(format!(".{archive}.unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = (|| {
            unpack_tar_gz(tarball, &tmp)?;
            let inner = tmp.join(archive);
            for part in [
                ["train", "train.json"],
                ["test", "test.json"],
                ["metadata", "metadata.json"],
            ] {
                if !inner.join(part[0]).join(part[1]).is_file() {
                    return Err(DataError::file(
                        tarball,
                        format!(
                            "not a GluonTS archive: it lacks `{archive}/{}/{}`",
                            part[0], part[1]
                        ),
                    ));
                }
            }
            if let Err(e) = std::fs::rename(&inner, &dir) {
                // Another process may have unpacked it meanwhile.
                if !dir.join("train").join("train.json").is_file() {
                    return Err(DataError::io(&dir, e));
                }
            }
            Ok(dir.clone())
        })();
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    /// Ensures the ETT CSV is in `<cache>/<name>/` (as `.csv` or `.csv.gz`) and returns its path.
    fn ensure_ett(&self, spec: &DatasetSpec, file: &str) -> Result<PathBuf> {
        let dir = self.cache_dir.join(spec.name);
        let csv = dir.join(file);
        let gz = dir.join(format!("{file}.gz"));
        if csv.is_file() {
            // A cached copy is checked as a download is: a truncated or edited file would otherwise train and
            // score on whatever it holds.
            verify_sha256(
                &csv,
                spec.sha256,
                "the cache; delete the file to download it again",
            )?;
            return Ok(csv);
        }
        if gz.is_file() {
            // A compressed copy (as `../shared/data` ships ETTh1) is checked on what it decompresses to.
            verify_sha256_gunzipped(
                &gz,
                spec.sha256,
                "the cache, digest of its decompressed content; delete the file to download it again",
            )?;
            return Ok(gz);
        }
        let url = self.url(spec);
        if !self.allow_download {
            return Err(DataError::Download {
                url,
                reason: "downloads are disabled".into(),
                expected: csv,
            });
        }
        let _ = std::fs::remove_file(partial_path(&csv));
        download(&url, &csv, spec.sha256)?;
        Ok(csv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The cache folder: our variable (unless empty), else an absolute `$XDG_CACHE_HOME`, else `$HOME/.cache`,
    /// else `./.cache`, as the XDG base-directory specification orders them; the assets folder likewise.
    #[test]
    fn default_folders_follow_the_environment() {
        let os = |s: &str| Some(std::ffi::OsString::from(s));
        let tail = |base: &str| Path::new(base).join("vsdm").join("datasets");
        assert_eq!(
            cache_dir_from(os("/own"), os("/xdg"), os("/home/u")),
            Path::new("/own")
        );
        assert_eq!(
            cache_dir_from(os(""), os("/xdg"), os("/home/u")),
            tail("/xdg")
        );
        assert_eq!(
            cache_dir_from(None, os("rel"), os("/home/u")),
            tail("/home/u/.cache")
        );
        assert_eq!(cache_dir_from(None, None, None), tail(".cache"));
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().to_path_buf();
        assert_eq!(
            assets_dir_from(os("/own"), repo.clone()),
            Some("/own".into())
        );
        assert_eq!(assets_dir_from(os(""), repo.clone()), Some(repo.clone()));
        assert_eq!(assets_dir_from(None, repo.join("absent")), None);
    }

    /// With downloads off, a missing ETT file is an error naming the path it is expected at; a cached `.csv.gz`
    /// that does not decompress to the published file is refused by its checksum; a cached archive of the
    /// wrong shape (a set without a recorded checksum) is refused against the registry's count of series.
    #[test]
    fn offline_and_misshapen_cached_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let sources = DataSources {
            cache_dir: dir.path().to_path_buf(),
            assets_dir: None,
            gluonts_base_url: "http://127.0.0.1:9/gluonts".into(),
            ett_base_url: "http://127.0.0.1:9/ett".into(),
            allow_download: false,
        };
        let e = sources.load("etth1").unwrap_err().to_string();
        let expected = dir.path().join("etth1").join("ETTh1.csv");
        assert!(
            e.contains("downloads are disabled") && e.contains(&expected.display().to_string()),
            "{e}"
        );
        std::fs::create_dir_all(dir.path().join("etth1")).unwrap();
        let gz = std::fs::File::create(dir.path().join("etth1").join("ETTh1.csv.gz")).unwrap();
        let mut w = flate2::write::GzEncoder::new(gz, flate2::Compression::fast());
        writeln!(w, "date,a,b").unwrap();
        let start = super::super::freq::parse_timestamp("2016-07-01").unwrap();
        for (t, stamp) in Freq::Hours(1).range(start, 2000).iter().enumerate() {
            writeln!(w, "{},{t},{t}", stamp.format("%Y-%m-%d %H:%M:%S")).unwrap();
        }
        w.finish().unwrap();
        let e = sources.load("etth1").unwrap_err().to_string();
        assert!(
            e.contains("ETTh1.csv.gz")
                && e.contains("sha256 mismatch")
                && e.contains("decompressed content"),
            "{e}"
        );
        super::super::synthetic::SyntheticArchive {
            name: "solar_nips".into(),
            num_series: 2,
            train_len: 300,
            ..Default::default()
        }
        .write(&dir.path().join("solar_nips.tar.gz"))
        .unwrap();
        let e = sources.load("solar").unwrap_err().to_string();
        assert!(
            e.contains("has 2 series at frequency H, the registry expects 137"),
            "{e}"
        );
    }
}
