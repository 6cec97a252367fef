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
pub fn scales(composition: Composition, s: &Tensor, zs: &[&Tensor], alphas: &[Tensor]) -> Tensor {
    let mut f: Option<Tensor> = None;
    for (z, alpha) in zs.iter().zip(alphas) {
        let g = match composition {
            Composition::Reference => z.sigmoid(),
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
        Composition::Reference => {
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
