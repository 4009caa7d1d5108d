//! `mcp_cli::memory::release_free_memory`: the one `unsafe` call of the CLI (glibc's
//! `malloc_trim`), exercised where it does something. Alone in its test binary, so that no
//! other test allocates or frees while resident memory is compared.

/// Resident memory, in KiB (Linux).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Memory freed in the middle of the heap stays resident until trimmed: 2,048 blocks of
/// 16 KiB (below the size glibc maps on its own, so they come from the heap), written to,
/// and every other one freed (so that the free ones cannot merge into the top of the heap
/// and be returned by `free` itself). Trimming gives back at least half of the 16 MiB
/// freed (the pages wholly inside each free block), and what is still in use is intact.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn trimming_returns_memory_freed_in_the_middle_of_the_heap() {
    const BLOCK: usize = 16 * 1024;
    let mut blocks: Vec<Option<Vec<u8>>> = (0..2048)
        .map(|i| Some(vec![(i % 251) as u8 + 1; BLOCK]))
        .collect();
    for block in blocks.iter_mut().step_by(2) {
        *block = None;
    }
    let before = rss_kib();
    assert!(mcp_cli::memory::release_free_memory());
    let after = rss_kib();
    assert!(
        before.saturating_sub(after) >= 8 * 1024,
        "RSS {before} KiB before trimming, {after} KiB after"
    );
    for (i, block) in blocks.iter().enumerate() {
        if let Some(block) = block {
            assert!(block.iter().all(|&b| b == (i % 251) as u8 + 1));
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
#[test]
fn without_glibc_nothing_is_trimmed_and_it_says_so() {
    assert!(!mcp_cli::memory::release_free_memory());
}
