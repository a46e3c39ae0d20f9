//! Which vector instructions the hand-written CPU kernels run with, chosen at run time.
//!
//! One binary serves every x86-64 machine: each kernel body is compiled three times (AVX-512,
//! AVX2 + FMA, and the portable baseline) by [`simd_fn!`](crate::simd_fn) and the widest
//! level the CPU has is taken. `LATENT_STUDIO_SIMD=avx2` (or `portable`) caps it for the whole
//! process (to compare paths, or to step around a kernel); tests force each level the machine
//! has with [`force`]. gemm (candle's matrix product) chooses its own kernels the same way.

use std::cell::Cell;
use std::sync::OnceLock;

/// A set of vector instructions a kernel can be compiled for, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Whatever the compilation target guarantees (SSE2 on x86-64, NEON on aarch64).
    Portable,
    /// AVX2 with FMA (8 f32 lanes).
    Avx2,
    /// AVX-512 F/BW/VL/DQ (16 f32 lanes).
    Avx512,
}

impl Level {
    /// Every level, narrowest first.
    pub const ALL: [Level; 3] = [Level::Portable, Level::Avx2, Level::Avx512];

    /// The widest level this CPU supports.
    pub fn detected() -> Level {
        static DETECTED: OnceLock<Level> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
                let avx512 = ["avx512f", "avx512bw", "avx512vl", "avx512dq"].iter().all(|f| match *f {
                    "avx512f" => is_x86_feature_detected!("avx512f"),
                    "avx512bw" => is_x86_feature_detected!("avx512bw"),
                    "avx512vl" => is_x86_feature_detected!("avx512vl"),
                    _ => is_x86_feature_detected!("avx512dq"),
                });
                if avx2 && avx512 {
                    return Level::Avx512;
                }
                if avx2 {
                    return Level::Avx2;
                }
            }
            Level::Portable
        })
    }

    /// Whether this CPU can run kernels compiled for this level.
    pub fn available(self) -> bool {
        self <= Level::detected()
    }

    /// The level kernels run with on this thread: a level [`force`]d here, else the detected
    /// one capped by `LATENT_STUDIO_SIMD`.
    pub fn current() -> Level {
        if let Some(l) = FORCED.with(Cell::get) {
            return l;
        }
        static CAPPED: OnceLock<Level> = OnceLock::new();
        *CAPPED.get_or_init(|| {
            let cap = std::env::var("LATENT_STUDIO_SIMD")
                .ok()
                .and_then(|v| Level::parse(&v))
                .unwrap_or(Level::Avx512);
            cap.min(Level::detected())
        })
    }

    /// `portable`, `avx2`, `avx512` (as `LATENT_STUDIO_SIMD` takes them).
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" | "sse" | "none" => Some(Level::Portable),
            "avx2" => Some(Level::Avx2),
            "avx512" | "avx-512" => Some(Level::Avx512),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "AVX2 + FMA",
            Level::Avx512 => "AVX-512",
        }
    }
}

thread_local! {
    static FORCED: Cell<Option<Level>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's kernels at `level` (kernels read the level on the calling
/// thread and hand it to their workers). `None` when this CPU lacks the level.
pub fn force<R>(level: Level, f: impl FnOnce() -> R) -> Option<R> {
    if !level.available() {
        return None;
    }
    let before = FORCED.with(|c| c.replace(Some(level)));
    struct Restore(Option<Level>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(before);
    Some(f())
}

/// Defines `fn name(level: Level, args..) -> R` whose body is compiled for AVX-512, for AVX2 +
/// FMA and for the baseline, and runs the version `level` names. Everything the body calls
/// in its inner loops must be `#[inline(always)]` (or plain `for` loops over slices), so it
/// is compiled into each version; iterator adapters such as `for_each` are separate generic
/// functions that would stay at the baseline.
///
/// `level` must be [`Level::available`] (every value [`Level::current`] returns is).
#[macro_export]
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident $(<$lt:lifetime>)? ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name $(<$lt>)? (level: $crate::kernels::simd::Level, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body $(<$lt>)? ($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            fn v4 $(<$lt>)? ($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            fn v3 $(<$lt>)? ($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            match level {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: levels above Portable are only ever handed out when the CPU has
                // them (Level::current, force).
                $crate::kernels::simd::Level::Avx512 => {
                    debug_assert!(level.available());
                    #[allow(unsafe_code)]
                    unsafe {
                        v4($($arg),*)
                    }
                }
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                $crate::kernels::simd::Level::Avx2 => {
                    debug_assert!(level.available());
                    #[allow(unsafe_code)]
                    unsafe {
                        v3($($arg),*)
                    }
                }
                _ => body($($arg),*),
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forcing_a_level_is_scoped_and_refused_when_missing() {
        let outside = Level::current();
        for level in Level::ALL {
            let got = force(level, Level::current);
            if level.available() {
                assert_eq!(got, Some(level));
            } else {
                assert_eq!(got, None);
            }
            assert_eq!(Level::current(), outside);
        }
        assert!(Level::Portable.available());
        assert!(Level::current() <= Level::detected());
        assert_eq!(Level::parse("AVX2"), Some(Level::Avx2));
        assert_eq!(Level::parse("avx-512"), Some(Level::Avx512));
        assert_eq!(Level::parse("fast"), None);
    }

    crate::simd_fn! {
        fn sum_of_squares(v: &[f32]) -> f32 {
            let mut acc = [0f32; 16];
            for c in v.chunks_exact(16) {
                for l in 0..16 {
                    acc[l] += c[l] * c[l];
                }
            }
            acc.iter().sum::<f32>() + v.chunks_exact(16).remainder().iter().map(|x| x * x).sum::<f32>()
        }
    }

    #[test]
    fn every_available_level_computes_the_same() {
        let v: Vec<f32> = (0..1001).map(|i| (i as f32 * 0.37).sin()).collect();
        let want: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        for level in Level::ALL.into_iter().filter(|l| l.available()) {
            let got = sum_of_squares(level, &v);
            assert!((f64::from(got) - want).abs() < 1e-3, "{level:?}: {got} vs {want}");
        }
    }
}
