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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::{train_config, Budget, DataRecord};
    use crate::unet::UNetConfig;
    use candle_core::Tensor;
    use vsdm_core::{ForwardProcess, ScoreModel};

    /// A fresh micro network's weights exported as `train` writes them, with the trainer's EMA network.
    fn exported(method: Method, dir: &Path) -> vsdm_core::Trainer<UNet> {
        let spec = RunSpec {
            method,
            unet: method.unet(UNetConfig {
                model_channels: 8,
                ..UNetConfig::tiny()
            }),
            precision: Default::default(),
            data: DataRecord::Unrecorded,
            output: None,
        };
        let tc = train_config(method, &Budget::cpu(), 3);
        let tr = crate::train::new_trainer(&spec, tc, &Device::Cpu).unwrap();
        tr.export(dir).unwrap();
        spec.save(dir).unwrap();
        tr
    }

    fn err(r: Result<Loaded>) -> String {
        r.err().expect("an error").to_string()
    }

    /// A written folder loads (given as the folder or as one of its files) as the network it saved: the same
    /// output on random input, for each method; `resolve` keeps a path and finds an `hf:` snapshot in the cache.
    #[test]
    fn a_written_folder_loads_as_the_network_it_saved() {
        let dev = Device::Cpu;
        for method in [Method::Vp, Method::Vsdm, Method::Vsmd] {
            let tmp = tempfile::tempdir().unwrap();
            let tr = exported(method, tmp.path());
            for given in [tmp.path().to_path_buf(), tmp.path().join("config.json")] {
                let w = load_dir(&given, &dev).unwrap();
                assert_eq!((w.spec.method, w.dir.as_path()), (method, tmp.path()));
                let x = Tensor::randn(0f32, 1.0, w.process.state_shape(2), &dev).unwrap();
                let t = Tensor::new(&[0.3f32, 0.8], &dev).unwrap();
                let want = tr.ema_model().forward(&x, &t, None).unwrap();
                let got = w.net.forward(&x, &t, None).unwrap();
                assert!(
                    want.abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                        > 0.0
                );
                let d = vsdm_core::compare::max_abs_diff(&want, &got).unwrap();
                assert_eq!(d, 0.0, "{method}");
            }
        }

        // resolve: a path stays a path; hf: is looked up in the hub's cache (offline here: no endpoint).
        let tmp = tempfile::tempdir().unwrap();
        let hub = Hub::new(tmp.path().join("hub"), None);
        assert_eq!(
            resolve("some/where", &hub).unwrap(),
            Path::new("some/where")
        );
        let e = resolve("hf:someone/vsdm-micro", &hub)
            .unwrap_err()
            .to_string();
        assert!(e.contains("someone/vsdm-micro"), "{e}");
        let repo = tmp.path().join("hub/models--someone--vsdm-micro");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        exported(Method::Vsdm, &snap);
        assert_eq!(resolve("hf:someone/vsdm-micro", &hub).unwrap(), snap);
        let w = load("hf:someone/vsdm-micro", &hub, &dev).unwrap();
        assert_eq!(w.dir, snap);
    }

    /// A missing file, a run folder given for its weights, a file outside the folder, a method that contradicts
    /// config.json, a tensor the network has no place for and a non-finite tensor are each named.
    #[test]
    fn bad_folders_are_named() {
        let dev = Device::Cpu;
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        let w = run.join("weights");
        exported(Method::Vsdm, &w);
        // A run folder: its weights are one level down.
        let e = err(load_dir(run, &dev));
        assert!(
            e.contains("missing") && e.contains(&format!("its weights are in {}", w.display())),
            "{e}"
        );
        let e = err(load_dir(&run.join("notes.txt"), &dev));
        assert!(e.contains("notes.txt") && e.contains("missing"), "{e}");
        std::fs::write(run.join("notes.txt"), "x").unwrap();
        let e = err(load_dir(&run.join("notes.txt"), &dev));
        assert!(
            e.contains("notes.txt") && e.contains("not a weights folder"),
            "{e}"
        );
        for f in FILES {
            let d = tempfile::tempdir().unwrap();
            for g in FILES.iter().filter(|&&g| g != f) {
                std::fs::copy(w.join(g), d.path().join(g)).unwrap();
            }
            let e = err(load_dir(d.path(), &dev));
            assert!(
                e.contains(f) && e.contains("missing") && !e.contains("its weights"),
                "{f}: {e}"
            );
        }
        // run.json says VP over VSDM's config.json.
        let d = tempfile::tempdir().unwrap();
        for f in FILES {
            std::fs::copy(w.join(f), d.path().join(f)).unwrap();
        }
        let text = std::fs::read_to_string(w.join("run.json")).unwrap();
        let vp = text.replace("\"method\": \"vsdm\"", "\"method\": \"vp\"");
        assert_ne!(vp, text);
        std::fs::write(d.path().join("run.json"), vp).unwrap();
        let e = err(load_dir(d.path(), &dev));
        assert!(
            e.contains("run.json") && e.contains("method vp contradicts config.json"),
            "{e}"
        );
        std::fs::write(d.path().join("run.json"), text).unwrap();
        assert!(load_dir(d.path(), &dev).is_ok());
        // One tensor more than the network asks for; then one that holds NaN.
        let st = d.path().join("model.safetensors");
        let mut tensors = candle_core::safetensors::load(&st, &dev).unwrap();
        tensors.insert(
            "enc.extra.weight".into(),
            Tensor::ones(3, DType::F32, &dev).unwrap(),
        );
        candle_core::safetensors::save(&tensors, &st).unwrap();
        let e = err(load_dir(d.path(), &dev));
        assert!(
            e.contains("model.safetensors")
                && e.contains("1 tensors")
                && e.contains("(enc.extra.weight)"),
            "{e}"
        );
        tensors.insert(
            "enc.extra.weight".into(),
            Tensor::new(&[f32::NAN], &dev).unwrap(),
        );
        candle_core::safetensors::save(&tensors, &st).unwrap();
        let e = err(load_dir(d.path(), &dev));
        assert!(e.contains("tensor enc.extra.weight holds NaN"), "{e}");
    }
}
