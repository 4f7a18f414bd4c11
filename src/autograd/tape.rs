//! `backward`: seed d(root) (1 for a scalar, or the given gradient), order the recorded nodes so each
//! comes after everything that used it (iterative DFS; deep graphs cannot overflow the stack), then
//! call each node's backward once, summing gradients that meet at a tensor. Leaves that require grad
//! accumulate into `.grad` (+=, like torch). A multi-output node (`record_multi`) runs once, with the
//! gradients of all its outputs (None for those that got none). Unless `retain_graph`, each node frees what it saved, and a
//! second backward through it is an error rather than a silent wrong answer.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result, fmt_shape};
use crate::runtime::{check_interrupt, no_grad};
use crate::tensor::Tensor;

const FREED: &str = "trying to backward through the graph a second time (its saved values were freed by the \
first backward); pass retain_graph=True to the first backward, or recompute the forward";

/// Tensors reachable from `root` through recorded nodes, each after all of its consumers.
fn topo_order(root: &Tensor) -> Result<Vec<Tensor>> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // (tensor, children_pushed)
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        match t.grad_fn() {
            Some(f) => {
                stack.push((t.clone(), true));
                for inp in f.inputs() {
                    if inp.requires_grad() && !seen.contains(&inp.id()) {
                        stack.push((inp, false));
                    }
                }
            }
            None if t.is_freed() => return Err(Error::Grad(FREED.into())),
            None => {} // a leaf
        }
    }
    order.reverse();
    Ok(order)
}

/// Gradients collected for one multi-output node until its last output in the order is reached.
struct Pending {
    douts: Vec<Option<Tensor>>,
    outs: Vec<Tensor>,
}

/// Add one node's input gradients `dins` into `grads` (non-leaf inputs) or into `.grad` (leaves).
/// `outs` are the node's output tensors (a gradient sharing their storage is copied before it is kept).
fn accumulate(
    grads: &mut HashMap<u64, Tensor>,
    name: &str,
    outs: &[Tensor],
    inputs: &[Tensor],
    dins: Vec<Option<Tensor>>,
    needs: &[bool],
) -> Result<()> {
    for ((inp, din), &need) in inputs.iter().zip(dins).zip(needs) {
        let Some(din) = din else { continue };
        if !need {
            continue;
        }
        if din.shape() != inp.shape() {
            return Err(Error::Grad(format!(
                "internal error in {name}'s backward: gradient shape {} for an input of shape {}",
                fmt_shape(din.shape()),
                fmt_shape(inp.shape())
            )));
        }
        if inp.grad_fn().is_some() {
            match grads.remove(&inp.id()) {
                // in place only if nothing else sees acc: backwards may hand out aliases (add
                // passes dout through to both inputs, reshape returns a view of dout)
                Some(acc) => {
                    grads.insert(inp.id(), acc.accumulated(&din)?);
                }
                None => {
                    // the same tensor may be shared (e.g. a reshape view), so own the data
                    let owned = if outs.iter().any(|t| din.same_storage(t)) { din.deep_clone() } else { din };
                    grads.insert(inp.id(), owned);
                }
            }
        } else if inp.is_freed() {
            return Err(Error::Grad(FREED.into()));
        } else {
            inp.accumulate_grad(din)?;
        }
    }
    Ok(())
}

