//! Reductions: sum, mean, max over dims (with keepdim), and the whole-tensor sum_all / mean_all.
//! Sums accumulate in f64 so long reductions stay accurate and do not depend on thread count.

use crate::autograd::{Backward, record};
use crate::error::Result;
use crate::tensor::Tensor;

// ---- sum_all ----
/// Sum of every element, as a 0-d tensor.
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    let s: f64 = x.data().iter().map(|&v| v as f64).sum();
    Ok(record(Tensor::scalar(s as f32), SumAllBackward { x: x.clone() }))
}
struct SumAllBackward {
    x: Tensor,
}
impl Backward for SumAllBackward {
    fn name(&self) -> &'static str {
        "sum"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // out = Σ x  so  dx = dout everywhere
    fn backward(&self, dout: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(Tensor::full(self.x.shape(), dout.item()?)?)])
    }
}
