use std::path::Path;

use super::testing::FakeHub;
use super::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A cache folder built by hand in the `huggingface_hub` layout: a blob, a snapshot link to it, `refs/<rev>`
/// (optionally written with a trailing newline, as a person might).
fn hand_built(
    cache: &Path,
    folder: &str,
    rev: &str,
    file: &str,
    body: &[u8],
    newline: bool,
) -> PathBuf {
    let repo = cache.join(folder);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::write(repo.join("blobs/b0"), body).unwrap();
    let snap = repo.join("snapshots").join(COMMIT);
    let link = snap.join(file);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    let up = "../".repeat(Path::new(file).components().count() + 1);
    std::os::unix::fs::symlink(format!("{up}blobs/b0"), &link).unwrap();
    let r = repo.join("refs").join(rev);
    std::fs::create_dir_all(r.parent().unwrap()).unwrap();
    let nl = if newline { "\n" } else { "" };
    std::fs::write(r, format!("{COMMIT}{nl}")).unwrap();
    link
}

fn hf(s: &str) -> HubRef {
    s.parse().unwrap()
}

/// The error of asking `hub` for weights of a revision it does not have.
fn missing_weights(hub: &Hub) -> String {
    hub.file(
        &hf("hf:alice/tiny@v2"),
        RepoKind::Model,
        "model.safetensors",
    )
    .unwrap_err()
    .to_string()
}

#[test]
fn references_parse() {
    assert_eq!(
        hf("hf:alice/vsdm-ts@v1"),
        HubRef {
            repo: "alice/vsdm-ts".into(),
            revision: Some("v1".into())
        }
    );
    let r = hf("hf:uoft-cs/cifar10@refs/convert/parquet");
    assert_eq!(r.revision(), "refs/convert/parquet");
    assert_eq!(r.to_string(), "hf:uoft-cs/cifar10@refs/convert/parquet");
    assert_eq!(hf("hf:a/b").revision(), "main");
    assert!(hf(&format!("hf:a/b@{COMMIT}")).is_commit());
    assert_eq!(HubRef::parse_arg("runs/w").unwrap(), None);
    for bad in [
        "hf:alice",
        "hf:alice/",
        "hf:a/b/c",
        "hf:a/b@",
        "hf:a/../b",
        "hf:a/b@../x",
        "hf:a/b@x/",
        "hf:a b/c",
        "hf:.a/b",
        // Revision paths with an empty, `.` or `..` part, whitespace, a control character or a backslash.
        "hf:a/b@x//y",
        "hf:a/b@x/./y",
        "hf:a/b@x/../y",
        "hf:a/b@my branch",
        "hf:a/b@v1\u{7}",
        "hf:a/b@x\\y",
    ] {
        let e = HubRef::parse_arg(bad).unwrap_err().to_string();
        assert!(e.starts_with(bad), "{bad}: {e}");
    }
    // Dots inside a part are names, not path steps.
    assert_eq!(hf("hf:a/b@v1.0/x..y").revision(), "v1.0/x..y");
    // A commit is exactly 40 hexadecimal digits.
    assert!(!hf(&format!("hf:a/b@{}", "g".repeat(40))).is_commit());
    assert!(!hf(&format!("hf:a/b@{}", &COMMIT[..39])).is_commit());
    assert!(!hf("hf:a/b@v1").is_commit());
}

