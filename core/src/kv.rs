//! The KV cache: one slot per block application (SPEC §2), allocated once for the session's
//! context, with the reference's three lookup strategies.

use raven_quant::KvRows;
pub use raven_quant::KvType;

use crate::config::Config;
use crate::error::{RavenError, Result};
use crate::params::Param;

/// Parses a cache element type (`f32`, `f16`, `q8_0`).
pub fn parse_kv_type(s: &str) -> Result<KvType> {
    KvType::from_name(s).ok_or_else(|| {
        RavenError::param(
            Param::CacheType,
            format!("\"{s}\" is not one of f32, f16, q8_0"),
        )
    })
}

/// Values per stored run of the cache: a key/value row is cut into runs of this many
/// columns, and each run is stored position after position (see [`KvCache`]). One head when
/// heads hold a multiple of 32 values; 32 (several small heads) when heads divide 32, so Q8_0
/// blocks never span two positions; otherwise one head.
fn run_width(c: &Config) -> usize {
    let (d, h) = (c.head_dim(), c.kv_width());
    if d.is_multiple_of(32) || !(32 % d == 0 && h.is_multiple_of(32)) {
        d
    } else {
        32
    }
}

/// Checks that the model's key/value rows can be stored as `ty` (Q8_0 needs heads of a
/// multiple of 32 values, or heads that divide 32, as llama.cpp's quantized caches).
pub fn validate_kv_type(ty: KvType, c: &Config) -> Result<()> {
    if ty == KvType::Q8_0 && !run_width(c).is_multiple_of(32) {
        return Err(RavenError::param(
            Param::CacheType,
            format!(
                "q8_0 stores blocks of 32 values of one head; this model's heads hold {} values \
                 ({} per key/value row): use f16 or f32",
                c.head_dim(),
                c.kv_width()
            ),
        ));
    }
    Ok(())
}

/// How core-block cache slots are assigned and looked up (SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStrategy {
    /// One slot per (layer, iteration); a deeper slot holds only the tokens that reached it.
    Full,
    /// KV sharing with a budget of K core slots: slot `P + ((i·C + j) mod K)`.
    Compress(usize),
    /// Full storage; a token lacking the current slot is read from the deepest iteration it
    /// computed for the same core layer. The number is the core layer count C.
    Latest(usize),
}

impl CacheStrategy {
    /// Parses `full`, `compress-sK`, `latest-mC`.
    pub fn parse(s: &str) -> Result<CacheStrategy> {
        let num = |rest: &str| -> Result<usize> {
            rest.parse::<usize>()
                .ok()
                .filter(|&k| k > 0)
                .ok_or_else(|| {
                    RavenError::param(
                        Param::Cache,
                        format!("\"{s}\": expected a positive number after the prefix"),
                    )
                })
        };
        if s == "full" {
            Ok(CacheStrategy::Full)
        } else if let Some(r) = s.strip_prefix("compress-s") {
            Ok(CacheStrategy::Compress(num(r)?))
        } else if let Some(r) = s.strip_prefix("latest-m") {
            Ok(CacheStrategy::Latest(num(r)?))
        } else {
            Err(RavenError::param(Param::Cache,
                format!("\"{s}\" is not one of full, compress-sK (e.g. compress-s4), latest-mC (e.g. latest-m4)"),
            ))
        }
    }

