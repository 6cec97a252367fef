//! Classic test problems with their Pareto fronts: ZDT1-4 and 6, DTLZ1-7, and the
//! constrained BNH, SRN, TNK and OSY. Fronts are generated from their analytic form (or,
//! where only a region of decision space is known, by evaluating it) and filtered to
//! their non-dominated points; nothing is downloaded.

use std::f64::consts::PI;

use crate::indicators::non_dominated;
use crate::problem::{Bounds, Evaluation, Problem};

/// A problem that knows its Pareto front.
pub trait ReferenceFront {
    /// About `points` points of the true front, row-major.
    fn pareto_front(&self, points: usize) -> Vec<f64>;
}

fn linspace(start: f64, end: f64, n: usize) -> impl Iterator<Item = f64> {
    let step = if n > 1 {
        (end - start) / (n - 1) as f64
    } else {
        0.0
    };
    (0..n).map(move |i| start + step * i as f64)
}

/// Which ZDT problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZdtKind {
    /// Convex front.
    Zdt1,
    /// Non-convex front.
    Zdt2,
    /// Disconnected front.
    Zdt3,
    /// Many local fronts (multimodal g).
    Zdt4,
    /// Non-uniform density, biased front.
    Zdt6,
}

/// The ZDT suite (Zitzler, Deb, Thiele 2000), two objectives.
#[derive(Debug, Clone, Copy)]
pub struct Zdt {
    /// Which one.
    pub kind: ZdtKind,
    /// Number of variables.
    pub n_var: usize,
}

impl Zdt {
    /// ZDT1 with `n` variables (30 is standard).
    pub fn zdt1(n: usize) -> Self {
        Self {
            kind: ZdtKind::Zdt1,
            n_var: n,
        }
    }
    /// ZDT2 with `n` variables.
    pub fn zdt2(n: usize) -> Self {
        Self {
            kind: ZdtKind::Zdt2,
            n_var: n,
        }
    }
    /// ZDT3 with `n` variables.
    pub fn zdt3(n: usize) -> Self {
        Self {
            kind: ZdtKind::Zdt3,
            n_var: n,
        }
    }
    /// ZDT4 with `n` variables (10 is standard).
    pub fn zdt4(n: usize) -> Self {
        Self {
            kind: ZdtKind::Zdt4,
            n_var: n,
        }
    }
    /// ZDT6 with `n` variables (10 is standard).
    pub fn zdt6(n: usize) -> Self {
        Self {
            kind: ZdtKind::Zdt6,
            n_var: n,
        }
    }
}

impl Problem for Zdt {
    fn n_var(&self) -> usize {
        self.n_var
    }
    fn n_obj(&self) -> usize {
        2
    }
    fn bounds(&self) -> Bounds {
        let mut bounds = Bounds::uniform(self.n_var, 0.0, 1.0);
        if self.kind == ZdtKind::Zdt4 {
            for i in 1..self.n_var {
                bounds.lower[i] = -5.0;
                bounds.upper[i] = 5.0;
            }
        }
        bounds
    }
    fn evaluate(&self, x: &[f64]) -> Result<Evaluation, String> {
        let n = x.len() as f64;
        let rest = &x[1..];
        let (f1, g) = match self.kind {
            ZdtKind::Zdt1 | ZdtKind::Zdt2 | ZdtKind::Zdt3 => {
                (x[0], 1.0 + 9.0 / (n - 1.0) * rest.iter().sum::<f64>())
            }
            ZdtKind::Zdt4 => (
                x[0],
                1.0 + 10.0 * (n - 1.0)
                    + rest
                        .iter()
                        .map(|v| v * v - 10.0 * (4.0 * PI * v).cos())
                        .sum::<f64>(),
            ),
            ZdtKind::Zdt6 => (
                1.0 - (-4.0 * x[0]).exp() * (6.0 * PI * x[0]).sin().powi(6),
                1.0 + 9.0 * (rest.iter().sum::<f64>() / (n - 1.0)).powf(0.25),
            ),
        };
        let ratio = f1 / g;
        let h = match self.kind {
            ZdtKind::Zdt1 | ZdtKind::Zdt4 => 1.0 - ratio.sqrt(),
            ZdtKind::Zdt2 | ZdtKind::Zdt6 => 1.0 - ratio * ratio,
            ZdtKind::Zdt3 => 1.0 - ratio.sqrt() - ratio * (10.0 * PI * f1).sin(),
        };
        Ok(Evaluation::objectives(vec![f1, g * h]))
    }
}

