//! The `tracestate` header: up to 32 vendor entries, validated as a whole.

use std::fmt;
use std::hash::{Hash, Hasher};

use bytes::Bytes;
use http::HeaderValue;
use http::header::InvalidHeaderValue;

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
/// The members are kept as the header value to send, an
/// [`http::HeaderValue`]: cloning is cheap (the bytes are shared, not
/// copied), a carrier that takes header values (an [`http::HeaderMap`])
/// writes it without copying or checking it again
/// ([`as_header_value`](Self::as_header_value)), and an empty state writes
/// no header.
///
/// A state read from `http` header values with
/// [`parse_header_values`](Self::parse_header_values) (as
/// [`Propagator::extract`](crate::Propagator::extract) does from an
/// [`http::HeaderMap`]) shares the received line when it is already in
/// normal form, so it keeps the buffer that line was read into (with hyper,
/// the request head's) alive as long as the request's own headers would,
/// until it is dropped or changed.
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
#[derive(Clone, Default)]
pub struct TraceState {
    /// Members joined by `,` with no whitespace, only visible ASCII and
    /// spaces; `None` when there are none.
    list: Option<HeaderValue>,
}

/// A `tracestate` line to parse: its bytes, and whether it can be kept as
/// it is instead of copied.
trait Line<'a>: Copy {
    fn bytes(self) -> &'a [u8];
    /// The line as a header value to keep, if it can be shared.
    fn share(self) -> Option<HeaderValue>;
}

impl<'a> Line<'a> for &'a [u8] {
    fn bytes(self) -> &'a [u8] {
        self
    }

    fn share(self) -> Option<HeaderValue> {
        None
    }
}

impl<'a> Line<'a> for &'a HeaderValue {
    fn bytes(self) -> &'a [u8] {
        self.as_bytes()
    }

    fn share(self) -> Option<HeaderValue> {
        let mut value = self.clone();
        value.set_sensitive(false);
        Some(value)
    }
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
        Self::parse(lines)
    }

    /// [`parse_lines`](Self::parse_lines) for the lines of an `http`
    /// header (`headers.get_all("tracestate")`): a single line already in
    /// normal form (no whitespace, no empty member, no repeated key), as
    /// senders write it, is kept as it is, its bytes shared rather than
    /// copied; no allocation.
    ///
    /// # Errors
    ///
    /// As [`parse_lines`](Self::parse_lines).
    ///
    /// # Example
    ///
    /// ```
    /// use http::HeaderMap;
    /// use palisade_tracecontext::TraceState;
    ///
    /// let mut headers = HeaderMap::new();
    /// headers.insert("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".parse()?);
    /// let state = TraceState::parse_header_values(&headers.get_all("tracestate"))?;
    /// assert_eq!(state.as_header_value(), headers.get("tracestate"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn parse_header_values<'a, I>(lines: I) -> Result<Self, TraceStateError>
    where
        I: IntoIterator<Item = &'a HeaderValue>,
    {
        Self::parse(lines)
    }

    fn parse<'a, L: Line<'a>>(lines: impl IntoIterator<Item = L>) -> Result<Self, TraceStateError> {
        // Validate every member in place, without allocating. `received`
        // counts every member, `members` holds those kept (a repeated key
        // is dropped) and `kept_len` their length.
        let mut lines = lines.into_iter();
        let Some(first) = lines.next() else {
            return Ok(Self::new());
        };
        let mut members: [&[u8]; MAX_MEMBERS] = [&[]; MAX_MEMBERS];
        let mut received = 0;
        let mut count = 0;
        let mut kept_len = 0;
        let mut keep = |member: &'a [u8], key_len: usize| {
            if received == MAX_MEMBERS {
                return Err(TraceStateError::TooManyMembers);
            }
            received += 1;
            let key = &member[..key_len];
            // A kept member has this key when it starts with the key and
            // `=` (keys have no `=`).
            // (Compared byte by byte: keys are short, a call to `memcmp`
            // costs more.)
            let repeated = members[..count].iter().any(|kept| {
                kept.len() > key_len
                    && kept[key_len] == b'='
                    && kept.iter().zip(key).all(|(a, b)| a == b)
            });
            if !repeated {
                members[count] = member;
                count += 1;
                kept_len += member.len();
            }
            Ok(())
        };
        scan_line(first.bytes(), &mut keep)?;
        let mut only_line = Some(first);
        for line in lines {
            only_line = None;
            scan_line(line.bytes(), &mut keep)?;
        }
        if count == 0 {
            return Ok(Self::new());
        }
        let members = &members[..count];
        let joined_len = kept_len + count - 1;
        // A single line already in normal form (no whitespace, no empty
        // members, no repeated key) is kept as it is: shared, or one copy.
        let list = match only_line {
            Some(line) if line.bytes().len() == joined_len => match line.share() {
                Some(shared) => Ok(shared),
                None => copied(line.bytes()),
            },
            _ => {
                // Joined on the stack when it fits, then copied once.
                let mut stack = [0u8; 488];
                let mut heap = Vec::new();
                let joined = if joined_len <= stack.len() {
                    &mut stack[..joined_len]
                } else {
                    heap.resize(joined_len, 0);
                    &mut heap[..]
                };
                let mut at = 0;
                for member in members {
                    if at > 0 {
                        joined[at] = b',';
                        at += 1;
                    }
                    joined[at..at + member.len()].copy_from_slice(member);
                    at += member.len();
                }
                copied(joined)
            }
        };
        // Every byte was checked to be visible ASCII or a space above, so
        // both conversions hold.
        let list = list.map_err(|_| TraceStateError::InvalidValue)?;
        Ok(Self { list: Some(list) })
    }

    fn from_list(list: String) -> Self {
        Self {
            // `list` is made of members already checked.
            list: HeaderValue::try_from(list)
                .ok()
                .filter(|list| !list.is_empty()),
        }
    }

    /// The members joined by `,`; empty when there are none.
    fn as_str(&self) -> &str {
        // Only visible ASCII and spaces, as checked when it was made.
        self.list
            .as_ref()
            .and_then(|list| std::str::from_utf8(list.as_bytes()).ok())
            .unwrap_or_default()
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
        self.as_str()
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
            key.len() + value.len() + 2 + self.list.as_ref().map_or(0, HeaderValue::len),
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
        while self.list.as_ref().map_or(0, HeaderValue::len) > limit {
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
        self.list.as_ref().map(|_| self.as_str())
    }

    /// The header value to send as an [`http::HeaderValue`], to write
    /// without copying it (clone it: its bytes are shared), or `None` when
    /// there are no members.
    #[must_use]
    pub const fn as_header_value(&self) -> Option<&HeaderValue> {
        self.list.as_ref()
    }
}

