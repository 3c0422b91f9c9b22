//! Trained weights: a folder written by the `train` command (`weights/`: `model.safetensors` with the EMA
//! network, `config.json` with the training config and variational parameters, `run.json` with the method and
//! U-Net), or the same three files in a Hugging Face model repository, `hf:OWNER/NAME[@REV]` (from the local hub
//! cache, else downloaded into it; see [`vsdm_core::hub`]).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use vsdm_core::hub::{Hub, HubRef, RepoKind};
use vsdm_core::variational::VarParams;
use vsdm_core::{ExportedConfig, Process};

use crate::error::{Error, Result};
use crate::method::{Method, RunSpec};
use crate::unet::UNet;

/// The files of a weights folder.
pub const FILES: [&str; 3] = ["model.safetensors", "config.json", RunSpec::FILE];

/// A network ready to sample.
pub struct Loaded {
    pub net: UNet,
    pub spec: RunSpec,
    pub config: ExportedConfig,
    pub process: Process,
    /// The folder the files were read from.
    pub dir: PathBuf,
}

/// Where `--weights` points: a local folder, or `hf:OWNER/NAME[@REV]` resolved to the snapshot folder of that
/// model repository in `hub`'s cache (downloaded there first when missing and `hub` is online).
pub fn resolve(source: &str, hub: &Hub) -> Result<PathBuf> {
    match HubRef::parse_arg(source)? {
        Some(r) => Ok(hub.snapshot(&r, RepoKind::Model, &FILES)?),
        None => Ok(PathBuf::from(source)),
    }
}

/// The safetensors map as a `VarBuilder` backend that records the names the network asks for.
struct Recording {
    tensors: std::collections::HashMap<String, candle_core::Tensor>,
    used: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Recording {
    fn note(&self, name: &str) {
        if let Ok(mut u) = self.used.lock() {
            u.insert(name.to_string());
        }
    }
}

impl candle_nn::var_builder::SimpleBackend for Recording {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        self.note(name);
        candle_nn::var_builder::SimpleBackend::get(&self.tensors, s, name, h, dtype, dev)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        self.note(name);
        candle_nn::var_builder::SimpleBackend::get_unchecked(&self.tensors, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Loads weights from a folder or `hf:` reference onto `device`.
pub fn load(source: &str, hub: &Hub, device: &Device) -> Result<Loaded> {
    let dir = resolve(source, hub)?;
    load_dir(&dir, device)
}

/// Loads a weights folder (given as the folder or as one of its files).
pub fn load_dir(dir: &Path, device: &Device) -> Result<Loaded> {
    let dir = &vsdm_core::weights_folder(dir, &FILES);
    if dir.is_file() {
        return Err(Error::bad_file(
            dir,
            "a file, not a weights folder (the folder that holds model.safetensors, config.json and run.json)",
        ));
    }
    for f in FILES {
        if !dir.join(f).is_file() {
            // A run folder (`--out` of train) holds its weights in `weights/`.
            let inner = dir.join("weights");
            let hint = if FILES.iter().all(|f| inner.join(f).is_file()) {
                format!(
                    " (a training run's folder: its weights are in {})",
                    inner.display()
                )
            } else {
                String::new()
            };
            return Err(Error::bad_file(
                &dir.join(f),
                format!(
                    "missing: a weights folder holds model.safetensors, config.json and run.json{hint}"
                ),
            ));
        }
    }
    let run = dir.join(RunSpec::FILE);
    let spec = RunSpec::load(&run)?;
    let config = ExportedConfig::read(&dir.join("config.json"))?;
    // The forward process comes from config.json, the sampler and the network's input from run.json: a
    // method that contradicts the variational parameters would sample one method with another's settings.
    let params = match &config.params {
        VarParams::None => "none (VP)",
        VarParams::Diagonal(_) | VarParams::Full { .. } => "an A matrix (VSDM)",
        VarParams::Momentum { .. } => "momentum parameters (VSMD)",
    };
    let fits = matches!(
        (spec.method, &config.params),
        (Method::Vp, VarParams::None)
            | (
                Method::Vsdm,
                VarParams::Diagonal(_) | VarParams::Full { .. }
            )
            | (Method::Vsmd, VarParams::Momentum { .. })
    );
    if !fits {
        return Err(Error::bad_file(
            &run,
            format!(
                "method {} contradicts config.json, whose variational parameters are {params}",
                spec.method
            ),
        ));
    }
    let st = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&st, device)
        .map_err(|e| Error::bad_file(&st, format!("unreadable safetensors: {e}")))?;
    let names: Vec<String> = tensors.keys().cloned().collect();
    if let Some(bad) = vsdm_core::error::first_non_finite_in(&tensors)? {
        return Err(Error::bad_file(
            &st,
            format!("tensor {bad} holds NaN or infinite values"),
        ));
    }
    let used = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let vb = VarBuilder::from_backend(
        Box::new(Recording {
            tensors,
            used: used.clone(),
        }),
        DType::F32,
        device.clone(),
    );
    let net = UNet::new(vb, &spec.unet)
        .map_err(|e| Error::bad_file(&st, format!("does not fit the U-Net of run.json: {e}")))?;
    // A tensor the network never asked for: run.json describes a smaller network than the one saved (fewer
    // attention resolutions, blocks or labels), which would otherwise load and sample without those weights.
    let used = used
        .lock()
        .map_err(|e| Error::bad_file(&st, e.to_string()))?;
    let mut unused: Vec<&String> = names.iter().filter(|n| !used.contains(*n)).collect();
    if !unused.is_empty() {
        unused.sort();
        return Err(Error::bad_file(
            &st,
            format!(
                "holds {} tensors the U-Net of run.json has no place for ({}{}): run.json does not describe \
                 these weights",
                unused.len(),
                unused.iter().take(3).map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                if unused.len() > 3 { ", …" } else { "" }
            ),
        ));
    }
    let process = config.process(device)?;
    Ok(Loaded {
        net,
        spec,
        config,
        process,
        dir: dir.to_path_buf(),
    })
}
