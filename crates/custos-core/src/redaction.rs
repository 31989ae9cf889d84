//! Redaction of secrets and personal data in message text, before anything is exported.
//!
//! One pass per text: a byte scan rules out most texts (see [`might_hold_something`]), a
//! `RegexSet` tells which kinds occur at all, then only those kinds' patterns are searched.
//! A pattern only proposes a candidate; evidence decides (see [`plausible`]): a card number
//! must pass Luhn and start as a card issuer's numbers do, an IBAN must pass its check digits,
//! a phone number must be valid in libphonenumber's numbering plans (through the `phonenumber`
//! crate), an SSN must follow the SSA's rules, an IP address must parse, and a value assigned
//! to a secret-sounding name must not be a placeholder, a reference or code. Overlapping
//! matches keep the earliest and then the longest, and each is replaced by a typed placeholder
//! such as `[REDACTED:email]`: the whole value and nothing around it (an assignment keeps its
//! name and quotes), and, but for a private key block, never across a line. When in doubt
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
    /// A token of another provider, known by its prefix.
    Token,
    PrivateKey,
    Jwt,
    Secret,
    Email,
    Phone,
    Card,
    Iban,
    Ssn,
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
            Kind::Token => "token",
            Kind::PrivateKey => "private_key",
            Kind::Jwt => "jwt",
            Kind::Secret => "secret",
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::Card => "card",
            Kind::Iban => "iban",
            Kind::Ssn => "ssn",
            Kind::Ip => "ip",
        }
    }
}

/// The keywords of the names under which people store secrets, for the assignment patterns.
/// The name may carry more around the keyword (`DB_PASSWORD`, `mySecretString`);
/// [`secret_name_is_not`] turns away the names that only contain one (`author`, `token_type`).
const SECRET_KEYWORD: &str = r"(?i:pass(?:word|wd|phrase)?|pwd|pw|secret|token|api[_.\-]?key|apikey|access[_.\-]?key|private[_.\-]?key|client[_.\-]?secret|credentials?|creds|auth)";

/// The characters a name is made of, around its keyword.
const NAME_CHARS: &str = r"[A-Za-z0-9_.\-]*";

/// An assigned value: quoted (spaces allowed, not past the line) or bare, up to a space (a bare
/// value's closing punctuation is trimmed after, see [`bare_value_end`]).
const VALUE: &str = r#"(?:@?"([^"\r\n]+)"|'([^'\r\n]+)'|`([^`\r\n]+)`|([^\s"'`<>]+))"#;

/// What, beyond its pattern, a candidate needs before it is redacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evidence {
    /// The kind's own checks (see [`plausible`]).
    Shape,
    /// A value assigned to a secret's name: not a placeholder, and the name not one of those
    /// that only contain a keyword ([`secret_name_is_not`]).
    Named,
    /// As `Named`, and the value looks random: at least this long, with letters and digits.
    NamedRandom(usize),
}

