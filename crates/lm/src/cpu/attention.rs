//! One decoding step's attention on the CPU in two passes over raw f32 memory instead of
//! some twenty libtorch operations.
//!
//! At batch 16 on SmolLM2-135M a decoding step spent about a sixth of its time in the
//! small operations around attention (rotary embedding, score matmuls through MKL,
//! scaling, masking, softmax, reshapes), each costing more to dispatch than to compute.
//! [`rope`] applies the rotary embedding with libtorch's own operations and rounding
//! (`x * cos + rotate_half(x) * sin`, one rounding each, unfused), so its results are the
//! same bits. [`decode_attention`] computes scores, softmax and the weighted sum of
//! values for one new position per sequence; its sums run in another order than MKL's,
//! so its outputs differ from libtorch's in rounding (about 1e-7 relative).

use tch::{Device, Kind, Tensor};

/// Whether these tensors can take the fused path: CPU f32, no gradient wanted.
pub(crate) fn applies(tensors: &[&Tensor]) -> bool {
    super::enabled_isa().is_some()
        && avx2()
        && tensors
            .iter()
            .all(|t| t.device() == Device::Cpu && t.kind() == Kind::Float && !t.requires_grad())
}

/// AVX2 and FMA, which every processor with the kernels has; checked anyway, since the
/// sums below are compiled for them.
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A CPU f32 tensor's values (made contiguous first when it is not).
fn values(tensor: &Tensor) -> (Tensor, *const f32) {
    let tensor = tensor.contiguous();
    let at = tensor.data_ptr().cast::<f32>().cast_const();
    (tensor, at)
}

/// The rotary embedding of `x` (`[batch, heads * d]`, one position per sequence) with
/// `cos` and `sin` (`[batch, d]`, as [`crate::CausalLm`]'s `rotary` makes them):
/// `x * cos + rotate_half(x) * sin` per head, the same operations and roundings as
/// libtorch's, so the same bits.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, d: usize) -> Tensor {
    let (x, xs) = values(x);
    let (cos, cs) = values(cos);
    let (sin, ss) = values(sin);
    let out = Tensor::empty(x.size().as_slice(), (Kind::Float, Device::Cpu));
    let batch = usize::try_from(x.size()[0]).unwrap_or(0);
    let width = x.numel() / batch.max(1);
    let half = d / 2;
    // SAFETY: `x` and `out` hold batch x width values, `cos` and `sin` batch x d; all
    // stay alive (bound above) while the slices are used.
    let (xs, cs, ss, ys) = unsafe {
        (
            std::slice::from_raw_parts(xs, batch * width),
            std::slice::from_raw_parts(cs, batch * d),
            std::slice::from_raw_parts(ss, batch * d),
            std::slice::from_raw_parts_mut(out.data_ptr().cast::<f32>(), batch * width),
        )
    };
    for b in 0..batch {
        let (cos, sin) = (&cs[b * d..(b + 1) * d], &ss[b * d..(b + 1) * d]);
        let rows = xs[b * width..(b + 1) * width].chunks_exact(d);
        for (x, y) in rows.zip(ys[b * width..(b + 1) * width].chunks_exact_mut(d)) {
            for i in 0..half {
                // rotate_half(x) = cat(-x2, x1).
                y[i] = x[i] * cos[i] + (-x[i + half]) * sin[i];
                y[i + half] = x[i + half] * cos[i + half] + x[i] * sin[i + half];
            }
        }
    }
    drop((x, cos, sin));
    out
}

