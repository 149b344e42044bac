//! Low-level MessagePack reading and writing over byte slices.
//!
//! [`Reader`] walks a borrowed slice and hands out sub-slices of it: reading never allocates.
//! bin and str are both read as bytes, and integers are read from any of their encodings. The
//! writers append the smallest encoding of a value to a `Vec<u8>`, through `rmp`.

use std::fmt::Debug;

use arrayvec::ArrayVec;
use rmp::Marker;

/// The deepest nesting of arrays and maps that [`Reader::skip`] walks through.
pub const MAX_DEPTH: usize = 64;

/// Why a value could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The input ends inside the value.
    #[error("truncated value")]
    Truncated,
    /// The value is well-formed but of another type than the one asked for (or a negative
    /// integer where an unsigned one was asked for). Nothing was consumed.
    #[error("value of another type")]
    WrongType,
    /// The reserved marker 0xc1.
    #[error("reserved marker 0xc1")]
    Reserved,
    /// Arrays and maps nested deeper than [`MAX_DEPTH`].
    #[error("values nested too deep")]
    TooDeep,
}

/// An integer as read from any of MessagePack's integer encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int {
    /// Zero or more.
    Uint(u64),
    /// Below zero.
    Neg(i64),
}

/// A cursor over one borrowed MessagePack buffer.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { rest: buf }
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The marker of the next value, without consuming it.
    pub fn peek_marker(&self) -> Result<Marker, ReadError> {
        match self.rest.first() {
            Some(&b) => Ok(Marker::from_u8(b)),
            None => Err(ReadError::Truncated),
        }
    }

    /// The number of entries of a map.
    pub fn read_map_len(&mut self) -> Result<u32, ReadError> {
        let mut ahead = self.clone();
        let len = match ahead.marker()? {
            Marker::FixMap(n) => u32::from(n),
            Marker::Map16 => u32::from(ahead.be_u16()?),
            Marker::Map32 => ahead.be_u32()?,
            _ => return Err(ReadError::WrongType),
        };
        *self = ahead;
        Ok(len)
    }

    /// The number of elements of an array.
    pub fn read_array_len(&mut self) -> Result<u32, ReadError> {
        let mut ahead = self.clone();
        let len = match ahead.marker()? {
            Marker::FixArray(n) => u32::from(n),
            Marker::Array16 => u32::from(ahead.be_u16()?),
            Marker::Array32 => ahead.be_u32()?,
            _ => return Err(ReadError::WrongType),
        };
        *self = ahead;
        Ok(len)
    }

    /// The contents of a bin or a str (not checked to be UTF-8).
    pub fn read_bytes(&mut self) -> Result<&'a [u8], ReadError> {
        let mut ahead = self.clone();
        let len = match ahead.marker()? {
            Marker::FixStr(n) => u32::from(n),
            Marker::Str8 | Marker::Bin8 => u32::from(ahead.be_u8()?),
            Marker::Str16 | Marker::Bin16 => u32::from(ahead.be_u16()?),
            Marker::Str32 | Marker::Bin32 => ahead.be_u32()?,
            _ => return Err(ReadError::WrongType),
        };
        let bytes = ahead.take(len)?;
        *self = ahead;
        Ok(bytes)
    }

    /// An integer in any encoding.
    pub fn read_int(&mut self) -> Result<Int, ReadError> {
        let mut ahead = self.clone();
        let int = match ahead.marker()? {
            Marker::FixPos(n) => Int::Uint(u64::from(n)),
            Marker::FixNeg(n) => Int::from_i64(i64::from(n)),
            Marker::U8 => Int::Uint(u64::from(ahead.be_u8()?)),
            Marker::U16 => Int::Uint(u64::from(ahead.be_u16()?)),
            Marker::U32 => Int::Uint(u64::from(ahead.be_u32()?)),
            Marker::U64 => Int::Uint(ahead.be_u64()?),
            Marker::I8 => Int::from_i64(i64::from(ahead.be_u8()? as i8)),
            Marker::I16 => Int::from_i64(i64::from(ahead.be_u16()? as i16)),
            Marker::I32 => Int::from_i64(i64::from(ahead.be_u32()? as i32)),
            Marker::I64 => Int::from_i64(ahead.be_u64()? as i64),
            _ => return Err(ReadError::WrongType),
        };
        *self = ahead;
        Ok(int)
    }

    /// A non-negative integer in any encoding; a negative one is [`ReadError::WrongType`].
    pub fn read_uint(&mut self) -> Result<u64, ReadError> {
        let mut ahead = self.clone();
        match ahead.read_int()? {
            Int::Uint(n) => {
                *self = ahead;
                Ok(n)
            }
            Int::Neg(_) => Err(ReadError::WrongType),
        }
    }

    pub fn read_bool(&mut self) -> Result<bool, ReadError> {
        let value = match self.peek_marker()? {
            Marker::True => true,
            Marker::False => false,
            _ => return Err(ReadError::WrongType),
        };
        self.take(1)?;
        Ok(value)
    }

    pub fn read_nil(&mut self) -> Result<(), ReadError> {
        match self.peek_marker()? {
            Marker::Null => self.take(1).map(drop),
            _ => Err(ReadError::WrongType),
        }
    }

    /// Consumes one whole value of any type and returns its encoded bytes.
    ///
    /// Arrays and maps are walked without recursion; more than [`MAX_DEPTH`] levels of them is
    /// [`ReadError::TooDeep`]. On error the reader is left where it was.
    pub fn skip(&mut self) -> Result<&'a [u8], ReadError> {
        let start = self.rest;
        let mut ahead = self.clone();
        // The containers the walk is inside, innermost last: how many values each still awaits.
        // (Not zeroed up front: most values skipped are scalars, and a walk uses a few levels.)
        let mut open = ArrayVec::<usize, MAX_DEPTH>::new();
        loop {
            let children = ahead.skip_head()?;
            if children > 0 {
                // Every value takes at least one byte, so a count over the bytes left cannot
                // be satisfied; checking it here also keeps the counts within the input size.
                if children > ahead.rest.len() {
                    return Err(ReadError::Truncated);
                }
                open.try_push(children).map_err(|_| ReadError::TooDeep)?;
                continue;
            }
            // One value is complete: close every container it completes.
            loop {
                let Some(awaited) = open.last_mut() else {
                    *self = ahead;
                    return Ok(&start[..start.len() - self.rest.len()]);
                };
                *awaited -= 1;
                if *awaited > 0 {
                    break;
                }
                open.pop();
            }
        }
    }

    /// Consumes the head of one value: a scalar whole, or the marker and length of an array or
    /// map, whose number of child values it returns (twice the entries for a map).
    fn skip_head(&mut self) -> Result<usize, ReadError> {
        let data_len = match self.marker()? {
            Marker::Reserved => return Err(ReadError::Reserved),
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                0
            }
            Marker::U8 | Marker::I8 => 1,
            Marker::U16 | Marker::I16 => 2,
            Marker::U32 | Marker::I32 | Marker::F32 => 4,
            Marker::U64 | Marker::I64 | Marker::F64 => 8,
            Marker::FixStr(n) => u32::from(n),
            Marker::Str8 | Marker::Bin8 => u32::from(self.be_u8()?),
            Marker::Str16 | Marker::Bin16 => u32::from(self.be_u16()?),
            Marker::Str32 | Marker::Bin32 => self.be_u32()?,
            Marker::FixExt1 => 2,
            Marker::FixExt2 => 3,
            Marker::FixExt4 => 5,
            Marker::FixExt8 => 9,
            Marker::FixExt16 => 17,
            // The data of an ext follows its one-byte type.
            Marker::Ext8 => u32::from(self.be_u8()?).saturating_add(1),
            Marker::Ext16 => u32::from(self.be_u16()?).saturating_add(1),
            Marker::Ext32 => self.be_u32()?.saturating_add(1),
            Marker::FixArray(n) => return Ok(usize::from(n)),
            Marker::Array16 => return Ok(usize::from(self.be_u16()?)),
            Marker::Array32 => return Ok(to_usize(self.be_u32()?)),
            Marker::FixMap(n) => return Ok(usize::from(n) * 2),
            Marker::Map16 => return Ok(usize::from(self.be_u16()?) * 2),
            Marker::Map32 => return Ok(to_usize(self.be_u32()?).saturating_mul(2)),
        };
        self.take(data_len)?;
        Ok(0)
    }

    fn marker(&mut self) -> Result<Marker, ReadError> {
        self.be_u8().map(Marker::from_u8)
    }

    fn take(&mut self, len: u32) -> Result<&'a [u8], ReadError> {
        let len = to_usize(len);
        if len > self.rest.len() {
            return Err(ReadError::Truncated);
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let Some((head, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(ReadError::Truncated);
        };
        self.rest = rest;
        Ok(*head)
    }

    fn be_u8(&mut self) -> Result<u8, ReadError> {
        self.take_array::<1>().map(|[b]| b)
    }

    fn be_u16(&mut self) -> Result<u16, ReadError> {
        self.take_array().map(u16::from_be_bytes)
    }

    fn be_u32(&mut self) -> Result<u32, ReadError> {
        self.take_array().map(u32::from_be_bytes)
    }

    fn be_u64(&mut self) -> Result<u64, ReadError> {
        self.take_array().map(u64::from_be_bytes)
    }
}

