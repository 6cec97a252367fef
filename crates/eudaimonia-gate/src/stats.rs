//! Intervals for shares and means.

/// Wilson score 95% interval of `successes` out of `n` (`[0, 1]` when `n` is 0): better
/// behaved than the normal interval near 0 and 1 and for small `n`.
pub fn wilson_interval(successes: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let z = 1.959_963_984_540_054_f64;
    let n = n as f64;
    let p = successes as f64 / n;
    let denominator = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denominator;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denominator;
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

/// Mean and normal 95% interval (mean ± 1.96 standard errors, sample standard
/// deviation) of `values`; a single value gets a zero-width interval.
pub fn mean_interval(values: &[f64]) -> (f64, [f64; 2]) {
    if values.is_empty() {
        return (f64::NAN, [f64::NAN, f64::NAN]);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() == 1 {
        return (mean, [mean, mean]);
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let half = 1.959_963_984_540_054 * (variance / n).sqrt();
    (mean, [mean - half, mean + half])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_known_values() {
        // 8 of 10: the textbook interval is [0.490, 0.943].
        let [lo, hi] = wilson_interval(8, 10);
        assert!(
            (lo - 0.4902).abs() < 1e-3 && (hi - 0.9433).abs() < 1e-3,
            "{lo} {hi}"
        );
        let [lo, hi] = wilson_interval(0, 20);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.1611).abs() < 1e-3, "{hi}");
        assert_eq!(wilson_interval(0, 0), [0.0, 1.0]);
    }

    #[test]
    fn mean_interval_covers_the_mean() {
        let (mean, [lo, hi]) = mean_interval(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(mean, 2.5);
        // sd = 1.291, se = 0.6455, half = 1.265.
        assert!((hi - lo - 2.0 * 1.2652).abs() < 1e-3, "{lo} {hi}");
    }
}
