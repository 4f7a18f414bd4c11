//! numpy-like text for a tensor: nested brackets, 4 decimals, long dims cut with "..." (first and
//! last 3 entries), followed by the autograd status. Used by Debug and by Python's `__repr__`.

use super::Tensor;

const EDGE: usize = 3; // entries shown at each end of a long dim
const CUT: usize = 2 * EDGE + 1; // dims longer than this are cut

fn fmt_value(v: f32, width: usize) -> String {
    let s = if v.is_nan() {
        "nan".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "inf".into() } else { "-inf".into() }
    } else if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-4) {
        format!("{v:.4e}")
    } else {
        format!("{v:.4}")
    };
    format!("{s:>width$}")
}

fn shown(n: usize) -> Vec<Option<usize>> {
    if n <= CUT {
        (0..n).map(Some).collect()
    } else {
        (0..EDGE).map(Some).chain([None]).chain((n - EDGE..n).map(Some)).collect()
    }
}

fn fmt_rec(data: &[f32], shape: &[usize], offset: usize, depth: usize, indent: usize, width: usize) -> String {
    if shape.is_empty() {
        return fmt_value(data[offset], 0);
    }
    let stride: usize = shape[1..].iter().product();
    let items: Vec<String> = shown(shape[0])
        .into_iter()
        .map(|i| match i {
            Some(i) => fmt_rec(data, &shape[1..], offset + i * stride, depth + 1, indent, width),
            None => "...".to_string(),
        })
        .map(|s| if shape.len() == 1 && s != "..." { format!("{:>width$}", s.trim()) } else { s })
        .collect();
    let sep = if shape.len() == 1 {
        ", ".to_string()
    } else {
        format!(",{}{}", "\n".repeat(shape.len() - 1), " ".repeat(indent + depth + 1))
    };
    format!("[{}]", items.join(&sep))
}

/// `tensor([[1.0000, 2.0000], [3.0000, 4.0000]], requires_grad=True)`-style text.
pub fn format_tensor(t: &Tensor) -> String {
    let data = t.data();
    let width = data.iter().take(10_000).map(|&v| fmt_value(v, 0).len()).max().unwrap_or(1);
    let body = if t.numel() == 0 {
        format!("[], shape={}", crate::error::fmt_shape(t.shape()))
    } else {
        fmt_rec(&data, t.shape(), 0, 0, "tensor(".len(), width)
    };
    let mut s = format!("tensor({body}");
    if let Some(name) = t.grad_fn_name() {
        s.push_str(&format!(", grad_fn=<{name}>"));
    } else if t.requires_grad() {
        s.push_str(", requires_grad=True");
    }
    s.push(')');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_like_numpy() {
        let t = Tensor::new(vec![1.0, -2.5, 3.0, 4.0], &[2, 2]).unwrap();
        assert_eq!(format_tensor(&t), "tensor([[ 1.0000, -2.5000],\n        [ 3.0000,  4.0000]])");
        let long = Tensor::new((0..10).map(|i| i as f32).collect(), &[10]).unwrap();
        assert_eq!(format_tensor(&long), "tensor([0.0000, 1.0000, 2.0000, ..., 7.0000, 8.0000, 9.0000])");
        assert_eq!(format_tensor(&Tensor::scalar(0.5).requires_grad_(true)), "tensor(0.5000, requires_grad=True)");
    }
}
