//! Loaders on the real exchange-rate and ETTh1 files (skipped with a message when `../shared/data` is absent),
//! on a generated archive of electricity's shape, and the download path against a loopback HTTP server.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use vsdm_timeseries::data::date_csv::load_date_csv;
use vsdm_timeseries::data::download::unpack_tar_gz;
use vsdm_timeseries::data::gluonts::load_gluonts_dir;
use vsdm_timeseries::data::lstnet::load_lstnet;
use vsdm_timeseries::data::synthetic::SyntheticArchive;
use vsdm_timeseries::data::{DataSources, Freq};

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/timeseries");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!(
            "skipped: {} is absent (a clone has no shared data)",
            p.display()
        );
        None
    }
}

#[test]
fn real_exchange_rate_in_both_formats_and_etth1() {
    let Some(dir) = shared() else { return };
    let tmp = tempfile::tempdir().unwrap();
    unpack_tar_gz(&dir.join("exchange_rate_nips.tar.gz"), tmp.path()).unwrap();
    let ds = load_gluonts_dir(
        &tmp.path().join("exchange_rate_nips"),
        "exchange_rate",
        Some(30),
    )
    .unwrap();
    assert_eq!(ds.num_series(), 8);
    assert_eq!(ds.prediction_length, 30);
    assert_eq!(
        ds.test.window_ends.len(),
        5,
        "exchange_rate_nips has 5 rolling test windows"
    );
    assert!(ds.train.len > 6000);
    let start = NaiveDate::from_ymd_opt(1990, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let lst = load_lstnet(&dir.join("exchange_rate.txt.gz"), start, Freq::Days(1)).unwrap();
    assert_eq!((lst.num_series, lst.len), (8, 7588));
    // The GluonTS split is the LSTNet file's values (same source): the first training value agrees.
    assert!(
        (lst.at(0, 0) - ds.train.at(0, 0)).abs() < 1e-4,
        "{} vs {}",
        lst.at(0, 0),
        ds.train.at(0, 0)
    );
    let ett = load_date_csv(&dir.join("ETTh1.csv.gz"), Some(Freq::Hours(1))).unwrap();
    assert_eq!((ett.series.num_series, ett.series.len), (7, 17420));
    // The shipped `.csv.gz` placed in the cache passes the registry's checksum (taken over its decompressed
    // content) and loads; the same table with one value edited, recompressed, is refused, naming the file.
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(cache.join("etth1")).unwrap();
    let cached = cache.join("etth1/ETTh1.csv.gz");
    std::fs::copy(dir.join("ETTh1.csv.gz"), &cached).unwrap();
    let mut src = DataSources::new(Some(cache));
    src.assets_dir = None;
    src.allow_download = false;
    assert_eq!(src.load("etth1").unwrap().num_series(), 7);
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&cached).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let edited = text.replacen(",30.5", ",31.5", 1);
    assert_ne!(edited, text);
    let mut w = flate2::write::GzEncoder::new(
        std::fs::File::create(&cached).unwrap(),
        flate2::Compression::fast(),
    );
    w.write_all(edited.as_bytes()).unwrap();
    w.finish().unwrap();
    assert_eq!(
        load_date_csv(&cached, Some(Freq::Hours(1)))
            .unwrap()
            .series
            .len,
        17420
    );
    let e = src.load("etth1").unwrap_err().to_string();
    assert!(
        e.contains(&cached.display().to_string()) && e.contains("sha256 mismatch"),
        "{e}"
    );
}

#[test]
fn generated_archive_with_electricity_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let a = SyntheticArchive {
        train_len: 500,
        ..SyntheticArchive::default()
    };
    let tar = tmp.path().join("electricity_nips.tar.gz");
    a.write(&tar).unwrap();
    unpack_tar_gz(&tar, tmp.path()).unwrap();
    let ds = load_gluonts_dir(
        &tmp.path().join("electricity_nips"),
        "electricity",
        Some(24),
    )
    .unwrap();
    assert_eq!(ds.num_series(), 370);
    assert_eq!(ds.test.window_ends.len(), 7);
    assert_eq!(ds.train.len, 500);
    assert_eq!(ds.train.freq, Freq::Hours(1));
}

