//! Hand-written compute kernels as candle custom operations: fused CPU attention, CPU
//! convolution, group norm (+ SiLU) and GEGLU (each compiled for AVX-512, AVX2 and the
//! baseline, chosen at run time by [`simd`]), their differentiable twins for training, and
//! CUDA kernels. They know tensors and instruction sets, never a model: the
//! networks in [`crate::nets`] decide when to call them.

pub mod cpu_act;
pub mod cpu_attention;
pub mod cpu_bf16;
pub mod cpu_conv;
pub mod cpu_grad;
pub mod cpu_norm;
#[cfg(feature = "cuda")]
pub mod cuda_ops;
pub mod dequant;
pub mod simd;

/// The CPU kernel set matrix products and convolutions run with here, chosen at run time:
/// for `latent-studio info --device` and the figures in BENCHMARKS.md.
pub fn cpu_kernel_set() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let has = |f: &str| match f {
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
            "avx512vnni" => std::arch::is_x86_feature_detected!("avx512vnni"),
            "avx512bf16" => std::arch::is_x86_feature_detected!("avx512bf16"),
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            "f16c" => std::arch::is_x86_feature_detected!("f16c"),
            _ => false,
        };
        let mut flags: Vec<&str> = ["avx512f", "avx512bw", "avx512vnni", "avx512bf16", "avx2", "fma", "f16c"]
            .into_iter()
            .filter(|f| has(f))
            .collect();
        // AMX's run-time check is not stable Rust yet: Linux says it in /proc/cpuinfo.
        if std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains(" amx_tile")) {
            flags.push("amx-tile");
        }
        // gemm takes its AVX-512 kernels on avx512f alone, its AVX2 ones on fma.
        let gemm = if has("avx512f") {
            "AVX-512 (gemm x86-v4 kernels)"
        } else if has("fma") {
            "AVX2 + FMA (gemm x86-v3 kernels)"
        } else {
            "SSE (gemm's baseline kernels)"
        };
        let own = simd::Level::current();
        let capped = if own < simd::Level::detected() {
            " (capped by LATENT_STUDIO_SIMD)"
        } else {
            ""
        };
        // --dtype bf16's matrix products (kernels::cpu_bf16).
        let bf16 = if cpu_bf16::amx() {
            "AMX tiles (tdpbf16ps)"
        } else if cpu_bf16::hardware() {
            "AVX-512 BF16 (vdpbf16ps)"
        } else {
            "none (bf16 weights computed in f32)"
        };
        format!(
            "{gemm} for matrix products, {}{capped} for attention, norms and activations, bf16 products: {bf16}; CPU flags: {}",
            own.name(),
            flags.join(" ")
        )
    }
    #[cfg(target_arch = "aarch64")]
    {
        "NEON (gemm's aarch64 kernels)".to_string()
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "gemm's portable kernels".to_string()
    }
}
