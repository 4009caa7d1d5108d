//! The frame CRC: CRC-16/IBM-3740 (CRC-16/CCITT-FALSE), two ways.
//!
//! - A slice-by-16 table (the `crc` crate's `Table<16>`, 8 KiB) that works everywhere: every
//!   `no_std` target, every run shorter than [`CLMUL_MIN`], every tail of fewer than 16
//!   bytes.
//! - Folding by carry-less multiplication ([`clmul`]: PCLMULQDQ, or VPCLMULQDQ with AVX2,
//!   on x86-64; PMULL on aarch64) for runs of [`CLMUL_MIN`] bytes and more when the CPU has
//!   the instructions: with `std` they are detected at run time (once; the choice is
//!   cached), without it only when the build enables them
//!   (`-C target-feature=+pclmulqdq,+ssse3`, `+aes` on aarch64).
//!
//! Both give the same register for every input (tested against the `crc` crate for every
//! length to 1 KiB, every alignment, every starting register that matters and split runs),
//! so which one ran is never visible on the wire.
//!
//! # Folding, briefly
//! The CRC register after a message `M` (bits as polynomial coefficients over GF(2), the
//! first bit the highest power; the register `I` it started from added to the first 16) is
//! `M(x) * x^16 mod P`, `P = x^16 + x^12 + x^5 + 1` (0x1021). Reduction mod `P` is linear and
//! commutes with multiplication, so 16-byte blocks can be kept as 128-bit remainders and
//! moved forward over `d` further bits by `x^d`: a block `A = H * x^64 + L` becomes
//! `H * (x^(d+64) mod P) + L * (x^d mod P)`, two 64x16-bit carry-less products of under 80
//! bits that are added (XORed) to the block `d` bits later. Eight blocks are folded side by
//! side (`d` = 1024) to hide the multiplier's latency, then into one, and the last 128 bits
//! are reduced to the 16-bit register ([`folding::reduce`]). This is the non-reflected method of
//! Intel's "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ" (2009), written
//! for a 16-bit polynomial; every constant is derived below from `P` by `const fn`, and the
//! tests check them against the `crc` crate.

/// CRC-16/IBM-3740 (CRC-16/CCITT-FALSE) with a slice-by-16 table.
///
/// `Crc::<u16>::new` would pick the one-byte table, 8 to 12 times slower; the explicit
/// `Table<16>` costs 8 KiB of read-only data and keeps CRC off the critical path.
static CRC16: crc::Crc<u16, crc::Table<16>> =
    crc::Crc::<u16, crc::Table<16>>::new(&crc::CRC_16_IBM_3740);

/// The slice-by-16 table: `TABLE[k][x]` is the CRC register after the byte `x` followed by
/// `k` zero bytes, starting from a zero register.
type CrcTable = [[u16; 256]; 16];

/// Computes the frame CRC over `bytes` (CRC-16/IBM-3740, check value 0x29B1).
///
/// Runs of 48 bytes and more are folded by carry-less multiplication when the CPU has the
/// instructions (PCLMULQDQ on x86-64, PMULL on aarch64; detected at run time with the `std`
/// feature, enabled at compile time without it), shorter ones and every other target use a
/// slice-by-16 table; the result is the same either way.
#[inline]
pub fn checksum(bytes: &[u8]) -> u16 {
    crc_update(CRC_INIT, bytes)
}

/// The CRC register before any byte (the algorithm's init value).
pub(crate) const CRC_INIT: u16 = 0xFFFF;

/// Bytes from which a run is folded by carry-less multiplication (when the CPU can).
///
/// Below it the table is as fast or faster: folding has a fixed cost (the constants, four
/// dependent multiplications to reduce 128 bits to 16) that the table's ~0.23 ns a byte
/// pays off only past two blocks. Measured on the benchmark machine, fastest of many runs
/// (BENCHMARKS.md, section 4): at 32 bytes the table took 7.9 ns and folding 8.4 ns, at 48
/// bytes 11.4 ns and 9.8 ns, at 64 bytes 15.0 ns and 11.1 ns. Both paths share the table
/// step for a tail, so only whole blocks decide.
pub(crate) const CLMUL_MIN: usize = 48;

/// [`CLMUL_MIN`] for [`copy_with_crc`]: the table's copy hides behind its lookups, so
/// folding pays off a block later (encoding a 48-byte payload measured 18.1 ns before
/// folding existed and 19.2 ns folding; 64 bytes 21.5 and 21.1 ns).
pub(crate) const CLMUL_COPY_MIN: usize = 64;

