//! The CloudEvents 1.0 envelope of a published event, in binary mode: the
//! attributes travel as message headers, the payload as the message body.

use std::collections::BTreeMap;
use std::fmt;

use uuid::Uuid;

use crate::event::Message;

/// The CloudEvents attributes (and trace context) of a message.
///
/// Headers: `ce-id`, `ce-source`, `ce-type`, `ce-specversion` (`1.0`),
/// `ce-subject` (the aggregate id), `ce-time` (RFC 3339, UTC),
/// `content-type` (`datacontenttype`), `traceparent` and `tracestate`
/// (the distributed-tracing extension), and `ce-aggregatetype`.
///
/// # Example
///
/// ```
/// use palisade_outbox::Envelope;
///
/// let headers = [
///     ("ce-id", "01890a5d-ac96-774b-bcce-b302099a8057"),
///     ("ce-source", "/orders"),
///     ("ce-type", "OrderCreated"),
///     ("ce-specversion", "1.0"),
///     ("ce-subject", "o-17"),
///     ("ce-time", "2026-11-29T10:20:00.123Z"),
/// ];
/// let envelope = Envelope::from_headers(headers)?;
/// assert_eq!(envelope.event_type, "OrderCreated");
/// assert_eq!(envelope.time_ms, Some(1_795_947_600_123));
/// # Ok::<(), palisade_outbox::EnvelopeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `id`: the event id, also the broker's deduplication id.
    pub id: Uuid,
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
    /// W3C `traceparent`.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
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

fn problem(text: impl Into<String>) -> EnvelopeError {
    EnvelopeError {
        problem: text.into(),
    }
}

impl Envelope {
    /// The envelope of a claimed outbox message, from `source`.
    #[must_use]
    pub fn of(message: &Message, source: &str) -> Self {
        let event = &message.event;
        let header = |name: &str| event.headers().get(name).cloned();
        Self {
            id: event.id(),
            source: source.to_owned(),
            event_type: event.event_type().to_owned(),
            subject: Some(event.aggregate_id().to_owned()),
            aggregate_type: Some(event.aggregate_type().to_owned()),
            time_ms: Some(message.created_at_ms),
            content_type: header("content-type"),
            traceparent: header("traceparent"),
            tracestate: header("tracestate"),
        }
    }

    /// The envelope as header fields, in binary mode.
    #[must_use]
    pub fn to_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("ce-specversion", "1.0".to_owned()),
            ("ce-id", self.id.to_string()),
            ("ce-source", self.source.clone()),
            ("ce-type", self.event_type.clone()),
        ];
        let optional = [
            ("ce-subject", self.subject.clone()),
            ("ce-aggregatetype", self.aggregate_type.clone()),
            ("ce-time", self.time_ms.map(format_rfc3339)),
            ("content-type", self.content_type.clone()),
            ("traceparent", self.traceparent.clone()),
            ("tracestate", self.tracestate.clone()),
        ];
        headers.extend(
            optional
                .into_iter()
                .filter_map(|(name, value)| Some((name, value?))),
        );
        headers
    }

    /// Reads an envelope from header fields (names case-insensitive).
    ///
    /// # Errors
    ///
    /// [`EnvelopeError`] when `ce-specversion` is not `1.0`, `ce-id` is not
    /// a UUID, `ce-source` or `ce-type` is missing or empty, or `ce-time`
    /// is not an RFC 3339 time.
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, EnvelopeError> {
        let fields: BTreeMap<String, &str> = headers
            .into_iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .collect();
        let get = |name: &str| fields.get(name).copied();
        match get("ce-specversion") {
            Some("1.0") => {}
            Some(other) => return Err(problem(format!("specversion {other:?}"))),
            None => return Err(problem("no ce-specversion")),
        }
        let id = get("ce-id").ok_or_else(|| problem("no ce-id"))?;
        let id = Uuid::parse_str(id).map_err(|_| problem("ce-id is not a UUID"))?;
        let required = |name: &str| {
            get(name)
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| problem(format!("no {name}")))
        };
        let time_ms = match get("ce-time") {
            Some(time) => {
                Some(parse_rfc3339(time).ok_or_else(|| problem("ce-time is not RFC 3339"))?)
            }
            None => None,
        };
        let optional = |name: &str| get(name).map(str::to_owned);
        Ok(Self {
            id,
            source: required("ce-source")?,
            event_type: required("ce-type")?,
            subject: optional("ce-subject"),
            aggregate_type: optional("ce-aggregatetype"),
            time_ms,
            content_type: optional("content-type"),
            traceparent: optional("traceparent"),
            tracestate: optional("tracestate"),
        })
    }
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
            let hours: i64 = rest[1..3].parse().ok()?;
            let minutes: i64 = rest[4..6].parse().ok()?;
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

    #[test]
    fn an_envelope_round_trips_through_headers() {
        let envelope = Envelope {
            id: Uuid::now_v7(),
            source: "/orders".to_owned(),
            event_type: "OrderCreated".to_owned(),
            subject: Some("o-17".to_owned()),
            aggregate_type: Some("order".to_owned()),
            time_ms: Some(1_795_947_600_123),
            content_type: Some("application/json".to_owned()),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
            tracestate: None,
        };
        let headers = envelope.to_headers();
        let read = Envelope::from_headers(headers.iter().map(|(n, v)| (*n, v.as_str()))).unwrap();
        assert_eq!(read, envelope);
        let missing: Vec<_> = headers
            .iter()
            .filter(|(n, _)| *n != "ce-type")
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        assert_eq!(
            Envelope::from_headers(missing).unwrap_err().to_string(),
            "not a CloudEvents 1.0 envelope: no ce-type"
        );
    }
}
