//! `no_grad`: a thread-local switch. While off, ops record nothing (inference, optimizer steps, and the
//! backward pass itself). Python's `with nf.no_grad():` holds a `NoGradGuard` on the calling thread.

use std::cell::Cell;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(true) };
}

pub fn is_grad_enabled() -> bool {
    ENABLED.with(|e| e.get())
}

pub fn set_grad_enabled(on: bool) -> bool {
    ENABLED.with(|e| e.replace(on))
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

/// Turn recording off until the guard is dropped.
pub fn no_grad() -> NoGradGuard {
    NoGradGuard { prev: set_grad_enabled(false) }
}
