//! The client side of one benchmark stream, without I/O: the response head, chunked transfer
//! coding (what hyper and axum send) or a raw body (what a server that owns its socket may
//! send), and a fast SSE path that only counts frames and reads `id:` and the first two tokens
//! of `data:` (the publish time in ns and, when an HTTP publisher wrote the event, its sequence
//! number within its topic).

/// Longest line kept across reads; a longer one is a protocol error.
const MAX_LINE: usize = 64 * 1024;

/// What the head of a response said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// Whether the body is chunked.
    pub chunked: bool,
    /// Whether `content-type` is `text/event-stream`.
    pub event_stream: bool,
    /// The `content-encoding`, when there is one (lower case).
    pub encoding: Option<String>,
}

/// Finds the end of a response head in `buf`: `Ok(Some((head, body_start)))` when complete,
/// `Ok(None)` when more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 response: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut chunked, mut event_stream, mut encoding) = (false, false, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim().to_ascii_lowercase();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.contains("chunked");
        } else if name.eq_ignore_ascii_case("content-type") {
            event_stream = value.starts_with("text/event-stream");
        } else if name.eq_ignore_ascii_case("content-encoding") && value != "identity" {
            encoding = Some(value);
        }
    }
    Ok(Some((Head { status, chunked, event_stream, encoding }, end + 4)))
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line: the size so far, and whether an extension started.
    Size(u64, bool),
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// After a chunk's data, up to and including its LF.
    DataEnd,
    /// The last chunk was read: the body ended.
    Done,
}

/// What one frame carried, handed to the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Frame {
    /// The `id:` value, when it was a decimal number.
    pub id: Option<u64>,
    /// The first token of the (first) `data:` line, when it was a decimal number.
    pub stamp: Option<u64>,
    /// The second token of the (first) `data:` line, when it was a decimal number: the
    /// sequence number `loadgen --publish-path` writes there (servers such as nchan choose
    /// their own `id:`s, so the ids cannot count gaps).
    pub seq: Option<u64>,
}

/// An SSE body decoder: feed it what the socket gave, it calls back once per dispatched frame.
#[derive(Debug)]
pub struct Decoder {
    /// Chunked coding state; `None` for a raw body.
    chunk: Option<Chunk>,
    /// A line split across reads (or chunks), kept until its LF arrives.
    carry: Vec<u8>,
    /// The frame being read.
    frame: Frame,
    /// Whether the frame being read has any field (so a blank line dispatches it).
    pending: bool,
    /// Whether the body ended (last chunk).
    pub ended: bool,
    /// The content coding undone before the event stream is read, if any.
    inflate: Option<Inflate>,
    /// Output buffer of `inflate`, reused.
    piece: Vec<u8>,
}

/// A content decoder (the client's side of a compressed stream: its cost is the load
/// generator's, not the server's).
enum Inflate {
    /// zstd: any sequence of frames.
    Zstd(Box<zstd::zstd_safe::DCtx<'static>>),
    /// gzip: the 10-byte header ssehub writes (no optional fields), then raw deflate.
    Gzip { header: usize, inflate: Box<flate2::Decompress> },
}

impl std::fmt::Debug for Inflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Inflate::Zstd(_) => "zstd",
            Inflate::Gzip { .. } => "gzip",
        })
    }
}

/// Decoded bytes handed to the line reader at a time.
const PIECE: usize = 64 * 1024;

impl Decoder {
    /// A decoder for a body that is chunked or not, in `encoding` (`None`: identity).
    pub fn new(chunked: bool, encoding: Option<&str>) -> Result<Decoder, String> {
        let inflate = match encoding {
            None => None,
            Some("zstd") => Some(Inflate::Zstd(Box::new(
                zstd::zstd_safe::DCtx::try_create().ok_or("zstd: out of memory")?,
            ))),
            Some("gzip") => Some(Inflate::Gzip {
                header: 10,
                inflate: Box::new(flate2::Decompress::new(false)),
            }),
            Some(other) => return Err(format!("content-encoding {other} is not zstd or gzip")),
        };
        Ok(Decoder {
            chunk: chunked.then_some(Chunk::Size(0, false)),
            carry: Vec::new(),
            frame: Frame::default(),
            pending: false,
            ended: false,
            inflate,
            piece: Vec::new(),
        })
    }

