// `Get` takes a `GetUser`; a `UserUpdate` is another rpc's request.
use mcp_proto::examples::v1::UserUpdate;
use mcp_proto::examples::v1::user_service_client::UserServiceClient;

async fn call(users: UserServiceClient) {
    let _ = users.get(&UserUpdate::default()).await;
}

fn main() {
    let _ = call;
}
