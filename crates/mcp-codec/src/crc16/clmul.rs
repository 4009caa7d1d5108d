//! The only module of the crate with `unsafe` code: the carry-less multiplication kernels.
//!
//! Intrinsics need `unsafe` for two reasons, and each block below says which it relies on:
//! - an instruction the CPU may lack: every kernel is a `#[target_feature]` function, and
//!   the only way to reach one is through a [`Clmul`] token, which [`Clmul::detect`] hands
//!   out only after the kernel's features were detected (at run time with `std`, at compile
//!   time without);
//! - raw pointers: every load and store takes a `&[u8; N]` / `&mut [u8; N]` and an offset
//!   that is in bounds by construction, so the bounds come from the types.
//!
//! Kernels:
//! - x86-64, PCLMULQDQ + SSSE3: eight 128-bit lanes folded by 1024 bits per 128 bytes.
//! - x86-64, VPCLMULQDQ + AVX2 (built by Rust 1.89 and later, see `build.rs`): the same
//!   eight lanes in four 256-bit registers, two products per instruction. PCLMULQDQ does one
//!   64x64-bit product per instruction and every 64 bits of input need one, which caps the
//!   first kernel near 13 GiB/s on the benchmark machine (a 2.6 GHz EPYC); this one doubles
//!   that ceiling.
//! - aarch64, PMULL (the `aes` feature) + NEON: the first kernel's structure.
//!
//! The crate's MSRV is 1.85; intrinsics without pointer arguments became safe to call in
//! functions enabling their feature only in Rust 1.87. They are called in `unsafe` blocks,
//! which newer compilers find unnecessary: hence `allow(unused_unsafe)`.
#![allow(unused_unsafe)]

/// Proof that the CPU running this code has the instructions of one folding kernel.
///
/// Only [`Clmul::detect`] (and, in tests, `Clmul::all`) makes one, so holding one is what
/// makes its kernel safe to call.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clmul(arch::Kernel);

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

    #[cfg(test)]
    pub(crate) fn all() -> impl Iterator<Item = Self> {
        core::iter::empty()
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
    /// The token of the fastest kernel the CPU can run, if any.
    ///
    /// With `std` the features are detected at run time; the standard library caches the
    /// answer (one relaxed atomic load per feature after the first call), and a build that
    /// enables the features at compile time skips the check. Without `std` only a build
    /// that enables them at compile time gets a token.
    #[inline(always)]
    pub(crate) fn detect() -> Option<Self> {
        arch::Kernel::detect().map(Clmul)
    }

    /// A token for every kernel the CPU can run, so that tests reach each one.
    #[cfg(test)]
    pub(crate) fn all() -> impl Iterator<Item = Self> {
        arch::Kernel::all().map(Clmul)
    }

    /// The CRC register advanced over the whole 16-byte blocks of `blocks` (a shorter rest
    /// is ignored; callers pass whole blocks).
    #[inline]
    pub(crate) fn update(self, crc: u16, blocks: &[u8]) -> u16 {
        // SAFETY: `self` exists, so its kernel's features were detected: the CPU has every
        // feature the kernel enables. Memory: see the kernel.
        unsafe { arch::fold_blocks::<false>(self.0, crc, blocks, &mut []) }
    }

    /// As [`Clmul::update`], storing each block to the same offset of `dst` as it goes (up
    /// to the shorter of the two lengths).
    #[inline]
    pub(crate) fn copy_update(self, crc: u16, src: &[u8], dst: &mut [u8]) -> u16 {
        // SAFETY: as in `update`.
        unsafe { arch::fold_blocks::<true>(self.0, crc, src, dst) }
    }
}