impl PartialEq for TraceState {
    fn eq(&self, other: &Self) -> bool {
        self.list.as_ref().map(HeaderValue::as_bytes)
            == other.list.as_ref().map(HeaderValue::as_bytes)
    }
}

impl Eq for TraceState {}

impl Hash for TraceState {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.list.as_ref().map(HeaderValue::as_bytes).hash(state);
    }
}

impl fmt::Debug for TraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl fmt::Display for TraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `bytes` as a header value in one allocation that clones share: held
/// inline by a `Bytes` owner, in one of a few sizes. (A `Bytes` made from a
/// `Vec` allocates again when it is first cloned, and a state is cloned for
/// every child span.) Longer values take the `Vec` way.
fn copied(bytes: &[u8]) -> Result<HeaderValue, InvalidHeaderValue> {
    match bytes.len() {
        0..=40 => inline::<40>(bytes),
        41..=104 => inline::<104>(bytes),
        105..=232 => inline::<232>(bytes),
        233..=488 => inline::<488>(bytes),
        _ => HeaderValue::from_bytes(bytes),
    }
}

/// Up to `N` bytes kept inline; the allocation of `Bytes::from_owner` adds
/// 24 bytes, so the sizes above fill 64, 128, 256 and 512 bytes.
struct Inline<const N: usize> {
    len: usize,
    buf: [u8; N],
}

