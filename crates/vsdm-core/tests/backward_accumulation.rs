//! The workspace builds candle-core with a patched gradient accumulation (vendor/README.md: a gradient's first
//! contribution is stored as it is instead of added into zeros). These tests check the gradients of graphs in
//! which tensors are used several times, through contiguous, strided (transposed, broadcast, narrowed) and
//! elementwise contributions, against their analytic values.

use candle_core::{Device, Tensor, Var};

/// One term of a loss, as a function of the parameter.
type Term<'a> = Box<dyn Fn(&Tensor) -> Tensor + 'a>;

fn close(a: &Tensor, b: &Tensor) -> f64 {
    vsdm_core::compare::max_abs_diff(a, b).unwrap()
}

/// L = Σ 3x + Σ (xᵀ ⊙ w) + Σ x[:, 1..3] + Σ x² + Σ (x ⊙ b) for x [4, 5], w [5, 4], b [5] broadcast over rows:
/// dL/dx = 3 + wᵀ + 1[cols 1, 2] + 2x + b (a first contribution that is contiguous, then transposed, narrowed,
/// elementwise and broadcast ones, in both orders).
#[test]
fn gradients_of_repeated_uses_are_the_analytic_ones() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(
        &Tensor::arange(0f32, 20., &dev)
            .unwrap()
            .reshape((4, 5))
            .unwrap(),
    )
    .unwrap();
    let w = Tensor::arange(0f32, 20., &dev)
        .unwrap()
        .affine(0.1, -1.0)
        .unwrap()
        .reshape((5, 4))
        .unwrap();
    let b = Var::from_tensor(&Tensor::new(&[1f32, -2., 3., -4., 5.], &dev).unwrap()).unwrap();
    let terms: Vec<Term> = vec![
        Box::new(|x| (x * 3.0).unwrap().sum_all().unwrap()),
        Box::new(|x| (x.t().unwrap() * &w).unwrap().sum_all().unwrap()),
        Box::new(|x| x.narrow(1, 1, 2).unwrap().sum_all().unwrap()),
        Box::new(|x| x.sqr().unwrap().sum_all().unwrap()),
        Box::new(|x| x.broadcast_mul(b.as_tensor()).unwrap().sum_all().unwrap()),
    ];
    let mut mask = vec![0f32; 20];
    for r in 0..4 {
        mask[r * 5 + 1] = 1.0;
        mask[r * 5 + 2] = 1.0;
    }
    let mask = Tensor::from_vec(mask, (4, 5), &dev).unwrap();
    let want = ((((w.t().unwrap() + 3.0).unwrap() + &mask).unwrap()
        + (x.as_tensor() * 2.0).unwrap())
    .unwrap()
    .broadcast_add(b.as_tensor()))
    .unwrap();
    // Each order of the terms: every kind of contribution comes first once.
    for first in 0..terms.len() {
        let mut loss = terms[first](x.as_tensor());
        for (i, t) in terms.iter().enumerate() {
            if i != first {
                loss = (loss + t(x.as_tensor())).unwrap();
            }
        }
        let grads = loss.backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        assert_eq!(g.dims(), &[4, 5], "first term {first}");
        assert!(
            close(g, &want) < 1e-5,
            "first term {first}: {}",
            close(g, &want)
        );
        // dL/db = Σ_rows x.
        let gb = grads.get(b.as_tensor()).unwrap();
        assert!(
            close(gb, &x.as_tensor().sum(0).unwrap()) < 1e-5,
            "first term {first}: db"
        );
    }
}
