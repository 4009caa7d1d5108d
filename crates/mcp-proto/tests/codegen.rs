//! Keeps `src/gen/` in sync with the `.proto` files, in the style of rust-analyzer's
//! "sourcegen" tests: the code is regenerated in memory and compared with the committed files.
//!
//! `MCP_CODEGEN_WRITE=1 cargo test -p mcp-proto --test codegen` rewrites the committed files
//! instead of failing (that is what `cargo xtask codegen` runs). No `protoc` is involved:
//! `mcp-build`, the same generator users run in their build scripts, compiles the `.proto`
//! files with `protox` and generates the messages and the service stubs with `prost-build`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::{env, fs};

/// Every `.proto` file under `dir`, sorted so that the generated output is deterministic.
fn proto_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("read a proto directory") {
            let path = entry.expect("read a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The generated code, keyed by file name (`mcp.examples.v1.rs`, ...).
fn generate(proto_root: &Path) -> BTreeMap<String, String> {
    let files = proto_files(proto_root);
    assert!(
        !files.is_empty(),
        "no .proto files under {}",
        proto_root.display()
    );
    mcp_build::configure()
        // Users of the message types alone (benchmarks, fuzz targets) compile neither the
        // client nor the server.
        .client_mod_attribute("#[cfg(feature = \"client\")]")
        .server_mod_attribute("#[cfg(feature = \"server\")]")
        .generate(&files, &[proto_root])
        .unwrap_or_else(|err| panic!("{err}"))
}
#[test]
fn generated_code_is_up_to_date() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto_root = crate_dir.join("../../proto");
    let gen_dir = crate_dir.join("src/gen");
    let write = env::var_os("MCP_CODEGEN_WRITE").is_some_and(|v| v == "1");

    let expected = generate(&proto_root);
    assert!(
        expected.contains_key("mcp.examples.v1.rs"),
        "{:?}",
        expected.keys()
    );
    assert!(
        expected.contains_key("mcp.bench.v1.rs"),
        "{:?}",
        expected.keys()
    );

    let mut stale = Vec::new();
    for (name, code) in &expected {
        let path = gen_dir.join(name);
        if fs::read_to_string(&path).ok().as_deref() != Some(code.as_str()) {
            if write {
                fs::create_dir_all(&gen_dir).expect("create src/gen");
                fs::write(&path, code).expect("write generated code");
            }
            stale.push(name.clone());
        }
    }
    // A committed file for a package that no longer exists is stale too.
    for entry in fs::read_dir(&gen_dir).into_iter().flatten() {
        let entry = entry.expect("read src/gen");
        let name = entry.file_name().to_string_lossy().into_owned();
        if !expected.contains_key(&name) {
            if write {
                fs::remove_file(entry.path()).expect("remove stale generated file");
            }
            stale.push(name);
        }
    }

    if write {
        eprintln!("codegen: rewrote {stale:?}");
    } else {
        assert!(
            stale.is_empty(),
            "generated code in crates/mcp-proto/src/gen is stale: {stale:?}\n\
             run `MCP_CODEGEN_WRITE=1 cargo test -p mcp-proto --test codegen` (or `cargo xtask codegen`)"
        );
    }
}
