//! The Hugging Face hub, `hf:OWNER/NAME[@REV]`, through the `hf-hub` crate (its blocking ureq client).
//!
//! Files are looked up in the local cache first — the layout of Python's `huggingface_hub`, shared with
//! `hf-hub`: `<cache>/{models,datasets}--OWNER--NAME/refs/<REV>` holds the commit a branch or tag points at,
//! `snapshots/<commit>/<file>` the files (links into `blobs/`). The cache folder is `$HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`. `REV` is a branch or tag (default `main`), a ref such as
//! `refs/convert/parquet`, or a full 40-digit commit hash (then found in `snapshots/` with or without a ref).
//!
//! A file that is not cached is downloaded into that cache from `$HF_ENDPOINT` (default
//! `https://huggingface.co`) with a progress bar — unless the hub is offline (`--offline`, or `HF_HUB_OFFLINE=1`
//! in the environment). Either way, a file that cannot be had is an error ([`HubError::Unavailable`]) naming the
//! repository, the revision, the file, the exact cache path it is expected at and the `huggingface-cli download`
//! command that puts it there.

pub mod testing;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

/// The hub's public address.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// What kind of repository a reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// Weights and their configuration (`models--OWNER--NAME`, URLs `/OWNER/NAME/resolve/…`).
    Model,
    /// Data files (`datasets--OWNER--NAME`, URLs `/datasets/OWNER/NAME/resolve/…`).
    Dataset,
}

impl RepoKind {
    fn repo_type(self) -> RepoType {
        match self {
            RepoKind::Model => RepoType::Model,
            RepoKind::Dataset => RepoType::Dataset,
        }
    }

    /// `model` or `dataset`.
    pub fn noun(self) -> &'static str {
        match self {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
        }
    }
}

/// Errors of hub references and look-ups.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// An `hf:` argument that is not `hf:OWNER/NAME[@REV]`.
    #[error("{value}: {reason}")]
    BadRef { value: String, reason: String },
    /// None of the files asked for is cached, and none could be downloaded (or the hub is offline).
    #[error("{}", unavailable_message(.target, .misses))]
    Unavailable {
        /// `hf:OWNER/NAME@REV (model repository)`.
        target: String,
        /// Why each file could not be had, in the order they were tried.
        misses: Vec<Miss>,
    },
    /// The files of one request resolved to different snapshot folders.
    #[error(
        "{target}: {first} and {other} are in different snapshots: the repository changed while downloading; \
         run again"
    )]
    Inconsistent {
        target: String,
        first: PathBuf,
        other: PathBuf,
    },
}

/// One file that is neither cached nor downloadable.
#[derive(Debug, Clone)]
pub struct Miss {
    /// The file's path in the repository.
    pub file: String,
    /// Where the cache is expected to hold it (the commit folder in words when no ref names it yet).
    pub expected: String,
    /// The ref file that names the commit (absent for a commit-hash revision).
    pub ref_file: Option<PathBuf>,
    /// The URL and reason of a failed download; `None` when offline.
    pub download: Option<(String, String)>,
    /// A command that puts the file into the cache.
    pub command: String,
}

fn unavailable_message(target: &str, misses: &[Miss]) -> String {
    let parts: Vec<String> = misses
        .iter()
        .map(|m| {
            let why = match &m.download {
                None => "is not in the local Hugging Face cache (offline)".to_string(),
                Some((url, reason)) => format!(
                    "is not in the local Hugging Face cache and could not be downloaded from {url}: {reason}"
                ),
            };
            let refs = m
                .ref_file
                .as_ref()
                .map(|r| format!(", with {} holding that commit's hash", r.display()))
                .unwrap_or_default();
            format!(
                "{} {why}; expected at {}{refs}. To fetch it where the hub is reachable: `{}`",
                m.file, m.expected, m.command
            )
        })
        .collect();
    let offline = misses.iter().any(|m| m.download.is_none());
    format!(
        "{target}: {}{}",
        parts.join("; or "),
        if offline {
            " (then copy that cache folder here), or run without --offline / HF_HUB_OFFLINE"
        } else {
            ""
        }
    )
}