impl ReferenceFront for Zdt {
    fn pareto_front(&self, points: usize) -> Vec<f64> {
        let raw: Vec<f64> = match self.kind {
            ZdtKind::Zdt1 | ZdtKind::Zdt4 => linspace(0.0, 1.0, points)
                .flat_map(|f| [f, 1.0 - f.sqrt()])
                .collect(),
            ZdtKind::Zdt2 => linspace(0.0, 1.0, points)
                .flat_map(|f| [f, 1.0 - f * f])
                .collect(),
            ZdtKind::Zdt6 => linspace(0.280_775_319_1, 1.0, points)
                .flat_map(|f| [f, 1.0 - f * f])
                .collect(),
            ZdtKind::Zdt3 => {
                const REGIONS: [(f64, f64); 5] = [
                    (0.0, 0.083_001_534_9),
                    (0.182_228_780, 0.257_762_363_4),
                    (0.409_313_674_8, 0.453_882_104_1),
                    (0.618_396_794_4, 0.652_511_703_8),
                    (0.823_331_798_3, 0.851_832_865_4),
                ];
                REGIONS
                    .iter()
                    .flat_map(|&(a, b)| linspace(a, b, points.div_ceil(5)))
                    .flat_map(|f| [f, 1.0 - f.sqrt() - f * (10.0 * PI * f).sin()])
                    .collect()
            }
        };
        non_dominated(&raw, 2)
    }
}

/// Which DTLZ problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtlzKind {
    /// Linear front (simplex sum f = 0.5), multimodal g.
    Dtlz1,
    /// Spherical front.
    Dtlz2,
    /// Spherical front, multimodal g.
    Dtlz3,
    /// Spherical front, biased density (alpha = 100).
    Dtlz4,
    /// Degenerate curve.
    Dtlz5,
    /// Degenerate curve, harder g.
    Dtlz6,
    /// Disconnected front.
    Dtlz7,
}

/// The DTLZ suite (Deb, Thiele, Laumanns, Zitzler 2002), any number of objectives.
#[derive(Debug, Clone, Copy)]
pub struct Dtlz {
    /// Which one.
    pub kind: DtlzKind,
    /// Number of objectives.
    pub n_obj: usize,
    /// Number of variables (`n_obj - 1 + k`).
    pub n_var: usize,
}

impl Dtlz {
    /// The problem with `n_obj` objectives and the customary k (5 for DTLZ1, 20 for
    /// DTLZ7, 10 otherwise).
    pub fn new(kind: DtlzKind, n_obj: usize) -> Self {
        let k = match kind {
            DtlzKind::Dtlz1 => 5,
            DtlzKind::Dtlz7 => 20,
            _ => 10,
        };
        Self {
            kind,
            n_obj,
            n_var: n_obj - 1 + k,
        }
    }

    fn sphere(&self, theta: &[f64], radius: f64) -> Vec<f64> {
        let m = self.n_obj;
        (0..m)
            .map(|i| {
                let mut f = radius;
                for t in &theta[..m - 1 - i] {
                    f *= t.cos();
                }
                if i > 0 {
                    f *= theta[m - 1 - i].sin();
                }
                f
            })
            .collect()
    }
}

