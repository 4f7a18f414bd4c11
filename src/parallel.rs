//! How work runs: a process-local rayon pool, whole calls handed to it, and the Ctrl-C hook.
//!
//! The pool is ours, not rayon's global one, because a `fork`ed child (multiprocessing's default on Linux)
//! inherits a global pool whose threads do not exist in it, and hangs on first use. We remember which pid
//! built the pool; a child builds a fresh one and leaks the parent's (never drop threads that are not there).
//! A resize in the process that built the pool frees the old one (its threads exit) once no call holds it.
//! Size: `set_num_threads(n)`, else `NANOFRONTIER_NUM_THREADS`, else all cores (0 also means all cores).
//!
//! Whole calls on a worker: `install` from a thread outside the pool injects a job, wakes a worker and puts
//! the caller to sleep until it is done, every time. A model forward or a backward pass makes hundreds of
//! such calls. `run_on_worker` runs the whole call on a pool worker instead, where each `install` is a plain
//! call and each `par_iter` a work-stealing join; the caller waits, polling for Ctrl-C. It costs one
//! hand-off (10–50 µs on a VM), so it is for calls with many parallel steps, not for a single small op.
//! One such call is on the pool at a time; a concurrent one runs inline on its own thread (see `OneCall`).
//!
//! Ctrl-C: the bindings install a hook that asks Python whether SIGINT arrived. Long loops call
//! `check_interrupt()` between chunks of work. Inline (on the thread that entered the core) it asks the
//! hook at most every 50 ms; inside `run_on_worker` it reads the call's stop flag, which the waiting caller
//! sets when its own polls of the hook see SIGINT.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rayon::ThreadPool;

use crate::error::{Error, Result};
use crate::runtime;

struct PoolSlot {
    pid: u32,
    threads: usize,
    pool: Arc<ThreadPool>,
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

/// The pool for this process, built on first use (or rebuilt after fork / a size change). Callers hold
/// the handle while they use it, so a resize meanwhile frees the old pool only once they are done.
pub fn pool() -> Arc<ThreadPool> {
    let mut slot = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    let want = wanted_threads();
    if let Some(s) = slot.take() {
        if s.pid == pid && s.threads == want {
            let pool = s.pool.clone();
            *slot = Some(s);
            return pool;
        }
        if s.pid == pid {
            // A resize in the process that built it: dropping the last handle ends its threads (rayon
            // tells them to exit once idle; nothing waits for them).
            drop(s);
        } else {
            // After fork the parent's threads do not exist here: never run their teardown, leak the pool.
            std::mem::forget(s);
        }
    }
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(want)
        .thread_name(|i| format!("nanofrontier-{i}"))
        .build()
        .unwrap_or_else(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a 1-thread pool"));
    let pool = Arc::new(built);
    *slot = Some(PoolSlot { pid, threads: want, pool: pool.clone() });
    pool
}

/// Use `n` threads from now on (0 = back to the env var / all cores).
pub fn set_num_threads(n: usize) {
    REQUESTED.store(n, Ordering::Relaxed);
}

/// Run `f` with the pool at `n` threads, then go back to the default (also if `f` panics). The thread
/// count is process-wide and cargo runs tests concurrently, so every test that sets it goes through
/// here: one lock makes sure no other test changes the count while `f` runs. Not reentrant.
#[cfg(test)]
pub(crate) fn with_threads<R>(n: usize, f: impl FnOnce() -> R) -> R {
    static THREAD_COUNT: Mutex<()> = Mutex::new(());
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            set_num_threads(0);
        }
    }
    let _lock = THREAD_COUNT.lock().unwrap_or_else(|e| e.into_inner());
    let _reset = Reset;
    set_num_threads(n);
    f()
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

// The flag and the hook live in `runtime` (the tape checks them too, and must not import the pool); long
// loops here and in `ops` keep calling them by these names.
pub use crate::runtime::{check_interrupt, set_interrupt_hook};

// ---- whole calls on a worker ----

/// How often a caller waiting for `run_on_worker` asks the hook about Ctrl-C.
const POLL: Duration = Duration::from_millis(50);

/// The per-thread state a call carries onto the worker (grad mode, bf16 products, its stop flag), restored
/// on drop, also when the call panics. Restoring matters: a worker waiting inside one call can pick up another.
struct OnWorker {
    grad: bool,
    bf16: bool,
    stop: Option<Arc<AtomicBool>>,
}

impl OnWorker {
    fn enter(grad: bool, bf16: bool, stop: Arc<AtomicBool>) -> OnWorker {
        let grad = runtime::set_grad_enabled(grad);
        let bf16 = runtime::replace_bf16_matmul(bf16);
        let stop = runtime::replace_call_stop(Some(stop));
        OnWorker { grad, bf16, stop }
    }
}

impl Drop for OnWorker {
    fn drop(&mut self) {
        runtime::set_grad_enabled(self.grad);
        runtime::replace_bf16_matmul(self.bf16);
        runtime::replace_call_stop(self.stop.take());
    }
}

/// At most one `run_on_worker` call runs on the pool at a time; a second one, from another thread, runs
/// inline on its caller instead. Otherwise a worker waiting inside one call (for a stolen half of a join)
/// could pick up another call whole, and that one would wait forever for a lock (say, on a tensor's
/// storage) held lower on the same worker's stack. Inline, each call keeps its own thread, as before.
static CALL_ON_POOL: AtomicBool = AtomicBool::new(false);

struct OneCall;

impl OneCall {
    fn enter() -> Option<OneCall> {
        CALL_ON_POOL.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).ok().map(|_| OneCall)
    }
}