#[test]
fn cache_resolves_refs_commits_and_slashed_revisions() {
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(cache.path(), None);
    let link = hand_built(
        cache.path(),
        "models--alice--vsdm-ts",
        "main",
        "config.json",
        b"{}",
        false,
    );
    let r = hf("hf:alice/vsdm-ts");
    assert_eq!(hub.file(&r, RepoKind::Model, "config.json").unwrap(), link);
    assert_eq!(
        hub.snapshot(&r, RepoKind::Model, &["config.json"]).unwrap(),
        link.parent().unwrap()
    );
    // The commit hash names the same snapshot, without any ref.
    let by_commit = hf(&format!("hf:alice/vsdm-ts@{COMMIT}"));
    assert_eq!(
        hub.file(&by_commit, RepoKind::Model, "config.json")
            .unwrap(),
        link
    );
    // A model repository is not a dataset repository.
    assert!(hub.cached(&r, RepoKind::Dataset, "config.json").is_none());
    // A ref whose content is not a commit hash is no revision of the cache (a path in it is not followed).
    let refs = cache.path().join("models--alice--vsdm-ts/refs/main");
    std::fs::write(&refs, format!("../snapshots/{COMMIT}")).unwrap();
    assert!(hub.cached(&r, RepoKind::Model, "config.json").is_none());
    std::fs::write(&refs, COMMIT).unwrap();
    assert_eq!(
        hub.cached(&r, RepoKind::Model, "config.json"),
        Some(link.clone())
    );
    // A commit-hash revision whose ref file is damaged (here naming another snapshot folder that exists) is
    // the snapshot of that commit, not what the ref names.
    let repo = cache.path().join("models--alice--vsdm-ts");
    std::fs::create_dir_all(repo.join("snapshots/elsewhere")).unwrap();
    std::fs::write(repo.join("snapshots/elsewhere/config.json"), "[]").unwrap();
    std::fs::write(repo.join("refs").join(COMMIT), "elsewhere").unwrap();
    assert_eq!(
        hub.cached(&by_commit, RepoKind::Model, "config.json"),
        Some(link.clone())
    );
    std::fs::write(&refs, "elsewhere").unwrap();
    assert!(hub.cached(&r, RepoKind::Model, "config.json").is_none());

    // A dataset at refs/convert/parquet (refs/refs/convert/parquet), a file in a sub-folder, a ref with a
    // trailing newline.
    let file = "plain_text/train/0000.parquet";
    let link = hand_built(
        cache.path(),
        "datasets--uoft-cs--cifar10",
        "refs/convert/parquet",
        file,
        b"PAR1",
        true,
    );
    let r = hf("hf:uoft-cs/cifar10@refs/convert/parquet");
    let (p, which) = hub
        .first_of(
            &r,
            RepoKind::Dataset,
            &["plain_text/train-00000-of-00001.parquet", file],
        )
        .unwrap();
    assert_eq!((p.as_path(), which.as_str()), (link.as_path(), file));
    assert_eq!(std::fs::read(p).unwrap(), b"PAR1");
}

#[test]
fn offline_misses_name_repo_revision_file_path_and_command() {
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(cache.path(), None);
    let e = missing_weights(&hub);
    let refs = cache.path().join("models--alice--tiny/refs/v2");
    let snaps = cache.path().join("models--alice--tiny/snapshots");
    for want in [
        "hf:alice/tiny@v2 (model repository)",
        "model.safetensors is not in the local Hugging Face cache (offline)",
        &format!("{}/<commit>/model.safetensors", snaps.display()),
        &refs.display().to_string(),
        &format!(
            "`huggingface-cli download alice/tiny model.safetensors --revision v2 --cache-dir {}`",
            cache.path().display()
        ),
        "--offline",
    ] {
        assert!(e.contains(want), "missing {want:?} in: {e}");
    }

    // With the ref present but the file missing from its snapshot, the exact path is named.
    hand_built(
        cache.path(),
        "datasets--uoft-cs--cifar10",
        "main",
        "README.md",
        b"x",
        false,
    );
    let e = hub
        .first_of(
            &hf("hf:uoft-cs/cifar10"),
            RepoKind::Dataset,
            &[
                "plain_text/test-00000-of-00001.parquet",
                "plain_text/test/0000.parquet",
            ],
        )
        .unwrap_err()
        .to_string();
    let snap = cache
        .path()
        .join("datasets--uoft-cs--cifar10/snapshots")
        .join(COMMIT);
    for want in [
        "hf:uoft-cs/cifar10@main (dataset repository)",
        &snap
            .join("plain_text/test-00000-of-00001.parquet")
            .display()
            .to_string(),
        &snap
            .join("plain_text/test/0000.parquet")
            .display()
            .to_string(),
        "huggingface-cli download --repo-type dataset uoft-cs/cifar10 plain_text/test/0000.parquet",
    ] {
        assert!(e.contains(want), "missing {want:?} in: {e}");
    }
}

