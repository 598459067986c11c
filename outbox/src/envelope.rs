//! The CloudEvents 1.0 envelope of a published event, in binary mode: the
//! attributes travel as message headers, the payload as the message body.

use std::collections::BTreeMap;
use std::fmt;

use crate::event::Message;

/// The CloudEvents attributes (and trace context) of a message.
///
/// In binary mode, as the CloudEvents NATS protocol binding (1.0.3) has
/// it: every attribute, extensions included, travels as the header
/// `ce-<attribute>` — `ce-id`, `ce-source`, `ce-type`, `ce-specversion`
/// (`1.0`), `ce-subject` (the aggregate id), `ce-time` (RFC 3339, UTC),
/// `ce-datacontenttype`, `ce-traceparent` and `ce-tracestate` (the
/// distributed-tracing extension), `ce-aggregatetype`, and one per other
/// extension (an event's own headers, such as a tenant) — with its value
/// percent-encoded (space, `"`, `%` and anything outside printable ASCII),
/// so no value can break a header. Reading also accepts double-quoted
/// values, and `content-type`, `traceparent` and `tracestate` without the
/// prefix from older writers. A value that cannot be percent-encoding (a
/// broken escape such as `50%off`, or escapes that are not UTF-8) was
/// written as it stands, by an earlier version or another writer, and is
/// read as it stands (a raw value that happens to hold valid escapes,
/// such as `a%20b`, cannot be told apart, and is decoded).
///
/// # Example
///
/// ```
/// use palisade_outbox::Envelope;
///
/// let headers = [
///     ("ce-id", "A234-1234-1234"),
///     ("ce-source", "/orders"),
///     ("ce-type", "OrderCreated"),
///     ("ce-specversion", "1.0"),
///     ("ce-subject", "o-17"),
///     ("ce-time", "2026-11-29T10:20:00.123Z"),
///     ("ce-tenant", "acme%20corp"),
/// ];
/// let envelope = Envelope::from_headers(headers)?;
/// assert_eq!(envelope.event_type, "OrderCreated");
/// assert_eq!(envelope.time_ms, Some(1_795_947_600_123));
/// assert_eq!(envelope.extensions["tenant"], "acme corp");
/// # Ok::<(), palisade_outbox::EnvelopeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `id`: unique per source (an outbox event's UUID); consumers'
    /// inboxes deduplicate by it.
    pub id: String,
    /// `source`: the producing service.
    pub source: String,
    /// `type`: the event type.
    pub event_type: String,
    /// `subject`: the aggregate id.
    pub subject: Option<String>,
    /// `aggregatetype` (extension): the aggregate's type.
    pub aggregate_type: Option<String>,
    /// `time`, in milliseconds since the Unix epoch.
    pub time_ms: Option<i64>,
    /// `datacontenttype`.
    pub content_type: Option<String>,
    /// W3C `traceparent` (distributed-tracing extension).
    pub traceparent: Option<String>,
    /// W3C `tracestate` (distributed-tracing extension).
    pub tracestate: Option<String>,
    /// The other extension attributes, by name (lowercase ASCII letters
    /// and digits): an outbox event's own headers, such as `tenant`.
    pub extensions: BTreeMap<String, String>,
}

/// Headers that are not a CloudEvents 1.0 envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeError {
    problem: String,
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a CloudEvents 1.0 envelope: {}", self.problem)
    }
}

impl std::error::Error for EnvelopeError {}

/// The longest `ce-id` a consumer takes, in bytes: what an inbox keys
/// its records by (this crate's ids are UUIDs, 36 bytes).
const LONGEST_ID: usize = 256;

fn problem(text: impl Into<String>) -> EnvelopeError {
    EnvelopeError {
        problem: text.into(),
    }
}

/// The attributes the envelope has fields for: never extensions.
const ATTRIBUTES: [&str; 11] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "data",
    "aggregatetype",
    "traceparent",
    "tracestate",
];

/// A CloudEvents attribute name: lowercase ASCII letters and digits.
fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The extension attribute an event header is carried as: its ASCII
/// letters and digits, lowercased; `None` when that leaves nothing or an
/// attribute the envelope has a field for.
pub(crate) fn extension_name(header: &str) -> Option<String> {
    let name: String = header
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (!name.is_empty() && !ATTRIBUTES.contains(&name.as_str())).then_some(name)
}

