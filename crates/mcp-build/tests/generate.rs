//! What `mcp_build` generates from a user's protos, and what it refuses (with an error, not
//! a panic or code that fails to compile later).

use std::path::{Path, PathBuf};

use mcp_build::Error;

fn protos() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protos")
}

fn generate(file: &str) -> Result<std::collections::BTreeMap<String, String>, Error> {
    let root = protos();
    mcp_build::configure().generate(&[root.join(file)], &[root])
}

#[test]
fn default_and_renamed_wire_names() {
    let code = generate("user/v1/user.proto").expect("generates");
    // One file per package, named after it; nothing for the imported options.
    assert_eq!(code.keys().collect::<Vec<_>>(), ["user.v1.rs"]);
    let code = &code["user.v1.rs"];
    for expected in [
        "pub struct UserServiceClient<",
        "pub trait UserService: Send + Sync + 'static",
        "pub fn mount<S: UserService>(",
        "pub async fn get(",
        "pub async fn put_with(",
        // `package.Service/Method` unless the option names one.
        r#"self.client.call("user.v1.UserService/Get", request)"#,
        r#"self.client.call("user.put", request)"#,
        r#"pub const METHODS: &[&str] = &["user.v1.UserService/Get", "user.put"];"#,
        // The proto's comments become the docs.
        "/// Reads one user.",
    ] {
        assert!(code.contains(expected), "missing {expected:?} in\n{code}");
    }
    assert!(
        !code.contains("#[cfg("),
        "no module attributes unless asked"
    );
}

#[test]
fn client_or_server_alone_and_module_attributes() {
    let root = protos();
    let file = [root.join("user/v1/user.proto")];
    let client_only = mcp_build::configure()
        .build_server(false)
        .client_mod_attribute("#[cfg(feature = \"client\")]")
        .generate(&file, &[&root])
        .expect("generates");
    let code = &client_only["user.v1.rs"];
    assert!(
        code.contains("#[cfg(feature = \"client\")]\npub mod user_service_client"),
        "{code}"
    );
    assert!(!code.contains("user_service_server"), "{code}");

    let server_only = mcp_build::configure()
        .build_client(false)
        .generate(&file, &[&root])
        .expect("generates");
    let code = &server_only["user.v1.rs"];
    assert!(code.contains("pub mod user_service_server"), "{code}");
    assert!(!code.contains("user_service_client"), "{code}");
}

#[test]
fn compile_writes_one_file_per_package() {
    let out = std::env::temp_dir().join(format!("mcp-build-test-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("temp dir");
    let root = protos();
    mcp_build::configure()
        .out_dir(&out)
        .compile(&[root.join("user/v1/user.proto")], &[&root])
        .expect("compiles");
    let written = std::fs::read_to_string(out.join("user.v1.rs")).expect("written");
    assert!(
        written.contains("pub struct UserServiceClient<"),
        "{written}"
    );
    std::fs::remove_dir_all(&out).expect("clean up");
}

/// The error for one of the bad protos, as text.
fn refusal(file: &str) -> String {
    match generate(file) {
        Err(err @ Error::Service { .. }) => err.to_string(),
        other => panic!("{file}: expected Error::Service, got {other:?}"),
    }
}

#[test]
fn streaming_rpcs_are_refused() {
    let err = refusal("bad/streaming.proto");
    assert!(
        err.starts_with("bad.S.Watch: streaming rpcs are not supported"),
        "{err}"
    );
}

#[test]
fn names_the_server_cannot_route_are_refused() {
    let err = refusal("bad/reserved.proto");
    assert!(err.contains("\"$subscribe\" starts with `$`"), "{err}");
    let err = refusal("bad/empty_name.proto");
    assert!(err.contains("must be 1 to 255 bytes"), "{err}");
    let err = refusal("bad/twice.proto");
    assert!(
        err.starts_with("bad.S.B: the method name \"same\" is used by another rpc of bad.S"),
        "{err}"
    );
}

#[test]
fn rpcs_whose_client_methods_clash_are_refused() {
    // `Get` has a `get_with`, which `GetWith` would be too.
    let err = refusal("bad/clash.proto");
    assert!(
        err.starts_with("bad.S.GetWith: its client method `get_with` clashes"),
        "{err}"
    );
}

#[test]
fn a_missing_or_broken_proto_is_a_proto_error() {
    let root = protos();
    let err = mcp_build::configure()
        .generate(&[root.join("nowhere.proto")], &[&root])
        .expect_err("no such file");
    assert!(matches!(err, Error::Proto(_)), "{err:?}");
}

#[test]
fn compile_outside_a_build_script_needs_an_out_dir() {
    // SAFETY of the test: no other test of this binary reads OUT_DIR (cargo does not set it
    // for integration tests).
    assert!(std::env::var_os("OUT_DIR").is_none());
    let root = protos();
    let err = mcp_build::configure()
        .compile(&[root.join("user/v1/user.proto")], &[&root])
        .expect_err("no OUT_DIR");
    assert!(matches!(err, Error::NoOutDir), "{err:?}");
}
