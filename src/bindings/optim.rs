//! Optimizer cores for `nanofrontier.optim`: the Python classes keep `param_groups` (so schedules can edit
//! `lr`), and call `step(groups)` here once per training step; the whole update runs without the GIL.

use std::sync::Mutex;

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::errors::run;
use super::tensor::PyTensor;
use crate::error::Error;
use crate::optim::{AdamState, AdamW, ParamGroup, Sgd, clip_grad_norm};
use crate::tensor::Tensor;

/// The keys every group has.
const COMMON: [&str; 3] = ["params", "lr", "weight_decay"];

/// `param_groups` (a list of dicts) → core `ParamGroup`s. Each dict needs "params", "lr" and
/// "weight_decay"; `settings` are the other keys this optimizer takes (when one is absent, the
/// optimizer's value applies). Any other key is refused (Value, naming it), so no setting is silently
/// ignored; a value of the wrong type is a TypeError.
fn parse_groups(op: &'static str, groups: &[Bound<'_, PyDict>], settings: &[&str]) -> PyResult<Vec<ParamGroup>> {
    let mut out = Vec::with_capacity(groups.len());
    for (gi, d) in groups.iter().enumerate() {
        let takes = || COMMON.iter().chain(settings).copied().collect::<Vec<_>>().join(", ");
        let get = |key: &str| -> PyResult<Bound<'_, PyAny>> {
            d.get_item(key)?.ok_or_else(|| Error::value(op, format!("group {gi} has no '{key}'")).into())
        };
        let float = |key: &str, v: &Bound<'_, PyAny>| -> PyResult<f32> {
            v.extract::<f32>().map_err(|_| {
                PyTypeError::new_err(format!("{op}: '{key}' of group {gi} must be a number, got {}", type_name(v)))
            })
        };
        let params: Vec<Tensor> = get("params")?
            .extract::<Vec<Bound<'_, PyTensor>>>()
            .map_err(|_| PyTypeError::new_err(format!("{op}: 'params' of group {gi} must be a list of Tensors")))?
            .iter()
            .map(|p| p.get().t.clone())
            .collect();
        let mut g = ParamGroup::new(params, float("lr", &get("lr")?)?, float("weight_decay", &get("weight_decay")?)?);
        for (k, v) in d.iter() {
            let key: String = k.extract().map_err(|_| {
                PyTypeError::new_err(format!("{op}: group {gi} has a key of type {}, not str", type_name(&k)))
            })?;
            if COMMON.contains(&key.as_str()) {
                continue;
            }
            if !settings.contains(&key.as_str()) {
                let msg = format!("group {gi} has an unknown setting '{key}' ({op} takes {})", takes());
                return Err(Error::value(op, msg).into());
            }
            match key.as_str() {
                "betas" => {
                    let b: Vec<f32> = v.extract().map_err(|_| {
                        PyTypeError::new_err(format!(
                            "{op}: 'betas' of group {gi} must be two numbers, got {}",
                            type_name(&v)
                        ))
                    })?;
                    let [b1, b2] = b[..] else {
                        let msg = format!("'betas' of group {gi} must be two numbers (beta1, beta2), got {}", b.len());
                        return Err(Error::value(op, msg).into());
                    };
                    g = g.with_betas(b1, b2);
                }
                "eps" => g = g.with_eps(float("eps", &v)?),
                "momentum" => g = g.with_momentum(float("momentum", &v)?),
                "dampening" => g = g.with_dampening(float("dampening", &v)?),
                "nesterov" => {
                    g = g.with_nesterov(v.extract::<bool>().map_err(|_| {
                        PyTypeError::new_err(format!(
                            "{op}: 'nesterov' of group {gi} must be a bool, got {}",
                            type_name(&v)
                        ))
                    })?)
                }
                _ => unreachable!("every name in `settings` is parsed above"),
            }
        }
        out.push(g);
    }
    Ok(out)
}

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
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
    /// One update of every parameter with a gradient, each with its group's settings. `groups` are
    /// `param_groups` dicts: params, lr, weight_decay and optionally betas, eps (else the constructor's).
    fn step(&self, py: Python<'_>, groups: Vec<Bound<'_, PyDict>>) -> PyResult<()> {
        let gs = parse_groups("adamw", &groups, &AdamW::SETTINGS)?;
        run(py, || self.inner.lock().unwrap_or_else(|e| e.into_inner()).step(&gs))
    }
    /// Raise the error `step` would raise for these groups' settings, without stepping.
    fn check_groups(&self, groups: Vec<Bound<'_, PyDict>>) -> PyResult<()> {
        let gs = parse_groups("adamw", &groups, &AdamW::SETTINGS)?;
        Ok(self.inner.lock().unwrap_or_else(|e| e.into_inner()).check_groups(&gs)?)
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
    /// One update of every parameter with a gradient, each with its group's settings. `groups` are
    /// `param_groups` dicts: params, lr, weight_decay and optionally momentum, dampening, nesterov (else
    /// the constructor's).
    fn step(&self, py: Python<'_>, groups: Vec<Bound<'_, PyDict>>) -> PyResult<()> {
        let gs = parse_groups("sgd", &groups, &Sgd::SETTINGS)?;
        run(py, || self.inner.lock().unwrap_or_else(|e| e.into_inner()).step(&gs))
    }
    /// Raise the error `step` would raise for these groups' settings, without stepping.
    fn check_groups(&self, groups: Vec<Bound<'_, PyDict>>) -> PyResult<()> {
        let gs = parse_groups("sgd", &groups, &Sgd::SETTINGS)?;
        Ok(self.inner.lock().unwrap_or_else(|e| e.into_inner()).check_groups(&gs)?)
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
