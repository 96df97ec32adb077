//! etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::auth::apply::stamp;
use crate::auth::{AuthInfo, check};
use crate::error::EtcdError;
use crate::mvcc::{read, validate};
use crate::node::Member;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::response_op::Response as OpResponse;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::proto::witanpb::internal_request::Request as Internal;
use crate::proto::witanpb::internal_response::Response as Applied;

pub struct KvService {
    member: Arc<Member>,
}

impl KvService {
    pub fn new(member: Arc<Member>) -> Self {
        KvService { member }
    }

    /// Proposes a write on behalf of `info`; its permissions are checked
    /// when it applies.
    async fn propose(
        &self,
        request: Internal,
        info: Option<&AuthInfo>,
    ) -> Result<Applied, EtcdError> {
        self.member.propose(stamp(request, info)).await
    }

    /// Puts the member's header on a txn response and every response in
    /// it (the state machine only knows the revision).
    fn fill_txn_headers(&self, resp: &mut TxnResponse) {
        let revision = revision_of(&resp.header);
        self.fill_txn_headers_at(resp, revision);
    }

    fn fill_txn_headers_at(&self, resp: &mut TxnResponse, revision: i64) {
        resp.header = self.member.header(revision);
        for op in &mut resp.responses {
            match &mut op.response {
                Some(OpResponse::ResponseRange(r)) => r.header = self.member.header(revision),
                Some(OpResponse::ResponsePut(r)) => r.header = self.member.header(revision),
                Some(OpResponse::ResponseDeleteRange(r)) => r.header = self.member.header(revision),
                Some(OpResponse::ResponseTxn(t)) => self.fill_txn_headers_at(t, revision),
                None => {}
            }
        }
    }
}

fn revision_of(header: &Option<crate::proto::etcdserverpb::ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |h| h.revision)
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let info = self.member.auth.info_of(&request)?;
        let req = request.into_inner();
        validate::check_range(&req)?;
        if !req.serializable {
            // A learner serves serializable reads only, as in etcd.
            if self.member.is_learner() {
                return Err(EtcdError::NotSupportedForLearner.into());
            }
            self.member.linearizable_barrier().await?;
        }
        // After the barrier: the auth state is at least as new as the read.
        self.member
            .auth
            .check(info.as_ref(), &check::range_needs(&req))?;
        let (mut resp, revision) = self
            .member
            .read(|view| Ok((view.range(&req)?, view.revision)))?;
        resp.header = self.member.header(revision);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let info = self.member.auth.info_of(&request)?;
        let req = request.into_inner();
        validate::check_put(&req)?;
        match self.propose(Internal::Put(req), info.as_ref()).await? {
            Applied::Put(mut resp) => {
                resp.header = self.member.header(revision_of(&resp.header));
                Ok(Response::new(resp))
            }
            _ => Err(EtcdError::Internal("unexpected response".into()).into()),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let info = self.member.auth.info_of(&request)?;
        let req = request.into_inner();
        validate::check_delete_range(&req)?;
        match self
            .propose(Internal::DeleteRange(req), info.as_ref())
            .await?
        {
            Applied::DeleteRange(mut resp) => {
                resp.header = self.member.header(revision_of(&resp.header));
                Ok(Response::new(resp))
            }
            _ => Err(EtcdError::Internal("unexpected response".into()).into()),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let info = self.member.auth.info_of(&request)?;
        let req = request.into_inner();
        validate::check_txn(&req, self.member.config.max_txn_ops)?;
        if !read::txn_writes(&req) {
            // Read-only: one consistent local view after ReadIndex, as etcd
            // serves it; no log entry, no revision.
            if !read::txn_serializable(&req) {
                self.member.linearizable_barrier().await?;
            }
            self.member
                .auth
                .check(info.as_ref(), &check::txn_needs(&req))?;
            let mut resp = self.member.read(|view| {
                let mut resp = view.read_only_txn(&req)?;
                resp.header = Some(ResponseHeader {
                    revision: view.revision,
                    ..Default::default()
                });
                Ok(resp)
            })?;
            self.fill_txn_headers(&mut resp);
            return Ok(Response::new(resp));
        }
        match self.propose(Internal::Txn(req), info.as_ref()).await? {
            Applied::Txn(mut resp) => {
                self.fill_txn_headers(&mut resp);
                Ok(Response::new(resp))
            }
            _ => Err(EtcdError::Internal("unexpected response".into()).into()),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // etcd checks no permission on Compact, only that a token given
        // is valid.
        let info = self.member.auth.info_of(&request)?;
        let req = request.into_inner();
        match self
            .propose(Internal::Compaction(req), info.as_ref())
            .await?
        {
            Applied::Compaction(mut resp) => {
                resp.header = self.member.header(revision_of(&resp.header));
                Ok(Response::new(resp))
            }
            _ => Err(EtcdError::Internal("unexpected response".into()).into()),
        }
    }
}