    /// Checks the strategy against the model.
    pub fn validate(self, c: &Config) -> Result<()> {
        match self {
            CacheStrategy::Latest(m) if m != c.n_core => Err(RavenError::param(
                Param::Cache,
                format!(
                    "latest-m{m}: the modulus must equal the model's core layer count ({})",
                    c.n_core
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Number of core slots for at most `max_steps` iterations.
    pub fn core_slots(self, c: &Config, max_steps: usize) -> usize {
        match self {
            CacheStrategy::Full | CacheStrategy::Latest(_) => max_steps.saturating_mul(c.n_core),
            CacheStrategy::Compress(k) => k.min(max_steps.saturating_mul(c.n_core)).max(1),
        }
    }

    /// Bytes of K and V stored as `ty` for a context of `ctx` tokens and at most `max_steps`
    /// iterations.
    pub fn bytes(self, c: &Config, ty: KvType, ctx: usize, max_steps: usize) -> u64 {
        // Saturating: an absurd request reports u64::MAX bytes rather than wrapping.
        let rows = [ctx as u64, 2].iter().fold(
            (c.n_prelude as u64)
                .saturating_add(self.core_slots(c, max_steps) as u64)
                .saturating_add(c.n_coda as u64),
            |acc, &x| acc.saturating_mul(x),
        );
        // Per row: `ty.bytes` of one row (no overflow: a row is small).
        rows.saturating_mul(ty.bytes(c.kv_width() as u64))
    }
}

impl std::fmt::Display for CacheStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheStrategy::Full => write!(f, "full"),
            CacheStrategy::Compress(k) => write!(f, "compress-s{k}"),
            CacheStrategy::Latest(m) => write!(f, "latest-m{m}"),
        }
    }
}

/// Which block application a cache access belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Prelude block j.
    Prelude(usize),
    /// Core block `layer` at iteration `iter` (0-based).
    Core {
        /// Iteration.
        iter: usize,
        /// Core layer.
        layer: usize,
    },
    /// Coda block j.
    Coda(usize),
}

/// Keys and values of every block application for positions `0..ctx`.
pub struct KvCache {
    strategy: CacheStrategy,
    n_prelude: usize,
    n_core: usize,
    core_slots: usize,
    max_steps: usize,
    h: usize,
    /// Columns per stored run ([`run_width`]).
    w: usize,
    ctx: usize,
    n_slots: usize,
    store: Store,
    present: Vec<bool>,
    /// Deepest iteration computed per (core layer, position), for `latest`.
    depth: Vec<u32>,
    len: usize,
    /// While drafting (speculative decoding, `full` strategy): core queries read positions
    /// below `.0` at iteration `iter + .1`.
    draft_view: Option<(usize, usize)>,
}

/// Keys and values in the cache's element type.
enum Store {
    F32 {
        k: Vec<f32>,
        v: Vec<f32>,
    },
    F16 {
        k: Vec<u16>,
        v: Vec<u16>,
    },
    Q8_0 {
        k: Vec<i8>,
        kd: Vec<u16>,
        v: Vec<i8>,
        vd: Vec<u16>,
    },
}

impl Store {
    /// Zeroed storage for `n` values of keys and of values, or `None` when it cannot be
    /// allocated.
    fn new(ty: KvType, n: usize) -> Option<Store> {
        Some(match ty {
            KvType::F32 => Store::F32 {
                k: filled(n, 0.0)?,
                v: filled(n, 0.0)?,
            },
            KvType::F16 => Store::F16 {
                k: filled(n, 0)?,
                v: filled(n, 0)?,
            },
            KvType::Q8_0 => {
                let nb = n / raven_quant::blocks::QK;
                Store::Q8_0 {
                    k: filled(n, 0)?,
                    kd: filled(nb, 0)?,
                    v: filled(n, 0)?,
                    vd: filled(nb, 0)?,
                }
            }
        })
    }

    fn rows(&self) -> KvRows<'_> {
        match self {
            Store::F32 { k, v } => KvRows::F32 { k, v },
            Store::F16 { k, v } => KvRows::F16 { k, v },
            Store::Q8_0 { k, kd, v, vd } => KvRows::Q8_0 { k, kd, v, vd },
        }
    }

    /// Stores rows `k` and `v` at value offset `off`.
    fn write(&mut self, off: usize, key: &[f32], value: &[f32]) {
        let n = key.len();
        match self {
            Store::F32 { k, v } => {
                k[off..off + n].copy_from_slice(key);
                v[off..off + n].copy_from_slice(value);
            }
            Store::F16 { k, v } => {
                raven_quant::store_f16(key, &mut k[off..off + n]);
                raven_quant::store_f16(value, &mut v[off..off + n]);
            }
            Store::Q8_0 { k, kd, v, vd } => {
                let (b, nb) = (off / raven_quant::blocks::QK, n / raven_quant::blocks::QK);
                raven_quant::store_q8_0(key, &mut k[off..off + n], &mut kd[b..b + nb]);
                raven_quant::store_q8_0(value, &mut v[off..off + n], &mut vd[b..b + nb]);
            }
        }
    }
}

/// `vec![x; n]`, or `None` when the allocation fails. The trial reservation is only address
/// space; `vec!` then allocates zeroed memory lazily, as before.
fn filled<T: Clone>(n: usize, x: T) -> Option<Vec<T>> {
    let mut probe: Vec<T> = Vec::new();
    probe.try_reserve_exact(n).ok()?;
    drop(probe);
    Some(vec![x; n])
}

