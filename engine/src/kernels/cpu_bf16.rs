//! Matrix products with bf16 weights and f32 activations on the CPU (`--dtype bf16`).
//!
//! `out[o][j] (+)= sum_k w[o][k] * x[k][j]` with `w` the layer's bf16 weights as stored
//! (row-major `[out, k]`, a linear layer's matrix or a convolution's `[out, in*kh*kw]`) and `x`
//! f32 activations read through strides (a convolution's unfolded band, or a linear layer's
//! input transposed). The activations are rounded to bf16 while being packed, as PyTorch's
//! bf16 autocast does, and the products accumulate in f32.
//!
//! On CPUs with AVX-512 BF16 (`vdpbf16ps`: 32 bf16 products into 16 f32 sums per
//! instruction, twice the f32 FMA rate) each micro-kernel call keeps a 12 x 32 block of
//! outputs in 24 registers: per pair of k it loads 32 packed activations and broadcasts one
//! weight pair per output row straight from the weight matrix, so weights need no packing and
//! stay in memory once, in bf16. On CPUs with AMX (Xeon 4th generation and later: tile
//! registers of 16 rows x 64 bytes and `tdpbf16ps`, a 16 x 16 x 32 product per instruction)
//! 32 x 32 output blocks take four tile products per 32 values of k, with the weight rows
//! loaded as tiles straight from the matrix and the same packed activations; block edges go
//! to the AVX-512 kernel. Elsewhere a portable kernel computes the same sums from the
//! same packing (widening to f32); the engine only takes this path where the CPU has
//! AVX-512 BF16, and keeps f32 weights otherwise.

use candle_core::{CpuStorage, Layout, Shape};
use rayon::prelude::*;

use super::simd::Level;

/// Output rows (weight rows) per micro-kernel call.
const ROWS: usize = 12;
/// Output columns per micro-kernel call (two 16-lane vectors).
pub const COLS: usize = 32;
/// k pairs per block: 32 columns x 128 pairs of packed activations are 16 KiB.
const PAIRS: usize = 128;
/// k pairs per block on AMX: the tiles multiply so fast that re-reading a block's sums
/// between k blocks costs; 256 pairs amortise it while one column block's packed
/// activations (32 KiB) still fit L1.
const PAIRS_AMX: usize = 256;
/// Output columns per task (4 micro-kernel column blocks).
const TASK_COLS: usize = 128;

/// Whether this CPU has the bf16 dot-product instructions (and the engine's kernels are not
/// capped below AVX-512).
pub fn hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Level::current() == Level::Avx512 && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU's AMX tiles run here: AMX-TILE and AMX-BF16, Linux granting the process
/// the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, asked once), [`hardware`], and
/// `LATENT_STUDIO_AMX` not `0`/`off` (to compare with the AVX-512 kernel).
pub fn amx() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        hardware()
            && *GRANTED.get_or_init(|| {
                let off = std::env::var("LATENT_STUDIO_AMX")
                    .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "off" | "no" | "false"));
                !off && amx::cpu_has() && amx::request()
            })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// AMX tiles through inline assembly (Rust's AMX intrinsics are not stable).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
mod amx {
    use std::arch::asm;

    /// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (bit 24); the OS saving tile state
    /// (XCR0 bits 17 and 18) is what [`request`] asks for.
    pub fn cpu_has() -> bool {
        // CPUID leaf 7 exists on every x86-64 CPU with AVX-512 (checked by the caller).
        let l7 = std::arch::x86_64::__cpuid_count(7, 0);
        (l7.edx >> 22) & 1 == 1 && (l7.edx >> 24) & 1 == 1
    }