/// A run split for a kernel: the part folded in groups of `GROUP` bytes, the part folded
/// block by block, and the matching parts of the destination when copying (empty when not).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
struct Split<'s, 'd> {
    groups: &'s [u8],
    groups_out: &'d mut [u8],
    blocks: &'s [u8],
    blocks_out: &'d mut [u8],
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl<'s, 'd> Split<'s, 'd> {
    /// Whole 16-byte blocks of `src` (and of `dst` when copying), the first
    /// `GROUP * floor(blocks / GROUP)` bytes in groups when there is at least one group.
    #[inline(always)]
    fn new<const GROUP: usize, const COPY: bool>(src: &'s [u8], dst: &'d mut [u8]) -> Self {
        let len = if COPY {
            src.len().min(dst.len())
        } else {
            src.len()
        };
        let whole = len & !15;
        let grouped = whole - whole % GROUP;
        let (groups, rest) = src.split_at(grouped.min(src.len()));
        let blocks = rest.get(..whole - grouped).unwrap_or(&[]);
        let dst: &'d mut [u8] = if COPY { dst } else { &mut [] };
        let (groups_out, blocks_out) = dst.split_at_mut(grouped.min(dst.len()));
        Split {
            groups,
            groups_out,
            blocks,
            blocks_out,
        }
    }
}

/// The whole `N`-byte chunks of `src`, each paired with the chunk at the same offset of
/// `dst` (`None` when `dst` is shorter, as it is, empty, when not copying).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn chunks<'s, 'd, const N: usize>(
    src: &'s [u8],
    dst: &'d mut [u8],
) -> impl Iterator<Item = (&'s [u8; N], Option<&'d mut [u8; N]>)> {
    src.chunks_exact(N).filter_map(|c| c.try_into().ok()).zip(
        dst.chunks_exact_mut(N)
            .map(|c| c.try_into().ok())
            .chain(core::iter::repeat_with(|| None)),
    )
}