/// Attention of one new position per sequence: `q` (`[batch, heads * d]`, rotated)
/// against the first `total` cached positions of `keys` and `values` (`[batch, kv heads,
/// capacity, d]` views, last dimension contiguous), with the additive `bias` (`[batch,
/// total]`: 0 or a large negative number) and `scale` on the scores; grouped-query heads
/// share their key/value head (`heads / kv_heads` each, consecutive). Returns `[batch,
/// 1, heads * d]`.
pub(crate) fn decode_attention(
    q: &Tensor,
    keys: &Tensor,
    values_: &Tensor,
    bias: &Tensor,
    scale: f32,
    heads: usize,
) -> Option<Tensor> {
    // The sums are compiled for AVX2 and FMA (`Job::head`).
    if !avx2() || !applies(&[q, keys, values_, bias]) {
        return None;
    }
    let &[batch, kv_heads, total, d] = keys.size().as_slice() else {
        return None;
    };
    if values_.size() != keys.size()
        || keys.stride()[3] != 1
        || values_.stride() != keys.stride()
        || bias.size() != [batch, total]
        || q.size() != [batch, heads as i64 * d]
    {
        return None;
    }
    let [batch, kv_heads, total, d] = [batch, kv_heads, total, d].map(|v| v as usize);
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return None;
    }
    let strides: Vec<usize> = keys.stride().iter().map(|&s| s as usize).collect();
    let (q, qs) = values(q);
    let (bias, bs) = values(bias);
    let out = Tensor::empty(
        [batch as i64, 1, (heads * d) as i64],
        (Kind::Float, Device::Cpu),
    );
    let job = Job {
        q: qs,
        keys: keys.data_ptr().cast::<f32>().cast_const(),
        values: values_.data_ptr().cast::<f32>().cast_const(),
        bias: bs,
        out: out.data_ptr().cast::<f32>(),
        strides: [strides[0], strides[1], strides[2]],
        total,
        d,
        heads,
        repeat: heads / kv_heads,
        scale,
    };
    let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1);
    let pairs = batch * heads;
    // Worth sharing only when there is enough of it (a few hundred thousand products).
    if threads > 1 && pairs * total * d >= 1 << 17 {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let ran = super::team::broadcast(threads, &|| {
            loop {
                let pair = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if pair >= pairs {
                    break;
                }
                job.head(pair / heads, pair % heads);
            }
        });
        if !ran {
            (0..pairs).for_each(|pair| job.head(pair / heads, pair % heads));
        }
    } else {
        (0..pairs).for_each(|pair| job.head(pair / heads, pair % heads));
    }
    drop((q, bias));
    Some(out)
}

/// Pointers and sizes of one [`decode_attention`] call.
struct Job {
    q: *const f32,
    keys: *const f32,
    values: *const f32,
    bias: *const f32,
    out: *mut f32,
    /// Of keys and values: batch, kv head, position (the last is 1).
    strides: [usize; 3],
    total: usize,
    d: usize,
    heads: usize,
    repeat: usize,
    scale: f32,
}

// SAFETY: the pointers are read, or written at disjoint (batch, head) rows, by the
// threads of one call while `decode_attention` keeps the tensors alive.
unsafe impl Sync for Job {}

/// Lanes summed separately (then added up) so the compiler vectorizes the dot products.
const LANES: usize = 16;

impl Job {
    /// Query head `head` of sequence `b`.
    fn head(&self, b: usize, head: usize) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `decode_attention` found AVX2 and FMA here before making a `Job`.
        unsafe {
            self.head_avx2(b, head);
        }
        #[cfg(not(target_arch = "x86_64"))]
        self.head_body(b, head);
    }

    /// [`Job::head_body`] compiled for AVX2 and FMA (8-lane vectors for the sums).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn head_avx2(&self, b: usize, head: usize) {
        self.head_body(b, head);
    }

    #[inline(always)]
    fn head_body(&self, b: usize, head: usize) {
        let (d, total) = (self.d, self.total);
        let kv = head / self.repeat;
        let base = b * self.strides[0] + kv * self.strides[1];
        // SAFETY: indices within the sizes `decode_attention` checked; this (b, head)
        // row of `out` is written by this call alone.
        let (q, bias, out) = unsafe {
            (
                std::slice::from_raw_parts(self.q.add((b * self.heads + head) * d), d),
                std::slice::from_raw_parts(self.bias.add(b * total), total),
                std::slice::from_raw_parts_mut(self.out.add((b * self.heads + head) * d), d),
            )
        };
        let row = |from: *const f32, t: usize| {
            // SAFETY: position t < total of this (b, kv) head, d contiguous values.
            unsafe { std::slice::from_raw_parts(from.add(base + t * self.strides[2]), d) }
        };
        let mut scores = vec![0f32; total];
        for (t, score) in scores.iter_mut().enumerate() {
            *score = dot(q, row(self.keys, t)) * self.scale + bias[t];
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for score in &mut scores {
            *score = (*score - max).exp();
            sum += *score;
        }
        for weight in &mut scores {
            *weight /= sum;
        }
        // Per 16 output lanes, the sum over positions kept in registers (accumulating in
        // `out` itself would go through memory at every position).
        for (chunk, out) in out.chunks_mut(LANES).enumerate() {
            let lanes = chunk * LANES..chunk * LANES + out.len();
            let mut acc = [0f32; LANES];
            if out.len() == LANES {
                for (t, &p) in scores.iter().enumerate() {
                    let v: &[f32; LANES] = row(self.values, t)[lanes.clone()]
                        .try_into()
                        .expect("a whole chunk");
                    for l in 0..LANES {
                        acc[l] += p * v[l];
                    }
                }
            } else {
                for (t, &p) in scores.iter().enumerate() {
                    for (a, &v) in acc.iter_mut().zip(&row(self.values, t)[lanes.clone()]) {
                        *a += p * v;
                    }
                }
            }
            out.copy_from_slice(&acc[..out.len()]);
        }
    }
}