impl Envelope {
    /// The envelope of a claimed outbox message, from `source`. The
    /// event's headers `content-type`, `traceparent` and `tracestate` fill
    /// their attributes; every other header is an extension (see
    /// [`Event::header`](crate::Event::header)).
    #[must_use]
    pub fn of(message: &Message, source: &str) -> Self {
        let event = &message.event;
        let header = |name: &str| event.headers().get(name).cloned();
        let extensions = event
            .headers()
            .iter()
            .filter(|(name, _)| {
                !matches!(name.as_str(), "content-type" | "traceparent" | "tracestate")
            })
            .filter_map(|(name, value)| Some((extension_name(name)?, value.clone())))
            .collect();
        Self {
            id: event.id().to_string(),
            source: source.to_owned(),
            event_type: event.event_type().to_owned(),
            subject: Some(event.aggregate_id().to_owned()),
            aggregate_type: Some(event.aggregate_type().to_owned()),
            time_ms: Some(message.created_at_ms),
            content_type: header("content-type"),
            traceparent: header("traceparent"),
            tracestate: header("tracestate"),
            extensions,
        }
    }

    /// The envelope as header fields, in binary mode: `ce-<attribute>`,
    /// values percent-encoded.
    #[must_use]
    pub fn to_headers(&self) -> Vec<(String, String)> {
        let required = [
            ("specversion", "1.0"),
            ("id", self.id.as_str()),
            ("source", self.source.as_str()),
            ("type", self.event_type.as_str()),
        ];
        let time = self.time_ms.map(format_rfc3339);
        let optional = [
            ("subject", self.subject.as_deref()),
            ("aggregatetype", self.aggregate_type.as_deref()),
            ("time", time.as_deref()),
            ("datacontenttype", self.content_type.as_deref()),
            ("traceparent", self.traceparent.as_deref()),
            ("tracestate", self.tracestate.as_deref()),
        ];
        required
            .into_iter()
            .chain(
                optional
                    .into_iter()
                    .filter_map(|(name, value)| Some((name, value?))),
            )
            .chain(
                self.extensions
                    .iter()
                    .filter(|(name, _)| {
                        is_attribute_name(name) && !ATTRIBUTES.contains(&name.as_str())
                    })
                    .map(|(name, value)| (name.as_str(), value.as_str())),
            )
            .map(|(name, value)| (format!("ce-{name}"), percent_encode(value)))
            .collect()
    }

    /// Reads an envelope from header fields (names case-insensitive,
    /// values percent-decoded; one that cannot be percent-encoding is
    /// taken as it stands).
    ///
    /// # Errors
    ///
    /// [`EnvelopeError`] when `ce-specversion` is not `1.0`, `ce-id`,
    /// `ce-source` or `ce-type` is missing or empty, `ce-id` is longer
    /// than 256 bytes or holds a control character, or `ce-time` is not an
    /// RFC 3339 time.
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, EnvelopeError> {
        let mut attributes: BTreeMap<String, String> = BTreeMap::new();
        let mut plain: BTreeMap<String, &str> = BTreeMap::new();
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("ce-") {
                Some(attribute) => {
                    // Refusing one that is not percent-encoding
                    // dead-lettered every message of a writer that sent
                    // its values raw (palisade's before they were encoded)
                    // holding a `%`.
                    let value = percent_decode(value);
                    attributes.insert(attribute.to_owned(), value);
                }
                None => {
                    plain.insert(name, value);
                }
            }
        }
        match attributes.get("specversion").map(String::as_str) {
            Some("1.0") => {}
            Some(other) => return Err(problem(format!("specversion {other:?}"))),
            None => return Err(problem("no ce-specversion")),
        }
        let mut take = |name: &str| attributes.remove(name);
        let mut required = |name: &str| {
            take(name)
                .filter(|value| !value.is_empty())
                .ok_or_else(|| problem(format!("no ce-{name}")))
        };
        let (id, source, event_type) = (required("id")?, required("source")?, required("type")?);
        // The id is the inbox's key: one PostgreSQL cannot index (too long
        // for its index, or a NUL, which it refuses in text) failed every
        // try of its batch as if the database were away, for ever.
        if id.len() > LONGEST_ID {
            return Err(problem(format!(
                "ce-id is {} bytes long, more than {LONGEST_ID}",
                id.len()
            )));
        }
        if id.contains(char::is_control) {
            return Err(problem(format!("ce-id {id:?} holds a control character")));
        }
        let time_ms = match attributes.remove("time") {
            Some(time) => {
                Some(parse_rfc3339(&time).ok_or_else(|| problem("ce-time is not RFC 3339"))?)
            }
            None => None,
        };
        // Older writers: the attribute without its prefix.
        let mut with_fallback = |name: &str, fallback: &str| {
            attributes
                .remove(name)
                .or_else(|| plain.get(fallback).map(|value| (*value).to_owned()))
        };
        let content_type = with_fallback("datacontenttype", "content-type");
        let traceparent = with_fallback("traceparent", "traceparent");
        let tracestate = with_fallback("tracestate", "tracestate");
        let subject = attributes.remove("subject");
        let aggregate_type = attributes.remove("aggregatetype");
        attributes
            .retain(|name, _| is_attribute_name(name) && !ATTRIBUTES.contains(&name.as_str()));
        Ok(Self {
            id,
            source,
            event_type,
            subject,
            aggregate_type,
            time_ms,
            content_type,
            traceparent,
            tracestate,
            extensions: attributes,
        })
    }
}