impl Drop for OneCall {
    fn drop(&mut self) {
        CALL_ON_POOL.store(false, Ordering::Release);
    }
}

type Outcome<R> = std::thread::Result<Result<R>>;

/// Owns the receiving end while the job may still run; if the caller unwinds early, dropping it waits
/// for the job, so nothing the job borrows goes away under it.
struct Waiter<R> {
    rx: Receiver<Outcome<R>>,
    done: bool,
}

impl<R> Drop for Waiter<R> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.rx.recv(); // Err only once the job (and its sender) is gone
        }
    }
}

/// Run the whole call `f` on a pool worker and return its result here, as if it ran on this thread: the
/// caller's grad mode is in force for `f`, a panic in `f` resumes here, and Ctrl-C (seen by the hook,
/// polled every 50 ms while waiting) makes the call return `Err(Interrupted)` at its next
/// `check_interrupt()` (or when it ends, if it ends first: the hook has consumed the signal). Called on
/// a rayon worker (nested), or while another thread's call is on the pool, it runs `f` in place.
pub fn run_on_worker<R: Send>(f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    run_on_worker_polling(f, runtime::hook_says_interrupted)
}

/// `run_on_worker` with the Ctrl-C question as an argument (`interrupted_now`, asked on this thread between
/// waits), so tests can press Ctrl-C without installing a process-wide hook.
fn run_on_worker_polling<R: Send>(
    f: impl FnOnce() -> Result<R> + Send,
    mut interrupted_now: impl FnMut() -> bool,
) -> Result<R> {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let Some(_one_call) = OneCall::enter() else { return f() };
    let grad = runtime::is_grad_enabled();
    let bf16 = runtime::is_bf16_matmul();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = sync_channel::<Outcome<R>>(1);
    let job_stop = stop.clone();
    let job = move || {
        let out = catch_unwind(AssertUnwindSafe(|| {
            let _state = OnWorker::enter(grad, bf16, job_stop);
            f()
        }));
        let _ = tx.send(out); // the last use of anything borrowed: after it the caller may return
    };
    let job: Box<dyn FnOnce() + Send + '_> = Box::new(job);
    // SAFETY: rayon's `spawn` wants 'static, but this job borrows from the caller (through `f` and `R`).
    // The caller does not return or unwind before the job has sent its result or been dropped:
    // `waiter` waits on every path, including a panic in the hook. A rayon job is run once or dropped
    // (our pools are never shut down), and either ends its use of the borrows. The job catches panics,
    // so none reaches rayon (whose handler would abort).
    let job: Box<dyn FnOnce() + Send + 'static> = unsafe { std::mem::transmute(job) };
    let mut waiter = Waiter { rx, done: false };
    pool().spawn(job);
    let mut interrupted = false;
    let out = loop {
        match waiter.rx.recv_timeout(POLL) {
            Ok(out) => break out,
            Err(RecvTimeoutError::Timeout) => {
                if !interrupted && interrupted_now() {
                    interrupted = true;
                    stop.store(true, Ordering::Relaxed);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                waiter.done = true;
                panic!("nanofrontier: the thread pool dropped a call without running it");
            }
        }
    };
    waiter.done = true;
    match out {
        Err(panic) => resume_unwind(panic),
        Ok(_) if interrupted => Err(Error::Interrupted),
        Ok(r) => r,
    }
}

/// `f(item)` for every item, each a pool task that runs with this thread's grad mode, bf16 switch and
/// Ctrl-C stop flag (what a `run_on_worker` call carries; both are per-thread, so a task stolen by another worker
/// would otherwise run without them). Results come back in item order; the first error (in item order)
/// is returned. For a few large independent pieces of one call, e.g. groups of rows generating at once.
pub fn map_tasks<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> Result<R> + Sync) -> Result<Vec<R>> {
    use rayon::prelude::*;
    let grad = runtime::is_grad_enabled();
    let bf16 = runtime::is_bf16_matmul();
    let stop = runtime::replace_call_stop(None);
    runtime::replace_call_stop(stop.clone());
    let results: Vec<Result<R>> = install(|| {
        items
            .into_par_iter()
            .with_max_len(1)
            .map(|item| {
                let prev_grad = runtime::set_grad_enabled(grad);
                let prev_stop = runtime::replace_call_stop(stop.clone());
                let prev_bf16 = runtime::replace_bf16_matmul(bf16);
                let r = catch_unwind(AssertUnwindSafe(|| f(item)));
                runtime::replace_bf16_matmul(prev_bf16);
                runtime::set_grad_enabled(prev_grad);
                runtime::replace_call_stop(prev_stop);
                r.unwrap_or_else(|p| resume_unwind(p))
            })
            .collect()
    });
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Tests of `run_on_worker` take this: only one call is on the pool at a time, so a test running
    /// alongside another could see its call run inline.
    static ONE_TEST: Mutex<()> = Mutex::new(());
    fn one_test() -> std::sync::MutexGuard<'static, ()> {
        ONE_TEST.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn tasks_carry_the_callers_grad_mode_and_stop_flag() {
        let flag = Arc::new(AtomicBool::new(false));
        let prev = runtime::replace_call_stop(Some(flag.clone()));
        let _g = runtime::no_grad();
        let seen = with_threads(2, || {
            map_tasks((0..8).collect(), |i: usize| Ok((i, runtime::is_grad_enabled(), check_interrupt().is_ok())))
        })
        .unwrap();
        assert_eq!(seen, (0..8).map(|i| (i, false, true)).collect::<Vec<_>>());
        flag.store(true, Ordering::Relaxed);
        let e = map_tasks(vec![1, 2], |_: i32| check_interrupt()).unwrap_err();
        assert_eq!(e, Error::Interrupted);
        runtime::replace_call_stop(prev);
        // the first error in item order
        let e = map_tasks(vec![1, 2, 3], |i: i32| if i >= 2 { Err(Error::value("t", format!("{i}"))) } else { Ok(i) });
        assert_eq!(e.unwrap_err(), Error::value("t", "2"));
    }

    #[test]
    fn resizing_the_pool_takes_effect() {
        for n in [1, 2, 1, 3] {
            let seen = with_threads(n, || install(rayon::current_num_threads));
            assert_eq!(seen, n, "asked for {n} threads, the pool has {seen}");
        }
    }

    /// Threads of this process, from /proc/self/task.
    fn os_threads() -> usize {
        std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
    }

    #[test]
    fn resizing_frees_the_old_pool_and_its_threads() {
        let before = os_threads();
        // the largest pool below, plus threads that tests running alongside may start meanwhile
        let allowed = before + 4 + 16;
        for i in 0..60 {
            with_threads(1 + i % 4, || install(|| ()));
        }
        // a freed pool's threads exit once idle: give them a moment, then count
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut now = os_threads();
        while now > allowed && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            now = os_threads();
        }
        // with the old pools leaked, 60 resizes leave about 150 threads behind
        assert!(now <= allowed, "{before} threads before 60 resizes, {now} after (allowed {allowed})");
    }

    #[test]
    fn a_call_runs_on_a_worker_and_returns_here() {
        let _serial = one_test();
        let data = [1.0f32, 2.0, 3.0]; // borrowed by the call
        let (sum, on_worker) =
            run_on_worker(|| Ok((data.iter().sum::<f32>(), rayon::current_thread_index().is_some())))
                .expect("no error");
        assert_eq!(sum, 6.0);
        assert!(on_worker, "the call ran on the calling thread, not on a pool worker");
        let e = run_on_worker::<()>(|| Err(Error::value("t", "bad"))).unwrap_err();
        assert_eq!(e, Error::value("t", "bad"));
    }

    #[test]
    fn the_callers_grad_mode_holds_on_the_worker_and_is_restored_after() {
        let _serial = one_test();
        use crate::runtime::{is_grad_enabled, set_grad_enabled};
        for mode in [false, true, false] {
            let prev = set_grad_enabled(mode);
            let seen = run_on_worker(|| Ok(is_grad_enabled())).unwrap();
            set_grad_enabled(prev);
            assert_eq!(seen, mode, "caller had grad mode {mode}, the worker saw {seen}");
        }
        // every worker is back to the default (recording) once no call runs on it
        let n = num_threads();
        let modes: Vec<bool> = install(|| {
            use rayon::prelude::*;
            (0..64 * n).into_par_iter().map(|_| is_grad_enabled()).collect()
        });
        assert!(modes.iter().all(|&m| m), "a worker kept a call's grad mode after the call");
    }

    #[test]
    fn nested_calls_and_installs_run_in_place() {
        let _serial = one_test();
        let r = run_on_worker(|| {
            let inner = run_on_worker(|| Ok(install(|| run_on_worker(|| Ok(7)))))?;
            let mut v = vec![0.0f32; 4 * GRAIN];
            for_each_chunk(&mut v, GRAIN, |s, c| c.iter_mut().enumerate().for_each(|(i, x)| *x = (s + i) as f32));
            Ok(inner? + v[3 * GRAIN] as usize)
        })
        .unwrap();
        assert_eq!(r, 7 + 3 * GRAIN);
    }

    #[test]
    fn a_panic_in_the_call_resumes_on_the_caller_and_the_pool_still_works() {
        let _serial = one_test();
        let caught = std::panic::catch_unwind(|| run_on_worker::<()>(|| panic!("boom in a call")));
        let msg = caught.expect_err("the panic did not reach the caller");
        assert_eq!(msg.downcast_ref::<&str>().copied(), Some("boom in a call"));
        assert_eq!(run_on_worker(|| Ok(1 + 1)).unwrap(), 2);
    }

    #[test]
    fn ctrl_c_while_waiting_stops_the_call_at_its_next_check() {
        let _serial = one_test();
        let started = Instant::now();
        let polls = std::cell::Cell::new(0);
        let r = run_on_worker_polling(
            || {
                for _ in 0..10_000 {
                    check_interrupt()?; // reads the call's flag (never the process-wide hook)
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            },
            || {
                polls.set(polls.get() + 1);
                polls.get() == 2 // Ctrl-C seen on the second poll
            },
        );
        assert_eq!(r, Err(Error::Interrupted));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "took {took:?} to stop (the call alone runs ≥ 10 s)");
        assert_eq!(polls.get(), 2, "the caller kept polling after Ctrl-C was seen");
    }

    #[test]
    fn ctrl_c_seen_as_the_call_ends_still_interrupts() {
        let _serial = one_test();
        // the hook consumed the signal, so a result that arrives anyway must not hide it
        let r = run_on_worker_polling(
            || {
                std::thread::sleep(POLL * 3);
                Ok(5)
            },
            || true,
        );
        assert_eq!(r, Err(Error::Interrupted));
        assert_eq!(run_on_worker_polling(|| Ok(5), || false), Ok(5));
    }

    #[test]
    fn concurrent_calls_holding_locks_across_parallel_steps_do_not_deadlock() {
        let _serial = one_test();
        // A call holds a read lock while its parallel steps run; another thread's call wants the write
        // lock. If a worker waiting inside the first call picked up the second call whole, the second would
        // wait forever for a lock held lower on its own stack.
        use rayon::prelude::*;
        use std::sync::RwLock;
        let shared = Arc::new(RwLock::new(vec![1.0f32; 1 << 16]));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for k in 0..2 {
            let (shared, done_tx) = (shared.clone(), done_tx.clone());
            std::thread::spawn(move || {
                for _ in 0..200 {
                    if k == 0 {
                        run_on_worker(|| {
                            let d = shared.read().unwrap_or_else(|e| e.into_inner());
                            for _ in 0..20 {
                                let s: f64 = install(|| {
                                    d.par_chunks(256).map(|c| c.iter().map(|&x| x as f64).sum::<f64>()).sum()
                                });
                                assert!(s > 0.0);
                            }
                            Ok(())
                        })
                        .unwrap();
                    } else {
                        run_on_worker(|| {
                            shared.write().unwrap_or_else(|e| e.into_inner())[0] = 1.0;
                            Ok(())
                        })
                        .unwrap();
                    }
                }
                let _ = done_tx.send(k);
            });
        }
        for _ in 0..2 {
            done_rx.recv_timeout(Duration::from_secs(60)).expect("concurrent calls deadlocked");
        }
    }

    #[test]
    fn a_second_concurrent_call_runs_inline_on_its_caller() {
        let _serial = one_test();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let first = std::thread::spawn(move || {
            run_on_worker(move || {
                entered_tx.send(()).unwrap();
                release_rx.recv_timeout(Duration::from_secs(30)).ok();
                Ok(rayon::current_thread_index().is_some())
            })
        });
        entered_rx.recv_timeout(Duration::from_secs(30)).expect("the first call never started");
        let second_on_worker = run_on_worker(|| Ok(rayon::current_thread_index().is_some())).unwrap();
        release_tx.send(()).unwrap();
        assert_eq!(first.join().unwrap(), Ok(true), "the first call did not run on the pool");
        assert!(!second_on_worker, "a second call ran on the pool while the first was there");
        assert_eq!(run_on_worker(|| Ok(rayon::current_thread_index().is_some())), Ok(true), "the gate stayed shut");
    }

    #[test]
    fn check_interrupt_in_a_pool_task_outside_a_call_is_ok() {
        assert_eq!(install(check_interrupt), Ok(()));
    }
}
