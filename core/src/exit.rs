//! Per-token exit criteria (SPEC §2), checked after core iterations, and the policy around them.

use crate::error::{RavenError, Result};
use crate::params::Param;

/// An exit criterion with its threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Criterion {
    /// Never exit early: run the maximum.
    None,
    /// KL(p_prev ‖ p_cur) < τ.
    Kl(f32),
    /// KL on min-p filtered distributions < τ.
    MinpKl(f32),
    /// |H(p_cur) − H(p_prev)| < τ.
    EntropyDiff(f32),
    /// ‖s − s_prev‖ / ‖s‖ < τ (no coda or head needed).
    LatentDiff(f32),
    /// 1 − cos(s, s_prev) < τ (no coda or head needed).
    Cosine(f32),
    /// The argmax unchanged for τ consecutive checks.
    ArgmaxStability(u32),
    /// A learned exit gate (Ouro): exit at the first step whose cumulative exit probability
    /// reaches q (None: the model's `early_exit_threshold`). With `full`, every step is still
    /// computed (and cached) and the gate only picks which step's output is read, as the
    /// official code does; without it the later steps are not computed.
    Gate {
        /// The threshold q in (0, 1].
        q: Option<f32>,
        /// Compute all steps (the official read-out).
        full: bool,
    },
}

impl Criterion {
    /// Parses `name[:τ]` with SPEC §2's names and defaults.
    pub fn parse(s: &str) -> Result<Criterion> {
        let (name, thr) = match s.split_once(':') {
            Some((n, t)) => (n, Some(t)),
            None => (s, None),
        };
        let f = |default: f32| -> Result<f32> {
            match thr {
                None => Ok(default),
                Some(t) => match t.parse::<f32>() {
                    Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
                    _ => Err(RavenError::param(
                        Param::Exit,
                        format!("threshold \"{t}\" of {name} must be a positive number"),
                    )),
                },
            }
        };
        Ok(match name {
            "none" => {
                if thr.is_some() {
                    return Err(RavenError::param(Param::Exit, "\"none\" takes no threshold"));
                }
                Criterion::None
            }
            "kl" => Criterion::Kl(f(1e-3)?),
            "minp-kl" => Criterion::MinpKl(f(1e-5)?),
            "entropy-diff" => Criterion::EntropyDiff(f(1e-3)?),
            "latent-diff" => Criterion::LatentDiff(f(0.03)?),
            "gate" | "gate-full" => {
                let q = match thr {
                    None => None,
                    Some(_) => {
                        let q = f(1.0)?;
                        if q > 1.0 {
                            return Err(RavenError::param(
                                Param::Exit,
                                format!("{name} threshold {q} is a probability: at most 1"),
                            ));
                        }
                        Some(q)
                    }
                };
                Criterion::Gate {
                    q,
                    full: name == "gate-full",
                }
            }
            "cosine" => Criterion::Cosine(f(1e-3)?),
            "argmax-stability" => match thr {
                None => Criterion::ArgmaxStability(5),
                Some(t) => match t.parse::<u32>() {
                    Ok(v) if v > 0 => Criterion::ArgmaxStability(v),
                    _ => {
                        return Err(RavenError::param(Param::Exit,
                            format!("argmax-stability takes a positive whole number of checks, not \"{t}\""),
                        ))
                    }
                },
            },
            _ => {
                return Err(RavenError::param(Param::Exit,
                    format!(
                        "unknown criterion \"{name}\"; use one of kl, minp-kl, entropy-diff, latent-diff, cosine, argmax-stability, gate, gate-full, none (optionally :threshold)"
                    ),
                ))
            }
        })
    }

    /// The criterion with the model's defaults filled in (the gate's q), or an error naming
    /// the parameter when the model cannot use it (a gate on a model without one).
    pub fn for_model(self, c: &crate::config::Config) -> Result<Criterion> {
        match self {
            Criterion::Gate { q, full } => match c.exit_threshold {
                Some(default) => Ok(Criterion::Gate {
                    q: Some(q.unwrap_or(default)),
                    full,
                }),
                None => Err(RavenError::param(
                    Param::Exit,
                    format!(
                        "this {} model has no exit gate (gate and gate-full are Ouro's); use kl, entropy-diff, latent-diff, …",
                        c.family.name()
                    ),
                )),
            },
            other => Ok(other),
        }
    }

    /// True for the official gate read-out: every step computed, the gate picks the output.
    pub(crate) fn computes_all_steps(self) -> bool {
        matches!(self, Criterion::Gate { full: true, .. })
    }

