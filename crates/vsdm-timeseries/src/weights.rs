//! Trained weights: `model.safetensors` (the EMA network) and `config.json` (vsdm-core's exported config —
//! training settings and the EMA variational parameters — plus the network, window and data-set settings),
//! read from a folder or from the Hugging Face hub (`hf:OWNER/NAME[@REV]`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use vsdm_core::process::Process;
use vsdm_core::trainer::ExportedConfig;

use crate::model::{ForecastNet, NetConfig};
use crate::pipeline::{Method, Trained};
use crate::window::WindowConfig;

/// The `config.json` of published forecasting weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WeightsConfig {
    /// What vsdm-core writes: training config, EMA variational parameters, step.
    #[serde(flatten)]
    pub exported: ExportedConfig,
    pub method: Method,
    pub network: NetConfig,
    pub window: WindowConfig,
    /// The data set the weights were trained on.
    pub dataset: String,
    /// Wall-clock training seconds.
    pub train_seconds: f64,
}

/// Writes the EMA weights of a run into `dir`.
pub fn save(trained: &Trained, dataset: &str, dir: &Path) -> anyhow::Result<()> {
    trained.trainer.export(dir)?;
    let path = dir.join("config.json");
    let exported = ExportedConfig::read(&path)?;
    let cfg = WeightsConfig {
        exported,
        method: trained.method,
        network: trained.net,
        window: trained.window,
        dataset: dataset.to_string(),
        train_seconds: trained.seconds,
    };
    let tmp = dir.join(".config.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&cfg)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(())
}

/// Weights ready to forecast.
pub struct Loaded {
    pub cfg: WeightsConfig,
    pub net: ForecastNet,
    pub process: Process,
    /// The folder they came from.
    pub dir: PathBuf,
}

/// Loads `model.safetensors` + `config.json` from `dir`, naming the file at fault on error.
pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Loaded> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        anyhow::bail!(
            "{}: no weights here (expected model.safetensors and config.json written by `vsdm-timeseries train`)",
            dir.display()
        );
    }
    // vsdm-core's reader validates the training part (method parameters, schedule...).
    ExportedConfig::read(&cfg_path)?;
    let text = std::fs::read_to_string(&cfg_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cfg_path.display()))?;
    let cfg: WeightsConfig = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not forecasting weights ({e}); expected the config.json written by `vsdm-timeseries train`",
            cfg_path.display()
        )
    })?;
    let n = &cfg.network;
    let shape = &cfg.exported.config.data_shape;
    if shape != &[1, n.num_series, n.horizon] || n.state_channels != cfg.method.state_channels() {
        anyhow::bail!(
            "{}: network ({} series, horizon {}, {} channels) does not match the data shape {:?} of method {}",
            cfg_path.display(),
            n.num_series,
            n.horizon,
            n.state_channels,
            shape,
            cfg.method.name()
        );
    }
    let st = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&st, device)
        .map_err(|e| anyhow::anyhow!("{}: unreadable weights: {e}", st.display()))?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let mut net = ForecastNet::new(vb, cfg.network).map_err(|e| {
        anyhow::anyhow!("{}: does not fit the configured network: {e}", st.display())
    })?;
    net.set_inference(true);
    let process = cfg.exported.process(device)?;
    Ok(Loaded {
        cfg,
        net,
        process,
        dir: dir.to_path_buf(),
    })
}

/// A `--weights` argument: a local folder, or `hf:OWNER/NAME[@REV]` on the Hugging Face hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    Local(PathBuf),
    Hub {
        repo: String,
        revision: Option<String>,
    },
}

impl std::str::FromStr for WeightsSource {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let Some(rest) = s.strip_prefix("hf:") else {
            return Ok(WeightsSource::Local(PathBuf::from(s)));
        };
        let (repo, revision) = match rest.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, Some(rev.to_string())),
            Some(_) => anyhow::bail!("--weights {s}: empty revision after `@`"),
            None => (rest, None),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            anyhow::bail!("--weights {s}: expected hf:OWNER/NAME or hf:OWNER/NAME@REVISION");
        }
        Ok(WeightsSource::Hub {
            repo: repo.to_string(),
            revision,
        })
    }
}

/// The Hugging Face cache folder: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HF_HUB_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HF_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("huggingface"))
        })
        .unwrap_or_else(|| PathBuf::from(".cache/huggingface"));
    home.join("hub")
}

