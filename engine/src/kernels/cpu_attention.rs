//! Fused attention for the CPU: `softmax(Q K^T * scale) V` one query row at a time, never
//! materialising the full score matrix (memory O(tokens) per thread instead of
//! O(tokens^2 * heads)), parallel over rows.
//!
//! candle 0.11 runs attention as matmul + softmax + matmul: for 1024 tokens and head width 8
//! the first matmul alone writes 4 M scores per head, and the softmax's exponentials dominate.
//! Here the scores of one row live in a small buffer and the exponential is a polynomial
//! (relative error below 2e-7, far under f32 model tolerances).

use rayon::prelude::*;

use super::simd::Level;

/// `exp(x)` for `x <= 0` (softmax arguments after subtracting the row maximum): `2^k e^r`
/// with Cody-Waite range reduction and a degree-7 polynomial.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    // Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, with ln 2 split so k * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Round to nearest by the 1.5 * 2^23 trick (branch-free, vectorises).
    const MAGIC: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let k = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // e^r, Taylor to degree 7: truncation below 1e-8 for |r| <= ln2/2.
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^k from the float's own bits: (k + 127 + MAGIC) holds k + 127 in its low mantissa
    // bits, so no float-to-int cast (whose saturating semantics would block vectorisation).
    let biased = (k + (127.0 + MAGIC)).to_bits().wrapping_sub(MAGIC.to_bits());
    p * f32::from_bits(biased << 23)
}

/// Shapes of one attention call; all tensors are row-major `[batch, tokens, heads * dim]`.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub queries: usize,
    pub keys: usize,
    pub heads: usize,
    pub dim: usize,
    pub causal: bool,
}

/// `[b, m, h*d]` -> `[b, h, d, m]`: each (head, channel) becomes a contiguous row over keys,
/// so the inner loops below are plain vector loops.
fn to_channel_rows(t: &[f32], b: usize, m: usize, h: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0f32; t.len()];
    for bi in 0..b {
        for j in 0..m {
            let src = &t[(bi * m + j) * h * d..(bi * m + j + 1) * h * d];
            for (c, &val) in src.iter().enumerate() {
                out[((bi * h) * d + c) * m + j] = val;
            }
        }
    }
    out
}

/// Maximum with eight independent lanes.
#[inline(always)]
fn lane_max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = a.chunks_exact(8);
    let rest = chunks.remainder();
    for x in chunks {
        for l in 0..8 {
            acc[l] = if x[l] > acc[l] { x[l] } else { acc[l] };
        }
    }
    rest.iter().chain(acc.iter()).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Sum with eight independent accumulators.
#[inline(always)]
fn lane_sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.chunks_exact(8);
    let rest = chunks.remainder();
    for x in chunks {
        for l in 0..8 {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Dot product with eight independent accumulators (lets the compiler use SIMD lanes).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Everything one query row needs.
struct Row<'a> {
    q_row: &'a [f32],
    kt: &'a [f32],
    vt: &'a [f32],
    b: usize,
    limit: usize,
    s: Dims,
}

crate::simd_fn! {
    /// One query row of every head: scores, softmax and the product with V.
    fn row_kernel(r: &Row, scores: &mut [f32], out_row: &mut [f32]) {
        let Dims { keys, heads, dim, .. } = r.s;
        let scale = 1.0 / (dim as f32).sqrt();
        let limit = r.limit;
        for h in 0..heads {
            let sc = &mut scores[..limit];
            for x in sc.iter_mut() {
                *x = 0.0;
            }
            let base = (r.b * heads + h) * dim;
            for c in 0..dim {
                let qc = r.q_row[h * dim + c] * scale;
                let krow = &r.kt[(base + c) * keys..(base + c) * keys + limit];
                for (x, kv) in sc.iter_mut().zip(krow) {
                    *x += qc * kv;
                }
            }
            let max = lane_max(sc);
            for x in sc.iter_mut() {
                *x = exp_nonpositive(*x - max);
            }
            let inv = 1.0 / lane_sum(sc);
            for c in 0..dim {
                let vrow = &r.vt[(base + c) * keys..(base + c) * keys + limit];
                out_row[h * dim + c] = dot(sc, vrow) * inv;
            }
        }
    }
}

/// Computes attention; `q` is `[b, n, h*d]`, `k` and `v` are `[b, m, h*d]`; returns `[b, n, h*d]`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], s: Dims) -> Vec<f32> {
    let Dims {
        batch,
        queries,
        keys,
        heads,
        dim,
        causal,
    } = s;
    let width = heads * dim;
    let kt = to_channel_rows(k, batch, keys, heads, dim);
    let vt = to_channel_rows(v, batch, keys, heads, dim);
    let mut out = vec![0f32; batch * queries * width];
    let level = Level::current();
    out.par_chunks_mut(width).enumerate().for_each_init(
        || vec![0f32; keys],
        |scores, (row, out_row)| {
            let i = row % queries;
            let r = Row {
                q_row: &q[row * width..(row + 1) * width],
                kt: &kt,
                vt: &vt,
                b: row / queries,
                limit: if causal { (i + 1).min(keys) } else { keys },
                s,
            };
            row_kernel(level, &r, scores, out_row);
        },
    );
    out
}

