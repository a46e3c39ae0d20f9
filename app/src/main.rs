//! `latent-studio`: the desktop studio (window) and its headless command line.

use std::process::ExitCode;

use clap::Parser;
use latent_studio::cli;

/// Makes glibc keep freed memory for reuse instead of returning it to the system. A
/// generation allocates and frees tensors of tens to hundreds of MB many times per step; by
/// default glibc maps each large one fresh and unmaps it on free, so every use starts with
/// the kernel zeroing its pages (~8% of a 512x512 VAE decode in `perf`). With the thresholds
/// raised the decode is ~12% faster and a UNet step ~5% (BENCHMARKS.md), for ~8% more peak
/// memory, and the process keeps its peak size between generations.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> ExitCode {
    keep_freed_memory();
    let args = cli::Args::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line, no backtrace: these are user errors (bad file, bad size, ...).
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            let line = chain.join(": ").split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}
