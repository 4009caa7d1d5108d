//! What must not compile: calling an rpc the service does not have, and calling one with
//! another rpc's request type. The expected compiler output is in `tests/ui/*.stderr`
//! (`TRYBUILD=overwrite cargo test -p mcp-build --test ui` rewrites it).

#[test]
fn misused_stubs_do_not_compile() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
