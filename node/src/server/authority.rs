//! Repairs the HTTP/2 `:authority` that etcdctl 3.4 sends when dialled by URL.
//!
//! etcdctl 3.4 (grpc-go underneath), given `--endpoints http://host:port` or
//! `--cluster`, dials its Maintenance calls (`endpoint status`, `endpoint
//! hashkv`) with the `:authority` pseudo-header set to the whole URL, e.g.
//! `http://127.0.0.1:2379`. grpc-go's server (real etcd) accepts that; the `h2`
//! crate under tonic rejects it as a malformed authority and resets the stream
//! with PROTOCOL_ERROR, and h2 has no option to relax the check.
//!
//! So the client listener wraps every accepted connection in
//! [`AuthorityRepair`], which fixes the client-to-server byte stream before h2
//! reads it. Writes pass straight through. On the read side it follows the
//! connection preface and the frames: every frame other than HEADERS and
//! CONTINUATION passes through byte for byte; a header block (HEADERS plus its
//! CONTINUATIONs) is decoded with an HPACK decoder that lives as long as the
//! connection, so its dynamic table mirrors the client's encoder.
//!
//! A client keeps one authority per connection (grpc-go does), so when the
//! first header block carries a well-formed `:authority` the reader stops
//! parsing and the connection is a plain pass-through: ordinary clients pay
//! for decoding one header block, not one per request. Until something is
//! rewritten, the original header block bytes go through unchanged. Once a block's `:authority` holds `scheme://`,
//! its value is cut down to the host and port, and from then on every header
//! block of that connection is re-encoded with literal representations that
//! never touch the dynamic table, so the server's decoder never needs the
//! client's table entries. Anything this reader cannot follow (a bad preface,
//! a malformed frame, an HPACK error, an over-long header block) makes it give
//! up and pass the rest of the stream through unchanged, for h2 to judge.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The HTTP/2 client connection preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Size of an HTTP/2 frame header.
const FRAME_HEADER_LEN: usize = 9;
/// The SETTINGS_MAX_FRAME_SIZE default; the server advertises no larger one.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// The most header block bytes (raw frames) held before giving up.
const MAX_HELD_BYTES: usize = 1 << 20;
/// How much is read from the socket at once when frames must be parsed.
const SCRATCH_LEN: usize = 16 * 1024;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// An HTTP/2 frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHeader {
    fn parse(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        FrameHeader {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let len = u32::try_from(self.len).unwrap_or(u32::MAX).to_be_bytes();
        let id = (self.stream_id & 0x7fff_ffff).to_be_bytes();
        [
            len[1], len[2], len[3], self.kind, self.flags, id[0], id[1], id[2], id[3],
        ]
    }
}

/// The authority with any `scheme://` prefix and `/path` suffix removed, or
/// `None` when it has no scheme and needs no repair.
fn repair_authority(value: &[u8]) -> Option<Vec<u8>> {
    let start = value.windows(3).position(|w| w == b"://")? + 3;
    let rest = &value[start..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(rest[..end].to_vec())
}

/// Appends an HPACK integer with the given prefix size and leading bits.
fn hpack_integer(value: usize, prefix_bits: u8, leading: u8, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = loona_hpack::encoder::encode_integer_into(value, prefix_bits, leading, out);
}

/// Appends one header as "literal header field without indexing, new name"
/// (RFC 7541 §6.2.2): it neither reads nor changes the dynamic table.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    for s in [name, value] {
        hpack_integer(s.len(), 7, 0, out);
        out.extend_from_slice(s);
    }
}