/// `hf:OWNER/NAME[@REV]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `OWNER/NAME`.
    pub repo: String,
    /// Branch, tag, ref or commit hash; `None` for `main`.
    pub revision: Option<String>,
}

/// 40 hexadecimal digits: a git commit hash as the hub names revisions.
fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

impl HubRef {
    /// The prefix that marks a hub reference on the command line.
    pub const PREFIX: &'static str = "hf:";

    /// `Ok(None)` for an argument without the `hf:` prefix (a local path), the parsed reference otherwise.
    pub fn parse_arg(arg: &str) -> Result<Option<HubRef>, HubError> {
        if arg.starts_with(Self::PREFIX) {
            arg.parse().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The revision, `main` when none was given.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// Whether the revision is a full commit hash.
    pub fn is_commit(&self) -> bool {
        is_commit_hash(self.revision())
    }

    fn repo(&self, kind: RepoKind) -> Repo {
        Repo::with_revision(
            self.repo.clone(),
            kind.repo_type(),
            self.revision().to_string(),
        )
    }

    /// `hf:OWNER/NAME@REV (dataset repository)`.
    pub fn describe(&self, kind: RepoKind) -> String {
        format!(
            "hf:{}@{} ({} repository)",
            self.repo,
            self.revision(),
            kind.noun()
        )
    }
}

impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.repo)?;
        match &self.revision {
            Some(r) => write!(f, "@{r}"),
            None => Ok(()),
        }
    }
}

impl FromStr for HubRef {
    type Err = HubError;

    fn from_str(s: &str) -> Result<Self, HubError> {
        let bad = |reason: &str| HubError::BadRef {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let rest = s
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| bad("a hub reference starts with hf:"))?;
        let (repo, revision) = match rest.split_once('@') {
            Some((r, v)) => (r, Some(v)),
            None => (rest, None),
        };
        let name_ok = |n: &str| {
            !n.is_empty()
                && !n.starts_with('.')
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 || !parts.iter().all(|p| name_ok(p)) {
            return Err(bad(
                "expected hf:OWNER/NAME or hf:OWNER/NAME@REVISION (letters, digits, `-`, `_`, `.`)",
            ));
        }
        if let Some(v) = revision {
            let ok = !v.is_empty()
                && !v.starts_with('/')
                && !v.ends_with('/')
                && !v.split('/').any(|p| p.is_empty() || p == "." || p == "..")
                && !v
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '\\');
            if !ok {
                return Err(bad(
                    "the revision after `@` must be a branch, tag, ref (refs/convert/parquet) or commit hash",
                ));
            }
        }
        Ok(HubRef {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
        })
    }
}

/// A look-up of environment variables: the process's ([`process_env`]) or, in tests, a table of values.
type Vars<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// The process's environment variables.
fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// A variable as text; one that is not valid Unicode counts as unset (as `std::env::var` treats it).
fn var_string(vars: Vars, name: &str) -> Option<String> {
    vars(name).and_then(|v| v.into_string().ok())
}