/// Each kind's patterns. The value is the first capture group that took part in the match, or
/// the whole match if there is none.
fn patterns() -> Vec<(Kind, Evidence, String)> {
    use Evidence::{Named, NamedRandom, Shape};
    // A secret's keyword and the rest of its name after it. The patterns start at the keyword,
    // so that the regular expressions can look for it before anything else (a pattern that
    // starts with any number of name characters is tried at every position of a text); the part
    // of the name before the keyword is read back from the text ([`name_start`]).
    let secret_name = format!("{SECRET_KEYWORD}{NAME_CHARS}");
    // The operators longest first: `==` is not `=` and a value starting with `=`.
    let assignment = format!(
        r"{secret_name}(?:\[[0-9]*\])?[ \t]*(?:===|!==|==|!=|:::=|::=|:=|=>|\.=|\?\?=|\+=|=|:)[ \t]*{VALUE}"
    );
    // A quoted value after the name and a space, or as a call's first argument:
    // `password "…";`, `std::string secret("…")`, `secret.assign("…", 17)`.
    let beside = format!(r#"{secret_name}(?:[ \t]+|(?:\.assign)?\([ \t]*)@?"([^"\r\n]+)""#);
    // Any name ending in `key`, when its value looks random (`some_key = "real_secret"` is
    // left alone).
    let any_key = format!(r#"(?i:key)["']?[ \t]*(?:=|:=|=>|:)[ \t]*{VALUE}"#);
    let quoted_name = format!(r#"{secret_name}["'][ \t]*(?:=>|:|,|=)[ \t]*{VALUE}"#);
    let reversed = format!(
        r#"["'`]([^"'`\r\n]+)["'`][ \t]*(?:===|!==|==|!=)[ \t]*{NAME_CHARS}{SECRET_KEYWORD}"#
    );
    // A keyword, then a value after a space: "my password is X", "token X" (the value needs a
    // digit and a letter, see `plausible`).
    let spoken = r"(?i:password|passwd|passphrase|token|secret|api[ _-]?key|access key)(?:[ \t]+(?:is|was|=|:))?[ \t]+([A-Za-z0-9_\-./+=!@#$%^&*]{8,})";
    vec![
        (Kind::AwsKey, Shape, r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b".into()),
        (Kind::GithubToken, Shape,
            r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b".into(),
        ),
        (Kind::SlackToken, Shape,
            r"\bxox[abposre]-[A-Za-z0-9-]{10,}|\bxapp-[0-9]-[A-Z0-9]+-[0-9]+-[a-z0-9]+|https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,}".into(),
        ),
        (Kind::StripeKey, Shape,
            r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,99}\b".into(),
        ),
        (Kind::OpenAiKey, Shape,
            r"\bsk-(?:proj-|live-|ant-(?:api|admin)[0-9]{2}-|ant-|svcacct-|admin-)?[A-Za-z0-9_-]{16,}".into(),
        ),
        (Kind::GoogleKey, Shape, r"\bAIza[0-9A-Za-z_-]{35}".into()),
        (Kind::Token, Shape, [
            r"\bgl(?:pat|dt|rt|ptt|soat|ft|imt|agent|oas|cbt|ffct)-[A-Za-z0-9_-]{20,64}",
            r"\bnpm_[A-Za-z0-9]{36}\b",
            r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}",
            r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}\b",
            r"\b(?:SK|AC)[0-9a-fA-F]{32}\b",
            r"\b[MNO][A-Za-z0-9_-]{23,25}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,38}\b",
            r"\b[0-9]{8,10}:AA[A-Za-z0-9_-]{33}\b",
            r"\bHRKU-[A-Za-z0-9_-]{20,}",
            r"\bshp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}\b",
            r"\bhf_[A-Za-z]{34}\b",
            r"\bdapi[a-f0-9]{32}(?:-[0-9])?\b",
            r"\bdo[opr]_v1_[a-f0-9]{64}\b",
            r"\b[0-9a-f]{32}-us[0-9]{1,2}\b",
            r"\b(?:sq0atp|sq0csp|EAAA)[0-9A-Za-z_-]{22,60}",
            r"\bATATT3[A-Za-z0-9_=-]{150,}",
            r"\bAGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}\b",
            r"\bglc_[A-Za-z0-9+/]{32,400}={0,2}|\bglsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}\b",
            r"\bNRAK-[A-Z0-9]{27}\b|\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b|\bpul-[a-f0-9]{40}\b",
            r"\blin_api_[A-Za-z0-9]{40}\b|\bhv[sb]\.[A-Za-z0-9_-]{24,}|\bdp\.pt\.[A-Za-z0-9]{43}\b",
            r"\bdt0c01\.[A-Z0-9]{24}\.[A-Z0-9]{64}\b|\bsntry[su]_[A-Za-z0-9+/=_]{20,}",
            r"\b[ps]k\.eyJ[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}",
            r"\bA3-[A-Z0-9]{6}-(?:[A-Z0-9]{11}|[A-Z0-9]{6}-[A-Z0-9]{5})-[A-Z0-9]{5}-[A-Z0-9]{5}-[A-Z0-9]{5}\b",
            r"AccountKey=([A-Za-z0-9+/=]{86,88})",
            r"\bAKC[a-zA-Z0-9]{10,}\b",
        ]
        .join("|")),
        (Kind::PrivateKey, Shape,
            r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----(?:(?:\r?\n|\\n)+(?:[A-Za-z0-9+/=]+|[A-Za-z-]+: [^\r\n]*))*(?:(?:\r?\n|\\n)+-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----)?".into(),
        ),
        (Kind::Jwt, Shape,
            r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{2,}(?:\.[A-Za-z0-9_-]*)?|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}".into(),
        ),
        // Credentials in a URL, a curl command or an HTTP header: the secret part.
        (Kind::Secret, Shape, [
            r"[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\x22`]*:([^\s@/'\x22`]+)@",
            r"(?i:authorization)[ \t]*:[ \t]*(?i:bearer|basic|token|digest|apikey|api-key)[ \t]+([A-Za-z0-9._~+/=-]{6,})",
            r"(?i:x-api-key|x-auth-token|api-key|private-token)[ \t]*:[ \t]*([^\s'\x22]{6,})",
            r"(?:^|[ \t])(?:-u|--user)[ \t]+['\x22]?[^\s:'\x22]+:([^\s'\x22]+)",
        ]
        .join("|")),
        (Kind::Secret, Named, assignment),
        (Kind::Secret, Named, beside),
        (Kind::Secret, NamedRandom(16), any_key),
        (Kind::Secret, Named, quoted_name),
        (Kind::Secret, Named, reversed),
        (Kind::Secret, NamedRandom(8), spoken.into()),
        (Kind::Email, Shape,
            r#"(?:"(?:[^"\\\r\n]|\\.)+"|[\p{L}\p{M}\p{N}!#$%&'*+/=?^_`{|}~-]+(?:\.[\p{L}\p{M}\p{N}!#$%&'*+/=?^_`{|}~-]+)*)@(?:[\p{L}\p{N}](?:[\p{L}\p{M}\p{N}-]*[\p{L}\p{M}\p{N}])?\.)+(?:[\p{L}\p{M}]{2,}|xn--[a-z0-9-]+)"#.into(),
        ),
        (Kind::Card, Shape, r"\b[0-9](?:[ -]?[0-9]){11,18}\b".into()),
        (Kind::Iban, Shape,
            r"\b[A-Z]{2}[0-9]{2}(?:[ -]?[A-Z0-9]){11,30}\b".into(),
        ),
        (Kind::Ssn, Shape,
            r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b|(?i:ssn|social security(?: number)?|ss#)[^0-9\r\n]{0,12}\b([0-9]{3}[ ]?[0-9]{2}[ ]?[0-9]{4})\b".into(),
        ),
        (Kind::Phone, Shape,
            r"(?:\+|\b00|\()?[0-9][0-9 \-.()/]{5,22}[0-9]".into(),
        ),
        (Kind::Ip, Shape, r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b".into()),
        (Kind::Ip, Shape,
            // The longest reading first: `2001:db8::1` is not `2001:db8::` and a stray `1`.
            r"(?:[0-9A-Fa-f]{1,4}:){1,7}(?:(?::[0-9A-Fa-f]{1,4}){1,7}|[0-9A-Fa-f]{1,4}|:)(?:\.[0-9]{1,3}){0,3}|::(?:[0-9A-Fa-f]{1,4}:){0,6}[0-9A-Fa-f]{1,4}".into(),
        ),
    ]
}

/// What redaction did to one or more texts: spans replaced, by kind.
pub type Counts = BTreeMap<&'static str, usize>;

/// The compiled patterns; build once, use for every text.
#[derive(Debug)]
pub struct Redactor {
    set: RegexSet,
    patterns: Vec<(Kind, Evidence, Regex)>,
}

impl Default for Redactor {
    fn default() -> Redactor {
        Redactor::new()
    }
}

/// The number that decimal digits write.
fn number(digits: &[u32]) -> u32 {
    digits.iter().fold(0u32, |acc, d| acc * 10 + d)
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

/// Whether a card number of this length starts as a card issuer's numbers do (Visa,
/// Mastercard, American Express, Discover, JCB, Diners Club, UnionPay, Maestro, Dankort, UATP):
/// an ISBN, an EAN or a long id that happens to pass Luhn does not.
fn issued_as_card(digits: &[u32]) -> bool {
    let prefix = |n: usize| number(digits.get(..n).unwrap_or(digits));
    let length = digits.len();
    let (p1, p2, p3, p4) = (prefix(1), prefix(2), prefix(3), prefix(4));
    (p1 == 4 && [13, 16, 19].contains(&length))
        || ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && length == 16
        || (p2 == 34 || p2 == 37) && length == 15
        || (p4 == 6011 || (644..=649).contains(&p3) || p2 == 65) && (16..=19).contains(&length)
        || (3528..=3589).contains(&p4) && (16..=19).contains(&length)
        || ((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39)
            && (14..=19).contains(&length)
        || p2 == 62 && (16..=19).contains(&length)
        || [5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763].contains(&p4)
            && (12..=19).contains(&length)
        || p4 == 5019 && length == 16
        || p1 == 1 && length == 15
}

/// The length of each country's IBAN, from the ISO 13616 registry.
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BI", 27),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DJ", 27),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FK", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HN", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MN", 20),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NI", 28),
    (b"NL", 18),
    (b"NO", 15),
    (b"OM", 23),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"RU", 33),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"SO", 23),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
    (b"YE", 30),
];

