//! Weight matrices, activations and the matrix product the model runs on.

use std::ops::Range;

use crate::arch::{self, F32View, Kernels, Q8View};
use crate::blocks::{self, Q4_0_BYTES, Q8_0_BYTES, QK};
use crate::kv::KvRows;
use crate::layout::GROUP;
use crate::packed::PackedMatrix;
use crate::quantize::dequantize_unchecked;
use crate::{GgmlType, QuantError};

/// A weight matrix view: `rows` rows of `cols` values, row-major, each row
/// `ty.row_bytes(cols)` bytes, borrowed (typically from a memory map, any alignment).
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    /// Element type.
    pub ty: GgmlType,
    /// Number of rows.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    /// `rows · ty.row_bytes(cols)` bytes.
    pub data: &'a [u8],
}

impl<'a> Matrix<'a> {
    /// A view of `data` as `rows × cols` values of type `ty`; fails when `cols` is not a whole
    /// number of blocks or `data` is not exactly the size of the matrix.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, QuantError> {
        let block = ty.block_size();
        if !cols.is_multiple_of(block) {
            return Err(QuantError::NotBlockMultiple { ty, n: cols, block });
        }
        let expected = (cols / block)
            .checked_mul(ty.type_size())
            .and_then(|rb| rb.checked_mul(rows))
            .ok_or(QuantError::LengthMismatch {
                what: "matrix data",
                ty,
                expected: usize::MAX,
                got: data.len(),
            })?;
        if data.len() != expected {
            return Err(QuantError::LengthMismatch {
                what: "matrix data",
                ty,
                expected,
                got: data.len(),
            });
        }
        Ok(Matrix {
            ty,
            rows,
            cols,
            data,
        })
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() * self.ty.type_size()
    }

    /// The bytes of row `r`, or `None` past the last row.
    pub fn row(&self, r: usize) -> Option<&'a [u8]> {
        let rb = self.row_bytes();
        self.data.get(r.checked_mul(rb)?..(r + 1).checked_mul(rb)?)
    }

    /// Dequantizes row `r` into `out` (`cols` values), e.g. to look up an embedding.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), QuantError> {
        let row = self.row(r).ok_or(QuantError::LengthMismatch {
            what: "row index",
            ty: self.ty,
            expected: self.rows,
            got: r,
        })?;
        crate::dequantize_row(self.ty, row, out)
    }
}

/// Pairs a weight type with the type its activations take in the dot product: the pairing of
/// ggml's `vec_dot_type`, in the type system. Implemented by the block and element types.
pub trait VecDot {
    /// The weight element type.
    const WEIGHT: GgmlType;
    /// What a token vector becomes before multiplying with these weights
    /// ([`blocks::BlockQ8_0`] or `f32`).
    type Activation: ActivationType;
}

/// A form token vectors take in [`Activations`].
pub trait ActivationType {
    /// Its element type: Q8_0 or F32.
    const TYPE: GgmlType;
}

impl ActivationType for blocks::BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
}
impl ActivationType for f32 {
    const TYPE: GgmlType = GgmlType::F32;
}

macro_rules! vec_dot {
    ($w:ty, $g:ident, $a:ty) => {
        impl VecDot for $w {
            const WEIGHT: GgmlType = GgmlType::$g;
            type Activation = $a;
        }
    };
}
vec_dot!(blocks::BlockQ4_0, Q4_0, blocks::BlockQ8_0);
vec_dot!(blocks::BlockQ8_0, Q8_0, blocks::BlockQ8_0);
vec_dot!(f32, F32, f32);
vec_dot!(half::f16, F16, f32);
vec_dot!(half::bf16, BF16, f32);
vec_dot!(blocks::BlockQ4_1, Q4_1, f32);
vec_dot!(blocks::BlockQ5_0, Q5_0, f32);
vec_dot!(blocks::BlockQ5_1, Q5_1, f32);
vec_dot!(blocks::BlockQ8_1, Q8_1, f32);
vec_dot!(blocks::BlockQ4K, Q4K, f32);
vec_dot!(blocks::BlockQ6K, Q6K, f32);

/// The activation type (`VecDot::Activation::TYPE`) of weights of type `ty`, at run time:
/// Q8_0 for Q4_0 and Q8_0 weights, F32 for every other type.
pub fn activation_type(ty: GgmlType) -> GgmlType {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q8_0 => GgmlType::Q8_0,
        _ => GgmlType::F32,
    }
}

/// True when [`matmul`] supports weights of type `ty`: F32, F16, BF16, Q8_0, Q4_0 with SIMD
/// kernels; Q4_1, Q5_0, Q5_1, Q8_1, Q4_K, Q6_K by dequantizing (slower).
pub fn can_matmul(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_1 | Q4K | Q6K
    )
}

