// Latent Studio's own CUDA kernels (compiled to PTX by engine/build.rs with the `cuda` feature,
// loaded by engine/src/model/cuda_ops.rs). Elementwise passes that candle runs as several
// broadcasting kernels, each computing strided indices with 64-bit divisions per element.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// out[i] = x[i] * scale[c] + shift[c], c = (i / inner) % channels; scale may be null (1).
// A convolution's bias (inner = H*W), a per-sample-and-channel vector (channels = B*C).
template <typename T>
__device__ void channel_affine(const T *x, const T *scale, const T *shift, T *out, unsigned int n,
                               unsigned int inner, unsigned int channels) {
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        unsigned int c = (i / inner) % channels;
        float v = to_f(x[i]);
        if (scale != nullptr) v *= to_f(scale[c]);
        out[i] = from_f<T>(v + to_f(shift[c]));
    }
}

// Group norm's second pass for a contiguous [B, C, inner] input with per-(sample, group)
// mean and 1/std in f32: normalise, scale and shift per channel, optionally SiLU, one pass.
template <typename T>
__device__ void group_norm_apply(const T *x, const float *mean, const float *rstd, const T *weight,
                                 const T *bias, T *out, unsigned int n, unsigned int inner,
                                 unsigned int channels, unsigned int groups, unsigned int silu) {
    unsigned int per_group = channels / groups;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        unsigned int bc = i / inner;
        unsigned int c = bc % channels;
        unsigned int s = (bc / channels) * groups + c / per_group;
        float v = (to_f(x[i]) - mean[s]) * rstd[s] * to_f(weight[c]) + to_f(bias[c]);
        if (silu) v = v / (1.0f + __expf(-v));
        out[i] = from_f<T>(v);
    }
}

#define INSTANTIATE(SUFFIX, T)                                                                        \
    extern "C" __global__ void channel_affine_##SUFFIX(const T *x, const T *scale, const T *shift,   \
                                                        T *out, unsigned int n, unsigned int inner,  \
                                                        unsigned int channels) {                     \
        channel_affine<T>(x, scale, shift, out, n, inner, channels);                                 \
    }                                                                                                 \
    extern "C" __global__ void group_norm_apply_##SUFFIX(                                            \
        const T *x, const float *mean, const float *rstd, const T *weight, const T *bias, T *out,    \
        unsigned int n, unsigned int inner, unsigned int channels, unsigned int groups,              \
        unsigned int silu) {                                                                          \
        group_norm_apply<T>(x, mean, rstd, weight, bias, out, n, inner, channels, groups, silu);     \
    }

INSTANTIATE(f32, float)
INSTANTIATE(f16, __half)
INSTANTIATE(bf16, __nv_bfloat16)
