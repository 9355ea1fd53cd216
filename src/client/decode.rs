//! The response's content coding undone as the body arrives: zstd (any sequence of frames) and
//! gzip (any sequence of members, with or without a trailer at the end), decoded in bounded
//! pieces so a small hostile body cannot make the client allocate without end.

use flate2::{Decompress, FlushDecompress, Status};
use zstd::zstd_safe::{DCtx, DParameter, InBuffer, OutBuffer};

use super::ClientError;

/// Most bytes one call to the codec writes before the parser takes them: what decoding adds to
/// the parser's own caps.
const PIECE: usize = 64 * 1024;

/// The largest zstd window the client accepts: 8 MiB, what RFC 9659 asks servers to stay
/// within for `Content-Encoding: zstd`.
const ZSTD_WINDOW_LOG_MAX: i32 = 23;

/// The longest gzip header the client reads (name, comment and extra field included).
const GZIP_HEADER_MAX: usize = 16 * 1024;

/// The decoder of one response body.
pub(super) enum Decoder {
    /// `identity` (or no `Content-Encoding`).
    Identity,
    /// `zstd`.
    Zstd(Box<DCtx<'static>>),
    /// `gzip`: a header to read, then raw deflate, then its trailer, then maybe another member.
    Gzip(Box<Gzip>),
}

/// Where a gzip body stands.
pub(super) struct Gzip {
    /// The header bytes read so far (a header may arrive split across chunks).
    header: Vec<u8>,
    /// The deflate stream of the current member, once its header is read.
    inflate: Option<Decompress>,
    /// Trailer bytes still to skip after a member's last block.
    trailer: usize,
}

impl Decoder {
    /// The decoder for a `Content-Encoding` header's value (`None`: no header).
    pub(super) fn for_encoding(encoding: Option<&str>) -> Result<Decoder, ClientError> {
        let name = encoding.map(|e| e.trim().to_ascii_lowercase()).unwrap_or_default();
        match name.as_str() {
            "" | "identity" => Ok(Decoder::Identity),
            "zstd" => {
                let mut dctx = DCtx::try_create()
                    .ok_or_else(|| ClientError::Decode("zstd: out of memory".into()))?;
                dctx.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX as u32))
                    .map_err(|code| ClientError::Decode(zstd_error(code)))?;
                Ok(Decoder::Zstd(Box::new(dctx)))
            }
            "gzip" | "x-gzip" => {
                Ok(Decoder::Gzip(Box::new(Gzip { header: Vec::new(), inflate: None, trailer: 0 })))
            }
            _ => Err(ClientError::ContentEncoding(name)),
        }
    }

    /// Whether the body passes through as it is.
    pub(super) fn is_identity(&self) -> bool {
        matches!(self, Decoder::Identity)
    }

    /// Decodes from `input` (from `*at` on, moving it) into `piece` (cleared first), at most
    /// 64 KiB; returns whether to call again: more input is left, or the codec may hold more
    /// output. The caller hands each piece to the parser before it asks for the next, so a
    /// small compressed body cannot make it hold more than its caps and one piece.
    pub(super) fn next_piece(
        &mut self,
        input: &[u8],
        at: &mut usize,
        piece: &mut Vec<u8>,
    ) -> Result<bool, ClientError> {
        piece.clear();
        piece.resize(PIECE, 0);
        let rest = &input[(*at).min(input.len())..];
        let (taken, written, more) = match self {
            Decoder::Identity => {
                let n = rest.len().min(PIECE);
                piece[..n].copy_from_slice(&rest[..n]);
                (n, n, n < rest.len())
            }
            Decoder::Zstd(dctx) => zstd_piece(dctx, rest, piece)?,
            Decoder::Gzip(gzip) => gzip.piece(rest, piece)?,
        };
        piece.truncate(written);
        *at += taken;
        Ok(more)
    }
}

/// zstd's name for an error code.
fn zstd_error(code: usize) -> String {
    format!("zstd: {}", zstd::zstd_safe::get_error_name(code))
}

