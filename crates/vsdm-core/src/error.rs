//! Errors of the core crate: every variant names the value that was wrong.

/// Errors raised by `vsdm-core`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value outside its domain (β ≤ 0, T ≤ 0, a negative step count, …).
    #[error("invalid {name} = {value}: {reason}")]
    InvalidValue {
        name: &'static str,
        value: String,
        reason: String,
    },
    /// A diffusion time outside (0, T].
    #[error("time t = {t} is outside (0, T = {t_max}]")]
    TimeOutOfRange { t: f64, t_max: f64 },
    /// A tensor or matrix whose shape does not fit.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    Shape {
        what: String,
        expected: String,
        got: String,
    },
    /// A non-finite number where a finite one is required (A, a loss, a covariance).
    #[error("non-finite value in {what} (at index {index}: {value})")]
    NonFinite {
        what: String,
        index: usize,
        value: f64,
    },
    /// Training produced a non-finite loss or gradient norm; nothing of that step was applied or saved.
    #[error(
        "training diverged at step {step}: the {what} is {value}. Nothing of this step was applied; the \
         checkpoints written before it are kept: resume from the last one with a lower learning rate (or \
         stronger gradient clipping)"
    )]
    Diverged {
        step: usize,
        what: &'static str,
        value: f64,
    },
    /// An update left non-finite values in the weights although the loss and gradient before it were finite
    /// (a learning rate far too large); found before a checkpoint or the weights are written.
    #[error(
        "training diverged by step {step}: the weights hold non-finite values (`{name}`). No checkpoint of \
         them was written; the checkpoints written before are kept: resume from the last one with a lower \
         learning rate (or stronger gradient clipping)"
    )]
    DivergedWeights { step: usize, name: String },
    /// Training stopped on request (Ctrl-C) after an update, its last one included; `checkpoint` holds the
    /// state, when a checkpoint folder was given.
    #[error("interrupted after update {step}{}", match checkpoint {
        Some(c) => format!("; the checkpoint in {c} holds it: the same command resumes it"),
        None => "; no checkpoint folder, nothing kept".into(),
    })]
    Interrupted {
        step: usize,
        checkpoint: Option<String>,
    },
    /// A covariance that is not positive definite (Cholesky failed).
    #[error("covariance at t = {t} is not positive definite: {detail}")]
    NotPositiveDefinite { t: f64, detail: String },
    /// A checkpoint that cannot be read or does not match the run.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    /// Another file the trainer reads that is damaged or not what it should be (e.g. its metrics log).
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    /// File-system errors, with the path.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Errors from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::InvalidValue`].
    pub fn invalid(
        name: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidValue {
            name,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Fails with [`Error::NonFinite`] if any entry of `values` is NaN or infinite.
pub fn ensure_finite(what: &str, values: &[f64]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite {
            what: what.to_string(),
            index,
            value: values[index],
        }),
    }
}

/// The sum of a tensor's elements in f32: not finite when one of them is a NaN or an infinity (or when finite
/// values add up beyond f32's range, which are as useless as weights or states).
fn sum_f32(t: &candle_core::Tensor) -> Result<f32> {
    Ok(t.to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?)
}

/// The name of the first tensor (in the iteration's order) that holds a NaN or an infinity.
pub fn first_non_finite<'a, I, S>(named: I) -> Result<Option<String>>
where
    I: IntoIterator<Item = (S, &'a candle_core::Tensor)>,
    S: AsRef<str>,
{
    for (name, t) in named {
        if !sum_f32(t)?.is_finite() {
            return Ok(Some(name.as_ref().to_string()));
        }
    }
    Ok(None)
}

/// [`first_non_finite`] over a file's tensors (as `candle_core::safetensors::load` returns them), in name
/// order, so that the one named is the same on every load.
pub fn first_non_finite_in(
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Result<Option<String>> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    first_non_finite(names.into_iter().map(|k| (k, &tensors[k])))
}

/// Fails with [`Error::NonFinite`] if the tensor holds a NaN or an infinity (its sum is then not finite);
/// `t` names the diffusion time.
pub fn ensure_finite_tensor(what: &str, x: &candle_core::Tensor, t: f64) -> Result<()> {
    let s = sum_f32(x)?;
    if s.is_finite() {
        Ok(())
    } else {
        Err(Error::NonFinite {
            what: format!("{what} at t = {t}"),
            index: 0,
            value: s as f64,
        })
    }
}