/// `n` token vectors of `cols` values in the form a weight type multiplies with
/// ([`activation_type`]). Buffers are reused: after the first `prepare` of a given size,
/// preparing again allocates nothing.
#[derive(Default)]
pub struct Activations {
    n: usize,
    cols: usize,
    ty: Option<GgmlType>,
    x: Vec<f32>,
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<i32>,
}

impl Activations {
    /// Empty activations (`n() == 0`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `n` tokens of `cols` values from `x` (token after token) and converts them for
    /// weights of type `for_weights`: quantized per 32-value block to Q8_0 with ggml's reference
    /// rounding (identical in every instruction set) for Q4_0/Q8_0, copied as f32 otherwise.
    ///
    /// # Panics
    /// When `x.len() != n · cols`, or when Q8_0 is needed and `cols` is not a multiple of 32
    /// (such weights cannot exist: [`Matrix::new`] refuses them).
    pub fn prepare(&mut self, x: &[f32], n: usize, cols: usize, for_weights: GgmlType) {
        assert_eq!(
            x.len(),
            n * cols,
            "Activations::prepare: {} values for {n} tokens of {cols}",
            x.len()
        );
        let ty = activation_type(for_weights);
        self.n = n;
        self.cols = cols;
        self.ty = Some(ty);
        if ty == GgmlType::Q8_0 {
            assert!(
                cols.is_multiple_of(QK),
                "Activations::prepare: {cols} values are not whole Q8_0 blocks"
            );
            let nb = n * cols / QK;
            self.qs.resize(n * cols, 0);
            self.d.resize(nb, 0.0);
            self.s.resize(nb, 0);
            (arch::kernels().quantize_q8)(x, &mut self.qs, &mut self.d, &mut self.s);
        } else {
            self.x.clear();
            self.x.extend_from_slice(x);
        }
    }

    /// Number of tokens.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Values per token.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The form the tokens are held in (Q8_0 or F32), `None` before the first `prepare`.
    pub fn activation_type(&self) -> Option<GgmlType> {
        self.ty
    }

    pub(crate) fn q8(&self) -> Q8View<'_> {
        Q8View {
            qs: &self.qs,
            d: &self.d,
            s: &self.s,
            n: self.n,
            nb: self.cols / QK,
        }
    }

    pub(crate) fn f32(&self) -> F32View<'_> {
        F32View {
            x: &self.x,
            n: self.n,
            cols: self.cols,
        }
    }
}

/// The weights [`matmul`] takes: a plain [`Matrix`] or a [`PackedMatrix`] from
/// [`crate::repack`]. `&Matrix` and `&PackedMatrix` convert into it.
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    /// Rows as stored in the file.
    Plain(Matrix<'a>),
    /// Rows repacked at load time.
    Packed(&'a PackedMatrix),
}

impl<'a> Weights<'a> {
    /// Element type of the original matrix.
    pub fn ty(&self) -> GgmlType {
        match self {
            Weights::Plain(m) => m.ty,
            Weights::Packed(p) => p.ty(),
        }
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        match self {
            Weights::Plain(m) => m.rows,
            Weights::Packed(p) => p.rows(),
        }
    }
    /// Values per row.
    pub fn cols(&self) -> usize {
        match self {
            Weights::Plain(m) => m.cols,
            Weights::Packed(p) => p.cols(),
        }
    }
}

impl<'a> From<&Matrix<'a>> for Weights<'a> {
    fn from(m: &Matrix<'a>) -> Self {
        Weights::Plain(*m)
    }
}
impl<'a> From<&'a PackedMatrix> for Weights<'a> {
    fn from(p: &'a PackedMatrix) -> Self {
        Weights::Packed(p)
    }
}

/// `out[t · rows.len() + (r − rows.start)] = dot(row r of w, token t of act)` for every token
/// `t` in `0..act.n()` and row `r` in `rows`. Each weight row is read once for all tokens
/// (tokens are tiled inside), so a prompt is a matrix-matrix product. Single-threaded: callers
/// split the rows across threads; ranges that are multiples of 16 suit packed matrices best.
///
/// # Panics
/// When `act` was prepared for another activation type or column count, `rows` is out of
/// range, `out` is shorter than `act.n() · rows.len()`, or the type is not [`can_matmul`].
pub fn matmul<'w>(
    w: impl Into<Weights<'w>>,
    act: &Activations,
    rows: Range<usize>,
    out: &mut [f32],
) {
    matmul_with(arch::kernels(), w.into(), act, rows, out)
}

