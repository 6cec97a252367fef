//! The two inner loops every decoder reduces to, with AVX2 versions chosen at run time.
//!
//! * [`expand_field`]: `dst[j] = lut[(src[j] >> shift) & 3]` (HF packed, TQ2_0, I2_S);
//! * [`expand_trits`]: `dst[j] = lut[digit_n(src[j])]` (TQ1_0's base-3 bytes).
//!
//! `lut[c]` is `(c - 1) as f32 * scale`, computed once in scalar f32, so the vector and
//! portable paths give the same bits. Large outputs are written with non-temporal
//! stores (they bypass the cache, so a 64 MB tensor costs one memory write instead of a
//! read-for-ownership plus a write); callers end each run of streamed stores with
//! [`store_fence`].

/// Outputs at least this large are written with non-temporal stores.
pub const STREAM_MIN_BYTES: usize = 32 << 20;

/// The table of weights per code: `lut[c] = (c - 1) * scale`.
#[inline]
pub fn code_table(scale: f32) -> [f32; 4] {
    [-scale, 0.0 * scale, scale, 2.0 * scale]
}

/// Whether the AVX2 kernels run on this CPU.
#[inline]
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The two inner loops, for one instruction set. Code generic over `Expand` and run
/// through [`dispatch`] is compiled once per instruction set, the AVX2 copy with AVX2
/// enabled throughout, so the loops inline into their callers.
pub trait Expand: Copy {
    /// `dst[j] = lut[(src[j] >> shift) & 3]`.
    fn field(self, src: &[u8], shift: u32, lut: &[f32; 4], dst: &mut [f32], stream: bool);
    /// `dst[j] = lut[trit(src[j], n)]`.
    fn trits(self, src: &[u8], n: u32, lut: &[f32; 4], dst: &mut [f32], stream: bool);
    /// TQ1_0's last 16 elements: `dst[4n + j] = lut[trit(qh[j], n)]` for n, j in 0..4.
    fn trits_tail(self, qh: &[u8; 4], lut: &[f32; 4], dst: &mut [f32; 16], stream: bool) {
        let _ = stream;
        for n in 0..4 {
            expand_trits_portable(qh, n, lut, &mut dst[4 * n as usize..4 * n as usize + 4]);
        }
    }
}

/// Plain Rust loops.
#[derive(Debug, Clone, Copy)]
pub struct Portable;

impl Expand for Portable {
    #[inline(always)]
    fn field(self, src: &[u8], shift: u32, lut: &[f32; 4], dst: &mut [f32], _stream: bool) {
        expand_field_portable(src, shift, lut, dst);
    }

    #[inline(always)]
    fn trits(self, src: &[u8], n: u32, lut: &[f32; 4], dst: &mut [f32], _stream: bool) {
        expand_trits_portable(src, n, lut, dst);
    }
}

/// AVX2 loops; only [`dispatch`] makes one, after checking the CPU.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub struct Avx2(());

#[cfg(target_arch = "x86_64")]
impl Expand for Avx2 {
    #[inline(always)]
    fn field(self, src: &[u8], shift: u32, lut: &[f32; 4], dst: &mut [f32], stream: bool) {
        // SAFETY: an Avx2 value exists only where the CPU has AVX2; lengths are equal.
        let done = unsafe { x86::expand_field(src, shift, lut, dst, stream) };
        expand_field_portable(&src[done..], shift, lut, &mut dst[done..]);
    }

    #[inline(always)]
    fn trits(self, src: &[u8], n: u32, lut: &[f32; 4], dst: &mut [f32], stream: bool) {
        // SAFETY: as above.
        let done = unsafe { x86::expand_trits(src, n, lut, dst, stream) };
        expand_trits_portable(&src[done..], n, lut, &mut dst[done..]);
    }

    #[inline(always)]
    fn trits_tail(self, qh: &[u8; 4], lut: &[f32; 4], dst: &mut [f32; 16], stream: bool) {
        // SAFETY: as above; dst holds 16 floats.
        unsafe { x86::trits_tail(qh, lut, dst, stream) }
    }
}

/// Work written once for any [`Expand`].
pub trait Kernel {
    /// What the work returns.
    type Output;
    /// Does the work with `expand`; implementations should be `#[inline(always)]`.
    fn run<E: Expand>(self, expand: E) -> Self::Output;
}

/// Runs `kernel` with the best instruction set of this CPU.
pub fn dispatch<K: Kernel>(kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 is present.
        return unsafe { run_avx2(kernel) };
    }
    kernel.run(Portable)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2<K: Kernel>(kernel: K) -> K::Output {
    kernel.run(Avx2(()))
}

