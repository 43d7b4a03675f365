//! `--profile`: the offered request rate over time ([`RateCurve`]), from a built-in shape
//! ([`Shape`]) or a CSV file of `seconds,requests_per_second` rows.
//!
//! A curve is a list of `(seconds, requests/s)` points joined by straight lines; two points
//! at the same time make a jump. Before its first point a curve holds the first rate, after
//! its last point the last rate. The built-in shapes are drawn over `--duration` with
//! `--rate` as their peak `P` (`u` = the fraction of the duration elapsed):
//!
//! | shape | offered rate |
//! | --- | --- |
//! | `step` | `0.2 P`; `P` for `0.3 ≤ u < 0.7`; then `0.2 P` again (a step up, then a step down) |
//! | `ramp` | from `0.1 P` at the start straight up to `P` at `u = 0.7`, then `P` |
//! | `spike` | `0.2 P`; `P` for `0.4 ≤ u < 0.5` (a tenth of the run); then `0.2 P` |
//! | `sine` | `P × (0.55 − 0.45 cos(4π u))`: two periods between `0.1 P` and `P` (drawn as 200 segments) |
//!
//! The workers send request `k` (counting from 0 over all connections) at the time the
//! integral of the curve reaches `k` ([`RateCurve::time_of`]), on connection
//! `k mod connections`: an open loop whose rate follows the curve.

use std::fmt;
use std::path::{Path, PathBuf};

/// A built-in profile shape (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Low, peak, low.
    Step,
    /// Linear rise to the peak, then hold.
    Ramp,
    /// Low with a short burst at the peak.
    Spike,
    /// Two sine periods between a tenth of the peak and the peak.
    Sine,
}

impl Shape {
    /// Every built-in shape, in the order `scripts/elasticity.sh` runs them.
    pub const ALL: [Shape; 4] = [Shape::Step, Shape::Ramp, Shape::Spike, Shape::Sine];

    /// The `--profile` name.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Step => "step",
            Shape::Ramp => "ramp",
            Shape::Spike => "spike",
            Shape::Sine => "sine",
        }
    }

    /// The curve of this shape over `duration_s` seconds with peak `peak` requests/s.
    pub fn curve(self, duration_s: f64, peak: f64) -> RateCurve {
        let d = duration_s;
        let points = match self {
            Shape::Step => vec![
                (0.0, 0.2 * peak),
                (0.3 * d, 0.2 * peak),
                (0.3 * d, peak),
                (0.7 * d, peak),
                (0.7 * d, 0.2 * peak),
                (d, 0.2 * peak),
            ],
            Shape::Ramp => vec![(0.0, 0.1 * peak), (0.7 * d, peak), (d, peak)],
            Shape::Spike => vec![
                (0.0, 0.2 * peak),
                (0.4 * d, 0.2 * peak),
                (0.4 * d, peak),
                (0.5 * d, peak),
                (0.5 * d, 0.2 * peak),
                (d, 0.2 * peak),
            ],
            Shape::Sine => (0..=200)
                .map(|i| {
                    let u = f64::from(i) / 200.0;
                    let phase = 4.0 * std::f64::consts::PI * u;
                    (u * d, peak * (0.55 - 0.45 * phase.cos()))
                })
                .collect(),
        };
        RateCurve::new(points)
    }
}

/// What `--profile` names: a built-in shape or a CSV file (read by [`ProfileSpec::load`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSpec {
    /// `step`, `ramp`, `spike` or `sine`.
    Builtin(Shape),
    /// A file of `seconds,requests_per_second` rows.
    Csv(PathBuf),
}

impl fmt::Display for ProfileSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileSpec::Builtin(shape) => f.write_str(shape.name()),
            ProfileSpec::Csv(path) => write!(f, "{}", path.display()),
        }
    }
}

impl std::str::FromStr for ProfileSpec {
    type Err = String;

    /// A built-in name, else a path (which must end in `.csv`, so that a typo in a name is
    /// not taken for a file).
    fn from_str(s: &str) -> Result<ProfileSpec, String> {
        let s = s.trim();
        if let Some(shape) = Shape::ALL.into_iter().find(|shape| shape.name() == s) {
            return Ok(ProfileSpec::Builtin(shape));
        }
        if s.to_ascii_lowercase().ends_with(".csv") {
            return Ok(ProfileSpec::Csv(PathBuf::from(s)));
        }
        Err(format!(
            "\"{s}\" is neither a built-in profile (step, ramp, spike, sine) nor a .csv file"
        ))
    }
}

