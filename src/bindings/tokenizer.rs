//! `_core.BPE`: the byte-level BPE tokenizer of `text::bpe` for `nanofrontier.tokenizer.BPETokenizer`.
//! Arguments are converted to Rust values first (GIL held), then training, encoding and file work run
//! without the GIL. Ids go out as lists of ints; ids come in as any sequence of ints or an int64 array.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::{PyReadonlyArray1, PyUntypedArrayMethods};
use pyo3::exceptions::{PyFileNotFoundError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::errors::run;
use crate::text::{bpe::Bpe, pretokenize};

/// A trained byte-level BPE tokenizer living in Rust. Use `nanofrontier.tokenizer.BPETokenizer`.
#[pyclass(frozen, name = "BPE", module = "nanofrontier._core")]
pub struct PyBpe {
    inner: Arc<Bpe>,
}

/// Token ids from a 1-D int64 array or any sequence of ints (negative ids are kept, to be reported as
/// out of range rather than as an overflow).
fn ids_arg(obj: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    if let Ok(a) = obj.extract::<PyReadonlyArray1<'_, i64>>() {
        return Ok(a.as_array().iter().copied().collect());
    }
    if obj.is_instance_of::<pyo3::types::PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(format!("ids must be a sequence of ints, got {}", obj.get_type())));
    }
    if let Ok(a) = obj.cast::<numpy::PyUntypedArray>() {
        if a.ndim() != 1 {
            return Err(PyTypeError::new_err(format!("ids must be 1-D, got an array with {} dims", a.ndim())));
        }
    }
    obj.extract::<Vec<i64>>().map_err(|e| PyTypeError::new_err(format!("ids must be a sequence of ints: {e}")))
}

fn missing(path: &std::path::Path) -> PyErr {
    PyFileNotFoundError::new_err((2, "No such file or directory", path.display().to_string()))
}

fn to_i64(ids: Vec<u32>) -> Vec<i64> {
    ids.into_iter().map(i64::from).collect()
}

#[pymethods]
impl PyBpe {
    /// Train on `text` to `vocab_size` tokens (256 bytes + merges + special tokens).
    #[staticmethod]
    #[pyo3(signature = (text, vocab_size, special_tokens = Vec::new()))]
    fn train(py: Python<'_>, text: String, vocab_size: i64, special_tokens: Vec<String>) -> PyResult<PyBpe> {
        // a negative size is "smaller than 256 + specials" too: say so, rather than an OverflowError
        let vocab_size = usize::try_from(vocab_size.max(0)).unwrap_or(0);
        let bpe = run(py, move || Bpe::train(&text, vocab_size, &special_tokens))?;
        Ok(PyBpe { inner: Arc::new(bpe) })
    }

    /// A tokenizer from its merges (merge r = (left id, right id) makes token 256 + r) and special tokens.
    #[staticmethod]
    #[pyo3(signature = (merges, special_tokens = Vec::new()))]
    fn from_merges(merges: Vec<(u32, u32)>, special_tokens: Vec<String>) -> PyResult<PyBpe> {
        Ok(PyBpe { inner: Arc::new(Bpe::from_merges(merges, special_tokens)?) })
    }

    /// Load a file written by `save` (missing → FileNotFoundError, malformed → FileFormatError).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<PyBpe> {
        if !path.exists() {
            return Err(missing(&path));
        }
        let bpe = run(py, || Bpe::load(&path))?;
        Ok(PyBpe { inner: Arc::new(bpe) })
    }

    /// Save as readable text, atomically (a missing folder → FileNotFoundError).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.is_dir() {
                return Err(missing(dir));
            }
        }
        run(py, || self.inner.save(&path))
    }

    /// 256 + merges + special tokens.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// The merges in learned order: merge r = (left id, right id) made token 256 + r.
    fn merges(&self) -> Vec<(u32, u32)> {
        self.inner.merges().to_vec()
    }

    /// `[(text, id), ...]` of the special tokens.
    fn special_tokens(&self) -> Vec<(String, u32)> {
        self.inner.special_tokens()
    }

    /// The bytes of token `id`.
    fn token_bytes<'py>(&self, py: Python<'py>, id: i64) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, self.inner.token_bytes(id)?))
    }

    /// Encode `text`; only the special tokens named in `allowed_special` become one id each.
    fn encode(&self, py: Python<'_>, text: String, allowed_special: Vec<String>) -> PyResult<Vec<i64>> {
        run(py, || self.inner.encode_allowing(&text, &allowed_special)).map(to_i64)
    }

    /// Encode arbitrary bytes as ordinary text (no special tokens): `decode_bytes` gives them back.
    fn encode_bytes(&self, py: Python<'_>, data: &Bound<'_, PyBytes>) -> PyResult<Vec<i64>> {
        let data = data.as_bytes().to_vec();
        Ok(to_i64(py.detach(|| self.inner.encode_bytes(&data))))
    }

    /// Encode each text, in parallel over the texts on the crate's thread pool.
    fn encode_batch(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        allowed_special: Vec<String>,
    ) -> PyResult<Vec<Vec<i64>>> {
        let out = run(py, || self.inner.encode_batch(&texts, &allowed_special))?;
        Ok(out.into_iter().map(to_i64).collect())
    }

    /// The bytes of a sequence of ids.
    fn decode_bytes<'py>(&self, py: Python<'py>, ids: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let ids = ids_arg(ids)?;
        let bytes = run(py, || self.inner.decode_bytes(&ids))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// The text of a sequence of ids; invalid UTF-8 becomes U+FFFD (as `bytes.decode("utf-8", "replace")`).
    fn decode(&self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<String> {
        let ids = ids_arg(ids)?;
        run(py, || self.inner.decode(&ids))
    }

    /// The pre-tokenization pieces of `text` (GPT-2's split): no merge crosses them.
    #[staticmethod]
    fn pretokenize(text: &str) -> Vec<String> {
        pretokenize::pieces(text).into_iter().map(str::to_string).collect()
    }

    /// The file contents `save` writes.
    fn to_text(&self) -> String {
        self.inner.to_text()
    }

    fn __repr__(&self) -> String {
        format!("BPE(vocab_size={}, special_tokens={})", self.inner.vocab_size(), self.inner.special_tokens().len())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBpe>()
}
