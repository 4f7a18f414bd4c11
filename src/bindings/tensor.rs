//! `nanofrontier.Tensor`: the Python face of `crate::Tensor`. Converts Python values in (numpy arrays,
//! lists and numbers go through `nanofrontier._convert`, the one place the dtype rules live), runs the op
//! without the GIL, and hands back a new `Tensor`. No math here: every method calls an op in `crate::ops`.

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::basic::CompareOp;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyEllipsis, PySlice, PySliceMethods, PyTuple};

use super::errors::{OutOfRangeError, large_backward, run, run_on_pool};
use crate::ops::{activation, binary, matmul, reduce, softmax, unary, view};
use crate::tensor::Tensor;

const NON_LEAF_GRAD: &std::ffi::CStr = c"reading .grad of a tensor that is not a leaf: backward() fills .grad only \
for leaves (tensors not made by a recorded op, such as parameters), so it is None. A common cause: `w -= lr * w.grad` \
outside `with nf.no_grad():` rebinds w to the result of an op. Update in place instead: \
`with nf.no_grad(): w.copy_(w - lr * w.grad)`, or use an optimizer from nf.optim.";
/// How a boolean index is refused (numpy masks, Python bools, and comparison results such as `x > 0`).
const BOOL_INDEX: &str = "boolean masks are not supported as indices; use nf.where(mask, x, other) or \
nf.functional.masked_fill(x, mask, value) to act on the masked entries, or integer positions such as \
numpy.flatnonzero(mask)";

/// A float32 tensor that records the ops applied to it for backpropagation (when `requires_grad`).
/// Create one with `nanofrontier.tensor(data, requires_grad=False)`.
#[pyclass(frozen, name = "Tensor", module = "nanofrontier")]
pub struct PyTensor {
    pub t: Tensor,
    /// Set on the direct result of a comparison (`x > 0`): its 0.0/1.0 values are a mask, so using it as an
    /// index (where they would silently read as positions 0 and 1) is refused.
    is_mask: bool,
}

impl PyTensor {
    pub fn wrap(t: Tensor) -> PyTensor {
        PyTensor { t, is_mask: false }
    }
}

// ---------------------------------------------------------------- conversions

/// Copy a float32 numpy array (any strides) into a new tensor.
pub fn tensor_from_array(arr: &PyReadonlyArrayDyn<'_, f32>) -> PyResult<Tensor> {
    let shape = arr.shape().to_vec();
    // as_slice also accepts Fortran order (memory order != logical order), so check C order first
    let data: Vec<f32> = match arr.as_slice() {
        Ok(s) if arr.is_c_contiguous() => s.to_vec(),
        _ => arr.as_array().iter().copied().collect(),
    };
    Ok(Tensor::new(data, &shape)?)
}

/// A numpy copy of a tensor's data.
pub fn tensor_to_numpy<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let arr = ArrayD::from_shape_vec(IxDyn(t.shape()), t.to_vec()).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(arr.into_pyarray(py))
}

/// Anything array-like → float32 ndarray via `_convert.to_f32_array` (TypeError for complex, str, object...).
pub fn to_tensor(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    if let Ok(t) = obj.cast::<PyTensor>() {
        return Ok(t.get().t.clone());
    }
    if let Ok(arr) = obj.extract::<PyReadonlyArrayDyn<'_, f32>>() {
        return tensor_from_array(&arr);
    }
    let conv = py.import("nanofrontier._convert")?.getattr("to_f32_array")?.call1((obj,))?;
    let arr: PyReadonlyArrayDyn<'_, f32> = conv.extract()?;
    tensor_from_array(&arr)
}

/// An operand of an arithmetic dunder: a Tensor, a number, or something array-like.
fn operand(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    if let Ok(t) = obj.cast::<PyTensor>() {
        return Ok(t.get().t.clone());
    }
    if let Ok(v) = obj.extract::<f64>() {
        return Ok(Tensor::scalar(v as f32));
    }
    to_tensor(py, obj)
}