/// ISO 13616: as long as its country's IBANs are, and with the country letters and check
/// digits moved to the end, letters as numbers, the whole modulo 97 is 1.
fn iban_checks(span: &str) -> bool {
    let compact: Vec<u8> = span.bytes().filter(|b| *b != b' ' && *b != b'-').collect();
    let country = compact.get(..2);
    let length = IBAN_LENGTHS
        .iter()
        .find(|(code, _)| country == Some(code.as_slice()))
        .map(|(_, length)| *length);
    if length != Some(compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder = 0u32;
    for &b in tail.iter().chain(head) {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// The SSA's rules: no area 000, 666 or 900–999, no group 00, no serial 0000.
fn ssn_valid(digits: &[u32]) -> bool {
    let number = |range: std::ops::Range<usize>| digits.get(range).map(number);
    digits.len() == 9
        && number(0..3).is_some_and(|area| area != 0 && area != 666 && area < 900)
        && number(3..5).is_some_and(|group| group != 0)
        && number(5..9).is_some_and(|serial| serial != 0)
}

/// The regions whose numbers are taken without a country code: most users write their own
/// country's numbers in its national format. Elsewhere a number needs its `+` (or `00`).
const NATIONAL_REGIONS: [&str; 20] = [
    "US", "CA", "GB", "DE", "FR", "IT", "ES", "NL", "IN", "BR", "MX", "JP", "AU", "KR", "TR", "PL",
    "SE", "CH", "AR", "ZA",
];

/// One region's numbering plan, from libphonenumber's metadata (the `phonenumber` crate): its
/// national prefix, and for each type of number (fixed line, mobile, toll free …) the pattern
/// of its national numbers and their possible lengths.
struct Plan {
    national_prefix: Option<String>,
    /// The pattern every national number of the region matches, whatever its type.
    general: String,
    /// Each type's pattern (as the metadata writes it) and possible lengths.
    sources: Vec<(String, Vec<usize>)>,
    /// The patterns, compiled the first time a number is checked against this region.
    compiled: std::sync::OnceLock<Compiled>,
}

/// A region's patterns, compiled: the general one, and each type's with its lengths.
type Compiled = (Option<Regex>, Vec<(Regex, Vec<usize>)>);

/// A pattern of the metadata as a regular expression over a whole national number.
fn whole_number(pattern: &str) -> Option<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).ok()
}

impl Plan {
    fn holds(&self, national: &str) -> bool {
        // Lengths first: they rule out most candidates without a regular expression.
        if !self
            .sources
            .iter()
            .any(|(_, lengths)| lengths.contains(&national.len()))
        {
            return false;
        }
        let (general, types) = self.compiled.get_or_init(|| {
            let types = self
                .sources
                .iter()
                .filter_map(|(pattern, lengths)| {
                    whole_number(pattern).map(|regex| (regex, lengths.clone()))
                })
                .collect();
            (whole_number(&self.general), types)
        });
        general
            .as_ref()
            .is_none_or(|general| general.is_match(national))
            && types.iter().any(|(pattern, lengths)| {
                lengths.contains(&national.len()) && pattern.is_match(national)
            })
    }
}

/// Every region's plan, by country calling code and by region, read once per process and each
/// compiled at its first use: the crate's own `parse` and `is_valid` normalize and look up
/// cached patterns by their text on every call, and took 16 µs a number.
struct Plans {
    plans: Vec<Plan>,
    by_code: std::collections::HashMap<u16, Vec<usize>>,
    by_region: std::collections::HashMap<String, usize>,
}

/// A descriptor's pattern of national numbers, as one line: the metadata writes its patterns
/// across lines, for reading.
fn national_pattern(descriptor: &phonenumber::metadata::Descriptor) -> String {
    descriptor
        .national_number()
        .as_str()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

fn plans() -> &'static Plans {
    static PLANS: std::sync::OnceLock<Plans> = std::sync::OnceLock::new();
    PLANS.get_or_init(|| {
        let mut plans = Plans {
            plans: Vec::new(),
            by_code: std::collections::HashMap::new(),
            by_region: std::collections::HashMap::new(),
        };
        for metadata in phonenumber::metadata::DATABASE.iter() {
            let descriptors = metadata.descriptors();
            let sources: Vec<(String, Vec<usize>)> = [
                descriptors.fixed_line(),
                descriptors.mobile(),
                descriptors.toll_free(),
                descriptors.premium_rate(),
                descriptors.shared_cost(),
                descriptors.personal_number(),
                descriptors.voip(),
                descriptors.pager(),
                descriptors.uan(),
                descriptors.voicemail(),
            ]
            .into_iter()
            .flatten()
            .filter_map(|descriptor| {
                let pattern = national_pattern(descriptor);
                let lengths: Vec<usize> = descriptor
                    .possible_length()
                    .iter()
                    .map(|l| usize::from(*l))
                    .collect();
                (!pattern.is_empty() && !lengths.is_empty()).then_some((pattern, lengths))
            })
            .collect();
            let index = plans.plans.len();
            let general = national_pattern(descriptors.general());
            plans.plans.push(Plan {
                national_prefix: metadata.national_prefix().map(str::to_owned),
                general,
                sources,
                compiled: std::sync::OnceLock::new(),
            });
            // The main region of a shared code first (the United States for +1): most numbers
            // are its own, and a valid one needs no other region's patterns.
            let regions = plans.by_code.entry(metadata.country_code()).or_default();
            if metadata.is_main_country_for_code() {
                regions.insert(0, index);
            } else {
                regions.push(index);
            }
            plans.by_region.insert(metadata.id().to_owned(), index);
        }
        plans
    })
}

/// Whether `span` is a phone number in libphonenumber's numbering plans: international (with
/// `+` or `00`) in any region, national in one of [`NATIONAL_REGIONS`]. A national number must
/// be written as one: ten digits or more, or with its trunk prefix `0` or its area code in
/// parentheses, so that shorter runs of digits (amounts, counts, ids) are not taken for one;
/// and written without separators, ten or eleven digits (longer runs are ids).
fn valid_phone(span: &str) -> bool {
    let digits: String = span.chars().filter(char::is_ascii_digit).collect();
    let digit_count = digits.len();
    let plans = plans();
    if span.starts_with('+') || span.starts_with("00") {
        let international = if span.starts_with('+') {
            digits.as_str()
        } else {
            digits.get(2..).unwrap_or_default()
        };
        return (1..=3).any(|code_length| {
            let code = international
                .get(..code_length)
                .and_then(|c| c.parse::<u16>().ok());
            let national = international.get(code_length..).unwrap_or_default();
            code.and_then(|code| plans.by_code.get(&code))
                .is_some_and(|regions| {
                    regions
                        .iter()
                        .filter_map(|index| plans.plans.get(*index))
                        .any(|plan| plan.holds(national))
                })
        });
    }
    let trimmed = span.trim_start_matches('(');
    let bare = span.bytes().all(|b| b.is_ascii_digit());
    let written_as_national = if bare {
        (10..=11).contains(&digit_count)
    } else {
        digit_count >= 10 || trimmed.starts_with('0') || span.starts_with('(')
    };
    written_as_national
        && NATIONAL_REGIONS.iter().any(|region| {
            let Some(plan) = plans
                .by_region
                .get(*region)
                .and_then(|i| plans.plans.get(*i))
            else {
                return false;
            };
            let without_prefix = plan
                .national_prefix
                .as_deref()
                .and_then(|prefix| digits.strip_prefix(prefix));
            without_prefix.is_some_and(|national| plan.holds(national)) || plan.holds(&digits)
        })
}

/// Names that contain a secret's keyword but name something else (after gitleaks' allowlist of
/// its generic rule): an author, a token's type, a key's length.
fn secret_name_is_not(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    const NOT: &[&str] = &[
        "author",
        "passport",
        "bypass",
        "compass",
        "passenger",
        "passive",
        "tokeniz",
        "pwdlen",
        "_type",
        "type_",
        "length",
        "_len",
        "_size",
        "size_",
        "_name",
        "name_",
        "_id",
        "id_",
        "_url",
        "url_",
        "_uri",
        "endpoint",
        "_file",
        "file_",
        "_path",
        "path_",
        "public",
        "csrf",
        "_field",
        "field_",
        "_label",
        "_count",
        "count_",
        "_policy",
        "_hint",
        "_header",
        "_format",
        "_prefix",
        "_suffix",
        "_regex",
        "_pattern",
        "_enabled",
        "_required",
        "_expires",
        "expiry",
        "_ttl",
        "_timeout",
        "_version",
        "_algorithm",
        "_limit",
        "_min",
        "_max",
        "keyboard",
        "keyword",
        "monkey",
        "turkey",
        "donkey",
        "hotkey",
        "keypress",
    ];
    NOT.iter().any(|not| name.contains(not))
}

/// Whether a value is a call, `name(…)`: code that reads a secret, not the secret.
fn called(value: &str) -> bool {
    let Some(open) = value.find('(') else {
        return false;
    };
    let name = value.get(..open).unwrap_or_default();
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:$".contains(c))
        && value.ends_with(')')
}

/// A value that stands for a secret rather than being one: a placeholder, a reference to a
/// variable or a setting, code that reads one, or a word like `true`.
fn placeholder(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    let all_same =
        value.chars().all(|c| c == 'x' || c == 'X') || value.chars().all(|c| "*.-_#".contains(c));
    all_same
        || value.starts_with("${")
        || value.starts_with("{{")
        || value.starts_with('<')
        || value.starts_with('%') && value.ends_with('%')
        || value.starts_with('$')
            && value
                .get(1..)
                .unwrap_or_default()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        || lower.contains("xxxx")
        || lower.starts_with("your")
        || lower.contains("example")
        || lower.contains("placeholder")
        || lower.contains("changeme")
        || lower.contains("fake")
        || lower.contains("dummy")
        || lower.contains("redacted")
        || lower.contains("process.env")
        || lower.contains("os.environ")
        || lower.contains("getenv")
        || lower.contains("env(")
        || lower.contains("environ[")
        || called(value)
        || [
            "true",
            "false",
            "null",
            "none",
            "nil",
            "undefined",
            "required",
            "optional",
            "string",
            "str",
            "bool",
            "int",
        ]
        .contains(&lower.as_str())
}

/// Checks what a pattern alone can't, with the whole text around the span at hand: `whole`
/// is the pattern's match, `start..end` the value in it.
fn plausible(
    kind: Kind,
    evidence: Evidence,
    text: &str,
    whole: (usize, usize),
    start: usize,
    end: usize,
) -> bool {
    let span = text.get(start..end).unwrap_or_default();
    if let Evidence::Named | Evidence::NamedRandom(_) = evidence {
        let name = text
            .get(name_start(text, whole.0)..start)
            .unwrap_or_default();
        let long_enough = match evidence {
            Evidence::NamedRandom(least) => {
                span.len() >= least
                    && span.chars().any(|c| c.is_ascii_digit())
                    && span.chars().any(|c| c.is_ascii_alphabetic())
            }
            _ => span.chars().count() >= 4,
        };
        return long_enough
            && span.chars().any(char::is_alphanumeric)
            && !placeholder(span)
            && !secret_name_is_not(name);
    }
    let digits: Vec<u32> = span.chars().filter_map(|c| c.to_digit(10)).collect();
    match kind {
        Kind::Card => (12..=19).contains(&digits.len()) && luhn(&digits) && issued_as_card(&digits),
        Kind::Iban => iban_checks(span),
        Kind::Ssn => ssn_valid(&digits),
        Kind::Phone => {
            (7..=15).contains(&digits.len())
                && stands_apart(text, start, end, "")
                && !number_goes_on(text, start, end)
                && !looks_like_a_date(span)
                && !dotted_quad(span)
                && valid_phone(span)
        }
        Kind::Ip if span.contains(':') => {
            stands_apart(text, start, end, "_:.")
                && span.chars().any(|c| c.is_ascii_digit())
                && span.parse::<std::net::Ipv6Addr>().is_ok()
        }
        Kind::Ip => span
            .split('.')
            .all(|octet| octet.parse::<u16>().is_ok_and(|n| n <= 255)),
        Kind::Jwt => jwt_header(span),
        // Credentials in URLs, commands and headers.
        Kind::Secret => !placeholder(span),
        _ => true,
    }
}

/// Where the name that a match starts inside begins: back over the characters a name is made
/// of (`DB_PASSWORD` for a match at `PASSWORD`).
fn name_start(text: &str, at: usize) -> usize {
    let before = text.get(..at).unwrap_or_default();
    before
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphanumeric() || "_.-$@".contains(*c))
        .last()
        .map_or(at, |(index, _)| index)
}

