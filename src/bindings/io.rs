//! File IO for Python: `save_safetensors` / `load_safetensors`. Arrays are converted to tensors first
//! (under the GIL), then the file work runs without it. A missing file or folder is Python's
//! `FileNotFoundError`; a corrupt one is `nanofrontier.FileFormatError` (from `Error::Io`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pyo3::exceptions::{PyFileNotFoundError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::errors::run;
use super::tensor::{PyTensor, to_tensor};
use crate::io::safetensors;
use crate::tensor::Tensor;

fn not_found(path: &Path) -> PyErr {
    // (errno, strerror, filename): the same shape as the FileNotFoundError that open() raises
    PyFileNotFoundError::new_err((2, "No such file or directory", path.display().to_string()))
}

/// Save `{name: Tensor | array}` as float32 to a safetensors file, with optional `{str: str}` metadata.
/// The write is atomic: `path` ends up holding either its old contents or the whole new file.
#[pyfunction]
#[pyo3(signature = (path, tensors, metadata = None))]
fn save_safetensors(
    py: Python<'_>,
    path: PathBuf,
    tensors: &Bound<'_, PyDict>,
    metadata: Option<BTreeMap<String, String>>,
) -> PyResult<()> {
    let mut ts: Vec<(String, Tensor)> = Vec::with_capacity(tensors.len());
    for (k, v) in tensors.iter() {
        let name: String =
            k.extract().map_err(|_| PyTypeError::new_err(format!("tensor names must be str, got {}", k.get_type())))?;
        ts.push((name, to_tensor(py, &v)?));
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            return Err(not_found(dir));
        }
    }
    let meta = metadata.unwrap_or_default();
    run(py, || safetensors::save(&path, &ts, &meta))
}

/// Load a safetensors file: `({name: Tensor}, {metadata key: value})`, tensors in file order, converted to
/// float32 from F32, F16, BF16 or F64.
#[pyfunction]
fn load_safetensors<'py>(py: Python<'py>, path: PathBuf) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyDict>)> {
    if !path.exists() {
        return Err(not_found(&path));
    }
    let (ts, meta) = run(py, || safetensors::load_with_metadata(&path))?;
    let out = PyDict::new(py);
    for (name, t) in ts {
        out.set_item(name, PyTensor::wrap(t))?;
    }
    let m = PyDict::new(py);
    for (k, v) in meta {
        m.set_item(k, v)?;
    }
    Ok((out, m))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(save_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(load_safetensors, m)?)?;
    Ok(())
}
