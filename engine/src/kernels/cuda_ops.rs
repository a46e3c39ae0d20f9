//! The engine's own CUDA kernels ([`kernels.cu`](kernels.cu)) as candle custom operations:
//! per-channel shift (biases, timestep embeddings) and group norm's normalise + affine
//! (+ SiLU) pass, each one kernel over contiguous data with 32-bit indices. candle runs these
//! as broadcasting kernels that compute strided indices with 64-bit divisions per element
//! (77 ms of an SDXL step's ~260 ms on an H200, BENCHMARKS.md). Inference only: callers use
//! them when no gradient is tracked and the data is on a CUDA device; anything else keeps
//! candle's operations.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CpuStorage, CudaStorage, DType, Layout, Shape, Tensor};

/// Runs `$body` with `$t` the Rust type of `$dtype` (f32, f16, bf16).
macro_rules! by_dtype {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F16 => {
                type $t = half::f16;
                $body
            }
            DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            d => candle_core::bail!("no CUDA kernel for {d:?}"),
        }
    };
}

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/latent_kernels.ptx"));
const MODULE: &str = "latent_studio_kernels";

fn suffix(dtype: DType) -> candle_core::Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        d => candle_core::bail!("no CUDA kernel for {d:?}"),
    })
}

fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> candle_core::Result<CudaView<'a, T>> {
    if !l.is_contiguous() {
        candle_core::bail!("the engine's CUDA kernels take contiguous inputs");
    }
    Ok(s.as_cuda_slice::<T>()?.slice(l.start_offset()..))
}

fn u32_of(n: usize) -> candle_core::Result<u32> {
    u32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("{n} elements: too many for one kernel")))
}

/// `x + shift[c]` with `c = (i / inner) % channels` (the kernel's scale left out).
struct ChannelShift {
    inner: usize,
    channels: usize,
}

impl ChannelShift {
    fn run<T: CudaDType + DeviceRepr>(&self, x: Arg, shift: Arg) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = x.0.device().clone();
        let n = x.1.shape().elem_count();
        let func = dev.get_or_load_custom_func(&format!("channel_affine_{}", suffix(x.0.dtype())?), MODULE, PTX)?;
        let xv = view::<T>(x.0, x.1)?;
        let shiftv = view::<T>(shift.0, shift.1)?;
        // SAFETY: every element is written by the kernel below.
        #[allow(unsafe_code)]
        let out = unsafe { dev.alloc::<T>(n)? };
        let (n32, inner, channels) = (u32_of(n)?, u32_of(self.inner)?, u32_of(self.channels)?);
        let no_scale = 0u64;
        let mut b = func.builder();
        b.arg(&xv);
        b.arg(&no_scale);
        b.arg(&shiftv);
        b.arg(&out);
        b.arg(&n32);
        b.arg(&inner);
        b.arg(&channels);
        // SAFETY: the argument list matches `channel_affine_*` in kernels.cu.
        #[allow(unsafe_code)]
        unsafe { b.launch(LaunchConfig::for_num_elems(n32)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), x.1.shape().clone()))
    }
}

impl candle_core::CustomOp2 for ChannelShift {
    fn name(&self) -> &'static str {
        "channel-shift"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("channel-shift runs on CUDA only")
    }
    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, s: &CudaStorage, sl: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        by_dtype!(x.dtype(), T => self.run::<T>((x, xl), (s, sl)))
    }
}

type Arg<'a> = (&'a CudaStorage, &'a Layout);

/// A three-input operation that only exists on CUDA; [`Op3`] makes it a candle custom op.
trait Cuda3 {
    const NAME: &'static str;
    fn cuda(&self, a: Arg, b: Arg, c: Arg) -> candle_core::Result<(CudaStorage, Shape)>;
}

struct Op3<T>(T);

impl<T: Cuda3 + Send + Sync> candle_core::CustomOp3 for Op3<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("{} runs on CUDA only", T::NAME)
    }
    fn cuda_fwd(
        &self,
        a: &CudaStorage,
        al: &Layout,
        b: &CudaStorage,
        bl: &Layout,
        c: &CudaStorage,
        cl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.0.cuda((a, al), (b, bl), (c, cl))
    }
}

