//! The `tracestate` header: up to 32 vendor entries, validated as a whole.

use std::fmt;
use std::sync::Arc;

use crate::error::TraceStateError;

/// The most members a `tracestate` may have.
pub const MAX_MEMBERS: usize = 32;
/// The shortest length [`TraceState::truncate`] cuts a header to: the
/// specification asks every participant to propagate at least this much.
pub const MIN_PROPAGATED_LEN: usize = 512;
/// Members longer than this are removed first when truncating.
const LONG_MEMBER: usize = 128;

/// A validated `tracestate`: an ordered list of `key=value` members, most
/// recent vendor first.
///
/// Parsing follows the `tracestate` rules of W3C Trace Context Level 2
/// (<https://www.w3.org/TR/trace-context-2/>, the Candidate Recommendation
/// Draft text, as tested by the w3c/trace-context harness since its
/// Level 2 key grammar update, w3c/trace-context#584), and a header that
/// breaks any rule is discarded whole:
///
/// - all header lines are combined in order; members are separated by `,`
///   with optional spaces and tabs; empty members are dropped;
/// - at most 32 members, counted as received;
/// - a key is `( lcalpha / DIGIT ) 0*255 ( keychar )` with
///   `keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"`: 1 to 256
///   characters starting with `a`-`z` or `0`-`9`, `@` an ordinary character
///   after the first (the Recommendation's separate `tenant@system` rule is
///   gone);
/// - a value is 1 to 256 printable ASCII characters other than `,` and
///   `=`, and does not end with a space.
///
/// A key that appears more than once is not an error: the first member,
/// the most recent, is kept and later ones are dropped, as Level 2 allows a
/// participant to discard duplicate keys it did not write.
///
/// Cloning is cheap (the list is shared); an empty state writes no header.
///
/// # Example
///
/// ```
/// use palisade_tracecontext::TraceState;
///
/// let mut state = TraceState::parse_lines([&b"rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE"[..]])?;
/// assert_eq!(state.get("congo"), Some("t61rcWkgMzE"));
///
/// // Our own member goes to the front.
/// state.insert("palisade", "p1")?;
/// assert_eq!(state.header_value(), Some("palisade=p1,rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
///
/// // One bad member discards the whole header.
/// assert!(TraceState::parse_lines([&b"rojo=1,Bad=2"[..]]).is_err());
///
/// // A repeated key keeps its first member.
/// let state = TraceState::parse_lines([&b"rojo=1,congo=2"[..], b"rojo=3"])?;
/// assert_eq!(state.header_value(), Some("rojo=1,congo=2"));
/// # Ok::<(), palisade_tracecontext::TraceStateError>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct TraceState {
    /// Members joined by `,` with no whitespace; `None` when there are none.
    list: Option<Arc<str>>,
}

impl TraceState {
    /// An empty state.
    #[must_use]
    pub const fn new() -> Self {
        Self { list: None }
    }

