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
/// request pays for parsing or allocating it.
fn known_header(name: &str) -> Option<&'static HeaderName> {
    match name {
        TRACEPARENT => Some(&TRACEPARENT_HEADER),
        TRACESTATE => Some(&TRACESTATE_HEADER),
        TRACERESPONSE => Some(&TRACERESPONSE_HEADER),
        _ => None,
    }
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
}

/// Something trace context can be written to.
pub trait CarrierMut {
    /// Sets the field `name`, replacing every value it had.
    fn set(&mut self, name: &'static str, value: &str);

    /// Removes every value of the field `name`.
    fn remove(&mut self, name: &'static str);
}

impl Carrier for HeaderMap {
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> {
        let values = match known_header(name) {
            Some(header) => self.get_all(header),
            None => self.get_all(name),
        };
        values.iter().map(HeaderValue::as_bytes)
    }
}

impl CarrierMut for HeaderMap {
    fn set(&mut self, name: &'static str, value: &str) {
        let header = match known_header(name) {
            Some(header) => header.clone(),
            None => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(header) => header,
                Err(_) => return,
            },
        };
        // Trace context values are visible ASCII by construction.
        if let Ok(value) = HeaderValue::from_str(value) {
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
