//! Non-dominated sorting.
//!
//! * one objective: a sort;
//! * two objectives: Jensen's sweep, O(N log N): points in lexicographic order join the
//!   first front whose latest member does not dominate them (found by binary search);
//! * three or more: ENS-BS (Zhang et al. 2015), the same binary search over fronts, each
//!   front checked against all its members, O(M N sqrt N) on typical populations and
//!   O(M N^2) at worst.
//!
//! All minimise. Identical objective vectors never dominate each other and share a front.
//! Points are a flat row-major `n x m` slice.

use std::cmp::Ordering;

/// Whether `a` Pareto-dominates `b` (no worse anywhere, better somewhere).
#[inline]
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    let mut strictly = false;
    for (x, y) in a.iter().zip(b) {
        if x > y {
            return false;
        }
        strictly |= x < y;
    }
    strictly
}

fn lexicographic(points: &[f64], m: usize, a: usize, b: usize) -> Ordering {
    let (pa, pb) = (&points[a * m..a * m + m], &points[b * m..b * m + m]);
    for (x, y) in pa.iter().zip(pb) {
        match x.total_cmp(y) {
            Ordering::Equal => continue,
            other => return other,
        }
    }
    Ordering::Equal
}

/// Fronts of `n` points of `m` objectives: front 0 is non-dominated, front k is
/// non-dominated once fronts 0..k are removed. Members of a front are listed in
/// lexicographic order of their objectives.
pub fn fronts(points: &[f64], n: usize, m: usize) -> Vec<Vec<usize>> {
    assert_eq!(points.len(), n * m, "points must be n x m");
    if n == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| lexicographic(points, m, a, b));
    let point = |i: usize| &points[i * m..i * m + m];
    let mut fronts: Vec<Vec<usize>> = Vec::new();
    match m {
        1 => {
            for &i in &order {
                match fronts.last_mut() {
                    Some(front) if points[front[0]] == points[i] => front.push(i),
                    _ => fronts.push(vec![i]),
                }
            }
        }
        2 => {
            // A front's latest member has the smallest second objective in it, so it alone
            // decides whether the front dominates the next point in lexicographic order.
            for &i in &order {
                let k = fronts.partition_point(|front| {
                    let last = *front.last().expect("fronts are never empty");
                    dominates(point(last), point(i))
                });
                if k == fronts.len() {
                    fronts.push(vec![i]);
                } else {
                    fronts[k].push(i);
                }
            }
        }
        _ => {
            for &i in &order {
                // Only earlier points (lexicographically) can dominate i; scan each
                // front's members from the latest, which are the likeliest dominators.
                let k = fronts.partition_point(|front| {
                    front.iter().rev().any(|&j| dominates(point(j), point(i)))
                });
                if k == fronts.len() {
                    fronts.push(vec![i]);
                } else {
                    fronts[k].push(i);
                }
            }
        }
    }
    fronts
}

/// The front index of every point.
pub fn ranks(points: &[f64], n: usize, m: usize) -> Vec<usize> {
    let mut rank = vec![0; n];
    for (k, front) in fronts(points, n, m).iter().enumerate() {
        for &i in front {
            rank[i] = k;
        }
    }
    rank
}

/// The definition, applied literally: peel off the non-dominated points, repeat
/// (O(F M N^2) for F fronts). Kept as the reference the fast sorts are tested and
/// benchmarked against.
pub fn naive_ranks(points: &[f64], n: usize, m: usize) -> Vec<usize> {
    let point = |i: usize| &points[i * m..i * m + m];
    let mut rank = vec![usize::MAX; n];
    let mut assigned = 0;
    let mut current = 0;
    while assigned < n {
        let members: Vec<usize> = (0..n)
            .filter(|&i| rank[i] == usize::MAX)
            .filter(|&i| {
                !(0..n).any(|j| rank[j] == usize::MAX && j != i && dominates(point(j), point(i)))
            })
            .collect();
        for &i in &members {
            rank[i] = current;
        }
        assigned += members.len();
        current += 1;
    }
    rank
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_cases() {
        // (1,4) (2,3) (3,3) (2,3) (4,1) (5,5)
        let points = [1.0, 4.0, 2.0, 3.0, 3.0, 3.0, 2.0, 3.0, 4.0, 1.0, 5.0, 5.0];
        assert_eq!(ranks(&points, 6, 2), vec![0, 0, 1, 0, 0, 2]);
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0], 4, 1), vec![2, 0, 2, 1]);
        assert!(fronts(&[], 0, 3).is_empty());
    }

    fn grid_points(m: usize) -> impl Strategy<Value = (usize, Vec<f64>)> {
        // Few distinct values, so ties and duplicates are common.
        (1usize..60).prop_flat_map(move |n| {
            (
                Just(n),
                proptest::collection::vec((0u8..6).prop_map(f64::from), n * m),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn fast_sorts_equal_the_naive_sort(m in 1usize..5, seed in any::<u64>()) {
            let mut rng = crate::Rng::seeded(seed);
            let n = 1 + rng.below(80);
            let points: Vec<f64> = (0..n * m).map(|_| (rng.below(7)) as f64).collect();
            prop_assert_eq!(ranks(&points, n, m), naive_ranks(&points, n, m));
        }

        #[test]
        fn fronts_partition_and_are_internally_non_dominated((n, points) in grid_points(3)) {
            let fronts = fronts(&points, n, 3);
            let mut seen: Vec<usize> = fronts.iter().flatten().copied().collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..n).collect::<Vec<_>>());
            for front in &fronts {
                for &a in front {
                    for &b in front {
                        prop_assert!(!dominates(&points[a * 3..a * 3 + 3], &points[b * 3..b * 3 + 3]));
                    }
                }
            }
        }

        #[test]
        fn continuous_values_too(m in 2usize..4, values in proptest::collection::vec(-1.0f64..1.0, 2..150)) {
            let n = values.len() / m;
            let points = &values[..n * m];
            prop_assert_eq!(ranks(points, n, m), naive_ranks(points, n, m));
        }
    }
}