    /// Parses and combines the lines of a `tracestate` header, in order.
    ///
    /// A repeated key keeps its first member; later ones are dropped.
    ///
    /// # Errors
    ///
    /// [`TraceStateError`] naming the first rule broken; the specification
    /// asks for the whole header to be discarded then.
    pub fn parse_lines<'a, I>(lines: I) -> Result<Self, TraceStateError>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        // Validate every member in place, without allocating; a member is
        // its bytes and the length of its key. `received` counts every
        // member, `count` those kept (a repeated key is dropped).
        let mut lines = lines.into_iter();
        let Some(first) = lines.next() else {
            return Ok(Self::new());
        };
        let mut members: [(&[u8], usize); MAX_MEMBERS] = [(&[], 0); MAX_MEMBERS];
        let mut received = 0;
        let mut count = 0;
        let mut only_line = Some(first);
        for (index, line) in std::iter::once(first).chain(lines).enumerate() {
            if index > 0 {
                only_line = None;
            }
            scan_line(line, |member, key_len| {
                if received == MAX_MEMBERS {
                    return Err(TraceStateError::TooManyMembers);
                }
                received += 1;
                let key = &member[..key_len];
                if members[..count].iter().all(|(m, k)| &m[..*k] != key) {
                    members[count] = (member, key_len);
                    count += 1;
                }
                Ok(())
            })?;
        }
        let members = &members[..count];
        let joined_len =
            members.iter().map(|(m, _)| m.len()).sum::<usize>() + count.saturating_sub(1);
        // A single line already in normal form (no whitespace, no empty
        // members, no repeated key) is shared as it is: one allocation.
        let list = match only_line {
            Some(line) if line.len() == joined_len => std::str::from_utf8(line).map(Arc::from),
            _ => {
                let mut joined = Vec::with_capacity(joined_len);
                for (i, (member, _)) in members.iter().enumerate() {
                    if i > 0 {
                        joined.push(b',');
                    }
                    joined.extend_from_slice(member);
                }
                String::from_utf8(joined)
                    .map(Arc::from)
                    .map_err(|err| err.utf8_error())
            }
        };
        // Every byte was checked to be ASCII above, so both conversions hold.
        let list = list.map_err(|_| TraceStateError::InvalidValue)?;
        Ok(Self {
            list: (count > 0).then_some(list),
        })
    }

    fn from_list(list: String) -> Self {
        Self {
            list: (!list.is_empty()).then(|| Arc::from(list)),
        }
    }

    /// Whether there are no members.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.list.is_none()
    }

    /// The number of members.
    #[must_use]
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// The members in order, as `(key, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.list
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .filter(|member| !member.is_empty())
            .filter_map(|member| member.split_once('='))
    }

    /// The value of `key`, if present.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Adds or updates the member `key`, moving it to the front as the
    /// specification requires of the vendor that writes `traceparent`.
    /// When that makes 33 members, the rightmost is removed.
    ///
    /// # Errors
    ///
    /// [`TraceStateError::InvalidKey`] or [`TraceStateError::InvalidValue`];
    /// the state is left as it was.
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), TraceStateError> {
        if !is_valid_key(key.as_bytes()) {
            return Err(TraceStateError::InvalidKey);
        }
        if !is_valid_value(value.as_bytes()) {
            return Err(TraceStateError::InvalidValue);
        }
        let mut list = String::with_capacity(
            key.len() + value.len() + 2 + self.list.as_deref().map_or(0, str::len),
        );
        list.push_str(key);
        list.push('=');
        list.push_str(value);
        for (k, v) in self.iter().filter(|(k, _)| *k != key).take(MAX_MEMBERS - 1) {
            list.push(',');
            list.push_str(k);
            list.push('=');
            list.push_str(v);
        }
        *self = Self::from_list(list);
        Ok(())
    }

    /// Removes the member `key`; returns whether it was present.
    pub fn remove(&mut self, key: &str) -> bool {
        if self.get(key).is_none() {
            return false;
        }
        self.retain_indices(|_, (k, _)| k != key);
        true
    }

    /// Shortens the header to at most `max_len` characters (never below
    /// [`MIN_PROPAGATED_LEN`]) by removing whole members: those longer than
    /// 128 characters first, longest first, then from the right.
    pub fn truncate(&mut self, max_len: usize) {
        let limit = max_len.max(MIN_PROPAGATED_LEN);
        while self.list.as_deref().map_or(0, str::len) > limit {
            let longest = self
                .iter()
                .enumerate()
                .map(|(i, (k, v))| (i, k.len() + 1 + v.len()))
                .filter(|&(_, len)| len > LONG_MEMBER)
                .max_by_key(|&(i, len)| (len, i));
            let victim = match longest {
                Some((i, _)) => i,
                None => self.len() - 1,
            };
            self.retain_indices(|i, _| i != victim);
        }
    }

    fn retain_indices(&mut self, mut keep: impl FnMut(usize, (&str, &str)) -> bool) {
        let mut list = String::new();
        for (i, (k, v)) in self.iter().enumerate() {
            if keep(i, (k, v)) {
                if !list.is_empty() {
                    list.push(',');
                }
                list.push_str(k);
                list.push('=');
                list.push_str(v);
            }
        }
        *self = Self::from_list(list);
    }

    /// The header value to send, or `None` when there are no members: an
    /// empty `tracestate` header is never written.
    #[must_use]
    pub fn header_value(&self) -> Option<&str> {
        self.list.as_deref()
    }
}

impl fmt::Debug for TraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl fmt::Display for TraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.list.as_deref().unwrap_or_default())
    }
}

