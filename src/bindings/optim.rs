//! Optimizer cores for `nanofrontier.optim`: the Python classes keep `param_groups` (so schedules can edit
//! `lr`), and call `step(groups)` here once per training step; the whole update runs without the GIL.

use std::sync::Mutex;

use pyo3::prelude::*;

use super::errors::run;
use super::tensor::PyTensor;
use crate::optim::{AdamW, ParamGroup, Sgd, clip_grad_norm};
use crate::tensor::Tensor;

type Groups<'py> = Vec<(Vec<Bound<'py, PyTensor>>, f32, f32)>;

fn groups(gs: Groups<'_>) -> Vec<ParamGroup> {
    gs.into_iter().map(|(ps, lr, wd)| ParamGroup::new(ps.iter().map(|p| p.get().t.clone()).collect(), lr, wd)).collect()
}

/// AdamW state (moments and step counts per parameter). Use `nanofrontier.optim.AdamW`.
#[pyclass(name = "AdamW", module = "nanofrontier._core")]
pub struct PyAdamW {
    inner: Mutex<AdamW>,
}

#[pymethods]
impl PyAdamW {
    #[new]
    fn new(beta1: f32, beta2: f32, eps: f32) -> PyResult<Self> {
        Ok(PyAdamW { inner: Mutex::new(AdamW::new(beta1, beta2, eps)?) })
    }
    /// One update of every parameter with a gradient; `groups` = [(params, lr, weight_decay), ...].
    fn step(&self, py: Python<'_>, groups: Groups<'_>) -> PyResult<()> {
        let gs = self::groups(groups);
        run(py, || self.inner.lock().unwrap_or_else(|e| e.into_inner()).step(&gs))
    }
}

/// SGD momentum buffers. Use `nanofrontier.optim.SGD`.
#[pyclass(name = "SGD", module = "nanofrontier._core")]
pub struct PySgd {
    inner: Mutex<Sgd>,
}

#[pymethods]
impl PySgd {
    #[new]
    fn new(momentum: f32, dampening: f32, nesterov: bool) -> PyResult<Self> {
        Ok(PySgd { inner: Mutex::new(Sgd::new(momentum, dampening, nesterov)?) })
    }
    /// One update of every parameter with a gradient; `groups` = [(params, lr, weight_decay), ...].
    fn step(&self, py: Python<'_>, groups: Groups<'_>) -> PyResult<()> {
        let gs = self::groups(groups);
        run(py, || self.inner.lock().unwrap_or_else(|e| e.into_inner()).step(&gs))
    }
}

/// Scale all gradients so their global L2 norm is at most `max_norm`; returns the norm before clipping.
#[pyfunction(name = "clip_grad_norm")]
fn clip_grad_norm_py(py: Python<'_>, params: Vec<Bound<'_, PyTensor>>, max_norm: f32) -> PyResult<f64> {
    let ps: Vec<Tensor> = params.iter().map(|p| p.get().t.clone()).collect();
    Ok(run(py, || clip_grad_norm(&ps, max_norm))? as f64)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyAdamW>()?;
    m.add_class::<PySgd>()?;
    m.add_function(wrap_pyfunction!(clip_grad_norm_py, m)?)?;
    Ok(())
}
