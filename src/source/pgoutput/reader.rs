//! A cursor over one message's bytes that fails on truncation instead of panicking, and never
//! allocates more than the bytes left could hold.

use super::{OldRow, Value, malformed};
use crate::error::Result;

/// Reads a message front to back.
pub(super) struct Reader<'a> {
    /// The whole message.
    bytes: &'a [u8],
    /// Offset of the next unread byte.
    at: usize,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `bytes`.
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    /// Bytes not read yet.
    #[inline]
    pub(super) fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// Fails unless every byte was read: a longer message than its kind's layout is as
    /// malformed as a shorter one.
    pub(super) fn finish(&self, kind: &str) -> Result<()> {
        match self.left() {
            0 => Ok(()),
            left => Err(malformed(format!(
                "{left} bytes after the end of a {kind} message"
            ))),
        }
    }

    /// The next `len` bytes.
    #[inline]
    pub(super) fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        if len > self.left() {
            return Err(malformed(format!(
                "truncated: {len} bytes wanted at offset {}, {} left",
                self.at,
                self.left()
            )));
        }
        let slice = &self.bytes[self.at..self.at + len];
        self.at += len;
        Ok(slice)
    }

    /// The next `N` bytes as an array.
    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// One byte.
    #[inline]
    pub(super) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian Int16.
    #[inline]
    pub(super) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian Int32 (OIDs, xids, counts).
    #[inline]
    pub(super) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian signed Int32 (type modifiers).
    #[inline]
    pub(super) fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// A big-endian Int64 read as unsigned (LSNs).
    #[inline]
    pub(super) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A big-endian Int64 (timestamps).
    #[inline]
    pub(super) fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A NUL-terminated UTF-8 string.
    pub(super) fn cstr(&mut self) -> Result<&'a str> {
        let rest = &self.bytes[self.at..];
        let Some(len) = rest.iter().position(|b| *b == 0) else {
            return Err(malformed(format!(
                "string at offset {} without its NUL terminator",
                self.at
            )));
        };
        let text = std::str::from_utf8(&rest[..len])
            .map_err(|_| malformed("string is not UTF-8 (server_encoding must be UTF8)"))?;
        self.at += len + 1;
        Ok(text)
    }

    /// A count of items that each take at least `min_bytes`, checked against the bytes left
    /// so a forged count cannot size an allocation.
    pub(super) fn count(&mut self, count: usize, min_bytes: usize, what: &str) -> Result<usize> {
        if count.saturating_mul(min_bytes) > self.left() {
            return Err(malformed(format!(
                "{count} {what} announced, {} bytes left cannot hold them",
                self.left()
            )));
        }
        Ok(count)
    }

    /// TupleData: a column count, then each column's kind (`n`, `u`, `t`, `b`) and value.
    pub(super) fn tuple(&mut self) -> Result<Vec<Value<'a>>> {
        let announced = self.u16()? as usize;
        let count = self.count(announced, 1, "columns")?;
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            let value = match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    Value::Text(self.take(len)?)
                }
                b'b' => {
                    let len = self.u32()? as usize;
                    Value::Binary(self.take(len)?)
                }
                other => {
                    return Err(malformed(format!(
                        "unknown column kind {:?}",
                        other as char
                    )));
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    /// An old key (`K`) or old row (`O`) tuple, after its tag byte `tag`.
    pub(super) fn old_row(&mut self, tag: u8) -> Result<OldRow<'a>> {
        Ok(match tag {
            b'K' => OldRow::Key(self.tuple()?),
            b'O' => OldRow::Row(self.tuple()?),
            other => {
                return Err(malformed(format!(
                    "old tuple marker {:?}, expected 'K' or 'O'",
                    other as char
                )));
            }
        })
    }

    /// The `N` marker and the new tuple after it.
    pub(super) fn new_row(&mut self, kind: &str) -> Result<Vec<Value<'a>>> {
        let marker = self.u8()?;
        self.new_row_after(marker, kind)
    }

    /// The new tuple after its marker `marker`, which must be `N`.
    pub(super) fn new_row_after(&mut self, marker: u8, kind: &str) -> Result<Vec<Value<'a>>> {
        if marker != b'N' {
            return Err(malformed(format!(
                "{kind} tuple marker {:?}, expected 'N'",
                marker as char
            )));
        }
        self.tuple()
    }
}