impl KvCache {
    /// Allocates the cache for `ctx` positions and at most `max_steps` core iterations, keys
    /// and values stored as `ty`.
    pub fn new(
        c: &Config,
        strategy: CacheStrategy,
        ty: KvType,
        ctx: usize,
        max_steps: usize,
    ) -> Result<KvCache> {
        strategy.validate(c)?;
        validate_kv_type(ty, c)?;
        if max_steps == 0 {
            return Err(RavenError::param(Param::MaxSteps, "must be at least 1"));
        }
        let core_slots = strategy.core_slots(c, max_steps);
        // Sizes are checked and the buffers allocated fallibly: a huge --steps or context is an
        // error naming the size, not an overflow or an out-of-memory abort.
        let too_large = || {
            RavenError::arg(
                "KV cache size",
                format!(
                    "{ctx} positions × {max_steps} iterations need {} bytes of keys and values, \
                     more than can be allocated (use fewer iterations, a smaller context, \
                     a compress-sK cache or a smaller cache type)",
                    strategy.bytes(c, ty, ctx, max_steps)
                ),
            )
        };
        let n_slots = c
            .n_prelude
            .checked_add(core_slots)
            .and_then(|x| x.checked_add(c.n_coda))
            .ok_or_else(too_large)?;
        let positions = n_slots.checked_mul(ctx).ok_or_else(too_large)?;
        let floats = positions.checked_mul(c.kv_width()).ok_or_else(too_large)?;
        let depth_len = c.n_core.checked_mul(ctx).ok_or_else(too_large)?;
        Ok(KvCache {
            strategy,
            n_prelude: c.n_prelude,
            n_core: c.n_core,
            core_slots,
            max_steps,
            h: c.kv_width(),
            w: run_width(c),
            ctx,
            n_slots,
            store: Store::new(ty, floats).ok_or_else(too_large)?,
            present: filled(positions, false).ok_or_else(too_large)?,
            depth: filled(depth_len, 0).ok_or_else(too_large)?,
            len: 0,
            draft_view: None,
        })
    }

    /// The strategy.
    pub fn strategy(&self) -> CacheStrategy {
        self.strategy
    }
    /// Positions the cache can hold.
    pub fn ctx(&self) -> usize {
        self.ctx
    }
    /// Maximum core iterations it was sized for.
    pub fn max_steps(&self) -> usize {
        self.max_steps
    }
    /// Tokens committed so far (the next position).
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Bytes held by keys and values.
    pub fn bytes(&self) -> u64 {
        match &self.store {
            Store::F32 { k, v } => (k.len() + v.len()) as u64 * 4,
            Store::F16 { k, v } => (k.len() + v.len()) as u64 * 2,
            Store::Q8_0 { k, kd, v, vd } => (k.len() + v.len() + 2 * (kd.len() + vd.len())) as u64,
        }
    }

    /// The element type of keys and values.
    pub fn kv_type(&self) -> KvType {
        self.store.rows().kv_type()
    }

    /// Marks positions `..len` as the cached sequence (after they have been written).
    pub fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    /// Forgets positions `len..` (for speculative decoding's rollback and for reuse).
    pub fn truncate(&mut self, len: usize) {
        for s in 0..self.n_slots {
            for p in len..self.ctx.min(self.len.max(len)) {
                self.present[s * self.ctx + p] = false;
            }
        }
        for l in 0..self.n_core {
            for p in len..self.ctx {
                self.depth[l * self.ctx + p] = 0;
            }
        }
        self.len = self.len.min(len);
    }

    fn slot_index(&self, slot: Slot) -> usize {
        match slot {
            Slot::Prelude(j) => j,
            Slot::Core { iter, layer } => {
                let o = iter * self.n_core + layer;
                match self.strategy {
                    CacheStrategy::Compress(k) => self.n_prelude + o % k.min(self.core_slots),
                    _ => {
                        assert!(
                            iter < self.max_steps,
                            "iteration beyond the cache's max_steps"
                        );
                        self.n_prelude + o
                    }
                }
            }
            Slot::Coda(j) => self.n_prelude + self.core_slots + j,
        }
    }

    /// Offset of position `pos` of slot index `s`: its first run's first value (see
    /// [`KvCache::head_col`] for the others).
    fn row(&self, s: usize, pos: usize) -> usize {
        s * self.ctx * self.h + pos * self.w
    }

    /// Stores the rows of slot index `s` at `pos`: run after run.
    fn write_row(&mut self, s: usize, pos: usize, k: &[f32], v: &[f32]) {
        assert!(
            k.len() == self.h && v.len() == self.h,
            "KvCache::write: rows of {}",
            self.h
        );
        let (w, run) = (self.w, self.ctx * self.w);
        for (g, (k, v)) in k.chunks_exact(w).zip(v.chunks_exact(w)).enumerate() {
            let off = self.row(s, pos) + g * run;
            self.store.write(off, k, v);
        }
    }

    /// Where the values of the key/value head starting at column `col0` of a row lie relative
    /// to a position's offset (from [`KvCache::visible_offsets`]): attention reads that head at
    /// `offset + head_col(col0) ..` for `d` values.
    pub(crate) fn head_col(&self, col0: usize) -> usize {
        (col0 / self.w) * self.ctx * self.w + col0 % self.w
    }