pub(crate) fn matmul_with(
    k: &Kernels,
    w: Weights<'_>,
    act: &Activations,
    rows: Range<usize>,
    out: &mut [f32],
) {
    let ty = w.ty();
    assert!(can_matmul(ty), "matmul: {ty} weights are not supported");
    assert_eq!(
        act.cols,
        w.cols(),
        "matmul: activations have {} values, {ty} weights {}",
        act.cols,
        w.cols()
    );
    assert_eq!(
        act.ty,
        Some(activation_type(ty)),
        "matmul: activations were prepared as {:?}, {ty} weights need {}",
        act.ty,
        activation_type(ty)
    );
    assert!(
        rows.start <= rows.end && rows.end <= w.rows(),
        "matmul: rows {rows:?} of {}",
        w.rows()
    );
    let m = rows.len();
    assert!(
        out.len() >= act.n * m,
        "matmul: output of {} for {} tokens × {m} rows",
        out.len(),
        act.n
    );
    if m == 0 || act.n == 0 {
        return;
    }
    // Tile so that a block of weight rows (~128 KiB) and a chunk of tokens (~128 KiB) meet in
    // L2: each weight row comes from memory once, activations from cache. With a single chunk
    // of tokens there is nothing to reuse and all rows go to the kernel at once (the packed
    // kernels then walk distant rows side by side, see `stream_groups!`).
    let row_bytes = (w.cols() / ty.block_size() * ty.type_size()).max(1);
    let tok_bytes = if activation_type(ty) == GgmlType::Q8_0 {
        act.cols
    } else {
        act.cols * 4
    }
    .max(1);
    // Sets that take bigger token tiles (AVX-512 VNNI, AMX, i8mm) keep a group's weights in
    // cache themselves while they walk the tile's tokens, so they get all rows at once. (With
    // 4, AVX-512 VNNI got the 17920-column down projection's 8 tokens in two halves, each
    // half-speed: 1.47 ms for 8 tokens on 2 threads, 1.14 ms in one call.)
    let tb = (128 * 1024 / tok_bytes).max(k.token_tile) / 4 * 4;
    let rb = if act.n <= tb || k.token_tile > 4 {
        usize::MAX
    } else {
        (128 * 1024 / row_bytes).max(GROUP) / GROUP * GROUP
    };
    let mut r0 = rows.start;
    while r0 < rows.end {
        let r1 = (r0 / rb + 1).saturating_mul(rb).min(rows.end);
        let mut t0 = 0;
        while t0 < act.n {
            let t1 = (t0 + tb).min(act.n);
            let out = &mut out[t0 * m + (r0 - rows.start)..];
            match activation_type(ty) {
                GgmlType::Q8_0 => {
                    let a = act.q8().tokens(t0..t1);
                    match w {
                        Weights::Packed(p) => matmul_packed(k, p, a, r0..r1, out, m),
                        Weights::Plain(w) => {
                            let data = &w.data[r0 * row_bytes..r1 * row_bytes];
                            let f = if ty == GgmlType::Q4_0 {
                                k.mm_q4_0
                            } else {
                                k.mm_q8_0
                            };
                            f(data, r1 - r0, a, out, m)
                        }
                    }
                }
                _ => {
                    let a = act.f32().tokens(t0..t1);
                    let Weights::Plain(w) = w else {
                        unreachable!("only Q4_0 and Q8_0 are packed")
                    };
                    let data = &w.data[r0 * row_bytes..r1 * row_bytes];
                    match ty {
                        GgmlType::F32 => (k.mm_f32)(data, r1 - r0, a, out, m),
                        GgmlType::F16 => (k.mm_f16)(data, r1 - r0, a, out, m),
                        GgmlType::BF16 => (k.mm_bf16)(data, r1 - r0, a, out, m),
                        _ => matmul_dequantized(k, ty, data, r1 - r0, a, out, m),
                    }
                }
            }
            t0 = t1;
        }
        r0 = r1;
    }
}

/// Slow path: dequantize 256 values at a time and dot them with every token.
fn matmul_dequantized(
    k: &Kernels,
    ty: GgmlType,
    data: &[u8],
    m: usize,
    act: F32View<'_>,
    out: &mut [f32],
    ldo: usize,
) {
    let cols = act.cols;
    let chunk = 256;
    let chunk_bytes = chunk / ty.block_size() * ty.type_size();
    let mut buf = [0f32; 256];
    for (r, row) in data.chunks_exact(data.len() / m).enumerate() {
        for t in 0..act.n {
            out[t * ldo + r] = 0.0;
        }
        for (c, src) in row.chunks(chunk_bytes).enumerate() {
            let vals = src.len() / ty.type_size() * ty.block_size();
            dequantize_unchecked(ty, src, &mut buf[..vals]);
            for t in 0..act.n {
                out[t * ldo + r] +=
                    (k.dot_f32)(&buf[..vals], &act.x[t * cols + c * chunk..][..vals]);
            }
        }
    }
}

