//! The shape of a valid payload, checked on its bytes before it is decoded: maps with
//! string keys where `docs/protocol.md` §4 says map, strings where it says string.
//!
//! The decoder alone is more lenient than the specification (`rmp-serde` takes a struct
//! from a positional array, a field name from an integer index, a string from binary), and
//! a reader written from the specification would refuse those records: two peers would then
//! hold different views of the same bucket. One pass over the bytes, without allocating,
//! refuses them first; the decoder then checks types, ranges and required fields.

/// Why a payload does not have the shape the specification requires.
pub(crate) type ShapeError = String;

type Checked<T> = std::result::Result<T, ShapeError>;

/// Checks an instance record (§4.3).
pub(crate) fn instance_record(bytes: &[u8], max_depth: usize) -> Checked<()> {
    let mut r = Reader::new(bytes, max_depth);
    r.fields("record", 0, |r, name, depth| match name {
        b"instance" => instance(r, depth),
        b"reason" => r.optional_str("reason"),
        _ => r.skip(depth),
    })
}

/// Checks an event record (§4.4).
pub(crate) fn event_record(bytes: &[u8], max_depth: usize) -> Checked<()> {
    let mut r = Reader::new(bytes, max_depth);
    r.fields("event record", 0, |r, name, depth| match name {
        b"instance" => instance(r, depth),
        b"event" => r.str("event"),
        b"origin" => r.str("origin"),
        b"previous_status" => r.optional_str("previous_status"),
        b"reason" => r.optional_str("reason"),
        _ => r.skip(depth),
    })
}

/// The embedded instance (§4.2).
fn instance(r: &mut Reader<'_>, depth: usize) -> Checked<()> {
    r.fields("instance", depth, |r, name, depth| match name {
        b"service" => r.str("instance.service"),
        b"host" => r.str("instance.host"),
        b"scheme" => r.str("instance.scheme"),
        b"status" => r.str("instance.status"),
        b"zone" => r.optional_str("instance.zone"),
        b"tags" => r.tags(),
        b"metadata" => {
            if r.nil()? {
                Ok(())
            } else {
                r.json_like("instance.metadata", depth)
            }
        }
        _ => r.skip(depth),
    })
}

/// A MessagePack reader that checks shapes and skips values (format: the MessagePack
/// specification's type families, by first byte).
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    max_depth: usize,
}