impl Int {
    fn from_i64(n: i64) -> Int {
        match u64::try_from(n) {
            Ok(n) => Int::Uint(n),
            Err(_) => Int::Neg(n),
        }
    }
}

/// A `u32` length as `usize`, saturating on targets where `usize` is narrower.
fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Appends bin holding `data`, in its smallest form. `data` is at most `u32::MAX` bytes.
pub fn write_bin(out: &mut Vec<u8>, data: &[u8]) {
    debug_assert!(u32::try_from(data.len()).is_ok(), "bin over u32::MAX bytes");
    written(rmp::encode::write_bin(out, data));
}

/// Appends an unsigned integer in its smallest form.
pub fn write_uint(out: &mut Vec<u8>, n: u64) {
    written(rmp::encode::write_uint(out, n));
}

/// Appends a signed integer in its smallest form (a non-negative one as unsigned).
pub fn write_sint(out: &mut Vec<u8>, n: i64) {
    written(rmp::encode::write_sint(out, n));
}

/// Appends an integer in its smallest form.
pub fn write_int(out: &mut Vec<u8>, n: Int) {
    match n {
        Int::Uint(n) => write_uint(out, n),
        Int::Neg(n) => write_sint(out, n),
    }
}

pub fn write_bool(out: &mut Vec<u8>, b: bool) {
    written(rmp::encode::write_bool(out, b));
}

