//! Optimizer cores for `nanofrontier.optim`: the Python classes keep `param_groups` (so schedules can edit
//! `lr`), and call `step(groups)` here once per training step; the whole update runs without the GIL.

use std::sync::Mutex;

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;

use super::errors::run;
use super::tensor::PyTensor;
use crate::optim::{AdamState, AdamW, ParamGroup, Sgd, clip_grad_norm};
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
    /// Per parameter (in the given order): (m, v, step) as (float32 array, float32 array, int), or None
    /// before its first step.
    #[allow(clippy::type_complexity)]
    fn get_state<'py>(
        &self,
        py: Python<'py>,
        params: Vec<Bound<'py, PyTensor>>,
    ) -> Vec<Option<(Bound<'py, PyArray1<f32>>, Bound<'py, PyArray1<f32>>, u64)>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        params
            .iter()
            .map(|p| {
                inner
                    .state_for(p.get().t.id())
                    .map(|s| (PyArray1::from_slice(py, &s.m), PyArray1::from_slice(py, &s.v), s.step))
            })
            .collect()
    }
    /// Restore what `get_state` returned, for the same parameters in the same order.
    #[allow(clippy::type_complexity)]
    fn set_state(
        &self,
        params: Vec<Bound<'_, PyTensor>>,
        states: Vec<Option<(PyReadonlyArray1<'_, f32>, PyReadonlyArray1<'_, f32>, u64)>>,
    ) -> PyResult<()> {
        if params.len() != states.len() {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "optimizer state has {} entries for {} parameters",
                states.len(),
                params.len()
            )));
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (p, st) in params.iter().zip(states) {
            if let Some((m, v, step)) = st {
                let (m, v): (Vec<f32>, Vec<f32>) = (m.as_array().to_vec(), v.as_array().to_vec());
                let n = p.get().t.numel();
                if m.len() != n || v.len() != n {
                    return Err(super::errors::ShapeError::new_err(format!(
                        "optimizer state of length {} for a parameter of {n} elements",
                        m.len()
                    )));
                }
                inner.set_state(p.get().t.id(), AdamState { m, v, step })?;
            }
        }
        Ok(())
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
    /// Per parameter (in the given order): its momentum buffer (float32 array), or None.
    fn get_state<'py>(
        &self,
        py: Python<'py>,
        params: Vec<Bound<'py, PyTensor>>,
    ) -> Vec<Option<Bound<'py, PyArray1<f32>>>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        params.iter().map(|p| inner.momentum_buffer(p.get().t.id()).map(|b| PyArray1::from_slice(py, b))).collect()
    }
    /// Restore what `get_state` returned, for the same parameters in the same order.
    fn set_state(
        &self,
        params: Vec<Bound<'_, PyTensor>>,
        states: Vec<Option<PyReadonlyArray1<'_, f32>>>,
    ) -> PyResult<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (p, st) in params.iter().zip(states) {
            if let Some(buf) = st {
                let buf = buf.as_array().to_vec();
                if buf.len() != p.get().t.numel() {
                    return Err(super::errors::ShapeError::new_err(
                        "momentum buffer length does not match its parameter",
                    ));
                }
                inner.set_momentum_buffer(p.get().t.id(), buf);
            }
        }
        Ok(())
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