impl Problem for Dtlz {
    fn n_var(&self) -> usize {
        self.n_var
    }
    fn n_obj(&self) -> usize {
        self.n_obj
    }
    fn bounds(&self) -> Bounds {
        Bounds::uniform(self.n_var, 0.0, 1.0)
    }
    fn evaluate(&self, x: &[f64]) -> Result<Evaluation, String> {
        let m = self.n_obj;
        let (position, distance) = x.split_at(m - 1);
        let k = distance.len() as f64;
        let rastrigin = || {
            100.0
                * (k + distance
                    .iter()
                    .map(|v| (v - 0.5).powi(2) - (20.0 * PI * (v - 0.5)).cos())
                    .sum::<f64>())
        };
        let squares = || distance.iter().map(|v| (v - 0.5).powi(2)).sum::<f64>();
        let objectives = match self.kind {
            DtlzKind::Dtlz1 => {
                let g = rastrigin();
                (0..m)
                    .map(|i| {
                        let mut f = 0.5 * (1.0 + g);
                        for p in &position[..m - 1 - i] {
                            f *= p;
                        }
                        if i > 0 {
                            f *= 1.0 - position[m - 1 - i];
                        }
                        f
                    })
                    .collect()
            }
            DtlzKind::Dtlz2 | DtlzKind::Dtlz3 | DtlzKind::Dtlz4 => {
                let g = if self.kind == DtlzKind::Dtlz3 {
                    rastrigin()
                } else {
                    squares()
                };
                let alpha = if self.kind == DtlzKind::Dtlz4 {
                    100.0
                } else {
                    1.0
                };
                let theta: Vec<f64> = position.iter().map(|p| p.powf(alpha) * PI / 2.0).collect();
                self.sphere(&theta, 1.0 + g)
            }
            DtlzKind::Dtlz5 | DtlzKind::Dtlz6 => {
                let g = if self.kind == DtlzKind::Dtlz5 {
                    squares()
                } else {
                    distance.iter().map(|v| v.powf(0.1)).sum::<f64>()
                };
                let mut theta = vec![position[0] * PI / 2.0];
                theta.extend(
                    position[1..]
                        .iter()
                        .map(|p| PI / (4.0 * (1.0 + g)) * (1.0 + 2.0 * g * p)),
                );
                self.sphere(&theta, 1.0 + g)
            }
            DtlzKind::Dtlz7 => {
                let g = 1.0 + 9.0 / k * distance.iter().sum::<f64>();
                let mut f: Vec<f64> = position.to_vec();
                let h = m as f64
                    - f.iter()
                        .map(|fi| fi / (1.0 + g) * (1.0 + (3.0 * PI * fi).sin()))
                        .sum::<f64>();
                f.push((1.0 + g) * h);
                f
            }
        };
        Ok(Evaluation::objectives(objectives))
    }
}

impl ReferenceFront for Dtlz {
    fn pareto_front(&self, points: usize) -> Vec<f64> {
        let m = self.n_obj;
        // Positions on a regular grid of the (m-1)-cube, as many as asked for.
        let per_axis = (points as f64).powf(1.0 / (m - 1) as f64).ceil().max(2.0) as usize;
        let mut grid: Vec<Vec<f64>> = vec![Vec::new()];
        for _ in 0..m - 1 {
            grid = grid
                .into_iter()
                .flat_map(|prefix| {
                    linspace(0.0, 1.0, per_axis).map(move |v| {
                        let mut next = prefix.clone();
                        next.push(v);
                        next
                    })
                })
                .collect();
        }
        // On the front the distance variables sit at their optimum (0.5; 0 for DTLZ6/7).
        let optimum = match self.kind {
            DtlzKind::Dtlz6 | DtlzKind::Dtlz7 => 0.0,
            _ => 0.5,
        };
        let unbiased = Self {
            kind: if self.kind == DtlzKind::Dtlz4 {
                DtlzKind::Dtlz2
            } else {
                self.kind
            },
            ..*self
        };
        let raw: Vec<f64> = grid
            .iter()
            .flat_map(|position| {
                let mut x = position.clone();
                x.resize(self.n_var, optimum);
                unbiased
                    .evaluate(&x)
                    .expect("DTLZ evaluates everywhere")
                    .objectives
            })
            .collect();
        non_dominated(&raw, m)
    }
}

/// Binh and Korn's constrained problem: two variables, two objectives, two constraints.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bnh;

impl Problem for Bnh {
    fn n_var(&self) -> usize {
        2
    }
    fn n_obj(&self) -> usize {
        2
    }
    fn n_constr(&self) -> usize {
        2
    }
    fn bounds(&self) -> Bounds {
        Bounds::new(vec![0.0, 0.0], vec![5.0, 3.0])
    }
    fn evaluate(&self, x: &[f64]) -> Result<Evaluation, String> {
        let (a, b) = (x[0], x[1]);
        Ok(Evaluation {
            objectives: vec![
                4.0 * a * a + 4.0 * b * b,
                (a - 5.0).powi(2) + (b - 5.0).powi(2),
            ],
            constraints: vec![
                (a - 5.0).powi(2) + b * b - 25.0,
                7.7 - (a - 8.0).powi(2) - (b + 3.0).powi(2),
            ],
        })
    }
}