    /// Asks Linux (5.16 and later) for the tile data state for this process; false where the
    /// kernel refuses or predates it.
    pub fn request() -> bool {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
        const XFEATURE_XTILEDATA: u64 = 18;
        let ret: i64;
        // SAFETY: a plain system call; it changes only which register state the process may use.
        unsafe {
            asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret, in("rdi") ARCH_REQ_XCOMP_PERM,
                 in("rsi") XFEATURE_XTILEDATA, lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        ret == 0
    }

    /// Palette 1, eight tiles of 16 rows x 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    /// Loads the tile configuration on this thread (tiles zeroed).
    ///
    /// # Safety
    /// [`super::amx`] must be true.
    pub unsafe fn configure() {
        let mut c = Config([0; 64]);
        c.0[0] = 1;
        for t in 0..8 {
            c.0[16 + 2 * t] = 64;
            c.0[48 + t] = 16;
        }
        // SAFETY: the configuration is valid for palette 1; the caller checked AMX.
        unsafe { asm!("ldtilecfg [{}]", in(reg) c.0.as_ptr(), options(nostack, readonly)) };
    }

    /// Gives the tile state back (the OS then need not save it on a switch).
    ///
    /// # Safety
    /// [`super::amx`] must be true.
    pub unsafe fn release() {
        // SAFETY: the caller checked AMX.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// `out[r][c] += sum_k w[r][k] x[k][c]` for a 32 x 32 block and `steps * 32` values of k:
    /// `w` the first weight row (`ldw` bytes apart), `a` packed activations (`[pair][32]`
    /// u32, 16 pairs per step), `out` the block's first value (`ldo` bytes apart).
    ///
    /// # Safety
    /// [`configure`] ran on this thread; `w` holds 32 rows of `steps * 32` bf16, `a`
    /// `steps * 512` u32, `out` 32 rows of 32 f32, at those strides.
    pub unsafe fn block32(w: *const u16, ldw: usize, a: *const u32, steps: usize, out: *mut f32, ldo: usize, add: bool) {
        // SAFETY: as documented; tmm0-3 hold the sums, tmm4-5 weight rows, tmm6-7 activations.
        // Nothing else in this function touches tile registers, so they keep their values
        // between the assembly blocks.
        unsafe {
            if add {
                asm!(
                    "tileloadd tmm0, [{o} + {ldo}*1]",
                    "tileloadd tmm1, [{o} + {ldo}*1 + 64]",
                    "tileloadd tmm2, [{o16} + {ldo}*1]",
                    "tileloadd tmm3, [{o16} + {ldo}*1 + 64]",
                    o = in(reg) out,
                    o16 = in(reg) out.byte_add(16 * ldo),
                    ldo = in(reg) ldo,
                    options(nostack, readonly),
                );
            } else {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            }
            for t in 0..steps {
                let wt = w.byte_add(t * 64);
                asm!(
                    "tileloadd tmm4, [{w} + {ldw}*1]",
                    "tileloadd tmm5, [{w16} + {ldw}*1]",
                    "tileloadd tmm6, [{a} + {lda}*1]",
                    "tileloadd tmm7, [{a} + {lda}*1 + 64]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    w = in(reg) wt,
                    w16 = in(reg) wt.byte_add(16 * ldw),
                    ldw = in(reg) ldw,
                    a = in(reg) a.byte_add(t * 2048),
                    lda = in(reg) 128usize,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{o} + {ldo}*1], tmm0",
                "tilestored [{o} + {ldo}*1 + 64], tmm1",
                "tilestored [{o16} + {ldo}*1], tmm2",
                "tilestored [{o16} + {ldo}*1 + 64], tmm3",
                o = in(reg) out,
                o16 = in(reg) out.byte_add(16 * ldo),
                ldo = in(reg) ldo,
                options(nostack),
            );
        }
    }
}

/// f32 to bf16 bits, rounding to nearest even (NaN stays NaN); branch-free so it vectorises.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { (b >> 16) | 0x40 } else { rounded }) as u16
}

/// f32 activations `x[k][j]` at `data[k * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// The operand that is packed per block (`[k][j]`, `j` along the output rows).
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// f32 activations, rounded to bf16 while packing (convolutions: the unfolded band).
    F32(Strided<'a>),
    /// bf16 bits stored as rows `[j][k]`, the given number of values apart (linear layers:
    /// the weight matrix).
    Bf16Rows(&'a [u16], usize),
    /// Already packed by [`pack_all`] (an operand shared by many products: attention's keys
    /// and values per head).
    Packed(&'a [u32]),
}

/// The whole operand (`k` deep, `n` columns) packed once: `[column block][pair][COLS]`.
pub fn pack_all(x: Source, k: usize, n: usize) -> Vec<u32> {
    let pairs = k.div_ceil(2);
    let blocks = n.div_ceil(COLS);
    let mut out = vec![0u32; blocks * pairs * COLS];
    let level = Level::current();
    out.par_chunks_mut((pairs * COLS).max(1))
        .enumerate()
        .for_each(|(b, block)| pack_block(level, x, k, n, b * COLS, 0, pairs, block));
    out
}

/// Packs pairs `p0..p0 + pairs` of columns `j0..j0 + COLS` of `w` (`[n][k]` bf16 rows; zero
/// beyond `n`): each pair is already one u32 in `w`.
#[inline(always)]
fn pack_rows(w: &[u16], ld: usize, n: usize, j0: usize, p0: usize, pairs: usize, out: &mut [u32]) {
    for jj in 0..COLS {
        let j = j0 + jj;
        if j < n {
            let row = &w[j * ld + 2 * p0..j * ld + 2 * (p0 + pairs)];
            for (pi, pair) in row.chunks_exact(2).enumerate() {
                out[pi * COLS + jj] = pair[0] as u32 | ((pair[1] as u32) << 16);
            }
        } else {
            for pi in 0..pairs {
                out[pi * COLS + jj] = 0;
            }
        }
    }
}

/// Packs columns `j0..j0 + COLS` (zero beyond `n`) and pairs `p0..p0 + pairs` of `x` as
/// `[pair][COLS]` u32, each the bf16 of row `2p` in the low half and of row `2p + 1` (zero
/// beyond `k`) in the high half.
#[inline(always)]
fn pack(x: Strided, k: usize, n: usize, j0: usize, p0: usize, pairs: usize, out: &mut [u32]) {
    let cols = COLS.min(n - j0);
    if x.cs == 1 && cols == COLS {
        // Rows contiguous along j (a convolution's unfolded band): two row slices per pair.
        for (pi, dst) in out.chunks_exact_mut(COLS).take(pairs).enumerate() {
            let r0 = 2 * (p0 + pi);
            let lo = &x.data[r0 * x.rs + j0..r0 * x.rs + j0 + COLS];
            if r0 + 1 < k {
                let hi = &x.data[(r0 + 1) * x.rs + j0..(r0 + 1) * x.rs + j0 + COLS];
                for ((d, &a), &b) in dst.iter_mut().zip(lo).zip(hi) {
                    *d = to_bf16(a) as u32 | ((to_bf16(b) as u32) << 16);
                }
            } else {
                for (d, &a) in dst.iter_mut().zip(lo) {
                    *d = to_bf16(a) as u32;
                }
            }
        }
        return;
    }
    // Any strides (a linear layer's input, [tokens, k]: each column's pairs are adjacent):
    // column by column.
    for jj in 0..COLS {
        let j = j0 + jj;
        for pi in 0..pairs {
            let r0 = 2 * (p0 + pi);
            out[pi * COLS + jj] = if jj < cols {
                let lo = to_bf16(x.data[r0 * x.rs + j * x.cs]) as u32;
                let hi = if r0 + 1 < k {
                    to_bf16(x.data[(r0 + 1) * x.rs + j * x.cs]) as u32
                } else {
                    0
                };
                lo | (hi << 16)
            } else {
                0
            };
        }
    }
}

crate::simd_fn! {
    /// [`pack`] or [`pack_rows`] compiled per instruction set.
    fn pack_block(x: Source, k: usize, n: usize, j0: usize, p0: usize, pairs: usize, out: &mut [u32]) {
        match x {
            Source::F32(x) => pack(x, k, n, j0, p0, pairs, out),
            Source::Bf16Rows(w, ld) => pack_rows(w, ld, n, j0, p0, pairs, out),
            Source::Packed(_) => unreachable!("a packed operand is not packed again"),
        }
    }
}

crate::simd_fn! {
    /// f32 to bf16 bits, element by element.
    fn round_all(x: &[f32], out: &mut [u16]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = to_bf16(v);
        }
    }
}

type Block = [[f32; COLS]; ROWS];

/// One output block by widening to f32: the reference the hardware kernel must match, and
/// what runs where the CPU lacks bf16 instructions. `w` starts at the block's first weight
/// row and pair; returns the block's sums.
#[inline(always)]
fn block_portable(w: &[u16], ldw: usize, rows: usize, a: &[u32], pairs: usize) -> Block {
    let mut acc = [[0f32; COLS]; ROWS];
    for p in 0..pairs {
        let av = &a[p * COLS..(p + 1) * COLS];
        for (r, acc_r) in acc.iter_mut().enumerate().take(rows) {
            let w0 = f32::from_bits((w[r * ldw + 2 * p] as u32) << 16);
            let w1 = f32::from_bits((w[r * ldw + 2 * p + 1] as u32) << 16);
            for (s, &pair) in acc_r.iter_mut().zip(av) {
                let x0 = f32::from_bits(pair << 16);
                let x1 = f32::from_bits(pair & 0xffff_0000);
                *s += w0 * x0 + w1 * x1;
            }
        }
    }
    acc
}

crate::simd_fn! {
    fn block_widen(w: &[u16], ldw: usize, rows: usize, a: &[u32], pairs: usize) -> Block {
        block_portable(w, ldw, rows, a, pairs)
    }
}

/// One output block with `vdpbf16ps` (`R` rows, up to 32 columns, `pairs` k pairs).
///
/// # Safety
/// The CPU must have AVX-512 F and BF16; `w` must hold `R` rows of `2 * pairs` values `ldw`
/// apart, `a` `pairs * COLS` packed values, `out` `R` rows of `cols <= 32` values `ldo` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(unsafe_code)]
#[allow(clippy::too_many_arguments)]
unsafe fn block_dpbf16<const R: usize>(
    w: *const u16,
    ldw: usize,
    a: *const u32,
    pairs: usize,
    out: *mut f32,
    ldo: usize,
    cols: usize,
    add: bool,
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees the extents above; every pointer below stays inside them.
    unsafe {
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        for p in 0..pairs {
            let a0: __m512bh = std::mem::transmute(_mm512_loadu_si512(a.add(p * COLS) as *const _));
            let a1: __m512bh = std::mem::transmute(_mm512_loadu_si512(a.add(p * COLS + 16) as *const _));
            for r in 0..R {
                let pair = (w.add(r * ldw + 2 * p) as *const u32).read_unaligned();
                let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
                lo[r] = _mm512_dpbf16_ps(lo[r], b, a0);
                hi[r] = _mm512_dpbf16_ps(hi[r], b, a1);
            }
        }
        let m0: __mmask16 = if cols >= 16 { 0xffff } else { ((1u32 << cols) - 1) as u16 };
        let m1: __mmask16 = if cols >= 32 {
            0xffff
        } else if cols > 16 {
            ((1u32 << (cols - 16)) - 1) as u16
        } else {
            0
        };
        for r in 0..R {
            let o = out.add(r * ldo);
            if add {
                _mm512_mask_storeu_ps(o, m0, _mm512_add_ps(_mm512_maskz_loadu_ps(m0, o), lo[r]));
                _mm512_mask_storeu_ps(o.add(16), m1, _mm512_add_ps(_mm512_maskz_loadu_ps(m1, o.add(16)), hi[r]));
            } else {
                _mm512_mask_storeu_ps(o, m0, lo[r]);
                _mm512_mask_storeu_ps(o.add(16), m1, hi[r]);
            }
        }
    }
}

/// `rows <= ROWS` rows of one block by [`block_dpbf16`] (the CPU has AVX-512 BF16: checked
/// by [`Product::check`]); `w` starts at the block's first weight row and pair, `a` at its
/// first packed pair, `o` at its first output.
#[allow(clippy::too_many_arguments)]
fn dpbf16(rows: usize, w: &[u16], ldw: usize, a: &[u32], pairs: usize, o: *mut f32, ldo: usize, cols: usize, add: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(rows <= ROWS && a.len() >= pairs * COLS && (rows == 0 || w.len() >= (rows - 1) * ldw + 2 * pairs));
        macro_rules! go {
            ($($n:literal)*) => {
                match rows {
                    // SAFETY: the CPU has AVX-512 BF16 (checked); rows and pairs are within
                    // `w` and `a` (asserted), the block within `out` (the caller's extents).
                    $($n => unsafe { block_dpbf16::<$n>(w.as_ptr(), ldw, a.as_ptr(), pairs, o, ldo, cols, add) },)*
                    _ => unreachable!(),
                }
            };
        }
        #[allow(unsafe_code)]
        {
            go!(1 2 3 4 5 6 7 8 9 10 11 12)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, w, ldw, a, pairs, o, ldo, cols, add);
        unreachable!("vdpbf16ps is x86-64 only")
    }
}

/// Which kernel computes the blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// AMX tiles (`tdpbf16ps` on 16 x 16 blocks), edges by `vdpbf16ps`.
    Amx,
    /// `vdpbf16ps` (AVX-512 BF16).
    Dpbf16,
    /// Widening to f32, compiled for the given instruction set.
    Widen(Level),
}