/// `dst[j] = lut[(src[j] >> shift) & 3]` for `j < src.len()`.
#[inline]
pub fn expand_field(src: &[u8], shift: u32, lut: &[f32; 4], dst: &mut [f32], stream: bool) {
    debug_assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 is present; lengths are equal (checked by every caller).
        let done = unsafe { x86::expand_field(src, shift, lut, dst, stream) };
        expand_field_portable(&src[done..], shift, lut, &mut dst[done..]);
        return;
    }
    let _ = stream;
    expand_field_portable(src, shift, lut, dst);
}

/// The portable loop of [`expand_field`].
#[inline]
pub fn expand_field_portable(src: &[u8], shift: u32, lut: &[f32; 4], dst: &mut [f32]) {
    for (v, &b) in dst.iter_mut().zip(src) {
        *v = lut[usize::from((b >> shift) & 3)];
    }
}

/// Digit `n` (0 = most significant of five) of a TQ1_0 byte, in {0, 1, 2}: multiplying
/// by 3^n (mod 256) brings the digit to the top, `* 3 >> 8` reads it.
#[inline(always)]
pub fn trit(byte: u8, n: u32) -> u8 {
    let shifted = byte.wrapping_mul(3u8.pow(n));
    ((u16::from(shifted) * 3) >> 8) as u8
}

/// `dst[j] = lut[trit(src[j], n)]` for `j < src.len()`.
#[inline]
pub fn expand_trits(src: &[u8], n: u32, lut: &[f32; 4], dst: &mut [f32], stream: bool) {
    debug_assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 is present; lengths are equal.
        let done = unsafe { x86::expand_trits(src, n, lut, dst, stream) };
        expand_trits_portable(&src[done..], n, lut, &mut dst[done..]);
        return;
    }
    let _ = stream;
    expand_trits_portable(src, n, lut, dst);
}

/// The portable loop of [`expand_trits`].
#[inline]
pub fn expand_trits_portable(src: &[u8], n: u32, lut: &[f32; 4], dst: &mut [f32]) {
    for (v, &b) in dst.iter_mut().zip(src) {
        *v = lut[usize::from(trit(b, n))];
    }
}