/// Query rows per block of [`attention_blocked`]: 128 rows of 4096 keys are 2 MiB of scores.
const BLOCK_ROWS: usize = 128;

/// Softmax of one score row in place (exponentials by [`exp_nonpositive`]).
#[inline(always)]
fn softmax_row(sc: &mut [f32]) {
    let max = lane_max(sc);
    for x in sc.iter_mut() {
        *x = exp_nonpositive(*x - max);
    }
    let inv = 1.0 / lane_sum(sc);
    for x in sc.iter_mut() {
        *x *= inv;
    }
}

crate::simd_fn! {
    /// Softmax of each `width`-long row of `scores` in place.
    fn softmax_rows(scores: &mut [f32], width: usize) {
        for row in scores.chunks_mut(width) {
            softmax_row(row);
        }
    }
}

/// Attention for wide heads (SD's 40-160 channels per head): per (batch, head, block of
/// [`BLOCK_ROWS`] queries) one matrix product makes the block's scores (scale folded in),
/// the softmax runs in place, and a second product multiplies by V. Blocks run in parallel
/// and each thread reuses one score buffer, so memory is O(block x keys) per thread and no
/// large buffer is allocated per layer (candle's matmul/softmax/matmul allocated, and the
/// kernel zeroed, three score-sized buffers per chunk). Same inputs and output as
/// [`attention`].
#[allow(unsafe_code)]
pub fn attention_blocked(q: &[f32], k: &[f32], v: &[f32], s: Dims) -> Vec<f32> {
    let (batch, queries, keys, heads, dim) = (s.batch, s.queries, s.keys, s.heads, s.dim);
    let width = heads * dim;
    let scale = 1.0 / (dim as f32).sqrt();
    let blocks = queries.div_ceil(BLOCK_ROWS);
    let level = Level::current();
    let tasks: Vec<(usize, usize, usize)> = (0..batch)
        .flat_map(|b| (0..heads).flat_map(move |h| (0..blocks).map(move |blk| (b, h, blk))))
        .collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map_init(
            || vec![0f32; BLOCK_ROWS * keys],
            |scores, &(b, h, blk)| {
                let r0 = blk * BLOCK_ROWS;
                let rows = BLOCK_ROWS.min(queries - r0);
                let scores = &mut scores[..rows * keys];
                let mut out = vec![0f32; rows * dim];
                let q0 = (b * queries + r0) * width + h * dim;
                let kv0 = b * keys * width + h * dim;
                // SAFETY: scores is (rows, keys) row-major; the query block is rows x dim at
                // row stride `width` from q0; K^T is dim x keys read from K's (keys, width)
                // rows (row stride 1 over channels, column stride `width` over keys); every
                // index stays inside q and k, whose lengths the caller's Dims describe.
                unsafe {
                    gemm::gemm(
                        rows,
                        keys,
                        dim,
                        scores.as_mut_ptr(),
                        1,
                        keys as isize,
                        false,
                        q.as_ptr().add(q0),
                        1,
                        width as isize,
                        k.as_ptr().add(kv0),
                        width as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                if s.causal {
                    for (i, row) in scores.chunks_mut(keys).enumerate() {
                        row[(r0 + i + 1).min(keys)..].fill(f32::NEG_INFINITY);
                    }
                }
                softmax_rows(level, scores, keys);
                // SAFETY: out is (rows, dim) row-major; probabilities are (rows, keys); V is
                // keys x dim at row stride `width` from kv0, inside v.
                unsafe {
                    gemm::gemm(
                        rows,
                        dim,
                        keys,
                        out.as_mut_ptr(),
                        1,
                        dim as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        keys as isize,
                        v.as_ptr().add(kv0),
                        1,
                        width as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                out
            },
        )
        .collect();
    let mut out = vec![0f32; batch * queries * width];
    for (&(b, h, blk), block) in tasks.iter().zip(&results) {
        let r0 = blk * BLOCK_ROWS;
        for (i, src) in block.chunks(dim).enumerate() {
            let at = (b * queries + r0 + i) * width + h * dim;
            out[at..at + dim].copy_from_slice(src);
        }
    }
    out
}

crate::simd_fn! {
    /// `x * scale` rounded to bf16, element by element.
    fn round_scaled(x: &[f32], scale: f32, out: &mut [u16]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = super::cpu_bf16::to_bf16(v * scale);
        }
    }
}

/// Whether [`attention_blocked_bf16`] takes these shapes on this CPU: AVX-512 BF16, and even
/// head widths and key counts (the products pair them).
pub fn bf16_applies(s: &Dims) -> bool {
    super::cpu_bf16::hardware() && s.dim.is_multiple_of(2) && s.keys.is_multiple_of(2) && !s.causal
}

/// [`attention_blocked`] with both products in bf16 (f32 sums, as PyTorch's bf16 attention
/// on the CPU): for models run with `--dtype bf16` on a CPU with AVX-512 BF16. Q (scale
/// folded in) is rounded once per call, K and V packed once per head, the probabilities
/// rounded per block; the softmax stays f32. Needs [`bf16_applies`].
pub fn attention_blocked_bf16(q: &[f32], k: &[f32], v: &[f32], s: Dims) -> Vec<f32> {
    use super::cpu_bf16::{Path, Product, Source, Strided, pack_all};
    assert!(
        bf16_applies(&s),
        "bf16 attention needs AVX-512 BF16, even widths and key counts, no mask"
    );
    let (batch, queries, keys, heads, dim) = (s.batch, s.queries, s.keys, s.heads, s.dim);
    let width = heads * dim;
    let scale = 1.0 / (dim as f32).sqrt();
    let level = Level::current();
    let path = Path::best();
    // AMX multiplies 32 x 32 blocks 32 deep: heads are padded with zeros to a multiple of 32
    // channels (SD's 40 -> 64, 80 -> 96) so no product has an edge, and query blocks are 32
    // rows so the scores (32 x keys) stay in the core's L2.
    let (dim_p, block_rows) = if path == Path::Amx {
        (dim.next_multiple_of(32), 32)
    } else {
        (dim, BLOCK_ROWS)
    };
    let width_p = heads * dim_p;
    let mut qb = vec![0u16; batch * queries * width_p];
    qb.par_chunks_mut(width_p).zip(q.par_chunks(width)).for_each(|(o, x)| {
        for (oh, xh) in o.chunks_mut(dim_p).zip(x.chunks(dim)) {
            round_scaled(level, xh, scale, &mut oh[..dim]);
        }
    });
    // Per (batch, head): K^T (dim deep, keys wide) and V (keys deep, dim wide), packed.
    let heads_all: Vec<(usize, usize)> = (0..batch).flat_map(|b| (0..heads).map(move |h| (b, h))).collect();
    let packed: Vec<(Vec<u32>, Vec<u32>)> = heads_all
        .par_iter()
        .map(|&(b, h)| {
            let kv0 = b * keys * width + h * dim;
            // K[key][d] read as x[d][key]: rs 1, cs width.
            let kt = pack_all(
                Source::F32(Strided {
                    data: &k[kv0..],
                    rs: 1,
                    cs: width,
                }),
                dim,
                keys,
            );
            let kt = pad_pairs(kt, keys, dim / 2, dim_p / 2);
            // V's columns beyond `dim` are packed as zeros up to the 32-column block, which
            // `dim_p` never passes (both round up to it).
            let vp = pack_all(
                Source::F32(Strided {
                    data: &v[kv0..],
                    rs: width,
                    cs: 1,
                }),
                keys,
                dim,
            );
            (kt, vp)
        })
        .collect();
    let blocks = queries.div_ceil(block_rows);
    let tasks: Vec<(usize, usize, usize)> = (0..batch)
        .flat_map(|b| (0..heads).flat_map(move |h| (0..blocks).map(move |blk| (b, h, blk))))
        .collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map_init(
            || (vec![0f32; block_rows * keys], vec![0u16; block_rows * keys], Vec::new()),
            |(scores, probs, scratch), &(b, h, blk)| {
                let r0 = blk * block_rows;
                let rows = block_rows.min(queries - r0);
                let scores = &mut scores[..rows * keys];
                let (kt, vp) = &packed[b * heads + h];
                Product {
                    m: rows,
                    n: keys,
                    k: dim_p,
                    w: &qb[(b * queries + r0) * width_p + h * dim_p..],
                    ldw: width_p,
                    x: Source::Packed(kt),
                    ldo: keys,
                    overwrite: true,
                }
                .run_serial(path, scores, scratch);
                let probs = &mut probs[..rows * keys];
                softmax_rows_bf16(level, scores, keys, probs);
                let mut out = vec![0f32; rows * dim_p];
                Product {
                    m: rows,
                    n: dim_p,
                    k: keys,
                    w: probs,
                    ldw: keys,
                    x: Source::Packed(vp),
                    ldo: dim_p,
                    overwrite: true,
                }
                .run_serial(path, &mut out, scratch);
                out
            },
        )
        .collect();
    let mut out = vec![0f32; batch * queries * width];
    for (&(b, h, blk), block) in tasks.iter().zip(&results) {
        let r0 = blk * block_rows;
        for (i, src) in block.chunks(dim_p).enumerate() {
            let at = (b * queries + r0 + i) * width + h * dim;
            out[at..at + dim].copy_from_slice(&src[..dim]);
        }
    }
    out
}

/// A [`pack_all`](super::cpu_bf16::pack_all) operand `pairs` deep made `pairs_p` deep with
/// zero pairs (the same `n` columns).
fn pad_pairs(packed: Vec<u32>, n: usize, pairs: usize, pairs_p: usize) -> Vec<u32> {
    use super::cpu_bf16::COLS;
    if pairs == pairs_p {
        return packed;
    }
    let blocks = n.div_ceil(COLS);
    let mut out = vec![0u32; blocks * pairs_p * COLS];
    for (dst, src) in out.chunks_mut(pairs_p * COLS).zip(packed.chunks(pairs * COLS)) {
        dst[..pairs * COLS].copy_from_slice(src);
    }
    out
}

crate::simd_fn! {
    /// Softmax of each `width`-long row of `scores` (left holding the exponentials), written
    /// rounded to bf16 into `probs`.
    fn softmax_rows_bf16(scores: &mut [f32], width: usize, probs: &mut [u16]) {
        for (row, out) in scores.chunks_mut(width).zip(probs.chunks_mut(width)) {
            let max = lane_max(row);
            for x in row.iter_mut() {
                *x = exp_nonpositive(*x - max);
            }
            let inv = 1.0 / lane_sum(row);
            for (o, &x) in out.iter_mut().zip(row.iter()) {
                *o = super::cpu_bf16::to_bf16(x * inv);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_on_softmax_arguments() {
        // Relative accuracy where probabilities matter; beyond e^-20 (< 2e-9 of the row
        // maximum) f32 range reduction limits it, and only the absolute error counts.
        let (mut worst_rel, mut worst_abs) = (0f32, 0f32);
        for i in 0..100_000 {
            let x = -(i as f32) * 0.0008;
            let (got, want) = (exp_nonpositive(x), x.exp());
            if x > -20.0 {
                worst_rel = worst_rel.max(((got - want) / want).abs());
            }
            worst_abs = worst_abs.max((got - want).abs());
        }
        assert!(worst_rel < 3e-7, "{worst_rel}");
        assert!(worst_abs < 1e-7, "{worst_abs}");
        assert!(exp_nonpositive(-100.0) < 1e-37);
        assert!((exp_nonpositive(0.0) - 1.0).abs() < 1e-7);
    }

    fn reference(q: &[f32], k: &[f32], v: &[f32], s: Dims) -> Vec<f32> {
        let w = s.heads * s.dim;
        let mut out = vec![0f32; s.batch * s.queries * w];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..s.queries {
                    let lim = if s.causal { i + 1 } else { s.keys };
                    let sc: Vec<f64> = (0..lim)
                        .map(|j| {
                            (0..s.dim)
                                .map(|d| q[(b * s.queries + i) * w + h * s.dim + d] as f64 * k[(b * s.keys + j) * w + h * s.dim + d] as f64)
                                .sum::<f64>()
                                / (s.dim as f64).sqrt()
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..s.dim {
                        out[(b * s.queries + i) * w + h * s.dim + d] = (0..lim)
                            .map(|j| e[j] / z * v[(b * s.keys + j) * w + h * s.dim + d] as f64)
                            .sum::<f64>() as f32;
                    }
                }
            }
        }
        out
    }

    /// bf16 attention (where the CPU has it) against the f64 reference: within what bf16's
    /// rounding of Q, K, V and the probabilities allows.
    #[test]
    fn bf16_attention_stays_near_the_reference() {
        for s in [
            Dims {
                batch: 2,
                queries: 300,
                keys: 150,
                heads: 2,
                dim: 40,
                causal: false,
            },
            Dims {
                batch: 1,
                queries: 77,
                keys: 256,
                heads: 3,
                dim: 64,
                causal: false,
            },
        ] {
            if !bf16_applies(&s) {
                return;
            }
            let random = |n: usize, seed: u64| -> Vec<f32> { crate::rng::TorchRng::new(seed).randn_f32(n) };
            let q = random(s.batch * s.queries * s.heads * s.dim, 1);
            let k = random(s.batch * s.keys * s.heads * s.dim, 2);
            let v = random(s.batch * s.keys * s.heads * s.dim, 3);
            let want = reference(&q, &k, &v, s);
            let got = attention_blocked_bf16(&q, &k, &v, s);
            let norm = (want.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>()).sqrt();
            let diff = (got.iter().zip(&want).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>()).sqrt();
            // bf16 keeps 8 bits: about 4e-3 relative per value.
            assert!(diff / norm < 1e-2, "{s:?}: relative L2 {}", diff / norm);
            // And it is not the f32 kernel: the rounding shows.
            assert!(diff / norm > 1e-5, "{s:?}");
        }
    }

    #[test]
    fn matches_a_double_precision_reference() {
        for s in [
            Dims {
                batch: 2,
                queries: 37,
                keys: 37,
                heads: 3,
                dim: 8,
                causal: false,
            },
            Dims {
                batch: 1,
                queries: 20,
                keys: 77,
                heads: 2,
                dim: 5,
                causal: false,
            },
            Dims {
                batch: 2,
                queries: 77,
                keys: 77,
                heads: 2,
                dim: 4,
                causal: true,
            },
            // Wide heads over several query blocks (SD 1.5's 40 and SDXL's 64 channels).
            Dims {
                batch: 2,
                queries: 300,
                keys: 150,
                heads: 2,
                dim: 40,
                causal: false,
            },
            Dims {
                batch: 1,
                queries: 200,
                keys: 200,
                heads: 3,
                dim: 64,
                causal: true,
            },
        ] {
            let random =
                |n: usize, seed: u64| -> Vec<f32> { crate::rng::TorchRng::new(seed).randn_f32(n).iter().map(|x| x * 2.0).collect() };
            let q = random(s.batch * s.queries * s.heads * s.dim, 1);
            let k = random(s.batch * s.keys * s.heads * s.dim, 2);
            let v = random(s.batch * s.keys * s.heads * s.dim, 3);
            let want = reference(&q, &k, &v, s);
            // Every instruction set this CPU has, each forced in turn.
            for level in Level::ALL.into_iter().filter(|l| l.available()) {
                let (row, blocked) =
                    super::super::simd::force(level, || (attention(&q, &k, &v, s), attention_blocked(&q, &k, &v, s))).expect("test value");
                for (name, got) in [("row kernel", row), ("blocked", blocked)] {
                    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(err < 1e-5, "{name} at {level:?} {s:?}: {err}");
                }
            }
        }
    }
}
