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
//!
//! The rule of a link applies to whole connections, keyed by who dialled:
//! on the link (a, b) travel a's requests to b *and b's answers to them*.
//! So [`Rules::one_way_from`] cuts the RPCs a member sends (and their
//! answers) while the RPCs it receives, and its answers to them, pass.
//!
//! Besides rules, [`PeerProxy::reset`] closes live peer connections with a
//! TCP reset (RST), both the dialling member's side and the dialled one's:
//! the proxy cannot drop bytes inside a stream honestly (HTTP/2 framing
//! would be corrupt and the receiver would close the connection anyway),
//! so "lost packets" are modelled as connections that die mid-flight.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
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

    /// Every link between `minority` and the rest of `members` cut in both
    /// directions; links within each side pass. A cluster split in two.
    pub fn split(minority: &[usize], members: usize) -> Rules {
        let mut rules = Rules::default();
        for inside in minority.iter().copied() {
            for outside in (0..members).filter(|o| !minority.contains(o)) {
                rules.0.insert((inside, outside), LinkRule::Partitioned);
                rules.0.insert((outside, inside), LinkRule::Partitioned);
            }
        }
        rules
    }

    /// The links `member` dials cut, the links the others dial to it
    /// passing: its outbound RPCs (a leader's AppendEntries and heartbeats,
    /// a follower's forwarded requests, its own vote requests) and their
    /// answers are held, while the RPCs it receives (others' vote requests,
    /// a new leader's AppendEntries) and its answers to them go through.
    pub fn one_way_from(member: usize, members: usize) -> Rules {
        let mut rules = Rules::default();
        for other in (0..members).filter(|&o| o != member) {
            rules.0.insert((member, other), LinkRule::Partitioned);
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
    live: Arc<LiveConnections>,
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
        let live = Arc::new(LiveConnections::default());
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
                live.clone(),
            ));
        }
        Ok(PeerProxy {
            rules,
            live,
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

    /// Closes, with a TCP reset on both sides, every live connection
    /// between two members for which `pick` says yes (asked once per
    /// connection, oldest first); returns how many it reset.
    pub fn reset(&self, mut pick: impl FnMut() -> bool) -> usize {
        let mut live = self.live.lock();
        let chosen: Vec<u64> = live.keys().copied().filter(|_| pick()).collect();
        for id in &chosen {
            if let Some(reset) = live.remove(id) {
                // Already finished on its own: nothing to reset.
                let _ = reset.send(());
            }
        }
        chosen.len()
    }
}

/// Live connections between members, each with the sender that resets it.
#[derive(Default)]
struct LiveConnections {
    next_id: AtomicU64,
    by_id: Mutex<BTreeMap<u64, oneshot::Sender<()>>>,
}

impl LiveConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, oneshot::Sender<()>>> {
        // The map stays consistent whatever panicked while it was held.
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection; the receiver fires when it must be reset.
    fn register(&self) -> (u64, oneshot::Receiver<()>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        (id, rx)
    }

    fn forget(&self, id: u64) {
        self.lock().remove(&id);
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
    live: Arc<LiveConnections>,
) {
    loop {
        let Ok((downstream, peer)) = listener.accept().await else {
            continue;
        };
        let from = sources.get(&peer.ip()).copied();
        let rules = rules.clone();
        let live = live.clone();
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
            let (mut down_read, mut down_write) = downstream.into_split();
            let (mut up_read, mut up_write) = upstream.into_split();
            let forward = async {
                tokio::join!(
                    pump(&mut down_read, &mut up_write, link, rules.clone()),
                    pump(&mut up_read, &mut down_write, link, rules),
                )
            };
            // Only links between members can be reset.
            let Some(_) = link else {
                forward.await;
                return;
            };
            let (id, reset) = live.register();
            let was_reset = tokio::select! {
                _ = forward => false,
                fired = reset => fired.is_ok(),
            };
            live.forget(id);
            if was_reset {
                // Reunited halves close without a FIN; zero linger makes
                // the close an RST, as a connection killed on the way.
                for (read, write) in [(down_read, down_write), (up_read, up_write)] {
                    if let Ok(stream) = read.reunite(write) {
                        let _ = stream.set_zero_linger();
                    }
                }
            }
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
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
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

    /// A proxy for two members, both an echo server, dialling from
    /// `127.0.<net>.1` and `127.0.<net>.2` (each test its own `net`).
    async fn proxy_of_two(net: u8) -> PeerProxy {
        let upstream = echo_server().await;
        let sources = HashMap::from([
            (IpAddr::from([127, 0, net, 1]), 0),
            (IpAddr::from([127, 0, net, 2]), 1),
        ]);
        let listen = [SocketAddr::from(([127, 0, 0, 1], 0)); 2];
        PeerProxy::start(&[upstream, upstream], &listen, sources).unwrap()
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

    /// The links a rule set cuts, as (from, to) pairs in order.
    fn cut(rules: &Rules, members: usize) -> Vec<(usize, usize)> {
        let mut cut = Vec::new();
        for from in 0..members {
            for to in (0..members).filter(|&t| t != from) {
                if rules.of(from, to) == LinkRule::Partitioned {
                    cut.push((from, to));
                }
            }
        }
        cut
    }

    #[test]
    fn rules_split_cut_every_link_across_the_sides_and_none_within() {
        let rules = Rules::split(&[3, 1], 5);
        assert_eq!(
            cut(&rules, 5),
            vec![
                (0, 1),
                (0, 3),
                (1, 0),
                (1, 2),
                (1, 4),
                (2, 1),
                (2, 3),
                (3, 0),
                (3, 2),
                (3, 4),
                (4, 1),
                (4, 3),
            ]
        );
        // Within the minority and within the majority: pass.
        assert_eq!(rules.of(1, 3), LinkRule::Pass);
        assert_eq!(rules.of(0, 4), LinkRule::Pass);
        // A minority of one is an isolation.
        assert_eq!(Rules::split(&[2], 3), Rules::isolate(2, 3));
    }

    #[test]
    fn rules_one_way_from_cut_only_the_links_the_member_dials() {
        let rules = Rules::one_way_from(1, 3);
        assert_eq!(cut(&rules, 3), vec![(1, 0), (1, 2)]);
        assert_eq!(rules.of(0, 1), LinkRule::Pass);
        assert_eq!(rules.of(2, 1), LinkRule::Pass);
        assert_eq!(rules.of(0, 2), LinkRule::Pass);
    }

    #[test]
    fn a_one_way_cut_holds_the_members_requests_but_not_the_ones_it_receives() {
        let client_rt = tokio::runtime::Runtime::new().unwrap();
        client_rt.block_on(async {
            let proxy = proxy_of_two(5).await;
            let mut from_0 = dial_from(ip("127.0.5.1"), proxy.listen_addrs()[1]).await;
            let mut from_1 = dial_from(ip("127.0.5.2"), proxy.listen_addrs()[0]).await;
            proxy.set(Rules::one_way_from(0, 2));
            let short = Duration::from_millis(300);
            let long = Duration::from_secs(10);
            // 0's request and its answer are held; 1's pass both ways.
            assert_eq!(roundtrip(&mut from_0, b"a", short).await, None);
            assert_eq!(roundtrip(&mut from_1, b"b", long).await.unwrap(), b"b");
        });
    }

    #[test]
    fn reset_closes_chosen_member_connections_with_an_rst_and_spares_others() {
        let client_rt = tokio::runtime::Runtime::new().unwrap();
        client_rt.block_on(async {
            let proxy = proxy_of_two(6).await;
            let long = Duration::from_secs(10);
            // A connection is registered before it carries bytes, and reset
            // picks oldest first: so each is dialled only once the one
            // before has carried a byte, or `first` might not be first.
            let mut first = dial_from(ip("127.0.6.1"), proxy.listen_addrs()[1]).await;
            assert_eq!(roundtrip(&mut first, b"a", long).await.unwrap(), b"a");
            let mut second = dial_from(ip("127.0.6.2"), proxy.listen_addrs()[0]).await;
            assert_eq!(roundtrip(&mut second, b"a", long).await.unwrap(), b"a");
            let mut unknown = dial_from(ip("127.0.0.1"), proxy.listen_addrs()[0]).await;
            assert_eq!(roundtrip(&mut unknown, b"a", long).await.unwrap(), b"a");
            let mut asked = 0;
            let reset = proxy.reset(|| {
                asked += 1;
                asked == 1
            });
            assert_eq!((reset, asked), (1, 2), "asked per member connection");
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(long, first.read(&mut byte))
                .await
                .unwrap();
            let err = read.expect_err("the reset connection fails, not a clean EOF");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
            assert_eq!(roundtrip(&mut second, b"b", long).await.unwrap(), b"b");
            assert_eq!(roundtrip(&mut unknown, b"c", long).await.unwrap(), b"c");
        });
    }

    #[test]
    fn a_partition_holds_bytes_until_healed_and_spares_other_links() {
        let client_rt = tokio::runtime::Runtime::new().unwrap();
        client_rt.block_on(async {
            let proxy = proxy_of_two(3).await;
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
            let proxy = proxy_of_two(4).await;
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
