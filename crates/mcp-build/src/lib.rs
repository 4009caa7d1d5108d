//! Code generation for mcp-rs services, for build scripts: like `tonic-build`, without
//! `protoc`.
//!
//! From `.proto` files this writes the prost message types (which also derive serde, so the
//! same values travel as JSON and as Protobuf) and, for every `service`:
//!
//! - a `<service>_client` module with `<Service>Client<F>`: one typed async method per rpc
//!   over an `mcp_client::Client<F>` (plus a `<rpc>_with` variant taking `CallOptions`), for
//!   any format `F` that carries the request and answer types;
//! - a `<service>_server` module with the `<Service>` trait (one method per rpc) and
//!   `mount(router, service)`, which routes every rpc on an `mcp_server::Router`. A mounted
//!   service answers JSON and Protobuf requests, each in its own format.
//!
//! The method on the wire is `package.Service/Method` unless the rpc names one with the
//! `(mcp.method)` option (docs/protocol.md, "Method names of generated services"):
//!
//! ```proto
//! import "mcp/options.proto"; // provided by mcp-build, nothing to copy
//!
//! service UserService {
//!   rpc Get(GetUser) returns (UserUpdate);                                   // user.v1.UserService/Get
//!   rpc Put(UserUpdate) returns (UserUpdate) { option (mcp.method) = "user.put"; }
//! }
//! ```
//!
//! In `build.rs`:
//!
//! ```no_run
//! fn main() -> Result<(), mcp_build::Error> {
//!     mcp_build::configure().compile(&["proto/user/v1/user.proto"], &["proto"])
//! }
//! ```
//!
//! and in the crate, one `include!` per proto package (the file is named after it):
//!
//! ```ignore
//! pub mod user {
//!     include!(concat!(env!("OUT_DIR"), "/user.v1.rs"));
//! }
//! ```
//!
//! The generated code names `::prost`, `::serde` (with `derive`), `::mcp_client` (the client
//! modules) and `::mcp_server` and `::mcp_format` (the server modules): the crate including it
//! depends on those. Streaming rpcs have no meaning in MCP and are refused with an
//! [`Error`], as are wire names the server could not route.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::{env, fs, io};

mod options;
mod service;

/// What went wrong while generating code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `.proto` file could not be read or compiled (protox's message names the file and
    /// the line).
    #[error(transparent)]
    Proto(Box<protox::Error>),
    /// A service cannot be generated as written: a streaming rpc, a wire name the server
    /// could not route, two rpcs with one wire or Rust name.
    #[error("{rpc}: {reason}")]
    Service {
        /// The rpc, as `package.Service.Method`.
        rpc: String,
        /// Why it cannot be generated.
        reason: String,
    },
    /// prost-build refused the descriptors.
    #[error("generating code: {0}")]
    Generate(io::Error),
    /// [`Builder::compile`] outside a build script without [`Builder::out_dir`].
    #[error("OUT_DIR is not set: call compile from build.rs, or set Builder::out_dir")]
    NoOutDir,
    /// Writing a generated file failed.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl From<protox::Error> for Error {
    fn from(err: protox::Error) -> Self {
        Error::Proto(Box::new(err))
    }
}

/// A [`Builder`] with the defaults: clients and servers for every service.
pub fn configure() -> Builder {
    Builder {
        build_client: true,
        build_server: true,
        client_mod_attributes: Vec::new(),
        server_mod_attributes: Vec::new(),
        out_dir: None,
    }
}

/// What to generate and where; made by [`configure`].
#[derive(Debug, Clone)]
pub struct Builder {
    build_client: bool,
    build_server: bool,
    client_mod_attributes: Vec<String>,
    server_mod_attributes: Vec<String>,
    out_dir: Option<PathBuf>,
}

impl Builder {
    /// Whether to generate the `<service>_client` modules (default: yes).
    pub fn build_client(mut self, yes: bool) -> Self {
        self.build_client = yes;
        self
    }