/// What a value's first byte says it is.
enum Head {
    Nil,
    Scalar(usize),
    Str(usize),
    Bin(usize),
    Ext(usize),
    Array(usize),
    Map(usize),
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], max_depth: usize) -> Self {
        Reader {
            bytes,
            at: 0,
            max_depth,
        }
    }

    fn take(&mut self, n: usize) -> Checked<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| "payload ends inside a value".to_string())?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn length(&mut self, width: usize) -> Checked<usize> {
        let bytes = self.take(width)?;
        let mut n = 0usize;
        for b in bytes {
            n = (n << 8) | usize::from(*b);
        }
        Ok(n)
    }

    fn head(&mut self) -> Checked<Head> {
        let first = self.take(1)?[0];
        Ok(match first {
            0x00..=0x7f | 0xe0..=0xff | 0xc2 | 0xc3 => Head::Scalar(0),
            0x80..=0x8f => Head::Map(usize::from(first & 0x0f)),
            0x90..=0x9f => Head::Array(usize::from(first & 0x0f)),
            0xa0..=0xbf => Head::Str(usize::from(first & 0x1f)),
            0xc0 => Head::Nil,
            0xc1 => return Err("byte 0xc1 is never used in MessagePack".to_string()),
            0xc4 => Head::Bin(self.length(1)?),
            0xc5 => Head::Bin(self.length(2)?),
            0xc6 => Head::Bin(self.length(4)?),
            0xc7 => Head::Ext(self.length(1)? + 1),
            0xc8 => Head::Ext(self.length(2)? + 1),
            0xc9 => Head::Ext(self.length(4)? + 1),
            0xca => Head::Scalar(4),
            0xcb => Head::Scalar(8),
            0xcc | 0xd0 => Head::Scalar(1),
            0xcd | 0xd1 => Head::Scalar(2),
            0xce | 0xd2 => Head::Scalar(4),
            0xcf | 0xd3 => Head::Scalar(8),
            0xd4 => Head::Ext(2),
            0xd5 => Head::Ext(3),
            0xd6 => Head::Ext(5),
            0xd7 => Head::Ext(9),
            0xd8 => Head::Ext(17),
            0xd9 => Head::Str(self.length(1)?),
            0xda => Head::Str(self.length(2)?),
            0xdb => Head::Str(self.length(4)?),
            0xdc => Head::Array(self.length(2)?),
            0xdd => Head::Array(self.length(4)?),
            0xde => Head::Map(self.length(2)?),
            0xdf => Head::Map(self.length(4)?),
        })
    }

    fn deeper(&self, depth: usize) -> Checked<usize> {
        if depth >= self.max_depth {
            Err(format!("nested deeper than {} levels", self.max_depth))
        } else {
            Ok(depth + 1)
        }
    }

    /// A map with string keys; `field` checks (or skips) each value.
    fn fields(
        &mut self,
        what: &str,
        depth: usize,
        mut field: impl FnMut(&mut Self, &[u8], usize) -> Checked<()>,
    ) -> Checked<()> {
        let depth = self.deeper(depth)?;
        let n = match self.head()? {
            Head::Map(n) => n,
            Head::Array(_) => {
                return Err(format!("{what} is an array, not a map with named fields"))
            }
            _ => return Err(format!("{what} is not a map")),
        };
        for _ in 0..n {
            let name = match self.head()? {
                Head::Str(len) => self.take(len)?,
                _ => return Err(format!("{what} has a field name that is not a string")),
            };
            field(self, name, depth)?;
        }
        Ok(())
    }

    fn str(&mut self, what: &str) -> Checked<()> {
        match self.head()? {
            Head::Str(len) => self.take(len).map(|_| ()),
            Head::Bin(_) => Err(format!("{what} is binary, not a string")),
            _ => Err(format!("{what} is not a string")),
        }
    }

    /// True (and consumed) if the next value is nil.
    fn nil(&mut self) -> Checked<bool> {
        if self.bytes.get(self.at) == Some(&0xc0) {
            self.at += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn optional_str(&mut self, what: &str) -> Checked<()> {
        if self.nil()? {
            Ok(())
        } else {
            self.str(what)
        }
    }

    fn tags(&mut self) -> Checked<()> {
        if self.nil()? {
            return Ok(());
        }
        match self.head()? {
            Head::Array(n) => (0..n).try_for_each(|_| self.str("a tag")),
            _ => Err("instance.tags is not an array".to_string()),
        }
    }

    /// nil, boolean, number, string, or arrays and string-keyed maps of those.
    fn json_like(&mut self, what: &str, depth: usize) -> Checked<()> {
        match self.head()? {
            Head::Nil => Ok(()),
            Head::Scalar(width) => self.take(width).map(|_| ()),
            Head::Str(len) => self.take(len).map(|_| ()),
            Head::Bin(_) | Head::Ext(_) => Err(format!("{what} holds binary or extension data")),
            Head::Array(n) => {
                let depth = self.deeper(depth)?;
                (0..n).try_for_each(|_| self.json_like(what, depth))
            }
            Head::Map(n) => {
                let depth = self.deeper(depth)?;
                (0..n).try_for_each(|_| {
                    match self.head()? {
                        Head::Str(len) => self.take(len)?,
                        _ => return Err(format!("{what} has a key that is not a string")),
                    };
                    self.json_like(what, depth)
                })
            }
        }
    }

    /// Any well-formed value (a field this version does not know).
    fn skip(&mut self, depth: usize) -> Checked<()> {
        match self.head()? {
            Head::Nil => Ok(()),
            Head::Scalar(n) | Head::Str(n) | Head::Bin(n) | Head::Ext(n) => {
                self.take(n).map(|_| ())
            }
            Head::Array(n) => {
                let depth = self.deeper(depth)?;
                (0..n).try_for_each(|_| self.skip(depth))
            }
            Head::Map(n) => {
                let depth = self.deeper(depth)?;
                (0..n.saturating_mul(2)).try_for_each(|_| self.skip(depth))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_past_the_end_and_deep_nesting_are_refused_without_panicking() {
        // A map claiming 2^32 - 1 entries in five bytes.
        assert!(instance_record(&[0xdf, 0xff, 0xff, 0xff, 0xff], 48).is_err());
        // A str32 claiming 4 GiB.
        assert!(instance_record(&[0x81, 0xdb, 0xff, 0xff, 0xff, 0xff], 48).is_err());
        let mut deep = vec![0x81, 0xa1, b'x'];
        deep.extend(std::iter::repeat_n(0x91, 100_000));
        deep.push(0xc0);
        let why = instance_record(&deep, 48).unwrap_err();
        assert!(why.contains("nested deeper than 48"), "{why}");
    }
}
