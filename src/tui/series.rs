//! The figures the dashboard plots, taken from the run's records: series, smoothing, trends
//! and rates. Pure functions, tested without a terminal.

use crate::run::StepRecord;

use super::follow::RunData;

/// Records back that a trend compares against.
pub const TREND_WINDOW: usize = 20;

/// A plotted quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    /// Total loss per image.
    Total,
    /// Reconstruction loss per image.
    Recon,
    /// KL per image.
    Kl,
    /// KL weight in force.
    Beta,
    /// Learning rate in force.
    Lr,
}

impl Series {
    /// All series, in the order `t` cycles through them.
    pub const ALL: [Series; 5] = [
        Series::Total,
        Series::Recon,
        Series::Kl,
        Series::Beta,
        Series::Lr,
    ];

    /// Its label.
    pub fn label(self) -> &'static str {
        match self {
            Series::Total => "total",
            Series::Recon => "recon",
            Series::Kl => "KL",
            Series::Beta => "beta",
            Series::Lr => "lr",
        }
    }

    /// The value of a step record.
    pub fn of(self, r: &StepRecord) -> f64 {
        match self {
            Series::Total => r.total,
            Series::Recon => r.recon,
            Series::Kl => r.kl,
            Series::Beta => r.beta,
            Series::Lr => r.lr,
        }
    }

    /// The next series (`forward`) or the previous one.
    pub fn cycle(self, forward: bool) -> Series {
        let i = Series::ALL.iter().position(|s| *s == self).unwrap_or(0);
        let n = Series::ALL.len();
        Series::ALL[if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        }]
    }

    /// Whether validation passes report this series.
    pub fn has_validation(self) -> bool {
        matches!(self, Series::Total | Series::Recon | Series::Kl)
    }

    /// `(step, value)` of the training records.
    pub fn points(self, data: &RunData) -> Vec<(f64, f64)> {
        data.steps
            .iter()
            .map(|r| (r.step as f64, self.of(r)))
            .collect()
    }

    /// `(step, value)` of the validation passes (empty for series they do not report).
    pub fn val_points(self, data: &RunData) -> Vec<(f64, f64)> {
        data.vals
            .iter()
            .filter_map(|v| {
                let y = match self {
                    Series::Total => v.total,
                    Series::Recon => v.recon,
                    Series::Kl => v.kl,
                    _ => return None,
                };
                Some((v.step as f64, y))
            })
            .collect()
    }
}

/// Exponential moving average with TensorBoard's debiasing, so the start is not pulled to 0;
/// `weight` 0 leaves the values as they are. Non-finite values pass through unsmoothed.
pub fn ema(values: &[f64], weight: f64) -> Vec<f64> {
    let w = weight.clamp(0.0, 0.999);
    let mut last = 0.0;
    let mut n = 0i32;
    values
        .iter()
        .map(|&v| {
            if !v.is_finite() {
                return v;
            }
            last = last * w + (1.0 - w) * v;
            n += 1;
            let debias = 1.0 - w.powi(n);
            if debias > 0.0 {
                last / debias
            } else {
                v
            }
        })
        .collect()
}

/// Direction of a value against `TREND_WINDOW` records ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trend {
    /// Rising by more than 0.5 %.
    Up,
    /// Falling by more than 0.5 %.
    Down,
    /// About the same, or too few records.
    Flat,
}

impl Trend {
    /// Its arrow.
    pub fn arrow(self) -> &'static str {
        match self {
            Trend::Up => "↑",
            Trend::Down => "↓",
            Trend::Flat => "→",
        }
    }
}

/// The trend of the last value against the one `window` values earlier.
pub fn trend(values: &[f64], window: usize) -> Trend {
    let n = values.len();
    if n < 2 {
        return Trend::Flat;
    }
    let (now, then) = (values[n - 1], values[n.saturating_sub(window + 1)]);
    let tolerance = then.abs().max(1e-12) * 0.005;
    if now > then + tolerance {
        Trend::Up
    } else if now < then - tolerance {
        Trend::Down
    } else {
        Trend::Flat
    }
}

/// Steps per second over the last `window` records (from their training clock).
pub fn steps_per_second(steps: &[StepRecord], window: usize) -> Option<f64> {
    let last = steps.last()?;
    let first = &steps[steps.len().saturating_sub(window + 1)];
    let (ds, dt) = (
        last.step.saturating_sub(first.step) as f64,
        last.time - first.time,
    );
    (ds > 0.0 && dt > 0.0).then_some(ds / dt)
}

/// Seconds left to reach `total` steps at the recent pace.
pub fn eta_seconds(steps: &[StepRecord], total: u64) -> Option<f64> {
    let rate = steps_per_second(steps, TREND_WINDOW)?;
    let left = total.saturating_sub(steps.last()?.step) as f64;
    Some(left / rate)
}

/// Scales values to the 0..=1000 integers a sparkline draws, from the minimum up.
pub fn spark_bars(values: &[f64]) -> Vec<u64> {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return values.iter().map(|_| 500).collect();
    }
    values
        .iter()
        .map(|v| {
            if v.is_finite() {
                (1.0 + 999.0 * (v - lo) / (hi - lo)) as u64
            } else {
                0
            }
        })
        .collect()
}

/// Keeps at most `max` points, taking evenly spaced ones (the last always kept).
pub fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let stride = points.len() as f64 / (max - 1) as f64;
    let mut out: Vec<(f64, f64)> = (0..max - 1)
        .map(|i| points[(i as f64 * stride) as usize])
        .collect();
    out.push(points[points.len() - 1]);
    out
}

/// A number for a narrow panel: fixed for ordinary magnitudes, scientific otherwise.
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a != 0.0 && !(1e-2..1e5).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_of_zero_weight_is_identity_and_debiased_start_is_first_value() {
        let xs = [4.0, 2.0, 6.0];
        assert_eq!(ema(&xs, 0.0), xs.to_vec());
        let s = ema(&xs, 0.9);
        assert!((s[0] - 4.0).abs() < 1e-9);
        assert!(s[2] > 2.0 && s[2] < 6.0);
    }

    #[test]
    fn trends_and_rates() {
        assert_eq!(trend(&[5.0, 4.0, 3.0], 20), Trend::Down);
        assert_eq!(trend(&[1.0, 2.0], 20), Trend::Up);
        assert_eq!(trend(&[1.0], 20), Trend::Flat);
        let rec = |step, time| StepRecord {
            step,
            epoch: 0.0,
            time,
            total: 0.0,
            recon: 0.0,
            kl: 0.0,
            beta: 0.0,
            lr: 0.0,
            ips: 0.0,
        };
        let steps = vec![rec(10, 1.0), rec(20, 2.0), rec(30, 3.0)];
        assert!((steps_per_second(&steps, 20).unwrap() - 10.0).abs() < 1e-9);
        assert!((eta_seconds(&steps, 130).unwrap() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn thinning_keeps_ends_and_bars_span_the_range() {
        let pts: Vec<(f64, f64)> = (0..1000).map(|i| (i as f64, i as f64)).collect();
        let t = thin(&pts, 100);
        assert_eq!(t.len(), 100);
        assert_eq!((t[0], t[99]), ((0.0, 0.0), (999.0, 999.0)));
        assert_eq!(spark_bars(&[1.0, 2.0]), vec![1, 1000]);
    }
}