fn matmul_packed(
    k: &Kernels,
    p: &PackedMatrix,
    act: Q8View<'_>,
    rows: Range<usize>,
    out: &mut [f32],
    m: usize,
) {
    let nb = act.nb;
    let (kernel, tail_kernel, bb) = match p.ty() {
        GgmlType::Q8_0 => (k.mm_q8_0x16, k.mm_q8_0, Q8_0_BYTES),
        _ => (k.mm_q4_0x16, k.mm_q4_0, Q4_0_BYTES),
    };
    let gb = crate::packed::group_bytes_of(p.ty(), nb);
    let full = p.n_groups() * GROUP;
    let data = p.group_data();
    // Interleaved groups intersecting `rows`.
    let mut r = rows.start;
    while r < rows.end.min(full) {
        let g = r / GROUP;
        if r.is_multiple_of(GROUP) && r + GROUP <= rows.end {
            // A run of whole groups straight into `out`.
            let run = (rows.end.min(full) - r) / GROUP;
            kernel(
                &data[g * gb..(g + run) * gb],
                run,
                act,
                &mut out[r - rows.start..],
                m,
            );
            r += run * GROUP;
        } else {
            // A group cut by the range: compute it whole, keep the rows asked for.
            let end = ((g + 1) * GROUP).min(rows.end);
            let mut tmp = [0f32; GROUP];
            for t in 0..act.n {
                kernel(
                    &data[g * gb..(g + 1) * gb],
                    1,
                    act.tokens(t..t + 1),
                    &mut tmp,
                    GROUP,
                );
                out[t * m + r - rows.start..][..end - r]
                    .copy_from_slice(&tmp[r - g * GROUP..end - g * GROUP]);
            }
            r = end;
        }
    }
    if rows.end > full {
        let s = rows.start.max(full);
        let rb = nb * bb;
        let tail = &p.tail()[(s - full) * rb..(rows.end - full) * rb];
        tail_kernel(tail, rows.end - s, act, &mut out[s - rows.start..], m);
    }
}

/// One attention head for one query: `out = Σ_j softmax(scale · q·k_j)_j · v_j`, where row `j`
/// of the keys is values `offs[j] + col..offs[j] + col + q.len()` of `kv`'s keys and likewise
/// for the values (a head's columns within cached rows), of any [`crate::KvType`], widened to
/// f32 as they are read. `scores` is scratch. The dot products and the weighted sum run on the
/// chosen SIMD kernels, looked up once for all positions.
///
/// # Panics
/// When `offs` is empty, `out.len() != q.len()`, or a row lies outside the cache.
#[allow(clippy::too_many_arguments)]
pub fn attend_head(
    q: &[f32],
    kv: KvRows<'_>,
    offs: &[usize],
    col: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let d = q.len();
    assert!(!offs.is_empty(), "attend_head: no positions");
    assert_eq!(
        out.len(),
        d,
        "attend_head: output of {} for {d} values",
        out.len()
    );
    (arch::kernels().attend)(q, kv, offs, col, scale, scores, out);
}

/// Attention of several queries of one head whose visible positions nest (a batch of
/// consecutive tokens: query `t` sees `offs[..lens[t]]`): query `t` is `q[t·d..(t+1)·d]`, its
/// output goes to `out[t·ldo..t·ldo + d]`, otherwise as [`attend_head`]. Equal to calling
/// `attend_head` per query, but the SIMD sets read each cached row once per block of
/// positions for all queries (a batch's verification or prompt pass reads the cache once, not
/// once per token).
///
/// # Panics
/// When a query sees no position or more than `offs.len()`, `q` or `out` is too short,
/// `ldo < d`, or a row lies outside `keys`/`values`.
#[allow(clippy::too_many_arguments)]
pub fn attend_queries(
    q: &[f32],
    d: usize,
    kv: KvRows<'_>,
    offs: &[usize],
    lens: &[usize],
    col: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
    ldo: usize,
) {
    // Every set's kernel checks the shapes (`arch::check_multi`).
    (arch::kernels().attend_multi)(q, d, kv, offs, lens, col, scale, scores, out, ldo)
}

/// `g[i] = silu(g[i]) · u[i] = g[i] / (1 + e^(−g[i])) · u[i]` over the common length (the
/// gated MLP), with the chosen SIMD kernels (within a few ulp of `f32::exp`'s result).
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    (arch::kernels().silu_mul)(g, u)
}

/// `Σ a[i] · b[i]` over the common length, with the chosen SIMD kernels.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    (arch::kernels().dot_f32)(a, b)
}

/// `y[i] += alpha · x[i]` over the common length, with the chosen SIMD kernels.
pub fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    (arch::kernels().axpy_f32)(alpha, x, y)
}

/// The kernel set chosen for this CPU: `avx512vnni`, `avx2`, `neon-dotprod`, `neon` or
/// `scalar` (also when `RAVEN_FORCE_SCALAR=1`).
pub fn isa() -> &'static str {
    arch::kernels().name
}
