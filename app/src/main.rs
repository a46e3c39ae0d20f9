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

/// Fixes the number of compute threads once. candle asks for it on every matrix product and,
/// unless `RAYON_NUM_THREADS` is set, answers by reading and parsing `/proc/cpuinfo` each time
/// (counting physical cores): measured 1,500 reads a second while training the embedded model,
/// ~15% of a denoiser step. We set the variable to that same physical-core count (a user's own
/// setting wins), so nothing changes but the repeated reads.
#[allow(unsafe_code)]
fn fix_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = num_cpus::get_physical().max(1);
        // SAFETY: called first thing in main, before any other thread exists, so nothing can
        // read the environment concurrently.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
}

/// The error and its causes on one line, each said once: a message that already ends with
/// its cause's text (thiserror's `{source}`) does not repeat it.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = vec![];
    for c in e.chain() {
        let text = c.to_string();
        if parts.last().is_some_and(|p| p.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ").split_whitespace().collect::<Vec<_>>().join(" ")
}

fn main() -> ExitCode {
    fix_thread_count();
    keep_freed_memory();
    let args = cli::Args::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line, no backtrace: these are user errors (bad file, bad size, ...).
            let line = one_line(&e);
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}
