//! `uplink`: the command-line program of the uplink workspace (`uplink_tokio::cli`, built with the `cli`
//! feature).

fn main() -> std::process::ExitCode {
    fixed_mmap_threshold();
    uplink_tokio::cli::main()
}

/// glibc's allocator gives each block of 128 KiB or more a mapping of its own, returned to the system when
/// the block is freed; but by default it raises that threshold to the size of each such block freed (up
/// to 32 MiB), after which the gateway's large frames and tool inputs are carved from its heaps, where
/// their memory stays (between longer-lived blocks) after they are freed: 60 MiB of 1 MiB inputs left
/// ~50 MiB resident once their requests had ended. Fixed (at its default), large blocks come and go with
/// their own mappings, and a growing one is moved by the kernel (`mremap`) rather than copied.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fixed_mmap_threshold() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: `mallopt` only sets one of the allocator's parameters; it is called before any other thread
    // starts. A refusal (0) leaves the default behaviour, which is safe too.
    #[allow(unsafe_code)]
    let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) };
}

/// Other allocators keep no such threshold.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fixed_mmap_threshold() {}