    /// True when checking needs the coda and head (the next-token distribution).
    pub(crate) fn needs_logits(self) -> bool {
        matches!(
            self,
            Criterion::Kl(_)
                | Criterion::MinpKl(_)
                | Criterion::EntropyDiff(_)
                | Criterion::ArgmaxStability(_)
        )
    }
}

/// When a token stops iterating.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExitPolicy {
    /// The criterion.
    pub criterion: Criterion,
    /// Never exit before this many iterations.
    pub min_steps: usize,
    /// Never run more than this many iterations.
    pub max_steps: usize,
    /// Check every n iterations (1 = after each).
    pub check_every: usize,
}

impl ExitPolicy {
    /// A fixed number of iterations.
    pub fn fixed(steps: usize) -> ExitPolicy {
        ExitPolicy {
            criterion: Criterion::None,
            min_steps: 1,
            max_steps: steps,
            check_every: 1,
        }
    }

    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        if self.max_steps == 0 {
            return Err(RavenError::param(Param::MaxSteps, "must be at least 1"));
        }
        if self.check_every == 0 {
            return Err(RavenError::param(Param::CheckEvery, "must be at least 1"));
        }
        if self.min_steps == 0 {
            return Err(RavenError::param(Param::MinSteps, "must be at least 1"));
        }
        if self.min_steps > self.max_steps {
            return Err(RavenError::param(
                Param::MinSteps,
                format!(
                    "{} is larger than the maximum steps ({})",
                    self.min_steps, self.max_steps
                ),
            ));
        }
        Ok(())
    }
}

/// ‖a − b‖ / ‖a‖ in float32, summed in order (the latent-diff criterion of one position).
pub(crate) fn latent_diff(a: &[f32], b: &[f32]) -> f32 {
    let diff: f32 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt();
    let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    diff / norm
}

fn log_softmax(logits: &[f32], out: &mut Vec<f32>) {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = logits.iter().map(|x| (x - m).exp()).sum();
    let lz = z.ln() + m;
    out.clear();
    out.extend(logits.iter().map(|x| x - lz));
}

/// The running state of one token's criterion (SPEC §2: previous values start from the initial
/// state, a uniform distribution, entropy 100, argmax −1).
pub(crate) struct ExitState {
    criterion: Criterion,
    prev_lp: Vec<f32>,
    cur_lp: Vec<f32>,
    prev_entropy: f32,
    prev_argmax: i64,
    stable: u32,
    prev_s: Vec<f32>,
    /// The gate's remaining mass S and cumulative exit probability.
    survival: f32,
    cdf: f32,
    /// Width of one position's state: latent criteria of a chunk of positions are the mean of
    /// each position's value (the official chunk exit).
    width: usize,
}

impl ExitState {
    /// Starts a token (or a chunk of positions exiting together): `s0` is its initial state,
    /// `width` the state width of one position, `vocab` the distribution size.
    pub fn new(criterion: Criterion, s0: &[f32], width: usize, vocab: usize) -> ExitState {
        let mut st = ExitState {
            criterion,
            prev_lp: Vec::new(),
            cur_lp: Vec::new(),
            prev_entropy: 100.0,
            prev_argmax: -1,
            stable: 0,
            prev_s: Vec::new(),
            survival: 1.0,
            cdf: 0.0,
            width: width.max(1),
        };
        st.reset(s0, vocab);
        st
    }

    /// Restarts for a new token, reusing buffers.
    pub fn reset(&mut self, s0: &[f32], vocab: usize) {
        self.prev_entropy = 100.0;
        self.prev_argmax = -1;
        self.stable = 0;
        self.survival = 1.0;
        self.cdf = 0.0;
        if matches!(self.criterion, Criterion::Kl(_) | Criterion::MinpKl(_)) {
            self.prev_lp.clear();
            self.prev_lp.resize(vocab, -(vocab as f32).ln());
        }
        if matches!(
            self.criterion,
            Criterion::LatentDiff(_) | Criterion::Cosine(_)
        ) {
            self.prev_s.clear();
            self.prev_s.extend_from_slice(s0);
        }
    }