pub fn write_nil(out: &mut Vec<u8>) {
    written(rmp::encode::write_nil(out));
}

/// Appends the header of a map of `len` entries.
pub fn write_map_len(out: &mut Vec<u8>, len: u32) {
    written(rmp::encode::write_map_len(out, len));
}

/// Appends the header of an array of `len` elements.
pub fn write_array_len(out: &mut Vec<u8>, len: u32) {
    written(rmp::encode::write_array_len(out, len));
}

/// Writing into a `Vec<u8>` only grows the vector: its `io::Write` never returns an error.
fn written<T: Debug, E: Debug>(result: Result<T, E>) {
    debug_assert!(result.is_ok(), "writing to a Vec failed: {result:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_read_from_every_encoding() {
        let cases: &[(&[u8], Int)] = &[
            (&[0x05], Int::Uint(5)),
            (&[0xff], Int::Neg(-1)),
            (&[0xcc, 0xff], Int::Uint(255)),
            (&[0xcd, 0x01, 0x00], Int::Uint(256)),
            (&[0xce, 0, 1, 0, 0], Int::Uint(65536)),
            (
                &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                Int::Uint(u64::MAX),
            ),
            (&[0xd0, 0x05], Int::Uint(5)),
            (&[0xd0, 0x80], Int::Neg(-128)),
            (&[0xd1, 0xff, 0x00], Int::Neg(-256)),
            (&[0xd2, 0, 0, 0, 7], Int::Uint(7)),
            (&[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0], Int::Neg(i64::MIN)),
        ];
        for &(bytes, want) in cases {
            let mut r = Reader::new(bytes);
            assert_eq!(r.read_int(), Ok(want), "{bytes:02x?}");
            assert!(r.is_empty());
        }
    }

    #[test]
    fn a_negative_integer_is_the_wrong_type_for_an_unsigned_read_and_is_not_consumed() {
        let mut r = Reader::new(&[0xff]);
        assert_eq!(r.read_uint(), Err(ReadError::WrongType));
        assert_eq!(r.rest(), &[0xff]);
    }

    #[test]
    fn bin_and_str_are_both_read_as_bytes() {
        assert_eq!(
            Reader::new(&[0xa2, b'h', b'i']).read_bytes(),
            Ok(&b"hi"[..])
        );
        assert_eq!(
            Reader::new(&[0xd9, 2, b'h', b'i']).read_bytes(),
            Ok(&b"hi"[..])
        );
        assert_eq!(
            Reader::new(&[0xc4, 2, b'h', b'i']).read_bytes(),
            Ok(&b"hi"[..])
        );
        assert_eq!(
            Reader::new(&[0xc5, 0, 2, b'h', b'i']).read_bytes(),
            Ok(&b"hi"[..])
        );
        assert_eq!(
            Reader::new(&[0xc4, 3, b'h', b'i']).read_bytes(),
            Err(ReadError::Truncated)
        );
    }

    #[test]
    fn skip_returns_the_bytes_of_one_nested_value() {
        // {"a": [1, {"b": nil}], "c": ext8} then a trailing 0x07.
        let bytes = [
            0x82, 0xa1, b'a', 0x92, 0x01, 0x81, 0xa1, b'b', 0xc0, 0xa1, b'c', 0xc7, 2, 9, 0xaa,
            0xbb, 0x07,
        ];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.skip(), Ok(&bytes[..bytes.len() - 1]));
        assert_eq!(r.rest(), &[0x07]);
    }

    #[test]
    fn skip_of_empty_containers_and_scalars_consumes_exactly_them() {
        for bytes in [
            &[0x80][..],
            &[0x90],
            &[0xc0],
            &[0xcb, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xd4, 1, 2],
        ] {
            let mut r = Reader::new(bytes);
            assert_eq!(r.skip(), Ok(bytes));
            assert!(r.is_empty());
        }
    }

    #[test]
    fn skip_refuses_nesting_deeper_than_the_limit() {
        let mut ok = vec![0x91; MAX_DEPTH];
        ok.push(0xc0);
        assert_eq!(Reader::new(&ok).skip(), Ok(&ok[..]));
        let mut deep = vec![0x91; MAX_DEPTH + 1];
        deep.push(0xc0);
        assert_eq!(Reader::new(&deep).skip(), Err(ReadError::TooDeep));
    }

    #[test]
    fn skip_refuses_truncated_and_reserved_values_and_leaves_the_reader_in_place() {
        for bytes in [
            &[0x92, 0x01][..],
            &[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0],
            &[0xc1],
            &[0xc6, 0, 0],
        ] {
            let mut r = Reader::new(bytes);
            assert!(r.skip().is_err(), "{bytes:02x?}");
            assert_eq!(r.rest(), bytes);
        }
    }

    #[test]
    fn writers_use_the_smallest_form() {
        let mut out = Vec::new();
        write_uint(&mut out, 5);
        write_uint(&mut out, 300);
        write_sint(&mut out, -1);
        write_sint(&mut out, 7);
        write_bin(&mut out, b"ab");
        write_map_len(&mut out, 2);
        write_array_len(&mut out, 16);
        assert_eq!(
            out,
            [0x05, 0xcd, 0x01, 0x2c, 0xff, 0x07, 0xc4, 2, b'a', b'b', 0x82, 0xdc, 0, 16]
        );
    }
}
