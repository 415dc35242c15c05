//! The claims of an entry token: what the shop learns from it, and their fixed wire form in the JWT.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `iss` claim of every entry token; checked on verify.
pub const ISSUER: &str = "dispatcher";

/// What an entry token says: this ticket of this event (and user, when the visitor gave one) was admitted
/// at `iat` and its session ends at `exp`. Times are JWT NumericDate: whole seconds since the Unix epoch.
///
/// `Debug` shows only the first characters of `jti`: ticket ids are secrets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryClaims {
    /// The event id.
    pub event: String,
    /// The user id the visitor joined with, if any (omitted from the JSON when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The ticket id.
    pub jti: String,
    /// Admission time, seconds.
    pub iat: u64,
    /// End of the session, seconds.
    pub exp: u64,
}

impl EntryClaims {
    /// The claims of an admitted ticket from the store's millisecond times: `iat` is the admission second
    /// (rounded down), `exp` the first whole second at or after the session's end (rounded up), so the
    /// token never claims less than the session has.
    pub fn for_admission(
        event: impl Into<String>,
        user: Option<String>,
        ticket: impl Into<String>,
        admitted_at_ms: u64,
        expires_at_ms: u64,
    ) -> Self {
        Self {
            event: event.into(),
            user,
            jti: ticket.into(),
            iat: admitted_at_ms / 1000,
            exp: expires_at_ms.div_ceil(1000),
        }
    }
}

impl fmt::Debug for EntryClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let jti: String = self.jti.chars().take(6).collect();
        f.debug_struct("EntryClaims")
            .field("event", &self.event)
            .field("user", &self.user)
            .field("jti", &format_args!("{jti}…"))
            .field("iat", &self.iat)
            .field("exp", &self.exp)
            .finish()
    }
}

/// The JWT payload as minted: fields in this declaration order, which serde keeps, so the JSON (and
/// thus the token) is a pure function of the claims.
#[derive(Serialize)]
pub(crate) struct WireClaimsOut<'a> {
    pub iss: &'a str,
    pub event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    pub jti: &'a str,
    pub iat: u64,
    pub exp: u64,
}

impl<'a> From<&'a EntryClaims> for WireClaimsOut<'a> {
    fn from(c: &'a EntryClaims) -> Self {
        Self {
            iss: ISSUER,
            event: &c.event,
            user: c.user.as_deref(),
            jti: &c.jti,
            iat: c.iat,
            exp: c.exp,
        }
    }
}

/// The JWT payload as read by the verifier. Unknown claims are ignored; a missing `iss` is reported as
/// a wrong issuer rather than as a malformed token.
#[derive(Deserialize)]
pub(crate) struct WireClaimsIn {
    #[serde(default)]
    pub iss: Option<String>,
    pub event: String,
    #[serde(default)]
    pub user: Option<String>,
    pub jti: String,
    pub iat: u64,
    pub exp: u64,
}

impl WireClaimsIn {
    pub(crate) fn into_claims(self) -> EntryClaims {
        EntryClaims {
            event: self.event,
            user: self.user,
            jti: self.jti,
            iat: self.iat,
            exp: self.exp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_times_round_outward() {
        let c = EntryClaims::for_admission("e", None, "t", 1_999, 2_001);
        assert_eq!((c.iat, c.exp), (1, 3));
        let c = EntryClaims::for_admission("e", None, "t", 2_000, 3_000);
        assert_eq!((c.iat, c.exp), (2, 3));
        let c = EntryClaims::for_admission("e", None, "t", 0, u64::MAX);
        assert_eq!(c.exp, u64::MAX.div_ceil(1000));
    }

    #[test]
    fn wire_form_has_a_fixed_order_and_omits_absent_user() -> Result<(), serde_json::Error> {
        let c = EntryClaims::for_admission("launch", None, "tk", 5_000, 65_000);
        assert_eq!(
            serde_json::to_string(&WireClaimsOut::from(&c))?,
            r#"{"iss":"dispatcher","event":"launch","jti":"tk","iat":5,"exp":65}"#
        );
        let c = EntryClaims {
            user: Some("u1".into()),
            ..c
        };
        assert_eq!(
            serde_json::to_string(&WireClaimsOut::from(&c))?,
            r#"{"iss":"dispatcher","event":"launch","user":"u1","jti":"tk","iat":5,"exp":65}"#
        );
        Ok(())
    }

    #[test]
    fn debug_hides_the_ticket_id() {
        let c = EntryClaims::for_admission("e", None, "abcdefghijklmnop", 0, 0);
        let s = format!("{c:?}");
        assert!(s.contains("abcdef…"), "{s}");
        assert!(!s.contains("abcdefg"), "{s}");
    }
}
