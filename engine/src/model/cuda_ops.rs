//! The engine's own CUDA kernels ([`kernels.cu`](kernels.cu)) as candle custom operations:
//! per-channel scale/shift (biases, timestep embeddings) and group norm's normalise + affine
//! (+ SiLU) pass, each one kernel over contiguous data with 32-bit indices. candle runs these
//! as broadcasting kernels that compute strided indices with 64-bit divisions per element
//! (77 ms of an SDXL step's ~260 ms on an H200, BENCHMARKS.md). Inference only: callers use
//! them when no gradient is tracked and the data is on a CUDA device; anything else keeps
//! candle's operations.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CpuStorage, CudaStorage, DType, Layout, Shape, Tensor};

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

/// `x * scale[c] + shift[c]` with `c = (i / inner) % channels`.
struct ChannelAffine {
    inner: usize,
    channels: usize,
}

impl ChannelAffine {
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        x: (&CudaStorage, &Layout),
        scale: Option<(&CudaStorage, &Layout)>,
        shift: (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dev = x.0.device().clone();
        let n = x.1.shape().elem_count();
        let func = dev.get_or_load_custom_func(&format!("channel_affine_{}", suffix(x.0.dtype())?), MODULE, PTX)?;
        let xv = view::<T>(x.0, x.1)?;
        let shiftv = view::<T>(shift.0, shift.1)?;
        let scalev = scale.map(|(s, l)| view::<T>(s, l)).transpose()?;
        // SAFETY: every element is written by the kernel below.
        #[allow(unsafe_code)]
        let out = unsafe { dev.alloc::<T>(n)? };
        let (n32, inner, channels) = (u32_of(n)?, u32_of(self.inner)?, u32_of(self.channels)?);
        let null = 0u64;
        let mut b = func.builder();
        b.arg(&xv);
        match &scalev {
            Some(v) => b.arg(v),
            None => b.arg(&null),
        };
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

    fn dispatch(
        &self,
        x: (&CudaStorage, &Layout),
        scale: Option<(&CudaStorage, &Layout)>,
        shift: (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        match x.0.dtype() {
            DType::F32 => self.run::<f32>(x, scale, shift),
            DType::F16 => self.run::<half::f16>(x, scale, shift),
            DType::BF16 => self.run::<half::bf16>(x, scale, shift),
            d => candle_core::bail!("no CUDA kernel for {d:?}"),
        }
    }
}

impl candle_core::CustomOp2 for ChannelAffine {
    fn name(&self) -> &'static str {
        "channel-shift"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("channel-shift runs on CUDA only")
    }
    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, s: &CudaStorage, sl: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.dispatch((x, xl), None, (s, sl))
    }
}

impl candle_core::CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "channel-affine"
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
        candle_core::bail!("channel-affine runs on CUDA only")
    }
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        scale: &CudaStorage,
        scl: &Layout,
        shift: &CudaStorage,
        shl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.dispatch((x, xl), Some((scale, scl)), (shift, shl))
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
    let op = ChannelAffine {
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
    x.apply_op3_no_bwd(&params, &affine, &op)
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
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        x: (&CudaStorage, &Layout),
        params: (&CudaStorage, &Layout),
        affine: (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
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

impl candle_core::CustomOp3 for GroupNormApply {
    fn name(&self) -> &'static str {
        "group-norm-apply"
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
        candle_core::bail!("group-norm-apply runs on CUDA only")
    }
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        p: &CudaStorage,
        pl: &Layout,
        a: &CudaStorage,
        al: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        match x.dtype() {
            DType::F32 => self.run::<f32>((x, xl), (p, pl), (a, al)),
            DType::F16 => self.run::<half::f16>((x, xl), (p, pl), (a, al)),
            DType::BF16 => self.run::<half::bf16>((x, xl), (p, pl), (a, al)),
            d => candle_core::bail!("no CUDA kernel for {d:?}"),
        }
    }
}
