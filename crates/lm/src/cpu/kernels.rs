//! `y = x W^T (+ b)` for row-major f32 matrices, with AVX-512 or AVX2 + FMA.
//!
//! Dot-product form: a block of 4 rows of `W` (at most 24 KB for the widths here, so it
//! stays in L1) meets the rows of `x` in turn, `R` rows at a time, with `4 R` vector
//! accumulators; no packing, so `W` is read from memory once per call when `x` is a few
//! rows, which is what decoding (weights far larger than the caches) is bound by. Many
//! rows of `x` (prefill, scoring) go in blocks that fit L2, each meeting a range of `W`
//! that fits L2 too.

/// One product: `y[m, n] = sum_k x[m, k] w[n, k] + bias[n]`, all contiguous row-major.
#[derive(Clone, Copy)]
pub(super) struct Problem {
    pub x: *const f32,
    pub w: *const f32,
    /// `n` values, or null.
    pub bias: *const f32,
    pub y: *mut f32,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

// SAFETY: the pointers are only read (x, w, bias) or written at disjoint rows (y) by
// the threads a product is shared between, while the caller keeps the tensors alive.
unsafe impl Send for Problem {}
// SAFETY: as above.
unsafe impl Sync for Problem {}

/// Instruction sets with a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// 16 lanes, 32 registers: tiles of 4 x 4 rows.
    Avx512,
    /// 8 lanes, 16 registers: tiles of 4 x 2 rows.
    Avx2,
}

impl Isa {
    /// The best this CPU has, if any.
    pub(crate) fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Some(Self::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Some(Self::Avx2);
            }
        }
        None
    }

    /// Computes rows `[begin, end)` of `W` (columns of `y`) for every row of `x`.
    ///
    /// # Safety
    /// The CPU supports this instruction set (it came from [`Isa::detect`]), the
    /// problem's pointers are valid for its sizes, and no other thread writes the same
    /// columns of `y`.
    pub(super) unsafe fn run(self, problem: &Problem, begin: usize, end: usize) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller.
        unsafe {
            match self {
                Self::Avx512 => avx512::rows(problem, begin, end),
                Self::Avx2 => avx2::rows(problem, begin, end),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (problem, begin, end);
    }
}

/// Bytes of `x` (and, separately, of `W`) that one thread keeps hot while the other
/// streams past: a quarter of a typical 1 MB L2.
pub(super) const L2_SHARE: usize = 256 * 1024;

/// Rows of `x` per block: as many as fit [`L2_SHARE`], in whole tiles.
pub(super) fn x_block_rows(k: usize) -> usize {
    (L2_SHARE / (4 * k.max(1))).max(4) / 4 * 4
}

