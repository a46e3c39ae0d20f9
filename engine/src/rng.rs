//! Noise that matches torch's CPU generator bit for bit (up to libm rounding).
//!
//! diffusers and ComfyUI draw the initial latents with `torch.Generator("cpu").manual_seed(seed)`
//! followed by `torch.randn(shape)`; reproducing an image shared with its seed needs the same
//! stream. torch uses a 32-bit Mersenne Twister; `randn` on a contiguous float tensor of 16 or
//! more elements first fills it with uniforms (24-bit mantissas), then turns each block of 16
//! into normals with Box-Muller (pairs `j`, `j + 8`), recomputing the last 16 values from fresh
//! uniforms when the length is not a multiple of 16.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// torch's `mt19937` engine as seeded by `manual_seed`.
#[derive(Clone)]
pub struct TorchRng {
    state: Box<[u32; N]>,
    index: usize,
}

impl std::fmt::Debug for TorchRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchRng").field("index", &self.index).finish_non_exhaustive()
    }
}

impl TorchRng {
    /// Same as `torch.Generator("cpu").manual_seed(seed)`: torch keeps only the low 32 bits.
    pub fn new(seed: u64) -> Self {
        let mut state = Box::new([0u32; N]);
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        Self { state, index: N }
    }

    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.state[i] & UPPER_MASK) | (self.state[(i + 1) % N] & LOWER_MASK);
            let mut next = self.state[(i + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= MATRIX_A;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    /// One raw 32-bit draw (`generator->random()`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// A float uniform in [0, 1) with torch's 24-bit construction.
    pub fn next_uniform_f32(&mut self) -> f32 {
        let bits = self.next_u32() & ((1 << 24) - 1);
        (bits as f64 * (1.0 / (1u64 << 24) as f64)) as f32
    }

    /// `torch.randn(n)` in float32 for `n >= 16`; shorter requests use torch's scalar path
    /// (double Box-Muller with caching), which no image-sized tensor ever takes, so they are
    /// served from the same 16-block construction padded and truncated.
    pub fn randn_f32(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            let mut block = self.randn_f32(16);
            block.truncate(n);
            return block;
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.next_uniform_f32()).collect();
        let mut i = 0;
        while i + 16 <= n {
            box_muller_16(&mut data[i..i + 16]);
            i += 16;
        }
        if !n.is_multiple_of(16) {
            let tail = n - 16;
            for v in &mut data[tail..] {
                *v = self.next_uniform_f32();
            }
            box_muller_16(&mut data[tail..]);
        }
        data
    }
}

impl TorchRng {
    /// `torch.randn(n, dtype=torch.float64)` for `n >= 16` (53-bit uniforms from two draws each,
    /// Box-Muller in double); shorter requests are padded and truncated as in [`randn_f32`].
    ///
    /// [`randn_f32`]: TorchRng::randn_f32
    pub fn randn_f64(&mut self, n: usize) -> Vec<f64> {
        if n < 16 {
            let mut block = self.randn_f64(16);
            block.truncate(n);
            return block;
        }
        let mut data: Vec<f64> = (0..n).map(|_| self.next_uniform_f64()).collect();
        let mut i = 0;
        while i + 16 <= n {
            box_muller_16_f64(&mut data[i..i + 16]);
            i += 16;
        }
        if !n.is_multiple_of(16) {
            let tail = n - 16;
            for v in &mut data[tail..] {
                *v = self.next_uniform_f64();
            }
            box_muller_16_f64(&mut data[tail..]);
        }
        data
    }

    /// A double uniform in [0, 1) with torch's 53-bit construction (`random64`: high word first).
    pub fn next_uniform_f64(&mut self) -> f64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        let bits = ((hi << 32) | lo) & ((1u64 << 53) - 1);
        bits as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal noise shaped and typed like `like` (f64 tensors get torch's double
    /// stream, everything else its float stream), on the same device.
    pub fn randn_like(&mut self, like: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        self.randn_as(like, like.dtype())
    }

    /// Standard normal noise shaped like `like`, drawn as `dtype` and returned in `like`'s dtype.
    pub fn randn_as(&mut self, like: &candle_core::Tensor, dtype: candle_core::DType) -> candle_core::Result<candle_core::Tensor> {
        let n = like.elem_count();
        let t = if dtype == candle_core::DType::F64 {
            candle_core::Tensor::from_vec(self.randn_f64(n), like.dims(), like.device())?
        } else {
            candle_core::Tensor::from_vec(self.randn_f32(n), like.dims(), like.device())?
        };
        t.to_dtype(like.dtype())
    }
}

fn box_muller_16_f64(data: &mut [f64]) {
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        data[j] = radius * theta.cos();
        data[j + 8] = radius * theta.sin();
    }
}

fn box_muller_16(data: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0f32 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0f32 * u1.ln()).sqrt();
        let theta = (2.0f64 * std::f64::consts::PI * u2 as f64) as f32;
        data[j] = radius * theta.cos();
        data[j + 8] = radius * theta.sin();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_reference_output() {
        // The C++ standard requires the 10000th output of mt19937 seeded with 5489 to be this.
        let mut rng = TorchRng::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = rng.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn torch_randn_f64_seed_0() {
        // Printed by torch 2.15: torch.randn(20, generator=g.manual_seed(0), dtype=torch.float64)
        let mut rng = TorchRng::new(0);
        let v = rng.randn_f64(20);
        let expected = [
            (0, -2.310_411_800_234_176),
            (1, -0.373_250_861_257_764_3),
            (19, -0.749_891_522_839_194_1),
        ];
        for (i, e) in expected {
            assert!((v[i] - e).abs() < 1e-12, "[{i}] {} vs {e}", v[i]);
        }
    }

    #[test]
    fn torch_randn_seed_0_prefix() {
        // Printed by torch 2.15: g = torch.Generator("cpu").manual_seed(0); torch.randn(16, generator=g)[:8]
        let mut rng = TorchRng::new(0);
        let v = rng.randn_f32(16);
        let expected = [
            -1.1258398f32,
            -1.1523602,
            -0.25057858,
            -0.433_878_8,
            0.84871036,
            0.69200915,
            -0.31601277,
            -2.1152194,
        ];
        for (a, b) in v.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // ... and torch.randn(20, generator=g)[-4:] (the last 16 recomputed from fresh uniforms).
        let mut rng = TorchRng::new(0);
        let v = rng.randn_f32(20);
        let expected = [0.931_826_6_f32, 1.2590092, 2.0049806, 0.053736903];
        for (a, b) in v[16..].iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