/// Whether the span is a token of its own: no letter or digit, nor any of `joining`, right
/// before or after it (a run of digits inside an IBAN or an id is not a phone number, nor
/// `d::a` in `std::array` an IPv6 address).
fn stands_apart(text: &str, start: usize, end: usize, joining: &str) -> bool {
    let before = text.get(..start).and_then(|t| t.chars().next_back());
    let after = text.get(end..).and_then(|t| t.chars().next());
    let apart = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || joining.contains(c)));
    apart(before) && apart(after)
}

/// Four numbers joined by dots, as an IPv4 address (valid or not) is written.
fn dotted_quad(span: &str) -> bool {
    let parts: Vec<&str> = span.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a JWT's first part decodes (base64url) to a JSON object, as a JWT's header does.
fn jwt_header(span: &str) -> bool {
    let Some(header) = span.split('.').next() else {
        return false;
    };
    let mut bits = 0u32;
    let mut held = 0u32;
    let mut decoded = Vec::with_capacity(header.len() * 3 / 4);
    for b in header.bytes() {
        let value = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return false,
        };
        held = ((held << 6) | u32::from(value)) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            decoded.extend(u8::try_from((held >> bits) & 0xff));
        }
    }
    let text = String::from_utf8_lossy(&decoded);
    let text = text.trim();
    text.starts_with("{\"") && text.ends_with('}')
}

