//! Variation operators, as pymoo 0.6 defines them: simulated binary crossover (SBX) and
//! polynomial mutation (PM), both bounded.

use serde::{Deserialize, Serialize};

use crate::Rng;
use crate::problem::Bounds;

/// Simulated binary crossover.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sbx {
    /// Distribution index (larger: children closer to parents). Default 15.
    pub eta: f64,
    /// Probability that a mating pair is crossed at all. Default 0.9.
    pub pair_probability: f64,
    /// Probability that a variable of a crossed pair is crossed. Default 0.5.
    pub variable_probability: f64,
    /// Probability that the two children exchange a crossed variable. Default 0.5.
    pub exchange_probability: f64,
}

impl Default for Sbx {
    fn default() -> Self {
        Self {
            eta: 15.0,
            pair_probability: 0.9,
            variable_probability: 0.5,
            exchange_probability: 0.5,
        }
    }
}

/// Polynomial mutation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pm {
    /// Distribution index. Default 20.
    pub eta: f64,
    /// Probability that an individual is mutated at all. Default 0.9.
    pub individual_probability: f64,
    /// Probability that a variable of a mutated individual is mutated; `None` (default)
    /// means `min(0.5, 1/n_var)`.
    pub variable_probability: Option<f64>,
}

impl Default for Pm {
    fn default() -> Self {
        Self {
            eta: 20.0,
            individual_probability: 0.9,
            variable_probability: None,
        }
    }
}

/// Variables of a pair closer than this are not crossed (pymoo's epsilon).
const TOO_CLOSE: f64 = 1e-14;

/// Powers `x^k`, `x^-k` and roots `x^(1/k)` for `k = eta + 1`. Integer `k` uses repeated
/// multiplication and a power-of-two `k` nested square roots (for the default SBX
/// eta = 15, k = 16): `pow` is otherwise most of a generation's time on cheap problems.
#[derive(Debug, Clone, Copy)]
struct Exponent {
    k: f64,
    integer: Option<i32>,
    square_roots: Option<u32>,
}

impl Exponent {
    fn new(eta: f64) -> Self {
        let k = eta + 1.0;
        let integer = (k.fract() == 0.0 && (1.0..=1024.0).contains(&k)).then_some(k as i32);
        let square_roots = integer
            .filter(|&i| (i as u32).is_power_of_two())
            .map(|i| i.trailing_zeros());
        Self {
            k,
            integer,
            square_roots,
        }
    }

    #[inline]
    fn pow(self, x: f64) -> f64 {
        match self.integer {
            Some(i) => x.powi(i),
            None => x.powf(self.k),
        }
    }

    #[inline]
    fn pow_negative(self, x: f64) -> f64 {
        match self.integer {
            Some(i) => x.powi(-i),
            None => x.powf(-self.k),
        }
    }

    #[inline]
    fn root(self, x: f64) -> f64 {
        match self.square_roots {
            Some(depth) => (0..depth).fold(x, |y, _| y.sqrt()),
            None => x.powf(1.0 / self.k),
        }
    }
}

impl Sbx {
    /// Crosses `a` and `b` in place into two children (pymoo's `cross_sbx`).
    pub fn cross(&self, a: &mut [f64], b: &mut [f64], bounds: &Bounds, rng: &mut Rng) {
        if rng.uniform() >= self.pair_probability {
            return;
        }
        let power = Exponent::new(self.eta);
        let betaq = |beta: f64, u: f64| {
            let alpha = 2.0 - power.pow_negative(beta);
            if u <= 1.0 / alpha {
                power.root(u * alpha)
            } else {
                power.root(1.0 / (2.0 - u * alpha))
            }
        };
        for i in 0..a.len() {
            // Draw first, as pymoo draws the per-variable mask for every variable.
            if rng.uniform() >= self.variable_probability {
                continue;
            }
            let (lo, hi) = (bounds.lower[i], bounds.upper[i]);
            if (a[i] - b[i]).abs() <= TOO_CLOSE || lo == hi {
                continue;
            }
            let (y1, y2) = if a[i] < b[i] {
                (a[i], b[i])
            } else {
                (b[i], a[i])
            };
            let delta = y2 - y1;
            let u = rng.uniform();
            let c1 = 0.5 * ((y1 + y2) - betaq(1.0 + 2.0 * (y1 - lo) / delta, u) * delta);
            let c2 = 0.5 * ((y1 + y2) + betaq(1.0 + 2.0 * (hi - y2) / delta, u) * delta);
            let (c1, c2) = if rng.uniform() < self.exchange_probability {
                (c2, c1)
            } else {
                (c1, c2)
            };
            a[i] = c1.clamp(lo, hi);
            b[i] = c2.clamp(lo, hi);
        }
    }
}

