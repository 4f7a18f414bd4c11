//! Per-thread switches that every layer may consult, so none of them has to import another for them:
//! grad mode (`no_grad`: while off, ops record nothing), bf16 products (`nf.autocast`) and Ctrl-C (the
//! hook that asks Python, and the stop flag of the `parallel::run_on_worker` call a thread is running).
//! Not here: the thread pool (`parallel`), the tape (`autograd`). Declared first, it uses nothing of ours
//! but the error type.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::{Error, Result};

// ---- grad mode ----

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops record on this thread (Python's `with nf.no_grad():` turns it off).
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|e| e.get())
}

/// Set grad mode on this thread; returns the previous mode.
pub fn set_grad_enabled(on: bool) -> bool {
    GRAD_ENABLED.with(|e| e.replace(on))
}

/// Restores the previous mode when dropped.
pub struct NoGradGuard {
    prev: bool,
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        set_grad_enabled(self.prev);
    }
}

/// Turn recording off until the guard is dropped (inference, optimizer steps, the backward pass itself).
pub fn no_grad() -> NoGradGuard {
    NoGradGuard { prev: set_grad_enabled(false) }
}

// ---- bf16 products ----

thread_local! {
    static BF16_MATMUL: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread's matmul/linear products run in bf16 (`ops::matmul::set_bf16` checks the CPU before
/// turning it on; `parallel` carries it into pool tasks as it does grad mode).
pub fn is_bf16_matmul() -> bool {
    BF16_MATMUL.with(|e| e.get())
}

/// Set this thread's bf16 switch as is (no CPU check: callers pass a setting that was checked); returns
/// the previous one.
pub fn replace_bf16_matmul(on: bool) -> bool {
    BF16_MATMUL.with(|e| e.replace(on))
}

// ---- Ctrl-C ----

static INTERRUPT_HOOK: OnceLock<fn() -> bool> = OnceLock::new();

thread_local! {
    static LAST_CHECK: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The stop flag of the `run_on_worker` call this thread is running (None: not in one).
    static CALL_STOP: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Install the function that says "the user pressed Ctrl-C" (the Python bindings do this once).
pub fn set_interrupt_hook(f: fn() -> bool) {
    let _ = INTERRUPT_HOOK.set(f);
}

/// Ask the installed hook (false when none is installed).
pub(crate) fn hook_says_interrupted() -> bool {
    INTERRUPT_HOOK.get().is_some_and(|hook| hook())
}

/// Make `stop` this thread's call stop flag (None: not in a call); returns the previous one.
pub(crate) fn replace_call_stop(stop: Option<Arc<AtomicBool>>) -> Option<Arc<AtomicBool>> {
    CALL_STOP.with_borrow_mut(|s| std::mem::replace(s, stop))
}

/// `Err(Interrupted)` if Ctrl-C was pressed. Cheap to call often: inside `run_on_worker` it reads one
/// atomic; on the thread that entered the core it asks the hook at most every 50 ms. Call it from the
/// code of the call itself, between chunks of work: inside a rayon task it always says Ok (the task's
/// caller checks).
pub fn check_interrupt() -> Result<()> {
    if let Some(stop) = CALL_STOP.with_borrow(|s| s.as_ref().map(|s| s.load(Ordering::Relaxed))) {
        return if stop { Err(Error::Interrupted) } else { Ok(()) };
    }
    if rayon::current_thread_index().is_some() {
        return Ok(());
    }
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
    fn no_grad_is_scoped_and_per_thread() {
        assert!(is_grad_enabled());
        {
            let _g = no_grad();
            assert!(!is_grad_enabled());
            assert!(std::thread::spawn(is_grad_enabled).join().unwrap(), "grad mode leaked to another thread");
        }
        assert!(is_grad_enabled());
    }

    #[test]
    fn a_call_stop_flag_is_seen_and_restored() {
        let flag = Arc::new(AtomicBool::new(false));
        let prev = replace_call_stop(Some(flag.clone()));
        assert_eq!(check_interrupt(), Ok(()));
        flag.store(true, Ordering::Relaxed);
        assert_eq!(check_interrupt(), Err(Error::Interrupted));
        replace_call_stop(prev);
        assert_eq!(check_interrupt(), Ok(()));
    }
}
