//! Next-token sampling: greedy, temperature, top-k, top-p, min-p and a repetition penalty.

use crate::error::{RavenError, Result};
use crate::exit::argmax;
use crate::params::Param;
use crate::rng::Rng;

/// How the next token is drawn from the logits.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1 = off).
    pub top_p: f32,
    /// Drop tokens below min_p × the top probability (0 = off).
    pub min_p: f32,
    /// Penalty for tokens among the last `repeat_last_n` (1 = off), as in llama.cpp/HF.
    pub repeat_penalty: f32,
    /// Window of the repetition penalty.
    pub repeat_last_n: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Checks ranges, naming the option.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(RavenError::param(
                Param::Temperature,
                format!("{} must be a finite number ≥ 0", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(RavenError::param(
                Param::TopP,
                format!("{} must be in (0, 1]", self.top_p),
            ));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return Err(RavenError::param(
                Param::MinP,
                format!("{} must be in [0, 1)", self.min_p),
            ));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(RavenError::param(
                Param::RepeatPenalty,
                format!("{} must be a positive number", self.repeat_penalty),
            ));
        }
        Ok(())
    }
}

/// Draws the next token from `logits` given the `history` of tokens so far.
pub fn sample(
    logits: &[f32],
    history: &[u32],
    p: &SamplingParams,
    rng: &mut Rng,
    scratch: &mut Vec<(f32, u32)>,
) -> u32 {
    let penalized;
    let logits = if p.repeat_penalty != 1.0 && !history.is_empty() {
        let mut l = logits.to_vec();
        let from = history.len().saturating_sub(p.repeat_last_n);
        let mut seen = history[from..].to_vec();
        seen.sort_unstable();
        seen.dedup();
        for &t in &seen {
            if let Some(x) = l.get_mut(t as usize) {
                *x = if *x > 0.0 {
                    *x / p.repeat_penalty
                } else {
                    *x * p.repeat_penalty
                };
            }
        }
        penalized = l;
        &penalized[..]
    } else {
        logits
    };
    if p.temperature == 0.0 {
        return argmax(logits) as u32;
    }
    // Candidates sorted by logit, then truncated by top-k, softmax at temperature, min-p, top-p.
    scratch.clear();
    scratch.extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
    let k = if p.top_k == 0 {
        scratch.len()
    } else {
        p.top_k.min(scratch.len())
    };
    if k < scratch.len() {
        scratch.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        scratch.truncate(k);
    }
    scratch.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let m = scratch[0].0;
    let mut sum = 0.0f32;
    for c in scratch.iter_mut() {
        c.0 = ((c.0 - m) / p.temperature).exp();
        sum += c.0;
    }
    scratch.iter_mut().for_each(|c| c.0 /= sum);
    if p.min_p > 0.0 {
        let cut = scratch[0].0 * p.min_p;
        let keep = scratch.iter().take_while(|c| c.0 >= cut).count().max(1);
        scratch.truncate(keep);
    }
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = scratch.len();
        for (i, c) in scratch.iter().enumerate() {
            acc += c.0;
            if acc >= p.top_p {
                keep = i + 1;
                break;
            }
        }
        scratch.truncate(keep.max(1));
    }
    let total: f32 = scratch.iter().map(|c| c.0).sum();
    let mut u = rng.uniform() * total;
    for c in scratch.iter() {
        if u < c.0 {
            return c.1;
        }
        u -= c.0;
    }
    scratch.last().map(|c| c.1).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax_and_sampling_respects_top_k() {
        let logits = [0.0, 3.0, 1.0, 2.9];
        let mut rng = Rng::new(1);
        let mut s = Vec::new();
        assert_eq!(
            sample(&logits, &[], &SamplingParams::greedy(), &mut rng, &mut s),
            1
        );
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        };
        for _ in 0..200 {
            let t = sample(&logits, &[], &p, &mut rng, &mut s);
            assert!(t == 1 || t == 3);
        }
        // A strong repetition penalty moves greedy off the repeated token.
        let rp = SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        assert_eq!(sample(&logits, &[1], &rp, &mut rng, &mut s), 3);
    }
}