impl Pm {
    /// Mutates `x` in place (pymoo's `mut_pm`).
    pub fn mutate(&self, x: &mut [f64], bounds: &Bounds, rng: &mut Rng) {
        if rng.uniform() >= self.individual_probability {
            return;
        }
        let n = x.len();
        let per_variable = self
            .variable_probability
            .unwrap_or_else(|| (1.0 / n.max(1) as f64).min(0.5));
        let power = Exponent::new(self.eta);
        for (i, v) in x.iter_mut().enumerate() {
            if rng.uniform() >= per_variable {
                continue;
            }
            let (lo, hi) = (bounds.lower[i], bounds.upper[i]);
            if lo == hi {
                continue;
            }
            let span = hi - lo;
            let delta1 = (*v - lo) / span;
            let delta2 = (hi - *v) / span;
            let u = rng.uniform();
            let deltaq = if u <= 0.5 {
                let value = 2.0 * u + (1.0 - 2.0 * u) * power.pow(1.0 - delta1);
                power.root(value) - 1.0
            } else {
                let value = 2.0 * (1.0 - u) + 2.0 * (u - 0.5) * power.pow(1.0 - delta2);
                1.0 - power.root(value)
            };
            *v = (*v + deltaq * span).clamp(lo, hi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn children_stay_within_bounds(seed in any::<u64>(), n in 1usize..20, lo in -10.0f64..0.0, width in 0.0f64..10.0) {
            let bounds = Bounds::uniform(n, lo, lo + width);
            let mut rng = crate::Rng::seeded(seed);
            let mut a: Vec<f64> = (0..n).map(|_| lo + rng.uniform() * width).collect();
            let mut b: Vec<f64> = (0..n).map(|_| lo + rng.uniform() * width).collect();
            let sbx = Sbx { pair_probability: 1.0, ..Sbx::default() };
            sbx.cross(&mut a, &mut b, &bounds, &mut rng);
            let pm = Pm { individual_probability: 1.0, variable_probability: Some(1.0), ..Pm::default() };
            pm.mutate(&mut a, &bounds, &mut rng);
            for v in a.iter().chain(&b) {
                prop_assert!(*v >= lo && *v <= lo + width, "{v} outside [{lo}, {}]", lo + width);
            }
        }
    }

    #[test]
    fn fast_powers_match_pow() {
        for eta in [15.0, 20.0, 2.5, 0.0] {
            let power = Exponent::new(eta);
            for x in [1e-3, 0.37, 1.0, 1.9, 250.0] {
                let close = |a: f64, b: f64| ((a - b) / b).abs() < 1e-13;
                assert!(close(power.pow(x), x.powf(eta + 1.0)), "{eta} {x}");
                assert!(
                    close(power.pow_negative(x), x.powf(-(eta + 1.0))),
                    "{eta} {x}"
                );
                assert!(close(power.root(x), x.powf(1.0 / (eta + 1.0))), "{eta} {x}");
            }
        }
    }

    #[test]
    fn sbx_children_are_symmetric_around_the_parents_mean_before_exchange() {
        let bounds = Bounds::uniform(1, -100.0, 100.0);
        let sbx = Sbx {
            pair_probability: 1.0,
            variable_probability: 1.0,
            exchange_probability: 0.0,
            ..Sbx::default()
        };
        let mut rng = crate::Rng::seeded(3);
        for _ in 0..100 {
            let (mut a, mut b) = ([-1.0], [1.0]);
            sbx.cross(&mut a, &mut b, &bounds, &mut rng);
            // Far from the bounds the spread factors are nearly equal.
            assert!((a[0] + b[0]).abs() < 1e-6, "{a:?} {b:?}");
            assert!(a[0] <= b[0]);
        }
    }
}
