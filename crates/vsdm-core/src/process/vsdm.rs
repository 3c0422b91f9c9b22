//! VSDM's forward process (ALGORITHM.md §A): the multivariate OU process
//! dx = −½ β_t (I − 2A) x dt + √β_t dw with a time-invariant variational score A x ≈ ∇log ψ_t(x).
//!
//! A is either diagonal (one value per data element, any tensor shape: images, long series) or a full d×d
//! matrix for vector data of small d (toys, low-dimensional series). Negative d_i = 1 − 2a_i (expanding
//! directions) are allowed. Prior: N(0, Σ_{T|0}(A)).

use candle_core::{Device, Tensor};
use nalgebra::DMatrix;

use super::{check_shape, check_times, grid_tensor, ForwardProcess, Marginals};
use crate::error::{ensure_finite, Error, Result};
use crate::kernel::{diag, full};
use crate::schedule::BetaSchedule;

/// The linear forward score A.
#[derive(Debug, Clone, PartialEq)]
pub enum LinearDrift {
    /// One a_i per data element, row-major over the data shape.
    Diagonal(Vec<f64>),
    /// A full d×d matrix, for data of shape `[d]`.
    Full(DMatrix<f64>),
}

impl LinearDrift {
    /// A = 0 (VP) in the diagonal layout for `n` elements.
    pub fn zeros_diagonal(n: usize) -> Self {
        Self::Diagonal(vec![0.0; n])
    }

    /// The trace of A.
    pub fn trace(&self) -> f64 {
        match self {
            Self::Diagonal(a) => a.iter().sum(),
            Self::Full(a) => a.trace(),
        }
    }

    /// The entries, row-major.
    pub fn values(&self) -> Vec<f64> {
        match self {
            Self::Diagonal(a) => a.clone(),
            Self::Full(a) => a.transpose().as_slice().to_vec(),
        }
    }
}

/// The VSDM forward process.
#[derive(Debug, Clone)]
pub struct Vsdm {
    schedule: BetaSchedule,
    shape: Vec<usize>,
    a: LinearDrift,
    /// D = 1 − 2a as an f32 tensor of the data shape (diagonal) or Dᵀ as [d, d] (full), on `device`.
    d_tensor: Tensor,
}

impl Vsdm {
    /// A VSDM process on data of shape `shape`; `device` holds the drift tensor.
    pub fn new(
        schedule: BetaSchedule,
        shape: &[usize],
        a: LinearDrift,
        device: &Device,
    ) -> Result<Self> {
        schedule.validate()?;
        super::check_data_shape(shape)?;
        let numel: usize = shape.iter().product();
        let d_tensor = match &a {
            LinearDrift::Diagonal(v) => {
                if v.len() != numel {
                    return Err(Error::Shape {
                        what: "diagonal A".into(),
                        expected: format!("{numel} values (data shape {shape:?})"),
                        got: format!("{} values", v.len()),
                    });
                }
                ensure_finite("A", v)?;
                let d: Vec<f32> = v.iter().map(|&ai| (1.0 - 2.0 * ai) as f32).collect();
                Tensor::from_vec(d, shape, device)?
            }
            LinearDrift::Full(m) => {
                if shape.len() != 1 || m.nrows() != shape[0] || m.ncols() != shape[0] {
                    return Err(Error::Shape {
                        what: "full A".into(),
                        expected: format!(
                            "a d×d matrix for vector data [d]; data shape is {shape:?}"
                        ),
                        got: format!("{}×{}", m.nrows(), m.ncols()),
                    });
                }
                ensure_finite("A", m.as_slice())?;
                // Row-major [d, d] of Dᵀ (so that a batch computes X Dᵀ): nalgebra is column-major, so the
                // column-major slice of D is Dᵀ in row-major order.
                let v: Vec<f32> = full::drift_matrix(m)
                    .as_slice()
                    .iter()
                    .map(|&x| x as f32)
                    .collect();
                Tensor::from_vec(v, (shape[0], shape[0]), device)?
            }
        };
        Ok(Self {
            schedule,
            shape: shape.to_vec(),
            a,
            d_tensor,
        })
    }

    /// The variational score A.
    pub fn a(&self) -> &LinearDrift {
        &self.a
    }

