//! `Tensor`: a cheap-to-clone handle (`Arc`) to contiguous row-major f32 storage plus a shape and
//! the autograd slots (requires_grad, .grad, the node that made it). Handles are `Send + Sync`, so the
//! Python class can hold one and rayon workers can read it.
//! Not here: any math (that is `ops/`), or the backward pass itself (`autograd/`).

pub mod display;
pub mod random;
pub mod shape;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::autograd::Backward;
use crate::error::{Error, Result, fmt_shape};
pub use shape::{broadcast_shapes, checked_numel, normalize_dim, numel, strides};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Storage shared between a tensor and its reshaped views / detached copies.
pub type Storage = Arc<RwLock<Vec<f32>>>;

pub(crate) struct Inner {
    id: u64,
    shape: Vec<usize>,
    storage: Storage,
    requires_grad: AtomicBool,
    grad: Mutex<Option<Tensor>>,
    /// The op that produced this tensor (None for leaves and for anything made under no_grad).
    grad_fn: Mutex<Option<Arc<dyn Backward>>>,
    /// Set once backward has run through this node and freed what it saved.
    freed: AtomicBool,
}

#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<Inner>);

/// Allocate `n` zeros, turning an impossible size into `Error::Alloc` instead of an abort.
/// Uses the allocator's zeroed path, so large buffers come pre-zeroed from the OS (no serial memset).
pub fn alloc_zeros(op: &'static str, n: usize) -> Result<Vec<f32>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let err = || Error::Alloc { op, numel: n as u128 };
    let layout = std::alloc::Layout::array::<f32>(n).map_err(|_| err())?;
    // SAFETY: layout has non-zero size; a null return is handled; the buffer was allocated by the global
    // allocator with exactly this layout (capacity n of f32), and all-zero bits are valid f32 values.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut f32;
        if ptr.is_null() {
            return Err(err());
        }
        Ok(Vec::from_raw_parts(ptr, n, n))
    }
}

/// An empty vector with room for `n` elements (same error rule as `alloc_zeros`).
pub fn alloc_with_capacity(op: &'static str, n: usize) -> Result<Vec<f32>> {
    let mut v: Vec<f32> = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::Alloc { op, numel: n as u128 })?;
    Ok(v)
}

