//! go-grpc-prometheus' server metrics, as etcd exports them:
//! `grpc_server_started_total`, `grpc_server_handled_total`,
//! `grpc_server_msg_received_total`, `grpc_server_msg_sent_total` and
//! `grpc_server_handling_seconds`, labelled `grpc_type`, `grpc_service`,
//! `grpc_method` (and `grpc_code` for handled).
//!
//! Every served method's label handles are made once, when the member
//! starts, so a call costs one map lookup and atomic increments; making
//! them up front also exports every series at 0, as go-grpc-prometheus'
//! `Register` does, so `rate()` works from the first scrape.
//!
//! The I/O side (the tower layer that watches requests and responses) is in
//! `crate::server::metered`; this module holds the pure parts.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::{
    DEFAULT_BUCKETS, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
    Registry,
};
use tonic::Code;

/// go-grpc-prometheus' `grpc_type` label: which sides of the call stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcType {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl GrpcType {
    pub fn as_str(self) -> &'static str {
        match self {
            GrpcType::Unary => "unary",
            GrpcType::ClientStream => "client_stream",
            GrpcType::ServerStream => "server_stream",
            GrpcType::BidiStream => "bidi_stream",
        }
    }
}

/// Every gRPC method the client port serves: (service, method, type).
/// A test checks the etcd part against `rpc.proto`. Calls to other paths
/// (e.g. etcd's Auth, which witan does not serve) are not counted, as
/// go-grpc-prometheus only sees registered methods.
pub const SERVED_METHODS: &[(&str, &str, GrpcType)] = &[
    ("etcdserverpb.KV", "Range", GrpcType::Unary),
    ("etcdserverpb.KV", "Put", GrpcType::Unary),
    ("etcdserverpb.KV", "DeleteRange", GrpcType::Unary),
    ("etcdserverpb.KV", "Txn", GrpcType::Unary),
    ("etcdserverpb.KV", "Compact", GrpcType::Unary),
    ("etcdserverpb.Watch", "Watch", GrpcType::BidiStream),
    ("etcdserverpb.Lease", "LeaseGrant", GrpcType::Unary),
    ("etcdserverpb.Lease", "LeaseRevoke", GrpcType::Unary),
    ("etcdserverpb.Lease", "LeaseKeepAlive", GrpcType::BidiStream),
    ("etcdserverpb.Lease", "LeaseTimeToLive", GrpcType::Unary),
    ("etcdserverpb.Lease", "LeaseLeases", GrpcType::Unary),
    ("etcdserverpb.Cluster", "MemberAdd", GrpcType::Unary),
    ("etcdserverpb.Cluster", "MemberRemove", GrpcType::Unary),
    ("etcdserverpb.Cluster", "MemberUpdate", GrpcType::Unary),
    ("etcdserverpb.Cluster", "MemberList", GrpcType::Unary),
    ("etcdserverpb.Cluster", "MemberPromote", GrpcType::Unary),
    ("etcdserverpb.Maintenance", "Alarm", GrpcType::Unary),
    ("etcdserverpb.Maintenance", "Status", GrpcType::Unary),
    ("etcdserverpb.Maintenance", "Defragment", GrpcType::Unary),
    ("etcdserverpb.Maintenance", "Hash", GrpcType::Unary),
    ("etcdserverpb.Maintenance", "HashKV", GrpcType::Unary),
    (
        "etcdserverpb.Maintenance",
        "Snapshot",
        GrpcType::ServerStream,
    ),
    ("etcdserverpb.Maintenance", "MoveLeader", GrpcType::Unary),
    ("etcdserverpb.Maintenance", "Downgrade", GrpcType::Unary),
    ("witanpb.Membership", "ChangeVoters", GrpcType::Unary),
    ("witanpb.Membership", "Voters", GrpcType::Unary),
    ("grpc.health.v1.Health", "Check", GrpcType::Unary),
    ("grpc.health.v1.Health", "Watch", GrpcType::ServerStream),
];

/// go's names of the gRPC codes (`codes.Code.String()`), indexed by code
/// number. Note go's spelling `Canceled`.
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The index of `code` in [`CODE_NAMES`]; codes outside gRPC's 17 count as
/// Unknown, as go reports them.
pub fn code_index(code: Code) -> usize {
    usize::try_from(code as i32)
        .ok()
        .filter(|&i| i < CODE_NAMES.len())
        .unwrap_or(Code::Unknown as usize)
}

