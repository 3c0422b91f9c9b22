//! Trained weights: `model.safetensors` (the EMA network) and `config.json` (vsdm-core's exported config —
//! training settings and the EMA variational parameters — plus the network, window and data-set settings),
//! read from a folder or from the Hugging Face hub (`hf:OWNER/NAME[@REV]`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use vsdm_core::hub::{Hub, HubRef, RepoKind};
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

impl Loaded {
    /// A forecaster of these weights, on the window they were trained with.
    pub fn forecaster<'a>(
        &'a self,
        sampler: vsdm_core::SamplerConfig,
        sample_batch: usize,
        device: &'a Device,
    ) -> crate::forecast::ModelForecaster<'a> {
        crate::forecast::ModelForecaster {
            net: &self.net,
            process: &self.process,
            window: self.cfg.window,
            sampler,
            sample_batch,
            device,
        }
    }
}

/// Loads `model.safetensors` + `config.json` from `dir` (the folder, or one of those two files in it), naming
/// the file at fault on error.
pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Loaded> {
    let dir = &vsdm_core::weights_folder(dir, &["model.safetensors", "config.json"]);
    if dir.is_file() {
        anyhow::bail!(
            "{}: a file, not a weights folder (the folder that holds model.safetensors and config.json)",
            dir.display()
        );
    }
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
    let w = &cfg.window;
    if (w.context, w.horizon) != (n.context, n.horizon) {
        anyhow::bail!(
            "{}: `window` (context {}, horizon {}) and `network` (context {}, horizon {}) disagree",
            cfg_path.display(),
            w.context,
            w.horizon,
            n.context,
            n.horizon
        );
    }
    let st = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&st, device)
        .map_err(|e| anyhow::anyhow!("{}: unreadable weights: {e}", st.display()))?;
    if let Some(bad) = vsdm_core::error::first_non_finite_in(&tensors)? {
        anyhow::bail!(
            "{}: tensor {bad} holds NaN or infinite values",
            st.display()
        );
    }
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

/// The files of published weights.
pub const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "config.json"];

/// A `--weights` argument: a local folder, or `hf:OWNER/NAME[@REV]` on the Hugging Face hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    Local(PathBuf),
    Hub(HubRef),
}

impl std::str::FromStr for WeightsSource {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(
            match HubRef::parse_arg(s).map_err(|e| anyhow::anyhow!("--weights {e}"))? {
                Some(r) => WeightsSource::Hub(r),
                None => WeightsSource::Local(PathBuf::from(s)),
            },
        )
    }
}

/// The snapshot folder of `hf:OWNER/NAME[@REV]` weights holding [`WEIGHT_FILES`]: from the hub's local cache
/// when there, else downloaded into it (unless `hub` is offline; then the error names the cache paths expected
/// and the `huggingface-cli download` command).
pub fn from_hub(hub: &Hub, r: &HubRef) -> anyhow::Result<PathBuf> {
    Ok(hub.snapshot(r, RepoKind::Model, &WEIGHT_FILES)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_built_hub_cache_resolves_offline() {
        let hub = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let folder = hub.path().join("models--alice--vsdm-ts");
        let snap = folder.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::create_dir_all(folder.join("blobs")).unwrap();
        std::fs::write(folder.join("refs").join("main"), commit).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        let offline = Hub::new(hub.path(), None);
        let r = |s: &str| s.parse::<HubRef>().unwrap();
        // Not complete yet: the error names the missing file at its exact path.
        let err = from_hub(&offline, &r("hf:alice/vsdm-ts"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&snap.join("model.safetensors").display().to_string()),
            "{err}"
        );
        std::fs::write(snap.join("model.safetensors"), b"x").unwrap();
        assert_eq!(from_hub(&offline, &r("hf:alice/vsdm-ts")).unwrap(), snap);
        let by_commit = r(&format!("hf:alice/vsdm-ts@{commit}"));
        assert_eq!(from_hub(&offline, &by_commit).unwrap(), snap);
        let err = from_hub(&offline, &r("hf:alice/vsdm-ts@v2"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("refs/v2") && err.contains("--revision v2"),
            "{err}"
        );
    }

    #[test]
    fn weights_arguments_parse() {
        assert_eq!(
            "hf:alice/vsdm-ts@v1".parse::<WeightsSource>().unwrap(),
            WeightsSource::Hub(HubRef {
                repo: "alice/vsdm-ts".into(),
                revision: Some("v1".into())
            })
        );
        assert_eq!(
            "runs/w".parse::<WeightsSource>().unwrap(),
            WeightsSource::Local("runs/w".into())
        );
        for bad in ["hf:alice", "hf:alice/", "hf:a/b/c", "hf:a/b@"] {
            let e = bad.parse::<WeightsSource>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
