//! The CRC paths against the `crc` crate's one-byte table (a loop none of ours shares).
//!
//! Under Miri the exhaustive ranges shrink to what it can interpret in a few minutes.

use super::folding::*;
use super::*;

/// The reference: the crc crate's byte-at-a-time loop.
static REFERENCE: crc::Crc<u16, crc::Table<1>> =
    crc::Crc::<u16, crc::Table<1>>::new(&crc::CRC_16_IBM_3740);

fn reference(init: u16, bytes: &[u8]) -> u16 {
    let mut digest = REFERENCE.digest_with_initial(init);
    digest.update(bytes);
    digest.finalize()
}

/// Deterministic bytes with every value and no short period.
fn fill(out: &mut [u8], seed: u32) {
    let mut x = 0x9E37_79B9u32 ^ seed;
    for b in out.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = (x >> 7) as u8;
    }
}

/// The registers runs start from in the tests: the init value, zero, and a few with single
/// bits and mixed bits, so that both register bytes meet the first two bytes.
const INITS: [u16; 5] = [CRC_INIT, 0x0000, 0x1D0F, 0x8000, 0x0001];

/// The largest run of the exhaustive tests, and the alignment offsets tried for each.
const EXHAUSTIVE: usize = 1024;
const OFFSETS: usize = if cfg!(miri) { 2 } else { 16 };

/// Under Miri, which interprets every carry-less product bit by bit, a sample of lengths
/// that still reaches every path of a kernel: no block, one block and a tail, blocks
/// without a group, one and two groups with and without blocks after them, each tail.
const MIRI_LENGTHS: [usize; 19] = [
    0, 1, 15, 16, 17, 31, 47, 48, 63, 64, 100, 127, 128, 129, 143, 144, 255, 256, 271,
];

/// The lengths tried at every offset: all to [`EXHAUSTIVE`], or [`MIRI_LENGTHS`].
fn lengths() -> impl Iterator<Item = usize> {
    let all = if cfg!(miri) { 0..0 } else { 0..EXHAUSTIVE + 1 };
    let sample: &[usize] = if cfg!(miri) { &MIRI_LENGTHS } else { &[] };
    all.chain(sample.iter().copied())
}

/// The starting registers tried at every length (two under Miri).
fn inits() -> &'static [u16] {
    if cfg!(miri) { &INITS[..2] } else { &INITS }
}

/// Lengths past the exhaustive range: a frame's largest CRC run and its neighbours, and
/// lengths around the eight-lane loop's 128-byte steps.
const LARGE: [usize; 9] = [2047, 2048, 4096, 4100, 4111, 65_535, 65_539, 65_551, 70_000];

/// Runs `path` over every length to [`EXHAUSTIVE`] at every offset to [`OFFSETS`] and over
/// the [`LARGE`] lengths, from every register in [`INITS`].
fn check_path(name: &dyn core::fmt::Debug, path: impl Fn(u16, &[u8]) -> u16) {
    let mut data = [0u8; 70_000 + 16];
    fill(&mut data[..if cfg!(miri) { 300 } else { 70_016 }], 1);
    for len in lengths() {
        for offset in 0..OFFSETS {
            let run = &data[offset..offset + len];
            for &init in inits() {
                assert_eq!(
                    path(init, run),
                    reference(init, run),
                    "{name:?}: len {len} offset {offset} init {init:#06x}"
                );
            }
        }
    }
    if !cfg!(miri) {
        for len in LARGE {
            for offset in [0, 1, 8, 15] {
                let run = &data[offset..offset + len];
                for init in [CRC_INIT, 0x1D0F] {
                    assert_eq!(path(init, run), reference(init, run), "{name:?}: len {len}");
                }
            }
        }
    }
}