/// Integer indices (ids, targets) → (values, shape) via `_convert.to_index_array` (TypeError for floats).
pub fn to_indices(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<(Vec<i64>, Vec<usize>)> {
    to_indices_for(py, obj, None)
}

/// `to_indices` whose errors start with `what` (e.g. "cross_entropy: targets"), so they name the call.
pub fn to_indices_for(py: Python<'_>, obj: &Bound<'_, PyAny>, what: Option<&str>) -> PyResult<(Vec<i64>, Vec<usize>)> {
    let arr = match obj.extract::<PyReadonlyArrayDyn<'_, i64>>() {
        Ok(a) => a,
        Err(_) => py.import("nanofrontier._convert")?.getattr("to_index_array")?.call1((obj, what))?.extract()?,
    };
    let shape = arr.shape().to_vec();
    Ok((arr.as_array().iter().copied().collect(), shape))
}

/// `dim=None | int | tuple[int, ...]` → None or a list of dims.
fn dims_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<isize>>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => match o.extract::<isize>() {
            Ok(d) => Ok(Some(vec![d])),
            Err(_) => Ok(Some(
                o.extract::<Vec<isize>>().map_err(|_| PyTypeError::new_err("dim must be an int or a tuple of ints"))?,
            )),
        },
    }
}

/// `f(*shape)` or `f(shape)` → the shape as a list.
fn shape_args(args: &Bound<'_, PyTuple>) -> PyResult<Vec<isize>> {
    if args.len() == 1 {
        let a = args.get_item(0)?;
        if let Ok(v) = a.extract::<Vec<isize>>() {
            return Ok(v);
        }
    }
    args.extract::<Vec<isize>>().map_err(|_| PyTypeError::new_err("shape must be ints, or one tuple/list of ints"))
}

/// A bound of `clamp`: None or a number. A Tensor is refused rather than read as a constant (its
/// gradient would be dropped without a word).
fn clamp_bound(name: &str, b: Option<&Bound<'_, PyAny>>) -> PyResult<Option<f32>> {
    match b {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) if o.cast::<PyTensor>().is_ok() => Err(PyTypeError::new_err(format!(
            "clamp: {name} must be a number or None (tensor bounds are not supported)"
        ))),
        Some(o) => o
            .extract::<f64>()
            .map(|v| Some(v as f32))
            .map_err(|_| PyTypeError::new_err(format!("clamp: {name} must be a number or None"))),
    }
}

fn wrap(t: PyResult<Tensor>) -> PyResult<PyTensor> {
    Ok(PyTensor::wrap(t?))
}

// ---------------------------------------------------------------- the class

#[pymethods]
impl PyTensor {
    /// `Tensor(data, requires_grad=False)` is the same as `nanofrontier.tensor(data, requires_grad)`.
    #[new]
    #[pyo3(signature = (data, requires_grad = false))]
    fn py_new(py: Python<'_>, data: &Bound<'_, PyAny>, requires_grad: bool) -> PyResult<PyTensor> {
        let t = to_tensor(py, data)?;
        // always a fresh leaf: never share storage or history with the argument
        let t = t.deep_clone().requires_grad_(requires_grad);
        Ok(PyTensor::wrap(t))
    }

    // numpy should call our reflected operators instead of converting us element by element
    #[classattr]
    fn __array_ufunc__(py: Python<'_>) -> Py<PyAny> {
        py.None()
    }

