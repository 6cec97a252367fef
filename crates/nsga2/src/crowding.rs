//! Crowding distance.

use serde::{Deserialize, Serialize};

/// How crowding distance treats a front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crowding {
    /// Deb's crowding distance as pymoo's `"cd"` (0.6.1+): per objective, the two extremes
    /// get infinity and every other point the normalised gap between its neighbours;
    /// duplicates are treated as distinct points, so which of two twins gets the
    /// infinity depends on their order in the front (Fortin and Parizeau 2013).
    Standard,
    /// The default: crowding over *unique* objective vectors (Fortin and Parizeau 2013;
    /// Platypus). Distances are computed on the distinct vectors of the front; of each
    /// group of identical vectors the first in front order gets the distance and the
    /// others 0, so copies are the first to go when a front is cut and lose tournaments
    /// on crowding. Without duplicates it equals [`Crowding::Standard`].
    #[default]
    UniqueVectors,
    /// Pruning crowding (Kukkonen and Deb 2006, pymoo's `"pcd"`): when a front must be
    /// cut, its points are removed one at a time, always the one with the smallest
    /// crowding distance among those left, recomputing distances after each removal.
    /// Costs O(k^2 log k) for a split front of k points; spreads the kept points better.
    Pruning,
}

/// Crowding distances of the points `front` (indices into the row-major `n x m` slice
/// `points`), in front order. Fronts of one or two points are all infinite (except, with
/// [`Crowding::UniqueVectors`], the second of two identical points, at 0). An objective
/// whose range over the front is zero contributes nothing.
pub fn crowding_distance(points: &[f64], m: usize, front: &[usize], mode: Crowding) -> Vec<f64> {
    match mode {
        Crowding::Standard => standard(points, m, front),
        Crowding::UniqueVectors | Crowding::Pruning => {
            let point = |slot: usize| &points[front[slot] * m..front[slot] * m + m];
            // Group identical vectors by sorting (vector, front position): each group's
            // first element is its earliest copy in the front.
            let mut order: Vec<usize> = (0..front.len()).collect();
            order.sort_by(|&a, &b| {
                point(a)
                    .iter()
                    .zip(point(b))
                    .map(|(x, y)| x.total_cmp(y))
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(a.cmp(&b))
            });
            let mut leaders: Vec<usize> = Vec::with_capacity(front.len());
            for (i, &slot) in order.iter().enumerate() {
                if i == 0 || point(order[i - 1]) != point(slot) {
                    leaders.push(slot);
                }
            }
            leaders.sort_unstable();
            let unique: Vec<usize> = leaders.iter().map(|&slot| front[slot]).collect();
            let distances = standard(points, m, &unique);
            let mut out = vec![0.0; front.len()];
            for (&slot, &d) in leaders.iter().zip(&distances) {
                out[slot] = d;
            }
            out
        }
    }
}

