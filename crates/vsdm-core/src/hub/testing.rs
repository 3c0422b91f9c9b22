//! A stand-in for the hub on loopback, for tests: point `HF_ENDPOINT` (or [`Hub::new`](super::Hub::new)) at
//! [`FakeHub::endpoint`] and `hf-hub` downloads from it as from huggingface.co.
//!
//! It answers what `hf-hub`'s blocking client asks: a `Range: bytes=0-0` request for the metadata of
//! `/{,datasets/}OWNER/NAME/resolve/REV/FILE` (headers `ETag`, `X-Repo-Commit`, `Content-Range: bytes 0-0/SIZE`),
//! then the ranged download itself. Large files (`.safetensors`, `.parquet`) go the way of the hub's LFS files: a
//! `302 Found` to an absolute `/cdn/<sha>` address carrying `X-Linked-Etag` and `X-Repo-Commit`, the bytes and
//! `Content-Range` coming from there. Unknown paths get `404` with `X-Error-Code: EntryNotFound`.
//!
//! The server serves at most [`FakeHub::MAX_REQUESTS`] requests, for at most [`FakeHub::LIFETIME`], and stops
//! when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::RepoKind;

/// One file the fake hub serves.
#[derive(Debug, Clone)]
struct Served {
    /// The request path of the `resolve` URL.
    path: String,
    body: Arc<Vec<u8>>,
    etag: String,
    lfs: bool,
}

/// A loopback HTTP server that behaves like the hub's `resolve` endpoint for a fixed set of files.
pub struct FakeHub {
    endpoint: String,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    files: Vec<Served>,
    commit: String,
}

/// A content hash in hex (64 digits, like the hub's sha256 etags; not cryptographic).
fn etag_of(body: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    (0..4u64)
        .map(|salt| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            salt.hash(&mut h);
            body.hash(&mut h);
            format!("{:016x}", h.finish())
        })
        .collect()
}

impl FakeHub {
    /// Requests served before the server stops by itself.
    pub const MAX_REQUESTS: usize = 256;
    /// How long the server lives at most.
    pub const LIFETIME: Duration = Duration::from_secs(120);

    /// A server with no files yet; add them with [`FakeHub::with_file`], then [`FakeHub::start`].
    pub fn new(commit: &str) -> FakeHub {
        FakeHub {
            endpoint: String::new(),
            requests: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            files: Vec::new(),
            commit: commit.to_string(),
        }
    }

    /// Serves `body` as `file` of repository `repo` (`OWNER/NAME`) at revision `rev`.
    pub fn with_file(
        mut self,
        kind: RepoKind,
        repo: &str,
        rev: &str,
        file: &str,
        body: Vec<u8>,
    ) -> FakeHub {
        let prefix = match kind {
            RepoKind::Model => "",
            RepoKind::Dataset => "/datasets",
        };
        let lfs = file.ends_with(".safetensors") || file.ends_with(".parquet");
        self.files.push(Served {
            path: format!("{prefix}/{repo}/resolve/{}/{file}", rev.replace('/', "%2F")),
            etag: etag_of(&body),
            body: Arc::new(body),
            lfs,
        });
        self
    }

    /// Binds a loopback port and serves on a background thread.
    pub fn start(mut self) -> std::io::Result<FakeHub> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        self.endpoint = format!("http://{}", listener.local_addr()?);
        let (files, commit, endpoint) = (
            self.files.clone(),
            self.commit.clone(),
            self.endpoint.clone(),
        );
        let (requests, stop) = (self.requests.clone(), self.stop.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed)
                && start.elapsed() < Self::LIFETIME
                && requests.load(Ordering::Relaxed) < Self::MAX_REQUESTS
            {
                match listener.accept() {
                    Ok((stream, _)) => {
                        requests.fetch_add(1, Ordering::Relaxed);
                        let _ = answer(stream, &files, &commit, &endpoint);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(self)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A `Range: bytes=START-[END]` header's bounds.
type ByteRange = (usize, Option<usize>);

/// The request path and `Range` of one request.
fn read_request(stream: &mut TcpStream) -> std::io::Result<(String, Option<ByteRange>)> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
    let range = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("range") {
            return None;
        }
        let (a, b) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
        Some((a.parse().ok()?, b.parse().ok()))
    });
    Ok((path, range))
}

fn answer(
    mut stream: TcpStream,
    files: &[Served],
    commit: &str,
    endpoint: &str,
) -> std::io::Result<()> {
    let (path, range) = read_request(&mut stream)?;
    let mut head = Vec::new();
    let mut body: &[u8] = &[];
    let status;
    if let Some(f) = files.iter().find(|f| f.path == path && f.lfs) {
        status = "302 Found";
        head.push(format!("Location: {endpoint}/cdn/{}", f.etag));
        head.push(format!("X-Linked-Etag: \"{}\"", f.etag));
        head.push(format!("X-Linked-Size: {}", f.body.len()));
        head.push(format!("ETag: \"git-{}\"", &f.etag[..40]));
        head.push(format!("X-Repo-Commit: {commit}"));
    } else if let Some(f) = files
        .iter()
        .find(|f| f.path == path || (f.lfs && path == format!("/cdn/{}", f.etag)))
    {
        let n = f.body.len();
        let (a, b) = match range {
            Some((a, b)) => (a.min(n), b.map_or(n, |b| (b + 1).min(n))),
            None => (0, n),
        };
        body = &f.body[a..b.max(a)];
        if range.is_some() {
            status = "206 Partial Content";
            head.push(format!("Content-Range: bytes {a}-{}/{n}", b.max(a + 1) - 1));
        } else {
            status = "200 OK";
        }
        head.push(format!("ETag: \"{}\"", f.etag));
        if !path.starts_with("/cdn/") {
            head.push(format!("X-Repo-Commit: {commit}"));
        }
    } else {
        status = "404 Not Found";
        head.push("X-Error-Code: EntryNotFound".into());
    }
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for h in head {
        out.push_str(&h);
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    stream.write_all(out.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}