impl ReferenceFront for Bnh {
    fn pareto_front(&self, points: usize) -> Vec<f64> {
        let half = points / 2;
        let raw: Vec<f64> = linspace(0.0, 3.0, half)
            .map(|v| [v, v])
            .chain(linspace(3.0, 5.0, points - half).map(|v| [v, 3.0]))
            .flat_map(|x| self.evaluate(&x).expect("evaluates").objectives)
            .collect();
        non_dominated(&raw, 2)
    }
}

/// Srinivas and Deb's constrained problem.
#[derive(Debug, Clone, Copy, Default)]
pub struct Srn;

impl Problem for Srn {
    fn n_var(&self) -> usize {
        2
    }
    fn n_obj(&self) -> usize {
        2
    }
    fn n_constr(&self) -> usize {
        2
    }
    fn bounds(&self) -> Bounds {
        Bounds::uniform(2, -20.0, 20.0)
    }
    fn evaluate(&self, x: &[f64]) -> Result<Evaluation, String> {
        let (a, b) = (x[0], x[1]);
        Ok(Evaluation {
            objectives: vec![
                2.0 + (a - 2.0).powi(2) + (b - 1.0).powi(2),
                9.0 * a - (b - 1.0).powi(2),
            ],
            constraints: vec![a * a + b * b - 225.0, a - 3.0 * b + 10.0],
        })
    }
}

impl ReferenceFront for Srn {
    fn pareto_front(&self, points: usize) -> Vec<f64> {
        // x1 = -2.5 and x2 from the second constraint (2.5) to the first (sqrt(225 - 6.25)).
        let top = (225.0f64 - 6.25).sqrt();
        let raw: Vec<f64> = linspace(2.5, top, points)
            .flat_map(|b| self.evaluate(&[-2.5, b]).expect("evaluates").objectives)
            .collect();
        non_dominated(&raw, 2)
    }
}

/// Tanaka's constrained problem (a front along a wavy constraint boundary).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tnk;

impl Problem for Tnk {
    fn n_var(&self) -> usize {
        2
    }
    fn n_obj(&self) -> usize {
        2
    }
    fn n_constr(&self) -> usize {
        2
    }
    fn bounds(&self) -> Bounds {
        Bounds::new(vec![1e-12, 1e-12], vec![PI, PI])
    }
    fn evaluate(&self, x: &[f64]) -> Result<Evaluation, String> {
        let (a, b) = (x[0], x[1]);
        Ok(Evaluation {
            objectives: vec![a, b],
            constraints: vec![
                -(a * a + b * b - 1.0 - 0.1 * (16.0 * (a / b).atan()).cos()),
                (a - 0.5).powi(2) + (b - 0.5).powi(2) - 0.5,
            ],
        })
    }
}

impl ReferenceFront for Tnk {
    fn pareto_front(&self, points: usize) -> Vec<f64> {
        // The first constraint's boundary in polar form: r^2 = 1 + 0.1 cos(16 theta).
        let raw: Vec<f64> = linspace(1e-6, PI / 2.0 - 1e-6, points * 4)
            .map(|theta| {
                let r = (1.0 + 0.1 * (16.0 * theta).cos()).sqrt();
                [r * theta.cos(), r * theta.sin()]
            })
            .filter(|p| (p[0] - 0.5).powi(2) + (p[1] - 0.5).powi(2) <= 0.5)
            .flatten()
            .collect();
        non_dominated(&raw, 2)
    }
}

/// Osyczka and Kundu's constrained problem: six variables, six constraints.
#[derive(Debug, Clone, Copy, Default)]
pub struct Osy;