    /// Σ_{T|0}(A), the prior covariance (diagonal: the variances).
    pub fn prior_covariance(&self) -> Result<LinearDrift> {
        let t = self.schedule.t_max();
        let b = self.schedule.integral(t);
        Ok(match &self.a {
            LinearDrift::Diagonal(a) => LinearDrift::Diagonal(
                a.iter()
                    .map(|&ai| diag::mean_std(b, 1.0 - 2.0 * ai).1.powi(2))
                    .collect(),
            ),
            LinearDrift::Full(a) => {
                LinearDrift::Full(full::kernel(&full::drift_matrix(a), b, t)?.cov)
            }
        })
    }

    /// The forward policy z_f = √β_t A x (ALGORITHM.md §C.1).
    pub fn forward_policy(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        // A x = ½(x − D x).
        let dx = self.apply_d(x)?;
        Ok(((x - dx)? * (0.5 * self.schedule.beta(t).sqrt()))?)
    }

    /// D x for a batch.
    fn apply_d(&self, x: &Tensor) -> Result<Tensor> {
        check_shape("x", x, &self.shape, 1)?;
        Ok(match &self.a {
            LinearDrift::Diagonal(_) => x.broadcast_mul(&self.d_tensor)?,
            LinearDrift::Full(_) => x.matmul(&self.d_tensor)?,
        })
    }
}

/// Cached closed forms of VSDM on a grid.
#[derive(Debug, Clone)]
pub enum VsdmMarginals {
    /// Diagonal A: m and σ, each `[N, shape…]`.
    Diagonal {
        times: Vec<f64>,
        mean: Tensor,
        std: Tensor,
    },
    /// Full A: M_t, L_t and L_t^{−T}, each `[N, d, d]`.
    Full {
        times: Vec<f64>,
        mean: Tensor,
        chol: Tensor,
        chol_inv_t: Tensor,
    },
}

/// Row-major [N, d, d] f64 values of a list of matrices.
fn stack_rows(ms: &[DMatrix<f64>]) -> Vec<f64> {
    ms.iter()
        .flat_map(|m| m.transpose().as_slice().to_vec())
        .collect()
}

impl ForwardProcess for Vsdm {
    type Marginals = VsdmMarginals;

    fn schedule(&self) -> &BetaSchedule {
        &self.schedule
    }

    fn data_shape(&self) -> &[usize] {
        &self.shape
    }

    fn state_factor(&self) -> usize {
        1
    }

    fn marginals(&self, times: &[f64], device: &Device) -> Result<VsdmMarginals> {
        check_times(&self.schedule, times)?;
        let n = times.len();
        match &self.a {
            LinearDrift::Diagonal(a) => {
                let mut m = Vec::with_capacity(n * a.len());
                let mut s = Vec::with_capacity(n * a.len());
                for &t in times {
                    let b = self.schedule.integral(t);
                    for &ai in a {
                        let (mi, si) = diag::mean_std(b, 1.0 - 2.0 * ai);
                        m.push(mi);
                        s.push(si);
                    }
                }
                Ok(VsdmMarginals::Diagonal {
                    times: times.to_vec(),
                    mean: grid_tensor(m, n, &self.shape, device)?,
                    std: grid_tensor(s, n, &self.shape, device)?,
                })
            }
            LinearDrift::Full(a) => {
                let dm = full::drift_matrix(a);
                let d = a.nrows();
                let ks = times
                    .iter()
                    .map(|&t| full::kernel(&dm, self.schedule.integral(t), t))
                    .collect::<Result<Vec<_>>>()?;
                let grab = |f: &dyn Fn(&full::FullKernel) -> DMatrix<f64>| {
                    stack_rows(&ks.iter().map(f).collect::<Vec<_>>())
                };
                Ok(VsdmMarginals::Full {
                    times: times.to_vec(),
                    mean: grid_tensor(grab(&|k| k.mean.clone()), n, &[d, d], device)?,
                    chol: grid_tensor(grab(&|k| k.chol.clone()), n, &[d, d], device)?,
                    chol_inv_t: grid_tensor(grab(&|k| k.chol_inv_t.clone()), n, &[d, d], device)?,
                })
            }
        }
    }

