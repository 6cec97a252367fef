//! How z-vectors become singular-value scales.

use tch::{Kind, Tensor};

use crate::{Error, Result};

/// How a z-vector (or a mixture of them) scales the singular values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Composition {
    /// The reference code: `f = sigmoid(z)` (mixtures: `sum_k alpha_k sigmoid(z_k)`),
    /// then `W'` is rescaled so its nuclear norm (sum of singular values) equals `W`'s:
    /// `m = s * f * (sum s / sum (s * f))`. A uniform z gives back `W` exactly.
    #[default]
    Reference,
    /// The paper's formula: `f = z` (mixtures: `sum_k alpha_k z_k`), `m = s * f`.
    Paper,
    /// Mixtures as deltas from the base (task arithmetic in singular-value space): each
    /// expert's own reference scales `m_k = s * r_k` (sigmoid, nuclear norm restored),
    /// then `m = s * max(0, 1 + sum_k alpha_k (r_k - 1))`. All alphas 0 is the base model,
    /// one expert at alpha 1 is exactly that expert under [`Composition::Reference`],
    /// alpha above 1 amplifies it, and several experts add their changes. The stage-3
    /// search uses it because its alphas mean the same thing for any number of experts
    /// (under the reference composition only their ratios matter, and all zeros is
    /// undefined).
    Delta,
}

/// Mixture weights over experts.
#[derive(Debug)]
pub enum Mixture {
    /// One alpha per expert, `[K]`.
    PerExpert(Tensor),
    /// One alpha per expert and matrix, `[K, matrices]`.
    PerMatrix(Tensor),
}

impl Mixture {
    /// `1/K` for each of `k` experts.
    pub fn uniform(k: usize) -> Self {
        Self::PerExpert(Tensor::full(
            [k as i64],
            1.0 / k as f64,
            (Kind::Float, tch::Device::Cpu),
        ))
    }

    /// Given alphas, one per expert.
    pub fn per_expert(alphas: &[f64]) -> Self {
        Self::PerExpert(Tensor::from_slice(alphas).to_kind(Kind::Float))
    }

    /// The alpha of expert `k` for matrix `i` (a 0-d tensor, differentiable when the
    /// mixture's tensor requires gradients).
    pub fn alpha(&self, k: usize, i: usize) -> Tensor {
        match self {
            Self::PerExpert(a) => a.get(k as i64),
            Self::PerMatrix(a) => a.get(k as i64).get(i as i64),
        }
    }

    /// Checks the shape against `experts` and `matrices`.
    pub fn check(&self, experts: usize, matrices: usize) -> Result<()> {
        let (shape, expected) = match self {
            Self::PerExpert(a) => (a.size(), vec![experts as i64]),
            Self::PerMatrix(a) => (a.size(), vec![experts as i64, matrices as i64]),
        };
        if shape == expected {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "mixture has shape {shape:?}, expected {expected:?} for {experts} experts and {matrices} matrices"
            )))
        }
    }
}