/// The shared body of both kernels; each module supplies `V`, `LANES`, `MAX_ROWS`,
/// `zero`, `load`, `load_partial`, `fma` and `sum4` for its instruction set.
#[cfg(target_arch = "x86_64")]
macro_rules! dot_kernel {
    ($features:literal) => {
        /// See [`super::Isa::run`].
        #[target_feature(enable = $features)]
        pub(super) unsafe fn rows(p: &super::Problem, begin: usize, end: usize) {
            // Rows of x in blocks that stay in L2 while this range of W passes by.
            let x_block = super::x_block_rows(p.k);
            let mut block = 0;
            while block < p.m {
                let block_end = (block + x_block).min(p.m);
                let mut n = begin;
                while n < end {
                    let valid = (end - n).min(4);
                    // A short last block repeats its last row; only valid columns are
                    // stored.
                    // SAFETY: rows n..n + valid exist in W.
                    let w = |j: usize| unsafe { p.w.add((n + j.min(valid - 1)) * p.k) };
                    let rows_w = [w(0), w(1), w(2), w(3)];
                    let mut i = block;
                    while i < block_end {
                        let rows = (block_end - i).min(MAX_ROWS);
                        // SAFETY: forwarded from the caller; rows i.. of x and y exist.
                        unsafe {
                            match rows {
                                4 => tile::<4>(p, &rows_w, i, n, valid),
                                3 => tile::<3>(p, &rows_w, i, n, valid),
                                2 => tile::<2>(p, &rows_w, i, n, valid),
                                _ => tile::<1>(p, &rows_w, i, n, valid),
                            }
                        }
                        i += rows;
                    }
                    n += 4;
                }
                block = block_end;
            }
        }

        /// Rows `i..i + R` of `x` against the 4 rows of `W` at `w`: `y[i.., n..n + valid]`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn tile<const R: usize>(
            p: &super::Problem,
            w: &[*const f32; 4],
            i: usize,
            n: usize,
            valid: usize,
        ) {
            let k = p.k;
            let mut acc = [[zero(); 4]; R];
            // SAFETY (whole block): every load reads inside row r of x or row j of W,
            // both `k` long; `load_partial` reads only the first `k - kk` lanes.
            unsafe {
                let x = p.x.add(i * k);
                let mut kk = 0;
                while kk + LANES <= k {
                    let wv = [
                        load(w[0].add(kk)),
                        load(w[1].add(kk)),
                        load(w[2].add(kk)),
                        load(w[3].add(kk)),
                    ];
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let xv = load(x.add(r * k + kk));
                        for j in 0..4 {
                            acc[j] = fma(xv, wv[j], acc[j]);
                        }
                    }
                    kk += LANES;
                }
                if kk < k {
                    let rest = k - kk;
                    let wv = [
                        load_partial(w[0].add(kk), rest),
                        load_partial(w[1].add(kk), rest),
                        load_partial(w[2].add(kk), rest),
                        load_partial(w[3].add(kk), rest),
                    ];
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let xv = load_partial(x.add(r * k + kk), rest);
                        for j in 0..4 {
                            acc[j] = fma(xv, wv[j], acc[j]);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    let sums = sum4(acc[0], acc[1], acc[2], acc[3]);
                    let y = p.y.add((i + r) * p.n + n);
                    for (j, &sum) in sums.iter().enumerate().take(valid) {
                        let bias = if p.bias.is_null() {
                            0.0
                        } else {
                            *p.bias.add(n + j)
                        };
                        *y.add(j) = sum + bias;
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    type V = __m512;
    const LANES: usize = 16;
    const MAX_ROWS: usize = 4;

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn zero() -> V {
        _mm512_setzero_ps()
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load(p: *const f32) -> V {
        // SAFETY: the caller's pointer has 16 readable floats.
        unsafe { _mm512_loadu_ps(p) }
    }

    /// The first `count` (< 16) floats at `p`, zeros after; reads nothing beyond.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load_partial(p: *const f32, count: usize) -> V {
        // SAFETY: masked-off lanes are not read.
        unsafe { _mm512_maskz_loadu_ps(((1u32 << count) - 1) as u16, p) }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn fma(a: V, b: V, c: V) -> V {
        _mm512_fmadd_ps(a, b, c)
    }

    /// The lane sums of four vectors.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn sum4(a: V, b: V, c: V, d: V) -> [f32; 4] {
        let half = |v: V| {
            _mm256_add_ps(
                _mm512_castps512_ps256(v),
                _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)),
            )
        };
        let abcd = _mm256_hadd_ps(
            _mm256_hadd_ps(half(a), half(b)),
            _mm256_hadd_ps(half(c), half(d)),
        );
        let sums = _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
        let mut out = [0.0f32; 4];
        // SAFETY: `out` holds 4 floats.
        unsafe { _mm_storeu_ps(out.as_mut_ptr(), sums) };
        out
    }

    dot_kernel!("avx512f");
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    type V = __m256;
    const LANES: usize = 8;
    // 4 x 2 accumulators, 4 rows of W and one of x fit the 16 registers.
    const MAX_ROWS: usize = 2;

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn zero() -> V {
        _mm256_setzero_ps()
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load(p: *const f32) -> V {
        // SAFETY: the caller's pointer has 8 readable floats.
        unsafe { _mm256_loadu_ps(p) }
    }

    /// The first `count` (< 8) floats at `p`, zeros after; reads nothing beyond.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_partial(p: *const f32, count: usize) -> V {
        let mask = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(count as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        // SAFETY: masked-off lanes are not read.
        unsafe { _mm256_maskload_ps(p, mask) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn fma(a: V, b: V, c: V) -> V {
        _mm256_fmadd_ps(a, b, c)
    }

    /// The lane sums of four vectors.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn sum4(a: V, b: V, c: V, d: V) -> [f32; 4] {
        let abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
        let sums = _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
        let mut out = [0.0f32; 4];
        // SAFETY: `out` holds 4 floats.
        unsafe { _mm_storeu_ps(out.as_mut_ptr(), sums) };
        out
    }

    dot_kernel!("avx2,fma");
}