    /// Stores key and value rows (h values each) of position `pos` in `slot`.
    pub fn write(&mut self, slot: Slot, pos: usize, k: &[f32], v: &[f32]) {
        let s = self.slot_index(slot);
        self.write_row(s, pos, k, v);
        self.present[s * self.ctx + pos] = true;
        if let Slot::Core { iter, layer } = slot {
            let d = &mut self.depth[layer * self.ctx + pos];
            *d = (*d).max(iter as u32);
            if iter == 0 {
                *d = 0;
            }
        }
    }

    /// Fills positions `0..n` of every slot (every iteration, every layer) with random rows
    /// and marks them cached, as if `n` tokens had run the cache's `max_steps` iterations: a
    /// long context for benchmarks without running its prompt (decoding's cost does not depend
    /// on the cached values). Panics when `n` exceeds the context.
    #[doc(hidden)]
    pub fn fill_synthetic(&mut self, n: usize, seed: u64) {
        assert!(
            n <= self.ctx,
            "fill_synthetic: {n} positions in a context of {}",
            self.ctx
        );
        let mut rng = crate::rng::Rng::new(seed);
        let mut k = vec![0f32; self.h];
        let mut v = vec![0f32; self.h];
        for s in 0..self.n_slots {
            for p in 0..n {
                k.iter_mut()
                    .chain(v.iter_mut())
                    .for_each(|x| *x = rng.normal());
                self.write_row(s, p, &k, &v);
                self.present[s * self.ctx + p] = true;
            }
        }
        let deepest = self.max_steps.saturating_sub(1) as u32;
        for l in 0..self.n_core {
            self.depth[l * self.ctx..l * self.ctx + n].fill(deepest);
        }
        self.len = n;
    }

    /// Speculative drafting with the `full` strategy: until reset with `None`, a core query at
    /// iteration `i` reads the positions below `below` at iteration `i + shift` (the deep
    /// entries the full-depth passes left there) instead of `i`. A draft of `d` iterations then
    /// sees what the last `d` iterations of a full pass see, as a compressed cache gives it, so
    /// its guesses agree far more often; the verification pass reads the cache as usual, so
    /// the output does not change. Other strategies ignore this.
    pub fn set_draft_view(&mut self, view: Option<(usize, usize)>) {
        self.draft_view = view;
    }

    /// The cached positions a query at position `p` in `slot` attends to, in position order:
    /// positions `0..=p` that hold an entry for that slot (`full`, `compress`), or the deepest
    /// entry of the same core layer (`latest`); as offsets into [`KvCache::rows`] to which a
    /// head's [`KvCache::head_col`] is added, into `out` (cleared first). One walk per token
    /// serves every head.
    pub fn visible_offsets(&self, slot: Slot, p: usize, out: &mut Vec<usize>) {
        out.clear();
        match (self.strategy, slot, self.draft_view) {
            (CacheStrategy::Latest(_), Slot::Core { iter, layer }, _) => {
                for q in 0..=p {
                    let it = (self.depth[layer * self.ctx + q] as usize).min(iter);
                    let s = self.slot_index(Slot::Core { iter: it, layer });
                    if self.present[s * self.ctx + q] {
                        out.push(self.row(s, q));
                    }
                }
            }
            (CacheStrategy::Full, Slot::Core { iter, layer }, Some((below, shift))) => {
                let s = self.slot_index(slot);
                let deep = self.slot_index(Slot::Core {
                    iter: (iter + shift).min(self.max_steps - 1),
                    layer,
                });
                for q in 0..=p {
                    let sl = if q < below { deep } else { s };
                    if self.present[sl * self.ctx + q] {
                        out.push(self.row(sl, q));
                    }
                }
            }
            _ => {
                let s = self.slot_index(slot);
                let present = &self.present[s * self.ctx..s * self.ctx + p + 1];
                out.extend(
                    present
                        .iter()
                        .enumerate()
                        .filter(|(_, &x)| x)
                        .map(|(q, _)| self.row(s, q)),
                );
            }
        }
    }

    /// Every cached key and value, in the cache's element type. Layout: slot after slot; within
    /// a slot, a row's columns in runs of [`run_width`] (a head, or the heads of 32 columns),
    /// each run stored for every position in turn: the values one head reads lie together,
    /// position after position, so attention streams them (see
    /// [`KvCache::visible_offsets`], [`KvCache::head_col`]).
    pub fn rows(&self) -> KvRows<'_> {
        self.store.rows()
    }
}