/// Where a bare assigned value ends: before the punctuation that closes the statement or the
/// bracket around it (`password = x;`, `(token: x)`), kept only if the value opened it.
fn bare_value_end(text: &str, start: usize, end: usize) -> usize {
    let value = text.get(start..end).unwrap_or_default();
    let mut kept = value.len();
    while let Some(last) = value.get(..kept).and_then(|v| v.chars().next_back()) {
        let opened = |open: char| value.get(..kept).is_some_and(|v| v.contains(open));
        let closing = match last {
            ',' | ';' | '.' => true,
            ')' => !opened('('),
            ']' => !opened('['),
            '}' => !opened('{'),
            _ => false,
        };
        if !closing {
            break;
        }
        kept -= last.len_utf8();
    }
    start + kept
}

/// A run of digits that holds a date (2025-10-01, 01/10/2025, 01.10.2025): a date and a time
/// together have as many digits as a phone number.
fn looks_like_a_date(span: &str) -> bool {
    let bytes = span.as_bytes();
    let shape = |at: usize, pattern: &[u8]| {
        pattern.iter().enumerate().all(|(i, p)| {
            bytes.get(at + i).is_some_and(|b| match p {
                b'9' => b.is_ascii_digit(),
                sep => b == sep || (*sep == b'-' && b"/.".contains(b)),
            })
        })
    };
    (0..bytes.len()).any(|at| shape(at, b"9999-99-99") || shape(at, b"99-99-9999"))
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

/// Whether `text` holds what at least one pattern needs. Each pattern needs one of these: a
/// digit (cards, phone numbers, IBANs, SSNs, IP addresses, most tokens), `@` (emails), `:`
/// or `=` (assignments, headers, URLs with credentials, IPv6), `_` (tokens), or one of
/// [`LITERALS`] (the fixed starts of the other keys, a private key's dashes, and the keywords
/// before a quoted or spoken secret). A text with none of them can't match, and is not handed
/// to the regular expressions, which cost several times more per byte. The corpus tests and a
/// randomized one check that nothing a pattern finds is missed.
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
                LITERALS.iter().any(|literal| {
                    literal
                        .as_bytes()
                        .first()
                        .is_some_and(|first| first.eq_ignore_ascii_case(&b))
                        && rest.len() >= literal.len()
                        && rest
                            .iter()
                            .zip(literal.as_bytes())
                            .all(|(r, l)| r.eq_ignore_ascii_case(l))
                })
            }
            _ => false,
        })
}

