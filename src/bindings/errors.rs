//! Core errors become Python exceptions here, once. The classes live in `nanofrontier/exceptions.py`
//! so each can subclass both `NanofrontierError` and the matching builtin (`except ValueError` still works).
//! Also: `run`, the one way heavy work is called — without the GIL, with errors mapped.

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

/// Run `f` with the GIL released (other Python threads keep running; Ctrl-C is polled through the
/// hook below) and map its error. Grad mode is thread-local and `detach` stays on this thread, so
/// `no_grad` still applies inside.
pub fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> crate::error::Result<T> + Send) -> PyResult<T> {
    py.detach(f).map_err(PyErr::from)
}

/// The hook `parallel::check_interrupt` calls: briefly take the GIL and let Python run its signal
/// handlers. A pending KeyboardInterrupt is dropped here and re-raised by `From<Error>`.
pub fn python_interrupted() -> bool {
    Python::attach(|py| py.check_signals().is_err())
}
