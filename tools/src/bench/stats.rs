//! Distribution summaries: percentiles (nearest rank), mean and standard deviation.

use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub stddev: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Nearest rank; the epsilon keeps 99.9% of 1000 at rank 999 despite rounding.
        let pct = |p: f64| v[((p / 100.0 * n as f64 - 1e-9).ceil() as usize).clamp(1, n) - 1];
        Summary {
            n,
            mean,
            stddev: var.sqrt(),
            p50: pct(50.0),
            p95: pct(95.0),
            p99: pct(99.0),
            p999: pct(99.9),
            max: v[n - 1],
        }
    }

    /// In milliseconds, for reports.
    pub fn json_ms(&self) -> Value {
        let ms = |s: f64| (s * 1e6).round() / 1e3;
        json!({
            "n": self.n, "mean_ms": ms(self.mean), "stddev_ms": ms(self.stddev), "p50_ms": ms(self.p50),
            "p95_ms": ms(self.p95), "p99_ms": ms(self.p99), "p99_9_ms": ms(self.p999), "max_ms": ms(self.max),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        let s = Summary::of(&v);
        assert_eq!((s.p50, s.p95, s.p99, s.p999, s.max), (500.0, 950.0, 990.0, 999.0, 1000.0));
        assert!((s.mean - 500.5).abs() < 1e-9);
        assert_eq!(Summary::of(&[]).n, 0);
        assert_eq!(Summary::of(&[3.0]).p999, 3.0);
    }
}