/// One piece of zstd output from `input`: (bytes taken, bytes written, call again).
fn zstd_piece(
    dctx: &mut DCtx<'static>,
    input: &[u8],
    piece: &mut [u8],
) -> Result<(usize, usize, bool), ClientError> {
    let mut input = InBuffer::around(input);
    let mut output = OutBuffer::around(piece);
    dctx.decompress_stream(&mut output, &mut input)
        .map_err(|code| ClientError::Decode(zstd_error(code)))?;
    let (taken, written) = (input.pos(), output.pos());
    // A full piece may leave output inside the codec; input left is more to do.
    let more = taken < input.src.len() || written == PIECE;
    if !more || written > 0 || taken > 0 {
        return Ok((taken, written, more));
    }
    Err(ClientError::Decode("zstd: the stream does not progress".into()))
}

impl Gzip {
    /// One piece of output from `input`, member after member: (bytes taken, bytes written,
    /// call again).
    fn piece(
        &mut self,
        input: &[u8],
        piece: &mut [u8],
    ) -> Result<(usize, usize, bool), ClientError> {
        let mut taken = 0;
        while taken < input.len() {
            let rest = &input[taken..];
            if self.trailer > 0 {
                let skip = self.trailer.min(rest.len());
                self.trailer -= skip;
                taken += skip;
                continue;
            }
            let Some(inflate) = self.inflate.as_mut() else {
                taken += self.read_header(rest)?;
                continue;
            };
            let in_before = inflate.total_in();
            let out_before = inflate.total_out();
            let status = inflate
                .decompress(rest, piece, FlushDecompress::Sync)
                .map_err(|error| ClientError::Decode(format!("gzip: {error}")))?;
            let used = usize::try_from(inflate.total_in() - in_before).unwrap_or(rest.len());
            let written = usize::try_from(inflate.total_out() - out_before).unwrap_or(PIECE);
            taken += used;
            if status == Status::StreamEnd {
                // A member's end: its CRC and length follow (not checked: the parser checks
                // the stream itself), then possibly another member.
                self.inflate = None;
                self.trailer = 8;
            }
            if written > 0 {
                return Ok((taken, written, true));
            }
            if used == 0 && status != Status::StreamEnd {
                return Err(ClientError::Decode("gzip: the stream does not progress".into()));
            }
        }
        Ok((taken, 0, false))
    }

    /// Takes header bytes from `input` until the header is whole; returns how many it took.
    fn read_header(&mut self, input: &[u8]) -> Result<usize, ClientError> {
        // One byte at a time is simplest for a header that may be split anywhere; headers are
        // ten bytes in practice, so this runs rarely and briefly.
        for (i, &byte) in input.iter().enumerate() {
            self.header.push(byte);
            if self.header.len() > GZIP_HEADER_MAX {
                return Err(ClientError::Decode("gzip: header too long".into()));
            }
            if gzip_header_len(&self.header)?.is_some() {
                self.header.clear();
                self.inflate = Some(Decompress::new(false));
                return Ok(i + 1);
            }
        }
        Ok(input.len())
    }
}

