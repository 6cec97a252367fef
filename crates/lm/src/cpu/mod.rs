//! Linear layers on the CPU without libtorch's BLAS.
//!
//! libtorch's x86 wheels multiply f32 matrices with MKL, which on AMD processors takes a
//! generic code path (`mkl_blas_def_*` in a profile) and, for more than one row of
//! input, first copies the whole weight matrix into a packed buffer. Decoding is a few
//! rows of input against weights much larger than the caches, so that copy doubles
//! the memory traffic that bounds it. [`linear`] computes `x W^T + b` with this crate's
//! AVX-512 or AVX2 kernel instead, run on libtorch's own OpenMP threads, whenever the
//! inputs allow: CPU, f32, no gradient wanted, a contiguous weight. Otherwise, on other
//! processors, or with `LM_CPU_LINEAR=libtorch`, it is libtorch's `linear`.
//!
//! Each output is one thread's fixed-order sum, so results do not depend on the thread
//! count; they differ from MKL's in rounding only (about 1e-6 relative).
//!
//! ```
//! use tch::{Device, Kind, Tensor};
//!
//! let x = Tensor::randn([3, 40], (Kind::Float, Device::Cpu));
//! let w = Tensor::randn([7, 40], (Kind::Float, Device::Cpu));
//! let b = Tensor::randn([7], (Kind::Float, Device::Cpu));
//! let ours = lm::cpu::linear(&x, &w, Some(&b));
//! let torch = x.linear(&w, Some(&b));
//! assert!(f64::try_from((ours - torch).abs().max()).unwrap() < 1e-4);
//! ```

pub(crate) mod attention;
mod kernels;
mod packed;
mod team;

pub use packed::{PackFormat, PackedMatrix};

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tch::{Device, Kind, Tensor};

use kernels::{Isa, Problem};

/// Below this many multiply-adds (weights read counted as four each), a product runs
/// on the calling thread: handing it out would cost more than it saves.
const PARALLEL_MIN_WORK: usize = 1 << 17;
/// Columns of `y` per piece of shared work, at least (a multiple of 4).
const MIN_CHUNK: usize = 16;

/// `x W^T + b` (`x`: `[.., k]`, `weight`: `[n, k]`, `bias`: `[n]`), as libtorch's
/// `linear`, computed by this crate's kernel when it applies (see the module docs).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    match enabled_isa().and_then(|isa| fast_linear(isa, x, weight, bias)) {
        Some(y) => y,
        None => x.linear(weight, bias),
    }
}

/// Environment variable that turns the kernels off (`LM_CPU_LINEAR=libtorch`): every
/// product, and a decoding step's attention, is then libtorch's, for comparisons and for
/// reproducing numbers measured with it. `LM_CPU_LINEAR=unpacked` keeps the f32 kernel but loads no packed blocks
/// ([`packing_enabled`]).
pub const SWITCH_ENV: &str = "LM_CPU_LINEAR";

/// Whether models loaded from GGUF blocks on the CPU keep those blocks for
/// [`packed_linear`]: a kernel here and [`SWITCH_ENV`] neither `libtorch` nor
/// `unpacked`.
pub fn packing_enabled() -> bool {
    enabled_isa().is_some()
        && !std::env::var(SWITCH_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("unpacked"))
}

/// The instruction set the kernels use: `None` on other processors or when switched off
/// by [`SWITCH_ENV`].
fn enabled_isa() -> Option<Isa> {
    static ISA: OnceLock<Option<Isa>> = OnceLock::new();
    *ISA.get_or_init(|| if switched_off() { None } else { Isa::detect() })
}

fn switched_off() -> bool {
    std::env::var(SWITCH_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("libtorch"))
}

