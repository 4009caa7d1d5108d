// `Update` answers a `UserUpdate`, not a `GetUser`.
use mcp_proto::examples::v1::{GetUser, UserUpdate};
use mcp_proto::examples::v1::user_service_client::UserServiceClient;

async fn call(users: UserServiceClient) {
    let _: Result<GetUser, _> = users.update(&UserUpdate::default()).await;
}

fn main() {
    let _ = call;
}