/// The fixed parts of the patterns that need none of the trigger characters, compared without
/// regard to ASCII case (the keywords are matched so).
const LITERALS: [&str; 16] = [
    "akia", "asia", "abia", "acca", "a3t", "aiza", "xox", "sk-", "eyj", "-----", "pass", "pwd",
    "secret", "token", "cred", "auth",
];

const TRIGGER: u8 = 1;
const STARTS_LITERAL: u8 = 2;

/// Per byte: a trigger (a digit, `@`, `:`, `=`, `_`), the first byte of a literal in either
/// case, or neither.
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
        let first = LITERALS[i].as_bytes()[0];
        class[first.to_ascii_lowercase() as usize] = STARTS_LITERAL;
        class[first.to_ascii_uppercase() as usize] = STARTS_LITERAL;
        i += 1;
    }
    class
};

impl Redactor {
    pub fn new() -> Redactor {
        // Word boundaries are ASCII ones: every token here is ASCII, and a Unicode `\b` makes
        // the lazy DFA give up on non-ASCII text and fall back to the (several times slower)
        // PikeVM, which dominated an export's profile.
        let kinds = patterns();
        let sources: Vec<String> = kinds
            .iter()
            .map(|(_, _, p)| p.replace(r"\b", r"(?-u:\b)"))
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
        let patterns = kinds
            .iter()
            .zip(&sources)
            .map(|((kind, evidence, _), source)| {
                (
                    *kind,
                    *evidence,
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
            let Some((kind, evidence, regex)) = self.patterns.get(index) else {
                continue;
            };
            // A pattern without groups is found by the fast engines alone; one with groups
            // needs its captures (slower), to know where the value is.
            let candidates: Vec<((usize, usize), (usize, usize))> = if regex.captures_len() > 1 {
                regex
                    .captures_iter(text)
                    .filter_map(|captures| {
                        let whole = captures.get(0)?;
                        let span = captures.iter().skip(1).flatten().next().unwrap_or(whole);
                        Some(((whole.start(), whole.end()), (span.start(), span.end())))
                    })
                    .collect()
            } else {
                regex
                    .find_iter(text)
                    .map(|found| ((found.start(), found.end()), (found.start(), found.end())))
                    .collect()
            };
            for (whole, (start, mut end)) in candidates {
                let quoted = start
                    .checked_sub(1)
                    .and_then(|before| text.as_bytes().get(before))
                    .is_some_and(|b| b"\"'`".contains(b));
                if *evidence != Evidence::Shape && !quoted {
                    end = bare_value_end(text, start, end);
                }
                // A number may run into a group that is not its own ("… 0130 00 A", "… 1111
                // 7"): if the whole does not pass, its groups are dropped from the end.
                loop {
                    if plausible(*kind, *evidence, text, whole, start, end) {
                        spans.push((start, end, *kind));
                        break;
                    }
                    let grouped = matches!(kind, Kind::Card | Kind::Iban);
                    let cut = text
                        .get(start..end)
                        .and_then(|span| span.rfind([' ', '-']))
                        .filter(|cut| grouped && *cut > 0);
                    match cut {
                        Some(cut) => end = start + cut,
                        None => break,
                    }
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