fn standard(points: &[f64], m: usize, front: &[usize]) -> Vec<f64> {
    let k = front.len();
    if k <= 2 {
        return vec![f64::INFINITY; k];
    }
    let mut distance = vec![0.0f64; k];
    let mut order: Vec<usize> = (0..k).collect();
    for objective in 0..m {
        let value = |slot: usize| points[front[slot] * m + objective];
        // Stable sort: ties keep front order, as pymoo's mergesort.
        order.sort_by(|&a, &b| value(a).total_cmp(&value(b)));
        let low = value(order[0]);
        let high = value(order[k - 1]);
        distance[order[0]] = f64::INFINITY;
        distance[order[k - 1]] = f64::INFINITY;
        let range = high - low;
        if range <= 0.0 || !range.is_finite() {
            continue;
        }
        for w in order.windows(3) {
            distance[w[1]] += (value(w[2]) - value(w[0])) / range;
        }
    }
    distance
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremes_are_infinite_and_gaps_normalised() {
        // A front of 4 points on a line: (0,3) (1,2) (2,1) (3,0).
        let points = [0.0, 3.0, 1.0, 2.0, 2.0, 1.0, 3.0, 0.0];
        let d = crowding_distance(&points, 2, &[0, 1, 2, 3], Crowding::Standard);
        assert_eq!(d[0], f64::INFINITY);
        assert_eq!(d[3], f64::INFINITY);
        let expected = 2.0 / 3.0 + 2.0 / 3.0;
        assert!(
            (d[1] - expected).abs() < 1e-12 && (d[2] - expected).abs() < 1e-12,
            "{d:?}"
        );
        assert_eq!(
            crowding_distance(&points, 2, &[1, 2], Crowding::Standard),
            [f64::INFINITY; 2]
        );
    }

    #[test]
    fn twins_at_the_extremes_do_not_depend_on_order() {
        // (0,1) twice at one end, (1,0) twice at the other, (0.5,0.5) inside.
        let points = [0.0, 1.0, 1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 1.0, 0.0];
        for front in [[0, 1, 2, 3, 4], [3, 4, 2, 0, 1], [2, 4, 3, 1, 0]] {
            let d = crowding_distance(&points, 2, &front, Crowding::UniqueVectors);
            // Exactly one copy of each extreme is infinite, the other 0; the middle is finite.
            for twin in [[0usize, 3], [1, 4]] {
                let values: Vec<f64> = twin
                    .iter()
                    .map(|i| d[front.iter().position(|f| f == i).unwrap()])
                    .collect();
                assert!(
                    values.contains(&f64::INFINITY) && values.contains(&0.0),
                    "{front:?}: {d:?}"
                );
            }
            let middle = d[front.iter().position(|&f| f == 2).unwrap()];
            assert_eq!(middle, 2.0, "{front:?}: {d:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn crowding_properties(values in proptest::collection::vec(0u8..5, 3..60), scale in 0.1f64..100.0) {
            let m = 3;
            let n = values.len() / m;
            let points: Vec<f64> = values[..n * m].iter().map(|&v| f64::from(v)).collect();
            let front: Vec<usize> = (0..n).collect();
            for mode in [Crowding::Standard, Crowding::UniqueVectors] {
                let d = crowding_distance(&points, m, &front, mode);
                proptest::prop_assert!(d.iter().all(|v| *v >= 0.0 && !v.is_nan()));
                // Scaling an objective changes nothing: distances are normalised per objective.
                let scaled: Vec<f64> = points.iter().enumerate().map(|(i, v)| if i % m == 1 { v * scale } else { *v }).collect();
                let d2 = crowding_distance(&scaled, m, &front, mode);
                for (a, b) in d.iter().zip(&d2) {
                    proptest::prop_assert!(a == b || (a - b).abs() < 1e-9 * a.abs().max(1.0));
                }
                if n <= 2 {
                    // Both extremes; with unique-vector crowding a second identical copy
                    // is the one exception, at 0.
                    let twins = n == 2 && points[..m] == points[m..2 * m];
                    if twins && mode == Crowding::UniqueVectors {
                        proptest::prop_assert!(d == [f64::INFINITY, 0.0], "{d:?}");
                    } else {
                        proptest::prop_assert!(d.iter().all(|v| v.is_infinite()), "{d:?}");
                    }
                }
            }
            // Unique-vector crowding: every distinct vector has exactly one copy scored.
            let d = crowding_distance(&points, m, &front, Crowding::UniqueVectors);
            let mut distinct: Vec<&[f64]> = points.chunks_exact(m).collect();
            distinct.sort_by(|a, b| a.partial_cmp(b).unwrap());
            distinct.dedup();
            let zeros_for_copies = n - distinct.len();
            proptest::prop_assert!(d.iter().filter(|v| **v == 0.0).count() >= zeros_for_copies);
        }
    }

    #[test]
    fn duplicates_and_flat_objectives_are_finite_and_well_defined() {
        // (0,1) twice, (0.5,0.5), (1,0): standard gives the copies zero-width gaps.
        let points = [0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 1.0, 0.0];
        let front = [0, 1, 2, 3];
        let standard = crowding_distance(&points, 2, &front, Crowding::Standard);
        assert!(standard.iter().all(|d| !d.is_nan()), "{standard:?}");
        let unique = crowding_distance(&points, 2, &front, Crowding::UniqueVectors);
        assert_eq!(unique[1], 0.0, "the second copy goes first: {unique:?}");
        assert_eq!(unique[0], f64::INFINITY);
        // All points equal in one objective: that objective adds nothing.
        let flat = [1.0, 0.0, 1.0, 1.0, 1.0, 2.0];
        let d = crowding_distance(&flat, 2, &[0, 1, 2], Crowding::Standard);
        assert_eq!(d, [f64::INFINITY, 1.0, f64::INFINITY]);
    }
}