/// Resolves `hf:OWNER/NAME[@REV]` in the Hugging Face cache layout
/// (`<hub>/models--OWNER--NAME/{refs/<REV>, snapshots/<commit>/, blobs/}`, REV defaulting to `main`, a 40-digit
/// commit accepted directly) to the snapshot folder holding `model.safetensors` and `config.json`.
pub fn from_hub_cache(hub: &Path, repo: &str, revision: Option<&str>) -> anyhow::Result<PathBuf> {
    let folder = hub.join(format!("models--{}", repo.replace('/', "--")));
    let rev = revision.unwrap_or("main");
    let ref_path = folder.join("refs").join(rev);
    let commit = match std::fs::read_to_string(&ref_path) {
        Ok(c) => c.trim().to_string(),
        Err(_) if rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()) => rev.to_string(),
        Err(_) => anyhow::bail!(
            "hf:{repo}@{rev} is not in the Hugging Face cache: {} is missing. Download model.safetensors and \
             config.json of that repository (e.g. `huggingface-cli download {repo} model.safetensors config.json \
             --revision {rev}`) or pass --weights with a local folder",
            ref_path.display()
        ),
    };
    let snap = folder.join("snapshots").join(&commit);
    for f in ["model.safetensors", "config.json"] {
        if !snap.join(f).is_file() {
            anyhow::bail!(
                "hf:{repo}@{rev}: {} is missing from the Hugging Face cache snapshot",
                snap.join(f).display()
            );
        }
    }
    Ok(snap)
}

/// The files of published weights.
pub const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "config.json"];

/// The hub's address: `$HF_ENDPOINT`, else `https://huggingface.co`.
pub fn hub_endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
}

/// `hf:OWNER/NAME[@REV]` weights: from the cache `hub` when present there, else (when `endpoint` is given)
/// downloaded from `<endpoint>/OWNER/NAME/resolve/REV/<file>` with a progress bar into
/// `models--OWNER--NAME/snapshots/REV/` with `refs/REV` pointing at it. With `endpoint = None` (offline) a
/// missing snapshot is an error that says what to download.
pub fn from_hub(
    hub: &Path,
    endpoint: Option<&str>,
    repo: &str,
    revision: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let cached = from_hub_cache(hub, repo, revision);
    let (Err(_), Some(endpoint)) = (&cached, endpoint) else {
        return cached;
    };
    let rev = revision.unwrap_or("main");
    let folder = hub.join(format!("models--{}", repo.replace('/', "--")));
    let snap = folder.join("snapshots").join(rev);
    for f in WEIGHT_FILES {
        let url = format!(
            "{}/{repo}/resolve/{rev}/{f}",
            endpoint.trim_end_matches('/')
        );
        crate::data::download::download(&url, &snap.join(f), None)?;
    }
    let refs = folder.join("refs");
    std::fs::create_dir_all(&refs).map_err(|e| anyhow::anyhow!("{}: {e}", refs.display()))?;
    std::fs::write(refs.join(rev), rev).map_err(|e| anyhow::anyhow!("{}: {e}", refs.display()))?;
    from_hub_cache(hub, repo, revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_cache_layout_resolves_refs_and_commits() {
        let hub = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let folder = hub.path().join("models--alice--vsdm-ts");
        let snap = folder.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::create_dir_all(folder.join("blobs")).unwrap();
        std::fs::write(folder.join("refs").join("main"), commit).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        // Not complete yet: the error names the missing file.
        let err = from_hub_cache(hub.path(), "alice/vsdm-ts", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        std::fs::write(snap.join("model.safetensors"), b"x").unwrap();
        assert_eq!(
            from_hub_cache(hub.path(), "alice/vsdm-ts", None).unwrap(),
            snap
        );
        assert_eq!(
            from_hub_cache(hub.path(), "alice/vsdm-ts", Some(commit)).unwrap(),
            snap
        );
        let err = from_hub_cache(hub.path(), "alice/vsdm-ts", Some("v2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("refs/v2"), "{err}");
    }

    #[test]
    fn weights_arguments_parse() {
        assert_eq!(
            "hf:alice/vsdm-ts@v1".parse::<WeightsSource>().unwrap(),
            WeightsSource::Hub {
                repo: "alice/vsdm-ts".into(),
                revision: Some("v1".into())
            }
        );
        assert_eq!(
            "runs/w".parse::<WeightsSource>().unwrap(),
            WeightsSource::Local("runs/w".into())
        );
        for bad in ["hf:alice", "hf:alice/", "hf:a/b/c", "hf:a/b@"] {
            assert!(bad.parse::<WeightsSource>().is_err(), "{bad}");
        }
    }
}