/// Appends a HEADERS frame carrying `block`, followed by CONTINUATION frames
/// when it does not fit in one frame of `MAX_FRAME_PAYLOAD` bytes.
fn emit_header_frames(
    stream_id: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: &[u8],
    out: &mut Vec<u8>,
) {
    let prio_len = priority.map_or(0, |p| p.len());
    let first_len = block.len().min(MAX_FRAME_PAYLOAD - prio_len);
    let (first, mut rest) = block.split_at(first_len);
    let mut head_flags = flags & !(FLAG_PADDED | FLAG_END_HEADERS | FLAG_PRIORITY);
    if priority.is_some() {
        head_flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        head_flags |= FLAG_END_HEADERS;
    }
    let head = FrameHeader {
        len: prio_len + first.len(),
        kind: TYPE_HEADERS,
        flags: head_flags,
        stream_id,
    };
    out.extend_from_slice(&head.encode());
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        let cont = FrameHeader {
            len: chunk.len(),
            kind: TYPE_CONTINUATION,
            flags: if tail.is_empty() { FLAG_END_HEADERS } else { 0 },
            stream_id,
        };
        out.extend_from_slice(&cont.encode());
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

/// The parts of a HEADERS frame payload: the optional PRIORITY fields and
/// the header block fragment (padding removed). `None` when malformed.
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut body = payload;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        let (&n, tail) = body.split_first()?;
        pad = usize::from(n);
        body = tail;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let (fields, tail) = body.split_at_checked(5)?;
        priority = Some(<[u8; 5]>::try_from(fields).ok()?);
        body = tail;
    }
    let fragment_len = body.len().checked_sub(pad)?;
    Some((priority, &body[..fragment_len]))
}

/// Where the reader is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting the 24-byte preface in `unit`.
    Preface,
    /// Collecting a 9-byte frame header in `unit`.
    FrameHeader,
    /// Passing through the payload of a frame that needs no rewriting.
    Payload { remaining: usize },
    /// Collecting the payload of a HEADERS or CONTINUATION frame in `unit`.
    BlockPayload { header: FrameHeader },
    /// Gave up: everything else passes through unchanged.
    Passthrough,
}

/// The header block being collected (HEADERS plus CONTINUATIONs).
#[derive(Debug, Default)]
struct Block {
    /// Raw bytes of the block's frames so far, to pass on unchanged.
    raw: Vec<u8>,
    /// The header block fragments, concatenated.
    fragment: Vec<u8>,
    /// The HEADERS frame's header, once seen.
    headers: Option<FrameHeader>,
    priority: Option<[u8; 5]>,
}

/// The read-side state machine: takes client bytes, yields repaired bytes.
struct Repairer {
    state: State,
    /// The unit (preface, frame header or header frame payload) being read.
    unit: Vec<u8>,
    block: Block,
    decoder: Decoder<'static>,
    /// Set once a block was rewritten: every later block is re-encoded.
    rewriting: bool,
    /// Repaired bytes not yet handed out, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
}

impl Repairer {
    fn new() -> Self {
        Repairer {
            state: State::Preface,
            unit: Vec::new(),
            block: Block::default(),
            decoder: Decoder::new(),
            rewriting: false,
            out: Vec::new(),
            out_pos: 0,
        }
    }

    /// How many of the next input bytes may skip the parser (and be
    /// reported with [`Repairer::skipped`]): none while bytes wait in `out`.
    fn direct_budget(&self) -> usize {
        if self.out_pos < self.out.len() {
            return 0;
        }
        match self.state {
            State::Passthrough => usize::MAX,
            State::Payload { remaining } => remaining,
            _ => 0,
        }
    }

    /// Accounts for `n` bytes (at most the direct budget) passed directly.
    fn skipped(&mut self, n: usize) {
        if let State::Payload { remaining } = self.state {
            let left = remaining - n.min(remaining);
            self.state = if left == 0 {
                State::FrameHeader
            } else {
                State::Payload { remaining: left }
            };
        }
    }