#[cfg(target_arch = "x86_64")]
use x86 as arch;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_clmulepi64_si128, _mm_cvtsi128_si32, _mm_loadu_si128,
        _mm_move_epi64, _mm_set_epi8, _mm_set_epi64x, _mm_setzero_si128, _mm_shuffle_epi8,
        _mm_slli_si128, _mm_srli_si128, _mm_storeu_si128, _mm_xor_si128,
    };
    #[cfg(mcp_codec_vpclmulqdq)]
    use core::arch::x86_64::{
        __m256i, _mm256_castsi256_si128, _mm256_clmulepi64_epi128, _mm256_extracti128_si256,
        _mm256_loadu_si256, _mm256_set_epi64x, _mm256_shuffle_epi8, _mm256_storeu_si256,
        _mm256_xor_si256,
    };

    use super::{Split, chunks};
    use crate::crc16::folding::{FOLD_1, FOLD_8, K48, K80, LANE_FOLD, LANES, MU48, POLY};

    /// Bytes folded per step of the main loop: eight 16-byte lanes.
    const GROUP: usize = 16 * LANES;

    /// Which x86-64 kernel a [`super::Clmul`] stands for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Kernel {
        /// PCLMULQDQ and SSSE3 (PSHUFB puts the bytes in big-endian order); SSE2 is part
        /// of x86-64.
        Sse,
        /// VPCLMULQDQ and AVX2 on top of `Sse`'s features.
        #[cfg(mcp_codec_vpclmulqdq)]
        Avx2,
    }

    /// The kernel `Kernel::probe` found, cached: 0 until the first probe, then 1 for none,
    /// 2 for `Sse`, 3 for `Avx2`. Every caller probes the same CPU, so a race only probes
    /// twice. (The standard library caches each feature too, but reading four of them took
    /// four loads and branches per run.)
    #[cfg(feature = "std")]
    static DETECTED: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

    impl Kernel {
        #[inline(always)]
        pub(super) fn detect() -> Option<Self> {
            #[cfg(feature = "std")]
            {
                use core::sync::atomic::Ordering::Relaxed;
                match DETECTED.load(Relaxed) {
                    1 => None,
                    2 => Some(Kernel::Sse),
                    #[cfg(mcp_codec_vpclmulqdq)]
                    3 => Some(Kernel::Avx2),
                    _ => {
                        let kernel = Self::probe();
                        let code = match kernel {
                            None => 1,
                            Some(Kernel::Sse) => 2,
                            #[cfg(mcp_codec_vpclmulqdq)]
                            Some(Kernel::Avx2) => 3,
                        };
                        DETECTED.store(code, Relaxed);
                        kernel
                    }
                }
            }
            #[cfg(not(feature = "std"))]
            Self::probe()
        }

        /// The fastest kernel the CPU has.
        #[inline]
        fn probe() -> Option<Self> {
            #[cfg(mcp_codec_vpclmulqdq)]
            if Self::has_avx2() {
                return Some(Kernel::Avx2);
            }
            if Self::has_sse() {
                Some(Kernel::Sse)
            } else {
                None
            }
        }

        #[cfg(test)]
        pub(super) fn all() -> impl Iterator<Item = Self> {
            let sse = Self::has_sse().then_some(Kernel::Sse);
            #[cfg(mcp_codec_vpclmulqdq)]
            let avx2 = Self::has_avx2().then_some(Kernel::Avx2);
            #[cfg(not(mcp_codec_vpclmulqdq))]
            let avx2 = None;
            sse.into_iter().chain(avx2)
        }

        #[inline(always)]
        fn has_sse() -> bool {
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

        #[cfg(mcp_codec_vpclmulqdq)]
        #[inline(always)]
        fn has_avx2() -> bool {
            #[cfg(feature = "std")]
            {
                Self::has_sse()
                    && std::arch::is_x86_feature_detected!("vpclmulqdq")
                    && std::arch::is_x86_feature_detected!("avx2")
            }
            #[cfg(not(feature = "std"))]
            {
                Self::has_sse() && cfg!(all(target_feature = "vpclmulqdq", target_feature = "avx2"))
            }
        }
    }

    /// The byte order of the input is big-endian polynomial order: PSHUFB with this
    /// reverses the 16 bytes of a lane.
    #[inline(always)]
    fn reverse_mask() -> __m128i {
        // SAFETY: SSE2 (part of x86-64), no memory access.
        unsafe { _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) }
    }

    /// The 16 bytes at lane `i % N` of `bytes`, raw and as a 128-bit polynomial (the first
    /// byte in the highest bits).
    #[inline]
    #[target_feature(enable = "ssse3")]
    unsafe fn load<const N: usize>(bytes: &[u8; N], i: usize, rev: __m128i) -> (__m128i, __m128i) {
        let at = 16 * (i % (N / 16));
        // SAFETY: `at + 16 <= N`, so the 16 bytes read are inside `bytes`; MOVDQU has no
        // alignment requirement. PSHUFB is SSSE3, which this function enables (its callers
        // hold a `Clmul`).
        unsafe {
            let raw = _mm_loadu_si128(bytes.as_ptr().add(at).cast());
            (raw, _mm_shuffle_epi8(raw, rev))
        }
    }

    /// Stores 16 bytes to lane `i % N` of `out`, if there is an `out` (when copying).
    #[inline(always)]
    fn store<const N: usize>(out: &mut Option<&mut [u8; N]>, i: usize, raw: __m128i) {
        if let Some(out) = out {
            let at = 16 * (i % (N / 16));
            // SAFETY: `at + 16 <= N`, so the 16 bytes written are inside `out`; MOVDQU has
            // no alignment requirement; SSE2 is part of x86-64.
            unsafe { _mm_storeu_si128(out.as_mut_ptr().add(at).cast(), raw) }
        }
    }

    /// The constant pair `(x^d mod P, x^(d+64) mod P)` in the low and high halves.
    #[inline(always)]
    fn constants((low, high): (u64, u64)) -> __m128i {
        // SAFETY: SSE2 (part of x86-64), no memory access.
        unsafe { _mm_set_epi64x(high as i64, low as i64) }
    }

    /// `a` moved forward over the distance the constants `k` stand for (see
    /// `crate::crc16::folding::fold_by`).
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

    /// `crate::crc16::folding::reduce` in SSE registers: `a * x^16 mod P`.
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

    /// Folds the whole 16-byte blocks of `src` into the register `crc` with `kernel`; with
    /// `COPY`, stores each block to the same offset of `dst` as well.
    ///
    /// # Safety
    /// The CPU must have the features of `kernel` (a [`super::Clmul`] proves it).
    #[target_feature(enable = "pclmulqdq,ssse3")]
    pub(super) unsafe fn fold_blocks<const COPY: bool>(
        kernel: Kernel,
        crc: u16,
        src: &[u8],
        dst: &mut [u8],
    ) -> u16 {
        let split = Split::new::<GROUP, COPY>(src, dst);
        if split.groups.is_empty() && split.blocks.is_empty() {
            return crc;
        }
        // SAFETY: the CPU has PCLMULQDQ and SSSE3 (this function's contract) and, when
        // `kernel` is `Avx2`, VPCLMULQDQ and AVX2 (the same contract); memory is reached
        // only through `load`/`store` and their 256-bit counterparts, over arrays.
        unsafe {
            let rev = reverse_mask();
            // The register joins the first two bytes (CRC-16 is not reflected, so its high
            // byte meets the first byte): bits 112..128 of the first block.
            let init = _mm_set_epi64x(i64::from(crc) << 48, 0);
            let mut blocks = chunks::<16>(split.blocks, split.blocks_out);
            let mut acc = if split.groups.is_empty() {
                // At least one block (checked above).
                let (block, mut out) = blocks.next().unwrap_or((&[0; 16], None));
                let (raw, x) = load(block, 0, rev);
                if COPY {
                    store(&mut out, 0, raw);
                }
                _mm_xor_si128(x, init)
            } else {
                let lanes = match kernel {
                    Kernel::Sse => lanes_sse::<COPY>(init, split.groups, split.groups_out),
                    #[cfg(mcp_codec_vpclmulqdq)]
                    Kernel::Avx2 => lanes_avx2::<COPY>(crc, split.groups, split.groups_out),
                };
                let mut acc = lanes[LANES - 1];
                for (lane, &k) in lanes.iter().zip(&LANE_FOLD).take(LANES - 1) {
                    acc = _mm_xor_si128(acc, fold(*lane, constants(k)));
                }
                acc
            };
            let k = constants(FOLD_1);
            for (block, mut out) in blocks {
                let (raw, x) = load(block, 0, rev);
                if COPY {
                    store(&mut out, 0, raw);
                }
                acc = _mm_xor_si128(fold(acc, k), x);
            }
            reduce(acc)
        }
    }

    /// The eight lanes after folding `groups` (a multiple of 128 bytes, at least one
    /// group), `init` added to the first block.
    #[inline]
    #[target_feature(enable = "pclmulqdq,ssse3")]
    unsafe fn lanes_sse<const COPY: bool>(
        init: __m128i,
        groups: &[u8],
        out: &mut [u8],
    ) -> [__m128i; LANES] {
        // SAFETY: PCLMULQDQ and SSSE3, which this function enables; memory only through
        // `load` and `store`.
        unsafe {
            let rev = reverse_mask();
            let k = constants(FOLD_8);
            let mut lanes = [_mm_setzero_si128(); LANES];
            let mut groups = chunks::<GROUP>(groups, out);
            if let Some((group, mut out)) = groups.next() {
                for (i, lane) in lanes.iter_mut().enumerate() {
                    let (raw, x) = load(group, i, rev);
                    if COPY {
                        store(&mut out, i, raw);
                    }
                    *lane = x;
                }
                lanes[0] = _mm_xor_si128(lanes[0], init);
            }
            for (group, mut out) in groups {
                for (i, lane) in lanes.iter_mut().enumerate() {
                    let (raw, x) = load(group, i, rev);
                    if COPY {
                        store(&mut out, i, raw);
                    }
                    *lane = _mm_xor_si128(fold(*lane, k), x);
                }
            }
            lanes
        }
    }

    /// As [`lanes_sse`], two lanes per 256-bit register, `crc` added to the first block.
    ///
    /// Built only by Rust 1.89 and later (`build.rs`), hence its own MSRV for clippy.
    #[cfg(mcp_codec_vpclmulqdq)]
    #[clippy::msrv = "1.89"]
    #[inline]
    #[target_feature(enable = "pclmulqdq,ssse3,avx2,vpclmulqdq")]
    unsafe fn lanes_avx2<const COPY: bool>(
        crc: u16,
        groups: &[u8],
        out: &mut [u8],
    ) -> [__m128i; LANES] {
        const PAIRS: usize = LANES / 2;
        /// The 32 bytes at pair `i % 4` of `group`, raw and as two polynomials.
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn load2(group: &[u8; GROUP], i: usize, rev: __m256i) -> (__m256i, __m256i) {
            let at = 32 * (i % PAIRS);
            // SAFETY: `at + 32 <= GROUP`, so the bytes read are inside `group`; VMOVDQU
            // has no alignment requirement; AVX2 (VPSHUFB on 256 bits, which shuffles
            // each 128-bit half on its own) is enabled by this function.
            unsafe {
                let raw = _mm256_loadu_si256(group.as_ptr().add(at).cast());
                (raw, _mm256_shuffle_epi8(raw, rev))
            }
        }
        /// Stores 32 bytes to pair `i % 4` of `out`, if there is an `out` (when copying).
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn store2(out: &mut Option<&mut [u8; GROUP]>, i: usize, raw: __m256i) {
            if let Some(out) = out {
                let at = 32 * (i % PAIRS);
                // SAFETY: `at + 32 <= GROUP`, so the bytes written are inside `out`;
                // VMOVDQU has no alignment requirement; AVX is enabled by this function.
                unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(at).cast(), raw) }
            }
        }
        // SAFETY: PCLMULQDQ, SSSE3, AVX2 and VPCLMULQDQ, which this function enables;
        // memory only through `load2` and `store2`.
        unsafe {
            let r = 0x0001_0203_0405_0607;
            let s = 0x0809_0A0B_0C0D_0E0F;
            let rev = _mm256_set_epi64x(r, s, r, s);
            let (low, high) = FOLD_8;
            let k = _mm256_set_epi64x(high as i64, low as i64, high as i64, low as i64);
            let mut pairs = [_mm256_set_epi64x(0, 0, 0, 0); PAIRS];
            let mut groups = chunks::<GROUP>(groups, out);
            if let Some((group, mut out)) = groups.next() {
                for (i, pair) in pairs.iter_mut().enumerate() {
                    let (raw, x) = load2(group, i, rev);
                    if COPY {
                        store2(&mut out, i, raw);
                    }
                    *pair = x;
                }
                // The register joins the first block, the low half of the first pair.
                let init = _mm256_set_epi64x(0, 0, i64::from(crc) << 48, 0);
                pairs[0] = _mm256_xor_si256(pairs[0], init);
            }
            for (group, mut out) in groups {
                for (i, pair) in pairs.iter_mut().enumerate() {
                    let (raw, x) = load2(group, i, rev);
                    if COPY {
                        store2(&mut out, i, raw);
                    }
                    let folded = _mm256_xor_si256(
                        _mm256_clmulepi64_epi128(*pair, k, 0x00),
                        _mm256_clmulepi64_epi128(*pair, k, 0x11),
                    );
                    *pair = _mm256_xor_si256(folded, x);
                }
            }
            let mut lanes = [_mm_setzero_si128(); LANES];
            for (i, pair) in pairs.iter().enumerate() {
                lanes[2 * i] = _mm256_castsi256_si128(*pair);
                lanes[2 * i + 1] = _mm256_extracti128_si256(*pair, 1);
            }
            lanes
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

    use super::{Split, chunks};
    use crate::crc16::folding::{FOLD_1, FOLD_8, LANE_FOLD, LANES, reduce as reduce_with};

    /// Bytes folded per step of the main loop: eight 16-byte lanes.
    const GROUP: usize = 16 * LANES;

    /// The one aarch64 kernel.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Kernel {
        /// PMULL (the `aes` target feature) and NEON.
        Pmull,
    }

    impl Kernel {
        #[inline(always)]
        pub(super) fn detect() -> Option<Self> {
            #[cfg(feature = "std")]
            let has = std::arch::is_aarch64_feature_detected!("neon")
                && std::arch::is_aarch64_feature_detected!("pmull");
            #[cfg(not(feature = "std"))]
            let has = cfg!(all(target_feature = "neon", target_feature = "aes"));
            if has { Some(Kernel::Pmull) } else { None }
        }

        #[cfg(test)]
        pub(super) fn all() -> impl Iterator<Item = Self> {
            Self::detect().into_iter()
        }
    }

    /// The 16 bytes at lane `i % N` of `bytes`, raw and as a 128-bit polynomial (the first
    /// byte in the highest bits).
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load<const N: usize>(bytes: &[u8; N], i: usize) -> (uint8x16_t, uint64x2_t) {
        let at = 16 * (i % (N / 16));
        // SAFETY: `at + 16 <= N`, so the bytes read are inside `bytes`; LD1 has no
        // alignment requirement; NEON is enabled by this function.
        unsafe {
            let raw = vld1q_u8(bytes.as_ptr().add(at));
            // Reverse the bytes of each half, then swap the halves.
            let rev = vrev64q_u8(raw);
            (raw, vreinterpretq_u64_u8(vextq_u8::<8>(rev, rev)))
        }
    }

    /// Stores 16 bytes to lane `i % N` of `out`, if there is an `out` (when copying).
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn store<const N: usize>(out: &mut Option<&mut [u8; N]>, i: usize, raw: uint8x16_t) {
        if let Some(out) = out {
            let at = 16 * (i % (N / 16));
            // SAFETY: `at + 16 <= N`, so the bytes written are inside `out`; ST1 has no
            // alignment requirement; NEON is enabled by this function.
            unsafe { vst1q_u8(out.as_mut_ptr().add(at), raw) }
        }
    }

    /// The 128-bit carry-less product of two 64-bit polynomials.
    #[inline]
    #[target_feature(enable = "neon,aes")]
    unsafe fn clmul(a: u64, b: u64) -> u128 {
        // SAFETY: PMULL is the `aes` feature, which this function enables.
        unsafe { vmull_p64(a, b) }
    }

    /// A 128-bit value as two 64-bit lanes, the low half in lane 0.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn as_vector(v: u128) -> uint64x2_t {
        let lanes = [v as u64, (v >> 64) as u64];
        // SAFETY: `lanes` is 16 readable bytes; NEON is enabled by this function.
        unsafe { vld1q_u64(lanes.as_ptr()) }
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

    /// Folds the whole 16-byte blocks of `src` into the register `crc`; with `COPY`, stores
    /// each block to the same offset of `dst` as well.
    ///
    /// # Safety
    /// The CPU must have NEON and PMULL (a [`super::Clmul`] proves it).
    #[target_feature(enable = "neon,aes")]
    pub(super) unsafe fn fold_blocks<const COPY: bool>(
        _kernel: Kernel,
        crc: u16,
        src: &[u8],
        dst: &mut [u8],
    ) -> u16 {
        let split = Split::new::<GROUP, COPY>(src, dst);
        if split.groups.is_empty() && split.blocks.is_empty() {
            return crc;
        }
        // SAFETY: the CPU has NEON and PMULL (this function's contract), the only features
        // used; memory is reached only through `load` and `store`, over arrays.
        unsafe {
            let init = as_vector(u128::from(crc) << 112);
            let mut blocks = chunks::<16>(split.blocks, split.blocks_out);
            let mut acc = if split.groups.is_empty() {
                let (block, mut out) = blocks.next().unwrap_or((&[0; 16], None));
                let (raw, x) = load(block, 0);
                if COPY {
                    store(&mut out, 0, raw);
                }
                veorq_u64(x, init)
            } else {
                let mut lanes = [init; LANES];
                let mut groups = chunks::<GROUP>(split.groups, split.groups_out);
                if let Some((group, mut out)) = groups.next() {
                    for (i, lane) in lanes.iter_mut().enumerate() {
                        let (raw, x) = load(group, i);
                        if COPY {
                            store(&mut out, i, raw);
                        }
                        *lane = if i == 0 { veorq_u64(x, init) } else { x };
                    }
                }
                for (group, mut out) in groups {
                    for (i, lane) in lanes.iter_mut().enumerate() {
                        let (raw, x) = load(group, i);
                        if COPY {
                            store(&mut out, i, raw);
                        }
                        *lane = veorq_u64(fold(*lane, FOLD_8), x);
                    }
                }
                let mut acc = lanes[LANES - 1];
                for (lane, &k) in lanes.iter().zip(&LANE_FOLD).take(LANES - 1) {
                    acc = veorq_u64(acc, fold(*lane, k));
                }
                acc
            };
            for (block, mut out) in blocks {
                let (raw, x) = load(block, 0);
                if COPY {
                    store(&mut out, 0, raw);
                }
                acc = veorq_u64(fold(acc, FOLD_1), x);
            }
            let acc =
                u128::from(vgetq_lane_u64::<0>(acc)) | (u128::from(vgetq_lane_u64::<1>(acc)) << 64);
            reduce_with(acc, |a, b| clmul(a, b))
        }
    }
}
