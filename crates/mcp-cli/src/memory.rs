//! Giving memory back to the system after a connection flood: a concern of the `mcp`
//! binary, not of the libraries (issue 11, section 3).
//!
//! The server holds little for an idle connection (no read or write buffer until there is
//! something to read or write: `mcp-transport`'s wire I/O), and frees what a connection
//! held when it closes. But the C allocator (glibc's malloc, Rust's `System` allocator on
//! Linux) keeps freed memory in its free lists rather than give it back: after thousands
//! of connections came and went, the process's resident memory stays where the flood left
//! it, although none of it is in use. [`Trimmer`] asks the allocator to return its free
//! pages (`malloc_trim`) once a server's connections dropped by [`Trimmer::MIN_DROP`] or
//! more since it last did.
//!
//! Why here and not in `mcp-server`: a library must not decide its users' allocator or
//! call into it behind their back, and `mcp-server` has no `unsafe` code. An application
//! embedding the server chooses for itself (this module, or an allocator that returns
//! memory by itself, such as jemalloc or mimalloc with their purge settings).
//!
//! On targets without glibc [`release_free_memory`] does nothing and says so.

use std::time::Duration;

use mcp_server::ServerHandle;
use tokio::task::JoinHandle;

/// Asks the C allocator to give the free memory it holds back to the system. Returns
/// whether this platform has a way to (glibc: `malloc_trim`); `false` elsewhere, where it
/// does nothing.
///
/// It walks the allocator's free lists under their locks: milliseconds for hundreds of
/// MiB, so call it rarely and off the runtime's worker threads (`spawn_blocking`), as
/// [`Trimmer`] does.
pub fn release_free_memory() -> bool {
    trim()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: `malloc_trim` takes a plain integer (the padding to keep at the top of the
    // heap) and touches only glibc's own allocator state, under that allocator's locks
    // (glibc documents it MT-Safe). It releases pages that lie wholly inside free chunks
    // (or past the top of the heap); memory in use is never moved or freed, so no pointer
    // Rust code holds is invalidated, and the contents of free chunks are not observable.
    // Its return value only says whether memory was released.
    unsafe {
        libc::malloc_trim(0);
    }
    true
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

/// Watches a server and gives the allocator's free memory back once its open connections
/// dropped by [`Trimmer::MIN_DROP`] or more since the last time (or since it started):
/// after a flood of connections is gone, the process's resident memory comes back near
/// where it was before. Looks once per [`Trimmer::EVERY`]; stops when dropped.
#[derive(Debug)]
pub struct Trimmer {
    task: JoinHandle<()>,
}

impl Trimmer {
    /// How often the server's connection count is looked at.
    pub const EVERY: Duration = Duration::from_secs(1);
    /// Connections that must have gone away (from the highest count seen since the last
    /// trim) before trimming: the free memory of a few connections is not worth the walk.
    pub const MIN_DROP: usize = 256;

    /// Starts watching `server` on the current tokio runtime. On a platform without a way
    /// to trim ([`release_free_memory`] answers `false`), the task ends at once.
    pub fn spawn(server: ServerHandle) -> Trimmer {
        let task = tokio::spawn(async move {
            let mut peak = server.stats().open_connections;
            let mut tick = tokio::time::interval(Self::EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let open = server.stats().open_connections;
                peak = peak.max(open);
                if peak - open < Self::MIN_DROP {
                    continue;
                }
                peak = open;
                match tokio::task::spawn_blocking(release_free_memory).await {
                    Ok(true) => tracing::debug!(open, "gave free memory back to the system"),
                    // Nothing to trim with on this platform: stop looking.
                    Ok(false) | Err(_) => return,
                }
            }
        });
        Trimmer { task }
    }
}

impl Drop for Trimmer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
