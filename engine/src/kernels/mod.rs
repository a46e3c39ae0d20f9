//! Hand-written compute kernels as candle custom operations: fused CPU attention (AVX2 chosen
//! at run time), CPU convolution and group norm (+ SiLU), their differentiable twins for
//! training, and CUDA kernels. They know tensors and instruction sets, never a model: the
//! networks in [`crate::nets`] decide when to call them.

pub mod cpu_attention;
pub mod cpu_conv;
pub mod cpu_grad;
pub mod cpu_norm;
#[cfg(feature = "cuda")]
pub mod cuda_ops;