    /// Evaluates the criterion on the raw core output `s`, for distribution criteria the
    /// next-token `logits`, and for the gate its raw value after this step. Returns (criterion
    /// value, exit?); the gate's value is the cumulative exit probability.
    pub fn check(&mut self, s: &[f32], logits: Option<&[f32]>, gate: Option<f32>) -> (f32, bool) {
        match self.criterion {
            Criterion::None => (0.0, false),
            Criterion::Gate { q, .. } => {
                // Ouro: λ_t = σ(g_t), p_t = λ_t·S, S ← S·(1 − λ_t), exit at the first t with
                // Σ p ≥ q (the last step takes the remaining mass: the maximum always exits).
                let g = gate.expect("the gate criterion is only used with a gated model");
                let lambda = 1.0 / (1.0 + (-g).exp());
                self.cdf += lambda * self.survival;
                self.survival *= 1.0 - lambda;
                (self.cdf, self.cdf >= q.unwrap_or(1.0))
            }
            Criterion::LatentDiff(t) => {
                // ‖s − s_prev‖ / ‖s‖ per position, averaged over the positions.
                let rows = (s.len() / self.width).max(1);
                let v: f32 = s
                    .chunks(self.width)
                    .zip(self.prev_s.chunks(self.width))
                    .map(|(a, b)| latent_diff(a, b))
                    .sum();
                self.prev_s.copy_from_slice(s);
                let v = v / rows as f32;
                (v, v < t)
            }
            Criterion::Cosine(t) => {
                let rows = (s.len() / self.width).max(1);
                let mut v = 0.0f32;
                for (a, b) in s.chunks(self.width).zip(self.prev_s.chunks(self.width)) {
                    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
                    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
                    v += 1.0 - dot / na / nb;
                }
                self.prev_s.copy_from_slice(s);
                let v = v / rows as f32;
                (v, v < t)
            }
            Criterion::Kl(t) | Criterion::MinpKl(t) => {
                let logits = logits.expect("distribution criteria get logits");
                log_softmax(logits, &mut self.cur_lp);
                if let Criterion::MinpKl(_) = self.criterion {
                    let v = self.cur_lp.len() as f32;
                    let maxlp = self
                        .cur_lp
                        .iter()
                        .copied()
                        .fold(f32::NEG_INFINITY, f32::max);
                    let pmax = maxlp.exp();
                    let mut sum = 0.0f32;
                    for lp in self.cur_lp.iter_mut() {
                        let p = lp.exp();
                        let q = if p < 0.1 * pmax { 1.0 / v } else { p };
                        *lp = q;
                        sum += q;
                    }
                    for lp in self.cur_lp.iter_mut() {
                        *lp = (*lp / sum).ln();
                    }
                }
                // KL(prev ‖ cur) = Σ p_prev (log p_prev − log p_cur).
                let kl: f32 = self
                    .prev_lp
                    .iter()
                    .zip(&self.cur_lp)
                    .map(|(&lp, &lq)| lp.exp() * (lp - lq))
                    .sum();
                std::mem::swap(&mut self.prev_lp, &mut self.cur_lp);
                (kl, kl < t)
            }
            Criterion::EntropyDiff(t) => {
                let logits = logits.expect("distribution criteria get logits");
                log_softmax(logits, &mut self.cur_lp);
                let h: f32 = -self
                    .cur_lp
                    .iter()
                    .map(|&lp| {
                        let p = lp.exp();
                        p * (p + 1e-10).ln()
                    })
                    .sum::<f32>();
                let v = (h - self.prev_entropy).abs();
                self.prev_entropy = h;
                (v, v < t)
            }
            Criterion::ArgmaxStability(t) => {
                let logits = logits.expect("distribution criteria get logits");
                let am = argmax(logits) as i64;
                self.stable = if am == self.prev_argmax {
                    self.stable + 1
                } else {
                    0
                };
                self.prev_argmax = am;
                (self.stable as f32, self.stable >= t)
            }
        }
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_defaults_and_rejects_bad_input() {
        assert_eq!(Criterion::parse("kl").unwrap(), Criterion::Kl(1e-3));
        assert_eq!(
            Criterion::parse("latent-diff:0.05").unwrap(),
            Criterion::LatentDiff(0.05)
        );
        assert_eq!(
            Criterion::parse("argmax-stability").unwrap(),
            Criterion::ArgmaxStability(5)
        );
        for bad in [
            "klx",
            "kl:-1",
            "kl:0",
            "kl:abc",
            "none:3",
            "argmax-stability:1.5",
            "cosine:nan",
        ] {
            let e = Criterion::parse(bad).unwrap_err();
            assert_eq!(e.invalid_param(), Some(Param::Exit), "{bad}: {e}");
        }
    }
}