/// As [`check_path`] for a copying path: the copy must be exact, and nothing around it
/// may be touched.
fn check_copy_path(name: &dyn core::fmt::Debug, path: impl Fn(u16, &[u8], &mut [u8]) -> u16) {
    let mut data = [0u8; 4200];
    fill(&mut data[..if cfg!(miri) { 300 } else { 4200 }], 2);
    let mut out = [0u8; 4200 + 64];
    let lengths = lengths().chain(if cfg!(miri) { 0..0 } else { 4090..4100 });
    for len in lengths {
        for (src_offset, dst_offset) in (0..OFFSETS).map(|o| (o, (o * 7 + 3) % 16)) {
            let src = &data[src_offset..src_offset + len];
            for &init in &inits()[..2] {
                out.fill(0xAA);
                let crc = path(init, src, &mut out[dst_offset..dst_offset + len]);
                assert_eq!(crc, reference(init, src), "{name:?}: len {len}");
                assert_eq!(
                    &out[dst_offset..dst_offset + len],
                    src,
                    "{name:?}: len {len}"
                );
                // Around the copy: a stray store of a kernel would land within a block.
                assert!(out[..dst_offset].iter().all(|&b| b == 0xAA));
                let after = &out[dst_offset + len..dst_offset + len + 32];
                assert!(after.iter().all(|&b| b == 0xAA), "{name:?}: len {len}");
            }
        }
    }
}

// ---- The constants. ----

/// The carry-less product in software, bit by bit.
fn soft_clmul(a: u64, b: u64) -> u128 {
    (0..64)
        .filter(|i| (b >> i) & 1 == 1)
        .fold(0u128, |acc, i| acc ^ (u128::from(a) << i))
}

/// `x^n mod P` by the crc crate: CRC-16/XMODEM (the same polynomial, register 0) of a
/// message with a single bit is that bit's power times `x^16`, mod `P`.
fn xpow_by_crate(n: u32) -> u64 {
    if n < 16 {
        return 1 << n;
    }
    let e = (n - 16) as usize;
    let len = e / 8 + 1;
    let mut msg = [0u8; 256];
    msg[0] = 0x80 >> (8 * len - 1 - e);
    u64::from(crc::Crc::<u16>::new(&crc::CRC_16_XMODEM).checksum(&msg[..len]))
}

#[test]
fn folding_constants_are_powers_of_x_mod_p() {
    for n in 0..1300 {
        assert_eq!(xpow_mod(n), xpow_by_crate(n), "x^{n} mod P");
    }
    assert_eq!(FOLD_1, (xpow_by_crate(128), xpow_by_crate(192)));
    assert_eq!(FOLD_8, (xpow_by_crate(1024), xpow_by_crate(1088)));
    for (i, &k) in LANE_FOLD.iter().enumerate().take(LANES - 1) {
        let d = 128 * (LANES - 1 - i) as u32;
        assert_eq!(k, (xpow_by_crate(d), xpow_by_crate(d + 64)), "lane {i}");
    }
    assert_eq!((K80, K48), (xpow_by_crate(80), xpow_by_crate(48)));
    // For the record, the values the kernels multiply by.
    assert_eq!((FOLD_1, FOLD_8), ((0xAEFC, 0x650B), (0x36C4, 0x71C4)));
    assert_eq!(
        (K80, K48, MU48, POLY),
        (0xEB23, 0xAA51, 0x1_1130_3471, 0x1_1021)
    );
}

#[test]
fn barrett_constant_is_the_quotient_of_x48_by_p() {
    // floor(x^48 / P) * P + (x^48 mod P) = x^48, and the quotient has degree 48 - 16.
    assert_eq!(
        soft_clmul(MU48, POLY) ^ u128::from(xpow_mod(48)),
        1u128 << 48
    );
    assert_eq!(64 - MU48.leading_zeros(), 33);
}

// ---- The folding arithmetic, in software (fast under Miri). ----