impl ProfileSpec {
    /// The curve: a built-in shape over `duration_s` with peak `rate`, or the file's rows.
    ///
    /// # Errors
    ///
    /// One line naming the problem: a built-in shape without `--rate`, a CSV with `--rate`,
    /// a file that cannot be read, or `FILE:LINE: …` for a bad row.
    pub fn load(&self, duration_s: f64, rate: Option<f64>) -> Result<RateCurve, String> {
        match (self, rate) {
            (ProfileSpec::Builtin(shape), Some(peak)) => Ok(shape.curve(duration_s, peak)),
            (ProfileSpec::Builtin(shape), None) => Err(format!(
                "--profile {} needs --rate N/s (its peak rate)",
                shape.name()
            )),
            (ProfileSpec::Csv(path), None) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the profile {}: {e}", path.display()))?;
                parse_csv(path, &text)
            }
            (ProfileSpec::Csv(path), Some(_)) => Err(format!(
                "--rate does not apply to --profile {} (the file gives the rates)",
                path.display()
            )),
        }
    }
}

/// Parses `seconds,requests_per_second` rows. Blank lines and lines starting with `#` are
/// skipped; a first row `seconds,requests_per_second` is a header. Times must not decrease
/// (an equal time makes a jump), rates must be finite and ≥ 0.
pub(super) fn parse_csv(path: &Path, text: &str) -> Result<RateCurve, String> {
    let at = |n: usize, what: String| format!("{}:{n}: {what}", path.display());
    let mut points: Vec<(f64, f64)> = Vec::new();
    let mut seen_row = false;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = !seen_row;
        seen_row = true;
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if first && fields == ["seconds", "requests_per_second"] {
            continue;
        }
        let [t, r] = fields[..] else {
            return Err(at(
                n,
                format!("expected two fields seconds,requests_per_second, got \"{line}\""),
            ));
        };
        let number = |field: &str, name: &str| -> Result<f64, String> {
            match field.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => Err(at(
                    n,
                    format!("{name} \"{field}\" is not a number ≥ 0 (in \"{line}\")"),
                )),
            }
        };
        let (t, r) = (number(t, "seconds")?, number(r, "requests_per_second")?);
        if let Some(&(prev, _)) = points.last() {
            if t < prev {
                return Err(at(
                    n,
                    format!("seconds {t} comes after {prev}; times must not decrease"),
                ));
            }
        }
        points.push((t, r));
    }
    if points.is_empty() {
        return Err(format!(
            "{}: no rows (expected lines like 0,100 = seconds,requests_per_second)",
            path.display()
        ));
    }
    Ok(RateCurve::new(points))
}

/// The offered rate over time: points joined by straight lines (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct RateCurve {
    /// `(seconds, requests/s)`, times not decreasing, at least one point.
    points: Vec<(f64, f64)>,
    /// `cumulative[i]`: requests offered from time 0 up to `points[i].0`.
    cumulative: Vec<f64>,
}

impl RateCurve {
    /// A curve through `points` (times not decreasing, rates ≥ 0, at least one point).
    ///
    /// # Panics
    ///
    /// With no points.
    pub fn new(points: Vec<(f64, f64)>) -> RateCurve {
        assert!(!points.is_empty(), "a rate curve needs a point");
        let first = points[0];
        let mut cumulative = Vec::with_capacity(points.len());
        // Before the first point the first rate holds (from time 0).
        let mut total = first.1 * first.0.max(0.0);
        cumulative.push(total);
        for pair in points.windows(2) {
            let ((t0, r0), (t1, r1)) = (pair[0], pair[1]);
            total += (t1 - t0) * (r0 + r1) / 2.0;
            cumulative.push(total);
        }
        RateCurve { points, cumulative }
    }

    /// A constant rate.
    pub fn constant(rate: f64) -> RateCurve {
        RateCurve::new(vec![(0.0, rate)])
    }

    /// The highest rate of the curve.
    pub fn peak(&self) -> f64 {
        self.points.iter().map(|&(_, r)| r).fold(0.0, f64::max)
    }

    /// The offered rate at `t` seconds (after a jump: the rate after it).
    pub fn rate_at(&self, t: f64) -> f64 {
        let p = &self.points;
        // Index of the first point later than t.
        let i = p.partition_point(|&(pt, _)| pt <= t);
        if i == 0 {
            return p[0].1;
        }
        if i == p.len() {
            return p[i - 1].1;
        }
        let ((t0, r0), (t1, r1)) = (p[i - 1], p[i]);
        r0 + (r1 - r0) * (t - t0) / (t1 - t0)
    }

    /// Requests offered from time 0 to `t` (the integral of the rate).
    pub fn offered_by(&self, t: f64) -> f64 {
        let p = &self.points;
        let i = p.partition_point(|&(pt, _)| pt <= t);
        if i == 0 {
            return p[0].1 * t.max(0.0);
        }
        let (t0, r0) = p[i - 1];
        let r = self.rate_at(t);
        self.cumulative[i - 1] + (t - t0) * (r0 + r) / 2.0
    }