    /// Decodes `input` (bytes as read from the socket), calling `sink` per frame.
    pub fn feed(&mut self, mut input: &[u8], sink: &mut impl FnMut(Frame)) -> Result<(), String> {
        let Some(mut state) = self.chunk else {
            return self.body(input, sink);
        };
        while !input.is_empty() {
            match state {
                Chunk::Size(size, ext) => {
                    let Some(end) = memchr::memchr(b'\n', input) else {
                        state = size_digits(input, size, ext)?;
                        break;
                    };
                    let Chunk::Size(size, _) = size_digits(&input[..end], size, ext)? else {
                        unreachable!("size_digits keeps the state")
                    };
                    input = &input[end + 1..];
                    state = if size == 0 { Chunk::Done } else { Chunk::Data(size) };
                }
                Chunk::Data(left) => {
                    let take = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.body(&input[..take], sink)?;
                    input = &input[take..];
                    let left = left - take as u64;
                    state = if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) };
                }
                Chunk::DataEnd => match memchr::memchr(b'\n', input) {
                    Some(end) => {
                        input = &input[end + 1..];
                        state = Chunk::Size(0, false);
                    }
                    None => break,
                },
                Chunk::Done => {
                    self.ended = true;
                    break;
                }
            }
        }
        if state == Chunk::Done {
            self.ended = true;
        }
        self.chunk = Some(state);
        Ok(())
    }

    /// Decodes body bytes: undoes the content coding, if any, then reads the event stream.
    fn body(&mut self, input: &[u8], sink: &mut impl FnMut(Frame)) -> Result<(), String> {
        let Some(mut inflate) = self.inflate.take() else {
            return self.lines(input, sink);
        };
        let mut piece = std::mem::take(&mut self.piece);
        let result = self.inflated(&mut inflate, input, &mut piece, sink);
        self.inflate = Some(inflate);
        self.piece = piece;
        result
    }

    /// Inflates `input` piece by piece into the line reader.
    fn inflated(
        &mut self,
        inflate: &mut Inflate,
        mut input: &[u8],
        piece: &mut Vec<u8>,
        sink: &mut impl FnMut(Frame),
    ) -> Result<(), String> {
        loop {
            piece.clear();
            piece.resize(PIECE, 0);
            let (taken, written) = match inflate {
                Inflate::Zstd(dctx) => {
                    let mut inb = zstd::zstd_safe::InBuffer::around(input);
                    let mut outb = zstd::zstd_safe::OutBuffer::around(&mut piece[..]);
                    dctx.decompress_stream(&mut outb, &mut inb).map_err(|code| {
                        format!("zstd: {}", zstd::zstd_safe::get_error_name(code))
                    })?;
                    (inb.pos(), outb.pos())
                }
                Inflate::Gzip { header, inflate } => {
                    if *header > 0 {
                        let skip = (*header).min(input.len());
                        *header -= skip;
                        (skip, 0)
                    } else {
                        let (i, o) = (inflate.total_in(), inflate.total_out());
                        inflate
                            .decompress(input, piece, flate2::FlushDecompress::Sync)
                            .map_err(|e| format!("gzip: {e}"))?;
                        ((inflate.total_in() - i) as usize, (inflate.total_out() - o) as usize)
                    }
                }
            };
            self.lines(&piece[..written], sink)?;
            input = &input[taken..];
            if input.is_empty() && written < PIECE {
                return Ok(());
            }
            if taken == 0 && written == 0 {
                return Err("the compressed stream does not progress".into());
            }
        }
    }

    /// Reads event-stream bytes: whole lines go straight from `input`, only a split line is
    /// copied.
    fn lines(&mut self, mut input: &[u8], sink: &mut impl FnMut(Frame)) -> Result<(), String> {
        while let Some(end) = memchr::memchr(b'\n', input) {
            if self.carry.is_empty() {
                self.line(&input[..end], sink);
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(&input[..end]);
                self.line(&line, sink);
                line.clear();
                self.carry = line;
            }
            input = &input[end + 1..];
        }
        if !input.is_empty() {
            if self.carry.len() + input.len() > MAX_LINE {
                return Err("line too long".into());
            }
            self.carry.extend_from_slice(input);
        }
        Ok(())
    }

    /// One line of the event stream (CR before LF tolerated).
    fn line(&mut self, line: &[u8], sink: &mut impl FnMut(Frame)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.pending {
                sink(std::mem::take(&mut self.frame));
                self.pending = false;
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"id" => {
                self.frame.id = number(value);
                self.pending = true;
            }
            b"data" => {
                if self.frame.stamp.is_none() {
                    let (token, rest) = match memchr::memchr(b' ', value) {
                        Some(s) => (&value[..s], &value[s + 1..]),
                        None => (value, &b""[..]),
                    };
                    self.frame.stamp = number(token);
                    let token = memchr::memchr(b' ', rest).map_or(rest, |s| &rest[..s]);
                    self.frame.seq = number(token);
                }
                self.pending = true;
            }
            _ => self.pending = true,
        }
    }
}

