//! A user-space TCP proxy on the peer links: partitions and delay without
//! netem (the kernel here has none) and without root.
//!
//! Every member advertises a peer URL that points at this proxy, which
//! forwards to the member's real peer listener. Members dial their peers
//! from a source address of their own (`--peer-dial-source-ip`), so the
//! proxy knows each connection's link: from which member to which.
//!
//! A link is [`LinkRule::Pass`], [`LinkRule::Delay`] or
//! [`LinkRule::Partitioned`]. A partition holds the link's bytes, in both
//! directions, instead of dropping connections: TCP retransmits through a
//! real partition and delivers late when it heals, so the members see
//! stalled RPCs, their timeouts, and then stale messages arriving after the
//! heal, which is what Raft must survive. New connections on a partitioned
//! link are accepted and held the same way. Delay holds every chunk for the
//! given time, order kept. Connections whose source is not a known member
//! (a client, a CLI) always pass.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What happens to the bytes of one link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LinkRule {
    #[default]
    Pass,
    /// Every chunk is delivered this long after it was read.
    Delay(Duration),
    /// Nothing is delivered until the rule changes.
    Partitioned,
}

/// The rules of every link, keyed by (dialling member, dialled member). A
/// connection's bytes in both directions follow its link's rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules(HashMap<(usize, usize), LinkRule>);

impl Rules {
    /// The rule of the link from `from` to `to` (no rule: pass).
    pub fn of(&self, from: usize, to: usize) -> LinkRule {
        self.0.get(&(from, to)).copied().unwrap_or_default()
    }

    /// `member` cut off from every other of `members` in both directions:
    /// a minority of one against the rest.
    pub fn isolate(member: usize, members: usize) -> Rules {
        let mut rules = Rules::default();
        for other in (0..members).filter(|&o| o != member) {
            rules.0.insert((member, other), LinkRule::Partitioned);
            rules.0.insert((other, member), LinkRule::Partitioned);
        }
        rules
    }

    /// Every link among `members` delayed by `delay`.
    pub fn delay_all(delay: Duration, members: usize) -> Rules {
        let mut rules = Rules::default();
        for from in 0..members {
            for to in (0..members).filter(|&t| t != from) {
                rules.0.insert((from, to), LinkRule::Delay(delay));
            }
        }
        rules
    }
}

/// Chunks in flight per direction of one connection: bounds what a held
/// link buffers (then TCP backpressure stops the sender).
const CHUNKS_IN_FLIGHT: usize = 64;
const CHUNK_BYTES: usize = 16 * 1024;

/// The proxy: one listener per member, on its own runtime so it keeps
/// forwarding while the test's thread sleeps through a fault.
pub struct PeerProxy {
    rules: watch::Sender<Rules>,
    listen_addrs: Vec<SocketAddr>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl PeerProxy {
    /// Starts listening for every member: `upstreams[j]` is member `j`'s
    /// real peer listener, reached through `listen[j]`
    /// ([`PeerProxy::listen_addrs`]); `sources` maps the address each
    /// member dials from to its index. The listen addresses are the
    /// caller's to choose: an ephemeral port picked here could be one the
    /// test harness has chosen, but not yet bound, for a member.
    pub fn start(
        upstreams: &[SocketAddr],
        listen: &[SocketAddr],
        sources: HashMap<IpAddr, usize>,
    ) -> io::Result<Self> {
        assert_eq!(upstreams.len(), listen.len(), "one listener per member");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("peer-proxy")
            .enable_all()
            .build()?;
        let (rules, _) = watch::channel(Rules::default());
        let sources = Arc::new(sources);
        let mut listen_addrs = Vec::new();
        for (to, (&upstream, &addr)) in upstreams.iter().zip(listen).enumerate() {
            // Bound here, so a taken port fails this call; the runtime takes
            // the listener over (`from_std` needs the runtime's reactor).
            let listener = std::net::TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            listen_addrs.push(listener.local_addr()?);
            let listener = {
                let _entered = runtime.enter();
                TcpListener::from_std(listener)?
            };
            runtime.spawn(accept_loop(
                listener,
                to,
                upstream,
                sources.clone(),
                rules.subscribe(),
            ));
        }
        Ok(PeerProxy {
            rules,
            listen_addrs,
            runtime: Some(runtime),
        })
    }

    /// Where member `j`'s peers must dial it: its advertised peer address.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen_addrs
    }

    /// Replaces every link's rule at once.
    pub fn set(&self, rules: Rules) {
        self.rules.send_replace(rules);
    }