    /// The time (seconds) at which the integral of the rate reaches `n`: when request `n`
    /// (from 0) is due. `None` when the rate stays 0 from there on.
    pub fn time_of(&self, n: f64) -> Option<f64> {
        let p = &self.points;
        let first = p[0];
        let before_first = self.cumulative[0];
        if n <= before_first {
            // In the constant stretch before the first point.
            return if n <= 0.0 {
                Some(0.0)
            } else {
                Some(n / first.1)
            };
        }
        // The segment [points[i-1], points[i]] whose cumulative range holds n.
        let i = self.cumulative.partition_point(|&c| c < n);
        if i == self.cumulative.len() {
            // After the last point: the last rate holds.
            let (t_last, r_last) = p[p.len() - 1];
            let rest = n - self.cumulative[i - 1];
            return (r_last > 0.0).then(|| t_last + rest / r_last);
        }
        let ((t0, r0), (t1, r1)) = (p[i - 1], p[i]);
        let need = n - self.cumulative[i - 1];
        let slope = (r1 - r0) / (t1 - t0);
        // Solve r0 τ + slope τ² / 2 = need for the smallest τ ≥ 0.
        let tau = if slope.abs() < 1e-12 {
            need / r0
        } else {
            let disc = (r0 * r0 + 2.0 * slope * need).max(0.0);
            // The numerically stable root of the quadratic.
            2.0 * need / (r0 + disc.sqrt())
        };
        Some((t0 + tau).min(t1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn interpolates_jumps_and_holds() {
        let c = RateCurve::new(vec![(1.0, 100.0), (3.0, 300.0), (3.0, 0.0), (5.0, 0.0)]);
        assert!(close(c.rate_at(0.0), 100.0), "before the first point");
        assert!(close(c.rate_at(2.0), 200.0));
        assert!(close(c.rate_at(3.0), 0.0), "right after the jump");
        assert!(close(c.rate_at(9.0), 0.0), "after the last point");
        assert!(close(c.offered_by(1.0), 100.0));
        assert!(close(c.offered_by(3.0), 500.0));
        assert!(close(c.offered_by(9.0), 500.0));
        assert_eq!(c.time_of(600.0), None, "the rate stays 0");
    }

    #[test]
    fn time_of_inverts_offered_by() {
        for shape in Shape::ALL {
            let c = shape.curve(40.0, 1000.0);
            let total = c.offered_by(40.0);
            let mut last = 0.0;
            for k in (0..total as u64).step_by(97) {
                let t = c.time_of(k as f64).expect("positive rates");
                assert!(t >= last, "{shape:?}: times do not decrease");
                assert!((c.offered_by(t) - k as f64).abs() < 1e-6, "{shape:?} k={k}");
                last = t;
            }
        }
        // A constant rate: request k at k / rate.
        let c = RateCurve::constant(50.0);
        assert!(close(c.time_of(10.0).unwrap(), 0.2));
    }

    #[test]
    fn built_in_shapes_peak_at_the_rate() {
        let d = 40.0;
        let step = Shape::Step.curve(d, 1000.0);
        assert!(close(step.rate_at(5.0), 200.0) && close(step.rate_at(20.0), 1000.0));
        assert!(close(step.rate_at(30.0), 200.0));
        let ramp = Shape::Ramp.curve(d, 1000.0);
        assert!(close(ramp.rate_at(0.0), 100.0) && close(ramp.rate_at(35.0), 1000.0));
        let spike = Shape::Spike.curve(d, 1000.0);
        assert!(close(spike.rate_at(17.0), 1000.0) && close(spike.rate_at(21.0), 200.0));
        let sine = Shape::Sine.curve(d, 1000.0);
        assert!(close(sine.rate_at(0.0), 100.0) && close(sine.rate_at(10.0), 1000.0));
        assert!(close(sine.rate_at(20.0), 100.0));
    }

    #[test]
    fn csv_rows_and_errors_name_the_line() {
        let p = Path::new("trace.csv");
        let c = parse_csv(
            p,
            "seconds,requests_per_second\n# warm-up\n0,10\n\n10, 110\n",
        )
        .unwrap();
        assert!(close(c.rate_at(5.0), 60.0));
        let err = |text: &str| parse_csv(p, text).unwrap_err();
        assert_eq!(
            err("0,10\n5,x\n"),
            "trace.csv:2: requests_per_second \"x\" is not a number ≥ 0 (in \"5,x\")"
        );
        assert!(err("0,10\n1,2,3\n").starts_with("trace.csv:2: expected two fields"));
        assert!(err("0,10\n\n5,-1\n").starts_with("trace.csv:3: requests_per_second"));
        assert!(err("5,10\n1,10\n").starts_with("trace.csv:2: seconds 1 comes after 5"));
        assert!(err("# nothing\n").starts_with("trace.csv: no rows"));
        assert!(err("seconds,rps\n").starts_with("trace.csv:1: seconds \"seconds\""));
    }

    #[test]
    fn names_and_paths() {
        assert_eq!("sine".parse(), Ok(ProfileSpec::Builtin(Shape::Sine)));
        assert_eq!(
            "a/b.CSV".parse(),
            Ok(ProfileSpec::Csv(PathBuf::from("a/b.CSV")))
        );
        assert!("steps".parse::<ProfileSpec>().is_err());
        assert!(ProfileSpec::Builtin(Shape::Step).load(10.0, None).is_err());
    }
}