    /// Moves pending repaired bytes into `buf`; returns how many.
    fn take_output(&mut self, buf: &mut ReadBuf<'_>) -> usize {
        let pending = &self.out[self.out_pos..];
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..n]);
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        n
    }

    /// The client closed its side: release whatever is held, unchanged.
    fn finish(&mut self) {
        self.give_up();
    }

    /// Passes everything held, and everything to come, through unchanged.
    fn give_up(&mut self) {
        self.out.append(&mut self.block.raw);
        self.out.append(&mut self.unit);
        self.block = Block::default();
        self.state = State::Passthrough;
    }

    /// Moves up to `want - unit.len()` bytes from `input` into `unit`;
    /// returns whether the unit is complete.
    fn fill_unit(&mut self, want: usize, input: &mut &[u8]) -> bool {
        let n = want.saturating_sub(self.unit.len()).min(input.len());
        self.unit.extend_from_slice(&input[..n]);
        *input = &input[n..];
        self.unit.len() >= want
    }

    /// Feeds client bytes; the repaired bytes land in `out`.
    fn process(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            match self.state {
                State::Passthrough => {
                    self.out.extend_from_slice(input);
                    return;
                }
                State::Payload { remaining } => {
                    let n = remaining.min(input.len());
                    self.out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.skipped(n);
                }
                State::Preface => {
                    let done = self.fill_unit(PREFACE.len(), &mut input);
                    if !PREFACE.starts_with(&self.unit) {
                        self.give_up();
                    } else if done {
                        self.out.append(&mut self.unit);
                        self.state = State::FrameHeader;
                    }
                }
                State::FrameHeader => {
                    if self.fill_unit(FRAME_HEADER_LEN, &mut input) {
                        self.on_frame_header();
                    }
                }
                State::BlockPayload { header } => {
                    if self.fill_unit(header.len, &mut input) {
                        self.on_block_payload(header);
                    }
                }
            }
        }
    }

    /// A complete frame header sits in `unit`.
    fn on_frame_header(&mut self) {
        let Ok(bytes) = <[u8; FRAME_HEADER_LEN]>::try_from(&self.unit[..]) else {
            self.give_up();
            return;
        };
        let header = FrameHeader::parse(&bytes);
        let continuing = self.block.headers.map(|h| h.stream_id);
        let is_block_frame = match continuing {
            Some(id) => header.kind == TYPE_CONTINUATION && header.stream_id == id,
            None => header.kind == TYPE_HEADERS,
        };
        if continuing.is_some() || header.kind == TYPE_CONTINUATION {
            if !is_block_frame {
                // h2 will reject this frame sequence itself.
                self.give_up();
                return;
            }
        } else if !is_block_frame {
            self.out.append(&mut self.unit);
            self.state = match header.len {
                0 => State::FrameHeader,
                remaining => State::Payload { remaining },
            };
            return;
        }
        if self.block.raw.len() + FRAME_HEADER_LEN + header.len > MAX_HELD_BYTES {
            self.give_up();
            return;
        }
        self.block.raw.append(&mut self.unit);
        self.state = State::BlockPayload { header };
        if header.len == 0 {
            self.on_block_payload(header);
        }
    }

    /// The complete payload of a HEADERS or CONTINUATION frame sits in `unit`.
    fn on_block_payload(&mut self, header: FrameHeader) {
        if header.kind == TYPE_HEADERS {
            let Some((priority, fragment)) = split_headers_payload(header.flags, &self.unit) else {
                self.give_up();
                return;
            };
            self.block.fragment.extend_from_slice(fragment);
            self.block.priority = priority;
            self.block.headers = Some(header);
        } else {
            self.block.fragment.extend_from_slice(&self.unit);
        }
        self.block.raw.append(&mut self.unit);
        self.state = State::FrameHeader;
        if header.flags & FLAG_END_HEADERS != 0 {
            self.finish_block();
        }
    }

    /// The header block is complete: decode it, pass it on or re-encode it.
    fn finish_block(&mut self) {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut repaired = false;
        let mut good_authority = false;
        let decoded = self
            .decoder
            .decode_with_cb(&self.block.fragment, |name, value| {
                let is_authority = &name[..] == b":authority";
                let fixed = is_authority.then(|| repair_authority(&value)).flatten();
                good_authority |= is_authority && fixed.is_none();
                repaired |= fixed.is_some();
                let value = fixed.map_or(value, Cow::Owned);
                fields.push((name.into_owned(), value.into_owned()));
            });
        let Some(headers) = self.block.headers.filter(|_| decoded.is_ok()) else {
            self.give_up();
            return;
        };
        self.rewriting |= repaired;
        let block = std::mem::take(&mut self.block);
        if !self.rewriting {
            self.out.extend_from_slice(&block.raw);
            if good_authority {
                // A client sets one authority per connection (grpc-go does),
                // so a well-formed first one means nothing on this
                // connection needs repair: stop parsing, pass bytes on.
                self.state = State::Passthrough;
            }
            return;
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        for (name, value) in &fields {
            encode_literal(name, value, &mut encoded);
        }
        emit_header_frames(
            headers.stream_id,
            headers.flags,
            block.priority,
            &encoded,
            &mut self.out,
        );
    }
}

