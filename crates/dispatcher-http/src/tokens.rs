//! The server's side of entry tokens: the key ring it signs with (reloaded when the key directory
//! changes, so a rotation reaches running servers), minting for admitted tickets, and the JWKS it serves.

use std::path::PathBuf;
use std::sync::Arc;

use dispatcher_admission::{EventId, Ticket, TicketState};
use dispatcher_token::{EntryClaims, Jwks, KeyRing, TokenError};
use parking_lot::RwLock;

use crate::telemetry;

/// How often running servers re-read the key directory.
pub const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Tokens minted recently, by ticket id: an admission's token is signed once per process, not again by
/// the forwarder and on every status read of an admitted ticket.
const CACHE_SIZE: usize = 100_000;

#[derive(Default)]
struct Cache {
    by_jti: std::collections::HashMap<String, (EntryClaims, String)>,
    order: std::collections::VecDeque<String>,
}

/// Ticket ids and tokens are secrets: `Debug` shows how many tokens are cached, not which.
impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("tokens", &self.by_jti.len())
            .finish()
    }
}

/// The signing keys in force, where they come from, and the tokens minted recently.
#[derive(Debug)]
pub struct Tokens {
    ring: RwLock<Arc<KeyRing>>,
    dir: Option<PathBuf>,
    cache: parking_lot::Mutex<Cache>,
}

impl Tokens {
    /// Keys from a directory, generating the first key when it holds none.
    pub fn from_dir(dir: impl Into<PathBuf>) -> Result<Self, TokenError> {
        let dir = dir.into();
        let ring = KeyRing::load_or_generate(&dir)?;
        Ok(Self {
            ring: RwLock::new(Arc::new(ring)),
            dir: Some(dir),
            cache: Default::default(),
        })
    }

    /// Keys that live only in this process (the in-process demo, tests).
    pub fn ephemeral() -> Result<Self, TokenError> {
        Ok(Self::from_ring(KeyRing::generate_in_memory()?))
    }

    /// A fixed ring.
    pub fn from_ring(ring: KeyRing) -> Self {
        Self {
            ring: RwLock::new(Arc::new(ring)),
            dir: None,
            cache: Default::default(),
        }
    }

    /// The ring in force.
    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.read().clone()
    }

    /// Re-reads the key directory (after a rotation). Returns whether the set of keys changed. A failed
    /// read keeps the keys in force.
    pub fn reload(&self) -> Result<bool, TokenError> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let fresh = KeyRing::load(dir)?;
        let old: Vec<_> = self.ring().keys().map(|k| k.kid.clone()).collect();
        let new: Vec<_> = fresh.keys().map(|k| k.kid.clone()).collect();
        if old == new {
            return Ok(false);
        }
        tracing::info!(keys = new.len(), "signing keys reloaded");
        *self.ring.write() = Arc::new(fresh);
        // A key may have gone: cached tokens would no longer verify.
        *self.cache.lock() = Cache::default();
        Ok(true)
    }

    /// Adds a new signing key to the key directory and loads it; older keys keep verifying until
    /// removed. Fails for in-memory rings.
    pub fn rotate(&self) -> Result<String, TokenError> {
        let Some(dir) = &self.dir else {
            return Err(TokenError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other("keys are in memory only; configure a key directory"),
            });
        };
        // The new key is published at once but signs only after every server has reloaded the
        // directory, so no two servers mint different tokens for the same admission.
        let active_from =
            dispatcher_admission::system_now_ms() + RELOAD_INTERVAL.as_millis() as u64 * 2;
        let kid = KeyRing::add_key_active_from(dir, active_from)?;
        self.reload()?;
        tracing::info!(kid = %kid, "signing key added");
        Ok(kid)
    }

    /// The public keys, for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Jwks {
        self.ring().jwks()
    }

    /// The entry token of an admitted ticket; `None` in every other state. The same ticket always gets
    /// the same token while its signing key exists.
    pub fn for_ticket(&self, event: &EventId, t: &Ticket) -> Option<String> {
        if !matches!(t.state, TicketState::Admitted) {
            return None;
        }
        let (Some(at), Some(exp)) = (t.admitted_at_ms, t.expires_at_ms) else {
            return None;
        };
        let claims = EntryClaims::for_admission(
            event.as_str(),
            t.user.as_ref().map(|u| u.as_str().to_owned()),
            t.id.as_str(),
            at,
            exp,
        );
        self.mint(&claims)
    }

    /// Mints a token for the given claims (the same claims give the same token; recent ones come from
    /// the cache).
    pub fn mint(&self, claims: &EntryClaims) -> Option<String> {
        if let Some((c, t)) = self.cache.lock().by_jti.get(&claims.jti)
            && c == claims
        {
            return Some(t.clone());
        }
        match self.ring().mint(claims) {
            Ok(t) => {
                metrics::counter!(telemetry::TOKENS_MINTED_TOTAL).increment(1);
                let mut cache = self.cache.lock();
                if cache
                    .by_jti
                    .insert(claims.jti.clone(), (claims.clone(), t.clone()))
                    .is_none()
                {
                    cache.order.push_back(claims.jti.clone());
                    while cache.order.len() > CACHE_SIZE {
                        if let Some(old) = cache.order.pop_front() {
                            cache.by_jti.remove(&old);
                        }
                    }
                }
                Some(t)
            }
            Err(e) => {
                tracing::error!(error = %e, "minting an entry token failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_cached_ticket_id_or_token() {
        let tokens = Tokens::ephemeral().expect("in-memory keys");
        let ticket = "0123456789abcdef0123456789abcdef";
        let token = tokens
            .mint(&EntryClaims::for_admission(
                "ev",
                None,
                ticket,
                1_700_000_000_000,
                1_700_000_060_000,
            ))
            .expect("minted");
        let dbg = format!("{tokens:?}");
        assert!(!dbg.contains(ticket) && !dbg.contains(&token), "{dbg}");
        assert!(
            dbg.contains("tokens: 1"),
            "the cache is there, counted: {dbg}"
        );
    }
}
