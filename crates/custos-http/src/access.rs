//! Who may call what: bearer tokens, roles, and the rule that a user reaches only itself.

use axum::http::HeaderMap;
use custos_core::AccountId;

use crate::problem::Problem;

/// The roles of docs/API.md §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The chat product's back-end.
    Service,
    /// A token bound to one account.
    User,
    /// Creates and reads training exports.
    Trainer,
    /// Read-only reports and the ledger.
    Auditor,
    /// Everything above, holds, sweeps, tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Service,
        Role::User,
        Role::Trainer,
        Role::Auditor,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Service => "service",
            Role::User => "user",
            Role::Trainer => "trainer",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// The account a `user` token is bound to.
    pub account: Option<AccountId>,
    /// A public handle of the token (the start of its hash), for audit trails.
    pub token: String,
}

impl Caller {
    /// Who did it, as recorded in the ledger and audit trails: `user` for the account's own
    /// user (the entry already sits in that account's chain, and the id must not outlive an
    /// erasure there), `<role>:<token handle>` otherwise. Never the token itself.
    pub fn actor(&self) -> String {
        match self.role {
            Role::User => "user".to_owned(),
            role => format!("{}:{}", role.as_str(), self.token),
        }
    }
}

/// The bearer token of a request, if it sent one in the right form.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Which callers a route admits. `admin` is always admitted (API.md: "everything above").
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    pub roles: &'static [Role],
    /// Whether a `user` token is admitted for its own account.
    pub user_self: bool,
}

impl Allowed {
    pub const fn roles(roles: &'static [Role]) -> Allowed {
        Allowed {
            roles,
            user_self: false,
        }
    }

    pub const fn and_user_self(roles: &'static [Role]) -> Allowed {
        Allowed {
            roles,
            user_self: true,
        }
    }

    /// Checks `caller` against this route, for a request about `account` (if it names one).
    pub fn check(&self, caller: &Caller, account: Option<&AccountId>) -> Result<(), Problem> {
        if caller.role == Role::Admin || self.roles.contains(&caller.role) {
            return Ok(());
        }
        if self.user_self
            && caller.role == Role::User
            && account.is_some()
            && caller.account.as_ref() == account
        {
            return Ok(());
        }
        Err(Problem::forbidden())
    }
}

/// Authenticated principals, kept in memory for a few seconds so that the gate's hot path does
/// not read the tokens table on every request.
///
/// Keyed by the SHA-256 of the token, never the token itself. An entry lives at most
/// [`TOKEN_CACHE_SECONDS`] and never past the token's own expiry, so a revocation takes effect
/// within that time. Unknown tokens are not cached.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: std::sync::RwLock<std::collections::HashMap<[u8; 32], CachedCaller>>,
}

/// A caller, when it was looked up, and when its token expires.
type CachedCaller = (Caller, std::time::Instant, Option<custos_core::Timestamp>);

pub const TOKEN_CACHE_SECONDS: u64 = 5;
const TOKEN_CACHE_ENTRIES: usize = 100_000;

impl TokenCache {
    pub fn get(&self, token_hash: &[u8; 32], now: custos_core::Timestamp) -> Option<Caller> {
        let entries = self.entries.read().ok()?;
        let (caller, fetched, expires) = entries.get(token_hash)?;
        let fresh = fetched.elapsed() < std::time::Duration::from_secs(TOKEN_CACHE_SECONDS);
        let unexpired = expires.is_none_or(|expires| now < expires);
        (fresh && unexpired).then(|| caller.clone())
    }

    /// Drops a token at once, e.g. the session of an erased account.
    pub fn forget(&self, token_hash: &[u8; 32]) {
        if let Ok(mut entries) = self.entries.write() {
            entries.remove(token_hash);
        }
    }

    pub fn keep(
        &self,
        token_hash: [u8; 32],
        caller: Caller,
        expires: Option<custos_core::Timestamp>,
    ) {
        if let Ok(mut entries) = self.entries.write() {
            if entries.len() >= TOKEN_CACHE_ENTRIES {
                entries.clear();
            }
            entries.insert(token_hash, (caller, std::time::Instant::now(), expires));
        }
    }
}