    /// Whether to generate the `<service>_server` modules (default: yes).
    pub fn build_server(mut self, yes: bool) -> Self {
        self.build_server = yes;
        self
    }

    /// An attribute put on every client module, such as `#[cfg(feature = "client")]`, so
    /// that a crate can offer the clients without making every user compile mcp-client.
    pub fn client_mod_attribute(mut self, attribute: impl Into<String>) -> Self {
        self.client_mod_attributes.push(attribute.into());
        self
    }

    /// An attribute put on every server module, such as `#[cfg(feature = "server")]`.
    pub fn server_mod_attribute(mut self, attribute: impl Into<String>) -> Self {
        self.server_mod_attributes.push(attribute.into());
        self
    }

    /// Where [`Builder::compile`] writes (default: `OUT_DIR`, which cargo sets for build
    /// scripts).
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Generates the code for `protos` (found under the `includes` directories) and writes
    /// one `<package>.rs` per proto package into the output directory. In a build script it
    /// also tells cargo to run again when one of the files changes.
    pub fn compile(
        self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<(), Error> {
        let out_dir = match &self.out_dir {
            Some(dir) => dir.clone(),
            None => env::var_os("OUT_DIR")
                .map(PathBuf::from)
                .ok_or(Error::NoOutDir)?,
        };
        let generated = self.generate(protos, includes)?;
        if env::var_os("CARGO").is_some() && env::var_os("OUT_DIR").is_some() {
            for proto in protos {
                println!("cargo:rerun-if-changed={}", proto.as_ref().display());
            }
            for include in includes {
                println!("cargo:rerun-if-changed={}", include.as_ref().display());
            }
        }
        for (name, code) in generated {
            let path = out_dir.join(name);
            fs::write(&path, code).map_err(|source| Error::Write { path, source })?;
        }
        Ok(())
    }

    /// Generates the code for `protos` without writing it: file name (`<package>.rs`) to
    /// code. This is what [`Builder::compile`] writes; mcp-rs's own committed code is
    /// checked against it.
    pub fn generate(
        self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<BTreeMap<String, String>, Error> {
        let mut compiler = protox::Compiler::with_file_resolver(options::resolver(includes));
        compiler.include_imports(true).include_source_info(true);
        compiler.open_files(protos)?;
        let wire_names = service::wire_names(&compiler.descriptor_pool())?;

        let requests = compiler
            .file_descriptor_set()
            .file
            .into_iter()
            // Descriptors and our options are for the compiler; nothing to generate.
            .filter(|file| !options::is_provided(file.name()))
            .map(|file| {
                let module = prost_build::Module::from_protobuf_package_name(file.package());
                (module, file)
            })
            .collect::<Vec<_>>();
        let file_names: HashMap<_, _> = requests
            .iter()
            .map(|(module, _)| (module.clone(), module.to_file_name_or("_")))
            .collect();

        let generator = service::Generator::new(
            wire_names,
            self.build_client.then_some(self.client_mod_attributes),
            self.build_server.then_some(self.server_mod_attributes),
        );
        let problems = generator.problems();
        let mut config = prost_build::Config::new();
        config
            // The same values travel as JSON and as Protobuf, so every type is also serde-able.
            .type_attribute(".", "#[derive(::serde::Serialize, ::serde::Deserialize)]")
            // JSON that leaves out a field means the field's default, as in Protobuf.
            .message_attribute(".", "#[serde(default)]")
            .service_generator(Box::new(generator));
        let modules = config.generate(requests).map_err(Error::Generate)?;
        if let Some(problem) = problems.take() {
            return Err(problem);
        }
        Ok(modules
            .into_iter()
            .filter_map(|(module, code)| Some((file_names.get(&module)?.clone(), code)))
            .collect())
    }
}

// The README's Rust blocks, compiled (and run unless marked otherwise) as doctests of this
// crate, whose dev-dependencies are the whole stack: an example that no longer compiles
// fails `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