impl Path {
    /// The fastest path this CPU has.
    pub fn best() -> Path {
        if amx() {
            Path::Amx
        } else if hardware() {
            Path::Dpbf16
        } else {
            Path::Widen(Level::current())
        }
    }

    /// Output rows per micro-kernel call (tasks split rows in multiples of it).
    fn rows(self) -> usize {
        if self == Path::Amx { 32 } else { ROWS }
    }

    /// k pairs per block.
    fn pairs(self) -> usize {
        if self == Path::Amx { PAIRS_AMX } else { PAIRS }
    }
}

/// One product `out[o][j] += sum_k w[o][k] * x[k][j]` for `o < m`, `j < n`: `w` holds `m`
/// rows of bf16 bits `ldw` apart (the operand broadcast pair by pair; `k` even), `x` is the
/// packed operand, `out` holds `m` rows of f32 `ldo` apart. Add a bias by filling `out`
/// with it first, or set `overwrite` to write `out[o][j] = ...` without reading it.
#[derive(Clone, Copy)]
pub struct Product<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub w: &'a [u16],
    pub ldw: usize,
    pub x: Source<'a>,
    pub ldo: usize,
    /// Write the product over `out` (whose values are then never read) instead of adding.
    pub overwrite: bool,
}

impl Product<'_> {
    fn check(&self, path: Path, out_len: usize) {
        assert!(self.k.is_multiple_of(2), "bf16 matmul needs an even depth");
        assert!(self.m == 0 || self.w.len() >= (self.m - 1) * self.ldw + self.k);
        assert!(self.m == 0 || out_len >= (self.m - 1) * self.ldo + self.n);
        match self.x {
            Source::Bf16Rows(b, ld) => assert!(self.n == 0 || b.len() >= (self.n - 1) * ld + self.k),
            Source::Packed(p) => assert_eq!(p.len(), self.n.div_ceil(COLS) * self.k.div_ceil(2) * COLS),
            Source::F32(_) => {}
        }
        if path == Path::Dpbf16 {
            assert!(hardware(), "this CPU has no AVX-512 BF16");
        }
        if path == Path::Amx {
            assert!(amx(), "this CPU (or OS) runs no AMX tiles");
        }
    }

    /// Rows `r0..r1` and columns `c0..c1` (at most `TASK_COLS`) of the product into `out`.
    #[allow(clippy::too_many_arguments)]
    fn block(&self, path: Path, level: Level, r0: usize, r1: usize, c0: usize, c1: usize, packed: &mut [u32], out: *mut f32) {
        let (k, ldw, ldo) = (self.k, self.ldw, self.ldo);
        let pairs_total = k / 2;
        let col_sub = (c1 - c0).div_ceil(COLS);
        if pairs_total == 0 && self.overwrite {
            // An empty sum: zeros.
            for r in r0..r1 {
                for c in c0..c1 {
                    // SAFETY: inside `out` (checked extents).
                    #[allow(unsafe_code)]
                    unsafe {
                        *out.add(r * ldo + c) = 0.0
                    };
                }
            }
        }
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        if path == Path::Amx {
            // SAFETY: AMX runs here (checked by `check`).
            #[allow(unsafe_code)]
            unsafe {
                amx::configure()
            };
        }
        let mut p0 = 0;
        while p0 < pairs_total {
            let pairs = path.pairs().min(pairs_total - p0);
            let pre = match self.x {
                Source::Packed(p) => Some(p),
                _ => None,
            };
            if pre.is_none() {
                for s in 0..col_sub {
                    pack_block(
                        level,
                        self.x,
                        k,
                        self.n,
                        c0 + s * COLS,
                        p0,
                        pairs,
                        &mut packed[s * COLS * PAIRS_AMX..],
                    );
                }
            }
            // One 32 x 32 (AMX) or 12 x 32 block: rows r.. of column block s.
            let unit = |r: usize, rows: usize, s: usize| {
                let j = c0 + s * COLS;
                let cols = COLS.min(c1 - j);
                let a = match pre {
                    // c0 is a multiple of COLS (task and serial column blocks are).
                    Some(p) => &p[((j / COLS) * pairs_total + p0) * COLS..((j / COLS) * pairs_total + p0 + pairs) * COLS],
                    None => &packed[s * COLS * PAIRS_AMX..s * COLS * PAIRS_AMX + pairs * COLS],
                };
                // The block lies inside `out` (its length is checked by `check`); written
                // through a raw pointer because the blocks of parallel tasks interleave
                // in memory.
                let o = out.wrapping_add(r * ldo + j);
                // The first k block overwrites where asked; later ones add.
                let add = !self.overwrite || p0 > 0;
                match path {
                    Path::Amx => {
                        // Whole 32 x 32 blocks on the tiles, 16 pairs per step; the pairs
                        // left over and the edge blocks by vdpbf16ps.
                        let steps = if rows == 32 && cols == COLS { pairs / 16 } else { 0 };
                        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
                        if steps > 0 {
                            let wp = &self.w[r * ldw + 2 * p0..];
                            // SAFETY: tiles configured above; 32 rows of `2 * pairs` weights
                            // from `wp` (checked extents), `steps * 16` packed pairs in `a`,
                            // and the 32 x 32 block of `out`.
                            #[allow(unsafe_code)]
                            unsafe {
                                amx::block32(wp.as_ptr(), 2 * ldw, a.as_ptr(), steps, o, 4 * ldo, add)
                            };
                        }
                        let done = 16 * steps;
                        if done < pairs {
                            let mut rr = 0;
                            while rr < rows {
                                let n = ROWS.min(rows - rr);
                                let wp = &self.w[(r + rr) * ldw + 2 * (p0 + done)..];
                                dpbf16(
                                    n,
                                    wp,
                                    ldw,
                                    &a[done * COLS..],
                                    pairs - done,
                                    o.wrapping_add(rr * ldo),
                                    ldo,
                                    cols,
                                    add || steps > 0,
                                );
                                rr += n;
                            }
                        }
                    }
                    Path::Dpbf16 => {
                        let wp = &self.w[r * ldw + 2 * p0..];
                        dpbf16(rows, wp, ldw, a, pairs, o, ldo, cols, add);
                    }
                    Path::Widen(l) => {
                        let wp = &self.w[r * ldw + 2 * p0..];
                        let sums = block_widen(l.min(level), wp, ldw, rows, a, pairs);
                        for (rr, row) in sums.iter().enumerate().take(rows) {
                            for (c, v) in row.iter().enumerate().take(cols) {
                                // SAFETY: (rr, c) is inside this block (see above).
                                #[allow(unsafe_code)]
                                unsafe {
                                    if add {
                                        *o.add(rr * ldo + c) += v
                                    } else {
                                        *o.add(rr * ldo + c) = *v
                                    }
                                };
                            }
                        }
                    }
                }
            };
            if path == Path::Amx {
                // Column block outer: its packed activations (16 KiB) stay in L1 while the
                // weight rows stream past.
                for s in 0..col_sub {
                    let mut r = r0;
                    while r < r1 {
                        let rows = path.rows().min(r1 - r);
                        unit(r, rows, s);
                        r += rows;
                    }
                }
            } else {
                let mut r = r0;
                while r < r1 {
                    let rows = path.rows().min(r1 - r);
                    for s in 0..col_sub {
                        unit(r, rows, s);
                    }
                    r += rows;
                }
            }
            p0 += pairs;
        }
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        if path == Path::Amx {
            // SAFETY: as above.
            #[allow(unsafe_code)]
            unsafe {
                amx::release()
            };
        }
    }

    /// The product on this thread (for callers that are already parallel), reusing
    /// `packed` (grown to `TASK_COLS * PAIRS` as needed).
    pub fn run_serial(&self, path: Path, out: &mut [f32], packed: &mut Vec<u32>) {
        self.check(path, out.len());
        packed.resize(TASK_COLS * PAIRS_AMX, 0);
        let level = Level::current();
        let mut c0 = 0;
        while c0 < self.n {
            let c1 = (c0 + TASK_COLS).min(self.n);
            self.block(path, level, 0, self.m, c0, c1, packed, out.as_mut_ptr());
            c0 = c1;
        }
    }

    /// The product over rayon's threads.
    pub fn run(&self, path: Path, out: &mut [f32]) {
        self.check(path, out.len());
        let (m, n) = (self.m, self.n);
        let level = Level::current();
        // Tasks: (row block, column block); each writes its own rows x columns of `out`. Each
        // task packs its columns once per k block for all its rows, so rows are split only as
        // far as the threads need work (packing costs 1/rows of the products).
        let col_blocks = n.div_ceil(TASK_COLS);
        let want = 2 * rayon::current_num_threads();
        let gran = path.rows();
        let splits = want.div_ceil(col_blocks.max(1)).clamp(1, m.div_ceil(gran).max(1));
        let mut task_rows = m.div_ceil(splits).div_ceil(gran) * gran;
        if path == Path::Amx {
            // AMX multiplies faster than L3 streams a tall operand: at most 1024 rows
            // (PAIRS_AMX deep: 1 MiB) per task, so a thread's consecutive tasks (same rows,
            // the next columns) find them in L2.
            task_rows = task_rows.min(1024);
        }
        let row_blocks = m.div_ceil(task_rows.max(1));
        let out_addr = out.as_mut_ptr() as usize;
        (0..row_blocks * col_blocks).into_par_iter().for_each_init(
            || vec![0u32; TASK_COLS * PAIRS_AMX],
            |packed, task| {
                let (rb, cb) = (task / col_blocks, task % col_blocks);
                let (r0, r1) = (rb * task_rows, ((rb + 1) * task_rows).min(m));
                let (c0, c1) = (cb * TASK_COLS, ((cb + 1) * TASK_COLS).min(n));
                // Tasks write disjoint blocks of `out`, which outlives the parallel loop.
                self.block(path, level, r0, r1, c0, c1, packed, out_addr as *mut f32);
            },
        );
    }
}