/// Whether the kernels apply: a CUDA tensor of a float dtype with no gradient tracked.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cuda() && !x.track_op() && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
}

/// `x + shift` where `shift` holds one value per index `(i / inner) % channels` of `x`'s
/// elements: a `[B, C, H, W]` tensor plus a `[C]` bias (`inner` = H*W), or plus a `[B, C]`
/// vector (`channels` = B*C).
pub fn add_per_channel(x: &Tensor, shift: &Tensor, inner: usize) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    let shift = shift.to_dtype(x.dtype())?.contiguous()?;
    let op = ChannelShift {
        inner,
        channels: shift.elem_count(),
    };
    x.apply_op2_no_bwd(&shift, &op)
}

/// Group norm for a `[B, C, ...]` tensor: statistics per (sample, group) in f32 by candle,
/// then one kernel normalises, scales, shifts and (with `silu`) applies SiLU.
pub fn group_norm(x: &Tensor, groups: usize, eps: f64, weight: &Tensor, bias: &Tensor, silu: bool) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let (b, c) = (dims[0], dims[1]);
    let inner: usize = dims[2..].iter().product();
    let x = x.contiguous()?;
    let xf = x.reshape((b, groups, c / groups * inner))?.to_dtype(DType::F32)?;
    let mean = xf.mean_keepdim(2)?;
    let var = xf.broadcast_sub(&mean)?.sqr()?.mean_keepdim(2)?;
    let rstd = (var + eps)?.sqrt()?.recip()?.flatten_all()?;
    let mean = mean.flatten_all()?;
    let op = GroupNormApply {
        inner,
        channels: c,
        groups,
        silu,
    };
    let params = Tensor::cat(&[&mean, &rstd], 0)?;
    let affine = Tensor::cat(&[&weight.to_dtype(x.dtype())?, &bias.to_dtype(x.dtype())?], 0)?;
    x.apply_op3_no_bwd(&params, &affine, &Op3(op))
}

/// Group norm's apply pass; `params` is `[mean; rstd]` (f32, B*G each), `affine` is
/// `[weight; bias]` (C each, in x's dtype).
struct GroupNormApply {
    inner: usize,
    channels: usize,
    groups: usize,
    silu: bool,
}

impl GroupNormApply {
    fn run<T: CudaDType + DeviceRepr>(&self, x: Arg, params: Arg, affine: Arg) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = x.0.device().clone();
        let n = x.1.shape().elem_count();
        let func = dev.get_or_load_custom_func(&format!("group_norm_apply_{}", suffix(x.0.dtype())?), MODULE, PTX)?;
        let xv = view::<T>(x.0, x.1)?;
        let stats = params.1.shape().elem_count() / 2;
        let pv = view::<f32>(params.0, params.1)?;
        let (mean, rstd) = (pv.slice(..stats), pv.slice(stats..));
        let av = view::<T>(affine.0, affine.1)?;
        let (weight, bias) = (av.slice(..self.channels), av.slice(self.channels..));
        // SAFETY: every element is written by the kernel below.
        #[allow(unsafe_code)]
        let out = unsafe { dev.alloc::<T>(n)? };
        let (n32, inner, channels, groups, silu) = (
            u32_of(n)?,
            u32_of(self.inner)?,
            u32_of(self.channels)?,
            u32_of(self.groups)?,
            u32::from(self.silu),
        );
        let mut b = func.builder();
        b.arg(&xv);
        b.arg(&mean);
        b.arg(&rstd);
        b.arg(&weight);
        b.arg(&bias);
        b.arg(&out);
        b.arg(&n32);
        b.arg(&inner);
        b.arg(&channels);
        b.arg(&groups);
        b.arg(&silu);
        // SAFETY: the argument list matches `group_norm_apply_*` in kernels.cu.
        #[allow(unsafe_code)]
        unsafe { b.launch(LaunchConfig::for_num_elems(n32)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), x.1.shape().clone()))
    }
}

impl Cuda3 for GroupNormApply {
    const NAME: &'static str = "group-norm-apply";
    fn cuda(&self, x: Arg, params: Arg, affine: Arg) -> candle_core::Result<(CudaStorage, Shape)> {
        by_dtype!(x.0.dtype(), T => self.run::<T>(x, params, affine))
    }
}
