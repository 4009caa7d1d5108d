//! The service generator prost-build calls once per `service`: a typed client over
//! `mcp_client::Client` and a trait plus `mount` for `mcp_server::Router`.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::rc::Rc;

use prost_build::{Method, Service, ServiceGenerator};
use protox::prost_reflect::DescriptorPool;

use crate::Error;
use crate::options::METHOD_OPTION;

/// Methods the client struct has besides the rpcs; an rpc may not take their names.
const CLIENT_METHODS: &[&str] = &["new", "client"];

/// The wire name of every rpc, keyed by `package.Service.Method`: the `(mcp.method)`
/// option's, else `package.Service/Method`. Refuses what could not be served: streaming
/// rpcs (an MCP call is one request and one answer), names the router refuses (empty,
/// longer than 255 bytes, starting with `$`: docs/protocol.md section 4.1), and two rpcs of
/// one service with one name (the second route would replace the first).
pub(crate) fn wire_names(pool: &DescriptorPool) -> Result<HashMap<String, String>, Error> {
    let option = pool.get_extension_by_name(METHOD_OPTION);
    let mut names = HashMap::new();
    for service in pool.services() {
        let mut taken = HashSet::new();
        for method in service.methods() {
            let refuse = |reason: String| Error::Service {
                rpc: method.full_name().to_owned(),
                reason,
            };
            if method.is_client_streaming() || method.is_server_streaming() {
                return Err(refuse(
                    "streaming rpcs are not supported: an MCP call is one request and one answer"
                        .into(),
                ));
            }
            let options = method.options();
            let named = option
                .as_ref()
                .filter(|option| options.has_extension(option))
                .map(|option| options.get_extension(option).as_str().map(str::to_owned));
            let wire = match named {
                Some(Some(name)) => name,
                Some(None) => return Err(refuse("(mcp.method) must be a string".into())),
                None => default_wire_name(service.package_name(), service.name(), method.name()),
            };
            if wire.is_empty() || wire.len() > 255 {
                return Err(refuse(format!(
                    "the method name {wire:?} must be 1 to 255 bytes (docs/protocol.md section 4.1)"
                )));
            }
            if wire.starts_with('$') {
                return Err(refuse(format!(
                    "the method name {wire:?} starts with `$`, which is reserved for the server"
                )));
            }
            if !taken.insert(wire.clone()) {
                return Err(refuse(format!(
                    "the method name {wire:?} is used by another rpc of {}",
                    service.full_name()
                )));
            }
            names.insert(method.full_name().to_owned(), wire);
        }
    }
    Ok(names)
}

/// `package.Service/Method`, or `Service/Method` outside a package.
fn default_wire_name(package: &str, service: &str, method: &str) -> String {
    if package.is_empty() {
        format!("{service}/{method}")
    } else {
        format!("{package}.{service}/{method}")
    }
}

/// What prost-build calls for each service.
pub(crate) struct Generator {
    wire_names: HashMap<String, String>,
    /// The client modules' attributes, or `None` for no clients.
    client: Option<Vec<String>>,
    /// The server modules' attributes, or `None` for no servers.
    server: Option<Vec<String>>,
    /// The first problem met; prost-build's generator cannot return errors.
    problem: Rc<Cell<Option<Error>>>,
}

impl Generator {
    pub(crate) fn new(
        wire_names: HashMap<String, String>,
        client: Option<Vec<String>>,
        server: Option<Vec<String>>,
    ) -> Self {
        Generator {
            wire_names,
            client,
            server,
            problem: Rc::default(),
        }
    }

    /// Where a problem met while generating is left, to be taken after generation.
    pub(crate) fn problems(&self) -> Rc<Cell<Option<Error>>> {
        Rc::clone(&self.problem)
    }

    fn refuse(&self, rpc: String, reason: String) {
        let first = self.problem.take();
        self.problem
            .set(Some(first.unwrap_or(Error::Service { rpc, reason })));
    }
}

/// One rpc as the templates need it.
struct Rpc<'a> {
    method: &'a Method,
    wire: &'a str,
    input: String,
    output: String,
}

impl ServiceGenerator for Generator {
    fn generate(&mut self, service: Service, buf: &mut String) {
        let full_service = if service.package.is_empty() {
            service.proto_name.clone()
        } else {
            format!("{}.{}", service.package, service.proto_name)
        };
        let mut rpcs = Vec::new();
        let mut rust_names: HashSet<String> =
            CLIENT_METHODS.iter().map(|m| (*m).to_owned()).collect();
        for method in &service.methods {
            let rpc = format!("{full_service}.{}", method.proto_name);
            let Some(wire) = self.wire_names.get(&rpc) else {
                self.refuse(rpc, "not found in the compiled descriptors".into());
                return;
            };
            for name in [method.name.clone(), format!("{}_with", method.name)] {
                if !rust_names.insert(name.clone()) {
                    self.refuse(
                        rpc.clone(),
                        format!(
                            "its client method `{name}` clashes with another method of the client"
                        ),
                    );
                    return;
                }
            }
            rpcs.push(Rpc {
                method,
                wire,
                input: type_path(&method.input_type),
                output: type_path(&method.output_type),
            });
        }
        let module = snake_case(&service.name);
        if let Some(attributes) = &self.client {
            client(buf, &service, &full_service, &module, attributes, &rpcs);
        }
        if let Some(attributes) = &self.server {
            server(buf, &service, &full_service, &module, attributes, &rpcs);
        }
    }
}