#[test]
fn downloads_through_hf_hub_into_the_cache_then_resolves_offline() {
    let cache = tempfile::tempdir().unwrap();
    let weights = vec![7u8; 3000];
    let server = FakeHub::new(COMMIT)
        .with_file(
            RepoKind::Model,
            "alice/tiny",
            "v1",
            "config.json",
            b"{\"a\": 1}".to_vec(),
        )
        .with_file(
            RepoKind::Model,
            "alice/tiny",
            "v1",
            "model.safetensors",
            weights.clone(),
        )
        .with_file(
            RepoKind::Dataset,
            "uoft-cs/cifar10",
            "refs/convert/parquet",
            "plain_text/train/0000.parquet",
            b"PAR1 data PAR1".to_vec(),
        )
        .start()
        .unwrap();
    let online =
        Hub::new(cache.path(), Some(format!("{}/", server.endpoint()))).with_progress(false);
    let r = hf("hf:alice/tiny@v1");
    let snap = online
        .snapshot(&r, RepoKind::Model, &["model.safetensors", "config.json"])
        .unwrap();
    let repo = cache.path().join("models--alice--tiny");
    assert_eq!(snap, repo.join("snapshots").join(COMMIT));
    assert_eq!(
        std::fs::read(snap.join("model.safetensors")).unwrap(),
        weights
    );
    assert_eq!(
        std::fs::read(snap.join("config.json")).unwrap(),
        b"{\"a\": 1}"
    );
    // hf-hub's layout: refs/v1 holds the commit, the snapshot files link into blobs/.
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/v1")).unwrap(),
        COMMIT
    );
    assert!(std::fs::symlink_metadata(snap.join("config.json"))
        .unwrap()
        .file_type()
        .is_symlink());

    // The dataset file behind a slashed revision, through the LFS-style redirect.
    let d = hf("hf:uoft-cs/cifar10@refs/convert/parquet");
    let (p, which) = online
        .first_of(
            &d,
            RepoKind::Dataset,
            &[
                "plain_text/train-00000-of-00001.parquet",
                "plain_text/train/0000.parquet",
            ],
        )
        .unwrap();
    assert_eq!(which, "plain_text/train/0000.parquet");
    assert_eq!(std::fs::read(&p).unwrap(), b"PAR1 data PAR1");

    // Offline, after the server is gone: the same paths from the cache.
    let served = server.requests();
    drop(server);
    let offline = Hub::new(cache.path(), None);
    assert_eq!(
        offline
            .snapshot(&r, RepoKind::Model, &["model.safetensors", "config.json"])
            .unwrap(),
        snap
    );
    assert_eq!(
        offline
            .first_of(&d, RepoKind::Dataset, &["plain_text/train/0000.parquet"])
            .unwrap()
            .0,
        p
    );
    assert!(served >= 6, "{served} requests");
}

#[test]
fn failed_downloads_name_the_url_and_status() {
    let cache = tempfile::tempdir().unwrap();
    let server = FakeHub::new(COMMIT).start().unwrap();
    let hub = Hub::new(cache.path(), Some(server.endpoint().to_string())).with_progress(false);
    let e = missing_weights(&hub);
    assert!(
        e.contains(&format!(
            "could not be downloaded from {}/alice/tiny/resolve/v2/model.safetensors",
            server.endpoint()
        )) && e.contains("404"),
        "{e}"
    );
    assert!(!e.contains("--offline"), "{e}");

    // Nothing listens there: a transport error, still naming the URL.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let hub = Hub::new(cache.path(), Some(format!("http://127.0.0.1:{port}"))).with_progress(false);
    let e = hub
        .file(&hf("hf:uoft-cs/cifar10"), RepoKind::Dataset, "x.parquet")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "http://127.0.0.1:{port}/datasets/uoft-cs/cifar10/resolve/main/x.parquet"
        )),
        "{e}"
    );
}

/// A server whose redirect lacks `Location` (hf-hub 0.4 unwraps that header) gives an error, not a crash.
#[test]
fn a_broken_redirect_is_an_error() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        // One request: the metadata probe.
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 302 Found\r\nX-Repo-Commit: abc\r\nETag: \"e\"\r\nContent-Length: 0\r\n\
                  Connection: close\r\n\r\n",
            );
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(cache.path(), Some(endpoint)).with_progress(false);
    let e = missing_weights(&hub);
    assert!(e.contains("could not be downloaded"), "{e}");
}

/// A table of environment variables, as [`Hub::from_vars`] looks them up.
fn vars<'a>(table: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> + 'a {
    move |name| {
        table
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.into())
    }
}

