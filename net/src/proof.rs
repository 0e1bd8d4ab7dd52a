//! Session proofs: how each side of a peer connection proves that it holds
//! the signing key of an endorsed member, bound to *that* TLS session (see
//! `docs/protocol.md`, "Proving membership").
//!
//! Both ends of a TLS connection can compute the same 32-byte *exporter*
//! value (RFC 8446 §7.5, label [`EXPORTER_LABEL`]); nobody else can, and no
//! other session has the same one. A [`SessionProof`] names the user, the
//! envoy, which side of the connection it speaks for, and that exporter,
//! and is signed with the envoy's signing key. Checked against the
//! endorsement it comes with ([`check`]), it shows that the envoy at the
//! other end of this very connection holds that endorsed key. An
//! endorsement alone — replayed from the wire, or copied off a member's
//! disk — proves nothing, and a proof made for one session fails in every
//! other.
//!
//! Pure: the exporter and the keys are handed in; it never touches a socket.
//! Whether the endorsement belongs to the circle is the replica's decision
//! (it holds the circle key); this module checks only that the proof and
//! the endorsement belong together and to this session.

use lockbox_crypto::circle::Endorsement;
use lockbox_crypto::sign::{Decoder, Encoder, Record, Signed};

/// The label of the TLS exporter value a session proof signs.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-lockbox-session-proof-v2";

/// Which end of a connection a proof speaks for. A proof is valid for one
/// side only, so the answer to a hello cannot be reflected back as an ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The side that opened the connection and asks (the TLS client).
    Asker,
    /// The side that accepted it and answers (the TLS server).
    Answerer,
}

impl Side {
    fn byte(self) -> u8 {
        match self {
            Side::Asker => 1,
            Side::Answerer => 2,
        }
    }
}

/// What a session proof says: "envoy `envoy` of `user`, speaking as `side`
/// on the TLS session whose exporter is `exporter`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionProof {
    /// The user.
    pub user: String,
    /// The envoy that signs.
    pub envoy: String,
    /// Which end of the connection it is.
    pub side: Side,
    /// The TLS exporter value of the session.
    pub exporter: [u8; 32],
}

impl Record for SessionProof {
    const DOMAIN: &'static str = "lockbox/session-proof/v2";

    fn encode(&self, e: &mut Encoder) {
        e.str(&self.user);
        e.str(&self.envoy);
        e.u8(self.side.byte());
        e.bytes(&self.exporter);
    }

    fn decode(d: &mut Decoder<'_>) -> lockbox_crypto::Result<Self> {
        let user = d.str(lockbox_crypto::circle::MAX_NAME_BYTES)?.to_owned();
        let envoy = d.str(lockbox_crypto::circle::MAX_NAME_BYTES)?.to_owned();
        let side = match d.u8()? {
            1 => Side::Asker,
            2 => Side::Answerer,
            other => {
                return Err(lockbox_crypto::Error::Malformed(format!(
                    "session proof side {other} is neither asker (1) nor answerer (2)"
                )))
            }
        };
        let exporter = d.bytes(32)?.try_into().map_err(|_| {
            lockbox_crypto::Error::Malformed("session proof exporter is not 32 bytes".into())
        })?;
        Ok(SessionProof {
            user,
            envoy,
            side,
            exporter,
        })
    }
}

/// Why a session proof was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The bytes are not a signed session proof (or its signature fails).
    #[error("the session proof does not parse or verify: {0}")]
    Malformed(String),
    /// It is signed by another key than the endorsement's.
    #[error("the session proof is not signed by the key its endorsement names")]
    WrongSigner,
    /// It was made for another TLS session (a replay).
    #[error("the session proof was made for another connection")]
    OtherSession,
    /// It speaks for the other end of the connection (a reflection).
    #[error("the session proof speaks for the other end of the connection")]
    WrongSide,
    /// It names another user or envoy than its endorsement.
    #[error("the session proof names {envoy:?} of {user:?}, not the endorsed envoy")]
    WrongName {
        /// The user it names.
        user: String,
        /// The envoy it names.
        envoy: String,
    },
}

/// Checks that `proof` (wire bytes) shows that the holder of
/// `endorsement`'s signing key speaks as `side` on the session whose
/// exporter is `exporter`.
///
/// # Errors
///
/// A [`ProofError`] naming what does not hold.
pub fn check(
    proof: &[u8],
    endorsement: &Endorsement,
    side: Side,
    exporter: &[u8; 32],
) -> Result<(), ProofError> {
    let signed = Signed::<SessionProof>::from_bytes(proof)
        .map_err(|e| ProofError::Malformed(e.to_string()))?;
    if signed.signer() != endorsement.signing_key {
        return Err(ProofError::WrongSigner);
    }
    let p = signed.body();
    // Constant time is not needed: the exporter is not a secret of ours
    // that the peer could learn byte by byte (it computes it too).
    if p.exporter != *exporter {
        return Err(ProofError::OtherSession);
    }
    if p.side != side {
        return Err(ProofError::WrongSide);
    }
    if p.user != endorsement.user || p.envoy != endorsement.envoy {
        return Err(ProofError::WrongName {
            user: p.user.clone(),
            envoy: p.envoy.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockbox_crypto::sign::SigningKey;

    fn endorsement(key: &SigningKey) -> Endorsement {
        Endorsement {
            user: "alice".into(),
            envoy: "laptop".into(),
            recipient: "age1x".into(),
            signing_key: key.public(),
            created_unix: 1,
        }
    }

    fn proof(key: &SigningKey, side: Side, exporter: [u8; 32]) -> Vec<u8> {
        Signed::sign(
            SessionProof {
                user: "alice".into(),
                envoy: "laptop".into(),
                side,
                exporter,
            },
            key,
        )
        .to_bytes()
    }

    #[test]
    fn a_proof_for_this_session_and_side_checks() {
        let k = SigningKey::generate();
        let p = proof(&k, Side::Asker, [7; 32]);
        assert_eq!(check(&p, &endorsement(&k), Side::Asker, &[7; 32]), Ok(()));
    }

    #[test]
    fn a_replayed_reflected_or_borrowed_proof_fails() {
        let k = SigningKey::generate();
        let e = endorsement(&k);
        let p = proof(&k, Side::Asker, [7; 32]);
        assert_eq!(
            check(&p, &e, Side::Asker, &[8; 32]),
            Err(ProofError::OtherSession)
        );
        assert_eq!(
            check(&p, &e, Side::Answerer, &[7; 32]),
            Err(ProofError::WrongSide)
        );
        // The endorsement of another envoy, shown with a proof by our key.
        let other = SigningKey::generate();
        assert_eq!(
            check(&p, &endorsement(&other), Side::Asker, &[7; 32]),
            Err(ProofError::WrongSigner)
        );
        let mut renamed = e.clone();
        renamed.envoy = "phone".into();
        assert!(matches!(
            check(&p, &renamed, Side::Asker, &[7; 32]),
            Err(ProofError::WrongName { .. })
        ));
    }

    #[test]
    fn garbage_and_tampered_proofs_fail_without_panicking() {
        let k = SigningKey::generate();
        let e = endorsement(&k);
        let good = proof(&k, Side::Answerer, [1; 32]);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(
                check(&bad, &e, Side::Answerer, &[1; 32]).is_err(),
                "byte {i}"
            );
        }
        for len in 0..good.len() {
            assert!(check(&good[..len], &e, Side::Answerer, &[1; 32]).is_err());
        }
        assert!(check(&[0xff; 300], &e, Side::Answerer, &[1; 32]).is_err());
    }
}