/// [`Product::run`] with `w` `[m, k]` and `out` `[m, n]` at row stride `ldo`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(path: Path, m: usize, n: usize, k: usize, w: &[u16], x: Source, out: &mut [f32], ldo: usize) {
    Product {
        m,
        n,
        k,
        w,
        ldw: k,
        x,
        ldo,
        overwrite: false,
    }
    .run(path, out)
}

/// A linear layer `x W^T (+ b)` with bf16 `W` (`[out, in]`) on f32 `x` (`[tokens, in]`,
/// contiguous) as a candle operation: `x` rounded to bf16, then [`matmul`] with the tokens
/// as rows and `W` packed, into `[tokens, out]` starting from the bias.
pub struct Linear;

impl Linear {
    fn run(
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use half::slice::HalfFloatSliceExt;
        let (CpuStorage::F32(xs), CpuStorage::BF16(ws)) = (x.0, w.0) else {
            candle_core::bail!("bf16 linear: takes f32 activations and bf16 weights");
        };
        let (t, k) = x.1.shape().dims2()?;
        let (m, k2) = w.1.shape().dims2()?;
        if k != k2 || !k.is_multiple_of(2) {
            candle_core::bail!("bf16 linear: input width {k} against weights [{m}, {k2}] (even widths only)");
        }
        let contiguous = |l: &Layout, what: &str| {
            l.contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg(format!("bf16 linear: {what} is not contiguous")))
        };
        let (xa, xz) = contiguous(x.1, "input")?;
        let (wa, wz) = contiguous(w.1, "weight")?;
        // The tokens are the broadcast operand (rounded to bf16 once), the weights the
        // packed one, so the output comes out `[tokens, out]` as stored.
        let xs = &xs[xa..xz];
        let mut xb = vec![0u16; t * k];
        let level = Level::current();
        xb.par_chunks_mut(k.max(1))
            .zip(xs.par_chunks(k.max(1)))
            .for_each(|(o, x)| round_all(level, x, o));
        let mut out = vec![0f32; t * m];
        if let Some((bs, bl)) = b {
            let CpuStorage::F32(bs) = bs else {
                candle_core::bail!("bf16 linear: the bias must be f32");
            };
            let (ba, _) = contiguous(bl, "bias")?;
            let bias = &bs[ba..ba + m];
            out.par_chunks_mut(m.max(1)).for_each(|row| row.copy_from_slice(bias));
        }
        let path = Path::best();
        let wsrc = Source::Bf16Rows(ws[wa..wz].reinterpret_cast(), k);
        // On AMX tasks hold at most 1024 tokens, so many tasks share each column block of
        // the weights: pack them once for all.
        let pre = (path == Path::Amx && t > 1024).then(|| pack_all(wsrc, k, m));
        let x = match &pre {
            Some(p) => Source::Packed(p),
            None => wsrc,
        };
        matmul(path, t, m, k, &xb, x, &mut out, m);
        Ok((CpuStorage::F32(out), Shape::from((t, m))))
    }
}