/// Advances the CRC register over `bytes`.
///
/// For CRC-16/IBM-3740 the register *is* the checksum: the input and output are not
/// reflected and the final XOR is 0, so the register after some bytes, started from
/// `CRC_INIT`, is their checksum (`crc_update(CRC_INIT, b) == checksum(b)`), and a run can
/// be fed in pieces, each piece on whichever path its length picks.
#[inline]
pub(crate) fn crc_update(crc: u16, bytes: &[u8]) -> u16 {
    if bytes.len() >= CLMUL_MIN {
        return crc_update_long(crc, bytes);
    }
    table_update(crc, bytes)
}

/// [`crc_update`] from [`CLMUL_MIN`] bytes: folding if the CPU can, else the table.
///
/// Kept out of line where a kernel exists: merged into `crc_update`, the folding path's
/// registers made every short run pay for saving and restoring six of them (1 to 2 ns of
/// 7 to 12 at 20 to 36 bytes, measured).
#[cfg_attr(any(target_arch = "x86_64", target_arch = "aarch64"), inline(never))]
fn crc_update_long(crc: u16, bytes: &[u8]) -> u16 {
    match clmul::Clmul::detect() {
        Some(clmul) => clmul_update(clmul, crc, bytes),
        None => table_update(crc, bytes),
    }
}

/// Copies `src` to the front of `dst` and advances the CRC register over it, in one pass.
///
/// `dst` must be at least as long as `src`; callers size it exactly. (Were it shorter, only
/// its length would be copied and counted: wrong, but never a panic.)
#[inline]
pub(crate) fn copy_with_crc(crc: u16, src: &[u8], dst: &mut [u8]) -> u16 {
    if src.len() >= CLMUL_COPY_MIN {
        return copy_with_crc_long(crc, src, dst);
    }
    table_copy(crc, src, dst)
}

/// [`copy_with_crc`] from [`CLMUL_COPY_MIN`] bytes, out of line for the reason given at
/// [`crc_update_long`].
#[cfg_attr(any(target_arch = "x86_64", target_arch = "aarch64"), inline(never))]
fn copy_with_crc_long(crc: u16, src: &[u8], dst: &mut [u8]) -> u16 {
    match clmul::Clmul::detect() {
        Some(clmul) => clmul_copy(clmul, crc, src, dst),
        None => table_copy(crc, src, dst),
    }
}

/// The folding path over a whole run: whole 16-byte blocks folded, the tail by the table.
#[inline]
fn clmul_update(clmul: clmul::Clmul, crc: u16, bytes: &[u8]) -> u16 {
    let whole = bytes.len() & !15;
    let (blocks, tail) = bytes.split_at(whole);
    step_short(CRC16.table(), clmul.update(crc, blocks), tail)
}

/// The folding path of [`copy_with_crc`].
#[inline]
fn clmul_copy(clmul: clmul::Clmul, crc: u16, src: &[u8], dst: &mut [u8]) -> u16 {
    let len = src.len().min(dst.len());
    let whole = len & !15;
    let crc = clmul.copy_update(crc, &src[..whole], &mut dst[..whole]);
    let tail = &src[whole..len];
    dst[whole..len].copy_from_slice(tail);
    step_short(CRC16.table(), crc, tail)
}

/// One slice-by-16 step: the register advanced over a 16-byte block.
///
/// The crc crate's step, over its own `Table<16>`. Reading all 16 bytes as single bytes (as
/// the crc crate does) makes the loop bound by loads; taking the first 8 from one 8-byte
/// word by shifts moves half of that work to the ALUs.
#[inline(always)]
fn step16(table: &CrcTable, crc: u16, b: &[u8; 16]) -> u16 {
    let word = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let byte = |k: u32| usize::from((word >> (8 * k)) as u8);
    let [hi, lo] = crc.to_be_bytes();
    table[0][usize::from(b[15])]
        ^ table[1][usize::from(b[14])]
        ^ table[2][usize::from(b[13])]
        ^ table[3][usize::from(b[12])]
        ^ table[4][usize::from(b[11])]
        ^ table[5][usize::from(b[10])]
        ^ table[6][usize::from(b[9])]
        ^ table[7][usize::from(b[8])]
        ^ table[8][byte(7)]
        ^ table[9][byte(6)]
        ^ table[10][byte(5)]
        ^ table[11][byte(4)]
        ^ table[12][byte(3)]
        ^ table[13][byte(2)]
        ^ table[14][byte(1) ^ usize::from(lo)]
        ^ table[15][byte(0) ^ usize::from(hi)]
}