/// Adds the hex digits of a chunk-size line (up to its LF, excluded) to `size`.
fn size_digits(line: &[u8], mut size: u64, mut ext: bool) -> Result<Chunk, String> {
    for &b in line {
        if ext || b == b'\r' || b == b' ' || b == b'\t' {
            continue;
        }
        if b == b';' {
            ext = true;
            continue;
        }
        let digit = (b as char).to_digit(16).ok_or("bad chunk size")?;
        size = size.checked_mul(16).ok_or("chunk size overflows")? + u64::from(digit);
    }
    Ok(Chunk::Size(size, ext))
}

/// A decimal number, or `None`.
fn number(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in text {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunked: bool, pieces: &[&[u8]]) -> (Vec<Frame>, bool) {
        let mut decoder = Decoder::new(chunked, None).expect("identity");
        let mut out = Vec::new();
        for piece in pieces {
            decoder.feed(piece, &mut |f| out.push(f)).expect("valid input");
        }
        (out, decoder.ended)
    }

    const TWO: &[u8] = b"event: tick\nid: 1\ndata: 1700000000000000000 xxxx\n\n\
                          : keep-alive\nevent: tick\nid: 2\ndata: 1700000000000000001 yy\n\n";

    fn expected() -> Vec<Frame> {
        vec![
            Frame { id: Some(1), stamp: Some(1_700_000_000_000_000_000), seq: None },
            Frame { id: Some(2), stamp: Some(1_700_000_000_000_000_001), seq: None },
        ]
    }

    #[test]
    fn raw_body_split_anywhere() {
        for cut in 0..TWO.len() {
            let (out, ended) = frames(false, &[&TWO[..cut], &TWO[cut..]]);
            assert_eq!(out, expected(), "cut at {cut}");
            assert!(!ended);
        }
    }

    #[test]
    fn chunked_body_split_anywhere() {
        let mut wire = Vec::new();
        for part in [&TWO[..30], &TWO[30..]] {
            wire.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
            wire.extend_from_slice(part);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        for cut in 0..wire.len() {
            let (out, ended) = frames(true, &[&wire[..cut], &wire[cut..]]);
            assert_eq!(out, expected(), "cut at {cut}");
            assert!(ended, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(frames(true, &bytes).0, expected());
    }

    #[test]
    fn crlf_lines_and_odd_fields() {
        let (out, _) = frames(false, &[b"id: x\r\ndata: 12 a\r\ndata: 99\r\n\r\nretry: 5\n\n"]);
        assert_eq!(out, vec![Frame { id: None, stamp: Some(12), seq: None }, Frame::default()]);
    }

    #[test]
    fn sequence_after_the_stamp() {
        let input: &[u8] = b"id: 1700000000000:0\ndata: 17 42 xxxx\n\ndata: 18 43\n\ndata: 19\n\n";
        let (out, _) = frames(false, &[input]);
        assert_eq!(
            out,
            vec![
                Frame { id: None, stamp: Some(17), seq: Some(42) },
                Frame { id: None, stamp: Some(18), seq: Some(43) },
                Frame { id: None, stamp: Some(19), seq: None },
            ]
        );
    }

    #[test]
    fn heads() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                     Transfer-Encoding: chunked\r\n\r\n5\r\n";
        let (parsed, start) = parse_head(head).expect("valid").expect("complete");
        assert_eq!(parsed, Head { status: 200, chunked: true, event_stream: true, encoding: None });
        assert_eq!(&head[start..], b"5\r\n");
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n"), Ok(None));
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn compressed_bodies_decode_into_the_same_frames() {
        let text: Vec<u8> = (0..200u64)
            .flat_map(|i| {
                format!("id: {i}\ndata: {} 7 xxxxxxxxxxxxxxxx\n\n", 1_000_000 + i).into_bytes()
            })
            .collect();
        let zstd_body = zstd::encode_all(&text[..], 3).expect("zstd");
        let mut gzip_body = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        let mut deflate = flate2::Compress::new(flate2::Compression::new(6), false);
        let mut out = Vec::with_capacity(text.len() + 64);
        deflate.compress_vec(&text, &mut out, flate2::FlushCompress::Sync).expect("deflate");
        gzip_body.extend_from_slice(&out);
        for (coding, body) in [("zstd", zstd_body), ("gzip", gzip_body)] {
            for split in [1, 7, body.len()] {
                let mut decoder = Decoder::new(false, Some(coding)).expect("known");
                let mut ids = Vec::new();
                for chunk in body.chunks(split) {
                    decoder.feed(chunk, &mut |frame| ids.push(frame.id)).expect("decodes");
                }
                assert_eq!(ids, (0..200).map(Some).collect::<Vec<_>>(), "{coding} by {split}");
            }
        }
        assert!(Decoder::new(false, Some("br")).is_err());
    }
}