impl candle_core::CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "latent-linear-bf16"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Self::run((s1, l1), (s2, l2), None)
    }
}

impl candle_core::CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "latent-linear-bf16-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Self::run((s1, l1), (s2, l2), Some((s3, l3)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf(x: f32) -> f64 {
        f64::from(f32::from_bits((to_bf16(x) as u32) << 16))
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        for x in [1.0f32, -2.5, 3.0e-5, 65504.0, 1.0e30] {
            assert_eq!(to_bf16(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
        // Halfway cases round to even.
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert!(f32::from_bits((to_bf16(f32::NAN) as u32) << 16).is_nan());
        assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
    }

    /// A Linux machine whose /proc/cpuinfo lists AMX (and AVX-512 BF16) runs the tiles: the
    /// detection, the permission request and the assembly are not silently skipped.
    #[test]
    fn amx_runs_where_linux_lists_it() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            return;
        };
        let listed = ["amx_tile", "amx_bf16", "avx512_bf16"]
            .iter()
            .all(|f| info.split_whitespace().any(|w| w == *f));
        if listed && std::env::var_os("LATENT_STUDIO_AMX").is_none() && std::env::var_os("LATENT_STUDIO_SIMD").is_none() {
            assert!(amx(), "the CPU lists AMX but the tiles are not used");
            assert_eq!(Path::best(), Path::Amx);
        }
        if !listed {
            assert!(!amx());
        }
    }

    /// Every path this CPU has against an f64 product of the bf16-rounded operands, on
    /// shapes with row, column and depth remainders, both activation layouts, accumulating
    /// onto a bias.
    #[test]
    fn every_path_matches_a_double_precision_product() {
        let mut paths: Vec<Path> = Level::ALL.into_iter().filter(|l| l.available()).map(Path::Widen).collect();
        if hardware() {
            paths.push(Path::Dpbf16);
        }
        if amx() {
            paths.push(Path::Amx);
        }
        for (m, n, k) in [
            (12, 32, 256),
            (29, 77, 300),
            (5, 3, 2),
            (100, 200, 1030),
            (320, 130, 64),
            (64, 96, 344),
        ] {
            let w32: Vec<f32> = crate::rng::TorchRng::new(1).randn_f32(m * k);
            let w: Vec<u16> = w32.iter().map(|&v| to_bf16(v)).collect();
            let x: Vec<f32> = crate::rng::TorchRng::new(2).randn_f32(k * n);
            let bias: Vec<f32> = (0..m).map(|i| i as f32 * 0.01).collect();
            for transposed in [false, true] {
                // x[k][j] at k * n + j, or (a linear layer's input, [n, k]) at j * k + k.
                let (rs, cs) = if transposed { (1, k) } else { (n, 1) };
                let want: Vec<f64> = (0..m * n)
                    .map(|i| {
                        let (o, j) = (i / n, i % n);
                        f64::from(bias[o]) + (0..k).map(|kk| bf(w32[o * k + kk]) * bf(x[kk * rs + j * cs])).sum::<f64>()
                    })
                    .collect();
                let scale = (k as f64).sqrt();
                // The same operand as bf16 rows `[n][k]` (how linear layers pass weights).
                let rows: Vec<u16> = (0..n * k).map(|i| to_bf16(x[(i % k) * rs + (i / k) * cs])).collect();
                for &path in &paths {
                    let pre = pack_all(Source::F32(Strided { data: &x, rs, cs }), k, n);
                    for source in [
                        Source::F32(Strided { data: &x, rs, cs }),
                        Source::Bf16Rows(&rows, k),
                        Source::Packed(&pre),
                    ] {
                        let mut out: Vec<f32> = (0..m * n).map(|i| bias[i / n]).collect();
                        matmul(path, m, n, k, &w, source, &mut out, n);
                        let err = out.iter().zip(&want).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0f64, f64::max);
                        assert!(err < 2e-5 * scale, "{path:?} {m}x{n}x{k} transposed {transposed}: {err}");
                        // Overwriting: what `out` held (NaN here) is never read.
                        let mut out = vec![f32::NAN; m * n];
                        Product {
                            m,
                            n,
                            k,
                            w: &w,
                            ldw: k,
                            x: source,
                            ldo: n,
                            overwrite: true,
                        }
                        .run(path, &mut out);
                        let err = out
                            .iter()
                            .zip(&want)
                            .enumerate()
                            .map(|(i, (a, b))| (f64::from(*a) - (b - f64::from(bias[i / n]))).abs())
                            .fold(0f64, f64::max);
                        assert!(err < 2e-5 * scale, "{path:?} {m}x{n}x{k} overwriting: {err}");
                    }
                }
            }
        }
    }

    /// The linear-layer operation (transposed input and output, bias) against candle's f32
    /// product of the bf16-rounded operands, token counts off the 64-token blocks (and past
    /// 1024, where AMX packs the weights once).
    #[test]
    fn linear_matches_candle() {
        use candle_core::{DType, Device, Tensor};
        let dev = Device::Cpu;
        for (t, k, m) in [(150, 96, 70), (7, 40, 13), (64, 320, 320), (1100, 64, 48)] {
            let x = Tensor::from_vec(crate::rng::TorchRng::new(3).randn_f32(t * k), (t, k), &dev).expect("test value");
            let w = Tensor::from_vec(crate::rng::TorchRng::new(4).randn_f32(m * k), (m, k), &dev)
                .expect("test value")
                .to_dtype(DType::BF16)
                .expect("test value");
            let b = Tensor::from_vec((0..m).map(|i| i as f32 * 0.1).collect::<Vec<_>>(), m, &dev).expect("test value");
            let xr = x
                .to_dtype(DType::BF16)
                .expect("test value")
                .to_dtype(DType::F32)
                .expect("test value");
            let want = xr
                .matmul(&w.to_dtype(DType::F32).expect("test value").t().expect("test value"))
                .expect("test value")
                .broadcast_add(&b)
                .expect("test value");
            let got = x.apply_op3_no_bwd(&w, &b, &Linear).expect("test value");
            assert_eq!(got.dims(), &[t, m]);
            let err = (got - &want)
                .expect("test value")
                .abs()
                .expect("test value")
                .max_all()
                .expect("test value")
                .to_scalar::<f32>()
                .expect("test value");
            assert!(err < 1e-4 * (k as f32).sqrt(), "{t}x{k}x{m}: {err}");
            let no_bias = x.apply_op2_no_bwd(&w, &Linear).expect("test value");
            let err = (no_bias.broadcast_add(&b).expect("test value") - &want)
                .expect("test value")
                .abs()
                .expect("test value")
                .max_all()
                .expect("test value")
                .to_scalar::<f32>()
                .expect("test value");
            assert!(err < 1e-4 * (k as f32).sqrt(), "{t}x{k}x{m} without bias: {err}");
        }
    }
}
