//! Identifiers from outside: parsed once, then trusted.

use std::fmt;

/// Why a text is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a valid {kind} id: use 1 to 128 characters of A-Z a-z 0-9 . _ : @ -")]
pub struct IdError {
    pub kind: &'static str,
    pub text: String,
}

fn is_id_syntax(text: &str) -> bool {
    (1..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}

macro_rules! external_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Accepts 1–128 characters of `[A-Za-z0-9._:@-]` (docs/POLICY.md, Terms).
            pub fn parse(text: &str) -> Result<Self, IdError> {
                if is_id_syntax(text) {
                    Ok(Self(text.to_owned()))
                } else {
                    Err(IdError { kind: $kind, text: text.to_owned() })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

external_id!(
    /// The product's id of a user account.
    AccountId,
    "account"
);
external_id!(
    /// The product's id of a conversation (a chat or a coding session).
    ConversationId,
    "conversation"
);
external_id!(
    /// An id of a legal hold, unique for the life of the store.
    HoldId,
    "hold"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_exactly_the_spec_alphabet_and_length() {
        assert!(AccountId::parse("user.1_a:b@c-d").is_ok());
        assert!(AccountId::parse(&"a".repeat(128)).is_ok());
        for bad in ["", " a", "a b", "ä", "a/b", "a#b"] {
            assert!(AccountId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(ConversationId::parse(&"c".repeat(129)).is_err());
    }
}