/// The register advanced over a run of fewer than 16 bytes, in one step.
///
/// The crc crate feeds such a run (the tail of every input) one byte at a time, and each of
/// those steps waits for the one before: about 7 cycles a byte, so up to 100 cycles for a
/// 15-byte tail. Small frames are mostly tails (a REQUEST with `traceparent` and `deadline`
/// had 24 tail bytes on its encoding side alone). The slice-by-16 table does any length
/// from 2 to 16 in one step (slice-by-k: byte `j` of a `k`-byte run goes through
/// `table[k - 1 - j]`, the register's two bytes through the first two), so the lookups of a
/// tail are independent of each other and only the final XOR waits for the register.
#[inline(always)]
fn step_short(table: &CrcTable, crc: u16, run: &[u8]) -> u16 {
    debug_assert!(run.len() <= 16);
    match run {
        [] => crc,
        [b] => table[0][usize::from((crc >> 8) as u8 ^ b)] ^ (crc << 8),
        [b0, b1, rest @ ..] => {
            let [hi, lo] = crc.to_be_bytes();
            // `& 15` keeps every index in bounds without a panic path; the run is at most
            // 16 bytes, so it changes nothing.
            let k = run.len();
            let mut acc = table[(k - 1) & 15][usize::from(b0 ^ hi)]
                ^ table[(k - 2) & 15][usize::from(b1 ^ lo)];
            for (j, &b) in rest.iter().enumerate() {
                acc ^= table[(k - 3 - j) & 15][usize::from(b)];
            }
            acc
        }
    }
}

/// The table path of [`crc_update`]: the fallback, and the path of every short run.
#[inline]
fn table_update(mut crc: u16, bytes: &[u8]) -> u16 {
    let table = CRC16.table();
    let mut blocks = bytes.chunks_exact(16);
    if bytes.len() >= LONG_RUN {
        // Long runs: the crc crate's own 16-byte step (every byte a load) measured a few
        // percent faster than `step16` when nothing else competes for the ALUs; whole
        // blocks only, so its byte-at-a-time tail is never used.
        let whole = bytes.len() - blocks.remainder().len();
        let mut digest = CRC16.digest_with_initial(crc);
        digest.update(bytes.get(..whole).unwrap_or(&[]));
        crc = digest.finalize();
    } else {
        for block in &mut blocks {
            // `chunks_exact(16)` makes the conversion infallible; the fallback only keeps
            // the code free of a panic path.
            crc = step16(table, crc, block.try_into().unwrap_or(&[0; 16]));
        }
    }
    step_short(table, crc, blocks.remainder())
}

/// Bytes from which [`table_update`] hands the whole blocks to the crc crate's loop.
const LONG_RUN: usize = 512;

/// The table path of [`copy_with_crc`].
///
/// Each 16-byte block is stored to the output in the same iteration that feeds the table
/// lookups: the copy then hides behind the lookups instead of costing a pass of its own. A
/// separate copy then CRC measured 0.89 of CRC-alone throughput at 4 KiB; this loop
/// measured 0.87 to 0.97 at 4 KiB (it varies from run to run) and 0.90 at 64 KiB
/// (BENCHMARKS.md).
#[inline]
fn table_copy(mut crc: u16, src: &[u8], dst: &mut [u8]) -> u16 {
    let table = CRC16.table();
    // Equal lengths, so that the two remainders below line up.
    let len = src.len().min(dst.len());
    let (src, dst) = (&src[..len], &mut dst[..len]);
    let mut blocks = src.chunks_exact(16);
    let mut out = dst.chunks_exact_mut(16);
    for (block, out) in (&mut blocks).zip(&mut out) {
        // `chunks_exact(16)` makes the conversion infallible; the fallback only keeps the
        // code free of a panic path.
        let b: &[u8; 16] = block.try_into().unwrap_or(&[0; 16]);
        out.copy_from_slice(b);
        crc = step16(table, crc, b);
    }
    let tail = blocks.remainder();
    out.into_remainder().copy_from_slice(tail);
    step_short(table, crc, tail)
}

