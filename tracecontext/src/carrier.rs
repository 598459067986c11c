//! Where trace context travels: HTTP headers, message headers, event
//! attributes.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The `traceparent` field name.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` field name.
pub const TRACESTATE: &str = "tracestate";
/// The `traceresponse` field name (Trace Context Level 2).
pub const TRACERESPONSE: &str = "traceresponse";

static TRACEPARENT_HEADER: HeaderName = HeaderName::from_static(TRACEPARENT);
static TRACESTATE_HEADER: HeaderName = HeaderName::from_static(TRACESTATE);
pub(crate) static TRACERESPONSE_HEADER: HeaderName = HeaderName::from_static(TRACERESPONSE);

/// The header for one of our field names, built at compile time, so no
/// request pays for parsing or allocating it. The three names differ in
/// length, so one comparison of lengths picks the candidate.
#[inline]
fn known_header(name: &str) -> Option<&'static HeaderName> {
    let (known, header) = match name.len() {
        11 => (TRACEPARENT, &TRACEPARENT_HEADER),
        10 => (TRACESTATE, &TRACESTATE_HEADER),
        13 => (TRACERESPONSE, &TRACERESPONSE_HEADER),
        _ => return None,
    };
    (name == known).then_some(header)
}

/// Something trace context can be read from.
///
/// Implemented for [`http::HeaderMap`] (every line of a field, in order)
/// and for string maps such as CloudEvents extension attributes or message
/// headers (one value per name). Implement it for your broker's header type
/// to [`extract`](crate::Propagator::extract) from it.
pub trait Carrier {
    /// Every value of the field `name` (given in lowercase), in order.
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]>;

    /// Every value of the field `name` as an [`http::HeaderValue`], in
    /// order, when the carrier holds them so: then
    /// [`extract`](crate::Propagator::extract) keeps a `tracestate` by
    /// sharing its bytes instead of copying them (see
    /// [`TraceState::parse_header_values`](crate::TraceState::parse_header_values)).
    ///
    /// `None`, the default, has [`values`](Self::values) read instead.
    /// [`http::HeaderMap`] gives its values.
    fn header_values<'a>(
        &'a self,
        name: &'static str,
    ) -> Option<impl Iterator<Item = &'a HeaderValue>> {
        let _ = name;
        None::<std::iter::Empty<&'a HeaderValue>>
    }
}

/// Something trace context can be written to.
pub trait CarrierMut {
    /// Sets the field `name`, replacing every value it had.
    fn set(&mut self, name: &'static str, value: &str);

    /// Sets the field `name` to a ready header value, replacing every value
    /// it had. [`inject`](crate::Propagator::inject) writes `tracestate`
    /// this way: the state already is a header value, so a carrier that
    /// stores header values ([`http::HeaderMap`]) takes it as it is, its
    /// bytes shared, with no copy and no second check.
    ///
    /// The default writes the value's text through [`set`](Self::set) (a
    /// value that is not UTF-8 is not written: trace context values are
    /// ASCII).
    fn set_value(&mut self, name: &'static str, value: HeaderValue) {
        if let Ok(value) = std::str::from_utf8(value.as_bytes()) {
            self.set(name, value);
        }
    }

    /// Removes every value of the field `name`.
    fn remove(&mut self, name: &'static str);
}

impl Carrier for HeaderMap {
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> {
        header_values(self, name).map(HeaderValue::as_bytes)
    }

    fn header_values<'a>(
        &'a self,
        name: &'static str,
    ) -> Option<impl Iterator<Item = &'a HeaderValue>> {
        Some(header_values(self, name))
    }
}

#[inline]
fn header_values<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> impl Iterator<Item = &'a HeaderValue> {
    let values = match known_header(name) {
        Some(header) => headers.get_all(header),
        None => headers.get_all(name),
    };
    values.iter()
}

/// The `HeaderName` for `name`; `None` when it is not a valid one.
fn header_name(name: &'static str) -> Option<HeaderName> {
    match known_header(name) {
        Some(header) => Some(header.clone()),
        None => HeaderName::from_bytes(name.as_bytes()).ok(),
    }
}

impl CarrierMut for HeaderMap {
    fn set(&mut self, name: &'static str, value: &str) {
        // Trace context values are visible ASCII by construction.
        if let (Some(header), Ok(value)) = (header_name(name), HeaderValue::from_str(value)) {
            self.insert(header, value);
        }
    }

    fn set_value(&mut self, name: &'static str, value: HeaderValue) {
        if let Some(header) = header_name(name) {
            self.insert(header, value);
        }
    }

    fn remove(&mut self, name: &'static str) {
        match known_header(name) {
            Some(header) => HeaderMap::remove(self, header),
            None => HeaderMap::remove(self, name),
        };
    }
}

impl<S: BuildHasher> Carrier for HashMap<String, String, S> {
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> {
        self.get(name).map(String::as_bytes).into_iter()
    }
}

impl<S: BuildHasher> CarrierMut for HashMap<String, String, S> {
    fn set(&mut self, name: &'static str, value: &str) {
        self.insert(name.to_owned(), value.to_owned());
    }

    fn remove(&mut self, name: &'static str) {
        HashMap::remove(self, name);
    }
}

impl Carrier for BTreeMap<String, String> {
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> {
        self.get(name).map(String::as_bytes).into_iter()
    }
}

impl CarrierMut for BTreeMap<String, String> {
    fn set(&mut self, name: &'static str, value: &str) {
        self.insert(name.to_owned(), value.to_owned());
    }

    fn remove(&mut self, name: &'static str) {
        BTreeMap::remove(self, name);
    }
}