    /// The shape as a tuple of ints.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.t.shape())
    }
    /// Number of dimensions.
    #[getter]
    fn ndim(&self) -> usize {
        self.t.ndim()
    }
    /// Always "float32".
    #[getter]
    fn dtype(&self) -> &'static str {
        "float32"
    }
    /// Number of elements.
    fn numel(&self) -> usize {
        self.t.numel()
    }
    /// `size()` → shape tuple; `size(d)` → length of dim d.
    #[pyo3(signature = (dim = None))]
    fn size<'py>(&self, py: Python<'py>, dim: Option<isize>) -> PyResult<Bound<'py, PyAny>> {
        match dim {
            None => Ok(PyTuple::new(py, self.t.shape())?.into_any()),
            Some(d) => Ok(self.t.dim(d)?.into_pyobject(py)?.into_any()),
        }
    }
    fn __len__(&self) -> PyResult<usize> {
        self.t.shape().first().copied().ok_or_else(|| PyTypeError::new_err("len() of a 0-d tensor"))
    }

    /// A numpy float32 copy of the data.
    fn numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        tensor_to_numpy(py, &self.t)
    }
    #[pyo3(signature = (dtype = None, copy = None))]
    fn __array__<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<&Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if copy == Some(false) {
            return Err(PyValueError::new_err("a Tensor cannot be viewed by numpy without a copy"));
        }
        let arr = tensor_to_numpy(py, &self.t)?.into_any();
        match dtype {
            Some(d) if !d.is_none() => arr.call_method1("astype", (d,)),
            _ => Ok(arr),
        }
    }
    /// Nested Python lists (a float for a 0-d tensor).
    fn tolist<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        tensor_to_numpy(py, &self.t)?.call_method0("tolist")
    }
    /// The value of a one-element tensor as a Python float.
    fn item(&self) -> PyResult<f64> {
        Ok(self.t.item()? as f64)
    }
    fn __float__(&self) -> PyResult<f64> {
        self.item()
    }
    /// `int(t)` of a one-element tensor: its value truncated toward zero (e.g. `int(logits.argmax())`).
    fn __int__(&self) -> PyResult<i64> {
        let v = self.t.item()?;
        if !v.is_finite() {
            return Err(PyValueError::new_err(format!("cannot convert a tensor holding {v} to an int")));
        }
        Ok(v.trunc() as i64)
    }
    fn __bool__(&self) -> PyResult<bool> {
        if self.t.numel() != 1 {
            return Err(PyValueError::new_err("the truth value of a tensor with more than one element is ambiguous"));
        }
        Ok(self.t.item()? != 0.0)
    }
    fn __repr__(&self) -> String {
        crate::tensor::display::format_tensor(&self.t)
    }
    fn __hash__(&self) -> u64 {
        self.t.id()
    }

    // ---- autograd ----
    /// Whether ops on this tensor are recorded for backward.
    #[getter]
    fn get_requires_grad(&self) -> bool {
        self.t.requires_grad()
    }
    #[setter]
    fn set_requires_grad(&self, on: bool) -> PyResult<()> {
        Ok(self.t.set_requires_grad(on)?)
    }
    /// Set requires_grad in place and return self (for chaining).
    #[pyo3(signature = (requires_grad = true))]
    fn requires_grad_(slf: Bound<'_, Self>, requires_grad: bool) -> PyResult<Bound<'_, Self>> {
        slf.get().t.set_requires_grad(requires_grad)?;
        Ok(slf)
    }
    /// True unless this tensor was produced by a recorded op.
    #[getter]
    fn is_leaf(&self) -> bool {
        self.t.is_leaf()
    }
    /// Name of the op that produced this tensor (None for leaves).
    #[getter]
    fn grad_fn(&self) -> Option<&'static str> {
        self.t.grad_fn_name()
    }
    /// d(loss)/d(this tensor) after `loss.backward()`, accumulated across calls until `zero_grad()`.
    /// Only leaves get one: reading it on a non-leaf that has none warns (as torch does), since that is
    /// how `w -= lr * w.grad` outside `no_grad` shows up (w became the result of an op).
    #[getter]
    fn get_grad(&self, py: Python<'_>) -> PyResult<Option<PyTensor>> {
        let g = self.t.grad();
        if g.is_none() && !self.t.is_leaf() {
            let category = py.get_type::<pyo3::exceptions::PyUserWarning>();
            PyErr::warn(py, &category, NON_LEAF_GRAD, 1)?;
        }
        Ok(g.map(PyTensor::wrap))
    }
    #[setter]
    fn set_grad(&self, py: Python<'_>, g: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let g = match g {
            Some(o) if !o.is_none() => Some(to_tensor(py, o)?.deep_clone()),
            _ => None,
        };
        Ok(self.t.set_grad(g)?)
    }
    /// Backpropagate from this tensor. `gradient` is d(loss)/d(self) and may be omitted for one-element
    /// tensors. With `retain_graph=False` the graph's saved values are freed and it cannot be reused.
    #[pyo3(signature = (gradient = None, retain_graph = false))]
    fn backward(&self, py: Python<'_>, gradient: Option<&Bound<'_, PyAny>>, retain_graph: bool) -> PyResult<()> {
        let g = match gradient {
            Some(o) if !o.is_none() => Some(to_tensor(py, o)?),
            _ => None,
        };
        let t = self.t.clone();
        run_on_pool(py, large_backward(&t), move || t.backward(g.as_ref(), retain_graph))
    }
    /// Drop the accumulated gradient (`.grad` becomes None).
    fn zero_grad(&self) {
        self.t.zero_grad()
    }
    /// The same data, cut out of the graph (a leaf with requires_grad=False).
    fn detach(&self) -> PyTensor {
        PyTensor::wrap(self.t.detach())
    }
    /// A copy with its own storage and no history.
    fn copy(&self) -> PyTensor {
        PyTensor::wrap(self.t.deep_clone())
    }

    /// Overwrite this leaf's data in place with `src` (same shape); not recorded by autograd.
    /// This is how `load_state_dict` fills parameters.
    fn copy_<'py>(slf: Bound<'py, Self>, py: Python<'py>, src: &Bound<'py, PyAny>) -> PyResult<Bound<'py, Self>> {
        let s = to_tensor(py, src)?;
        view::copy_(&slf.get().t, &s)?;
        Ok(slf)
    }

    // ---- arithmetic (reflected forms included; numbers and arrays are accepted) ----
    fn __add__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let o = operand(py, o)?;
        wrap(run(py, || binary::add(&self.t, &o)))
    }
    fn __radd__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let o = operand(py, o)?;
        wrap(run(py, || binary::add(&o, &self.t)))
    }
    fn __sub__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let o = operand(py, o)?;
        wrap(run(py, || binary::sub(&self.t, &o)))
    }
    fn __rsub__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let o = operand(py, o)?;
        wrap(run(py, || binary::sub(&o, &self.t)))
    }
    fn __mul__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let o = operand(py, o)?;
        wrap(run(py, || binary::mul(&self.t, &o)))
    }
    fn __rmul__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let o = operand(py, o)?;
        wrap(run(py, || binary::mul(&o, &self.t)))
    }
    fn __truediv__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let o = operand(py, o)?;
        wrap(run(py, || binary::div(&self.t, &o)))
    }
    fn __rtruediv__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let o = operand(py, o)?;
        wrap(run(py, || binary::div(&o, &self.t)))
    }
    fn __pow__(&self, py: Python<'_>, o: &Bound<'_, PyAny>, modulo: Option<&Bound<'_, PyAny>>) -> PyResult<PyTensor> {
        if modulo.is_some_and(|m| !m.is_none()) {
            return Err(PyTypeError::new_err("pow() with a modulus is not supported for tensors"));
        }
        let o = operand(py, o)?;
        wrap(run(py, || binary::pow(&self.t, &o)))
    }
    fn __rpow__(&self, py: Python<'_>, o: &Bound<'_, PyAny>, modulo: Option<&Bound<'_, PyAny>>) -> PyResult<PyTensor> {
        if modulo.is_some_and(|m| !m.is_none()) {
            return Err(PyTypeError::new_err("pow() with a modulus is not supported for tensors"));
        }
        let o = operand(py, o)?;
        wrap(run(py, || binary::pow(&o, &self.t)))
    }
    fn __matmul__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let o = operand(py, o)?;
        wrap(run(py, || matmul::matmul(&self.t, &o)))
    }
    fn __rmatmul__(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let o = operand(py, o)?;
        wrap(run(py, || matmul::matmul(&o, &self.t)))
    }
    fn __neg__(&self, py: Python<'_>) -> PyResult<PyTensor> {
        wrap(run(py, || unary::neg(&self.t)))
    }
    fn __pos__(&self) -> PyTensor {
        PyTensor::wrap(self.t.clone())
    }
    fn __abs__(&self, py: Python<'_>) -> PyResult<PyTensor> {
        wrap(run(py, || unary::abs(&self.t)))
    }
    /// Comparisons give 0.0/1.0 float tensors with no gradient (`(pred == y).mean()` is an accuracy).
    fn __richcmp__(&self, py: Python<'_>, o: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<PyTensor> {
        let o = operand(py, o)?;
        let cmp = match op {
            CompareOp::Eq => binary::Cmp::Eq,
            CompareOp::Ne => binary::Cmp::Ne,
            CompareOp::Lt => binary::Cmp::Lt,
            CompareOp::Le => binary::Cmp::Le,
            CompareOp::Gt => binary::Cmp::Gt,
            CompareOp::Ge => binary::Cmp::Ge,
        };
        let t = run(py, || binary::compare(&self.t, &o, cmp))?;
        Ok(PyTensor { t, is_mask: true })
    }
    /// Matrix product (numpy.matmul rules), same as `@`.
    fn matmul(&self, py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.__matmul__(py, o)
    }

    // ---- elementwise ----
    /// e^x
    fn exp(&self, py: Python<'_>) -> PyResult<PyTensor> {
        wrap(run(py, || unary::exp(&self.t)))
    }
    /// Natural log (log(0) = -inf, log(x<0) = nan).
    fn log(&self, py: Python<'_>) -> PyResult<PyTensor> {
        wrap(run(py, || unary::log(&self.t)))
    }
    /// Square root (nan for x < 0).
    fn sqrt(&self, py: Python<'_>) -> PyResult<PyTensor> {
        wrap(run(py, || unary::sqrt(&self.t)))
    }
    fn tanh(&self, py: Python<'_>) -> PyResult<PyTensor> {
        wrap(run(py, || unary::tanh(&self.t)))
    }
    /// max(x, 0); its gradient at exactly 0 is taken as 0.
    fn relu(&self, py: Python<'_>) -> PyResult<PyTensor> {
        wrap(run(py, || unary::relu(&self.t)))
    }
    /// 1 / (1 + e^-x)
    fn sigmoid(&self, py: Python<'_>) -> PyResult<PyTensor> {
        wrap(run(py, || unary::sigmoid(&self.t)))
    }
    fn abs(&self, py: Python<'_>) -> PyResult<PyTensor> {
        self.__abs__(py)
    }
    /// GELU, tanh approximation (as in GPT-2).
    fn gelu(&self, py: Python<'_>) -> PyResult<PyTensor> {
        wrap(run(py, || activation::gelu(&self.t)))
    }
    /// SiLU / swish: x * sigmoid(x).
    fn silu(&self, py: Python<'_>) -> PyResult<PyTensor> {
        wrap(run(py, || activation::silu(&self.t)))
    }
    /// x limited to [min, max]; either bound may be None, not both. nan stays nan. The gradient is 1
    /// where min <= x <= max (bounds included, like torch) and 0 outside. InvalidArgumentError for no
    /// bound, a nan bound, or min > max.
    #[pyo3(signature = (min = None, max = None))]
    fn clamp(
        &self,
        py: Python<'_>,
        min: Option<&Bound<'_, PyAny>>,
        max: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyTensor> {
        let (min, max) = (clamp_bound("min", min)?, clamp_bound("max", max)?);
        wrap(run(py, || unary::clamp(&self.t, min, max)))
    }
    /// log(sigmoid(x)) computed stably as -softplus(-x) (finite for very negative x).
    fn log_sigmoid(&self, py: Python<'_>) -> PyResult<PyTensor> {
        wrap(run(py, || activation::log_sigmoid(&self.t)))
    }
    /// log(1 + exp(beta*x))/beta, and x where beta*x > threshold (torch's softplus).
    #[pyo3(signature = (beta = 1.0, threshold = 20.0))]
    fn softplus(&self, py: Python<'_>, beta: f32, threshold: f32) -> PyResult<PyTensor> {
        wrap(run(py, || activation::softplus(&self.t, beta, threshold)))
    }
    /// x ** exponent
    fn pow(&self, py: Python<'_>, exponent: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        self.__pow__(py, exponent, None)
    }

    // ---- reductions ----
    /// Sum over `dim` (an int, a tuple, or None for all), optionally keeping reduced dims as size 1.
    #[pyo3(signature = (dim = None, keepdim = false))]
    fn sum(&self, py: Python<'_>, dim: Option<&Bound<'_, PyAny>>, keepdim: bool) -> PyResult<PyTensor> {
        let dims = dims_arg(dim)?;
        wrap(run(py, || reduce::sum(&self.t, dims.as_deref(), keepdim)))
    }
    /// Mean over `dim` (an int, a tuple, or None for all).
    #[pyo3(signature = (dim = None, keepdim = false))]
    fn mean(&self, py: Python<'_>, dim: Option<&Bound<'_, PyAny>>, keepdim: bool) -> PyResult<PyTensor> {
        let dims = dims_arg(dim)?;
        wrap(run(py, || reduce::mean(&self.t, dims.as_deref(), keepdim)))
    }
    /// Largest value over `dim` (or over everything); the gradient goes to the first maximum.
    #[pyo3(signature = (dim = None, keepdim = false))]
    fn max(&self, py: Python<'_>, dim: Option<isize>, keepdim: bool) -> PyResult<PyTensor> {
        wrap(run(py, || reduce::max(&self.t, dim, keepdim)))
    }
    /// Index of the largest value over `dim` (or of the flattened tensor) as a Tensor (0-d without
    /// `dim`), like torch. Its values are whole numbers held in float32, exact below 2**24; a longer dim is
    /// refused rather than rounded. `int(t.argmax())` gives a Python int.
    #[pyo3(signature = (dim = None, keepdim = false))]
    fn argmax(&self, py: Python<'_>, dim: Option<isize>, keepdim: bool) -> PyResult<PyTensor> {
        let len = match dim {
            None => self.t.numel(),
            Some(d) => self.t.dim(d)?,
        };
        if len > 1 << 24 {
            return Err(super::errors::InvalidArgumentError::new_err(format!(
                "argmax: {len} positions, more than float32 holds exactly (2**24); use t.numpy().argmax()"
            )));
        }
        let (idx, shape) = run(py, || reduce::argmax(&self.t, dim, keepdim))?;
        Ok(PyTensor::wrap(Tensor::new(idx.into_iter().map(|i| i as f32).collect(), &shape)?))
    }

    // ---- softmax family ----
    /// softmax along `dim` (numerically stable).
    #[pyo3(signature = (dim = -1))]
    fn softmax(&self, py: Python<'_>, dim: isize) -> PyResult<PyTensor> {
        wrap(run(py, || softmax::softmax(&self.t, dim)))
    }
    /// log(softmax) along `dim`, computed stably.
    #[pyo3(signature = (dim = -1))]
    fn log_softmax(&self, py: Python<'_>, dim: isize) -> PyResult<PyTensor> {
        wrap(run(py, || softmax::log_softmax(&self.t, dim)))
    }

    // ---- shapes ----
    /// Same data in a new shape (`reshape(2, -1)` or `reshape((2, -1))`); shares storage.
    #[pyo3(signature = (*shape))]
    fn reshape(&self, py: Python<'_>, shape: &Bound<'_, PyTuple>) -> PyResult<PyTensor> {
        let s = shape_args(shape)?;
        wrap(run(py, || view::reshape(&self.t, &s)))
    }
    /// Alias of reshape.
    #[pyo3(signature = (*shape))]
    fn view(&self, py: Python<'_>, shape: &Bound<'_, PyTuple>) -> PyResult<PyTensor> {
        self.reshape(py, shape)
    }
    /// Reorder dims (`permute(0, 2, 1)`).
    #[pyo3(signature = (*dims))]
    fn permute(&self, py: Python<'_>, dims: &Bound<'_, PyTuple>) -> PyResult<PyTensor> {
        let d = shape_args(dims)?;
        wrap(run(py, || view::permute(&self.t, &d)))
    }
    /// Swap two dims.
    #[pyo3(signature = (dim0 = -2, dim1 = -1))]
    fn transpose(&self, py: Python<'_>, dim0: isize, dim1: isize) -> PyResult<PyTensor> {
        wrap(run(py, || view::transpose(&self.t, dim0, dim1)))
    }
    /// The transpose of a 2-D tensor (0-D and 1-D: unchanged). Refused for more dims, where torch has
    /// deprecated it: `.mT` swaps the last two dims, `permute(...)` reverses them all.
    #[getter(T)]
    fn t_(&self, py: Python<'_>) -> PyResult<PyTensor> {
        wrap(run(py, || view::t(&self.t)))
    }
    /// The last two dims swapped (a batch of matrices transposed), like torch's `.mT`; needs >= 2 dims.
    #[getter(mT)]
    fn mt_(&self, py: Python<'_>) -> PyResult<PyTensor> {
        wrap(run(py, || view::mt(&self.t)))
    }
    /// `length` entries of `dim` starting at `start`.
    fn narrow(&self, py: Python<'_>, dim: isize, start: usize, length: usize) -> PyResult<PyTensor> {
        wrap(run(py, || view::narrow(&self.t, dim, start, length)))
    }
    /// Insert a size-1 dim at `dim` (-ndim-1..=ndim; -1 appends).
    fn unsqueeze(&self, py: Python<'_>, dim: isize) -> PyResult<PyTensor> {
        wrap(run(py, || view::unsqueeze(&self.t, dim)))
    }
    /// Remove size-1 dims (all of them, or only `dim`; a longer `dim` is left as it is).
    #[pyo3(signature = (dim = None))]
    fn squeeze(&self, py: Python<'_>, dim: Option<isize>) -> PyResult<PyTensor> {
        wrap(run(py, || view::squeeze(&self.t, dim)))
    }
    /// All dims from `start_dim` on merged into one (a 0-d tensor becomes shape (1,)).
    #[pyo3(signature = (start_dim = 0))]
    fn flatten(&self, py: Python<'_>, start_dim: isize) -> PyResult<PyTensor> {
        wrap(run(py, || view::flatten(&self.t, start_dim)))
    }

    /// numpy-style indexing: ints, slices (step > 0), None, `...`, and one list/array of ints per dim.
    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let items: Vec<Bound<'_, PyAny>> = match key.cast::<PyTuple>() {
            Ok(t) => t.iter().collect(),
            Err(_) => vec![key.clone()],
        };
        let consumes = |k: &Bound<'_, PyAny>| !(k.is_none() || k.is(PyEllipsis::get(py)));
        let n_real = items.iter().filter(|k| consumes(k)).count();
        if items.iter().filter(|k| k.is(PyEllipsis::get(py))).count() > 1 {
            return Err(OutOfRangeError::new_err("an index can only have a single ellipsis ('...')"));
        }
        let nd = self.t.ndim();
        if n_real > nd {
            return Err(OutOfRangeError::new_err(format!(
                "too many indices for a tensor with {nd} dims: {n_real} were given"
            )));
        }
        let mut x = self.t.clone();
        let mut d: usize = 0;
        for k in &items {
            if k.is(PyEllipsis::get(py)) {
                d += nd - n_real;
            } else if k.is_none() {
                let dim = d as isize;
                x = run(py, || view::unsqueeze(&x, dim))?;
                d += 1;
            } else if let Ok(sl) = k.cast::<PySlice>() {
                let len = x.shape()[d] as isize;
                let ind = sl.indices(len)?;
                if ind.step <= 0 {
                    return Err(PyValueError::new_err("slice step must be positive"));
                }
                let dim = d as isize;
                x = run(py, || view::slice(&x, dim, ind.start, ind.stop, ind.step))?;
                d += 1;
            } else if k.is_instance_of::<pyo3::types::PyBool>() {
                return Err(PyTypeError::new_err(format!("tensor[{}]: {BOOL_INDEX}", k.repr()?)));
            } else if let Ok(i) = k.extract::<isize>() {
                let dim = d as isize;
                x = run(py, || view::select(&x, dim, i))?;
            } else {
                if k.cast::<PyTensor>().is_ok_and(|m| m.borrow().is_mask) {
                    return Err(PyTypeError::new_err(format!("tensor indexing by a comparison: {BOOL_INDEX}")));
                }
                let (idx, shape) = to_indices_for(py, k, Some("tensor indexing"))?;
                if shape.len() != 1 {
                    return Err(PyTypeError::new_err(format!(
                        "tensor indexing: index arrays must be 1-D, got shape {}. If this is a mask (e.g. \
                         `x > 0`): {BOOL_INDEX}",
                        crate::error::fmt_shape(&shape)
                    )));
                }
                let dim = d as isize;
                x = run(py, || crate::ops::index::index_select(&x, dim, &idx))?;
                d += 1;
            }
        }
        Ok(PyTensor::wrap(x))
    }
    fn __setitem__(&self, _key: &Bound<'_, PyAny>, _value: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(PyTypeError::new_err(
            "tensors do not support item assignment (autograd needs them unchanged); use nanofrontier.where or masked_fill",
        ))
    }
}
