//! The only module of the crate with `unsafe` code: the carry-less multiplication kernels.
//!
//! Intrinsics need `unsafe` for two reasons, and each block below says which it relies on:
//! - an instruction the CPU may lack: every kernel is a `#[target_feature]` function, and
//!   the only way to reach one is through a [`Clmul`] token, which [`Clmul::detect`] hands
//!   out only after the features were detected (at run time with `std`, at compile time
//!   without);
//! - raw pointers: every load and store goes through [`load`]/[`store`]-style helpers that
//!   take `&[u8; 16]` / `&mut [u8; 16]`, so the bounds come from the types.
//!
//! The crate's MSRV is 1.85; intrinsics without pointer arguments became safe to call in
//! functions enabling their feature only in Rust 1.87. They are called in `unsafe` blocks,
//! which newer compilers find unnecessary: hence `allow(unused_unsafe)`.
#![allow(unused_unsafe)]

/// Proof that the CPU running this code has the carry-less multiplication instructions
/// (and the byte shuffle) the kernel of this architecture uses.
///
/// Only [`Clmul::detect`] makes one, so holding one is what makes the kernels safe to call.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clmul(());

/// No carry-less multiplication kernel for this architecture: the token cannot exist.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Clmul {}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
impl Clmul {
    #[inline(always)]
    pub(crate) fn detect() -> Option<Self> {
        None
    }

    pub(crate) fn update(self, _crc: u16, _blocks: &[u8]) -> u16 {
        match self {}
    }