impl Tensor {
    /// d(self)/d(leaves), accumulated into each leaf's `.grad`.
    /// `grad` is d(loss)/d(self); it may be omitted only when `self` has one element.
    pub fn backward(&self, grad: Option<&Tensor>, retain_graph: bool) -> Result<()> {
        if !self.requires_grad() {
            return Err(Error::Grad(
                "backward: this tensor does not require grad and has no grad_fn (did you forget \
                 requires_grad=True on an input, or compute it under no_grad?)"
                    .into(),
            ));
        }
        if self.is_freed() {
            return Err(Error::Grad(FREED.into()));
        }
        let seed = match grad {
            Some(g) => {
                if g.shape() != self.shape() {
                    return Err(Error::shape(
                        "backward",
                        format!(
                            "gradient shape {} does not match output shape {}",
                            fmt_shape(g.shape()),
                            fmt_shape(self.shape())
                        ),
                    ));
                }
                // shared, not copied: nothing writes a gradient the caller can see (the tape sums into a
                // gradient in place only when no other handle sees it, `accumulated`; a leaf's `.grad`
                // gets a copy of one it does not own, `accumulate_grad`), and a copy of a large `grad`
                // (25 MB for a GPT-small layer's dY) cost as much as a tenth of that layer's backward
                g.clone()
            }
            None if self.numel() == 1 => Tensor::full(self.shape(), 1.0)?,
            None => {
                return Err(Error::Grad(format!(
                    "backward: grad can be implicitly created only for one-element outputs, but this tensor has \
                     shape {}; reduce it first (e.g. .sum()) or pass a gradient of that shape",
                    fmt_shape(self.shape())
                )));
            }
        };
        if self.grad_fn().is_none() {
            return self.accumulate_grad(seed); // backward on a leaf: d(self)/d(self) = seed
        }
        let _guard = no_grad();
        let order = topo_order(self)?;
        let mut grads: HashMap<u64, Tensor> = HashMap::new();
        grads.insert(self.id(), seed);
        // A multi-output op runs once, at the last of its outputs in `order` (all its consumers are done
        // by then, and its inputs come later): count them, and collect their gradients until then.
        let mut remaining: HashMap<usize, usize> = HashMap::new();
        for t in &order {
            if let Some(o) = t.grad_fn().as_deref().and_then(|f| f.as_output_of()) {
                *remaining.entry(o.key()).or_insert(0) += 1;
            }
        }
        let mut pending: HashMap<usize, Pending> = HashMap::new();
        for t in order {
            check_interrupt()?;
            let Some(node) = t.grad_fn() else { continue };
            if let Some(o) = node.as_output_of() {
                let key = o.key();
                let p =
                    pending.entry(key).or_insert_with(|| Pending { douts: vec![None; o.n_outputs], outs: Vec::new() });
                p.douts[o.index] = grads.remove(&t.id());
                if !retain_graph {
                    t.mark_freed();
                }
                p.outs.push(t);
                let left = remaining.get_mut(&key).map(|n| {
                    *n -= 1;
                    *n
                });
                if left != Some(0) {
                    continue;
                }
                let Some(p) = pending.remove(&key) else { continue };
                if p.douts.iter().all(Option::is_none) {
                    continue;
                }
                let inputs = o.node.inputs();
                let needs: Vec<bool> = inputs.iter().map(|i| i.requires_grad()).collect();
                let dins = o.node.backward(&p.douts, &needs)?;
                drop(p.douts);
                accumulate(&mut grads, o.node.name(), &p.outs, &inputs, dins, &needs)?;
                continue;
            }
            let Some(g) = grads.remove(&t.id()) else { continue };
            let inputs = node.inputs();
            let needs: Vec<bool> = inputs.iter().map(|i| i.requires_grad()).collect();
            let dins = node.backward(&g, &needs)?;
            drop(g);
            if !retain_graph {
                t.mark_freed();
            }
            accumulate(&mut grads, node.name(), std::slice::from_ref(&t), &inputs, dins, &needs)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::binary::{add, mul};
    use crate::ops::reduce::sum_all;
    use crate::tensor::Tensor;

    fn leaf(v: &[f32]) -> Tensor {
        Tensor::new(v.to_vec(), &[v.len()]).unwrap().requires_grad_(true)
    }

    #[test]
    fn shared_subexpression_accumulates() {
        // y = x*x + x  -> dy/dx = 2x + 1
        let x = leaf(&[1.0, -2.0, 3.0]);
        let y = sum_all(&add(&mul(&x, &x).unwrap(), &x).unwrap()).unwrap();
        y.backward(None, false).unwrap();
        assert_eq!(x.grad().unwrap().to_vec(), vec![3.0, -3.0, 7.0]);
        // a second, separate graph accumulates into .grad (torch semantics)
        sum_all(&x).unwrap().backward(None, false).unwrap();
        assert_eq!(x.grad().unwrap().to_vec(), vec![4.0, -2.0, 8.0]);
    }

    #[test]
    fn an_explicit_gradient_is_never_written() {
        // the seed is shared, not copied: passed through `add` to both leaves, summed twice into their
        // `.grad` (retain_graph), and as a leaf's own gradient, the caller's tensor keeps its values
        let (x, z) = (leaf(&[1.0, 2.0]), leaf(&[3.0, 4.0]));
        let g = Tensor::new(vec![0.5, -1.5], &[2]).unwrap();
        let y = add(&x, &z).unwrap();
        for _ in 0..2 {
            y.backward(Some(&g), true).unwrap();
            x.backward(Some(&g), false).unwrap();
        }
        assert_eq!(g.to_vec(), vec![0.5, -1.5], "the gradient passed in was modified");
        assert_eq!(x.grad().unwrap().to_vec(), vec![2.0, -6.0]);
        assert_eq!(z.grad().unwrap().to_vec(), vec![1.0, -3.0]);
    }

    #[test]
    fn misuse_is_an_error() {
        let x = leaf(&[1.0, 2.0]);
        let y = mul(&x, &x).unwrap();
        let e = y.backward(None, false).unwrap_err();
        assert!(e.to_string().contains("one-element"), "{e}");
        let s = sum_all(&y).unwrap();
        s.backward(None, false).unwrap();
        let e = s.backward(None, false).unwrap_err();
        assert!(e.to_string().contains("second time"), "{e}");
        // retain_graph keeps it usable
        let s2 = sum_all(&mul(&x, &x).unwrap()).unwrap();
        s2.backward(None, true).unwrap();
        s2.backward(None, true).unwrap();
        let nograd = Tensor::new(vec![1.0], &[1]).unwrap();
        assert!(nograd.backward(None, false).is_err());
    }

    #[test]
    fn deep_graph_does_not_overflow_the_stack() {
        let x = leaf(&[1.0]);
        let mut y = x.clone();
        for _ in 0..100_000 {
            y = add(&y, &x).unwrap();
        }
        sum_all(&y).unwrap().backward(None, false).unwrap();
        assert_eq!(x.grad().unwrap().to_vec(), vec![100_001.0]);
    }

    #[test]
    fn multi_output_node_runs_once_with_all_gradients() {
        use crate::autograd::{MultiBackward, record_multi};
        use std::sync::{Arc, Mutex};
        // outs = (x, 2x); the node records which gradients it was given on each call
        type Calls = Arc<Mutex<Vec<Vec<bool>>>>;
        struct Two(Tensor, Calls);
        impl MultiBackward for Two {
            fn name(&self) -> &'static str {
                "two"
            }
            fn inputs(&self) -> Vec<Tensor> {
                vec![self.0.clone()]
            }
            fn backward(&self, douts: &[Option<Tensor>], _: &[bool]) -> crate::Result<Vec<Option<Tensor>>> {
                self.1.lock().unwrap().push(douts.iter().map(Option::is_some).collect());
                let mut dx = vec![0.0; self.0.numel()];
                for (k, g) in douts.iter().enumerate() {
                    if let Some(g) = g {
                        dx.iter_mut().zip(g.data().iter()).for_each(|(d, &g)| *d += (k + 1) as f32 * g);
                    }
                }
                Ok(vec![Some(Tensor::new(dx, self.0.shape())?)])
            }
        }
        let two = |x: &Tensor, calls: &Calls| {
            let outs = vec![x.detach().deep_clone(), mul(x, &Tensor::scalar(2.0)).unwrap().detach()];
            record_multi(outs, Two(x.clone(), calls.clone()))
        };
        let x = leaf(&[1.0, 2.0]);
        let calls: Calls = Arc::default();
        let o = two(&x, &calls);
        assert_eq!(o[1].grad_fn_name(), Some("two"));
        // both used, one of them twice and also through x directly: d/dx (o0 + o1 + o1 + x) = 1 + 2 + 2 + 1
        let y = sum_all(&add(&add(&add(&o[0], &o[1]).unwrap(), &o[1]).unwrap(), &x).unwrap()).unwrap();
        y.backward(None, false).unwrap();
        assert_eq!(x.grad().unwrap().to_vec(), vec![6.0, 6.0]);
        assert_eq!(*calls.lock().unwrap(), vec![vec![true, true]]);
        // only the second used: one call, the first gradient absent
        x.zero_grad();
        let o = two(&x, &calls);
        sum_all(&o[1]).unwrap().backward(None, false).unwrap();
        assert_eq!(x.grad().unwrap().to_vec(), vec![2.0, 2.0]);
        assert_eq!(calls.lock().unwrap()[1], vec![false, true]);
    }

    #[test]
    fn no_grad_records_nothing() {
        let x = leaf(&[1.0]);
        let y = {
            let _g = crate::autograd::no_grad();
            mul(&x, &x).unwrap()
        };
        assert!(!y.requires_grad());
        assert!(mul(&x, &x).unwrap().requires_grad());
    }
}
