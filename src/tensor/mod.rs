//! `Tensor`: a cheap-to-clone handle (`Arc`) to contiguous row-major f32 storage plus a shape and
//! the autograd slots (requires_grad, .grad, the node that made it). Handles are `Send + Sync`, so the
//! Python class can hold one and rayon workers can read it.
//! Not here: any math (that is `ops/`), or the backward pass itself (`autograd/`).

pub mod alloc;
pub mod display;
pub mod node;
pub mod random;
pub mod shape;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::{Error, Result, fmt_shape};
use crate::parallel::{GRAIN, for_each_chunk};
pub use alloc::{alloc_with_capacity, alloc_zeros, available_memory, try_vec, try_with_capacity};
use node::Backward;
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
    /// `self.grad += g` (taking `g` itself on first use when nothing else holds it). The tape accumulates
    /// every leaf's gradient through here.
    pub(crate) fn accumulate_grad(&self, g: Tensor) -> Result<()> {
        let mut slot = self.0.grad.lock().unwrap_or_else(|e| e.into_inner());
        let next = match slot.take() {
            None if g.is_exclusive() && g.grad_fn().is_none() => g,
            None => g.deep_clone(),
            // in place, like torch: a handle to `.grad` taken earlier sees the sum
            Some(old) if !old.same_storage(&g) => {
                add_assign(&old, &g);
                old
            }
            Some(old) => old.plus(&g)?,
        };
        *slot = Some(next);
        Ok(())
    }
    /// `self + g` for a gradient being summed by the tape (same shapes, nothing recorded): written into
    /// `self` when no other handle or view sees it, else into a new tensor.
    pub(crate) fn accumulated(self, g: &Tensor) -> Result<Tensor> {
        if self.is_exclusive() {
            add_assign(&self, g);
            Ok(self)
        } else {
            self.plus(g)
        }
    }
    /// `self + g` into a new tensor (same shapes).
    fn plus(&self, g: &Tensor) -> Result<Tensor> {
        debug_assert_eq!(self.shape(), g.shape());
        let mut out = alloc_zeros("backward", self.numel())?;
        let reads = read_all([self, g]);
        let [a, b] = reads.slices();
        for_each_chunk(&mut out, GRAIN, |s, c| c.iter_mut().enumerate().for_each(|(j, o)| *o = a[s + j] + b[s + j]));
        Ok(Self::from_vec_unchecked(out, self.shape().to_vec()))
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

/// `acc += g` (same shapes; `acc` must not share storage with `g`).
fn add_assign(acc: &Tensor, g: &Tensor) {
    debug_assert!(!acc.same_storage(g));
    let gd = g.data();
    let mut ad = acc.data_mut();
    for_each_chunk(&mut ad, GRAIN, |s, c| c.iter_mut().enumerate().for_each(|(j, a)| *a += gd[s + j]));
}

/// Read access to several tensors at once, with one read guard per distinct storage: taking a second
/// read lock on a storage this thread already reads may panic or deadlock in std once a writer waits,
/// and `attention(x, x, x)` or `x * x` hand an op the same storage twice. Ops that read several inputs
/// together take them through `read_all`.
pub struct Reads<'a, const N: usize> {
    guards: Vec<RwLockReadGuard<'a, Vec<f32>>>,
    slot: [usize; N],
}

impl<const N: usize> Reads<'_, N> {
    /// The data of each tensor, in the order given to `read_all`.
    pub fn slices(&self) -> [Data<'_>; N] {
        std::array::from_fn(|i| Data(&self.guards[self.slot[i]][..]))
    }
}

/// One tensor's data inside `Reads`: derefs to `[f32]`, as the read guard it stands in for does, so code
/// written against `t.data()` reads the same.
#[derive(Clone, Copy)]
pub struct Data<'r>(&'r [f32]);

impl std::ops::Deref for Data<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        self.0
    }
}