/// What [`linear`] runs on here, in words (for reports such as `lm runtime`).
pub fn kernel_description() -> String {
    match (Isa::detect(), switched_off()) {
        (_, true) => format!("libtorch's linear ({SWITCH_ENV}=libtorch)"),
        (None, _) => "libtorch's linear (no AVX-512 or AVX2 + FMA here)".to_owned(),
        (Some(_), _) if !kernel_available() => {
            "libtorch's linear (no OpenMP runtime to share the kernel)".to_owned()
        }
        (Some(isa), _) => format!(
            "lm kernel, {}, on libtorch's OpenMP threads; {}",
            match isa {
                Isa::Avx512 => "AVX-512",
                Isa::Avx2 => "AVX2 + FMA",
            },
            if packing_enabled() {
                "GGUF Q4_0 / Q4_1 / Q8_0 weights read from their blocks"
            } else {
                "no packed GGUF blocks (LM_CPU_LINEAR=unpacked)"
            }
        ),
    }
}

/// Whether [`linear`] has a kernel on this processor and can share it between
/// libtorch's threads (else it is libtorch's `linear`).
pub fn kernel_available() -> bool {
    enabled_isa().is_some() && (tch::get_num_threads() <= 1 || team::available())
}

/// Whether `tensor` takes part in the kernel's path: a CPU f32 tensor that autograd
/// need not see.
fn plain_f32(tensor: &Tensor) -> bool {
    tensor.device() == Device::Cpu && tensor.kind() == Kind::Float && !tensor.requires_grad()
}

