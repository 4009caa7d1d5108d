// A server method whose request type is not the rpc's does not implement the trait.
use mcp_proto::examples::v1::user_service_server::UserService;
use mcp_proto::examples::v1::{GetUser, UserUpdate};
use mcp_server::{RequestContext, Status};

struct Users;

impl UserService for Users {
    async fn update(&self, _ctx: RequestContext, user: UserUpdate) -> Result<UserUpdate, Status> {
        Ok(user)
    }

    async fn get(&self, _ctx: RequestContext, user: UserUpdate) -> Result<UserUpdate, Status> {
        Ok(user)
    }
}

fn main() {
    let _ = GetUser::default();
}