    pub(crate) fn copy_update(self, _crc: u16, _src: &[u8], _dst: &mut [u8]) -> u16 {
        match self {}
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl Clmul {
    /// The token, when the CPU has the instructions.
    ///
    /// With `std` the features are detected at run time; the standard library caches the
    /// answer (one relaxed atomic load per feature after the first call), and a build that
    /// enables the features at compile time skips the check. Without `std` only a build
    /// that enables them at compile time gets the token.
    #[inline(always)]
    pub(crate) fn detect() -> Option<Self> {
        if arch::detected() {
            Some(Clmul(()))
        } else {
            None
        }
    }

    /// The CRC register advanced over the whole 16-byte blocks of `blocks` (a shorter rest
    /// is ignored; callers pass whole blocks).
    #[inline]
    pub(crate) fn update(self, crc: u16, blocks: &[u8]) -> u16 {
        // SAFETY: `self` exists, so `arch::detected()` was true: the CPU has every feature
        // the kernel enables. The kernel reads `blocks` through bounds-checked 16-byte
        // arrays only and writes nothing (`COPY` is false, `dst` is empty).
        unsafe { arch::fold_blocks::<false>(crc, blocks, &mut []) }
    }

    /// As [`Clmul::update`], storing each block to the same offset of `dst` as it goes (up
    /// to the shorter of the two lengths).
    #[inline]
    pub(crate) fn copy_update(self, crc: u16, src: &[u8], dst: &mut [u8]) -> u16 {
        // SAFETY: as in `update`; the kernel stores only through 16-byte arrays taken from
        // `dst` by checked conversions.
        unsafe { arch::fold_blocks::<true>(crc, src, dst) }
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
/// Whole 16-byte blocks of the run, `dst` shortened to match when copying.
#[inline(always)]
fn whole_blocks<const COPY: bool>(src: &[u8], dst: &[u8]) -> usize {
    let len = if COPY {
        src.len().min(dst.len())
    } else {
        src.len()
    };
    len & !15
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
/// The 16-byte array at `at` of `bytes`, `at + 16 <= bytes.len()` being the caller's
/// loop bound; the checked conversion keeps even a wrong bound from reading out of bounds
/// (the compiler removes it where the bound is evident).
#[inline(always)]
fn block(bytes: &[u8], at: usize) -> &[u8; 16] {
    match bytes.get(at..at + 16) {
        Some(b) => b.try_into().unwrap_or(&[0; 16]),
        None => &[0; 16],
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
/// The mutable counterpart of [`block`]; `None` only when the loop bound is wrong (never).
#[inline(always)]
fn block_mut(bytes: &mut [u8], at: usize) -> Option<&mut [u8; 16]> {
    bytes.get_mut(at..at + 16)?.try_into().ok()
}

#[cfg(target_arch = "x86_64")]
use x86 as arch;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_clmulepi64_si128, _mm_cvtsi128_si32, _mm_loadu_si128,
        _mm_move_epi64, _mm_set_epi8, _mm_set_epi64x, _mm_shuffle_epi8, _mm_slli_si128,
        _mm_srli_si128, _mm_storeu_si128, _mm_xor_si128,
    };

    use super::{block, block_mut, whole_blocks};
    use crate::crc16::folding::{FOLD_1, FOLD_8, K48, K80, LANE_FOLD, LANES, MU48, POLY};

    /// Whether the CPU has PCLMULQDQ and SSSE3 (PSHUFB, to put the bytes in big-endian
    /// order). SSE2 is part of x86-64.
    #[inline(always)]
    pub(super) fn detected() -> bool {
        #[cfg(feature = "std")]
        {
            std::arch::is_x86_feature_detected!("pclmulqdq")
                && std::arch::is_x86_feature_detected!("ssse3")
        }
        #[cfg(not(feature = "std"))]
        {
            cfg!(all(target_feature = "pclmulqdq", target_feature = "ssse3"))
        }
    }

    /// Loads 16 bytes as a 128-bit polynomial, the first byte in the highest bits.
    #[inline]
    #[target_feature(enable = "ssse3")]
    unsafe fn load(bytes: &[u8; 16], reverse: __m128i) -> (__m128i, __m128i) {
        // SAFETY: `bytes` is 16 readable bytes and MOVDQU has no alignment requirement;
        // PSHUFB is SSSE3, which this function enables (its callers hold a `Clmul`).
        unsafe {
            let raw = _mm_loadu_si128(bytes.as_ptr().cast());
            (raw, _mm_shuffle_epi8(raw, reverse))
        }
    }

    /// Stores 16 bytes as they were loaded.
    #[inline(always)]
    fn store(out: Option<&mut [u8; 16]>, raw: __m128i) {
        if let Some(out) = out {
            // SAFETY: `out` is 16 writable bytes and MOVDQU has no alignment requirement;
            // SSE2 is part of x86-64.
            unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), raw) }
        }
    }

    /// The constant pair `(x^d mod P, x^(d+64) mod P)` in the low and high halves.
    #[inline(always)]
    fn constants((low, high): (u64, u64)) -> __m128i {
        // SAFETY: SSE2 (part of x86-64), no memory access.
        unsafe { _mm_set_epi64x(high as i64, low as i64) }
    }

    /// `a` moved forward over the distance the constants `k` stand for (see
    /// `crate::crc16::fold_by`).
    #[inline]
    #[target_feature(enable = "pclmulqdq")]
    unsafe fn fold(a: __m128i, k: __m128i) -> __m128i {
        // SAFETY: PCLMULQDQ, which this function enables; no memory access.
        unsafe {
            _mm_xor_si128(
                _mm_clmulepi64_si128(a, k, 0x00),
                _mm_clmulepi64_si128(a, k, 0x11),
            )
        }
    }

    /// `crate::crc16::reduce` in SSE registers: `a * x^16 mod P`.
    ///
    /// Every shift is a multiple of 8 bits, so whole-register byte shifts do them.
    #[inline]
    #[target_feature(enable = "pclmulqdq")]
    unsafe fn reduce(a: __m128i) -> u16 {
        // SAFETY: PCLMULQDQ, which this function enables, and SSE2; no memory access.
        unsafe {
            let k = _mm_set_epi64x(K48 as i64, K80 as i64);
            // B = H * (x^80 mod P) + L * x^16, under 80 bits.
            let b = _mm_xor_si128(
                _mm_clmulepi64_si128(a, k, 0x01),
                _mm_slli_si128(_mm_move_epi64(a), 2),
            );
            // C = (B >> 48) * (x^48 mod P) + (B mod x^48), under 48 bits.
            let c = _mm_xor_si128(
                _mm_clmulepi64_si128(_mm_srli_si128(b, 6), k, 0x10),
                _mm_and_si128(b, _mm_set_epi64x(0, 0xFFFF_FFFF_FFFF)),
            );
            // Barrett: q = ((C >> 16) * floor(x^48 / P)) >> 32, remainder C - q * P.
            let m = _mm_set_epi64x(POLY as i64, MU48 as i64);
            let q = _mm_srli_si128(_mm_clmulepi64_si128(_mm_srli_si128(c, 2), m, 0x00), 4);
            let r = _mm_xor_si128(c, _mm_clmulepi64_si128(q, m, 0x10));
            _mm_cvtsi128_si32(r) as u16
        }
    }

    /// Folds the whole 16-byte blocks of `src` into the register `crc`; with `COPY`, stores
    /// each block to the same offset of `dst` as well.
    ///
    /// # Safety
    /// The CPU must have PCLMULQDQ and SSSE3 (a [`super::Clmul`] proves it).
    #[target_feature(enable = "pclmulqdq,ssse3")]
    pub(super) unsafe fn fold_blocks<const COPY: bool>(
        crc: u16,
        src: &[u8],
        dst: &mut [u8],
    ) -> u16 {
        let n = whole_blocks::<COPY>(src, dst);
        if n == 0 {
            return crc;
        }
        // SAFETY: the CPU has PCLMULQDQ and SSSE3 (this function's contract), the only
        // features used; memory is reached only through `load` and `store`, over arrays
        // from `block`/`block_mut`, and every offset below is under `n`, a multiple of 16
        // that is at most `src.len()` (and `dst.len()` when copying).
        unsafe {
            let reverse = _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            // The register joins the first two bytes (CRC-16 is not reflected, so its high
            // byte meets the first byte): bits 112..128 of the first block.
            let init = _mm_set_epi64x(i64::from(crc) << 48, 0);
            let mut at;
            let mut acc;
            if n >= 16 * LANES {
                let mut lanes = [init; LANES];
                for (i, lane) in lanes.iter_mut().enumerate() {
                    let (raw, x) = load(block(src, 16 * i), reverse);
                    if COPY {
                        store(block_mut(dst, 16 * i), raw);
                    }
                    *lane = if i == 0 { _mm_xor_si128(x, init) } else { x };
                }
                at = 16 * LANES;
                let k = constants(FOLD_8);
                while at + 16 * LANES <= n {
                    for (i, lane) in lanes.iter_mut().enumerate() {
                        let (raw, x) = load(block(src, at + 16 * i), reverse);
                        if COPY {
                            store(block_mut(dst, at + 16 * i), raw);
                        }
                        *lane = _mm_xor_si128(fold(*lane, k), x);
                    }
                    at += 16 * LANES;
                }
                acc = lanes[LANES - 1];
                for (lane, &k) in lanes.iter().zip(&LANE_FOLD).take(LANES - 1) {
                    acc = _mm_xor_si128(acc, fold(*lane, constants(k)));
                }
            } else {
                let (raw, x) = load(block(src, 0), reverse);
                if COPY {
                    store(block_mut(dst, 0), raw);
                }
                acc = _mm_xor_si128(x, init);
                at = 16;
            }
            let k = constants(FOLD_1);
            while at < n {
                let (raw, x) = load(block(src, at), reverse);
                if COPY {
                    store(block_mut(dst, at), raw);
                }
                acc = _mm_xor_si128(fold(acc, k), x);
                at += 16;
            }
            reduce(acc)
        }
    }
}

#[cfg(target_arch = "aarch64")]
use arm as arch;

#[cfg(target_arch = "aarch64")]
mod arm {
    use core::arch::aarch64::{
        uint8x16_t, uint64x2_t, veorq_u64, vextq_u8, vgetq_lane_u64, vld1q_u8, vld1q_u64,
        vmull_p64, vreinterpretq_u64_u8, vrev64q_u8, vst1q_u8,
    };

    use super::{block, block_mut, whole_blocks};
    use crate::crc16::folding::{FOLD_1, FOLD_8, LANE_FOLD, LANES, reduce as reduce_with};

    /// Whether the CPU has PMULL (the `aes` target feature) and NEON.
    #[inline(always)]
    pub(super) fn detected() -> bool {
        #[cfg(feature = "std")]
        {
            std::arch::is_aarch64_feature_detected!("neon")
                && std::arch::is_aarch64_feature_detected!("pmull")
        }
        #[cfg(not(feature = "std"))]
        {
            cfg!(all(target_feature = "neon", target_feature = "aes"))
        }
    }

    /// Loads 16 bytes as a 128-bit polynomial, the first byte in the highest bits.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load(bytes: &[u8; 16]) -> (uint8x16_t, uint64x2_t) {
        // SAFETY: `bytes` is 16 readable bytes and LD1 has no alignment requirement; NEON
        // is enabled by this function (its callers hold a `Clmul`).
        unsafe {
            let raw = vld1q_u8(bytes.as_ptr());
            // Reverse the bytes of each half, then swap the halves.
            let rev = vrev64q_u8(raw);
            (raw, vreinterpretq_u64_u8(vextq_u8::<8>(rev, rev)))
        }
    }

    /// Stores 16 bytes as they were loaded.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn store(out: Option<&mut [u8; 16]>, raw: uint8x16_t) {
        if let Some(out) = out {
            // SAFETY: `out` is 16 writable bytes and ST1 has no alignment requirement;
            // NEON is enabled by this function.
            unsafe { vst1q_u8(out.as_mut_ptr(), raw) }
        }
    }

