//! Redaction of secrets and personal data in message text, before anything is exported.
//!
//! One pass per text: a `RegexSet` tells which kinds occur at all (most texts hold none, and are
//! returned as they are), then only those kinds' patterns are searched. Each match is checked
//! where a pattern alone can't tell (a card number must pass Luhn, an IPv4 octet must be at most
//! 255, a phone number needs 9 to 15 digits), overlapping matches keep the earliest and then the
//! longest, and each is replaced by a typed placeholder such as `[REDACTED:email]`. When in doubt
//! between two kinds, more is redacted, never less.

use std::borrow::Cow;
use std::collections::BTreeMap;

use regex::{Regex, RegexSet};

/// What a redacted span was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    AwsKey,
    GithubToken,
    SlackToken,
    StripeKey,
    OpenAiKey,
    GoogleKey,
    PrivateKey,
    Jwt,
    Secret,
    Email,
    Phone,
    Card,
    Ip,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AwsKey => "aws_key",
            Kind::GithubToken => "github_token",
            Kind::SlackToken => "slack_token",
            Kind::StripeKey => "stripe_key",
            Kind::OpenAiKey => "api_key",
            Kind::GoogleKey => "google_key",
            Kind::PrivateKey => "private_key",
            Kind::Jwt => "jwt",
            Kind::Secret => "secret",
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::Card => "card",
            Kind::Ip => "ip",
        }
    }
}

/// Each kind's pattern. A pattern with a capture group redacts only the group (the value of a
/// `password=` assignment, not its name).
const PATTERNS: &[(Kind, &str)] = &[
    (Kind::AwsKey, r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    (
        Kind::GithubToken,
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b",
    ),
    (Kind::SlackToken, r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    (
        Kind::StripeKey,
        r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}\b",
    ),
    (
        Kind::OpenAiKey,
        r"\bsk-(?:proj-|live-|ant-)?[A-Za-z0-9_-]{16,}",
    ),
    (Kind::GoogleKey, r"\bAIza[0-9A-Za-z_-]{35}"),
    (
        Kind::PrivateKey,
        r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?-----END [A-Z0-9 ]*PRIVATE KEY-----",
    ),
    (
        Kind::Jwt,
        r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    ),
    (
        Kind::Secret,
        r#"(?i)\b[A-Za-z0-9_]*(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)\s*[:=]\s*["']?([^\s"',;]{4,})"#,
    ),
    (
        Kind::Email,
        r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
    ),
    (Kind::Card, r"\b\d(?:[ -]?\d){12,18}\b"),
    (
        Kind::Phone,
        r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\b\d{2,4}[ .-]\d{3,4}[ .-]\d{3,4}\b",
    ),
    (Kind::Ip, r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),
];

/// What redaction did to one or more texts: spans replaced, by kind.
pub type Counts = BTreeMap<&'static str, usize>;

/// The compiled patterns; build once, use for every text.
#[derive(Debug)]
pub struct Redactor {
    set: RegexSet,
    patterns: Vec<(Kind, Regex)>,
}

impl Default for Redactor {
    fn default() -> Redactor {
        Redactor::new()
    }
}

fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                *d
            }
        })
        .sum();
    sum % 10 == 0
}

/// Whether the digits of a number go on right after `end` (or right before `start`), as in
/// a longer number that only partly looks like a phone number.
fn number_goes_on(text: &str, start: usize, end: usize) -> bool {
    let digit_at = |i: usize| text.as_bytes().get(i).is_some_and(u8::is_ascii_digit);
    let separator_at = |i: usize| text.as_bytes().get(i).is_some_and(|b| b" .-".contains(b));
    digit_at(end)
        || (separator_at(end) && digit_at(end + 1))
        || start.checked_sub(1).is_some_and(|before| {
            digit_at(before)
                || (separator_at(before) && before.checked_sub(1).is_some_and(digit_at))
        })
}

/// Checks what a pattern alone can't, with the whole text around the span at hand.
fn plausible(kind: Kind, text: &str, start: usize, end: usize) -> bool {
    let span = text.get(start..end).unwrap_or_default();
    let digits: Vec<u32> = span.chars().filter_map(|c| c.to_digit(10)).collect();
    match kind {
        Kind::Card => (13..=19).contains(&digits.len()) && luhn(&digits),
        Kind::Phone => (9..=15).contains(&digits.len()) && !number_goes_on(text, start, end),
        Kind::Ip => span
            .split('.')
            .all(|octet| octet.parse::<u16>().is_ok_and(|n| n <= 255)),
        _ => true,
    }
}