/// The length of the gzip header at the start of `bytes` once it is whole (`None`: more bytes
/// needed). Errors on what is not a deflate gzip header.
fn gzip_header_len(bytes: &[u8]) -> Result<Option<usize>, ClientError> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let bad = |why: &str| ClientError::Decode(format!("gzip: {why}"));
    if bytes.len() >= 2 && bytes[..2] != [0x1f, 0x8b] {
        return Err(bad("not a gzip header"));
    }
    if bytes.len() >= 3 && bytes[2] != 8 {
        return Err(bad("not deflate"));
    }
    if bytes.len() < 10 {
        return Ok(None);
    }
    let flags = bytes[3];
    let mut at = 10;
    if flags & FEXTRA != 0 {
        let Some(len) = bytes.get(at..at + 2) else { return Ok(None) };
        at += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let Some(rest) = bytes.get(at..) else { return Ok(None) };
            let Some(nul) = rest.iter().position(|&b| b == 0) else { return Ok(None) };
            at += nul + 1;
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    Ok((bytes.len() >= at).then_some(at))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn decode_all(decoder: &mut Decoder, chunks: &[&[u8]]) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        let mut piece = Vec::new();
        for chunk in chunks {
            let mut at = 0;
            loop {
                let more = decoder.next_piece(chunk, &mut at, &mut piece)?;
                assert!(piece.len() <= PIECE);
                out.extend_from_slice(&piece);
                if !more {
                    break;
                }
            }
            assert_eq!(at, chunk.len(), "every byte taken");
        }
        Ok(out)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        encoder.write_all(data).expect("write");
        encoder.finish().expect("finish")
    }

    #[test]
    fn zstd_frames_and_gzip_members_decode_split_at_every_byte() {
        let a = b"data: one\n\n".repeat(50);
        let b = b"event: x\ndata: two\n\n".repeat(30);
        let expected = [a.clone(), b.clone()].concat();
        let zstd_body = [
            zstd::encode_all(&a[..], 3).expect("zstd"),
            zstd::encode_all(&b[..], 19).expect("zstd"),
        ]
        .concat();
        let gzip_body = [gzip(&a), gzip(&b)].concat();
        for (encoding, body) in [("zstd", zstd_body), ("gzip", gzip_body)] {
            for split in [1, 7, body.len()] {
                let mut decoder = Decoder::for_encoding(Some(encoding)).expect("known");
                let chunks: Vec<&[u8]> = body.chunks(split).collect();
                assert_eq!(
                    decode_all(&mut decoder, &chunks).expect("decodes"),
                    expected,
                    "{encoding} by {split}"
                );
            }
        }
    }

    #[test]
    fn a_gzip_header_with_every_optional_field_is_skipped() {
        let data = b"data: x\n\n";
        let plain = gzip(data);
        // Same member with FEXTRA, FNAME, FCOMMENT and FHCRC added (the CRC is not checked).
        let mut header = vec![0x1f, 0x8b, 8, 2 | 4 | 8 | 16, 0, 0, 0, 0, 0, 0xff];
        header.extend_from_slice(&[3, 0, b'a', b'b', b'c']);
        header.extend_from_slice(b"name.txt\0a comment\0");
        header.extend_from_slice(&[0, 0]);
        let body = [header, plain[10..].to_vec()].concat();
        let mut decoder = Decoder::for_encoding(Some("GZIP")).expect("known");
        assert_eq!(decode_all(&mut decoder, &[&body]).expect("decodes"), data);
    }

    #[test]
    fn a_bomb_arrives_in_bounded_pieces_one_call_at_a_time() {
        let huge = vec![b'a'; 8 << 20];
        let body = zstd::encode_all(&huge[..], 3).expect("zstd");
        assert!(body.len() < 4096);
        let mut decoder = Decoder::for_encoding(Some("zstd")).expect("known");
        let (mut at, mut piece, mut calls, mut total) = (0, Vec::new(), 0, 0);
        while decoder.next_piece(&body, &mut at, &mut piece).expect("valid") {
            assert!(piece.len() <= PIECE);
            total += piece.len();
            calls += 1;
            assert!(calls < 1000, "bounded");
        }
        total += piece.len();
        assert_eq!(total, huge.len());
        assert!(calls >= huge.len() / PIECE - 1, "{calls} pieces");
    }

    #[test]
    fn garbage_and_unknown_codings_are_typed_errors() {
        let mut zstd = Decoder::for_encoding(Some("zstd")).expect("known");
        assert!(matches!(
            decode_all(&mut zstd, &[b"not zstd at all"]),
            Err(ClientError::Decode(_))
        ));
        let mut gzip = Decoder::for_encoding(Some("gzip")).expect("known");
        assert!(matches!(decode_all(&mut gzip, &[b"not gzip"]), Err(ClientError::Decode(_))));
        assert!(
            matches!(Decoder::for_encoding(Some("br")), Err(ClientError::ContentEncoding(e)) if e == "br")
        );
        assert!(matches!(Decoder::for_encoding(None), Ok(Decoder::Identity)));
    }
}