/// The kernels' arithmetic on `u128`s with the software product: eight lanes folded by
/// 1024 bits, joined, then single blocks, then [`reduce`].
fn soft_fold(crc: u16, blocks: &[u8]) -> u16 {
    let fold = |a: u128, (low, high): (u64, u64)| {
        soft_clmul(a as u64, low) ^ soft_clmul((a >> 64) as u64, high)
    };
    let block = |i: usize| {
        let b: [u8; 16] = blocks[16 * i..16 * i + 16].try_into().unwrap();
        u128::from_be_bytes(b)
    };
    let n = blocks.len() / 16;
    let init = u128::from(crc) << 112;
    let (mut acc, mut next) = if n >= LANES {
        let mut lanes: [u128; LANES] = core::array::from_fn(block);
        lanes[0] ^= init;
        let mut next = LANES;
        while next + LANES <= n {
            for (i, lane) in lanes.iter_mut().enumerate() {
                *lane = fold(*lane, FOLD_8) ^ block(next + i);
            }
            next += LANES;
        }
        let joined = (0..LANES - 1).fold(lanes[LANES - 1], |acc, i| {
            acc ^ fold(lanes[i], LANE_FOLD[i])
        });
        (joined, next)
    } else {
        (block(0) ^ init, 1)
    };
    while next < n {
        acc = fold(acc, FOLD_1) ^ block(next);
        next += 1;
    }
    reduce(acc, soft_clmul)
}

#[test]
fn reduction_gives_the_register_of_one_block() {
    let mut data = [0u8; 16 * 64];
    fill(&mut data, 3);
    for block in data.chunks_exact(16) {
        let a = u128::from_be_bytes(block.try_into().unwrap());
        assert_eq!(reduce(a, soft_clmul), reference(0, block));
        for init in INITS {
            let with_init = a ^ (u128::from(init) << 112);
            assert_eq!(reduce(with_init, soft_clmul), reference(init, block));
        }
    }
    // The extremes of each step's bound.
    for a in [
        0,
        u128::MAX,
        1,
        1 << 127,
        u128::from(u64::MAX),
        u128::MAX << 64,
    ] {
        assert_eq!(reduce(a, soft_clmul), reference(0, &a.to_be_bytes()));
    }
}

#[test]
fn software_folding_matches_the_crate() {
    let mut data = [0u8; 16 * 40];
    fill(&mut data, 4);
    let blocks = if cfg!(miri) { 20 } else { 40 };
    for n in 1..=blocks {
        for init in INITS {
            let run = &data[..16 * n];
            assert_eq!(soft_fold(init, run), reference(init, run), "{n} blocks");
        }
    }
}

// ---- Each path forced, and the dispatch. ----

#[test]
fn table_path_matches_the_crate() {
    check_path(&"table", table_update);
    check_copy_path(&"table copy", table_copy);
}

/// Each folding kernel the CPU running the tests has, on its own, at every length (they
/// are used from `CLMUL_MIN` only).
///
/// On x86-64 under Miri, build with `RUSTFLAGS="-C target-feature=+pclmulqdq,+ssse3"` to
/// reach the PCLMULQDQ kernel (Miri detects no features at run time).
#[test]
fn clmul_paths_match_the_crate() {
    let tested = clmul::Clmul::all()
        .inspect(|&clmul| {
            note(format_args!("testing kernel {clmul:?}"));
            check_path(&clmul, |crc, bytes| clmul_update(clmul, crc, bytes));
            check_copy_path(&clmul, |crc, src, dst| clmul_copy(clmul, crc, src, dst));
        })
        .count();
    if tested == 0 {
        note(format_args!(
            "skipped: this CPU (or build) has no carry-less multiplication kernel"
        ));
    }
}

/// A note on stderr where there is one.
fn note(message: core::fmt::Arguments<'_>) {
    #[cfg(feature = "std")]
    std::eprintln!("{message}");
    #[cfg(not(feature = "std"))]
    let _ = message;
}

/// On the machines this project benchmarks on, a kernel must not be skipped silently: fail
/// when an x86-64 CPU advertises the instructions of a kernel that is not used.
#[cfg(all(target_arch = "x86_64", feature = "std", not(miri)))]
#[test]
fn every_kernel_the_cpu_has_is_tested() {
    use std::arch::is_x86_feature_detected as has;
    let sse = has!("pclmulqdq") && has!("ssse3");
    let avx2 = sse && has!("vpclmulqdq") && has!("avx2") && cfg!(mcp_codec_vpclmulqdq);
    assert_eq!(clmul::Clmul::detect().is_some(), sse);
    assert_eq!(
        clmul::Clmul::all().count(),
        usize::from(sse) + usize::from(avx2)
    );
}