/// Serves `body` once per connection on loopback; returns the base URL.
fn serve(body: Vec<u8>, hits: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in l.incoming().take(hits) {
            let mut s = stream.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&body).unwrap();
        }
    });
    format!("http://{addr}")
}

#[test]
fn missing_data_set_is_downloaded_into_the_cache_and_offline_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let a = SyntheticArchive {
        train_len: 300,
        ..SyntheticArchive::default()
    };
    let tar = tmp.path().join("src.tar.gz");
    a.write(&tar).unwrap();
    let cache = tmp.path().join("cache");
    let mut src = DataSources::new(Some(cache.clone()));
    src.assets_dir = None;
    src.gluonts_base_url = serve(std::fs::read(&tar).unwrap(), 1);
    let ds = src.load("electricity").unwrap();
    assert_eq!(ds.num_series(), 370);
    assert!(cache.join("electricity_nips/train/train.json").is_file());
    // Offline, with nothing cached: the error names the URL and where to put the file.
    let mut off = DataSources::new(Some(tmp.path().join("empty")));
    off.assets_dir = None;
    off.allow_download = false;
    let e = off.load("traffic").unwrap_err().to_string();
    assert!(e.contains("traffic_nips.tar.gz"), "{e}");
    // A download whose checksum does not match is refused, naming the file.
    let mut bad = DataSources::new(Some(tmp.path().join("bad")));
    bad.assets_dir = None;
    bad.gluonts_base_url = serve(b"not an archive".to_vec(), 1);
    let e = bad.load("exchange_rate").unwrap_err().to_string();
    assert!(
        e.contains("exchange_rate_nips")
            && (e.contains("sha") || e.contains("SHA") || e.contains("checksum")),
        "{e}"
    );
    // A cached ETTh1.csv that is not the published file (here cut short) is refused, not trained on.
    let ett = tmp.path().join("ett");
    std::fs::create_dir_all(ett.join("etth1")).unwrap();
    std::fs::write(
        ett.join("etth1/ETTh1.csv"),
        "date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT\n2016-07-01 00:00:00,5.8,2.0,1.5,0.4,4.2,1.3,30.5\n",
    )
    .unwrap();
    let mut cached = DataSources::new(Some(ett.clone()));
    cached.assets_dir = None;
    cached.allow_download = false;
    let e = cached.load("etth1").unwrap_err().to_string();
    assert!(
        e.contains("ETTh1.csv") && e.contains("sha256 mismatch") && e.contains("delete the file"),
        "{e}"
    );
}

#[test]
fn ragged_and_nan_rows_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.txt");
    std::fs::write(&p, "1,2,3\n4,5\n").unwrap();
    let start = NaiveDate::from_ymd_opt(2000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let e = load_lstnet(&p, start, Freq::Days(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.txt") && e.contains('2'), "{e}");
    std::fs::write(&p, "1,2,3\n4,nan,6\n").unwrap();
    let e = load_lstnet(&p, start, Freq::Days(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.txt"), "{e}");
    let c = tmp.path().join("bad.csv");
    std::fs::write(&c, "date,a\n2020-01-01 00:00:00,1\nnot a date,2\n").unwrap();
    let e = load_date_csv(&c, Some(Freq::Hours(1)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.csv") && e.contains('3'), "{e}");
    // A cell that is missing, or a number beyond f32, is quoted with what is wrong with it.
    for (cell, want) in [
        ("", "empty cell"),
        ("1e39", "`1e39` is beyond the range of f32"),
        ("NaN", "`NaN` is NaN or infinite"),
    ] {
        std::fs::write(
            &c,
            format!("date,a,b\n2020-01-01 00:00:00,1,2\n2020-01-01 01:00:00,3,{cell}\n"),
        )
        .unwrap();
        let e = load_date_csv(&c, Some(Freq::Hours(1)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.csv:3") && e.contains('b') && e.contains(want),
            "{cell}: {e}"
        );
    }
}
