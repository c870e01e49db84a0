//! `meridian.v1.Acl`: create, list and revoke tokens (admin tokens only), and `WhoAmI`.
//!
//! A token's secret is drawn here, on the node that takes the call, and returned once; the
//! replicated command carries only its hash.

use meridian_proto::v1 as pb;
use meridian_proto::v1::acl_server::Acl as AclApi;
use tonic::{Request, Response, Status};

use super::convert;
use super::error::{registry_status, status};
use crate::auth::{self, Authorizer, Caller, NewToken};
use crate::registry::{Command, Outcome, RegistryError, TokenSpec, names};
use crate::replica::Replica;

/// The `Acl` gRPC service over the local replica.
pub struct AclService {
    replica: Replica,
    auth: Authorizer,
}

type Reply<T> = Result<Response<T>, Status>;

// === impl AclService ===

impl AclService {
    /// Serves the tokens held by `replica`, checking callers with `auth`.
    pub fn new(replica: Replica, auth: Authorizer) -> Self {
        Self { replica, auth }
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        if !self.auth.enabled() {
            return Err(Status::failed_precondition(
                "ACLs are not enabled on this node (--acl-enabled)",
            ));
        }
        auth::caller(req)
    }
}

#[tonic::async_trait]
impl AclApi for AclService {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Reply<pb::CreateTokenResponse> {
        self.caller(&req)?.require_admin()?;
        let req = req.into_inner();
        names::validate_description("description", &req.description).map_err(registry_status)?;
        let policy = convert::acl::policy("policy", req.policy).map_err(registry_status)?;
        let fresh = NewToken::generate().map_err(|e| Status::internal(e.to_string()))?;
        let spec = TokenSpec {
            accessor: fresh.accessor,
            secret_hash: fresh.secret_hash,
            description: req.description,
            policy,
        };
        let (revision, outcome) = self
            .replica
            .write(Command::CreateToken(spec))
            .await
            .map_err(status)?;
        let Outcome::Token(token) = outcome else {
            tracing::error!(
                ?outcome,
                "CreateToken produced an outcome of the wrong kind"
            );
            return Err(Status::internal("unexpected outcome"));
        };
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(convert::acl::token_pb(&token)),
            secret: fresh.secret,
            revision,
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Reply<pb::ListTokensResponse> {
        self.caller(&req)?.require_admin()?;
        let view = self.replica.current();
        Ok(Response::new(pb::ListTokensResponse {
            tokens: view
                .registry
                .acl()
                .tokens()
                .map(|t| convert::acl::token_pb(t))
                .collect(),
            revision: view.registry.revision(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Reply<pb::RevokeTokenResponse> {
        self.caller(&req)?.require_admin()?;
        let accessor = req.into_inner().accessor;
        if accessor.is_empty() {
            return Err(registry_status(RegistryError::invalid(
                "accessor",
                "must not be empty",
            )));
        }
        let (revision, _) = self
            .replica
            .write(Command::RevokeToken { accessor })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RevokeTokenResponse { revision }))
    }

    async fn who_am_i(&self, req: Request<pb::WhoAmIRequest>) -> Reply<pb::WhoAmIResponse> {
        match self.caller(&req)? {
            Caller::Token(token) => Ok(Response::new(pb::WhoAmIResponse {
                token: Some(convert::acl::token_pb(&token)),
            })),
            Caller::Anyone => Err(Status::internal("ACLs enabled but no token checked")),
        }
    }
}
