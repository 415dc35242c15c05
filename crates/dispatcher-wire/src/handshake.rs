//! The hello/auth proofs: how each side proves it holds the shared secret without sending it.
//!
//! The flow (the dispatcher is the WebSocket client, it dials; the consumer is the server):
//!
//! 1. The dispatcher dials and sends `Hello { nonce_d, dispatcher_id }`.
//! 2. The consumer answers in ONE WebSocket message: `Hello { nonce_c, consumer_id }` followed by
//!    `Auth { proof_c }`, with `proof_c = proof(secret, Role::Consumer, …)`.
//! 3. The dispatcher checks `proof_c` with [`verify`]. On failure it sends `Error { code: 4 }` and
//!    `Close`, and hangs up. On success it sends `Auth { proof_d }`, `proof_d = proof(secret,
//!    Role::Dispatcher, …)`.
//! 4. The consumer checks `proof_d`. On failure it sends `Error { code: 4 }` and `Close`, and hangs up.
//!    On success it sends `Credit { n }`.
//!
//! The dispatcher sends no `Deliver` before the consumer's first `Credit`; a consumer accepts no
//! `Deliver` before it verified `proof_d`. Both proofs cover both nonces and both ids, so a proof
//! recorded on one connection is worthless on another (each side picks a fresh nonce), and the role
//! label keeps one side's proof from ever being the other's (a reflected `Auth` does not verify).
//!
//! ```
//! use dispatcher_wire::handshake::{proof, verify, Role};
//!
//! let secret = b"correct horse battery staple";
//! let nonce_d: [u8; 16] = core::array::from_fn(|i| i as u8); // 00 01 .. 0f
//! let nonce_c: [u8; 16] = core::array::from_fn(|i| 16 + i as u8); // 10 11 .. 1f
//! let proof_c = proof(secret, Role::Consumer, &nonce_d, &nonce_c, "dispatcher-1", "billing");
//! let hex: String = proof_c.iter().map(|b| format!("{b:02x}")).collect();
//! assert_eq!(hex, "ef1596cf0acdf997ae14ed7f23f81ee3f35808d7cc43beb36b3e7535e5a790f0");
//! assert!(verify(secret, Role::Consumer, &nonce_d, &nonce_c, "dispatcher-1", "billing", &proof_c));
//! assert!(!verify(secret, Role::Dispatcher, &nonce_d, &nonce_c, "dispatcher-1", "billing", &proof_c));
//! ```

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Which side computes (or is claimed to have computed) a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The leader that dials and pushes messages.
    Dispatcher,
    /// The service that listens and processes messages.
    Consumer,
}

impl Role {
    /// The domain-separation label that starts the MAC input.
    pub const fn label(self) -> &'static [u8] {
        match self {
            Role::Dispatcher => b"dispatcher-wire/1 dispatcher",
            Role::Consumer => b"dispatcher-wire/1 consumer",
        }
    }
}

/// A fresh 16-byte nonce from rand's thread-local generator (a CSPRNG seeded from the OS).
pub fn new_nonce() -> [u8; 16] {
    rand::random()
}

/// The MAC over `label(role) || nonce_d || nonce_c || u8 len || dispatcher_id || u8 len || consumer_id`,
/// or `None` if the key is refused (HMAC takes keys of any length, so it never is).
fn mac(
    secret: &[u8],
    role: Role,
    nonce_d: &[u8; 16],
    nonce_c: &[u8; 16],
    dispatcher_id: &str,
    consumer_id: &str,
) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(secret).ok()?;
    mac.update(role.label());
    mac.update(nonce_d);
    mac.update(nonce_c);
    for id in [dispatcher_id, consumer_id] {
        // Ids come from hello frames, 1..=255 bytes; a longer one (which no hello can carry) gets a
        // saturated length byte rather than a panic.
        mac.update(&[u8::try_from(id.len()).unwrap_or(u8::MAX)]);
        mac.update(id.as_bytes());
    }
    Some(mac)
}

