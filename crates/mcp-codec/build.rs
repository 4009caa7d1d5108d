//! Enables the VPCLMULQDQ kernel of the CRC (`cfg(mcp_codec_vpclmulqdq)`) when the compiler
//! is Rust 1.89 or later, where the `vpclmulqdq` and `avx2` target features and their
//! 256-bit intrinsics are stable. Older compilers (the MSRV is 1.85) build the crate without
//! it and use the PCLMULQDQ kernel.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=RUSTC");
    println!("cargo::rustc-check-cfg=cfg(mcp_codec_vpclmulqdq)");
    if rustc_minor().is_some_and(|minor| minor >= 89) {
        println!("cargo::rustc-cfg=mcp_codec_vpclmulqdq");
    }
}

/// The minor version of the compiler cargo builds with (`rustc 1.95.0 (...)` gives 95).
fn rustc_minor() -> Option<u32> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let version = String::from_utf8(out.stdout).ok()?;
    let mut parts = version.split_whitespace().nth(1)?.split('.');
    if parts.next()? != "1" {
        return None;
    }
    parts.next()?.parse().ok()
}