/// Without `std`, the kernels are those the build enables
/// (`RUSTFLAGS="-C target-feature=+pclmulqdq,+ssse3"`, `+avx2,+vpclmulqdq` for the wider one).
#[cfg(all(target_arch = "x86_64", not(feature = "std")))]
#[test]
fn compile_time_features_pick_the_kernels() {
    let sse = cfg!(all(target_feature = "pclmulqdq", target_feature = "ssse3"));
    let avx2 = sse
        && cfg!(all(
            target_feature = "vpclmulqdq",
            target_feature = "avx2",
            mcp_codec_vpclmulqdq
        ));
    assert_eq!(clmul::Clmul::detect().is_some(), sse);
    assert_eq!(
        clmul::Clmul::all().count(),
        usize::from(sse) + usize::from(avx2)
    );
}

#[test]
fn dispatch_matches_the_crate() {
    check_path(&"crc_update", crc_update);
    check_copy_path(&"copy_with_crc", copy_with_crc);
    let mut data = [0u8; 3000];
    fill(&mut data, 5);
    for len in [
        0,
        1,
        15,
        16,
        17,
        CLMUL_MIN - 1,
        CLMUL_MIN,
        CLMUL_COPY_MIN,
        300,
        3000,
    ] {
        assert_eq!(checksum(&data[..len]), REFERENCE.checksum(&data[..len]));
    }
}

#[test]
fn register_is_the_checksum() {
    assert_eq!(crc_update(CRC_INIT, b"123456789"), 0x29B1);
    assert_eq!(checksum(b"123456789"), 0x29B1);
    assert_eq!(crc_update(CRC_INIT, b""), CRC_INIT);
}

/// A run fed in pieces (as the encoder feeds a frame: header, gathered fields, body, each
/// on the path its length picks) gives the register of the whole run.
#[test]
fn split_runs_give_the_register_of_the_whole() {
    let mut data = [0u8; 1200];
    fill(&mut data, 6);
    let data = &data[..if cfg!(miri) { 300 } else { 1200 }];
    let whole = reference(CRC_INIT, data);
    let step = if cfg!(miri) { 7 } else { 1 };
    for cut in (0..=data.len()).step_by(step) {
        let (a, b) = data.split_at(cut);
        assert_eq!(crc_update(crc_update(CRC_INIT, a), b), whole, "cut {cut}");
        let mut out = [0u8; 1200];
        let (out_a, out_b) = out[..data.len()].split_at_mut(cut);
        let crc = copy_with_crc(CRC_INIT, a, out_a);
        assert_eq!(copy_with_crc(crc, b, out_b), whole, "copy, cut {cut}");
    }
    // Three pieces, the middle one on either side of each switch to folding.
    for first in [0, 1, 5, 16, 33] {
        for middle in [
            CLMUL_MIN - 1,
            CLMUL_MIN,
            CLMUL_COPY_MIN - 1,
            CLMUL_COPY_MIN,
            129,
            255,
        ] {
            let (a, rest) = data.split_at(first);
            let (b, c) = rest.split_at(middle);
            let crc = crc_update(crc_update(crc_update(CRC_INIT, a), b), c);
            assert_eq!(crc, whole, "{first} + {middle} + rest");
            let mut out = [0u8; 1200];
            let crc = copy_with_crc(CRC_INIT, a, &mut out[..first]);
            let crc = copy_with_crc(crc, b, &mut out[first..first + middle]);
            let crc = copy_with_crc(crc, c, &mut out[first + middle..data.len()]);
            assert_eq!(crc, whole, "copy, {first} + {middle} + rest");
            assert_eq!(&out[..data.len()], data);
        }
    }
}

/// Every byte value through the one-step tail, at every position of every length.
#[test]
fn every_byte_value_in_every_tail_position() {
    for len in 1..16 {
        for pos in 0..len {
            for value in 0..=255u8 {
                let mut run = [0x5Au8; 15];
                run[pos] = value;
                let run = &run[..len];
                assert_eq!(table_update(0xBEEF, run), reference(0xBEEF, run));
            }
        }
    }
}
