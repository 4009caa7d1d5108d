//! An mcp-rs fleet that follows a Kubernetes Service through its EndpointSlices.
//!
//! kube-runtime's `watcher` lists and watches the EndpointSlices labelled
//! `kubernetes.io/service-name=<service>` in one namespace; each watch event is turned into
//! fleet [`Change`](mcp_client::Change)s by [`translate::Translator`] (no I/O, unit-tested
//! without a cluster) and the changes feed [`Client::discover`]. The program then makes a
//! few calls of one method and prints what came back and which endpoints the fleet has.
//!
//! ```text
//! kube-discovery --service echo [--namespace prod] [--port-name mcp]
//!                [--server-name echo.prod.svc] [--per-pod-names]
//!                [--method '$health'] [--body TEXT] [--calls 5] [--every 1s]
//!                [--timeout 10s] [--ca ca.pem]
//! ```
//!
//! Each flag may also come from the environment (`SERVICE`, `NAMESPACE`, `PORT_NAME`,
//! `SERVER_NAME`, `METHOD`, `BODY`, `CALLS`, `EVERY`, `TIMEOUT`, `CA`). The namespace
//! defaults to the kube client's (the pod's own in a cluster, the kubeconfig context's
//! outside); the server name to `<service>.<namespace>.svc`. `--calls 0` calls until
//! Ctrl-C. The kube client is configured as kube-rs does it: in-cluster (service account)
//! or from `KUBECONFIG` / `~/.kube/config`. It needs `get`, `list` and `watch` on
//! `endpointslices.discovery.k8s.io` in the namespace (docs/deploy.md has the Role).
//!
//! **Not built or run by CI.** This is its own cargo workspace outside the repository's
//! (it pulls in kube and k8s-openapi). Build and test it with
//! `cd examples/kube-discovery && cargo test`: the unit tests of `translate.rs` are the part
//! checked here, and `smoke/run.sh` runs the binary against a fake API server (a Python
//! script); the watcher against a real API server was not run (no cluster). See
//! docs/deploy.md, "What was tested here, and what needs a cluster".

mod translate;

use std::process::ExitCode;
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use mcp_client::{Bytes, CallOptions, Client, FormatId, RawRequest, TlsClientConfig};

use crate::translate::{Target, Translator};

const USAGE: &str = "usage: kube-discovery --service NAME [--namespace NS] [--port-name NAME] \
[--server-name NAME] [--per-pod-names] [--method M] [--body TEXT] [--calls N] [--every 1s] \
[--timeout 10s] [--ca FILE]";

#[derive(Debug)]
struct Args {
    service: String,
    namespace: Option<String>,
    port_name: Option<String>,
    server_name: Option<String>,
    per_pod_names: bool,
    method: String,
    body: String,
    calls: u64,
    every: Duration,
    timeout: Duration,
    ca: Option<String>,
}

impl Args {
    fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
        let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        let mut service = env("SERVICE");
        let mut namespace = env("NAMESPACE");
        let mut port_name = env("PORT_NAME");
        let mut server_name = env("SERVER_NAME");
        let mut per_pod_names = false;
        let mut method = env("METHOD");
        let mut body = env("BODY");
        let mut calls = env("CALLS");
        let mut every = env("EVERY");
        let mut timeout = env("TIMEOUT");
        let mut ca = env("CA");
        while let Some(flag) = argv.next() {
            if flag == "--per-pod-names" {
                per_pod_names = true;
                continue;
            }
            if flag == "-h" || flag == "--help" {
                return Err(USAGE.into());
            }
            let slot = match flag.as_str() {
                "--service" => &mut service,
                "--namespace" | "-n" => &mut namespace,
                "--port-name" => &mut port_name,
                "--server-name" => &mut server_name,
                "--method" => &mut method,
                "--body" => &mut body,
                "--calls" => &mut calls,
                "--every" => &mut every,
                "--timeout" => &mut timeout,
                "--ca" => &mut ca,
                other => return Err(format!("unknown flag {other:?}\n{USAGE}")),
            };
            *slot = Some(argv.next().ok_or_else(|| format!("{flag} needs a value"))?);
        }
        Ok(Args {
            service: service.ok_or_else(|| format!("--service (or SERVICE) is needed\n{USAGE}"))?,
            namespace,
            port_name,
            server_name,
            per_pod_names,
            method: method.unwrap_or_else(|| "$health".into()),
            body: body.unwrap_or_default(),
            calls: match calls {
                Some(n) => n
                    .parse()
                    .map_err(|_| format!("--calls {n:?}: not a count"))?,
                None => 5,
            },
            every: duration("--every", every.as_deref().unwrap_or("1s"))?,
            timeout: duration("--timeout", timeout.as_deref().unwrap_or("10s"))?,
            ca,
        })
    }
}

