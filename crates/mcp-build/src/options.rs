//! `mcp/options.proto`, which mcp-build provides so that users import it without copying.

use std::path::Path;

use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

/// The file users import.
pub(crate) const OPTIONS_FILE: &str = "mcp/options.proto";

/// Its text; the same file is in this crate's `proto/` directory for people to read.
const OPTIONS_SOURCE: &str = include_str!("../proto/mcp/options.proto");

/// The extension that names an rpc's wire method.
pub(crate) const METHOD_OPTION: &str = "mcp.method";

/// Files the compiler needs but nobody generates code for.
pub(crate) fn is_provided(name: &str) -> bool {
    name == OPTIONS_FILE || name.starts_with("google/protobuf/")
}

/// The user's include directories first (a file of theirs wins), then our options, then
/// the well-known Google files.
pub(crate) fn resolver(includes: &[impl AsRef<Path>]) -> ChainFileResolver {
    let mut resolver = ChainFileResolver::new();
    for include in includes {
        resolver.add(IncludeFileResolver::new(include.as_ref().to_owned()));
    }
    resolver.add(Options);
    resolver.add(GoogleFileResolver::new());
    resolver
}

struct Options;

impl FileResolver for Options {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == OPTIONS_FILE {
            File::from_source(name, OPTIONS_SOURCE)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}