    /// The 128-bit carry-less product of two 64-bit polynomials.
    #[inline]
    #[target_feature(enable = "neon,aes")]
    unsafe fn clmul(a: u64, b: u64) -> u128 {
        // SAFETY: PMULL is the `aes` feature, which this function enables.
        unsafe { vmull_p64(a, b) }
    }

    /// `a` moved forward over the distance the constants `(low, high)` stand for.
    #[inline]
    #[target_feature(enable = "neon,aes")]
    unsafe fn fold(a: uint64x2_t, (low, high): (u64, u64)) -> uint64x2_t {
        // SAFETY: NEON and PMULL, which this function enables; no memory access.
        unsafe {
            let p = clmul(vgetq_lane_u64::<0>(a), low) ^ clmul(vgetq_lane_u64::<1>(a), high);
            as_vector(p)
        }
    }

    /// A 128-bit value as two 64-bit lanes, the low half in lane 0.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn as_vector(v: u128) -> uint64x2_t {
        let lanes = [v as u64, (v >> 64) as u64];
        // SAFETY: `lanes` is 16 readable bytes; NEON is enabled by this function.
        unsafe { vld1q_u64(lanes.as_ptr()) }
    }

    /// The two lanes as one 128-bit value.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn as_u128(v: uint64x2_t) -> u128 {
        // SAFETY: NEON is enabled by this function; no memory access.
        unsafe { u128::from(vgetq_lane_u64::<0>(v)) | (u128::from(vgetq_lane_u64::<1>(v)) << 64) }
    }

    /// Folds the whole 16-byte blocks of `src` into the register `crc`; with `COPY`, stores
    /// each block to the same offset of `dst` as well.
    ///
    /// # Safety
    /// The CPU must have NEON and PMULL (a [`super::Clmul`] proves it).
    #[target_feature(enable = "neon,aes")]
    pub(super) unsafe fn fold_blocks<const COPY: bool>(
        crc: u16,
        src: &[u8],
        dst: &mut [u8],
    ) -> u16 {
        let n = whole_blocks::<COPY>(src, dst);
        if n == 0 {
            return crc;
        }
        // SAFETY: the CPU has NEON and PMULL (this function's contract), the only features
        // used; memory is reached only through `load` and `store`, over arrays from
        // `block`/`block_mut`, and every offset below is under `n`, a multiple of 16 that
        // is at most `src.len()` (and `dst.len()` when copying).
        unsafe {
            let init = as_vector(u128::from(crc) << 112);
            let mut at;
            let mut acc;
            if n >= 16 * LANES {
                let mut lanes = [init; LANES];
                for (i, lane) in lanes.iter_mut().enumerate() {
                    let (raw, x) = load(block(src, 16 * i));
                    if COPY {
                        store(block_mut(dst, 16 * i), raw);
                    }
                    *lane = if i == 0 { veorq_u64(x, init) } else { x };
                }
                at = 16 * LANES;
                while at + 16 * LANES <= n {
                    for (i, lane) in lanes.iter_mut().enumerate() {
                        let (raw, x) = load(block(src, at + 16 * i));
                        if COPY {
                            store(block_mut(dst, at + 16 * i), raw);
                        }
                        *lane = veorq_u64(fold(*lane, FOLD_8), x);
                    }
                    at += 16 * LANES;
                }
                acc = lanes[LANES - 1];
                for (lane, &k) in lanes.iter().zip(&LANE_FOLD).take(LANES - 1) {
                    acc = veorq_u64(acc, fold(*lane, k));
                }
            } else {
                let (raw, x) = load(block(src, 0));
                if COPY {
                    store(block_mut(dst, 0), raw);
                }
                acc = veorq_u64(x, init);
                at = 16;
            }
            while at < n {
                let (raw, x) = load(block(src, at));
                if COPY {
                    store(block_mut(dst, at), raw);
                }
                acc = veorq_u64(fold(acc, FOLD_1), x);
                at += 16;
            }
            let acc = as_u128(acc);
            reduce_with(acc, |a, b| clmul(a, b))
        }
    }
}