/// The proof `role` sends: HMAC-SHA256(secret, label(role) || nonce_d || nonce_c || u8 len ||
/// dispatcher_id || u8 len || consumer_id), with label `b"dispatcher-wire/1 dispatcher"` or
/// `b"dispatcher-wire/1 consumer"`.
pub fn proof(
    secret: &[u8],
    role: Role,
    nonce_d: &[u8; 16],
    nonce_c: &[u8; 16],
    dispatcher_id: &str,
    consumer_id: &str,
) -> [u8; 32] {
    match mac(secret, role, nonce_d, nonce_c, dispatcher_id, consumer_id) {
        Some(mac) => mac.finalize().into_bytes().into(),
        // Unreachable (see `mac`); should it ever happen, random bytes fail verification instead of
        // panicking or sending something guessable.
        None => rand::random(),
    }
}

/// Constant-time check of a received proof: true if `proof` is what `role` must send for these nonces
/// and ids. Ids that no hello can carry (empty or longer than 255 bytes) never verify.
pub fn verify(
    secret: &[u8],
    role: Role,
    nonce_d: &[u8; 16],
    nonce_c: &[u8; 16],
    dispatcher_id: &str,
    consumer_id: &str,
    proof: &[u8; 32],
) -> bool {
    let valid_id = |id: &str| (1..=255).contains(&id.len());
    if !valid_id(dispatcher_id) || !valid_id(consumer_id) {
        return false;
    }
    mac(secret, role, nonce_d, nonce_c, dispatcher_id, consumer_id)
        .is_some_and(|mac| mac.verify_slice(proof).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"correct horse battery staple";
    const D_ID: &str = "dispatcher-1";
    const C_ID: &str = "billing";

    fn nonces() -> ([u8; 16], [u8; 16]) {
        (
            std::array::from_fn(|i| i as u8),
            std::array::from_fn(|i| 16 + i as u8),
        )
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    // Computed independently with Python's standard library:
    // python3 -c "import hmac,hashlib; s=b'correct horse battery staple'; nd=bytes(range(16)); nc=bytes(range(16,32)); d=b'dispatcher-1'; c=b'billing'; m=lambda l: hmac.new(s, l+nd+nc+bytes([len(d)])+d+bytes([len(c)])+c, hashlib.sha256).hexdigest(); print(m(b'dispatcher-wire/1 dispatcher')); print(m(b'dispatcher-wire/1 consumer'))"
    const PROOF_D: &str = "3bd3264c72285d93060d0cdf494421234e21f1d8c0298c929f3c9802e2199332";
    const PROOF_C: &str = "ef1596cf0acdf997ae14ed7f23f81ee3f35808d7cc43beb36b3e7535e5a790f0";
    // Same, with the secret b'k'*100 (longer than SHA-256's 64-byte block, so HMAC hashes the key):
    // python3 -c "import hmac,hashlib; print(hmac.new(b'k'*100, b'dispatcher-wire/1 consumer'+bytes(range(32))+bytes([12])+b'dispatcher-1'+bytes([7])+b'billing', hashlib.sha256).hexdigest())"
    const PROOF_C_LONG_KEY: &str =
        "1ca00f362f3ef24e6f502996f9436fd5ffeece2475a70de3eed0966c3a2a2e2c";

    #[test]
    fn proofs_match_the_independent_test_vector() {
        let (nd, nc) = nonces();
        assert_eq!(
            hex(&proof(SECRET, Role::Dispatcher, &nd, &nc, D_ID, C_ID)),
            PROOF_D
        );
        assert_eq!(
            hex(&proof(SECRET, Role::Consumer, &nd, &nc, D_ID, C_ID)),
            PROOF_C
        );
        assert_eq!(
            hex(&proof(&[b'k'; 100], Role::Consumer, &nd, &nc, D_ID, C_ID)),
            PROOF_C_LONG_KEY
        );
    }

    #[test]
    fn proofs_differ_per_role_nonce_id_and_secret() {
        let (nd, nc) = nonces();
        let base = proof(SECRET, Role::Consumer, &nd, &nc, D_ID, C_ID);
        let mut other_nd = nd;
        other_nd[15] ^= 1;
        let mut other_nc = nc;
        other_nc[0] ^= 0x80;
        let variants = [
            proof(SECRET, Role::Dispatcher, &nd, &nc, D_ID, C_ID),
            proof(SECRET, Role::Consumer, &other_nd, &nc, D_ID, C_ID),
            proof(SECRET, Role::Consumer, &nd, &other_nc, D_ID, C_ID),
            // Swapping the nonces must matter too.
            proof(SECRET, Role::Consumer, &nc, &nd, D_ID, C_ID),
            proof(SECRET, Role::Consumer, &nd, &nc, "dispatcher-2", C_ID),
            proof(SECRET, Role::Consumer, &nd, &nc, D_ID, "billing2"),
            // Moving a byte from one id to the other must matter (the length bytes see to it).
            proof(SECRET, Role::Consumer, &nd, &nc, "dispatcher-1b", "illing"),
            proof(b"another secret", Role::Consumer, &nd, &nc, D_ID, C_ID),
            proof(b"", Role::Consumer, &nd, &nc, D_ID, C_ID),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(v, &base, "variant {i} gave the same proof");
        }
    }

    #[test]
    fn verify_accepts_the_right_proof_and_rejects_any_one_bit_change() {
        let (nd, nc) = nonces();
        for role in [Role::Dispatcher, Role::Consumer] {
            let p = proof(SECRET, role, &nd, &nc, D_ID, C_ID);
            assert!(verify(SECRET, role, &nd, &nc, D_ID, C_ID, &p));
            for bit in 0..256 {
                let mut q = p;
                q[bit / 8] ^= 1 << (bit % 8);
                assert!(!verify(SECRET, role, &nd, &nc, D_ID, C_ID, &q), "bit {bit}");
            }
        }
    }

    #[test]
    fn verify_rejects_the_other_roles_proof_and_a_wrong_secret() {
        let (nd, nc) = nonces();
        let p_d = proof(SECRET, Role::Dispatcher, &nd, &nc, D_ID, C_ID);
        let p_c = proof(SECRET, Role::Consumer, &nd, &nc, D_ID, C_ID);
        assert!(!verify(SECRET, Role::Consumer, &nd, &nc, D_ID, C_ID, &p_d));
        assert!(!verify(
            SECRET,
            Role::Dispatcher,
            &nd,
            &nc,
            D_ID,
            C_ID,
            &p_c
        ));
        assert!(!verify(
            b"wrong",
            Role::Consumer,
            &nd,
            &nc,
            D_ID,
            C_ID,
            &p_c
        ));
        assert!(!verify(
            SECRET,
            Role::Consumer,
            &nd,
            &nc,
            D_ID,
            C_ID,
            &[0; 32]
        ));
    }

    #[test]
    fn verify_refuses_ids_no_hello_can_carry() {
        let (nd, nc) = nonces();
        let long = "x".repeat(256);
        for (d, c) in [("", C_ID), (D_ID, ""), (long.as_str(), C_ID)] {
            let p = proof(SECRET, Role::Consumer, &nd, &nc, d, c);
            assert!(!verify(SECRET, Role::Consumer, &nd, &nc, d, c, &p));
        }
        let max = "x".repeat(255);
        let p = proof(SECRET, Role::Consumer, &nd, &nc, &max, C_ID);
        assert!(verify(SECRET, Role::Consumer, &nd, &nc, &max, C_ID, &p));
    }

    #[test]
    fn nonces_are_fresh() {
        let a = new_nonce();
        let b = new_nonce();
        assert_ne!(a, b);
        assert_ne!(a, [0; 16]);
    }
}