/// A header value as the NATS binding writes it: space, `"`, `%` and every
/// character outside printable ASCII as `%XY` per UTF-8 byte.
fn percent_encode(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push('%');
            encoded.push(char::from(HEX[usize::from(byte >> 4)]));
            encoded.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
    encoded
}

/// A header value as the NATS binding reads it: a double-quoted string
/// unescaped, then one round of percent-decoding. A value that is not
/// percent-encoding (a broken escape, or escapes that are not UTF-8) was
/// written as it stands (by an earlier version, or another writer), and
/// is read so, unquoted; a quote never closed is part of the value.
fn percent_decode(value: &str) -> String {
    let value = value.trim();
    let unquoted = value.strip_prefix('"').and_then(|quoted| {
        let quoted = quoted.strip_suffix('"')?;
        let mut out = String::with_capacity(quoted.len());
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            out.push(if c == '\\' { chars.next()? } else { c });
        }
        Some(out)
    });
    let value = unquoted.as_deref().unwrap_or(value);
    decode_escapes(value).unwrap_or_else(|| value.to_owned())
}

/// `value` with its `%XY` escapes decoded; `None` for a broken escape or
/// bytes that are not UTF-8.
fn decode_escapes(value: &str) -> Option<String> {
    let hex = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let high = hex(*bytes.get(at + 1)?)?;
            let low = hex(*bytes.get(at + 2)?)?;
            decoded.push(high << 4 | low);
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
const fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date of days since 1970-01-01.
const fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

/// `2026-11-29T10:20:00.123Z` for milliseconds since the epoch.
fn format_rfc3339(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (rest / 3_600_000, rest / 60_000 % 60);
    let (second, milli) = (rest / 1000 % 60, rest % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// Milliseconds since the epoch of an RFC 3339 time (`Z` or an offset,
/// any fraction of a second); `None` for anything else.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = bytes.get(range)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if bytes.len() < 20
        || !separators.iter().all(|&(at, c)| bytes[at] == c)
        || !matches!(bytes[10], b'T' | b't' | b' ')
    {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let days_in_month = [
        31,
        if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) {
            29
        } else {
            28
        },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month[usize::try_from(month - 1).ok()?]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut milli = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let first_three = &fraction[..digits.min(3)];
        milli = first_three.parse::<i64>().ok()?
            * 10_i64.pow(3 - u32::try_from(first_three.len()).ok()?);
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let offset = rest.as_bytes();
            if offset.len() != 6 || !matches!(offset[0], b'+' | b'-') || offset[3] != b':' {
                return None;
            }
            // Two digits each: `parse` alone would take `-1` or `+1`.
            let two_digits = |at: usize| -> Option<i64> {
                let (tens, ones) = (offset[at], offset[at + 1]);
                (tens.is_ascii_digit() && ones.is_ascii_digit())
                    .then(|| i64::from(tens - b'0') * 10 + i64::from(ones - b'0'))
            };
            let (hours, minutes) = (two_digits(1)?, two_digits(4)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let sign = if offset[0] == b'-' { -1 } else { 1 };
            sign * (hours * 60 + minutes)
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_minutes * 60;
    Some(seconds * 1000 + milli)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn times_round_trip_and_offsets_count() {
        for ms in [0, 1_795_947_600_123, 951_782_400_000, -86_400_001] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Some(ms), "{ms}");
        }
        assert_eq!(format_rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            parse_rfc3339("2026-11-29T11:20:00.5+01:00"),
            Some(1_795_947_600_500)
        );
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-11-29T24:00:00Z",
            "2026-11-29T10:20:00",
            "nonsense",
            "2026-11-29T10:20:00.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    /// A minimal envelope's headers, with `id`.
    fn minimal(id: &str) -> Vec<(&str, &str)> {
        vec![
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-source", "/elsewhere"),
            ("ce-type", "Shipped"),
        ]
    }

    #[test]
    fn an_id_that_is_not_a_uuid_is_still_an_id() {
        // CloudEvents: `id` is any non-empty string, unique per source.
        for id in ["A234-1234-1234", "42", "order 17/3"] {
            let envelope = Envelope::from_headers(minimal(id));
            assert!(envelope.is_ok(), "{id}: {envelope:?}");
        }
        assert!(Envelope::from_headers(minimal("")).is_err());
        assert_eq!(
            Envelope::from_headers(minimal("order%2017")).unwrap().id,
            "order 17"
        );
    }

    /// An id an inbox cannot key a record by is refused (its message is
    /// dead-lettered): PostgreSQL refused a NUL or an id past its index's
    /// size, and the consumer took that for the database away, for ever.
    #[test]
    fn an_id_too_long_or_with_a_control_character_is_refused() {
        let longest = "x".repeat(256);
        assert!(Envelope::from_headers(minimal(&longest)).is_ok());
        let longer = "x".repeat(257);
        let refused = Envelope::from_headers(minimal(&longer)).unwrap_err();
        assert!(refused.to_string().contains("257 bytes"), "{refused}");
        for id in ["a%00b", "a%0Ab", "%7F"] {
            let refused = Envelope::from_headers(minimal(id)).unwrap_err();
            assert!(
                refused.to_string().contains("control character"),
                "{id}: {refused}"
            );
        }
    }

    #[test]
    fn values_are_percent_decoded_and_others_read_as_they_stand() {
        let mut headers = minimal("1");
        headers.push(("ce-tenant", "\"acme%20%E2%82%ac\""));
        headers.push(("ce-Region", "eu"));
        headers.push(("ce-not-an-attribute", "skipped"));
        let envelope = Envelope::from_headers(headers).unwrap();
        assert_eq!(
            envelope.extensions,
            [
                ("region".to_owned(), "eu".to_owned()),
                ("tenant".to_owned(), "acme \u{20ac}".to_owned()),
            ]
            .into()
        );
        for (sent, read) in [
            ("%", "%"),
            ("%4", "%4"),
            ("50%off", "50%off"),
            ("%C0%A0", "%C0%A0"),
            ("%FF", "%FF"),
            ("\"open", "\"open"),
            ("\"50%off\"", "50%off"),
            ("\"a\\\"b%zz\"", "a\"b%zz"),
        ] {
            let mut headers = minimal(sent);
            headers.push(("ce-tenant", sent));
            let envelope = Envelope::from_headers(headers).unwrap();
            assert_eq!(envelope.id, read, "{sent}");
            assert_eq!(envelope.extensions["tenant"], read, "{sent}");
        }
    }

    #[test]
    fn attributes_use_the_nats_bindings_header_names() {
        let mut envelope =
            Envelope::from_headers(minimal("01890a5d-ac96-774b-bcce-b302099a8057")).unwrap();
        envelope.content_type = Some("application/json".to_owned());
        envelope.traceparent =
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned());
        envelope.tracestate = Some("congo=t61rcWkgMzE".to_owned());
        let headers = envelope.to_headers();
        let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
        for name in ["ce-datacontenttype", "ce-traceparent", "ce-tracestate"] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        assert!(
            names.iter().all(|name| name.starts_with("ce-")),
            "every attribute as ce-<name>: {names:?}"
        );
    }

    #[test]
    fn a_malformed_offset_is_refused() {
        for bad in [
            "2026-11-29T10:20:00+-1:00",
            "2026-11-29T10:20:00-+1:00",
            "2026-11-29T10:20:00+01:-1",
            "2026-11-29T10:20:00+01:+1",
            "2026-11-29T10:20:00+ 1:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_envelope_round_trips_through_headers() {
        let envelope = Envelope {
            id: Uuid::now_v7().to_string(),
            source: "/orders".to_owned(),
            event_type: "OrderCreated".to_owned(),
            subject: Some("o-17".to_owned()),
            aggregate_type: Some("order".to_owned()),
            time_ms: Some(1_795_947_600_123),
            content_type: Some("application/json".to_owned()),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
            tracestate: None,
            extensions: [(
                "tenant".to_owned(),
                "acme \"corp\" 100% \u{20ac}\r\n".to_owned(),
            )]
            .into(),
        };
        let headers = envelope.to_headers();
        assert!(
            headers
                .iter()
                .all(|(_, value)| value.bytes().all(|b| (0x21..=0x7e).contains(&b))),
            "every value printable ASCII: {headers:?}"
        );
        let read =
            Envelope::from_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))).unwrap();
        assert_eq!(read, envelope);
        let missing: Vec<_> = headers
            .iter()
            .filter(|(n, _)| n != "ce-type")
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            Envelope::from_headers(missing).unwrap_err().to_string(),
            "not a CloudEvents 1.0 envelope: no ce-type"
        );
    }
}