/// `a · b` in [`LANES`] partial sums.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for l in 0..LANES {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libtorch's rotary embedding as the model computes it (`rotate_half` convention).
    fn torch_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.size()[3] / 2;
        let (x1, x2) = (x.narrow(3, 0, half), x.narrow(3, half, half));
        let rotated = Tensor::cat(&[&(-&x2), &x1], 3);
        x * cos + rotated * sin
    }

    #[test]
    fn rope_is_libtorchs_bit_for_bit() {
        tch::manual_seed(21);
        let options = (Kind::Float, Device::Cpu);
        let (batch, heads, d) = (5i64, 3i64, 16i64);
        let x = Tensor::randn([batch, heads * d], options);
        let angles = Tensor::randn([batch, d], options) * 10.0;
        let (cos, sin) = (angles.cos(), angles.sin());
        let ours = rope(&x, &cos, &sin, d as usize);
        let theirs = torch_rope(
            &x.view([batch, 1, heads, d]).transpose(1, 2),
            &cos.view([batch, 1, 1, d]),
            &sin.view([batch, 1, 1, d]),
        );
        assert!(ours.equal(&theirs.transpose(1, 2).reshape([batch, heads * d])));
    }

    #[test]
    fn decode_attention_matches_libtorchs_within_rounding() {
        if !applies(&[]) {
            return;
        }
        tch::manual_seed(22);
        let options = (Kind::Float, Device::Cpu);
        for (batch, heads, kv, d, total, capacity) in [
            (3i64, 6i64, 2i64, 16i64, 7i64, 9i64),
            (16, 9, 3, 64, 40, 64),
            (1, 4, 4, 40, 1, 1),
        ] {
            let q = Tensor::randn([batch, heads * d], options);
            // Views of the first `total` positions of a larger cache, as the model's are.
            let keys = Tensor::randn([batch, kv, capacity, d], options).narrow(2, 0, total);
            let values = Tensor::randn([batch, kv, capacity, d], options).narrow(2, 0, total);
            // Some positions masked out (padding, the future) as the model's bias does.
            let allowed = Tensor::rand([batch, total], options).gt(0.3);
            let _ = allowed.narrow(1, total - 1, 1).fill_(1);
            let bias = Tensor::zeros([batch, total], options)
                .masked_fill(&allowed.logical_not(), f64::from(f32::MIN));
            let scale = 1.0 / (d as f32).sqrt();
            let ours = decode_attention(&q, &keys, &values, &bias, scale, heads as usize)
                .expect("applies");
            // The model's libtorch path: grouped queries, matmuls, softmax.
            let repeat = heads / kv;
            let grouped = q.view([batch, heads, 1, d]).reshape([batch, kv, repeat, d]);
            let scores = grouped
                .matmul(&keys.transpose(2, 3))
                .view([batch, heads, 1, total])
                * f64::from(scale)
                + bias.view([batch, 1, 1, total]);
            let weights = scores
                .softmax(-1, Kind::Float)
                .view([batch, kv, repeat, total]);
            let theirs = weights.matmul(&values).view([batch, 1, heads * d]);
            let gap = f64::try_from((&ours - &theirs).abs().max()).unwrap();
            assert!(
                gap < 1e-5,
                "batch {batch} heads {heads}/{kv} d {d} total {total}: {gap}"
            );
        }
    }

    #[test]
    fn shapes_it_does_not_take_are_refused() {
        let options = (Kind::Float, Device::Cpu);
        let q = Tensor::randn([2, 8], options);
        let keys = Tensor::randn([2, 1, 3, 4], options);
        let bias = Tensor::zeros([2, 3], options);
        assert!(decode_attention(&q, &keys, &keys, &bias, 0.5, 2).is_some());
        // Heads that do not match q, values of another shape, a bias of another length.
        assert!(decode_attention(&q, &keys, &keys, &bias, 0.5, 3).is_none());
        let other = Tensor::randn([2, 1, 4, 4], options);
        assert!(decode_attention(&q, &keys, &other, &bias, 0.5, 2).is_none());
        let short = Tensor::zeros([2, 2], options);
        assert!(decode_attention(&q, &keys, &keys, &short, 0.5, 2).is_none());
        assert!(!applies(&[&q.to_kind(Kind::Double)]));
        assert!(!applies(&[&q.set_requires_grad(true)]));
    }
}
