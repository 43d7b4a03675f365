//! `--mix`: the request classes a run sends, by relative weight.

use rand::rngs::SmallRng;
use rand::Rng;

use crate::core::{RequestClass, UnknownClass};

/// Relative weights of the request classes, e.g. `small=70,medium=20,large=10`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// `(class, weight)` with weight > 0, in the order given.
    weights: Vec<(RequestClass, u32)>,
    total: u32,
}

impl Mix {
    /// Only `class`.
    pub fn only(class: RequestClass) -> Mix {
        Mix {
            weights: vec![(class, 1)],
            total: 1,
        }
    }

    /// The mean of `value` over the classes, each counted by its share of the mix (e.g. the
    /// mean request weight when `value` gives each class's weight).
    pub fn mean(&self, value: impl Fn(RequestClass) -> f64) -> f64 {
        let sum: f64 = self
            .weights
            .iter()
            .map(|&(class, w)| f64::from(w) * value(class))
            .sum();
        sum / f64::from(self.total)
    }

    /// A class drawn by weight.
    pub(super) fn pick(&self, rng: &mut SmallRng) -> RequestClass {
        let mut ticket = rng.random_range(0..self.total);
        for &(class, weight) in &self.weights {
            if ticket < weight {
                return class;
            }
            ticket -= weight;
        }
        // Unreachable: tickets are below the sum of the weights.
        self.weights[0].0
    }
}

/// Why a `--mix` value is not a [`Mix`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    /// A part without `=`.
    #[error("\"{0}\" is not CLASS=WEIGHT (e.g. small=70)")]
    NotClassWeight(String),
    /// A name that is not a request class.
    #[error(transparent)]
    UnknownClass(#[from] UnknownClass),
    /// A weight that is not a whole number.
    #[error("weight of {class} \"{weight}\" is not a whole number")]
    BadWeight {
        /// The class it weighs.
        class: RequestClass,
        /// The weight as given.
        weight: String,
    },
    /// A class given twice.
    #[error("{0} is given twice")]
    Twice(RequestClass),
    /// Every weight is 0 (or nothing was given); the whole value.
    #[error("\"{0}\" gives no class a weight above 0")]
    NoWeight(String),
    /// The weights add up beyond `u32`.
    #[error("weights are too large")]
    TooLarge,
}

impl std::str::FromStr for Mix {
    type Err = MixError;

    fn from_str(s: &str) -> Result<Mix, MixError> {
        let mut weights: Vec<(RequestClass, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| MixError::NotClassWeight(part.to_string()))?;
            let class: RequestClass = name.trim().parse()?;
            let weight: u32 = weight.trim().parse().map_err(|_| MixError::BadWeight {
                class,
                weight: weight.trim().to_string(),
            })?;
            if weights.iter().any(|&(c, _)| c == class) {
                return Err(MixError::Twice(class));
            }
            if weight > 0 {
                weights.push((class, weight));
            }
        }
        let total = weights
            .iter()
            .try_fold(0u32, |sum, &(_, w)| sum.checked_add(w));
        match total {
            Some(total) if total > 0 => Ok(Mix { weights, total }),
            Some(_) => Err(MixError::NoWeight(s.to_string())),
            None => Err(MixError::TooLarge),
        }
    }
}

/// The request line of `class`, with its `\n`.
pub(super) fn request_line(class: RequestClass) -> &'static [u8] {
    match class {
        RequestClass::Small => b"SMALL\n",
        RequestClass::Medium => b"MEDIUM\n",
        RequestClass::Large => b"LARGE\n",
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn mix_parses_and_rejects() {
        let m: Mix = "small=70,medium=20,large=10".parse().unwrap();
        assert_eq!(m.total, 100);
        assert!("small=0".parse::<Mix>().is_err());
        assert!("tiny=5"
            .parse::<Mix>()
            .unwrap_err()
            .to_string()
            .contains("unknown request class"));
        assert!("small".parse::<Mix>().is_err());
        assert!("small=x".parse::<Mix>().is_err());
        assert!("small=1,small=2".parse::<Mix>().is_err());
        assert!("".parse::<Mix>().is_err());
    }

    #[test]
    fn mean_weighs_by_share() {
        let m: Mix = "small=70,medium=20,large=10".parse().unwrap();
        let weight = |c| match c {
            RequestClass::Small => 1.0,
            RequestClass::Medium => 5.0,
            RequestClass::Large => 10.0,
        };
        assert!((m.mean(weight) - 2.7).abs() < 1e-12);
        assert_eq!(Mix::only(RequestClass::Large).mean(weight), 10.0);
    }

    #[test]
    fn mix_picks_by_weight() {
        let m: Mix = "small=3,large=1".parse().unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let large = (0..4000)
            .filter(|_| m.pick(&mut rng) == RequestClass::Large)
            .count();
        assert!((800..1200).contains(&large), "{large}");
    }
}
