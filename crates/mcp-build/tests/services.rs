//! The generated stubs of `proto/mcp/examples/v1/user.proto` (committed in mcp-proto, made by
//! this crate) against the real server and client: a value goes through the client, the
//! wire and the trait and comes back the same, in JSON and in Protobuf.

use std::collections::HashMap;
use std::sync::Mutex;

use mcp_client::{CallOptions, Client, ErrorCode, Format, FormatId, Protobuf, RawRequest};
use mcp_proto::examples::v1::user_service_client::UserServiceClient;
use mcp_proto::examples::v1::user_service_server::{self, UserService};
use mcp_proto::examples::v1::{GetUser, UserUpdate};
use mcp_server::{RequestContext, Router, Server, ServerHandle, Status};

/// An implementation of the generated trait: users in memory.
#[derive(Default)]
struct Users(Mutex<HashMap<String, UserUpdate>>);

impl UserService for Users {
    async fn update(&self, ctx: RequestContext, user: UserUpdate) -> Result<UserUpdate, Status> {
        // The context is the request's: the method is the wire name the option gave.
        assert_eq!(ctx.method(), "user.update");
        let mut users = self.0.lock().map_err(|_| Status::internal("poisoned"))?;
        users.insert(user.user_id.clone(), user.clone());
        Ok(user)
    }

    async fn get(&self, _ctx: RequestContext, query: GetUser) -> Result<UserUpdate, Status> {
        let users = self.0.lock().map_err(|_| Status::internal("poisoned"))?;
        users
            .get(&query.user_id)
            .cloned()
            .ok_or_else(|| Status::application(1404, format!("no user {:?}", query.user_id)))
    }
}

async fn server() -> ServerHandle {
    let router = user_service_server::mount(Router::new(), Users::default());
    Server::builder()
        .router(router)
        .bind("127.0.0.1:0")
        .await
        .expect("bind")
}

async fn client(server: &ServerHandle) -> Client {
    Client::builder(server.local_addr())
        .connect()
        .await
        .expect("connect")
}

fn ada() -> UserUpdate {
    UserUpdate {
        user_id: "u-1815".into(),
        name: "Ada Lovelace".into(),
        age: Some(36),
    }
}

#[tokio::test]
async fn round_trip_in_json_and_in_protobuf() {
    let server = server().await;
    let client = client(&server).await;
    let json = UserServiceClient::new(client.clone());
    let protobuf = UserServiceClient::new(client.with_format(Protobuf));
    assert_eq!(json.client().format().id(), FormatId::JSON);
    assert_eq!(protobuf.client().format().id(), FormatId::PROTOBUF);

    // Written in JSON, read in Protobuf, and the other way round: both reach one store
    // through the same trait.
    assert_eq!(json.update(&ada()).await.expect("update (JSON)"), ada());
    let query = GetUser {
        user_id: "u-1815".into(),
    };
    assert_eq!(protobuf.get(&query).await.expect("get (Protobuf)"), ada());

    let grace = UserUpdate {
        user_id: "u-1906".into(),
        name: "Grace Hopper".into(),
        // Some(0) is written in Protobuf (presence), so it must come back as Some(0).
        age: Some(0),
    };
    assert_eq!(
        protobuf.update(&grace).await.expect("update (Protobuf)"),
        grace
    );
    let query = GetUser {
        user_id: "u-1906".into(),
    };
    let options = CallOptions::new().idempotent();
    assert_eq!(
        json.get_with(&query, options).await.expect("get (JSON)"),
        grace
    );
    client.close().await;
}

#[tokio::test]
async fn a_status_from_the_trait_reaches_the_typed_client() {
    let server = server().await;
    let client = client(&server).await;
    let err = UserServiceClient::new(client.clone())
        .get(&GetUser {
            user_id: "nobody".into(),
        })
        .await
        .expect_err("unknown user");
    let remote = err.remote().expect("an answer from the server");
    assert_eq!(remote.code(), ErrorCode(1404), "{err}");
    assert!(remote.message().contains("nobody"), "{err}");
    let err = UserServiceClient::new(client.with_format(Protobuf))
        .get(&GetUser {
            user_id: "nobody".into(),
        })
        .await
        .expect_err("unknown user");
    assert_eq!(err.code(), Some(ErrorCode(1404)), "{err}");
    client.close().await;
}

#[tokio::test]
async fn the_mounted_methods_answer_plain_string_calls_and_refuse_bad_bodies() {
    let server = server().await;
    let client = client(&server).await;

    // The string API reaches the same routes: the method on the wire is just the name.
    let stored: UserUpdate = client.call("user.update", &ada()).await.expect("update");
    assert_eq!(stored, ada());
    assert_eq!(
        user_service_server::METHODS,
        ["user.update", "user.get"],
        "the option's names, in the order of the .proto"
    );

    // A format the service does not speak is ERROR 3, a body that is not the request ERROR 1.
    let raw = RawRequest::new("user.get", FormatId::RAW, &b"u-1815"[..]);
    let err = client.call_raw(raw).await.expect_err("raw is not served");
    assert_eq!(err.code(), Some(ErrorCode::UNSUPPORTED_FORMAT), "{err}");
    let garbage = RawRequest::new("user.get", FormatId::PROTOBUF, &[0xff, 0xff, 0xff][..]);
    let err = client.call_raw(garbage).await.expect_err("not a GetUser");
    assert_eq!(err.code(), Some(ErrorCode::MALFORMED), "{err}");
    let not_json = RawRequest::new("user.get", FormatId::JSON, &b"{"[..]);
    let err = client.call_raw(not_json).await.expect_err("not JSON");
    assert_eq!(err.code(), Some(ErrorCode::MALFORMED), "{err}");
    client.close().await;
}
