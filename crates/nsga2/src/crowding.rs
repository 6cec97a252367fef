//! Crowding distance.

use serde::{Deserialize, Serialize};

/// How crowding distance treats a front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crowding {
    /// Deb's crowding distance as pymoo's `"cd"` (0.6.1+): per objective, the two extremes
    /// get infinity and every other point the normalised gap between its neighbours;
    /// duplicates are treated as distinct points (their gaps are zero).
    #[default]
    Standard,
    /// Crowding over *unique* objective vectors (as Platypus): the distance is computed on
    /// the distinct vectors of the front, and of each group of identical vectors the
    /// first (in front order) gets the distance and the rest get 0, so copies are the
    /// first to go. A documented quality improvement on fronts with duplicates.
    UniqueVectors,
    /// Pruning crowding (Kukkonen and Deb 2006, pymoo's `"pcd"`): when a front must be
    /// cut, its points are removed one at a time, always the one with the smallest
    /// crowding distance among those left, recomputing distances after each removal.
    /// Costs O(k^2 log k) for a split front of k points; spreads the kept points better.
    Pruning,
}

/// Crowding distances of the points `front` (indices into the row-major `n x m` slice
/// `points`), in front order. Fronts of one or two points are all infinite. An objective
/// whose range over the front is zero contributes nothing.
pub fn crowding_distance(points: &[f64], m: usize, front: &[usize], mode: Crowding) -> Vec<f64> {
    match mode {
        Crowding::Standard | Crowding::Pruning => standard(points, m, front),
        Crowding::UniqueVectors => {
            let point = |i: usize| &points[i * m..i * m + m];
            let mut unique: Vec<usize> = Vec::with_capacity(front.len());
            let mut owner = Vec::with_capacity(front.len());
            for &i in front {
                match unique.iter().position(|&u| point(u) == point(i)) {
                    Some(slot) => owner.push((slot, false)),
                    None => {
                        owner.push((unique.len(), true));
                        unique.push(i);
                    }
                }
            }
            let distances = standard(points, m, &unique);
            owner
                .iter()
                .map(|&(slot, first)| if first { distances[slot] } else { 0.0 })
                .collect()
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
