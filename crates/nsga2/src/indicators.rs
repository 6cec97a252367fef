//! Quality indicators: hypervolume (exact), IGD and IGD+. Points are minimised and given
//! as flat row-major `n x m` slices.

use crate::sort::fronts;

/// Exact hypervolume dominated by `points` and bounded by `reference`.
///
/// Points that do not strictly dominate the reference contribute nothing. Two
/// objectives: a sweep, O(n log n). Three or more: slicing along the last objective
/// (HSO), each slice a hypervolume one dimension lower, O(n^(m-1) log n); exact for
/// every m, practical for fronts of hundreds of points up to 4-5 objectives.
pub fn hypervolume(points: &[f64], m: usize, reference: &[f64]) -> f64 {
    assert_eq!(reference.len(), m, "reference point must have m values");
    let inside: Vec<&[f64]> = points
        .chunks_exact(m)
        .filter(|p| p.iter().zip(reference).all(|(a, r)| a < r))
        .collect();
    slice_volume(inside, reference)
}

fn slice_volume(mut points: Vec<&[f64]>, reference: &[f64]) -> f64 {
    let m = reference.len();
    if points.is_empty() {
        return 0.0;
    }
    match m {
        1 => reference[0] - points.iter().map(|p| p[0]).fold(f64::INFINITY, f64::min),
        2 => {
            points.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
            let mut volume = 0.0;
            let mut ceiling = reference[1];
            for p in points {
                if p[1] < ceiling {
                    volume += (reference[0] - p[0]) * (ceiling - p[1]);
                    ceiling = p[1];
                }
            }
            volume
        }
        _ => {
            points.sort_by(|a, b| a[m - 1].total_cmp(&b[m - 1]));
            let mut volume = 0.0;
            for i in 0..points.len() {
                let top = if i + 1 < points.len() {
                    points[i + 1][m - 1]
                } else {
                    reference[m - 1]
                };
                let height = top - points[i][m - 1];
                if height > 0.0 {
                    let below: Vec<&[f64]> = points[..=i].iter().map(|p| &p[..m - 1]).collect();
                    volume += height * slice_volume(below, &reference[..m - 1]);
                }
            }
            volume
        }
    }
}

/// Inverted generational distance: the mean, over `reference` points, of the Euclidean
/// distance to the nearest point of `approximation`. Infinite when `approximation` is
/// empty.
pub fn igd(reference: &[f64], approximation: &[f64], m: usize) -> f64 {
    mean_nearest(reference, approximation, m, |z, a| {
        z.iter()
            .zip(a)
            .map(|(zi, ai)| (ai - zi).powi(2))
            .sum::<f64>()
            .sqrt()
    })
}

/// Generational distance: the mean, over `approximation` points, of the Euclidean
/// distance to the nearest `reference` point (how close the found points are to the
/// front, blind to how much of it they cover).
pub fn gd(reference: &[f64], approximation: &[f64], m: usize) -> f64 {
    igd(approximation, reference, m)
}

/// IGD+ (Ishibuchi et al. 2015): like IGD with the distance counting only how much worse
/// the approximation is, `sqrt(sum max(a - z, 0)^2)`; weakly Pareto compliant.
pub fn igd_plus(reference: &[f64], approximation: &[f64], m: usize) -> f64 {
    mean_nearest(reference, approximation, m, |z, a| {
        z.iter()
            .zip(a)
            .map(|(zi, ai)| (ai - zi).max(0.0).powi(2))
            .sum::<f64>()
            .sqrt()
    })
}

fn mean_nearest(
    reference: &[f64],
    approximation: &[f64],
    m: usize,
    distance: impl Fn(&[f64], &[f64]) -> f64,
) -> f64 {
    if reference.is_empty() {
        return 0.0;
    }
    if approximation.is_empty() {
        return f64::INFINITY;
    }
    let total: f64 = reference
        .chunks_exact(m)
        .map(|z| {
            approximation
                .chunks_exact(m)
                .map(|a| distance(z, a))
                .fold(f64::INFINITY, f64::min)
        })
        .sum();
    total / (reference.len() / m) as f64
}

/// The non-dominated points of a set (duplicates kept once), row-major.
pub fn non_dominated(points: &[f64], m: usize) -> Vec<f64> {
    let n = points.len() / m;
    let Some(first) = fronts(points, n, m).into_iter().next() else {
        return Vec::new();
    };
    let mut out: Vec<f64> = Vec::with_capacity(first.len() * m);
    for i in first {
        let p = &points[i * m..i * m + m];
        if !out.chunks_exact(m).any(|q| q == p) {
            out.extend_from_slice(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_dimensional_staircase() {
        // (1,3) (2,2) (3,1) against (4,4): 3 + 2 + 1 = 6.
        let points = [1.0, 3.0, 2.0, 2.0, 3.0, 1.0];
        assert_eq!(hypervolume(&points, 2, &[4.0, 4.0]), 6.0);
        // A dominated point and one outside the reference change nothing.
        let more = [1.0, 3.0, 2.0, 2.0, 3.0, 1.0, 3.0, 3.0, 5.0, 0.0];
        assert_eq!(hypervolume(&more, 2, &[4.0, 4.0]), 6.0);
        assert_eq!(hypervolume(&[], 2, &[1.0, 1.0]), 0.0);
    }

    /// Inclusion-exclusion over all subsets: exact, exponential, fine for a few points.
    fn inclusion_exclusion(points: &[f64], m: usize, reference: &[f64]) -> f64 {
        let n = points.len() / m;
        let mut total = 0.0;
        for mask in 1u32..(1 << n) {
            let mut corner = vec![f64::NEG_INFINITY; m];
            for i in 0..n {
                if mask & (1 << i) != 0 {
                    for j in 0..m {
                        corner[j] = corner[j].max(points[i * m + j]);
                    }
                }
            }
            let volume: f64 = (0..m)
                .map(|j| (reference[j] - corner[j]).max(0.0))
                .product();
            total += if mask.count_ones() % 2 == 1 {
                volume
            } else {
                -volume
            };
        }
        total
    }

    #[test]
    fn slicing_equals_inclusion_exclusion() {
        let mut rng = crate::Rng::seeded(11);
        for m in 2..=4 {
            for _ in 0..50 {
                let n = 1 + rng.below(7);
                let points: Vec<f64> = (0..n * m).map(|_| (rng.below(8) as f64) / 8.0).collect();
                let reference = vec![1.0; m];
                let exact = inclusion_exclusion(&points, m, &reference);
                let fast = hypervolume(&points, m, &reference);
                assert!(
                    (exact - fast).abs() < 1e-12,
                    "m={m} {points:?}: {exact} vs {fast}"
                );
            }
        }
    }

    #[test]
    fn igd_and_igd_plus() {
        let reference = [0.0, 1.0, 1.0, 0.0];
        assert_eq!(igd(&reference, &reference, 2), 0.0);
        let shifted = [0.0, 2.0, 1.0, 1.0];
        assert_eq!(igd(&reference, &shifted, 2), 1.0);
        // A point better than the reference costs nothing in IGD+ but does in IGD.
        let better = [-1.0, -1.0];
        assert_eq!(igd_plus(&reference, &better, 2), 0.0);
        assert!(igd(&reference, &better, 2) > 1.0);
        assert_eq!(igd(&reference, &[], 2), f64::INFINITY);
    }
}