/// A message type as seen from the service's modules, one level below the package's.
fn type_path(rust_type: &str) -> String {
    if rust_type.starts_with("::") || rust_type.starts_with('(') {
        rust_type.to_owned()
    } else {
        format!("super::{rust_type}")
    }
}

/// `UserService` -> `user_service`, `HTTPGateway` -> `http_gateway`.
fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let after_lower =
                i > 0 && (chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit());
            let acronym_end = i > 0
                && chars[i - 1].is_ascii_uppercase()
                && chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if after_lower || acronym_end {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The proto's comments as doc lines (prost-build drops plain comments when formatting).
fn doc_comments(buf: &mut String, lines: &[String]) {
    for line in lines {
        let _ = writeln!(buf, "///{}", line.replace('\t', "    "));
    }
}

fn attributes(buf: &mut String, attributes: &[String]) {
    for attribute in attributes {
        let _ = writeln!(buf, "{attribute}");
    }
}

fn client(
    buf: &mut String,
    service: &Service,
    full_service: &str,
    module: &str,
    attrs: &[String],
    rpcs: &[Rpc<'_>],
) {
    let name = format!("{}Client", service.name);
    let _ = writeln!(buf, "/// The typed client of `{full_service}`.");
    attributes(buf, attrs);
    let _ = writeln!(buf, "pub mod {module}_client {{");
    doc_comments(buf, &service.comments.leading);
    if !service.comments.leading.is_empty() {
        buf.push_str("///\n");
    }
    let _ = writeln!(
        buf,
        "/// A client of `{full_service}`: one method per rpc, each a call over the wrapped
/// [`mcp_client::Client`] in its format `F` (JSON unless the client was built with another).
/// A method compiles only for a format that carries its request and answer. Cheap to
/// clone; clones share the client's connections.
#[derive(Debug, Clone)]
pub struct {name}<F: ::mcp_client::Format = ::mcp_client::DefaultFormat> {{
    client: ::mcp_client::Client<F>,
}}

impl<F: ::mcp_client::Format> {name}<F> {{
    /// Calls `{full_service}` through `client`, in its format.
    pub fn new(client: ::mcp_client::Client<F>) -> Self {{
        Self {{ client }}
    }}

    /// The client underneath, for what the rpcs do not cover (raw calls, pushes, another
    /// format with `with_format`).
    pub fn client(&self) -> &::mcp_client::Client<F> {{
        &self.client
    }}"
    );
    for rpc in rpcs {
        let (method, wire, input, output) = (&rpc.method.name, rpc.wire, &rpc.input, &rpc.output);
        buf.push('\n');
        doc_comments(buf, &rpc.method.comments.leading);
        if !rpc.method.comments.leading.is_empty() {
            buf.push_str("///\n");
        }
        let _ = writeln!(
            buf,
            "/// Calls `{wire}`.
    pub async fn {method}(&self, request: &{input}) -> ::core::result::Result<{output}, ::mcp_client::Error>
    where
        F: ::mcp_client::Encode<{input}> + ::mcp_client::Decode<{output}>,
    {{
        self.client.call({wire:?}, request).await
    }}

    /// [`Self::{method}`] with options for this call (deadline, idempotency, metadata).
    pub async fn {method}_with(
        &self,
        request: &{input},
        options: ::mcp_client::CallOptions,
    ) -> ::core::result::Result<{output}, ::mcp_client::Error>
    where
        F: ::mcp_client::Encode<{input}> + ::mcp_client::Decode<{output}>,
    {{
        self.client.call_with({wire:?}, request, options).await
    }}"
        );
    }
    buf.push_str("}\n}\n");
}

fn server(
    buf: &mut String,
    service: &Service,
    full_service: &str,
    module: &str,
    attrs: &[String],
    rpcs: &[Rpc<'_>],
) {
    let trait_name = &service.name;
    let _ = writeln!(
        buf,
        "/// The server side of `{full_service}`: the trait to implement and [`{module}_server::mount`]."
    );
    attributes(buf, attrs);
    let _ = writeln!(buf, "pub mod {module}_server {{");
    let wires: Vec<String> = rpcs.iter().map(|rpc| format!("{:?}", rpc.wire)).collect();
    let _ = writeln!(
        buf,
        "/// The wire names of the rpcs, in the order of the `.proto`.
pub const METHODS: &[&str] = &[{}];
",
        wires.join(", ")
    );
    doc_comments(buf, &service.comments.leading);
    if !service.comments.leading.is_empty() {
        buf.push_str("///\n");
    }
    let _ = writeln!(
        buf,
        "/// What a server of `{full_service}` implements, one method per rpc; [`mount`] routes
/// them. A method's `Err` is answered ERROR with the [`Status`](::mcp_server::Status)'s code.
pub trait {trait_name}: Send + Sync + 'static {{"
    );
    for rpc in rpcs {
        let (method, wire, input, output) = (&rpc.method.name, rpc.wire, &rpc.input, &rpc.output);
        doc_comments(buf, &rpc.method.comments.leading);
        if !rpc.method.comments.leading.is_empty() {
            buf.push_str("///\n");
        }
        let _ = writeln!(
            buf,
            "/// Answers `{wire}`.
    fn {method}(
        &self,
        ctx: ::mcp_server::RequestContext,
        request: {input},
    ) -> impl ::core::future::Future<Output = ::core::result::Result<{output}, ::mcp_server::Status>> + Send;"
        );
    }
    buf.push_str("}\n\n");
    let _ = writeln!(
        buf,
        "/// Routes every rpc of `{full_service}` on `router` to `service`.
///
/// Each request is answered in its own format, JSON or Protobuf; another format is answered
/// ERROR 3 and a body that is not the rpc's request ERROR 1.
///
/// # Panics
/// As [`Router::route_raw`](::mcp_server::Router::route_raw), when `router` already routes
/// one of [`METHODS`].
pub fn mount<S: {trait_name}>(router: ::mcp_server::Router, service: S) -> ::mcp_server::Router {{
    let service = ::std::sync::Arc::new(service);"
    );
    for rpc in rpcs {
        let (method, wire, input) = (&rpc.method.name, rpc.wire, &rpc.input);
        let _ = writeln!(
            buf,
            "    let router = {{
        let service = ::std::sync::Arc::clone(&service);
        router.route_raw({wire:?}, move |ctx, body| {{
            let service = ::std::sync::Arc::clone(&service);
            async move {{
                let format = ctx.format();
                let request: {input} = decode(format, &body)?;
                let response = service.{method}(ctx, request).await?;
                encode(format, &response)
            }}
        }})
    }};"
        );
    }
    if rpcs.is_empty() {
        // Nothing to route: the service is only kept from an unused-variable warning.
        buf.push_str("    let _ = service;\n");
    }
    buf.push_str(
        "    router
}

/// A request body in the format its frame names.
fn decode<T>(format: ::mcp_format::FormatId, body: &[u8]) -> ::core::result::Result<T, ::mcp_server::Status>
where
    ::mcp_format::Json: ::mcp_format::Decode<T>,
    ::mcp_format::Protobuf: ::mcp_format::Decode<T>,
{
    use ::mcp_format::Decode as _;
    match format {
        ::mcp_format::FormatId::JSON => Ok(::mcp_format::Json.decode(body)?),
        ::mcp_format::FormatId::PROTOBUF => Ok(::mcp_format::Protobuf.decode(body)?),
        other => Err(::mcp_server::Status::unsupported_format(format!(
            \"this service speaks json (1) and protobuf (2), not {other}\"
        ))),
    }
}

/// An answer in the request's format (which [`decode`] accepted).
fn encode<T>(format: ::mcp_format::FormatId, value: &T) -> ::core::result::Result<::mcp_server::Reply, ::mcp_server::Status>
where
    ::mcp_format::Json: ::mcp_format::Encode<T>,
    ::mcp_format::Protobuf: ::mcp_format::Encode<T>,
{
    use ::mcp_format::Encode as _;
    // A `BytesMut`, named by inference so that the including crate needs no `bytes`.
    let mut buf = ::core::default::Default::default();
    let body = if format == ::mcp_format::FormatId::PROTOBUF {
        ::mcp_format::Protobuf.encode_to_bytes(value, &mut buf)?
    } else {
        ::mcp_format::Json.encode_to_bytes(value, &mut buf)?
    };
    Ok(::mcp_server::Reply::new(body))
}
}
",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_of_service_names() {
        assert_eq!(snake_case("UserService"), "user_service");
        assert_eq!(snake_case("HTTPGateway"), "http_gateway");
        assert_eq!(snake_case("V2Api"), "v2_api");
        assert_eq!(snake_case("Echo"), "echo");
    }

    #[test]
    fn default_wire_names() {
        assert_eq!(
            default_wire_name("user.v1", "UserService", "Get"),
            "user.v1.UserService/Get"
        );
        assert_eq!(default_wire_name("", "Echo", "Say"), "Echo/Say");
    }
}