/// `250ms`, `2s`, `1m`.
fn duration(flag: &str, text: &str) -> Result<Duration, String> {
    let bad = || format!("{flag} {text:?}: not a duration such as 250ms, 2s or 1m");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(bad());
    }
    Ok(d)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(why) => {
            eprintln!("{why}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("kube-discovery: {why}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let kube = kube::Client::try_default()
        .await
        .map_err(|e| format!("no Kubernetes client configuration: {e}"))?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| kube.default_namespace().to_owned());
    let target = Target {
        port_name: args.port_name.clone(),
        server_name: args
            .server_name
            .clone()
            .unwrap_or_else(|| format!("{}.{namespace}.svc", args.service)),
        per_pod_names: args.per_pod_names,
    };
    tracing::info!(
        service = %args.service, %namespace, port = ?target.port_name,
        server_name = %target.server_name, "following the Service's EndpointSlices"
    );

    // The watcher: list, then watch; after an error it resumes from the last resource
    // version, or lists again (an `Init` … `InitDone`, which becomes a Reset). The backoff
    // keeps a failing API server (or a missing RBAC rule) from being asked in a loop.
    let slices: Api<EndpointSlice> = Api::namespaced(kube, &namespace);
    let selector = format!("kubernetes.io/service-name={}", args.service);
    let events = watcher(slices, watcher::Config::default().labels(&selector)).default_backoff();
    let mut translator = Translator::new(target);
    let changes = events.flat_map(move |event| {
        let changes = match event {
            Ok(event) => {
                let out = translator.apply(event);
                for warning in &out.warnings {
                    tracing::warn!("{warning}");
                }
                if !out.changes.is_empty() {
                    let members: Vec<&str> = translator.members().map(|i| i.addr()).collect();
                    tracing::info!(?members, changes = out.changes.len(), "fleet changed");
                }
                out.changes
            }
            Err(e) => {
                // The fleet keeps its members meanwhile; the watcher tries again after
                // its backoff.
                tracing::warn!(error = %e, "EndpointSlice watch failed; retrying");
                Vec::new()
            }
        };
        stream::iter(changes)
    });

    // `connect` waits for the first set (the initial list) and one endpoint that
    // connects, within the timeout.
    let mut builder = Client::discover(changes)
        .timeout(args.timeout)
        .wait_for_ready(true);
    if let Some(ca) = &args.ca {
        // Each endpoint is verified as its server name (the Service's DNS name), not as
        // its pod IP. Do not set `TlsClientConfig::server_name` here: it would override
        // every endpoint's own name.
        let tls = TlsClientConfig::new()
            .ca_pem_file(ca)
            .map_err(|e| format!("--ca {ca}: {e}"))?;
        builder = builder.tls(tls);
    }
    let client = builder
        .connect()
        .await
        .map_err(|e| format!("no endpoint of {} answered: {e}", args.service))?;

    let mut n = 0u64;
    let outcome = loop {
        if args.calls != 0 && n == args.calls {
            break Ok(());
        }
        n += 1;
        let request = RawRequest::new(
            args.method.as_str(),
            FormatId::RAW,
            Bytes::from(args.body.clone().into_bytes()),
        )
        .with_options(CallOptions::new().timeout(args.timeout));
        match client.call_raw(request).await {
            Ok(response) => println!(
                "call {n}: {} -> {}",
                args.method,
                String::from_utf8_lossy(response.body()).escape_debug()
            ),
            Err(e) => println!("call {n}: {} failed: {e}", args.method),
        }
        let endpoints: Vec<String> = client
            .metrics()
            .endpoints
            .iter()
            .map(|e| format!("{} {} ({} calls)", e.addr, e.state.name(), e.attempts))
            .collect();
        println!("  endpoints: {}", endpoints.join(", "));
        tokio::select! {
            () = tokio::time::sleep(args.every) => {}
            _ = tokio::signal::ctrl_c() => break Ok(()),
        }
    };
    client.close().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_are_read_and_checked() {
        let args = parse(&["--service", "echo", "-n", "prod", "--every", "250ms"]).unwrap();
        assert_eq!(args.service, "echo");
        assert_eq!(args.namespace.as_deref(), Some("prod"));
        assert_eq!(args.every, Duration::from_millis(250));
        assert!(parse(&["--service", "echo", "--every", "0s"]).is_err());
        assert!(parse(&["--service", "echo", "--bogus", "x"]).is_err());
        assert!(parse(&["--service"]).is_err());
    }
}