/// The gRPC code in a `grpc-status` header or trailer value; a value that
/// is not a number is Unknown.
pub fn parse_grpc_status(value: &[u8]) -> Code {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32)
}

/// One method's label handles.
pub struct MethodMetrics {
    pub grpc_type: GrpcType,
    pub started: IntCounter,
    pub msg_received: IntCounter,
    pub msg_sent: IntCounter,
    pub handling_seconds: Histogram,
    /// One per gRPC code, indexed by [`code_index`].
    handled: Vec<IntCounter>,
}

impl MethodMetrics {
    /// The `grpc_server_handled_total` handle for `code`.
    pub fn handled(&self, code: Code) -> &IntCounter {
        &self.handled[code_index(code)]
    }
}

/// The gRPC server metrics of one member, looked up by request path.
pub struct GrpcMetrics {
    /// Keyed by the HTTP/2 path, `/etcdserverpb.KV/Range`.
    by_path: HashMap<String, Arc<MethodMetrics>>,
}

impl GrpcMetrics {
    /// Registers the five metrics in `registry` and makes every served
    /// method's handles.
    pub fn register(registry: &Registry) -> Self {
        const LABELS: &[&str] = &["grpc_type", "grpc_service", "grpc_method"];
        const HANDLED_LABELS: &[&str] = &["grpc_type", "grpc_service", "grpc_method", "grpc_code"];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry
                .register(Box::new(vec.clone()))
                .expect("unique name");
            vec
        };
        let started = counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            LABELS,
        );
        let handled = counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            HANDLED_LABELS,
        );
        let received = counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            LABELS,
        );
        let sent = counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            LABELS,
        );
        let handling = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            )
            .buckets(DEFAULT_BUCKETS.to_vec()),
            LABELS,
        )
        .expect("valid histogram");
        registry
            .register(Box::new(handling.clone()))
            .expect("unique name");

        let by_path = SERVED_METHODS
            .iter()
            .map(|&(service, method, grpc_type)| {
                let labels = [grpc_type.as_str(), service, method];
                let metrics = MethodMetrics {
                    grpc_type,
                    started: started.with_label_values(&labels),
                    msg_received: received.with_label_values(&labels),
                    msg_sent: sent.with_label_values(&labels),
                    handling_seconds: handling.with_label_values(&labels),
                    handled: CODE_NAMES
                        .iter()
                        .map(|code| {
                            handled.with_label_values(&[grpc_type.as_str(), service, method, code])
                        })
                        .collect(),
                };
                (format!("/{service}/{method}"), Arc::new(metrics))
            })
            .collect();
        GrpcMetrics { by_path }
    }

    /// The handles of the method served at `path`, if it is one.
    pub fn method(&self, path: &str) -> Option<&Arc<MethodMetrics>> {
        self.by_path.get(path)
    }
}

/// Counts the messages in one direction of a gRPC call from the bytes of
/// its HTTP/2 body, fed chunk by chunk: each message is framed as a 1-byte
/// compression flag, a 4-byte big-endian length and the message. Chunks may
/// split or join frames anywhere.
#[derive(Debug, Default)]
pub struct FrameCounter {
    /// The prefix of the frame being read, while it is incomplete.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    message_left: u64,
}

impl FrameCounter {
    /// Feeds the next chunk; returns how many messages it completed.
    pub fn feed(&mut self, mut chunk: &[u8]) -> u64 {
        let mut completed = 0;
        while !chunk.is_empty() {
            if self.message_left > 0 {
                let take = usize::try_from(self.message_left)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                self.message_left -= take as u64;
                chunk = &chunk[take..];
                if self.message_left == 0 {
                    completed += 1;
                }
                continue;
            }
            let take = (self.prefix.len() - self.prefix_len).min(chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&chunk[..take]);
            self.prefix_len += take;
            chunk = &chunk[take..];
            if self.prefix_len == self.prefix.len() {
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                self.message_left = u64::from(u32::from_be_bytes([a, b, c, d]));
                if self.message_left == 0 {
                    completed += 1;
                }
            }
        }
        completed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend(std::iter::repeat_n(7u8, len as usize));
        out
    }

