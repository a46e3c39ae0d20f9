//! Dequantizing GGUF blocks on the CPU for one layer's product, split over the cores. The
//! arithmetic is candle's own (`k_quants::GgmlType::to_float`), value for value, so a model
//! kept quantized computes exactly what the same file dequantized at load computes; only
//! the time differs (candle's dequantizer runs on one core). Types without a parallel path
//! here go through candle's.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

/// Blocks one task decodes (a few hundred KiB of output: large enough to amortise the task).
const BLOCKS_PER_TASK: usize = 4096;

/// q8_0: a block is an f16 scale `d` and 32 signed bytes `q`; the value is `q as f32 * d`.
fn q8_0(bytes: &[u8], out: &mut [f32]) {
    const QK: usize = 32;
    const BLOCK: usize = 2 + QK;
    out.par_chunks_mut(QK * BLOCKS_PER_TASK)
        .zip(bytes.par_chunks(BLOCK * BLOCKS_PER_TASK))
        .for_each(|(ys, xs)| {
            for (y, x) in ys.chunks_exact_mut(QK).zip(xs.chunks_exact(BLOCK)) {
                let d = half::f16::from_le_bytes([x[0], x[1]]).to_f32();
                for (dst, &q) in y.iter_mut().zip(&x[2..]) {
                    *dst = f32::from(q as i8) * d;
                }
            }
        });
}

/// The f32 values of `q` (shape as stored), on the CPU: in parallel for q8_0, by candle for
/// the other types and devices.
pub fn dequantize(q: &QTensor) -> candle_core::Result<Tensor> {
    let device = q.device();
    if device.is_cpu() && q.dtype() == GgmlDType::Q8_0 && rayon::current_num_threads() > 1 {
        let n = q.shape().elem_count();
        let data = q.data()?;
        if data.len() * 32 == n * 34 {
            let mut out = vec![0f32; n];
            q8_0(&data, &mut out);
            return Tensor::from_vec(out, q.shape(), &Device::Cpu);
        }
    }
    q.dequantize(&device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel q8_0 decoder gives candle's values exactly, over several tasks' worth of
    /// blocks and a ragged last task.
    #[test]
    fn parallel_q8_0_matches_candle() {
        let mut rng = crate::rng::TorchRng::new(7);
        let n = 64 * (BLOCKS_PER_TASK + 37);
        let x = Tensor::from_vec(rng.randn_f32(n), (n / 64, 64), &Device::Cpu).expect("x");
        let q = QTensor::quantize(&x, GgmlDType::Q8_0).expect("q8_0");
        let want: Vec<f32> = q.dequantize(&Device::Cpu).and_then(|t| t.flatten_all()?.to_vec1()).expect("candle");
        let data = q.data().expect("bytes");
        let mut got = vec![0f32; n];
        q8_0(&data, &mut got);
        assert_eq!(got, want);
        let via = dequantize(&q).expect("dequantize");
        assert_eq!(via.dims(), &[n / 64, 64]);
        assert_eq!(via.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("values"), want);
    }
}