/// Whether `text` holds what at least one pattern of [`PATTERNS`] needs. Each pattern needs
/// one of these: a digit (cards, phone numbers, IP addresses), `@` (emails), `:` or `=` (the
/// `password=`-style assignments), `_` (GitHub and Stripe tokens), or one of [`LITERALS`] (the
/// fixed starts of the other keys, and a private key's dashes). A text with none of them can't
/// match, and is not handed to the regular expressions, which cost several times more per
/// byte. The corpus tests and a randomized one check that nothing a pattern finds is missed.
#[allow(clippy::indexing_slicing, reason = "a byte indexes a table of 256")]
pub fn might_hold_something(text: &str) -> bool {
    let bytes = text.as_bytes();
    // One pass, one table lookup per byte: most bytes are letters and spaces, which need none.
    bytes
        .iter()
        .enumerate()
        .any(|(at, &b)| match BYTE_CLASS[usize::from(b)] {
            TRIGGER => true,
            STARTS_LITERAL => {
                let rest = bytes.get(at..).unwrap_or_default();
                // The first byte is compared before the call: `e` and `s` start many words.
                LITERALS.iter().any(|literal| {
                    literal.as_bytes().first() == Some(&b) && rest.starts_with(literal.as_bytes())
                })
            }
            _ => false,
        })
}

/// The fixed parts of the patterns that need none of the trigger characters.
const LITERALS: [&str; 7] = ["AKIA", "ASIA", "AIza", "xox", "sk-", "eyJ", "-----"];

const TRIGGER: u8 = 1;
const STARTS_LITERAL: u8 = 2;

/// Per byte: a trigger (a digit, `@`, `:`, `=`, `_`), the first byte of a literal, or neither.
#[allow(
    clippy::indexing_slicing,
    reason = "built at compile time: a byte indexes a table of 256, and the literals are not empty"
)]
const BYTE_CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    let mut b = b'0';
    while b <= b'9' {
        class[b as usize] = TRIGGER;
        b += 1;
    }
    class[b'@' as usize] = TRIGGER;
    class[b':' as usize] = TRIGGER;
    class[b'=' as usize] = TRIGGER;
    class[b'_' as usize] = TRIGGER;
    let mut i = 0;
    while i < LITERALS.len() {
        class[LITERALS[i].as_bytes()[0] as usize] = STARTS_LITERAL;
        i += 1;
    }
    class
};

impl Redactor {
    pub fn new() -> Redactor {
        // Word boundaries are ASCII ones: every token here is ASCII, and a Unicode `\b` makes
        // the lazy DFA give up on non-ASCII text and fall back to the (several times slower)
        // PikeVM, which dominated an export's profile.
        let sources: Vec<String> = PATTERNS
            .iter()
            .map(|(_, p)| p.replace(r"\b", r"(?-u:\b)"))
            .collect();
        // The patterns are constants: a failure here is a bug caught by every test.
        #[allow(
            clippy::expect_used,
            reason = "constant patterns, compiled in every test"
        )]
        let set = RegexSet::new(&sources).expect("redaction patterns compile");
        #[allow(
            clippy::expect_used,
            reason = "constant patterns, compiled in every test"
        )]
        let patterns = PATTERNS
            .iter()
            .zip(&sources)
            .map(|((kind, _), source)| {
                (
                    *kind,
                    Regex::new(source).expect("redaction pattern compiles"),
                )
            })
            .collect();
        Redactor { set, patterns }
    }

    /// Whether any pattern matches `text`, asked of the patterns alone (no prefilter).
    pub fn matches_any(&self, text: &str) -> bool {
        self.set.is_match(text)
    }

    /// The text with every secret and personal datum replaced, and how many of each kind.
    pub fn redact<'t>(&self, text: &'t str, counts: &mut Counts) -> Cow<'t, str> {
        // Most texts hold nothing. A scan for what every pattern needs rules most of them out;
        // `is_match` stops at the first hit and needs no overlapping search, which is much
        // cheaper than `matches`; only texts with a hit learn which kinds.
        if !might_hold_something(text) || !self.set.is_match(text) {
            return Cow::Borrowed(text);
        }
        let found = self.set.matches(text);
        let mut spans: Vec<(usize, usize, Kind)> = Vec::new();
        for index in found.iter() {
            let Some((kind, regex)) = self.patterns.get(index) else {
                continue;
            };
            for captures in regex.captures_iter(text) {
                let Some(span) = captures.get(1).or_else(|| captures.get(0)) else {
                    continue;
                };
                if plausible(*kind, text, span.start(), span.end()) {
                    spans.push((span.start(), span.end(), *kind));
                }
            }
        }
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        // Earliest first; at the same start, the longest; then drop spans inside a kept one.
        spans.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end, kind) in spans {
            if start < at {
                continue;
            }
            out.push_str(text.get(at..start).unwrap_or_default());
            out.push_str("[REDACTED:");
            out.push_str(kind.as_str());
            out.push(']');
            *counts.entry(kind.as_str()).or_default() += 1;
            at = end;
        }
        out.push_str(text.get(at..).unwrap_or_default());
        Cow::Owned(out)
    }
}