/// A client connection whose incoming HTTP/2 `:authority` values are repaired
/// (see the module comment). Writes pass straight through.
pub struct AuthorityRepair<IO> {
    inner: IO,
    repairer: Repairer,
    scratch: Vec<u8>,
    eof: bool,
}

impl<IO> AuthorityRepair<IO> {
    pub fn new(inner: IO) -> Self {
        AuthorityRepair {
            inner,
            repairer: Repairer::new(),
            scratch: Vec::new(),
            eof: false,
        }
    }
}

impl<IO: Connected> Connected for AuthorityRepair<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityRepair<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.repairer.take_output(buf) > 0 {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let budget = this.repairer.direct_budget();
            if budget == usize::MAX {
                // Passing through: the caller's buffer goes to the socket
                // as it is, uninitialised memory and all (initialising it
                // cost every read a memset of the whole buffer).
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let n = buf.filled().len() - before;
                this.repairer.skipped(n);
                this.eof = n == 0;
                return Poll::Ready(Ok(()));
            }
            if budget > 0 {
                // Bytes that need no parsing go straight into the caller's buffer.
                let dst = buf.initialize_unfilled_to(buf.remaining().min(budget));
                let mut direct = ReadBuf::new(dst);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut direct))?;
                let n = direct.filled().len();
                buf.advance(n);
                this.repairer.skipped(n);
                this.eof = n == 0;
                return Poll::Ready(Ok(()));
            }
            this.scratch.resize(SCRATCH_LEN, 0);
            let mut raw = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut raw))?;
            let n = raw.filled().len();
            if n == 0 {
                this.eof = true;
                this.repairer.finish();
            } else {
                this.repairer.process(&this.scratch[..n]);
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityRepair<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Encoder;
    use tokio::io::AsyncReadExt;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn request(authority: &str, path: &str) -> Fields {
        fields(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("user-agent", "grpc-go/1.26.0"),
            ("te", "trailers"),
        ])
    }

    fn hpack(encoder: &mut Encoder<'_>, fields: &Fields) -> Vec<u8> {
        encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            len: payload.len(),
            kind,
            flags,
            stream_id,
        };
        let mut out = header.encode().to_vec();
        out.extend_from_slice(payload);
        out
    }

    /// A HEADERS frame with padding and priority, then two CONTINUATIONs.
    fn split_block(stream_id: u32, block: &[u8]) -> Vec<u8> {
        let third = block.len() / 3;
        let mut payload = vec![4u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 15]);
        payload.extend_from_slice(&block[..third]);
        payload.extend_from_slice(&[0; 4]);
        let mut out = frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY,
            stream_id,
            &payload,
        );
        out.extend(frame(
            TYPE_CONTINUATION,
            0,
            stream_id,
            &block[third..2 * third],
        ));
        out.extend(frame(
            TYPE_CONTINUATION,
            FLAG_END_HEADERS,
            stream_id,
            &block[2 * third..],
        ));
        out
    }

    /// Yields its data a few bytes at a time, to exercise partial reads.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let end = this.data.len().min(this.pos + this.step);
            let n = (end - this.pos).min(buf.remaining());
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    async fn read_through(data: Vec<u8>, step: usize) -> Vec<u8> {
        let mut reader = AuthorityRepair::new(Trickle { data, pos: 0, step });
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.expect("read");
        out
    }

    /// Parses frames, returning (header, payload) pairs; panics if malformed.
    fn frames(mut data: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let bytes: [u8; 9] = data[..9].try_into().expect("header");
            let header = FrameHeader::parse(&bytes);
            out.push((header, data[9..9 + header.len].to_vec()));
            data = &data[9 + header.len..];
        }
        out
    }

    /// Decodes every header block of a frame stream, as h2 would.
    fn decode_blocks(data: &[u8]) -> Vec<(FrameHeader, Fields)> {
        let mut decoder = Decoder::new();
        let mut blocks = Vec::new();
        let mut pending: Option<(FrameHeader, Vec<u8>)> = None;
        for (header, payload) in frames(data) {
            match header.kind {
                TYPE_HEADERS => {
                    let (_, fragment) =
                        split_headers_payload(header.flags, &payload).expect("payload");
                    pending = Some((header, fragment.to_vec()));
                }
                TYPE_CONTINUATION => {
                    pending.as_mut().expect("headers").1.extend(payload);
                }
                _ => continue,
            }
            if header.flags & FLAG_END_HEADERS != 0 {
                let (first, block) = pending.take().expect("block");
                blocks.push((first, decoder.decode(&block).expect("hpack")));
            }
        }
        blocks
    }

    #[test]
    fn frame_header_round_trip() {
        let bytes = [0x00, 0x40, 0x01, 0x01, 0x25, 0x80, 0x00, 0x00, 0x07];
        let header = FrameHeader::parse(&bytes);
        assert_eq!(
            header,
            FrameHeader {
                len: 16_385,
                kind: TYPE_HEADERS,
                flags: 0x25,
                stream_id: 7,
            }
        );
        // The reserved bit is dropped.
        assert_eq!(header.encode(), [0x00, 0x40, 0x01, 0x01, 0x25, 0, 0, 0, 7]);
    }

    #[test]
    fn authority_repair() {
        assert_eq!(
            repair_authority(b"http://127.0.0.1:2379").as_deref(),
            Some(&b"127.0.0.1:2379"[..])
        );
        assert_eq!(repair_authority(b"127.0.0.1:2379"), None);
        assert_eq!(
            repair_authority(b"https://h:1/x").as_deref(),
            Some(&b"h:1"[..])
        );
    }

    #[test]
    fn headers_payload_split() {
        let payload = [2, 1, 2, 3, 4, 5, b'a', b'b', 0, 0];
        let (prio, frag) =
            split_headers_payload(FLAG_PADDED | FLAG_PRIORITY, &payload).expect("valid");
        assert_eq!(prio, Some([1, 2, 3, 4, 5]));
        assert_eq!(frag, b"ab");
        assert!(split_headers_payload(FLAG_PADDED, &[5, 1]).is_none());
        assert!(split_headers_payload(FLAG_PADDED, &[]).is_none());
        assert!(split_headers_payload(FLAG_PRIORITY, &[1, 2]).is_none());
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let block = vec![7u8; 2 * MAX_FRAME_PAYLOAD + 10];
        let mut out = Vec::new();
        emit_header_frames(
            3,
            0x1 | FLAG_PADDED,
            Some([0, 0, 0, 1, 9]),
            &block,
            &mut out,
        );
        let parsed = frames(&out);
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0].0.kind, TYPE_HEADERS);
        assert_eq!(parsed[0].0.flags, 0x1 | FLAG_PRIORITY);
        assert_eq!(parsed[0].0.len, MAX_FRAME_PAYLOAD);
        assert_eq!(parsed[1].0.kind, TYPE_CONTINUATION);
        assert_eq!(parsed[1].0.flags, 0);
        assert_eq!(parsed[2].0.flags, FLAG_END_HEADERS);
        let mut joined = parsed[0].1[5..].to_vec();
        joined.extend(&parsed[1].1);
        joined.extend(&parsed[2].1);
        assert_eq!(joined, block);
    }

    #[tokio::test]
    async fn repairs_authority_and_keeps_later_blocks_consistent() {
        // A client whose encoder uses the dynamic table, as grpc-go's does.
        let mut encoder = Encoder::new();
        // A header new to the table, so the rewritten block inserts it and
        // the next block refers to it by a dynamic index.
        let custom = (b"x-trace".to_vec(), b"abc".to_vec());
        let mut bad = request("http://127.0.0.1:2379", "/etcdserverpb.Maintenance/Status");
        bad.push(custom.clone());
        let mut bad_again = request("http://127.0.0.1:2379", "/etcdserverpb.Maintenance/HashKV");
        bad_again.push(custom);
        let good = request("127.0.0.1:2379", "/etcdserverpb.KV/Range");
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        let block = hpack(&mut encoder, &bad);
        input.extend(split_block(1, &block));
        input.extend(frame(0x0, 0x1, 1, b"\0\0\0\0\x02hi"));
        let block = hpack(&mut encoder, &bad_again);
        // `x-trace: abc` is the newest dynamic table entry, index 62.
        assert_eq!(block.last(), Some(&(0x80 | 62)), "{block:?}");
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS | 0x1, 3, &block));
        let block = hpack(&mut encoder, &good);
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 5, &block));

        for step in [1, 7, 100_000] {
            let out = read_through(input.clone(), step).await;
            // The preface and the SETTINGS frame are untouched.
            assert_eq!(out[..24 + 15], input[..24 + 15]);
            let blocks = decode_blocks(&out[24..]);
            let fixed = |f: &Fields| {
                let mut f = f.clone();
                f[3].1 = b"127.0.0.1:2379".to_vec();
                f
            };
            assert_eq!(blocks.len(), 3);
            assert_eq!(blocks[0].1, fixed(&bad));
            assert_eq!(blocks[1].1, fixed(&bad_again));
            assert_eq!(blocks[2].1, good);
            assert_eq!(blocks[0].0.stream_id, 1);
            assert_eq!(blocks[0].0.flags, FLAG_PRIORITY | FLAG_END_HEADERS);
            assert_eq!(blocks[1].0.flags, FLAG_END_HEADERS | 0x1);
        }
    }

    #[tokio::test]
    async fn a_good_first_authority_turns_parsing_off() {
        let mut encoder = Encoder::new();
        let mut input = PREFACE.to_vec();
        let block = hpack(&mut encoder, &request("127.0.0.1:2379", "/a"));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        // Not even valid HPACK: proof that nothing after the first block is
        // decoded any more.
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &[0xff; 12]));
        assert_eq!(read_through(input.clone(), 3).await, input);
    }

    #[tokio::test]
    async fn passes_good_traffic_through_byte_for_byte() {
        let mut encoder = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        for (i, path) in ["/a", "/b", "/a"].iter().enumerate() {
            let block = hpack(&mut encoder, &request("127.0.0.1:2379", path));
            let id = 2 * i as u32 + 1;
            input.extend(split_block(id, &block));
            input.extend(frame(0x0, 0x1, id, &[0; 300]));
        }
        input.extend(frame(0x6, 0, 0, &[1; 8]));
        for step in [1, 5, 100_000] {
            assert_eq!(read_through(input.clone(), step).await, input);
        }
    }

    #[tokio::test]
    async fn garbage_passes_through_unchanged() {
        let mut not_h2 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        not_h2.extend([0xff; 40]);
        assert_eq!(read_through(not_h2.clone(), 3).await, not_h2);

        // A header block that is not valid HPACK.
        let mut bad_hpack = PREFACE.to_vec();
        bad_hpack.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0xff]));
        bad_hpack.extend(frame(0x0, 0, 1, b"rest"));
        assert_eq!(read_through(bad_hpack.clone(), 4).await, bad_hpack);

        // A stream cut off in the middle of a header block.
        let mut cut = PREFACE.to_vec();
        cut.extend(frame(TYPE_HEADERS, 0, 1, &[0x82]));
        cut.extend(&frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x84; 20])[..15]);
        assert_eq!(read_through(cut.clone(), 2).await, cut);

        // A header block too big to hold.
        let mut huge_headers = PREFACE.to_vec();
        huge_headers.extend(frame(TYPE_HEADERS, 0, 1, &[0x82; MAX_FRAME_PAYLOAD]));
        for _ in 0..80 {
            huge_headers.extend(frame(TYPE_CONTINUATION, 0, 1, &[0x82; MAX_FRAME_PAYLOAD]));
        }
        assert_eq!(
            read_through(huge_headers.clone(), 100_000).await,
            huge_headers
        );
    }
}