    #[test]
    fn frames_are_counted_however_the_bytes_are_split() {
        let mut stream = Vec::new();
        for len in [3, 0, 70_000, 1] {
            stream.extend(frame(len));
        }
        // Whole, then byte by byte, then in uneven chunks.
        assert_eq!(FrameCounter::default().feed(&stream), 4);
        let mut counter = FrameCounter::default();
        let total: u64 = stream.iter().map(|b| counter.feed(&[*b])).sum();
        assert_eq!(total, 4);
        for chunk_len in [2, 5, 6, 4099] {
            let mut counter = FrameCounter::default();
            let total: u64 = stream.chunks(chunk_len).map(|c| counter.feed(c)).sum();
            assert_eq!(total, 4, "chunks of {chunk_len}");
        }
        // A message is counted when its last byte arrives.
        let mut counter = FrameCounter::default();
        let one = frame(10);
        assert_eq!(counter.feed(&one[..14]), 0);
        assert_eq!(counter.feed(&one[14..]), 1);
    }

    #[test]
    fn codes_use_gos_names() {
        assert_eq!(CODE_NAMES[code_index(Code::Ok)], "OK");
        assert_eq!(CODE_NAMES[code_index(Code::Cancelled)], "Canceled");
        assert_eq!(CODE_NAMES[code_index(Code::NotFound)], "NotFound");
        assert_eq!(CODE_NAMES[code_index(Code::Unavailable)], "Unavailable");
        assert_eq!(
            CODE_NAMES[code_index(Code::Unauthenticated)],
            "Unauthenticated"
        );
        assert_eq!(parse_grpc_status(b"5"), Code::NotFound);
        assert_eq!(parse_grpc_status(b"0"), Code::Ok);
        assert_eq!(parse_grpc_status(b"x"), Code::Unknown);
        assert_eq!(parse_grpc_status(b"99"), Code::Unknown);
    }

    /// The served etcd methods match `rpc.proto` (minus Auth, not served),
    /// with the right streaming type.
    #[test]
    fn served_methods_match_the_proto() {
        let proto = include_str!("../../../api/proto/etcdserverpb/rpc.proto");
        let mut from_proto = Vec::new();
        let mut service = "";
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.trim_end_matches('{').trim();
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let (method, rest) = rest.split_once('(').expect("rpc line");
                let (request, response) = rest.split_once("returns").expect("returns");
                let grpc_type = match (
                    request.trim_start().starts_with("stream "),
                    response.trim_start().starts_with("(stream "),
                ) {
                    (false, false) => GrpcType::Unary,
                    (true, false) => GrpcType::ClientStream,
                    (false, true) => GrpcType::ServerStream,
                    (true, true) => GrpcType::BidiStream,
                };
                if service != "Auth" {
                    from_proto.push((format!("etcdserverpb.{service}"), method.trim(), grpc_type));
                }
            }
        }
        let served: Vec<_> = SERVED_METHODS
            .iter()
            .filter(|(service, ..)| service.starts_with("etcdserverpb."))
            .map(|&(s, m, t)| (s.to_string(), m, t))
            .collect();
        assert_eq!(served, from_proto);
    }

    #[test]
    fn every_series_exists_before_any_call() {
        let registry = Registry::new();
        let metrics = GrpcMetrics::register(&registry);
        let kv_range = metrics.method("/etcdserverpb.KV/Range").expect("Range");
        assert_eq!(kv_range.grpc_type, GrpcType::Unary);
        kv_range.handled(Code::NotFound).inc();
        assert!(metrics.method("/etcdserverpb.Auth/AuthEnable").is_none());
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .expect("encode");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains(
            "grpc_server_handled_total{grpc_code=\"NotFound\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"
        ));
        assert!(text.contains(
            "grpc_server_started_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 0\n"
        ));
        assert!(text.contains(
            "grpc_server_handling_seconds_bucket{grpc_method=\"Snapshot\",grpc_service=\"etcdserverpb.Maintenance\",grpc_type=\"server_stream\",le=\"0.005\"} 0\n"
        ));
        let handled_series = text
            .lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{"))
            .count();
        assert_eq!(handled_series, SERVED_METHODS.len() * CODE_NAMES.len());
    }
}
