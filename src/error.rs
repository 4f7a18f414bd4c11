//! The core's one error type. Every variant names the op that failed and carries enough of the
//! shapes/values to say what went wrong. No pyo3 here: `bindings/errors.rs` maps each variant once
//! to a Python exception (ShapeError, IndexError, ...).

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Shapes that do not fit together, e.g. `add: cannot broadcast (2, 3) with (4,)`.
    Shape { op: &'static str, msg: String },
    /// An index or dimension out of range.
    Index { op: &'static str, msg: String },
    /// A value that is not allowed (negative std, p outside [0, 1), empty tensor where one is needed...).
    Value { op: &'static str, msg: String },
    /// Misuse of autograd: backward on a non-scalar without a gradient, backward twice, ...
    Grad(String),
    /// A buffer that cannot be allocated: `bytes` asked (u128::MAX: the element count overflows), and
    /// the memory that was available when it was refused, if that was the reason.
    Alloc { op: &'static str, bytes: u128, available: Option<u64> },
    /// A file that cannot be read/written or is malformed.
    Io(String),
    /// The user pressed Ctrl-C during a long call.
    Interrupted,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
    pub fn index(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Index { op, msg: msg.into() }
    }
    pub fn value(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Value { op, msg: msg.into() }
    }
    /// `numel` float32 elements that cannot be allocated (u128::MAX: the count overflows).
    pub fn alloc(op: &'static str, numel: u128) -> Self {
        Error::Alloc { op, bytes: numel.saturating_mul(4), available: None }
    }
    /// `bytes` that cannot be allocated, refused because only `available` bytes are free (if known).
    pub fn alloc_bytes(op: &'static str, bytes: u128, available: Option<u64>) -> Self {
        Error::Alloc { op, bytes, available }
    }
}

fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { op, msg } | Error::Index { op, msg } | Error::Value { op, msg } => {
                write!(f, "{op}: {msg}")
            }
            Error::Grad(msg) => write!(f, "{msg}"),
            Error::Alloc { op, bytes: u128::MAX, .. } => {
                write!(f, "{op}: cannot allocate: the element count overflows")
            }
            Error::Alloc { op, bytes, available } => {
                write!(f, "{op}: cannot allocate {} ({bytes} bytes)", gib(*bytes as f64))?;
                match available {
                    Some(a) => write!(f, ": only {} ({a} bytes) of memory is available", gib(*a as f64)),
                    None => Ok(()),
                }
            }
            Error::Io(msg) => write!(f, "{msg}"),
            Error::Interrupted => write!(f, "interrupted"),
        }
    }
}

impl std::error::Error for Error {}

/// Format a shape like numpy: `(2, 3)`, `(4,)`, `()`.
pub fn fmt_shape(shape: &[usize]) -> String {
    match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}
