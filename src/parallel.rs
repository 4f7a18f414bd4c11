//! How work runs: a process-local rayon pool and the Ctrl-C hook.
//!
//! The pool is ours, not rayon's global one, because a `fork`ed child (multiprocessing's default on Linux)
//! inherits a global pool whose threads do not exist in it, and hangs on first use. We remember which pid
//! built the pool; a child builds a fresh one and leaks the parent's (never drop threads that are not there).
//! Size: `set_num_threads(n)`, else `NANOFRONTIER_NUM_THREADS`, else all cores (0 also means all cores).
//!
//! Ctrl-C: the bindings install a hook that asks Python whether SIGINT arrived. Long loops call
//! `check_interrupt()` between chunks of work on the calling thread; it costs one clock read.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use rayon::ThreadPool;

use crate::error::{Error, Result};

struct PoolSlot {
    pid: u32,
    threads: usize,
    pool: &'static ThreadPool,
}

static POOL: Mutex<Option<PoolSlot>> = Mutex::new(None);
/// Requested size (0 = not set by `set_num_threads`).
static REQUESTED: AtomicUsize = AtomicUsize::new(0);

fn wanted_threads() -> usize {
    let req = REQUESTED.load(Ordering::Relaxed);
    if req > 0 {
        return req;
    }
    // read once: this runs on every parallel op, and the environment does not change under us
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let env =
            std::env::var("NANOFRONTIER_NUM_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(0);
        if env > 0 { env } else { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) }
    })
}

/// The pool for this process, built on first use (or rebuilt after fork / a size change).
pub fn pool() -> &'static ThreadPool {
    let mut slot = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    let want = wanted_threads();
    if let Some(s) = slot.as_ref() {
        if s.pid == pid && s.threads == want {
            return s.pool;
        }
        // After fork the old pool's threads are gone; after a resize it is simply unused. Either way we
        // leak it: dropping a pool whose threads do not exist would block forever.
    }
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(want)
        .thread_name(|i| format!("nanofrontier-{i}"))
        .build()
        .unwrap_or_else(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a 1-thread pool"));
    let pool: &'static ThreadPool = Box::leak(Box::new(built));
    *slot = Some(PoolSlot { pid, threads: want, pool });
    pool
}

/// Use `n` threads from now on (0 = back to the env var / all cores).
pub fn set_num_threads(n: usize) {
    REQUESTED.store(n, Ordering::Relaxed);
}

/// Threads the pool uses (or will use on next call).
pub fn num_threads() -> usize {
    wanted_threads()
}

/// Run `f` inside our pool (so its `par_iter`s use our threads, never rayon's global pool).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// Elementwise work is split into chunks of this many elements. The split never depends on the thread
/// count, so results are bit-identical on 1 or N threads.
pub const GRAIN: usize = 1 << 14;

/// Fill `out` chunk by chunk, in parallel when it is large: `f(start, chunk)` writes `out[start..start+len]`.
pub fn for_each_chunk<F>(out: &mut [f32], grain: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Send + Sync,
{
    use rayon::prelude::*;
    let grain = grain.max(1);
    if out.len() <= grain {
        f(0, out);
        return;
    }
    install(|| out.par_chunks_mut(grain).enumerate().for_each(|(i, c)| f(i * grain, c)));
}

// ---- Ctrl-C ----

static INTERRUPT_HOOK: OnceLock<fn() -> bool> = OnceLock::new();

thread_local! {
    static LAST_CHECK: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Install the function that says "the user pressed Ctrl-C" (the Python bindings do this once).
pub fn set_interrupt_hook(f: fn() -> bool) {
    let _ = INTERRUPT_HOOK.set(f);
}

/// `Err(Interrupted)` if Ctrl-C was pressed. Asks the hook at most every 50 ms, so it is cheap to call often.
/// Call it only from the thread that entered the core (never from inside a rayon task).
pub fn check_interrupt() -> Result<()> {
    let Some(hook) = INTERRUPT_HOOK.get() else { return Ok(()) };
    let now = Instant::now();
    let due = LAST_CHECK.with(|c| match c.get() {
        Some(t) if now.duration_since(t).as_millis() < 50 => false,
        _ => {
            c.set(Some(now));
            true
        }
    });
    if due && hook() { Err(Error::Interrupted) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizing_the_pool_takes_effect() {
        set_num_threads(1);
        assert_eq!(install(rayon::current_num_threads), 1);
        set_num_threads(2);
        assert_eq!(install(rayon::current_num_threads), 2);
        set_num_threads(0);
    }
}
