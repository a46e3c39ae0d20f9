//! Token merging for Stable Diffusion (ToMe for SD, Bolya & Hoffman 2023; the `tomesd`
//! package with `use_rand=False`, A1111's "Token merging ratio"). Before a transformer block's
//! self-attention at the UNet's top level, the most similar tokens are merged (averaged) into
//! a fixed grid of destination tokens; attention runs on the shorter sequence, and its output
//! is copied back to every merged token. Self-attention cost falls with the square of the
//! kept share: a ratio of 0.5 makes that attention about 4x cheaper.
//!
//! Matching, per image: destinations are the top-left token of every 2x2 cell; every other
//! token (a source) finds its most similar destination by cosine similarity of the block's
//! input; the `ratio * tokens` sources with the highest similarity are merged into theirs,
//! the rest stay as they are.

use candle_core::{D, DType, Tensor};

use crate::error::Result;

/// Destination grid stride (tomesd's `sx`, `sy`).
const STRIDE: usize = 2;

/// How the tokens of each batch row merge: `slots[b][i]` is the merged token original token
/// `i` goes to; `counts[b]` how many tokens each merged token averages.
pub struct Merge {
    slots: Vec<Tensor>,
    counts: Vec<Tensor>,
    merged: usize,
}

impl Merge {
    /// Plans the merge of `x` (`[b, h * w, c]`, the block's input) for a `h` x `w` token grid;
    /// `None` when nothing would merge (ratio 0, or a grid too small).
    pub fn plan(x: &Tensor, h: usize, w: usize, ratio: f64) -> Result<Option<Self>> {
        let (b, n, _) = x.dims3()?;
        if n != h * w || ratio <= 0.0 {
            return Ok(None);
        }
        let (hs, ws) = (h / STRIDE, w / STRIDE);
        let mut is_dst = vec![false; n];
        let mut dst = Vec::with_capacity(hs * ws);
        for y in 0..hs {
            for xx in 0..ws {
                let p = y * STRIDE * w + xx * STRIDE;
                is_dst[p] = true;
                dst.push(p as u32);
            }
        }
        let src: Vec<u32> = (0..n as u32).filter(|&p| !is_dst[p as usize]).collect();
        let r = ((n as f64 * ratio) as usize).min(src.len());
        if r == 0 || dst.is_empty() {
            return Ok(None);
        }
        let device = x.device();
        let metric = x.to_dtype(DType::F32)?;
        let metric = metric.broadcast_div(&metric.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?;
        let src_t = Tensor::from_vec(src.clone(), src.len(), device)?;
        let dst_t = Tensor::from_vec(dst.clone(), dst.len(), device)?;
        let merged = n - r;
        let (mut slots, mut counts) = (Vec::with_capacity(b), Vec::with_capacity(b));
        for row in 0..b {
            let m = metric.get(row)?;
            let scores = m.index_select(&src_t, 0)?.matmul(&m.index_select(&dst_t, 0)?.t()?)?;
            let best: Vec<u32> = scores.argmax(D::Minus1)?.to_vec1()?;
            let best_score: Vec<f32> = scores.max(D::Minus1)?.to_vec1()?;
            // Sources by similarity, highest first (a stable sort: ties keep token order).
            let mut order: Vec<usize> = (0..src.len()).collect();
            order.sort_by(|&i, &j| best_score[j].total_cmp(&best_score[i]));
            let kept = src.len() - r;
            let mut slot = vec![0u32; n];
            for (k, &i) in order[r..].iter().enumerate() {
                slot[src[i] as usize] = k as u32;
            }
            for (j, &p) in dst.iter().enumerate() {
                slot[p as usize] = (kept + j) as u32;
            }
            for &i in &order[..r] {
                slot[src[i] as usize] = (kept + best[i] as usize) as u32;
            }
            let mut count = vec![0f32; merged];
            for &s in &slot {
                count[s as usize] += 1.0;
            }
            slots.push(Tensor::from_vec(slot, n, device)?);
            counts.push(Tensor::from_vec(count, (merged, 1), device)?);
        }
        Ok(Some(Self { slots, counts, merged }))
    }

    /// Tokens after merging.
    pub fn len(&self) -> usize {
        self.merged
    }

    /// Whether no token is left (never, for a plan that exists).
    pub fn is_empty(&self) -> bool {
        self.merged == 0
    }

    /// `[b, n, c]` -> `[b, merged, c]`: every merged token the mean of its tokens.
    pub fn merge(&self, x: &Tensor) -> Result<Tensor> {
        let c = x.dim(2)?;
        let dtype = x.dtype();
        let rows = (0..self.slots.len())
            .map(|row| -> Result<Tensor> {
                let xr = x.get(row)?.to_dtype(DType::F32)?;
                let sum = Tensor::zeros((self.merged, c), DType::F32, x.device())?.index_add(&self.slots[row], &xr, 0)?;
                Ok(sum.broadcast_div(&self.counts[row])?.to_dtype(dtype)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// `[b, merged, c]` -> `[b, n, c]`: every token takes its merged token's value.
    pub fn unmerge(&self, y: &Tensor) -> Result<Tensor> {
        let rows = (0..self.slots.len())
            .map(|row| Ok(y.get(row)?.index_select(&self.slots[row], 0)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn merged_tokens_are_means_and_unmerge_copies_them_back() {
        let dev = Device::Cpu;
        // A 4x4 grid of 2x2 cells of two exact kinds: every source has an equal destination.
        let kinds = [[1f32, 0.0, 2.0], [0.0, 3.0, -1.0]];
        let data: Vec<f32> = (0..16).flat_map(|i| kinds[(i / 8 + (i % 4) / 2) % 2]).collect();
        let x = Tensor::from_vec(data, (1, 16, 3), &dev).expect("x");
        let m = Merge::plan(&x, 4, 4, 0.5).expect("plan").expect("merges");
        assert_eq!(m.len(), 8);
        let merged = m.merge(&x).expect("merge");
        assert_eq!(merged.dims(), &[1, 8, 3]);
        // Sources merge only into destinations of their own kind (similarity 1; the other
        // kind's is negative), so the round trip is exact.
        let back = m.unmerge(&merged).expect("unmerge");
        let diff = (back - &x).expect("sub").abs().expect("abs").max_all().expect("max");
        assert_eq!(diff.to_scalar::<f32>().expect("scalar"), 0.0);
        // Ratio 0 merges nothing.
        assert!(Merge::plan(&x, 4, 4, 0.0).expect("plan").is_none());
    }
}