impl Problem for Osy {
    fn n_var(&self) -> usize {
        6
    }
    fn n_obj(&self) -> usize {
        2
    }
    fn n_constr(&self) -> usize {
        6
    }
    fn bounds(&self) -> Bounds {
        Bounds::new(
            vec![0.0, 0.0, 1.0, 0.0, 1.0, 0.0],
            vec![10.0, 10.0, 5.0, 6.0, 5.0, 10.0],
        )
    }
    fn evaluate(&self, x: &[f64]) -> Result<Evaluation, String> {
        let f1 = -(25.0 * (x[0] - 2.0).powi(2)
            + (x[1] - 2.0).powi(2)
            + (x[2] - 1.0).powi(2)
            + (x[3] - 4.0).powi(2)
            + (x[4] - 1.0).powi(2));
        let f2 = x.iter().map(|v| v * v).sum();
        Ok(Evaluation {
            objectives: vec![f1, f2],
            constraints: vec![
                -(x[0] + x[1] - 2.0),
                -(6.0 - x[0] - x[1]),
                -(2.0 - x[1] + x[0]),
                -(2.0 - x[0] + 3.0 * x[1]),
                -(4.0 - (x[2] - 3.0).powi(2) - x[3]),
                -((x[4] - 3.0).powi(2) + x[5] - 4.0),
            ],
        })
    }
}

impl ReferenceFront for Osy {
    /// The five regions of decision space Deb (2001) gives for the front.
    fn pareto_front(&self, points: usize) -> Vec<f64> {
        let per = points.div_ceil(5);
        let mut xs: Vec<[f64; 6]> = Vec::new();
        xs.extend(linspace(1.0, 5.0, per).map(|v| [5.0, 1.0, v, 0.0, 5.0, 0.0]));
        xs.extend(linspace(1.0, 5.0, per).map(|v| [5.0, 1.0, v, 0.0, 1.0, 0.0]));
        xs.extend(linspace(4.056, 5.0, per).map(|v| [v, (v - 2.0) / 3.0, 1.0, 0.0, 1.0, 0.0]));
        xs.extend(linspace(1.0, 3.732, per).map(|v| [0.0, 2.0, v, 0.0, 1.0, 0.0]));
        xs.extend(linspace(0.0, 1.0, per).map(|v| [v, 2.0 - v, 1.0, 0.0, 1.0, 0.0]));
        let raw: Vec<f64> = xs
            .iter()
            .map(|x| self.evaluate(x).expect("evaluates"))
            .filter(|e| e.constraints.iter().all(|&g| g <= 1e-9))
            .flat_map(|e| e.objectives)
            .collect();
        non_dominated(&raw, 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fronts_lie_on_their_problems() {
        // ZDT1 at x = (f1, 0, ..., 0) is on the front.
        let zdt1 = Zdt::zdt1(30);
        let mut x = vec![0.0; 30];
        x[0] = 0.25;
        assert_eq!(zdt1.evaluate(&x).unwrap().objectives, vec![0.25, 0.5]);
        let front = zdt1.pareto_front(1000);
        assert_eq!(front.len(), 2000);
        // DTLZ2: every front point is on the unit sphere; DTLZ1 on the 0.5 simplex.
        let dtlz2 = Dtlz::new(DtlzKind::Dtlz2, 3).pareto_front(100);
        for p in dtlz2.chunks_exact(3) {
            assert!((p.iter().map(|v| v * v).sum::<f64>() - 1.0).abs() < 1e-12);
        }
        let dtlz1 = Dtlz::new(DtlzKind::Dtlz1, 3).pareto_front(100);
        for p in dtlz1.chunks_exact(3) {
            assert!((p.iter().sum::<f64>() - 0.5).abs() < 1e-12);
        }
        for kind in [
            DtlzKind::Dtlz3,
            DtlzKind::Dtlz4,
            DtlzKind::Dtlz5,
            DtlzKind::Dtlz6,
            DtlzKind::Dtlz7,
        ] {
            assert!(!Dtlz::new(kind, 3).pareto_front(200).is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn constrained_fronts_are_feasible_and_non_empty() {
        fn check(problem: &(impl Problem + ReferenceFront), name: &str) {
            let front = problem.pareto_front(200);
            assert!(front.len() >= 2 * 20, "{name}: {} values", front.len());
        }
        check(&Bnh, "BNH");
        check(&Srn, "SRN");
        check(&Tnk, "TNK");
        check(&Osy, "OSY");
        // BNH's front starts at the origin: x = (0, 0) is feasible and gives (0, 50).
        let e = Bnh.evaluate(&[0.0, 0.0]).unwrap();
        assert_eq!(e.objectives, vec![0.0, 50.0]);
        assert!(e.constraints.iter().all(|&g| g <= 0.0));
    }
}
