//! Trained weights: a folder written by the `train` command (`weights/`: `model.safetensors` with the EMA
//! network, `config.json` with the training config and variational parameters, `run.json` with the method and
//! U-Net), or the same three files in a Hugging Face model repository, `hf:OWNER/NAME[@REV]` (from the local hub
//! cache, else downloaded into it; see [`vsdm_core::hub`]).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use vsdm_core::hub::{Hub, HubRef, RepoKind};
use vsdm_core::{ExportedConfig, Process};

use crate::error::{Error, Result};
use crate::method::RunSpec;
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

/// Loads weights from a folder or `hf:` reference onto `device`.
pub fn load(source: &str, hub: &Hub, device: &Device) -> Result<Loaded> {
    let dir = resolve(source, hub)?;
    load_dir(&dir, device)
}

/// Loads a weights folder.
pub fn load_dir(dir: &Path, device: &Device) -> Result<Loaded> {
    for f in FILES {
        if !dir.join(f).is_file() {
            return Err(Error::bad_file(
                &dir.join(f),
                "missing: a weights folder holds model.safetensors, config.json and run.json",
            ));
        }
    }
    let spec = RunSpec::load(&dir.join(RunSpec::FILE))?;
    let config = ExportedConfig::read(&dir.join("config.json"))?;
    let st = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&st, device)
        .map_err(|e| Error::bad_file(&st, format!("unreadable safetensors: {e}")))?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let net = UNet::new(vb, &spec.unet)
        .map_err(|e| Error::bad_file(&st, format!("does not fit the U-Net of run.json: {e}")))?;
    let process = config.process(device)?;
    Ok(Loaded {
        net,
        spec,
        config,
        process,
        dir: dir.to_path_buf(),
    })
}
