// `UserService` has no `Delete` rpc, so its client has no `delete` method.
use mcp_proto::examples::v1::GetUser;
use mcp_proto::examples::v1::user_service_client::UserServiceClient;

async fn call(users: UserServiceClient) {
    let _ = users.delete(&GetUser::default()).await;
}

fn main() {
    let _ = call;
}