/// Whether an environment flag such as `HF_HUB_OFFLINE` is set to a true value (`1`, `true`, `yes`, `on`, in
/// any case, spaces around ignored).
fn env_flag(vars: Vars, name: &str) -> bool {
    var_string(vars, name).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// A path variable; an empty one counts as unset.
fn env_path(vars: Vars, name: &str) -> Option<PathBuf> {
    vars(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// `$HF_HOME`, else `~/.cache/huggingface` (`./.cache/huggingface` without `$HOME`).
fn hf_home(vars: Vars) -> PathBuf {
    env_path(vars, "HF_HOME").unwrap_or_else(|| {
        env_path(vars, "HOME")
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".cache")
            .join("huggingface")
    })
}

/// The hub: a cache folder, and the endpoint to download from (none when offline).
#[derive(Debug, Clone)]
pub struct Hub {
    cache: PathBuf,
    endpoint: Option<String>,
    token: Option<String>,
    progress: bool,
}

impl Hub {
    /// A hub with the given cache folder that downloads from `endpoint` (`None`: offline). Hub tokens are read
    /// from `<cache>/../token`, as `hf-hub` does; progress bars are on.
    pub fn new(cache: impl Into<PathBuf>, endpoint: Option<String>) -> Hub {
        Hub {
            cache: cache.into(),
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string()),
            token: None,
            progress: true,
        }
    }

    /// The hub as the environment describes it: [`Hub::cache_dir_from_env`], `$HF_ENDPOINT` (default
    /// [`DEFAULT_ENDPOINT`]), offline when `offline` or `HF_HUB_OFFLINE` is set, the token from `$HF_TOKEN` or
    /// the file `huggingface-cli login` writes (`$HF_TOKEN_PATH`, else `$HF_HOME/token`).
    pub fn from_env(offline: bool) -> Hub {
        Self::from_vars(offline, &process_env)
    }

    /// [`Hub::from_env`] with the variables looked up in `vars`.
    fn from_vars(offline: bool, vars: Vars) -> Hub {
        let offline = offline || env_flag(vars, "HF_HUB_OFFLINE");
        let endpoint = (!offline).then(|| {
            var_string(vars, "HF_ENDPOINT")
                .filter(|e| !e.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
        });
        // As `huggingface_hub` does, an empty `$HF_TOKEN` (or one of spaces) falls through to the file.
        let clean = |t: String| Some(t.trim().to_string()).filter(|t| !t.is_empty());
        let token = var_string(vars, "HF_TOKEN").and_then(clean).or_else(|| {
            let path =
                env_path(vars, "HF_TOKEN_PATH").unwrap_or_else(|| hf_home(vars).join("token"));
            std::fs::read_to_string(path).ok().and_then(clean)
        });
        let mut hub = Hub::new(Self::cache_dir_from_vars(vars), endpoint);
        hub.token = token;
        hub
    }

    /// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    pub fn cache_dir_from_env() -> PathBuf {
        Self::cache_dir_from_vars(&process_env)
    }

    fn cache_dir_from_vars(vars: Vars) -> PathBuf {
        env_path(vars, "HF_HUB_CACHE").unwrap_or_else(|| hf_home(vars).join("hub"))
    }

    /// Turns the download progress bar on or off.
    pub fn with_progress(mut self, progress: bool) -> Hub {
        self.progress = progress;
        self
    }

    /// The cache folder.
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// The endpoint downloads come from; `None` when offline.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    fn repo_folder(&self, r: &HubRef, kind: RepoKind) -> PathBuf {
        self.cache.join(r.repo(kind).folder_name())
    }

    /// The ref file of a branch/tag revision.
    fn ref_file(&self, r: &HubRef, kind: RepoKind) -> PathBuf {
        let mut p = self.repo_folder(r, kind).join("refs");
        for part in r.revision().split('/') {
            p.push(part);
        }
        p
    }

    /// The commit the cache holds for `r`: the content of `refs/<REV>` when it is a commit hash (anything else,
    /// a damaged file or a path like `x/../../y`, is not taken as one: a branch or tag then counts as not
    /// cached), else the revision itself when it is a commit hash.
    fn cached_commit(&self, r: &HubRef, kind: RepoKind) -> Option<String> {
        match std::fs::read_to_string(self.ref_file(r, kind)) {
            Ok(c) if is_commit_hash(c.trim()) => Some(c.trim().to_string()),
            _ => r.is_commit().then(|| r.revision().to_string()),
        }
    }

    /// The cached copy of `file` of `r`, if there is one: `snapshots/<commit>/<file>` in `huggingface_hub`'s
    /// layout, the commit from [`Hub::cached_commit`]. hf-hub's own `Cache::get` is not used: it joins the
    /// ref's content into the path untrimmed and unchecked (a ref written with a trailing newline would be a
    /// miss, one holding `../x` would be followed).
    pub fn cached(&self, r: &HubRef, kind: RepoKind, file: &str) -> Option<PathBuf> {
        let commit = self.cached_commit(r, kind)?;
        let p = self
            .repo_folder(r, kind)
            .join("snapshots")
            .join(commit)
            .join(file);
        p.is_file().then_some(p)
    }

    /// Why `file` is not to be had, and how to get it.
    fn miss(
        &self,
        r: &HubRef,
        kind: RepoKind,
        file: &str,
        download: Option<(String, String)>,
    ) -> Miss {
        let snapshots = self.repo_folder(r, kind).join("snapshots");
        let (expected, ref_file) = match self.cached_commit(r, kind) {
            Some(c) => (snapshots.join(c).join(file).display().to_string(), None),
            None => (
                format!("{}/<commit>/{file}", snapshots.display()),
                Some(self.ref_file(r, kind)),
            ),
        };
        let repo_type = match kind {
            RepoKind::Model => "",
            RepoKind::Dataset => " --repo-type dataset",
        };
        Miss {
            file: file.to_string(),
            expected,
            ref_file,
            download,
            command: format!(
                "huggingface-cli download{repo_type} {} {file} --revision {} --cache-dir {}",
                r.repo,
                r.revision(),
                self.cache.display()
            ),
        }
    }

    /// Downloads `file` through hf-hub into the cache; `Err` holds the URL and the reason.
    fn download(
        &self,
        endpoint: &str,
        r: &HubRef,
        kind: RepoKind,
        file: &str,
    ) -> Result<PathBuf, (String, String)> {
        let mut builder = ApiBuilder::from_cache(Cache::new(self.cache.clone()))
            .with_endpoint(endpoint.to_string())
            .with_progress(self.progress);
        if self.token.is_some() {
            builder = builder.with_token(self.token.clone());
        }
        let url = format!(
            "{endpoint}/{}/resolve/{}/{file}",
            r.repo(kind).url(),
            r.repo(kind).url_revision()
        );
        let api = builder.build().map_err(|e| (url.clone(), e.to_string()))?;
        let repo = api.repo(r.repo(kind));
        tracing::info!(%url, cache = %self.cache.display(), "downloading");
        // hf-hub unwraps a few of a server's answers (a redirect without Location); a misbehaving endpoint must
        // not take the program down.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| repo.download(file)));
        match result {
            Ok(Ok(path)) => Ok(path),
            Ok(Err(e)) => Err((url, e.to_string())),
            Err(_) => Err((url, "hf-hub failed on the server's answer".to_string())),
        }
    }

    /// The first of `candidates` (paths in the repository) that is cached, else the first that downloads (in
    /// order), with its name; offline, only the cache is looked at.
    pub fn first_of(
        &self,
        r: &HubRef,
        kind: RepoKind,
        candidates: &[&str],
    ) -> Result<(PathBuf, String), HubError> {
        for f in candidates {
            if let Some(p) = self.cached(r, kind, f) {
                return Ok((p, f.to_string()));
            }
        }
        let mut misses = Vec::new();
        for f in candidates {
            match &self.endpoint {
                None => misses.push(self.miss(r, kind, f, None)),
                Some(endpoint) => match self.download(endpoint, r, kind, f) {
                    Ok(p) => return Ok((p, f.to_string())),
                    Err(why) => misses.push(self.miss(r, kind, f, Some(why))),
                },
            }
        }
        Err(HubError::Unavailable {
            target: r.describe(kind),
            misses,
        })
    }

    /// The local path of `file`: cached, else downloaded.
    pub fn file(&self, r: &HubRef, kind: RepoKind, file: &str) -> Result<PathBuf, HubError> {
        self.first_of(r, kind, &[file]).map(|(p, _)| p)
    }

    /// The snapshot folder holding all of `files` (each cached or downloaded), e.g. a weights folder.
    pub fn snapshot(
        &self,
        r: &HubRef,
        kind: RepoKind,
        files: &[&str],
    ) -> Result<PathBuf, HubError> {
        let mut folder: Option<(PathBuf, PathBuf)> = None;
        for f in files {
            let path = self.file(r, kind, f)?;
            let mut dir = path.clone();
            for _ in Path::new(f).components() {
                dir.pop();
            }
            match &folder {
                None => folder = Some((dir, path)),
                Some((d, first)) if *d != dir => {
                    return Err(HubError::Inconsistent {
                        target: r.describe(kind),
                        first: first.clone(),
                        other: path,
                    })
                }
                Some(_) => {}
            }
        }
        folder.map(|(d, _)| d).ok_or_else(|| HubError::BadRef {
            value: r.to_string(),
            reason: "no files asked for".into(),
        })
    }
}

#[cfg(test)]
mod tests;