/// huggingface_hub's environment, variable by variable: the cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`, an empty value counting as unset), the endpoint (`HF_ENDPOINT`, else the
/// public hub; none when offline by flag or by `HF_HUB_OFFLINE`'s true spellings), and the token
/// (`HF_TOKEN`, else the file at `HF_TOKEN_PATH`, else `HF_HOME/token`; blank ones do not count).
#[test]
fn environment_variables_choose_cache_endpoint_token_and_offline() {
    let from = |offline: bool, table: &[(&str, &str)]| Hub::from_vars(offline, &vars(table));
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let hf_home = home.path().join("hf");

    let bare = from(false, &[]);
    assert_eq!(bare.cache_dir(), Path::new("./.cache/huggingface/hub"));
    assert_eq!(bare.endpoint(), Some(DEFAULT_ENDPOINT));
    assert_eq!(bare.token, None);
    let hub = from(false, &[("HOME", h)]);
    assert_eq!(hub.cache_dir(), home.path().join(".cache/huggingface/hub"));
    let hf_home_str = hf_home.to_str().unwrap();
    let hub = from(false, &[("HOME", h), ("HF_HOME", hf_home_str)]);
    assert_eq!(hub.cache_dir(), hf_home.join("hub"));
    for (home_var, cache) in [("", "/c"), (hf_home_str, "/c")] {
        let hub = from(
            false,
            &[("HOME", h), ("HF_HOME", home_var), ("HF_HUB_CACHE", cache)],
        );
        assert_eq!(hub.cache_dir(), Path::new("/c"));
    }
    let hub = from(false, &[("HOME", h), ("HF_HOME", ""), ("HF_HUB_CACHE", "")]);
    assert_eq!(hub.cache_dir(), home.path().join(".cache/huggingface/hub"));

    let hub = from(false, &[("HF_ENDPOINT", "http://mirror.local:8080/")]);
    assert_eq!(hub.endpoint(), Some("http://mirror.local:8080"));
    let hub = from(false, &[("HF_ENDPOINT", "  ")]);
    assert_eq!(hub.endpoint(), Some(DEFAULT_ENDPOINT));
    assert_eq!(from(true, &[("HF_ENDPOINT", "http://m")]).endpoint(), None);
    for on in ["1", "true", "YES", " on "] {
        assert_eq!(
            from(false, &[("HF_HUB_OFFLINE", on)]).endpoint(),
            None,
            "{on}"
        );
    }
    for off in ["0", "false", "", "offline"] {
        let hub = from(false, &[("HF_HUB_OFFLINE", off)]);
        assert_eq!(hub.endpoint(), Some(DEFAULT_ENDPOINT), "{off}");
    }

    std::fs::create_dir_all(&hf_home).unwrap();
    std::fs::write(hf_home.join("token"), "hf_file\n").unwrap();
    let other = home.path().join("other-token");
    std::fs::write(&other, " hf_other ").unwrap();
    let other = other.to_str().unwrap();
    let token = |table: &[(&str, &str)]| from(false, table).token;
    assert_eq!(token(&[("HF_HOME", hf_home_str)]), Some("hf_file".into()));
    assert_eq!(
        token(&[("HF_HOME", hf_home_str), ("HF_TOKEN_PATH", other)]),
        Some("hf_other".into())
    );
    assert_eq!(
        token(&[("HF_HOME", hf_home_str), ("HF_TOKEN", "hf_env")]),
        Some("hf_env".into())
    );
    assert_eq!(
        token(&[("HF_HOME", hf_home_str), ("HF_TOKEN", " ")]),
        Some("hf_file".into())
    );
    std::fs::write(hf_home.join("token"), "\n").unwrap();
    assert_eq!(token(&[("HF_HOME", hf_home_str)]), None);
    assert_eq!(token(&[("HOME", h)]), None);
}

/// Files of one revision that the cache and the server place in two snapshots (the branch moved on since the
/// cached file was fetched) are no single folder: the error names both paths, and a second run succeeds.
#[test]
fn a_snapshot_split_across_commits_is_named() {
    const NEWER: &str = "fedcba9876543210fedcba9876543210fedcba98";
    let cache = tempfile::tempdir().unwrap();
    let old = hand_built(
        cache.path(),
        "models--alice--tiny",
        "main",
        "config.json",
        b"{}",
        false,
    );
    let server = FakeHub::new(NEWER)
        .with_file(
            RepoKind::Model,
            "alice/tiny",
            "main",
            "model.safetensors",
            vec![1u8; 64],
        )
        .with_file(
            RepoKind::Model,
            "alice/tiny",
            "main",
            "config.json",
            b"{\"b\": 2}".to_vec(),
        )
        .start()
        .unwrap();
    let hub = Hub::new(cache.path(), Some(server.endpoint().to_string())).with_progress(false);
    let r = hf("hf:alice/tiny");
    let e = hub
        .snapshot(&r, RepoKind::Model, &["config.json", "model.safetensors"])
        .unwrap_err();
    let newer = cache
        .path()
        .join("models--alice--tiny/snapshots")
        .join(NEWER)
        .join("model.safetensors");
    assert!(newer.is_file());
    match &e {
        HubError::Inconsistent { first, other, .. } => {
            assert_eq!((first, other), (&old, &newer), "{e}");
        }
        _ => panic!("{e}"),
    }
    // As the message says, running again works: the ref now names the newer commit, fetched whole.
    assert_eq!(
        hub.snapshot(&r, RepoKind::Model, &["config.json", "model.safetensors"])
            .unwrap(),
        newer.parent().unwrap()
    );
}
