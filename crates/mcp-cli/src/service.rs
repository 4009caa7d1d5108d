//! The demo service behind `mcp serve` and `mcp demo`.
//!
//! - `echo`: answers the request's body as it is, in the request's format.
//! - `user.update` / `user.get`: the seed's `UserUpdate`, in JSON or Protobuf (the request's
//!   format decides), kept in memory by `user_id`. `user.get` of an unknown user is
//!   application error 1404.
//! - `ticker`: a topic pushed every `tick` with `{"seq": n, "unix_ms": t}` in JSON.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use mcp_format::{Decode, Encode, FormatId, Json, Protobuf};
use mcp_proto::examples::v1::UserUpdate;
use mcp_server::{Reply, RequestContext, Server, ServerHandle, Status};

/// The topic the demo service pushes to.
pub const TICKER: &str = "ticker";

/// Application error code: no such user.
pub const NOT_FOUND: u16 = 1404;

type Users = Arc<Mutex<HashMap<String, UserUpdate>>>;

/// Starts the demo service on `addr` and its ticker task; both end with the runtime or
/// when the server shuts down.
pub async fn start(addr: SocketAddr, tick: Duration) -> Result<ServerHandle, mcp_server::Error> {
    let users: Users = Arc::default();
    let update_users = Arc::clone(&users);
    let server = Server::builder()
        .route_raw("echo", |_ctx, body| async move { Ok(Reply::new(body)) })
        .route_raw("user.update", move |ctx, body| {
            let users = Arc::clone(&update_users);
            async move {
                let user: UserUpdate = decode(&ctx, body)?;
                if user.user_id.is_empty() {
                    return Err(Status::application(1400, "user_id must not be empty"));
                }
                let lock = users.lock();
                let mut users = lock.map_err(|_| Status::internal("user store poisoned"))?;
                users.insert(user.user_id.clone(), user.clone());
                encode(&ctx, &user)
            }
        })
        .route_raw("user.get", move |ctx, body| {
            let users = Arc::clone(&users);
            async move {
                let query: UserUpdate = decode(&ctx, body)?;
                let found = users
                    .lock()
                    .map_err(|_| Status::internal("user store poisoned"))?
                    .get(&query.user_id)
                    .cloned();
                match found {
                    Some(user) => encode(&ctx, &user),
                    None => Err(Status::application(
                        NOT_FOUND,
                        format!("no user {:?}", query.user_id),
                    )),
                }
            }
        })
        .bind(addr)
        .await?;
    tokio::spawn(ticker(server.clone(), tick));
    Ok(server)
}

async fn ticker(server: ServerHandle, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for seq in 0u64.. {
        interval.tick().await;
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let tick = serde_json::json!({ "seq": seq, "unix_ms": unix_ms });
        // Publishing fails only once the server is shut down: then the ticker ends too.
        if server.publish_typed(TICKER, &Json, &tick).is_err() {
            return;
        }
    }
}

/// Decodes a body in whichever of JSON and Protobuf the request names.
fn decode(ctx: &RequestContext, body: Bytes) -> Result<UserUpdate, Status> {
    let result = match ctx.format() {
        FormatId::JSON => Json.decode_bytes(body),
        FormatId::PROTOBUF => Protobuf.decode_bytes(body),
        other => {
            return Err(Status::unsupported_format(format!(
                "user.* speaks json and protobuf, not {other}"
            )));
        }
    };
    result.map_err(|e| Status::malformed(e.to_string()))
}

/// Encodes an answer in the request's format.
fn encode(ctx: &RequestContext, user: &UserUpdate) -> Result<Reply, Status> {
    let mut buf = BytesMut::new();
    let body = match ctx.format() {
        FormatId::PROTOBUF => Protobuf.encode_to_bytes(user, &mut buf),
        _ => Json.encode_to_bytes(user, &mut buf),
    };
    body.map(Reply::new)
        .map_err(|e| Status::internal(e.to_string()))
}
