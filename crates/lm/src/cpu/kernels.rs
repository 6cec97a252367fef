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
            // F16C widens the blocks' f16 scales; every AVX2 processor has it.
            let f16c = std::arch::is_x86_feature_detected!("f16c");
            if std::arch::is_x86_feature_detected!("avx512f") && f16c {
                return Some(Self::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && f16c
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

    /// [`Isa::run`] with `W` in `packed` blocks instead of `problem.w`: each 4-row tile
    /// of `W` is decoded into an L1 buffer (the same values as the f32 weights, bit for
    /// bit) and meets the rows of `x` exactly as [`Isa::run`]'s tiles do, so the results
    /// are the same bits as the f32 product's.
    ///
    /// # Safety
    /// As [`Isa::run`]; `packed` has `problem.n` rows of `problem.k` values.
    pub(super) unsafe fn run_packed(
        self,
        problem: &Problem,
        packed: &Blocks<'_>,
        begin: usize,
        end: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller.
        unsafe {
            match self {
                Self::Avx512 => avx512::packed_rows(problem, packed, begin, end),
                Self::Avx2 => avx2::packed_rows(problem, packed, begin, end),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (problem, packed, begin, end);
    }

    /// Decodes rows `[begin, end)` of `packed` into `out` (`(end - begin) * k` values),
    /// with the decoder the packed kernel uses.
    ///
    /// # Safety
    /// The CPU supports this instruction set and `begin <= end <= ` the rows of `packed`.
    pub(super) unsafe fn decode_rows(
        self,
        packed: &Blocks<'_>,
        begin: usize,
        end: usize,
        out: &mut [f32],
    ) {
        assert!(out.len() >= (end - begin) * packed.k);
        for row in begin..end {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: forwarded from the caller; `out` holds the row (asserted above).
            unsafe {
                let at = out.as_mut_ptr().add((row - begin) * packed.k);
                match self {
                    Self::Avx512 => avx512::decode_row(packed, row, at),
                    Self::Avx2 => avx2::decode_row(packed, row, at),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (row, &out);
        }
    }
}

/// The block layouts the packed kernel reads (llama.cpp's; see `bitnet_dequant::quants`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockKind {
    /// 18 bytes: f16 `d`, 16 bytes of 4-bit codes; `d * (q - 8)`.
    Q4_0,
    /// 20 bytes: f16 `d`, f16 `m`, 16 bytes of 4-bit codes; `d * q + m` (unfused).
    Q4_1,
    /// 34 bytes: f16 `d`, 32 signed bytes; `q * d`.
    Q8_0,
}

impl BlockKind {
    pub(crate) const ELEMENTS: usize = 32;

    pub(crate) fn bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

/// A row-major matrix of `k`-wide rows stored as 32-element blocks, rows in order.
#[derive(Clone, Copy)]
pub(crate) struct Blocks<'a> {
    pub kind: BlockKind,
    pub bytes: &'a [u8],
    /// Values per row, a multiple of 32.
    pub k: usize,
}

/// How far ahead of the tile being decoded the packed kernel prefetches, in rows of W.
const PREFETCH_ROWS: usize = 8;

impl Blocks<'_> {
    fn row_bytes(&self) -> usize {
        self.k / BlockKind::ELEMENTS * self.kind.bytes()
    }

    /// Asks for rows `[begin, end)` (when they exist) to be brought into the caches.
    fn prefetch_rows(&self, begin: usize, end: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let row_bytes = self.row_bytes();
            let range =
                (begin * row_bytes).min(self.bytes.len())..(end * row_bytes).min(self.bytes.len());
            for at in range.step_by(64) {
                // SAFETY: a prefetch of an address inside `bytes`; it reads nothing.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(self.bytes.as_ptr().add(at).cast()) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (begin, end);
    }

    /// The first byte of `row`'s blocks.
    fn row(&self, row: usize) -> *const u8 {
        let row_bytes = self.row_bytes();
        assert!(
            (row + 1) * row_bytes <= self.bytes.len(),
            "row {row} is outside the blocks"
        );
        // SAFETY: inside `bytes` (asserted above).
        unsafe { self.bytes.as_ptr().add(row * row_bytes) }
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
            // SAFETY: forwarded from the caller; rows n..n + valid exist in W.
            unsafe {
                rows_from(p, begin, end, &mut |n, valid| {
                    let w = |j: usize| p.w.add((n + j.min(valid - 1)) * p.k);
                    [w(0), w(1), w(2), w(3)]
                })
            }
        }

        /// See [`super::Isa::run_packed`].
        #[target_feature(enable = $features)]
        pub(super) unsafe fn packed_rows(
            p: &super::Problem,
            packed: &super::Blocks<'_>,
            begin: usize,
            end: usize,
        ) {
            // Four decoded rows of W: 24 KB at the widest layer here, in L1 while the
            // rows of x pass.
            // Rows start on 64-byte lines (k is a multiple of 32 values), so no vector
            // load of the tile straddles two cache lines.
            let mut tile = vec![0f32; 4 * p.k + 16];
            let offset = tile.as_ptr().align_offset(64).min(16);
            let at = tile[offset..].as_mut_ptr();
            // SAFETY: forwarded from the caller; row j of the tile is `k` values at
            // `at + j k`, written by `decode_row` before the tile reads it.
            unsafe {
                rows_from(p, begin, end, &mut |n, valid| {
                    // The blocks of a tile ahead start coming from memory while this
                    // one is multiplied.
                    packed.prefetch_rows(
                        n + super::PREFETCH_ROWS,
                        (n + super::PREFETCH_ROWS + 4).min(end),
                    );
                    for j in 0..valid {
                        decode_row(packed, n + j, at.add(j * p.k));
                    }
                    let w = |j: usize| at.add(j.min(valid - 1) * p.k).cast_const();
                    [w(0), w(1), w(2), w(3)]
                })
            }
        }

        /// The loops of [`rows`] with `W`'s rows `n..n + valid` (a short last tile repeats
        /// its last row) supplied by `w_tile`.
        #[target_feature(enable = $features)]
        unsafe fn rows_from(
            p: &super::Problem,
            begin: usize,
            end: usize,
            w_tile: &mut dyn FnMut(usize, usize) -> [*const f32; 4],
        ) {
            // Rows of x in blocks that stay in L2 while this range of W passes by.
            let x_block = super::x_block_rows(p.k);
            let mut block = 0;
            while block < p.m {
                let block_end = (block + x_block).min(p.m);
                let mut n = begin;
                while n < end {
                    let valid = (end - n).min(4);
                    // Only valid columns are stored.
                    let rows_w = w_tile(n, valid);
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

    /// The f16 pair at `p` (scale, then offset for Q4_1), widened: lanes 0 and 1.
    #[target_feature(enable = "avx512f,f16c")]
    #[inline]
    unsafe fn halves(p: *const u8) -> __m128 {
        // SAFETY: the caller's block starts with 4 readable bytes (Q4_1) or 2 (the
        // others: lane 1, from the first code bytes, is then unused).
        unsafe { _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned())) }
    }

    /// Decodes one row of `packed` into the 16-aligned-or-not `out` (`k` values), the
    /// same arithmetic as `bitnet_dequant::quants` (one rounding per operation, unfused).
    #[target_feature(enable = "avx512f,f16c")]
    pub(super) unsafe fn decode_row(packed: &super::Blocks<'_>, row: usize, out: *mut f32) {
        use super::BlockKind;
        let mut block = packed.row(row);
        let step = packed.kind.bytes();
        let low_nibbles = _mm512_set1_epi32(0x0F);
        // SAFETY: `row` has k / 32 blocks of `step` bytes; `out` has k values.
        unsafe {
            for b in 0..packed.k / BlockKind::ELEMENTS {
                let y = out.add(b * BlockKind::ELEMENTS);
                let scales = halves(block);
                let d = _mm512_broadcastss_ps(scales);
                match packed.kind {
                    BlockKind::Q4_0 | BlockKind::Q4_1 => {
                        // The block's 16 possible values, each computed as the decoder
                        // computes it, then looked up by code: one permute per 16
                        // weights instead of a conversion, a multiply and an add.
                        let codes = _mm512_set_ps(
                            15.0, 14.0, 13.0, 12.0, 11.0, 10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0,
                            2.0, 1.0, 0.0,
                        );
                        let (table, codes_at) = if packed.kind == BlockKind::Q4_1 {
                            let m = _mm512_broadcastss_ps(_mm_movehdup_ps(scales));
                            (_mm512_add_ps(_mm512_mul_ps(d, codes), m), 4)
                        } else {
                            let centred = _mm512_sub_ps(codes, _mm512_set1_ps(8.0));
                            (_mm512_mul_ps(d, centred), 2)
                        };
                        let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                            block.add(codes_at).cast::<__m128i>(),
                        ));
                        let low = _mm512_and_si512(bytes, low_nibbles);
                        let high = _mm512_srli_epi32(bytes, 4);
                        _mm512_storeu_ps(y, _mm512_permutexvar_ps(low, table));
                        _mm512_storeu_ps(y.add(16), _mm512_permutexvar_ps(high, table));
                    }
                    BlockKind::Q8_0 => {
                        for half in 0..2 {
                            let codes = _mm512_cvtepi8_epi32(_mm_loadu_si128(
                                block.add(2 + 16 * half).cast::<__m128i>(),
                            ));
                            _mm512_storeu_ps(
                                y.add(16 * half),
                                _mm512_mul_ps(_mm512_cvtepi32_ps(codes), d),
                            );
                        }
                    }
                }
                block = block.add(step);
            }
        }
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

    /// The f16 pair at `p` (scale, then offset for Q4_1), widened: lanes 0 and 1.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn halves(p: *const u8) -> __m128 {
        // SAFETY: as in the AVX-512 module.
        unsafe { _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned())) }
    }

    /// See the AVX-512 module's `decode_row`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn decode_row(packed: &super::Blocks<'_>, row: usize, out: *mut f32) {
        use super::BlockKind;
        let mut block = packed.row(row);
        let step = packed.kind.bytes();
        let low_nibbles = _mm256_set1_epi32(0x0F);
        // SAFETY: as in the AVX-512 module.
        unsafe {
            for b in 0..packed.k / BlockKind::ELEMENTS {
                let y = out.add(b * BlockKind::ELEMENTS);
                let scales = halves(block);
                let d = _mm256_broadcastss_ps(scales);
                match packed.kind {
                    BlockKind::Q4_0 | BlockKind::Q4_1 => {
                        let codes_at = if packed.kind == BlockKind::Q4_1 { 4 } else { 2 };
                        let m = _mm256_broadcastss_ps(_mm_movehdup_ps(scales));
                        let eight = _mm256_set1_epi32(8);
                        let value = |q: __m256i| {
                            if packed.kind == BlockKind::Q4_1 {
                                _mm256_add_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(q)), m)
                            } else {
                                _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(q, eight)))
                            }
                        };
                        for half in 0..2 {
                            let codes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                block.add(codes_at + 8 * half).cast::<__m128i>(),
                            ));
                            let low = _mm256_and_si256(codes, low_nibbles);
                            let high = _mm256_srli_epi32(codes, 4);
                            _mm256_storeu_ps(y.add(8 * half), value(low));
                            _mm256_storeu_ps(y.add(16 + 8 * half), value(high));
                        }
                    }
                    BlockKind::Q8_0 => {
                        for quarter in 0..4 {
                            let codes = _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                                block.add(2 + 8 * quarter).cast::<__m128i>(),
                            ));
                            _mm256_storeu_ps(
                                y.add(8 * quarter),
                                _mm256_mul_ps(_mm256_cvtepi32_ps(codes), d),
                            );
                        }
                    }
                }
                block = block.add(step);
            }
        }
    }

    dot_kernel!("avx2,fma");
}