/// Orders non-temporal stores before anything that follows.
#[inline]
pub fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence has no preconditions (SSE is part of x86-64).
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Stores 8 floats; streamed only where the address allows (16-byte alignment).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store8(dst: *mut f32, values: __m256, stream: bool) {
        // SAFETY: the caller guarantees 8 writable floats at dst.
        unsafe {
            if stream && (dst as usize).is_multiple_of(16) {
                _mm_stream_ps(dst, _mm256_castps256_ps128(values));
                _mm_stream_ps(dst.add(4), _mm256_extractf128_ps(values, 1));
            } else {
                _mm256_storeu_ps(dst, values);
            }
        }
    }

    /// Expands 8 codes (u8 in 0..4, the low 8 bytes of `codes`) through the table.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn lookup8(codes: __m128i, table: __m256) -> __m256 {
        _mm256_permutevar_ps(table, _mm256_cvtepu8_epi32(codes))
    }

    /// AVX2 part of `expand_field`: whole 32-byte chunks; returns how many bytes it did.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn expand_field(
        src: &[u8],
        shift: u32,
        lut: &[f32; 4],
        dst: &mut [f32],
        stream: bool,
    ) -> usize {
        let table = _mm256_setr_ps(
            lut[0], lut[1], lut[2], lut[3], lut[0], lut[1], lut[2], lut[3],
        );
        let mask = _mm256_set1_epi8(3);
        let count = _mm_cvtsi32_si128(shift as i32);
        let chunks = src.len() / 32;
        for k in 0..chunks {
            // SAFETY: k*32 + 32 <= src.len() == dst.len().
            unsafe {
                let v = _mm256_loadu_si256(src.as_ptr().add(32 * k).cast());
                // 16-bit shifts pull bits across bytes; the mask drops them.
                let codes = _mm256_and_si256(_mm256_srl_epi16(v, count), mask);
                let low = _mm256_castsi256_si128(codes);
                let high = _mm256_extracti128_si256(codes, 1);
                let out = dst.as_mut_ptr().add(32 * k);
                store8(out, lookup8(low, table), stream);
                store8(out.add(8), lookup8(_mm_srli_si128(low, 8), table), stream);
                store8(out.add(16), lookup8(high, table), stream);
                store8(out.add(24), lookup8(_mm_srli_si128(high, 8), table), stream);
            }
        }
        chunks * 32
    }

    /// AVX2 part of `expand_trits`: whole 16-byte chunks; returns how many bytes it did.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn expand_trits(
        src: &[u8],
        n: u32,
        lut: &[f32; 4],
        dst: &mut [f32],
        stream: bool,
    ) -> usize {
        let table = _mm256_setr_ps(
            lut[0], lut[1], lut[2], lut[3], lut[0], lut[1], lut[2], lut[3],
        );
        let power = _mm256_set1_epi16(i16::from(3u8.pow(n)));
        let low_byte = _mm256_set1_epi16(0xFF);
        let chunks = src.len() / 16;
        for k in 0..chunks {
            // SAFETY: k*16 + 16 <= src.len() == dst.len().
            unsafe {
                let bytes = _mm_loadu_si128(src.as_ptr().add(16 * k).cast());
                let wide = _mm256_cvtepu8_epi16(bytes);
                let codes = digits16(wide, power, low_byte);
                let out = dst.as_mut_ptr().add(16 * k);
                store8(out, lookup8(codes, table), stream);
                store8(out.add(8), lookup8(_mm_srli_si128(codes, 8), table), stream);
            }
        }
        chunks * 16
    }

    /// Digits of 16 bytes widened to u16 lanes, each multiplied by its lane's power of 3:
    /// `((byte * power) mod 256) * 3 >> 8`, returned as 16 bytes in lane order.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn digits16(wide: __m256i, power: __m256i, low_byte: __m256i) -> __m128i {
        let shifted = _mm256_and_si256(_mm256_mullo_epi16(wide, power), low_byte);
        let tripled = _mm256_add_epi16(shifted, _mm256_slli_epi16(shifted, 1));
        let digits = _mm256_srli_epi16(tripled, 8);
        // Back to bytes; packus works per 128-bit lane, the permute restores the order.
        let packed = _mm256_packus_epi16(digits, digits);
        _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0b1000))
    }

    /// TQ1_0's `qh`: 16 outputs `4n + j` from the digits n of bytes j, in one pass.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn trits_tail(
        qh: &[u8; 4],
        lut: &[f32; 4],
        dst: &mut [f32; 16],
        stream: bool,
    ) {
        let table = _mm256_setr_ps(
            lut[0], lut[1], lut[2], lut[3], lut[0], lut[1], lut[2], lut[3],
        );
        let repeated = _mm_set1_epi32(i32::from_le_bytes(*qh));
        let power = _mm256_setr_epi16(1, 1, 1, 1, 3, 3, 3, 3, 9, 9, 9, 9, 27, 27, 27, 27);
        let low_byte = _mm256_set1_epi16(0xFF);
        // SAFETY: dst holds 16 floats.
        unsafe {
            let codes = digits16(_mm256_cvtepu8_epi16(repeated), power, low_byte);
            let out = dst.as_mut_ptr();
            store8(out, lookup8(codes, table), stream);
            store8(out.add(8), lookup8(_mm_srli_si128(codes, 8), table), stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_and_portable_paths_agree_on_every_byte() {
        let src: Vec<u8> = (0..=255u8).cycle().take(32 * 9 + 5).collect();
        let lut = code_table(0.123);
        for stream in [false, true] {
            for shift in [0, 2, 4, 6] {
                let mut fast = vec![0f32; src.len()];
                let mut slow = vec![0f32; src.len()];
                expand_field(&src, shift, &lut, &mut fast, stream);
                store_fence();
                expand_field_portable(&src, shift, &lut, &mut slow);
                assert_eq!(fast, slow, "shift {shift}");
            }
            for n in 0..5 {
                let mut fast = vec![0f32; src.len()];
                let mut slow = vec![0f32; src.len()];
                expand_trits(&src, n, &lut, &mut fast, stream);
                store_fence();
                expand_trits_portable(&src, n, &lut, &mut slow);
                assert_eq!(fast, slow, "digit {n}");
            }
            for qh in src.chunks_exact(4) {
                let qh: &[u8; 4] = qh.try_into().unwrap();
                let mut fast = [0f32; 16];
                let mut slow = [0f32; 16];
                dispatch(Tail {
                    qh,
                    lut: &lut,
                    dst: &mut fast,
                    stream,
                });
                store_fence();
                Portable.trits_tail(qh, &lut, &mut slow, false);
                assert_eq!(fast, slow, "{qh:?}");
            }
        }
    }

    struct Tail<'a> {
        qh: &'a [u8; 4],
        lut: &'a [f32; 4],
        dst: &'a mut [f32; 16],
        stream: bool,
    }

    impl Kernel for Tail<'_> {
        type Output = ();
        fn run<E: Expand>(self, e: E) {
            e.trits_tail(self.qh, self.lut, self.dst, self.stream);
        }
    }

    #[test]
    fn trits_read_every_five_digit_number() {
        for number in 0..243u16 {
            // ggml's encoding: ceil(N * 256 / 243).
            let byte = (number * 256).div_ceil(243) as u8;
            let digits: Vec<u16> = (0..5).map(|n| u16::from(trit(byte, n))).collect();
            let back = digits.iter().fold(0, |acc, d| acc * 3 + d);
            assert_eq!(back, number);
        }
    }
}
