//! A whole HTTP response, as the cache keeps it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// A response kept by the cache: status, header fields and the whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedResponse {
    /// The status.
    pub status: StatusCode,
    /// The header fields, as the origin sent them.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// Marks the byte format, so a future layout is never misread.
const MAGIC: &[u8; 4] = b"pcr1";

/// The most fields a stored response is read back with: far more than an
/// origin sends (hyper takes 100 by default), and far from what fills a
/// `HeaderMap` (24,576), which panics at the next field added, as the
/// cache's `Age` is.
const MOST_FIELDS: u32 = 4_096;

impl CachedResponse {
    /// The response as bytes, for stores outside the process: the status,
    /// the fields (length-prefixed names and values), then the body.
    #[must_use]
    pub fn to_bytes(&self) -> Bytes {
        let fields: usize = self
            .headers
            .iter()
            .map(|(name, value)| 6 + name.as_str().len() + value.len())
            .sum();
        let mut out = BytesMut::with_capacity(10 + fields + self.body.len());
        out.put_slice(MAGIC);
        out.put_u16(self.status.as_u16());
        out.put_u32(u32::try_from(self.headers.len()).unwrap_or(u32::MAX));
        for (name, value) in &self.headers {
            out.put_u16(u16::try_from(name.as_str().len()).unwrap_or(u16::MAX));
            out.put_slice(name.as_str().as_bytes());
            out.put_u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
            out.put_slice(value.as_bytes());
        }
        out.put_slice(&self.body);
        out.freeze()
    }

    /// A response read back; `None` for anything that is not a response in
    /// this format (truncated, an invalid status, name or value, more
    /// than 4,096 fields).
    #[must_use]
    pub fn from_bytes(mut bytes: Bytes) -> Option<Self> {
        if bytes.len() < 10 || &bytes[..4] != MAGIC {
            return None;
        }
        bytes.advance(4);
        let status = StatusCode::from_u16(bytes.get_u16()).ok()?;
        let count = bytes.get_u32();
        // A count past what a map holds (written by hand, or by someone
        // else: the store is shared) panicked in `append`, or at once
        // after it, where the cache adds `Age`.
        if count > MOST_FIELDS {
            return None;
        }
        let mut headers = HeaderMap::new();
        for _ in 0..count {
            let name_len = usize::from(take_u16(&mut bytes)?);
            let name = HeaderName::from_bytes(&take(&mut bytes, name_len)?).ok()?;
            let value_len = usize::try_from(take_u32(&mut bytes)?).ok()?;
            let value = HeaderValue::from_maybe_shared(take(&mut bytes, value_len)?).ok()?;
            headers.append(name, value);
        }
        Some(Self {
            status,
            headers,
            body: bytes,
        })
    }
}

fn take_u16(bytes: &mut Bytes) -> Option<u16> {
    (bytes.remaining() >= 2).then(|| bytes.get_u16())
}

fn take_u32(bytes: &mut Bytes) -> Option<u32> {
    (bytes.remaining() >= 4).then(|| bytes.get_u32())
}

fn take(bytes: &mut Bytes, len: usize) -> Option<Bytes> {
    (bytes.remaining() >= len).then(|| bytes.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_round_trips_with_repeated_fields() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.append("set-cookie", "a=1".parse().unwrap());
        headers.append("set-cookie", "b=2".parse().unwrap());
        let response = CachedResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"{\"top\":[7,3,9]}"),
        };
        assert_eq!(
            CachedResponse::from_bytes(response.to_bytes()),
            Some(response.clone())
        );
        let truncated = response.to_bytes().slice(..20);
        assert_eq!(CachedResponse::from_bytes(truncated), None);
    }

    #[test]
    fn a_map_full_of_fields_is_no_response() {
        // As many as a `HeaderMap` holds: the `Age` added when it is
        // served panicked.
        let fields = 24_576_u32;
        let mut bytes = BytesMut::new();
        bytes.put_slice(MAGIC);
        bytes.put_u16(200);
        bytes.put_u32(fields);
        for field in 0..fields {
            let name = format!("x{field}");
            bytes.put_u16(u16::try_from(name.len()).unwrap());
            bytes.put_slice(name.as_bytes());
            bytes.put_u32(1);
            bytes.put_u8(b'v');
        }
        assert_eq!(CachedResponse::from_bytes(bytes.freeze()), None);
    }
}
