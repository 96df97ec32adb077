//! Accepted connections for tonic's servers, plain or TLS. TLS handshakes
//! run in their own tasks (bounded in number and time) so one slow client
//! cannot hold up the others. With client-certificate identity on, the
//! verified certificate's CN travels with the connection in its
//! [`ConnInfo`], which tonic puts into every request's extensions
//! ([`ConnInfo::identity_of`] finds it there).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::{Reloading, Stream, der};
use crate::client_identity::ClientCertIdentity;

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once per listener.
const MAX_HANDSHAKES: usize = 256;
/// Accepted connections waiting for the server to take them.
const ACCEPT_QUEUE: usize = 64;
/// Pause after a failed accept (e.g. out of file descriptors), so the loop
/// does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// TLS for one listener.
#[derive(Clone)]
pub struct Acceptor {
    pub config: Arc<Reloading<ServerConfig>>,
    /// Put the client certificate's CN into requests (`--client-cert-auth`).
    pub identity: bool,
}

/// What tonic puts into every request's extensions for this connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote_addr: Option<SocketAddr>,
    pub identity: Option<ClientCertIdentity>,
}

impl ConnInfo {
    /// The client certificate identity of the connection a request came
    /// on, if it proved one.
    pub fn identity_of(extensions: &http::Extensions) -> Option<&ClientCertIdentity> {
        extensions.get::<ConnInfo>()?.identity.as_ref()
    }
}

/// One accepted connection.
pub type ServerStream = Stream<ConnInfo>;

impl Connected for ServerStream {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info().clone()
    }
}

/// Accepts on `listener` until the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Acceptor>,
) -> ReceiverStream<io::Result<ServerStream>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    tokio::spawn(accept_loop(listener, tls, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Acceptor>,
    tx: mpsc::Sender<io::Result<ServerStream>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &tls else {
            let info = ConnInfo {
                remote_addr: Some(remote),
                identity: None,
            };
            let stream = Stream::plain(tcp, info);
            if tx.send(Ok(stream)).await.is_err() {
                return;
            }
            continue;
        };
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let tls = tls.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&tls, tcp, remote)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(stream)).await;
                }
                // As etcd, which logs "rejected connection" for these.
                Ok(Err(e)) => {
                    tracing::warn!(remote = %remote, error = %e, "rejected connection: TLS handshake failed")
                }
                Err(_) => {
                    tracing::warn!(remote = %remote, "rejected connection: TLS handshake timed out")
                }
            }
        });
    }
}

async fn handshake(tls: &Acceptor, tcp: TcpStream, remote: SocketAddr) -> io::Result<ServerStream> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.current());
    let stream = acceptor.accept(tcp).await?;
    let identity = if tls.identity {
        stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| der::common_name(cert))
            .map(|common_name| ClientCertIdentity { common_name })
    } else {
        None
    };
    let info = ConnInfo {
        remote_addr: Some(remote),
        identity,
    };
    Ok(Stream::tls(stream, info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::client::{self, ClientFiles, Verify};
    use crate::tls::server::{self, CLIENT_ALPN, ServerFiles};
    use axum::routing::get;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    };
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write pem");
        path
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate
    /// with CN `alice`, written as PEM files.
    fn pki(dir: &std::path::Path) -> (ServerFiles, ClientFiles) {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |sans: Vec<String>, cn: &str| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(sans).expect("params");
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            params.distinguished_name = dn;
            let cert = params.signed_by(&key, &issuer).expect("leaf");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into()], "server");
        let (client_cert, client_key) = leaf(vec![], "alice");
        let ca_file = write(dir, "ca.pem", &ca.pem());
        let server = ServerFiles {
            cert_file: write(dir, "server.pem", &server_cert),
            key_file: write(dir, "server-key.pem", &server_key),
            trusted_ca_file: Some(ca_file.clone()),
        };
        let client = ClientFiles {
            verify: Verify::Ca(ca_file),
            cert_and_key: Some((
                write(dir, "client.pem", &client_cert),
                write(dir, "client-key.pem", &client_key),
            )),
        };
        (server, client)
    }

    async fn whoami(request: axum::extract::Request) -> String {
        ConnInfo::identity_of(request.extensions())
            .map(|identity| identity.common_name.clone())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn the_client_certificate_cn_reaches_the_request_extensions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (server_files, client_files) = pki(dir.path());
        let config = Arc::new(server::load("test", &server_files, CLIENT_ALPN).expect("server"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = axum::Router::new().route("/whoami", get(whoami));
        let incoming = incoming(
            listener,
            Some(Acceptor {
                config,
                identity: true,
            }),
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(tonic::service::Routes::from(router))
                .serve_with_incoming(incoming),
        );

        let mut client_config = (*client::load("test", &client_files)
            .expect("client")
            .current())
        .clone();
        client_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        tls.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut response = String::new();
        tls.read_to_string(&mut response).await.expect("response");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("alice"), "{response}");
    }
}
