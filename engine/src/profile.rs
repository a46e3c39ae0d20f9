//! Where a network's time goes: wall time per kind of operation (convolutions, linear layers,
//! attention, normalisation), for `latent-studio bench unet|vae --profile` and the per-stage
//! table of BENCHMARKS.md.
//!
//! Off unless [`enable`]d on the calling thread (each thread measures its own work, so
//! parallel jobs and tests never mix); off, each [`span`] costs one thread-local read. When on, a span measures
//! its own wall time minus that of spans opened inside it on the same thread (a convolution's
//! unfold is not also counted as its matrix product), so the stages add up to at most the
//! whole, and what is left is element-wise work, copies and allocation. CPU work is
//! synchronous; on a GPU the figures are launch times, not kernel times.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The kinds of work a network step is split into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Convolutions with a kernel wider than 1x1: their matrix products.
    Conv,
    /// Building a convolution's unfolded input (im2col band copies).
    Unfold,
    /// 1x1 convolutions (channel mixing as one matrix product).
    Conv1x1,
    /// Linear layers (attention projections, feed-forward, time embedding).
    Linear,
    /// Scaled dot-product attention: scores, softmax and the product with the values.
    Attention,
    /// Group and layer normalisation (with the fused SiLU where it applies).
    Norm,
}

impl Stage {
    /// Every stage, in the order tables print them.
    pub const ALL: [Stage; 6] = [
        Stage::Conv,
        Stage::Unfold,
        Stage::Conv1x1,
        Stage::Linear,
        Stage::Attention,
        Stage::Norm,
    ];

    /// The stage's name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Conv => "conv 3x3 (matrix product)",
            Stage::Unfold => "conv unfold (copies)",
            Stage::Conv1x1 => "conv 1x1",
            Stage::Linear => "linear",
            Stage::Attention => "attention",
            Stage::Norm => "norm",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static NANOS: [Cell<u64>; 6] = const { [const { Cell::new(0) }; 6] };
    static CALLS: [Cell<u64>; 6] = const { [const { Cell::new(0) }; 6] };
    /// Time spent in spans nested inside the innermost open span of this thread.
    static CHILDREN: Cell<u64> = const { Cell::new(0) };
}

/// Turns measuring on or off for this thread (and clears its counters when turning it on).
pub fn enable(on: bool) {
    if on {
        take();
    }
    ENABLED.with(|e| e.set(on));
}

/// Whether spans on this thread are being measured.
pub fn enabled() -> bool {
    ENABLED.with(Cell::get)
}

/// This thread's time and calls per stage since the last call (or [`enable`]), and clears them.
pub fn take() -> Vec<(Stage, Duration, u64)> {
    NANOS.with(|nanos| {
        CALLS.with(|calls| {
            Stage::ALL
                .iter()
                .map(|&s| (s, Duration::from_nanos(nanos[s.index()].take()), calls[s.index()].take()))
                .collect()
        })
    })
}

/// A measured stretch of work; its time is counted when it is dropped.
pub struct Span {
    open: Option<(Stage, Instant, u64)>,
}

/// Opens a span of `stage` on this thread (a no-op unless measuring is on).
pub fn span(stage: Stage) -> Span {
    if !enabled() {
        return Span { open: None };
    }
    let outer = CHILDREN.with(|c| c.replace(0));
    Span {
        open: Some((stage, Instant::now(), outer)),
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        let Some((stage, start, outer)) = self.open.take() else {
            return;
        };
        let total = start.elapsed().as_nanos() as u64;
        let inner = CHILDREN.with(|c| c.replace(outer.saturating_add(total)));
        NANOS.with(|n| {
            let n = &n[stage.index()];
            n.set(n.get() + total.saturating_sub(inner));
        });
        CALLS.with(|c| {
            let c = &c[stage.index()];
            c.set(c.get() + 1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_spans_count_their_own_time_once() {
        enable(true);
        let outer_start = Instant::now();
        {
            let _conv = span(Stage::Conv);
            std::thread::sleep(Duration::from_millis(30));
            {
                let _unfold = span(Stage::Unfold);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let whole = outer_start.elapsed();
        let got = take();
        enable(false);
        let of = |s: Stage| got.iter().find(|g| g.0 == s).map(|g| (g.1, g.2)).expect("test value");
        let (conv, conv_calls) = of(Stage::Conv);
        let (unfold, unfold_calls) = of(Stage::Unfold);
        assert_eq!((conv_calls, unfold_calls), (1, 1));
        assert!(unfold >= Duration::from_millis(20), "{unfold:?}");
        assert!(conv >= Duration::from_millis(30), "{conv:?}");
        // The unfold is not counted inside the convolution as well.
        assert!(conv + unfold <= whole, "{conv:?} + {unfold:?} > {whole:?}");
        // Off: nothing is counted.
        drop(span(Stage::Norm));
        assert!(take().iter().all(|g| g.2 == 0));
    }
}
