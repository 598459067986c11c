//! The `tracestate` header: up to 32 vendor entries, validated as a whole.

use std::fmt;
use std::sync::Arc;

use crate::error::TraceStateError;
use crate::traceparent::trim_ows;

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
/// Parsing follows the W3C Trace Context specification exactly, and a
/// header that breaks any rule is discarded whole:
///
/// - all header lines are combined in order; members are separated by `,`
///   with optional spaces and tabs; empty members are dropped;
/// - at most 32 members, and no key twice;
/// - a key is `lcalpha` then up to 255 of `[a-z0-9_\-*/]`, or a
///   multi-tenant key `tenant@system`: a tenant of 1 to 241 characters
///   starting with `lcalpha` or a digit, and a system of 1 to 14 starting
///   with `lcalpha`;
/// - a value is 1 to 256 printable ASCII characters other than `,` and
///   `=`, and does not end with a space.
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
    /// # Errors
    ///
    /// [`TraceStateError`] naming the first rule broken; the specification
    /// asks for the whole header to be discarded then.
    pub fn parse_lines<'a, I>(lines: I) -> Result<Self, TraceStateError>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let mut list = String::new();
        let mut keys = KeyIndex::default();
        for line in lines {
            for member in line.split(|&b| b == b',') {
                let member = trim_ows(member);
                if member.is_empty() {
                    continue;
                }
                let (key, value) = split_member(member)?;
                if keys.len == MAX_MEMBERS {
                    return Err(TraceStateError::TooManyMembers);
                }
                if !list.is_empty() {
                    list.push(',');
                }
                let start = list.len();
                list.push_str(key);
                if keys.contains(&list, key) {
                    return Err(TraceStateError::DuplicateKey);
                }
                keys.push(start, list.len());
                list.push('=');
                list.push_str(value);
            }
        }
        Ok(Self::from_list(list))
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

/// Where each key stands in the list being built, to find duplicates
/// without allocating.
#[derive(Default)]
struct KeyIndex {
    spans: [(u32, u32); MAX_MEMBERS],
    len: usize,
}

impl KeyIndex {
    fn contains(&self, list: &str, key: &str) -> bool {
        self.spans[..self.len]
            .iter()
            .any(|&(start, end)| &list[start as usize..end as usize] == key)
    }

    fn push(&mut self, start: usize, end: usize) {
        // Lines are bounded by the header size, far below 4 GiB.
        self.spans[self.len] = (start as u32, end as u32);
        self.len += 1;
    }
}

/// Splits a trimmed member at its first `=`, validating both halves.
fn split_member(member: &[u8]) -> Result<(&str, &str), TraceStateError> {
    let eq = member
        .iter()
        .position(|&b| b == b'=')
        .ok_or(TraceStateError::MissingEquals)?;
    let (key, value) = (&member[..eq], &member[eq + 1..]);
    if !is_valid_key(key) {
        return Err(TraceStateError::InvalidKey);
    }
    if !is_valid_value(value) {
        return Err(TraceStateError::InvalidValue);
    }
    // Both halves are ASCII, checked above.
    match (std::str::from_utf8(key), std::str::from_utf8(value)) {
        (Ok(key), Ok(value)) => Ok((key, value)),
        _ => Err(TraceStateError::InvalidValue),
    }
}

const fn is_lcalpha(b: u8) -> bool {
    b.is_ascii_lowercase()
}

const fn is_key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
}

/// `simple-key` or `multi-tenant-key` of the specification.
fn is_valid_key(key: &[u8]) -> bool {
    match key.iter().position(|&b| b == b'@') {
        None => {
            matches!(key.first(), Some(&b) if is_lcalpha(b))
                && key.len() <= 256
                && key[1..].iter().all(|&b| is_key_char(b))
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            matches!(tenant.first(), Some(&b) if is_lcalpha(b) || b.is_ascii_digit())
                && tenant.len() <= 241
                && tenant[1..].iter().all(|&b| is_key_char(b))
                && matches!(system.first(), Some(&b) if is_lcalpha(b))
                && system.len() <= 14
                && system[1..].iter().all(|&b| is_key_char(b))
        }
    }
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