/// Character classes of the grammar, one table lookup per byte.
const KEY_CHAR: u8 = 1;
const VALUE_CHAR: u8 = 2;
static CLASSES: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        if is_key_char(byte) {
            table[b] |= KEY_CHAR;
        }
        if byte >= 0x20 && byte <= 0x7e && byte != b',' && byte != b'=' {
            table[b] |= VALUE_CHAR;
        }
        b += 1;
    }
    table
}

const fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Splits one header line into members, validating each in a single pass,
/// and hands each (without surrounding whitespace) and its key length to
/// `found`.
fn scan_line<'a>(
    line: &'a [u8],
    mut found: impl FnMut(&'a [u8], usize) -> Result<(), TraceStateError>,
) -> Result<(), TraceStateError> {
    let class = |i: usize| CLASSES[usize::from(line[i])];
    let len = line.len();
    let mut i = 0;
    loop {
        while i < len && is_ows(line[i]) {
            i += 1;
        }
        if i == len {
            return Ok(());
        }
        if line[i] == b',' {
            i += 1;
            continue;
        }
        let start = i;
        while i < len && class(i) & KEY_CHAR != 0 {
            i += 1;
        }
        let key_end = i;
        if i == len || line[i] != b'=' {
            while i < len && is_ows(line[i]) {
                i += 1;
            }
            let ends_member = i == len || line[i] == b',';
            return Err(if ends_member && key_end > start {
                TraceStateError::MissingEquals
            } else {
                TraceStateError::InvalidKey
            });
        }
        if !is_valid_key(&line[start..key_end]) {
            return Err(TraceStateError::InvalidKey);
        }
        i += 1;
        let value_start = i;
        while i < len && class(i) & VALUE_CHAR != 0 {
            i += 1;
        }
        // Trailing spaces are whitespace around the member, not value.
        let mut value_end = i;
        while value_end > value_start && line[value_end - 1] == b' ' {
            value_end -= 1;
        }
        while i < len && is_ows(line[i]) {
            i += 1;
        }
        let value_len = value_end - value_start;
        if (i < len && line[i] != b',') || value_len == 0 || value_len > 256 {
            return Err(TraceStateError::InvalidValue);
        }
        found(&line[start..value_end], key_end - start)?;
    }
}

/// `keychar` of the specification.
const fn is_key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
}

/// `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`.
fn is_valid_key(key: &[u8]) -> bool {
    matches!(key.first(), Some(&b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && key.len() <= 256
        && key.iter().all(|&b| is_key_char(b))
}

/// 1 to 256 of `%x20-2B / %x2D-3C / %x3E-7E`, not ending in a space.
fn is_valid_value(value: &[u8]) -> bool {
    let allowed = |b: u8| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=';
    matches!(value.last(), Some(&last) if last != b' ')
        && value.len() <= 256
        && value.iter().all(|&b| allowed(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Result<TraceState, TraceStateError> {
        TraceState::parse_lines(lines.iter().map(|l| l.as_bytes()))
    }

    #[test]
    fn truncation_removes_long_members_first_then_from_the_right() {
        let long = format!("long={}", "x".repeat(200));
        let members: Vec<String> = (0..30)
            .map(|i| format!("k{i:02}=vvvvvvvvvvvvvvvvvvvv"))
            .collect();
        let header = format!(
            "{},{long},{}",
            members[..5].join(","),
            members[5..].join(",")
        );
        let mut state = parse(&[&header]).unwrap();
        assert!(state.header_value().unwrap().len() > 512);
        state.truncate(0);
        let value = state.header_value().unwrap();
        assert!(value.len() <= 512, "{}", value.len());
        assert!(state.get("long").is_none());
        assert_eq!(state.iter().next().unwrap().0, "k00");
        // Only the right end was cut after the long member went.
        let kept = state.len();
        assert!(
            state
                .iter()
                .map(|(k, _)| k)
                .eq(members[..kept].iter().map(|m| &m[..3]))
        );
    }

    #[test]
    fn a_33rd_member_from_insert_drops_the_rightmost() {
        let header: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        let mut state = parse(&[&header.join(",")]).unwrap();
        state.insert("ours", "1").unwrap();
        assert_eq!(state.len(), 32);
        assert_eq!(state.iter().next(), Some(("ours", "1")));
        assert!(state.get("k31").is_none());
        assert_eq!(state.get("k30"), Some("v"));
    }
}
