//! Generated service stubs and Protobuf bodies: `UserService` of
//! `proto/mcp/examples/v1/user.proto`, whose client, trait and `mount` mcp-build generated
//! into `mcp-proto`, called in Protobuf and in JSON on the same server.
//!
//! `cargo run -p mcp-client --example protobuf`

use mcp_client::{Client, Json, Protobuf};
use mcp_proto::examples::v1::user_service_client::UserServiceClient;
use mcp_proto::examples::v1::user_service_server::{self, UserService};
use mcp_proto::examples::v1::{GetUser, UserUpdate};
use mcp_server::{RequestContext, Router, Server, Status};

/// A server of `UserService` that tidies names and keeps nothing.
struct Tidy;

impl UserService for Tidy {
    async fn update(
        &self,
        _ctx: RequestContext,
        mut user: UserUpdate,
    ) -> Result<UserUpdate, Status> {
        user.name = user.name.trim().to_owned();
        Ok(user)
    }

    async fn get(&self, _ctx: RequestContext, query: GetUser) -> Result<UserUpdate, Status> {
        Err(Status::application(
            1404,
            format!("no user {:?}", query.user_id),
        ))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The mounted rpcs answer each request in its own format, JSON or Protobuf.
    let server = Server::builder()
        .router(user_service_server::mount(Router::new(), Tidy))
        .bind("127.0.0.1:0")
        .await?;

    // A client speaking Protobuf: the stub's methods compile only for prost messages.
    let client = Client::builder(server.local_addr())
        .format(Protobuf)
        .connect()
        .await?;
    let users = UserServiceClient::new(client.clone());
    let change = UserUpdate {
        user_id: "u-1001".into(),
        name: "  Grace Hopper ".into(),
        age: Some(85),
    };
    let stored = users.update(&change).await?;
    println!("protobuf: {stored:?}");

    // The same rpc in JSON, through the same connections.
    let stored = UserServiceClient::new(client.with_format(Json))
        .update(&change)
        .await?;
    println!("json:     {stored:?}");

    // What each format puts on the wire for this message.
    use mcp_client::Encode;
    let mut buf = mcp_client::BytesMut::new();
    let pb = Protobuf.encode_to_bytes(&change, &mut buf)?;
    let json = Json.encode_to_bytes(&change, &mut buf)?;
    println!(
        "body sizes: protobuf {} bytes, json {} bytes",
        pb.len(),
        json.len()
    );

    client.close().await;
    server.shutdown(std::time::Duration::from_secs(1)).await?;
    Ok(())
}