/// The kernel's result, or `None` where the inputs are outside what it handles.
pub(crate) fn fast_linear(
    isa: Isa,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Option<Tensor> {
    if !plain_f32(weight) {
        return None;
    }
    let &[n, k] = weight.size().as_slice() else {
        return None;
    };
    // A strided weight would need a copy of the whole matrix per call: leave it.
    if !weight.is_contiguous() {
        return None;
    }
    let w = weight.data_ptr().cast::<f32>().cast_const();
    product(x, n, k, bias, w, &|problem, begin, end| {
        // SAFETY: `isa` was detected on this CPU; `product` keeps the tensors alive and
        // contiguous with the problem's sizes and gives each range to one thread.
        unsafe { isa.run(problem, begin, end) }
    })
}

/// `x W^T + b` for a `W` kept in its checkpoint's blocks (see [`PackedMatrix`]): the
/// same bits as [`linear`] on the f32 weights the blocks decode to. `None` where the
/// kernel does not apply (no AVX-512 or AVX2 here, [`SWITCH_ENV`] set, `x` not a CPU f32
/// tensor without gradient, or shapes that do not match).
pub fn packed_linear(x: &Tensor, weight: &PackedMatrix, bias: Option<&Tensor>) -> Option<Tensor> {
    let isa = enabled_isa()?;
    let blocks = weight.blocks();
    let (n, k) = (weight.rows as i64, weight.cols as i64);
    product(x, n, k, bias, std::ptr::null(), &|problem, begin, end| {
        // SAFETY: as in `fast_linear`; `blocks` holds `n` rows of `k` values.
        unsafe { isa.run_packed(problem, &blocks, begin, end) }
    })
}

/// Checks the inputs of `x W^T + b` (`W`: `[n, k]`, at `w` or packed), allocates `y`
/// and runs `kernel` over column ranges of `y`, shared between libtorch's threads when
/// the product is large enough. `None` where the inputs are outside what the kernels
/// handle.
fn product(
    x: &Tensor,
    n: i64,
    k: i64,
    bias: Option<&Tensor>,
    w: *const f32,
    kernel: &(dyn Fn(&Problem, usize, usize) + Sync),
) -> Option<Tensor> {
    if !(plain_f32(x) && bias.is_none_or(plain_f32)) {
        return None;
    }
    let &x_k = x.size().last()?;
    if x_k != k || n == 0 || k == 0 {
        return None;
    }
    let bias = match bias {
        Some(b) if b.size() != [n] => return None,
        Some(b) => Some(b.contiguous()),
        None => None,
    };
    let x = x.contiguous();
    let mut out_shape = x.size();
    *out_shape.last_mut()? = n;
    let y = Tensor::empty(out_shape.as_slice(), (Kind::Float, Device::Cpu));
    let (n, k) = (n as usize, k as usize);
    let m = x.numel() / k;
    if m == 0 {
        return Some(y);
    }
    let problem = Problem {
        x: x.data_ptr().cast::<f32>().cast_const(),
        w,
        bias: bias.as_ref().map_or(std::ptr::null(), |b| {
            b.data_ptr().cast::<f32>().cast_const()
        }),
        y: y.data_ptr().cast::<f32>(),
        m,
        n,
        k,
    };
    let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1);
    let shared = threads > 1 && n * k * (m + 4) >= PARALLEL_MIN_WORK;
    if !shared {
        kernel(&problem, 0, n);
        return Some(y);
    }
    // About 8 pieces per thread, so a thread that loses its core for a moment is caught
    // up by the others; with many rows of x, pieces of W small enough to stay in L2
    // while the blocks of x pass (see `kernels`).
    let mut chunk = (n / (8 * threads)).next_multiple_of(4).max(MIN_CHUNK);
    if m > kernels::x_block_rows(k) {
        chunk = chunk.min((kernels::L2_SHARE / (4 * k)).max(MIN_CHUNK) / 4 * 4);
    }
    let chunks = n.div_ceil(chunk);
    let next = AtomicUsize::new(0);
    let ran = team::broadcast(threads, &|| {
        loop {
            let piece = next.fetch_add(1, Ordering::Relaxed);
            if piece >= chunks {
                break;
            }
            let begin = piece * chunk;
            // Pieces are disjoint column ranges of `y`, each taken by exactly one thread.
            kernel(&problem, begin, (begin + chunk).min(n));
        }
    });
    // Without an OpenMP runtime to share the work, libtorch's own threads do better.
    ran.then_some(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn isas() -> Vec<Isa> {
        let mut isas = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                isas.push(Isa::Avx2);
            }
        }
        isas
    }

    fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
        f64::try_from((a - b).abs().max()).expect("scalar")
    }

    #[test]
    fn matches_libtorch_on_every_tail_of_rows_columns_and_width() {
        tch::manual_seed(3);
        let options = (Kind::Float, Device::Cpu);
        for isa in isas() {
            for k in [1i64, 5, 8, 15, 16, 17, 33, 64, 100] {
                for n in [1i64, 3, 4, 5, 9, 16] {
                    for m in [1i64, 2, 3, 4, 5, 7, 9] {
                        let x = Tensor::randn([m, k], options);
                        let w = Tensor::randn([n, k], options);
                        let b = Tensor::randn([n], options);
                        let expected = x.linear(&w, Some(&b));
                        let ours = fast_linear(isa, &x, &w, Some(&b)).expect("applies");
                        assert!(
                            max_difference(&ours, &expected) < 1e-4,
                            "{isa:?} m {m} n {n} k {k}"
                        );
                        let ours = fast_linear(isa, &x, &w, None).expect("applies");
                        assert!(max_difference(&ours, &x.linear(&w, None::<&Tensor>)) < 1e-4);
                    }
                }
            }
        }
    }

    #[test]
    fn batched_strided_and_shared_out_products_match_libtorch() {
        tch::manual_seed(5);
        let options = (Kind::Float, Device::Cpu);
        // Large enough to be shared between threads, with a ragged last piece.
        let w = Tensor::randn([1030, 96], options);
        let x = Tensor::randn([2, 3, 96], options);
        // A transposed view: made contiguous before the kernel reads it.
        let strided = Tensor::randn([96, 6], options).transpose(0, 1);
        // Rows of x in several L2 blocks (32 rows each at this width), the last ragged.
        let wide_w = Tensor::randn([37, 2048], options);
        let tall_x = Tensor::randn([70, 2048], options);
        assert_eq!(kernels::x_block_rows(2048), 32);
        for isa in isas() {
            let ours = fast_linear(isa, &tall_x, &wide_w, None).expect("applies");
            let expected = tall_x.linear(&wide_w, None::<&Tensor>);
            assert!(max_difference(&ours, &expected) < 1e-3);
            let ours = fast_linear(isa, &x, &w, None).expect("applies");
            assert_eq!(ours.size(), [2, 3, 1030]);
            assert!(max_difference(&ours, &x.linear(&w, None::<&Tensor>)) < 1e-4);
            let ours = fast_linear(isa, &strided, &w, None).expect("applies");
            assert!(max_difference(&ours, &strided.linear(&w, None::<&Tensor>)) < 1e-4);
        }
    }

    /// Random blocks of `format` for a `[rows, cols]` matrix (finite f16 scales of
    /// either sign, every code value), and the f32 values `bitnet-dequant` decodes them to.
    fn random_blocks(format: PackFormat, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Tensor) {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let blocks = rows * cols / 32;
        let mut bytes = Vec::with_capacity(blocks * format.block_bytes());
        for _ in 0..blocks {
            let halves = if format == PackFormat::Q4_1 { 2 } else { 1 };
            for _ in 0..halves {
                let value = ((next() % 2001) as f32 - 1000.0) / 20_000.0;
                bytes.extend_from_slice(&half::f16::from_f32(value).to_le_bytes());
            }
            let codes = if format == PackFormat::Q8_0 { 32 } else { 16 };
            bytes.extend((0..codes).map(|_| next() as u8));
        }
        let kind = match format {
            PackFormat::Q4_0 => bitnet_dequant::quants::QuantType::Q4_0,
            PackFormat::Q4_1 => bitnet_dequant::quants::QuantType::Q4_1,
            PackFormat::Q8_0 => bitnet_dequant::quants::QuantType::Q8_0,
        };
        let mut values = vec![0f32; rows * cols];
        bitnet_dequant::quants::dequantize(kind, &bytes, &mut values).expect("decodes");
        let weight = Tensor::from_slice(&values).view([rows as i64, cols as i64]);
        (bytes, weight)
    }

    #[test]
    fn packed_products_are_the_f32_products_bit_for_bit() {
        tch::manual_seed(13);
        let options = (Kind::Float, Device::Cpu);
        let before = tch::get_num_threads();
        let mut compared = 0;
        for threads in [1, 2] {
            tch::set_num_threads(threads);
            for format in [PackFormat::Q4_0, PackFormat::Q4_1, PackFormat::Q8_0] {
                for (n, k) in [(1usize, 32usize), (5, 64), (9, 96), (1030, 576), (37, 2048)] {
                    let (bytes, weight) = random_blocks(format, n, k, (n * k) as u64);
                    let packed = PackedMatrix::new(format, n, k, bytes).expect("whole blocks");
                    assert!(packed.decodes_to(&weight) || enabled_isa().is_none());
                    for m in [1i64, 2, 3, 5, 16, 130] {
                        let x = Tensor::randn([m, k as i64], options);
                        let b = Tensor::randn([n as i64], options);
                        for bias in [None, Some(&b)] {
                            if let (Some(ours), Some(f32s)) = (
                                packed_linear(&x, &packed, bias),
                                enabled_isa().and_then(|isa| fast_linear(isa, &x, &weight, bias)),
                            ) {
                                assert!(ours.equal(&f32s), "{format:?} m {m} n {n} k {k}");
                                compared += 1;
                            }
                            // Every instruction set this processor has, not just the best.
                            for isa in isas() {
                                let blocks = packed.blocks();
                                let ours = product(
                                    &x,
                                    n as i64,
                                    k as i64,
                                    bias,
                                    std::ptr::null(),
                                    &|p, b, e| unsafe { isa.run_packed(p, &blocks, b, e) },
                                );
                                let f32s = fast_linear(isa, &x, &weight, bias);
                                assert!(ours.expect("runs").equal(&f32s.expect("runs")), "{isa:?}");
                            }
                        }
                    }
                }
            }
        }
        tch::set_num_threads(before);
        assert!(compared == 2 * 3 * 5 * 6 * 2 || enabled_isa().is_none());
    }

    #[test]
    fn packed_matrices_check_their_shape_and_what_they_decode_to() {
        let (bytes, weight) = random_blocks(PackFormat::Q4_1, 4, 64, 1);
        assert!(PackedMatrix::new(PackFormat::Q4_1, 4, 60, bytes.clone()).is_err());
        assert!(PackedMatrix::new(PackFormat::Q4_1, 5, 64, bytes.clone()).is_err());
        assert!(PackedMatrix::new(PackFormat::Q8_0, 4, 64, bytes.clone()).is_err());
        if enabled_isa().is_none() {
            return;
        }
        let packed = PackedMatrix::new(PackFormat::Q4_1, 4, 64, bytes.clone()).expect("fits");
        assert!(packed.decodes_to(&weight));
        for isa in isas() {
            let mut decoded = vec![0f32; 4 * 64];
            // SAFETY: detected here; rows 0..4 exist.
            unsafe { isa.decode_rows(&packed.blocks(), 0, 4, &mut decoded) };
            assert!(
                Tensor::from_slice(&decoded).view([4, 64]).equal(&weight),
                "{isa:?}"
            );
        }
        // One code changed: the blocks no longer decode to these weights.
        let mut changed = bytes;
        changed[20 + 7] ^= 0x10;
        let changed = PackedMatrix::new(PackFormat::Q4_1, 4, 64, changed).expect("fits");
        assert!(!changed.decodes_to(&weight));
        assert!(!packed.decodes_to(&weight.transpose(0, 1)));
        assert!(!packed.decodes_to(&weight.to_kind(Kind::Double)));
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        tch::manual_seed(9);
        let options = (Kind::Float, Device::Cpu);
        let w = Tensor::randn([2048, 256], options);
        let x = Tensor::randn([5, 256], options);
        let before = tch::get_num_threads();
        tch::set_num_threads(1);
        let alone = linear(&x, &w, None);
        tch::set_num_threads(2);
        let shared = linear(&x, &w, None);
        tch::set_num_threads(before);
        if kernel_available() {
            assert!(alone.equal(&shared));
        }
    }

    #[test]
    fn concurrent_callers_each_get_their_own_exact_result() {
        tch::manual_seed(11);
        let options = (Kind::Float, Device::Cpu);
        let w = Tensor::randn([700, 320], options);
        let inputs: Vec<Tensor> = (0..4).map(|_| Tensor::randn([6, 320], options)).collect();
        let expected: Vec<Tensor> = inputs.iter().map(|x| linear(x, &w, None)).collect();
        // Tensors are `Send`, not `Sync`: each thread owns shallow clones (same storage).
        let callers: Vec<_> = inputs
            .into_iter()
            .zip(expected)
            .map(|(x, want)| {
                let w = w.shallow_clone();
                std::thread::spawn(move || (0..50).all(|_| linear(&x, &w, None).equal(&want)))
            })
            .collect();
        for caller in callers {
            assert!(caller.join().expect("caller"));
        }
    }

    #[test]
    fn falls_back_to_libtorch_where_the_kernel_does_not_apply() {
        let options = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([2, 8], options);
        let w = Tensor::randn([4, 8], options);
        let wants_grad = Tensor::randn([2, 8], options).set_requires_grad(true);
        for isa in isas() {
            // Gradients wanted, another element type, a strided weight, mismatched sizes.
            assert!(fast_linear(isa, &wants_grad, &w, None).is_none());
            assert!(fast_linear(isa, &x.to_kind(Kind::Double), &w, None).is_none());
            let strided = Tensor::randn([8, 4], options).transpose(0, 1);
            assert!(fast_linear(isa, &x, &strided, None).is_none());
            assert!(fast_linear(isa, &x, &Tensor::randn([4, 7], options), None).is_none());
            assert!(fast_linear(isa, &x, &w, Some(&Tensor::randn([3], options))).is_none());
        }
        // The public function still computes them, through libtorch, with gradients.
        let y = linear(&wants_grad, &w, None);
        assert!(y.requires_grad());
        y.sum(Kind::Float).backward();
        let expected = w
            .sum_dim_intlist(0, true, Kind::Float)
            .expand([2, 8], false);
        assert!(max_difference(&wants_grad.grad(), &expected) < 1e-5);
    }
}
