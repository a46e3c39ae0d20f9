//! With the `cuda` feature: compiles the engine's own CUDA kernels (src/kernels/kernels.cu) to
//! PTX with nvcc, as candle does its own (NVCC or CUDA_ROOT/bin/nvcc, else nvcc on PATH;
//! CUDA_COMPUTE_CAP picks the PTX target, default 80: Ampere and newer load it). Without the
//! feature it does nothing.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=src/kernels/kernels.cu");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("latent_kernels.ptx");
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CUDA_ROOT").map(|r| PathBuf::from(r).join("bin").join("nvcc")))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap: String = std::env::var("CUDA_COMPUTE_CAP")
        .unwrap_or_else(|_| "80".into())
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&out)
        .arg("src/kernels/kernels.cu")
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!("{} could not compile src/kernels/kernels.cu: {other:?}", nvcc.display()),
    }
}
