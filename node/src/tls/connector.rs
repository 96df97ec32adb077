//! A tonic connector that dials one member's URL itself: TCP, then TLS for
//! `https://` with the dialer's current (reloadable) configuration. tonic's
//! own `tls_config` cannot reload certificates, hence this.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};

use super::{Reloading, Stream};
use crate::config::parse_url;

/// Dials one URL; the `Uri` tonic passes is ignored (see [`Connector::new`]).
#[derive(Clone)]
pub struct Connector {
    /// `host:port`.
    addr: String,
    tls: Option<(Arc<Reloading<ClientConfig>>, ServerName<'static>)>,
    /// The local address to dial from (`--peer-source-ip`).
    source_ip: Option<IpAddr>,
}

impl Connector {
    /// A connector for `url` and the plain `http://` URI to give tonic's
    /// `Endpoint` (the scheme there only labels requests; this connector
    /// decides about TLS, so tonic's own TLS never sees an `https` URI).
    pub fn new(
        url: &str,
        tls: Option<&Arc<Reloading<ClientConfig>>>,
    ) -> Result<(Connector, String), String> {
        let parsed = parse_url(url)?;
        let addr = parsed.authority();
        let tls = if parsed.https {
            let tls = tls.ok_or_else(|| {
                format!("{url} is https but no TLS is configured for dialling it")
            })?;
            let name = ServerName::try_from(parsed.host.clone())
                .map_err(|e| format!("{url}: {:?} is not a TLS server name: {e}", parsed.host))?;
            Some((tls.clone(), name))
        } else {
            None
        };
        let uri = format!("http://{addr}");
        Ok((
            Connector {
                addr,
                tls,
                source_ip: None,
            },
            uri,
        ))
    }

    /// Dials from `source_ip` instead of an address the OS picks.
    pub fn with_source_ip(mut self, source_ip: Option<IpAddr>) -> Self {
        self.source_ip = source_ip;
        self
    }
}

/// TCP to `addr`, from `source_ip` when given (each resolved address of the
/// same family is tried in turn).
async fn dial(addr: &str, source_ip: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source_ip) = source_ip else {
        return TcpStream::connect(addr).await;
    };
    let mut last = io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!("{addr} has no address of the family of {source_ip}"),
    );
    for target in tokio::net::lookup_host(addr).await? {
        if target.is_ipv4() != source_ip.is_ipv4() {
            continue;
        }
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source_ip, 0))?;
        match socket.connect(target).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let addr = self.addr.clone();
        let tls = self.tls.clone();
        let source_ip = self.source_ip;
        Box::pin(async move {
            let tcp = dial(&addr, source_ip).await?;
            tcp.set_nodelay(true)?;
            let stream = match tls {
                None => Stream::plain(tcp, ()),
                Some((config, name)) => {
                    let connector = tokio_rustls::TlsConnector::from(config.current());
                    let tls = connector.connect(name, tcp).await.map_err(|e| {
                        io::Error::new(e.kind(), format!("TLS handshake with {addr}: {e}"))
                    })?;
                    Stream::tls(tls, ())
                }
            };
            Ok(TokioIo::new(stream))
        })
    }
}