impl<const N: usize> AsRef<[u8]> for Inline<N> {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

fn inline<const N: usize>(bytes: &[u8]) -> Result<HeaderValue, InvalidHeaderValue> {
    let mut inline = Inline {
        len: bytes.len(),
        buf: [0; N],
    };
    inline.buf[..bytes.len()].copy_from_slice(bytes);
    HeaderValue::from_maybe_shared(Bytes::from_owner(inline))
}

/// Character classes of the grammar, one table lookup per byte.
const KEY_CHAR: u8 = 1;
const VALUE_CHAR: u8 = 2;
/// What a key may start with: `lcalpha / DIGIT`.
const KEY_FIRST: u8 = 4;
static CLASSES: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        if is_key_char(byte) {
            table[b] |= KEY_CHAR;
        }
        if byte.is_ascii_lowercase() || byte.is_ascii_digit() {
            table[b] |= KEY_FIRST;
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

/// The class bits of `byte`.
fn class(byte: u8) -> u8 {
    CLASSES[usize::from(byte)]
}

/// Splits one header line into members, validating each, and hands each
/// (without surrounding whitespace) and its key length to `found`.
///
/// Plain members (`key=value` with no space in the value, then `,` or the
/// end: what senders write) are read by a fast path; from the first member
/// that is not plain on, [`scan_exact`] reads the rest of the line, as it
/// would have from there.
fn scan_line<'a>(
    line: &'a [u8],
    found: &mut impl FnMut(&'a [u8], usize) -> Result<(), TraceStateError>,
) -> Result<(), TraceStateError> {
    let mut rest = line;
    while let Some((member_len, key_len)) = plain_member(rest) {
        found(&rest[..member_len], key_len)?;
        match rest.get(member_len + 1..) {
            Some(next) => rest = next,
            None => return Ok(()),
        }
    }
    scan_exact(rest, found)
}

/// The lengths of the plain member at the start of `rest` and of its key,
/// when it is one: a valid key, `=`, a valid value with no space, then `,`
/// or the end of the line. `None` for anything else.
fn plain_member(rest: &[u8]) -> Option<(usize, usize)> {
    let mut key_len = 0;
    while key_len < rest.len() && class(rest[key_len]) & KEY_CHAR != 0 {
        key_len += 1;
    }
    if key_len == 0 || key_len > 256 || class(rest[0]) & KEY_FIRST == 0 {
        return None;
    }
    let value = rest.get(key_len + 1..).filter(|_| rest[key_len] == b'=')?;
    let value_len = plain_value_len(value);
    let ends = matches!(value.get(value_len), None | Some(b','));
    (ends && (1..=256).contains(&value_len)).then_some((key_len + 1 + value_len, key_len))
}

/// How many bytes at the start of `value` are value characters other than
/// space (`%x21-2B / %x2D-3C / %x3E-7E`), eight at a time.
fn plain_value_len(value: &[u8]) -> usize {
    let mut chunks = value.chunks_exact(8);
    let mut len = 0;
    for chunk in &mut chunks {
        let stops = not_plain(u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
        if stops != 0 {
            return len + (stops.trailing_zeros() / 8) as usize;
        }
        len += 8;
    }
    let tail = chunks.remainder();
    if tail.is_empty() {
        return len;
    }
    // The last eight bytes, overlapping bytes already found plain (which
    // the test leaves unmarked).
    if let Some(last) = value.last_chunk::<8>() {
        let stops = not_plain(u64::from_le_bytes(*last));
        return match stops {
            0 => value.len(),
            _ => value.len() - 8 + (stops.trailing_zeros() / 8) as usize,
        };
    }
    tail.iter()
        .position(|&b| class(b) & VALUE_CHAR == 0 || b == b' ')
        .unwrap_or(tail.len())
}

/// The high bit of each byte of `x` (in memory order from the lowest) that
/// is not a plain value character: below `!`, above `~`, `,` or `=`. A
/// test can also mark bytes after the first it marks (a borrow), never
/// before it, so the lowest mark is exact.
const fn not_plain(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    const fn zero_bytes(v: u64) -> u64 {
        v.wrapping_sub(ONES) & !v & HIGH
    }
    let below = x.wrapping_sub(ONES * 0x21) & !x & HIGH;
    let above = x & HIGH | zero_bytes(x ^ (ONES * 0x7f));
    let separators = zero_bytes(x ^ (ONES * b',' as u64)) | zero_bytes(x ^ (ONES * b'=' as u64));
    below | above | separators
}

/// Splits a header line, from the start of a member (or of the line), into
/// members exactly as the grammar says, validating each in a single pass,
/// and hands each (without surrounding whitespace) and its key length to
/// `found`.
fn scan_exact<'a>(
    line: &'a [u8],
    found: &mut impl FnMut(&'a [u8], usize) -> Result<(), TraceStateError>,
) -> Result<(), TraceStateError> {
    let mut rest = line;
    loop {
        // Whitespace and empty members.
        let Some(start) = rest.iter().position(|&b| !is_ows(b) && b != b',') else {
            return Ok(());
        };
        rest = &rest[start..];
        let key_len = rest
            .iter()
            .position(|&b| class(b) & KEY_CHAR == 0)
            .unwrap_or(rest.len());
        let Some((&b'=', after)) = rest[key_len..].split_first() else {
            let next = rest[key_len..].iter().find(|&&b| !is_ows(b));
            let ends_member = matches!(next, None | Some(b','));
            return Err(if ends_member && key_len > 0 {
                TraceStateError::MissingEquals
            } else {
                TraceStateError::InvalidKey
            });
        };
        // Every byte is a keychar: check the first and the length.
        if key_len == 0 || key_len > 256 || class(rest[0]) & KEY_FIRST == 0 {
            return Err(TraceStateError::InvalidKey);
        }
        let value_run = after
            .iter()
            .position(|&b| class(b) & VALUE_CHAR == 0)
            .unwrap_or(after.len());
        // Trailing spaces are whitespace around the member, not value.
        let value_len = after[..value_run]
            .iter()
            .rposition(|&b| b != b' ')
            .map_or(0, |last| last + 1);
        let next = after[value_run..].iter().position(|&b| !is_ows(b));
        if next.is_some_and(|next| after[value_run + next] != b',')
            || value_len == 0
            || value_len > 256
        {
            return Err(TraceStateError::InvalidValue);
        }
        found(&rest[..key_len + 1 + value_len], key_len)?;
        rest = match next {
            Some(next) => &after[value_run + next..],
            None => return Ok(()),
        };
    }
}

/// `keychar` of the specification.
const fn is_key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
}

/// `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`.
fn is_valid_key(key: &[u8]) -> bool {
    matches!(key.first(), Some(&b) if class(b) & KEY_FIRST != 0)
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