    /// Every link passes again; held bytes are delivered.
    pub fn heal(&self) {
        self.set(Rules::default());
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    to: usize,
    upstream: SocketAddr,
    sources: Arc<HashMap<IpAddr, usize>>,
    rules: watch::Receiver<Rules>,
) {
    loop {
        let Ok((downstream, peer)) = listener.accept().await else {
            continue;
        };
        let from = sources.get(&peer.ip()).copied();
        let rules = rules.clone();
        tokio::spawn(async move {
            let link = from.map(|from| (from, to));
            // A new connection on a partitioned link waits like a SYN
            // retransmitted into the void, then goes through.
            let mut held = rules.clone();
            if wait_for_open(link, &mut held).await.is_err() {
                return;
            }
            let Ok(upstream) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = downstream.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let (down_read, down_write) = downstream.into_split();
            let (up_read, up_write) = upstream.into_split();
            tokio::join!(
                pump(down_read, up_write, link, rules.clone()),
                pump(up_read, down_write, link, rules),
            );
        });
    }
}

/// Waits until `link` is not partitioned; `Err` when the proxy is gone.
async fn wait_for_open(
    link: Option<(usize, usize)>,
    rules: &mut watch::Receiver<Rules>,
) -> Result<LinkRule, watch::error::RecvError> {
    let Some((from, to)) = link else {
        return Ok(LinkRule::Pass);
    };
    let rules = rules
        .wait_for(|r| r.of(from, to) != LinkRule::Partitioned)
        .await?;
    Ok(rules.of(from, to))
}

/// Copies one direction of a connection under its link's rule: a reader
/// stamps each chunk with when it was read, a writer delivers it once the
/// link is open and the delay has passed.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    link: Option<(usize, usize)>,
    rules: watch::Receiver<Rules>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut rules = rules;
        while let Some((read_at, chunk)) = rx.recv().await {
            let Ok(rule) = wait_for_open(link, &mut rules).await else {
                return;
            };
            if let LinkRule::Delay(delay) = rule {
                tokio::time::sleep_until(read_at + delay).await;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// Connects to `to` from the loopback address `from`.
    async fn dial_from(from: IpAddr, to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        socket.connect(to).await.unwrap()
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(within, s.read_exact(&mut back))
            .await
            .ok()?
            .ok()?;
        Some(back)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rules_isolate_cut_both_directions_of_one_member_only() {
        let rules = Rules::isolate(1, 3);
        assert_eq!(rules.of(1, 0), LinkRule::Partitioned);
        assert_eq!(rules.of(0, 1), LinkRule::Partitioned);
        assert_eq!(rules.of(2, 1), LinkRule::Partitioned);
        assert_eq!(rules.of(0, 2), LinkRule::Pass);
        assert_eq!(rules.of(2, 0), LinkRule::Pass);
    }

    #[test]
    fn a_partition_holds_bytes_until_healed_and_spares_other_links() {
        let client_rt = tokio::runtime::Runtime::new().unwrap();
        client_rt.block_on(async {
            let upstream = echo_server().await;
            let sources = HashMap::from([(ip("127.0.3.1"), 0), (ip("127.0.3.2"), 1)]);
            let listen = [SocketAddr::from(([127, 0, 0, 1], 0)); 2];
            let proxy = PeerProxy::start(&[upstream, upstream], &listen, sources).unwrap();
            let to_1 = proxy.listen_addrs()[1];
            let mut from_0 = dial_from(ip("127.0.3.1"), to_1).await;
            let mut unknown = dial_from(ip("127.0.0.1"), to_1).await;
            let short = Duration::from_millis(300);
            let long = Duration::from_secs(10);
            assert_eq!(roundtrip(&mut from_0, b"a", long).await.unwrap(), b"a");

            proxy.set(Rules::isolate(0, 2));
            // Held, not lost: nothing comes back while partitioned...
            assert_eq!(roundtrip(&mut from_0, b"b", short).await, None);
            // ...while a connection from outside the cluster passes...
            assert_eq!(roundtrip(&mut unknown, b"c", long).await.unwrap(), b"c");
            // ...and a new connection on the cut link is held too.
            let mut again = dial_from(ip("127.0.3.1"), to_1).await;
            assert_eq!(roundtrip(&mut again, b"d", short).await, None);

            proxy.heal();
            let mut late = [0u8; 1];
            tokio::time::timeout(long, from_0.read_exact(&mut late))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&late, b"b", "held bytes arrive after the heal");
            tokio::time::timeout(long, again.read_exact(&mut late))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&late, b"d");
        });
    }

    #[test]
    fn delay_holds_each_chunk_in_order() {
        let client_rt = tokio::runtime::Runtime::new().unwrap();
        client_rt.block_on(async {
            let upstream = echo_server().await;
            let sources = HashMap::from([(ip("127.0.4.1"), 0), (ip("127.0.4.2"), 1)]);
            let listen = [SocketAddr::from(([127, 0, 0, 1], 0)); 2];
            let proxy = PeerProxy::start(&[upstream, upstream], &listen, sources).unwrap();
            proxy.set(Rules::delay_all(Duration::from_millis(150), 2));
            let mut s = dial_from(ip("127.0.4.1"), proxy.listen_addrs()[1]).await;
            let started = Instant::now();
            let back = roundtrip(&mut s, b"xyz", Duration::from_secs(10)).await;
            assert_eq!(back.unwrap(), b"xyz");
            // Out through the delay and back through it again.
            assert!(started.elapsed() >= Duration::from_millis(300));
        });
    }
}