/// The scale `m` (`[k]`) of one matrix with singular values `s`, for z-vectors `zs` of
/// the experts and their alphas. Differentiable in z and alpha.
// `x = x + y` rather than `+=`: in-place ops on tensors that need gradients break autograd.
#[allow(clippy::assign_op_pattern)]
pub fn scales(composition: Composition, s: &Tensor, zs: &[&Tensor], alphas: &[Tensor]) -> Tensor {
    if composition == Composition::Delta {
        let mut delta = s.zeros_like();
        for (z, alpha) in zs.iter().zip(alphas) {
            // r_k without dividing by s (which may hold zeros).
            let g = z.sigmoid();
            let ratio = g.shallow_clone() * (s.sum(Kind::Float) / (s * &g).sum(Kind::Float));
            delta = delta + (ratio - 1.0) * alpha;
        }
        return s * (delta + 1.0).clamp_min(0.0);
    }
    let mut f: Option<Tensor> = None;
    for (z, alpha) in zs.iter().zip(alphas) {
        let g = match composition {
            // (Delta returned above.)
            Composition::Reference | Composition::Delta => z.sigmoid(),
            Composition::Paper => z.shallow_clone(),
        };
        let term = g * alpha;
        f = Some(match f {
            Some(sum) => sum + term,
            None => term,
        });
    }
    let f = f.unwrap_or_else(|| s.ones_like());
    let scaled = s * f;
    match composition {
        Composition::Reference | Composition::Delta => {
            let ratio = s.sum(Kind::Float) / scaled.sum(Kind::Float);
            scaled * ratio
        }
        Composition::Paper => scaled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uniform_mask_is_the_identity_under_the_reference_composition() {
        let s = Tensor::from_slice(&[3.0f32, 2.0, 0.5]);
        let z = Tensor::full([3], 0.7, (Kind::Float, tch::Device::Cpu));
        let m = scales(Composition::Reference, &s, &[&z], &[Tensor::from(1.0f32)]);
        assert!((&m - &s).abs().max().double_value(&[]) < 1e-6);
        // The paper form does not renormalise.
        let m = scales(Composition::Paper, &s, &[&z], &[Tensor::from(1.0f32)]);
        assert!((&m - &s * 0.7).abs().max().double_value(&[]) < 1e-6);
    }

    proptest::proptest! {
        #[test]
        fn composition_identities(
            values in proptest::collection::vec(0.01f32..10.0, 1..40),
            zs in proptest::collection::vec(-4.0f32..4.0, 40),
            c in -5.0f64..5.0,
            split in 0.0f64..1.0,
        ) {
            let k = values.len();
            let s = Tensor::from_slice(&values);
            let z = Tensor::from_slice(&zs[..k]);
            let one = Tensor::from(1.0f32);
            // Any constant z is the identity under the reference composition.
            let constant = Tensor::full([k as i64], c, (Kind::Float, tch::Device::Cpu));
            let m = scales(Composition::Reference, &s, &[&constant], std::slice::from_ref(&one));
            proptest::prop_assert!((&m - &s).abs().max().double_value(&[]) < 1e-4 * s.abs().max().double_value(&[]));
            // The reference composition keeps the nuclear norm (sum of scales) for any z.
            let m = scales(Composition::Reference, &s, &[&z], std::slice::from_ref(&one));
            let (sum_m, sum_s) = (m.sum(Kind::Double).double_value(&[]), s.sum(Kind::Double).double_value(&[]));
            proptest::prop_assert!((sum_m - sum_s).abs() < 1e-4 * sum_s);
            // A mixture of one expert with itself, alphas summing to 1, is that expert.
            let alone = scales(Composition::Paper, &s, &[&z], std::slice::from_ref(&one));
            let mixed = scales(
                Composition::Paper,
                &s,
                &[&z, &z],
                &[Tensor::from(split as f32), Tensor::from(1.0 - split as f32)],
            );
            proptest::prop_assert!((&alone - &mixed).abs().max().double_value(&[]) < 1e-4 * (1.0 + alone.abs().max().double_value(&[])));
        }
    }

    #[test]
    fn delta_mixtures_start_at_the_base_and_reach_each_expert() {
        let s = Tensor::from_slice(&[3.0f32, 2.0, 0.5, 0.0]);
        let a = Tensor::from_slice(&[0.3f32, -1.0, 2.0, 0.1]);
        let b = Tensor::from_slice(&[-0.5f32, 0.4, 0.0, 1.0]);
        let at = |alphas: [f32; 2]| {
            scales(
                Composition::Delta,
                &s,
                &[&a, &b],
                &[Tensor::from(alphas[0]), Tensor::from(alphas[1])],
            )
        };
        let close = |x: &Tensor, y: &Tensor| (x - y).abs().max().double_value(&[]) < 1e-6;
        assert!(close(&at([0.0, 0.0]), &s));
        let alone = scales(Composition::Reference, &s, &[&a], &[Tensor::from(1.0f32)]);
        assert!(close(&at([1.0, 0.0]), &alone));
        // Deltas add: (a at 1) + (b at 1) - base.
        let other = scales(Composition::Reference, &s, &[&b], &[Tensor::from(1.0f32)]);
        assert!(close(
            &at([1.0, 1.0]),
            &(&alone + &other - &s).clamp_min(0.0)
        ));
        // Amplified far enough, a scale would turn negative: it stops at zero.
        let far = at([40.0, 0.0]);
        assert!(far.min().double_value(&[]) >= 0.0);
        assert!(far.isfinite().all().int64_value(&[]) == 1);
    }

    #[test]
    fn mixtures_add_post_sigmoid() {
        let s = Tensor::from_slice(&[1.0f32, 1.0]);
        let a = Tensor::from_slice(&[0.0f32, 10.0]);
        let b = Tensor::from_slice(&[10.0f32, 0.0]);
        let m = scales(
            Composition::Paper,
            &s,
            &[&a, &b],
            &[Tensor::from(0.25f32), Tensor::from(0.75f32)],
        );
        assert_eq!(Vec::<f32>::try_from(m).unwrap(), vec![7.5, 2.5]);
        let mixture = Mixture::per_expert(&[0.25, 0.75]);
        assert!(mixture.check(2, 5).is_ok());
        assert!(mixture.check(3, 5).is_err());
        assert_eq!(mixture.alpha(1, 3).double_value(&[]), 0.75);
    }
}
