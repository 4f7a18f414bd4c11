//! Core errors become Python exceptions here, once. The classes live in `nanofrontier/exceptions.py`
//! so each can subclass both `NanofrontierError` and the matching builtin (`except ValueError` still works).
//! Also: `run` / `run_on_pool`, the two ways core work is called — without the GIL, with errors mapped.

use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;

use crate::error::Error;

pyo3::import_exception!(nanofrontier.exceptions, ShapeError);
pyo3::import_exception!(nanofrontier.exceptions, OutOfRangeError);
pyo3::import_exception!(nanofrontier.exceptions, InvalidArgumentError);
pyo3::import_exception!(nanofrontier.exceptions, GradError);
pyo3::import_exception!(nanofrontier.exceptions, AllocationError);
pyo3::import_exception!(nanofrontier.exceptions, FileFormatError);

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::Shape { .. } => ShapeError::new_err(msg),
            Error::Index { .. } => OutOfRangeError::new_err(msg),
            Error::Value { .. } => InvalidArgumentError::new_err(msg),
            Error::Grad(_) => GradError::new_err(msg),
            Error::Alloc { .. } => AllocationError::new_err(msg),
            Error::Io(_) => FileFormatError::new_err(msg),
            Error::Interrupted => PyKeyboardInterrupt::new_err("interrupted inside nanofrontier"),
        }
    }
}

/// Run `f` on this thread with the GIL released (other Python threads keep running; Ctrl-C is polled
/// through the hook below) and map its error. Grad mode is thread-local and `detach` stays on this
/// thread, so `no_grad` still applies inside. For single ops: each parallel step inside hands work to
/// the pool and waits for it.
pub fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> crate::error::Result<T> + Send) -> PyResult<T> {
    py.detach(f).map_err(PyErr::from)
}

/// Like `run`, but when `large`, `f` runs whole on a pool worker (`parallel::run_on_worker`): its
/// parallel steps are then direct calls instead of a hand-off to the pool and a sleep each. For calls made
/// of many ops (model forward, backward, generation); the caller says whether this one is large enough
/// (`large_model_call`, `large_backward`), because a call without parallel steps would only pay the one
/// hand-off (measured 10–50 µs, most of a small call). The caller's grad mode applies inside, this thread
/// waits with the GIL released and polls the hook below for Ctrl-C, and a panic resumes here (pyo3 turns
/// it into PanicException, as with `run`).
pub fn run_on_pool<T: Send>(
    py: Python<'_>,
    large: bool,
    f: impl FnOnce() -> crate::error::Result<T> + Send,
) -> PyResult<T> {
    if !large {
        return run(py, f);
    }
    py.detach(|| crate::parallel::run_on_worker(f)).map_err(PyErr::from)
}

/// A model call over `rows` token positions (batch × length) of width `n_embd` is large once its
/// activations are parallel-sized: then its ops hand work to the pool many times.
pub fn large_model_call(rows: usize, n_embd: usize) -> bool {
    rows.saturating_mul(n_embd) >= crate::parallel::GRAIN
}

/// A backward from `t` is large when `t` or an input of its last op is parallel-sized (a model's loss:
/// the logits), which means many parallel steps follow. A small graph (a few scalars, a 3-element test)
/// has none.
pub fn large_backward(t: &crate::tensor::Tensor) -> bool {
    let large = |x: &crate::tensor::Tensor| x.numel() >= crate::parallel::GRAIN;
    large(t) || t.grad_fn().is_some_and(|node| node.inputs().iter().any(large))
}

/// The hook `parallel::check_interrupt` calls: briefly take the GIL and let Python run its signal
/// handlers. A pending KeyboardInterrupt is dropped here and re-raised by `From<Error>`.
pub fn python_interrupted() -> bool {
    Python::attach(|py| py.check_signals().is_err())
}