/// Lock each distinct storage among `ts` once for reading (see `Reads`).
pub fn read_all<const N: usize>(ts: [&Tensor; N]) -> Reads<'_, N> {
    let mut guards = Vec::with_capacity(N);
    let mut owners: Vec<&Tensor> = Vec::with_capacity(N);
    let slot = std::array::from_fn(|i| match owners.iter().position(|o| o.same_storage(ts[i])) {
        Some(j) => j,
        None => {
            owners.push(ts[i]);
            guards.push(ts[i].data());
            guards.len() - 1
        }
    });
    Reads { guards, slot }
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
    fn read_all_locks_each_storage_once() {
        let x = Tensor::new(vec![1.0, 2.0], &[2]).unwrap();
        let view = x.view_as_shape(vec![2, 1]);
        let y = Tensor::new(vec![3.0, 4.0], &[2]).unwrap();
        let reads = read_all([&x, &view, &y, &x]);
        assert_eq!(reads.guards.len(), 2, "two storages, {} guards", reads.guards.len());
        assert_eq!(
            reads.slices().map(|d| d.to_vec()),
            [vec![1.0, 2.0], vec![1.0, 2.0], vec![3.0, 4.0], vec![1.0, 2.0]]
        );
        // while we read, a writer on another thread waits instead of making our reads deadlock
        let (x2, started) = (x.clone(), std::sync::Arc::new(std::sync::Barrier::new(2)));
        let s2 = started.clone();
        let writer = std::thread::spawn(move || {
            s2.wait();
            x2.data_mut()[0] = 9.0;
        });
        started.wait();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(*reads.slices()[3], [1.0, 2.0]);
        drop(reads);
        writer.join().unwrap();
        assert_eq!(x.to_vec(), vec![9.0, 2.0]);
    }

    /// An op reading one storage twice (`x * x`, `attention(x, x, x)`) while another thread writes it: with
    /// a read lock per input, the second read queues behind the waiting writer, which waits for the first.
    /// (With one lock per input this test failed in 2 of 3 runs; with `read_all` it passed 5 of 5.)
    #[test]
    fn ops_reading_one_storage_twice_do_not_deadlock_with_a_writer() {
        use crate::ops::{attention::scaled_dot_product_attention, binary::mul};
        let x = Tensor::new((0..16).map(|i| i as f32 * 0.1).collect(), &[1, 1, 4, 4]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (xr, stop_r) = (x.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut calls = 0;
            while !stop_r.load(Ordering::Relaxed) {
                mul(&xr, &xr).unwrap();
                scaled_dot_product_attention(&xr, &xr, &xr, true, None).unwrap();
                calls += 1;
            }
            let _ = done_tx.send(calls);
        });
        let (xw, stop_w) = (x.clone(), stop.clone());
        let writer = std::thread::spawn(move || {
            while !stop_w.load(Ordering::Relaxed) {
                xw.data_mut()[0] += 0.0;
            }
        });
        std::thread::sleep(std::time::Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let calls = done_rx.recv_timeout(std::time::Duration::from_secs(20));
        assert!(calls.is_ok(), "the reading thread deadlocked (or panicked) against the writer");
        writer.join().unwrap();
    }

    #[test]
    fn accumulate_adds_in_place_only_when_unshared() {
        let a = Tensor::new(vec![1.0, 2.0], &[2]).unwrap();
        let g = Tensor::new(vec![10.0, 20.0], &[2]).unwrap();
        let sum = a.clone().accumulated(&g).unwrap(); // `a` is still held here: a new tensor
        assert_eq!((sum.to_vec(), a.to_vec()), (vec![11.0, 22.0], vec![1.0, 2.0]));
        let ptr = sum.data().as_ptr() as usize;
        let sum = sum.accumulated(&g).unwrap(); // unshared: in place
        assert_eq!((sum.to_vec(), sum.data().as_ptr() as usize), (vec![21.0, 42.0], ptr));
        // a leaf whose .grad shares storage with the incoming gradient still sums (no self-deadlock)
        let w = Tensor::new(vec![0.0, 0.0], &[2]).unwrap();
        w.set_grad(Some(g.clone())).unwrap();
        w.accumulate_grad(g.detach()).unwrap();
        assert_eq!(w.grad().unwrap().to_vec(), vec![20.0, 40.0]);
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
