//! The frame that stores one record on disk: `len | crc32c | body` (the body is
//! [`super::codec`]'s).

use super::codec;
use super::record::{NewRecord, Record};
use crate::error::{Error, ErrorKind, Result};
use chrono::{DateTime, Utc};
use std::io::{self, Read};

/// Bytes before a frame's body: the body length and its checksum, both `u32` little-endian.
pub(crate) const HEADER_LEN: usize = 8;

/// Largest body accepted. Records reach tens of MiB; a length beyond this is a damaged header,
/// and refusing it keeps a garbage length from making us allocate gigabytes.
pub(crate) const MAX_BODY_LEN: usize = 256 * 1024 * 1024;

/// What a read at a frame boundary found.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A whole frame whose checksum matches; holds the body (version byte first).
    Valid(Vec<u8>),
    /// Not a single byte: the clean end of the data.
    End,
    /// The data ends inside the header or the body.
    Incomplete,
    /// The header is impossible or the checksum does not match; says which.
    Damaged(String),
}

impl Frame {
    /// Bytes a valid frame with this body takes on disk.
    pub(crate) fn len_on_disk(body: &[u8]) -> u64 {
        (HEADER_LEN + body.len()) as u64
    }
}

/// Appends the frame of one record to `buf` and returns its length on disk.
pub(crate) fn encode_frame(
    buf: &mut Vec<u8>,
    offset: u64,
    appended_at: DateTime<Utc>,
    record: &NewRecord<'_>,
) -> Result<usize> {
    let body_len = codec::body_len(record.topic, record.event);
    if body_len > MAX_BODY_LEN {
        return Err(Error::new(
            ErrorKind::Internal,
            format!(
                "event {} encodes to {body_len} bytes, above the embedded log's limit of \
                 {MAX_BODY_LEN} bytes per record",
                record.event.id
            ),
        ));
    }
    let start = buf.len();
    buf.reserve(HEADER_LEN + body_len);
    buf.extend_from_slice(&[0; HEADER_LEN]);
    codec::encode(buf, offset, appended_at, record.topic, record.event);
    debug_assert_eq!(buf.len() - start - HEADER_LEN, body_len);
    let crc = crc32c::crc32c(&buf[start + HEADER_LEN..]);
    buf[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    buf[start + 4..start + HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(HEADER_LEN + body_len)
}

/// The frame length of `record`; the offset and time it gets do not change it.
pub(crate) fn max_encoded_len(record: &NewRecord<'_>) -> Result<usize> {
    Ok(HEADER_LEN + codec::body_len(record.topic, record.event))
}

/// Reads the frame starting at the current position of `src`.
///
/// On anything but [`Frame::Valid`] the position of `src` is unspecified; callers seek back.
pub(crate) fn read_frame(src: &mut impl Read) -> io::Result<Frame> {
    let mut header = [0; HEADER_LEN];
    let got = read_up_to(src, &mut header)?;
    if got == 0 {
        return Ok(Frame::End);
    }
    if got < HEADER_LEN {
        return Ok(Frame::Incomplete);
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_BODY_LEN {
        return Ok(Frame::Damaged(format!("impossible body length {len}")));
    }
    // Grow with the bytes actually there rather than trusting `len` for the allocation.
    let mut body = Vec::with_capacity(len.min(1 << 20));
    src.take(len as u64).read_to_end(&mut body)?;
    if body.len() < len {
        return Ok(Frame::Incomplete);
    }
    let actual = crc32c::crc32c(&body);
    if actual != crc {
        return Ok(Frame::Damaged(format!(
            "checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
        )));
    }
    Ok(Frame::Valid(body))
}

/// Decodes a valid frame's body; the error says what is wrong with it.
pub(crate) fn decode_body(body: &[u8]) -> std::result::Result<Record, String> {
    codec::decode(body)
}

/// Fills `buf` as far as `src` has bytes, returning how many it read.
pub(crate) fn read_up_to(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::testing::event;
    use std::io::Cursor;

    /// Encodes one record at `offset` into a fresh buffer.
    fn frame(offset: u64, payload_len: usize) -> Vec<u8> {
        let event = event(offset, payload_len);
        let mut buf = Vec::new();
        let record = NewRecord {
            topic: "orders",
            event: &event,
        };
        encode_frame(&mut buf, offset, Utc::now(), &record).unwrap();
        buf
    }

    #[test]
    fn a_frame_decodes_to_the_record_it_encoded() {
        let event = event(7, 100);
        let mut buf = Vec::new();
        let at = Utc::now();
        let len = encode_frame(
            &mut buf,
            7,
            at,
            &NewRecord {
                topic: "orders",
                event: &event,
            },
        )
        .unwrap();
        assert_eq!(len, buf.len());

        let Frame::Valid(body) = read_frame(&mut Cursor::new(&buf)).unwrap() else {
            panic!("frame did not read back as valid")
        };
        let record = decode_body(&body).unwrap();
        assert_eq!(record.offset, 7);
        assert_eq!(record.topic, "orders");
        assert_eq!(record.appended_at, at);
        assert_eq!(record.event.payload.get(), event.payload.get());
    }

    #[test]
    fn encoded_len_is_exact() {
        for payload_len in [0, 10, 5_000] {
            let event = event(1, payload_len);
            let record = NewRecord {
                topic: "orders",
                event: &event,
            };
            let bound = max_encoded_len(&record).unwrap();
            let actual = encode_frame(&mut Vec::new(), 1, Utc::now(), &record).unwrap();
            assert!(bound == actual, "bound {bound}, actual {actual}");
        }
    }

    #[test]
    fn every_truncation_of_a_frame_reads_as_incomplete() {
        let buf = frame(0, 50);
        assert!(matches!(
            read_frame(&mut Cursor::new(&buf[..0])).unwrap(),
            Frame::End
        ));
        for len in 1..buf.len() {
            let found = read_frame(&mut Cursor::new(&buf[..len])).unwrap();
            assert!(matches!(found, Frame::Incomplete), "at {len}: {found:?}");
        }
    }

    #[test]
    fn a_flipped_body_byte_fails_the_checksum() {
        let mut buf = frame(0, 50);
        let middle = buf.len() / 2;
        buf[middle] ^= 0x20;
        let found = read_frame(&mut Cursor::new(&buf)).unwrap();
        assert!(matches!(found, Frame::Damaged(ref reason) if reason.contains("checksum")));
    }

    #[test]
    fn an_absurd_length_is_damage_not_an_allocation() {
        let mut buf = frame(0, 50);
        buf[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let found = read_frame(&mut Cursor::new(&buf)).unwrap();
        assert!(matches!(found, Frame::Damaged(ref reason) if reason.contains("length")));
    }

    #[test]
    fn an_unknown_format_version_is_refused() {
        let body = vec![4, b'{', b'}'];
        assert!(decode_body(&body).unwrap_err().contains("version 4"));
    }
}