    fn drift(&self, z: &Tensor, t: f64) -> Result<Tensor> {
        Ok((self.apply_d(z)? * (-0.5 * self.schedule.beta(t)))?)
    }

    fn diffusion_sq(&self, t: f64) -> f64 {
        self.schedule.beta(t)
    }

    fn noise_increment(&self, xi: &Tensor, t: f64, h: f64) -> Result<Tensor> {
        Ok((xi * (self.schedule.beta(t) * h).sqrt())?)
    }

    fn initial_state(&self, x0: &Tensor, _xi: &Tensor) -> Result<Tensor> {
        Ok(x0.clone())
    }

    fn reverse_drift(
        &self,
        z: &Tensor,
        t: f64,
        score: &Tensor,
        probability_flow: bool,
    ) -> Result<Tensor> {
        let lam = if probability_flow { 0.5 } else { 1.0 };
        let beta = self.schedule.beta(t);
        Ok((self.drift(z, t)? - (score * (lam * beta))?)?)
    }

    fn prior_from_noise(&self, xi: &Tensor) -> Result<Tensor> {
        check_shape("prior noise", xi, &self.shape, 1)?;
        let t = self.schedule.t_max();
        let b = self.schedule.integral(t);
        match &self.a {
            LinearDrift::Diagonal(a) => {
                let s: Vec<f32> = a
                    .iter()
                    .map(|&ai| diag::mean_std(b, 1.0 - 2.0 * ai).1 as f32)
                    .collect();
                let s = Tensor::from_vec(s, self.shape.as_slice(), xi.device())?;
                Ok(xi.broadcast_mul(&s)?)
            }
            LinearDrift::Full(a) => {
                let k = full::kernel(&full::drift_matrix(a), b, t)?;
                let d = a.nrows();
                // x = L ξ for each row: X = Ξ Lᵀ; Lᵀ row-major is L's column-major slice.
                let lt: Vec<f32> = k.chol.as_slice().iter().map(|&x| x as f32).collect();
                let lt = Tensor::from_vec(lt, (d, d), xi.device())?;
                Ok(xi.matmul(&lt)?)
            }
        }
    }
}

impl Marginals for VsdmMarginals {
    fn times(&self) -> &[f64] {
        match self {
            Self::Diagonal { times, .. } | Self::Full { times, .. } => times,
        }
    }

    fn perturb(&self, x0: &Tensor, idx: &Tensor, eps: &Tensor) -> Result<(Tensor, Tensor)> {
        let data = match self {
            Self::Diagonal { mean, .. } => &mean.dims()[1..],
            Self::Full { mean, .. } => &mean.dims()[2..],
        };
        check_shape("x0", x0, data, 1)?;
        if x0.dims() != eps.dims() {
            return Err(Error::Shape {
                what: "eps".into(),
                expected: format!("{:?} (the shape of x0)", x0.dims()),
                got: format!("{:?}", eps.dims()),
            });
        }
        match self {
            Self::Diagonal { mean, std, .. } => {
                let m = mean.index_select(idx, 0)?;
                let s = std.index_select(idx, 0)?;
                let xt = ((x0 * m)? + (eps * s)?)?;
                Ok((xt, eps.clone()))
            }
            Self::Full { mean, chol, .. } => {
                let m = mean.index_select(idx, 0)?;
                let l = chol.index_select(idx, 0)?;
                let mx = m.matmul(&x0.unsqueeze(2)?)?.squeeze(2)?;
                let le = l.matmul(&eps.unsqueeze(2)?)?.squeeze(2)?;
                Ok(((mx + le)?, eps.clone()))
            }
        }
    }

    fn score_at(&self, eps_hat: &Tensor, n: usize) -> Result<Tensor> {
        match self {
            Self::Diagonal { std, .. } => {
                let s = std.narrow(0, n, 1)?;
                Ok(eps_hat.broadcast_div(&s)?.neg()?)
            }
            Self::Full { chol_inv_t, .. } => {
                // s = −L^{−T} ε̂ for each row: S = −Ê (L^{−T})ᵀ.
                let lit = chol_inv_t.get(n)?.t()?;
                Ok(eps_hat.matmul(&lit)?.neg()?)
            }
        }
    }
}