impl Tensor {
    fn from_storage(storage: Storage, shape: Vec<usize>) -> Tensor {
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shape,
            storage,
            requires_grad: AtomicBool::new(false),
            grad: Mutex::new(None),
            grad_fn: Mutex::new(None),
            freed: AtomicBool::new(false),
        }))
    }

    /// A tensor owning `data`, read row-major as `shape`.
    pub fn new(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        let n = checked_numel("tensor", shape)?;
        if n != data.len() {
            return Err(Error::shape(
                "tensor",
                format!("{} values cannot be viewed as shape {}", data.len(), fmt_shape(shape)),
            ));
        }
        Ok(Self::from_storage(Arc::new(RwLock::new(data)), shape.to_vec()))
    }

    /// Internal constructor for op outputs whose length is right by construction.
    pub(crate) fn from_vec_unchecked(data: Vec<f32>, shape: Vec<usize>) -> Tensor {
        debug_assert_eq!(data.len(), numel(&shape));
        Self::from_storage(Arc::new(RwLock::new(data)), shape)
    }

    pub fn scalar(v: f32) -> Tensor {
        Self::from_vec_unchecked(vec![v], vec![])
    }

    pub fn full(shape: &[usize], v: f32) -> Result<Tensor> {
        let n = checked_numel("full", shape)?;
        let mut d = alloc_with_capacity("full", n)?;
        d.resize(n, v);
        Ok(Self::from_vec_unchecked(d, shape.to_vec()))
    }

    pub fn zeros(shape: &[usize]) -> Result<Tensor> {
        Self::full(shape, 0.0)
    }

    pub fn ones(shape: &[usize]) -> Result<Tensor> {
        Self::full(shape, 1.0)
    }

    pub fn zeros_like(&self) -> Result<Tensor> {
        Self::zeros(self.shape())
    }

    /// A new tensor with the same storage but another shape of the same size (used by reshape).
    pub(crate) fn view_as_shape(&self, shape: Vec<usize>) -> Tensor {
        debug_assert_eq!(numel(&shape), self.numel());
        Self::from_storage(self.0.storage.clone(), shape)
    }

    // ---- metadata ----
    pub fn id(&self) -> u64 {
        self.0.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    pub fn ndim(&self) -> usize {
        self.0.shape.len()
    }
    pub fn numel(&self) -> usize {
        numel(&self.0.shape)
    }
    /// Size of dim `d` (negative counts from the end).
    pub fn dim(&self, d: isize) -> Result<usize> {
        Ok(self.0.shape[normalize_dim("dim", d, self.ndim())?])
    }
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }
    /// True if no other handle or view can see this tensor's data, so writing it in place is safe.
    pub(crate) fn is_exclusive(&self) -> bool {
        Arc::strong_count(&self.0) == 1 && Arc::strong_count(&self.0.storage) == 1
    }

    // ---- data ----
    /// Read access to the contiguous data. Do not hold it across a call that writes the same tensor.
    pub fn data(&self) -> RwLockReadGuard<'_, Vec<f32>> {
        self.0.storage.read().unwrap_or_else(|e| e.into_inner())
    }
    /// Write access (optimizer steps, gradcheck perturbations). Bypasses autograd.
    pub fn data_mut(&self) -> RwLockWriteGuard<'_, Vec<f32>> {
        self.0.storage.write().unwrap_or_else(|e| e.into_inner())
    }
    pub fn to_vec(&self) -> Vec<f32> {
        self.data().clone()
    }
    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::value(
                "item",
                format!("only one-element tensors can be converted to a number, got shape {}", fmt_shape(self.shape())),
            ));
        }
        Ok(self.data()[0])
    }
    /// A copy with its own storage (no autograd history).
    pub fn deep_clone(&self) -> Tensor {
        Self::from_vec_unchecked(self.to_vec(), self.shape().to_vec())
    }

    // ---- autograd slots ----
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad.load(Ordering::Relaxed)
    }
    /// Mark a leaf as a parameter (or not). Only leaves may change this, as in torch.
    pub fn set_requires_grad(&self, on: bool) -> Result<()> {
        if !self.is_leaf() && !on {
            return Err(Error::Grad(
                "requires_grad can only be turned off on leaf tensors; use detach() for a non-leaf".into(),
            ));
        }
        self.0.requires_grad.store(on, Ordering::Relaxed);
        Ok(())
    }
    /// Builder form: `Tensor::new(..)?.requires_grad_(true)`.
    pub fn requires_grad_(self, on: bool) -> Tensor {
        self.0.requires_grad.store(on, Ordering::Relaxed);
        self
    }
    pub(crate) fn mark_requires_grad(&self) {
        self.0.requires_grad.store(true, Ordering::Relaxed);
    }
    /// True for tensors not produced by a recorded op (parameters, inputs).
    pub fn is_leaf(&self) -> bool {
        self.grad_fn().is_none() && !self.0.freed.load(Ordering::Relaxed)
    }
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn set_grad(&self, g: Option<Tensor>) -> Result<()> {
        if let Some(g) = &g {
            if g.shape() != self.shape() {
                return Err(Error::shape(
                    "set_grad",
                    format!(
                        "gradient shape {} does not match tensor shape {}",
                        fmt_shape(g.shape()),
                        fmt_shape(self.shape())
                    ),
                ));
            }
        }
        *self.0.grad.lock().unwrap_or_else(|e| e.into_inner()) = g;
        Ok(())
    }
    /// `self.grad += g` (taking `g` itself on first use when nothing else holds it). Used by the tape.
    pub(crate) fn accumulate_grad(&self, g: Tensor) {
        let mut slot = self.0.grad.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            None if g.is_exclusive() && g.grad_fn().is_none() => *slot = Some(g),
            None => *slot = Some(g.deep_clone()),
            Some(old) => {
                let mut d = old.data_mut();
                for (a, b) in d.iter_mut().zip(g.data().iter()) {
                    *a += *b;
                }
            }
        }
    }
    pub fn zero_grad(&self) {
        *self.0.grad.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
    pub(crate) fn grad_fn(&self) -> Option<Arc<dyn Backward>> {
        self.0.grad_fn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub(crate) fn set_grad_fn(&self, f: Option<Arc<dyn Backward>>) {
        *self.0.grad_fn.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }
    pub(crate) fn mark_freed(&self) {
        self.set_grad_fn(None);
        self.0.freed.store(true, Ordering::Relaxed);
    }
    pub(crate) fn is_freed(&self) -> bool {
        self.0.freed.load(Ordering::Relaxed)
    }
    /// Name of the op that made this tensor, e.g. "mul" (None for leaves).
    pub fn grad_fn_name(&self) -> Option<&'static str> {
        self.grad_fn().map(|f| f.name())
    }
    /// Same data, cut from the graph: the result is a leaf that does not require grad.
    pub fn detach(&self) -> Tensor {
        Self::from_storage(self.0.storage.clone(), self.shape().to_vec())
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", display::format_tensor(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construction_checks_sizes() {
        let t = Tensor::new(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.numel(), 6);
        assert_eq!(t.dim(-1).unwrap(), 3);
        let e = Tensor::new(vec![1.0; 5], &[2, 3]).unwrap_err();
        assert_eq!(e.to_string(), "tensor: 5 values cannot be viewed as shape (2, 3)");
        assert!(Tensor::scalar(2.5).item().unwrap() == 2.5);
        assert!(t.item().is_err());
    }

    #[test]
    fn huge_sizes_are_errors_not_aborts() {
        assert!(matches!(Tensor::zeros(&[1 << 31, 1 << 31]), Err(Error::Alloc { .. })));
        // fits isize but not memory: try_reserve reports it instead of aborting
        assert!(matches!(Tensor::zeros(&[1 << 20, 1 << 20, 1 << 10]), Err(Error::Alloc { .. })));
    }

    #[test]
    fn tensors_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Tensor>();
    }
}