/// The folding constants, derived from the polynomial, and the final reduction.
///
/// Unused on targets without a kernel (they keep the table only), but tested everywhere.
#[cfg_attr(
    not(any(test, target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
mod folding {
    /// The generator polynomial, its x^16 term included.
    const POLY_FULL: u64 = 0x1_1021;

    /// `x^n mod P`: `n` shifts of the register by one bit, the polynomial subtracted whenever
    /// the `x^16` term appears.
    pub(super) const fn xpow_mod(n: u32) -> u64 {
        let mut r: u64 = 1;
        let mut i = 0;
        while i < n {
            r <<= 1;
            if r & (1 << 16) != 0 {
                r ^= POLY_FULL;
            }
            i += 1;
        }
        r
    }

    /// `floor(x^n / P)` by long division (n <= 64).
    pub(super) const fn xpow_div(n: u32) -> u64 {
        let mut rem: u128 = 1 << n;
        let mut quotient: u64 = 0;
        let mut d = n;
        while d >= 16 {
            if (rem >> d) & 1 == 1 {
                rem ^= (POLY_FULL as u128) << (d - 16);
                quotient |= 1 << (d - 16);
            }
            d -= 1;
        }
        quotient
    }

    /// The pair of constants that moves a 128-bit block `A = H * x^64 + L` forward over `d`
    /// bits: `(x^d mod P, x^(d + 64) mod P)`, multiplied with `L` and `H` respectively.
    const fn fold_by(d: u32) -> (u64, u64) {
        (xpow_mod(d), xpow_mod(d + 64))
    }

    /// Bits between a block and the one folded into it in the main loop: eight lanes of 128.
    pub(crate) const LANES: usize = 8;
    /// Folds each of the eight lanes over the other seven (`d` = 1024).
    pub(crate) const FOLD_8: (u64, u64) = fold_by(128 * LANES as u32);
    /// Folds a block into the next one (`d` = 128).
    pub(crate) const FOLD_1: (u64, u64) = fold_by(128);
    /// Folds lane `i` of the eight into the last one (`d` = 128 * (7 - i)); the last entry is
    /// unused.
    pub(crate) const LANE_FOLD: [(u64, u64); LANES] = {
        let mut k = [(0, 0); LANES];
        let mut i = 0;
        while i < LANES - 1 {
            k[i] = fold_by(128 * (LANES - 1 - i) as u32);
            i += 1;
        }
        k
    };
    /// `x^80 mod P`: multiplies the high half `H` of the last block in [`reduce`].
    pub(crate) const K80: u64 = xpow_mod(80);
    /// `x^48 mod P`: folds bits 48..80 onto bits 0..48 in [`reduce`].
    pub(crate) const K48: u64 = xpow_mod(48);
    /// `floor(x^48 / P)`, the Barrett constant for remainders of values under 48 bits.
    pub(crate) const MU48: u64 = xpow_div(48);
    /// The polynomial, for the last step of [`reduce`].
    pub(crate) const POLY: u64 = POLY_FULL;

    /// The CRC register from the last folded block `a`: `a * x^16 mod P`, with `clmul` the
    /// 64x64 -> 128-bit carry-less product.
    ///
    /// Three steps, each keeping the value congruent mod `P` and making it shorter:
    /// 1. `a * x^16 = H * x^80 + L * x^16`, and `H * x^80 = H * (x^80 mod P)`: under 80 bits.
    /// 2. `B = B1 * x^48 + B0` (`B1` under 32 bits), `B1 * (x^48 mod P) + B0`: under 48 bits.
    /// 3. Barrett (exact over GF(2) for a dividend `C` under 48 bits): the quotient
    ///    `q = floor(C / P) = floor(floor(C / x^16) * floor(x^48 / P) / x^32)`, and the
    ///    remainder `C - q * P`, whose bits from 16 up cancel.
    ///
    /// The aarch64 kernel calls this with PMULL; the x86-64 kernel does the same steps in SSE
    /// registers (`clmul::x86::reduce`); the tests run it with a software product.
    #[cfg_attr(not(any(test, target_arch = "aarch64")), allow(dead_code))]
    #[inline(always)]
    pub(crate) fn reduce(a: u128, clmul: impl Fn(u64, u64) -> u128) -> u16 {
        let b = clmul((a >> 64) as u64, K80) ^ (u128::from(a as u64) << 16);
        let c = clmul((b >> 48) as u64, K48) ^ (b & 0xFFFF_FFFF_FFFF);
        let q = (clmul((c >> 16) as u64, MU48) >> 32) as u64;
        (c ^ clmul(q, POLY)) as u16
    }
}

#[allow(unsafe_code)]
mod clmul;

#[cfg(test)]
mod tests;
