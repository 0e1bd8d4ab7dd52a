//! The circle key: membership bound to the passphrase (see
//! `docs/formats-crypto.md`, "7. The circle key and endorsements", and
//! `docs/design.md`, "Membership").
//!
//! Every envoy of a user derives the same Ed25519 *circle key* from the
//! user's passphrase and user name:
//!
//! ```text
//! salt = SHA-256("lockbox-circle-salt-v1\0" || user name)
//! seed = Argon2id(passphrase, salt, CIRCLE_PARAMS)   (32 bytes)
//! circle key = Ed25519 key with that seed
//! ```
//!
//! At `init` an envoy signs an [`Endorsement`] of its own envoy name, age
//! recipient and signing key with the circle key. Peers accept a member only
//! if [`verify_endorsement`] passes under *their own* circle public key, so a
//! host without the passphrase cannot join, and envoys set up with different
//! passphrases never merge.

use std::fmt;
use std::str::FromStr;

use secrecy::SecretString;
use sha2::Digest;

use crate::kdf::KdfParams;
use crate::sign::{Decoder, Encoder, PublicKey, Record, Signed, SigningKey};
use crate::{AgeRecipient, Error, Result};

/// The Argon2id parameters of the circle key, frozen for circle version 1.
///
/// Every envoy of a user must derive with the same parameters or their
/// circle keys differ, so these never follow [`KdfParams::DEFAULT`] if that
/// is retuned: changing them needs a new salt label and a migration.
pub const CIRCLE_PARAMS: KdfParams = KdfParams {
    memory_kib: 256 * 1024,
    iterations: 3,
    parallelism: 1,
};

/// Domain label hashed in front of the user name to form the salt.
const SALT_LABEL: &[u8] = b"lockbox-circle-salt-v1\0";

/// Longest user or envoy name in an endorsement, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest age recipient string in an endorsement, in bytes.
pub const MAX_RECIPIENT_BYTES: usize = 128;

/// The Argon2id salt of `user`'s circle key.
fn circle_salt(user: &str) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(SALT_LABEL);
    h.update(user.as_bytes());
    h.finalize().into()
}

/// The user's circle key. `Debug` shows only the public key.
pub struct CircleKey(SigningKey);

impl CircleKey {
    /// Derives the circle key of `user` from `passphrase`. Deterministic:
    /// the same passphrase, user and parameters give the same key on every
    /// machine. Production code passes [`CIRCLE_PARAMS`].
    pub fn derive(passphrase: &SecretString, user: &str, params: KdfParams) -> Result<Self> {
        let seed = params.derive(passphrase, &circle_salt(user))?;
        Ok(Self(SigningKey::from_seed(&seed)))
    }

    /// The circle public key, which every member holds.
    pub fn public(&self) -> PublicKey {
        self.0.public()
    }

    /// Signs an endorsement with the circle key.
    pub fn endorse(&self, e: Endorsement) -> Signed<Endorsement> {
        Signed::sign(e, &self.0)
    }

    /// Signs another record with the circle key (an eviction: the authority
    /// of whoever knows the passphrase).
    pub fn sign<T: crate::sign::Record>(&self, body: T) -> Signed<T> {
        Signed::sign(body, &self.0)
    }
}

impl fmt::Debug for CircleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CircleKey").field(&self.public()).finish()
    }
}

/// The circle's statement that an envoy is a member: its name, the age
/// recipient files are sealed to, and the key that signs its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endorsement {
    /// The user the circle belongs to.
    pub user: String,
    /// The envoy's name.
    pub envoy: String,
    /// The envoy's age X25519 recipient (`age1…`).
    pub recipient: String,
    /// The envoy's Ed25519 signing key.
    pub signing_key: PublicKey,
    /// When the endorsement was made (seconds since the Unix epoch).
    pub created_unix: u64,
}

impl Record for Endorsement {
    const DOMAIN: &'static str = "lockbox/endorsement/v1";

    fn encode(&self, e: &mut Encoder) {
        e.str(&self.user);
        e.str(&self.envoy);
        e.str(&self.recipient);
        e.key(&self.signing_key);
        e.u64(self.created_unix);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(Self {
            user: d.str(MAX_NAME_BYTES)?.to_owned(),
            envoy: d.str(MAX_NAME_BYTES)?.to_owned(),
            recipient: d.str(MAX_RECIPIENT_BYTES)?.to_owned(),
            signing_key: d.key()?,
            created_unix: d.u64()?,
        })
    }
}

/// Checks that `s` was signed by the circle whose public key is `circle`
/// and that its recipient is a valid age X25519 recipient.
///
/// [`Error::WrongCircle`] means the endorsement comes from an envoy set up
/// with a different passphrase.
pub fn verify_endorsement(s: &Signed<Endorsement>, circle: &PublicKey) -> Result<()> {
    if s.signer() != *circle {
        return Err(Error::WrongCircle);
    }
    // A Signed value is verified when built; check again so this function
    // alone is the whole membership test.
    let reparsed = Signed::<Endorsement>::from_bytes(&s.to_bytes())?;
    if reparsed != *s {
        return Err(Error::BadSignature);
    }
    let e = s.body();
    if e.user.len() > MAX_NAME_BYTES || e.envoy.len() > MAX_NAME_BYTES {
        return Err(Error::Malformed(
            "endorsement names exceed 255 bytes".into(),
        ));
    }
    AgeRecipient::from_str(&e.recipient).map_err(|reason| {
        Error::Malformed(format!(
            "endorsed recipient is not an age X25519 recipient: {reason}"
        ))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AgeIdentity;

    fn pass(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    fn endorsement() -> Endorsement {
        Endorsement {
            user: "alice".into(),
            envoy: "laptop".into(),
            recipient: AgeIdentity::generate().to_public().to_string(),
            signing_key: SigningKey::generate().public(),
            created_unix: 1_700_000_000,
        }
    }

    #[test]
    fn circle_params_are_the_v1_default() {
        // Frozen: if DEFAULT is retuned this test reminds us CIRCLE_PARAMS
        // must not follow.
        assert_eq!(CIRCLE_PARAMS, KdfParams::DEFAULT);
        CIRCLE_PARAMS.validate().unwrap();
    }

    #[test]
    fn same_passphrase_and_user_give_the_same_key() {
        let a = CircleKey::derive(&pass("hunter2 hunter2"), "alice", KdfParams::TEST).unwrap();
        let b = CircleKey::derive(&pass("hunter2 hunter2"), "alice", KdfParams::TEST).unwrap();
        assert_eq!(a.public(), b.public());
        // Pinned: another machine, another build, the same key.
        assert_eq!(
            a.public().to_base64(),
            KNOWN_CIRCLE_PUBLIC,
            "circle key derivation changed; every existing circle would split"
        );
        let other_pass =
            CircleKey::derive(&pass("hunter3 hunter3"), "alice", KdfParams::TEST).unwrap();
        assert_ne!(a.public(), other_pass.public());
        let other_user =
            CircleKey::derive(&pass("hunter2 hunter2"), "bob", KdfParams::TEST).unwrap();
        assert_ne!(a.public(), other_user.public());
        assert!(format!("{a:?}").starts_with("CircleKey(PublicKey("));
    }

    const KNOWN_CIRCLE_PUBLIC: &str = "XNWiGSyqo6NZVRddiDHIuVLTARQgxQE6Z1P9oh5a7Tc";

    #[test]
    fn endorsement_round_trip_and_verify() {
        let circle = CircleKey::derive(&pass("pw pw pw"), "alice", KdfParams::TEST).unwrap();
        let e = endorsement();
        let signed = circle.endorse(e.clone());
        verify_endorsement(&signed, &circle.public()).unwrap();
        let bytes = signed.to_bytes();
        let back = Signed::<Endorsement>::from_bytes(&bytes).unwrap();
        assert_eq!(back.body(), &e);
        verify_endorsement(&back, &circle.public()).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Signed::<Endorsement>::from_bytes(&bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn a_different_passphrase_is_another_circle() {
        let ours = CircleKey::derive(&pass("right"), "alice", KdfParams::TEST).unwrap();
        let theirs = CircleKey::derive(&pass("wrong"), "alice", KdfParams::TEST).unwrap();
        let signed = theirs.endorse(endorsement());
        assert!(matches!(
            verify_endorsement(&signed, &ours.public()),
            Err(Error::WrongCircle)
        ));
        // An envoy's own signing key is not the circle key either.
        let envoy_key = SigningKey::generate();
        let self_signed = Signed::sign(endorsement(), &envoy_key);
        assert!(matches!(
            verify_endorsement(&self_signed, &ours.public()),
            Err(Error::WrongCircle)
        ));
    }

    #[test]
    fn recipient_must_be_an_age_recipient() {
        let circle = CircleKey::derive(&pass("pw"), "alice", KdfParams::TEST).unwrap();
        for bad in ["", "age1notreally", "ssh-ed25519 AAAA"] {
            let signed = circle.endorse(Endorsement {
                recipient: bad.into(),
                ..endorsement()
            });
            assert!(
                matches!(
                    verify_endorsement(&signed, &circle.public()),
                    Err(Error::Malformed(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn field_caps_are_enforced_on_decode() {
        let circle = CircleKey::derive(&pass("pw"), "alice", KdfParams::TEST).unwrap();
        let long = |n| "x".repeat(n);
        let ok = circle.endorse(Endorsement {
            user: long(MAX_NAME_BYTES),
            envoy: long(MAX_NAME_BYTES),
            ..endorsement()
        });
        Signed::<Endorsement>::from_bytes(&ok.to_bytes()).unwrap();
        for e in [
            Endorsement {
                user: long(MAX_NAME_BYTES + 1),
                ..endorsement()
            },
            Endorsement {
                envoy: long(MAX_NAME_BYTES + 1),
                ..endorsement()
            },
            Endorsement {
                recipient: long(MAX_RECIPIENT_BYTES + 1),
                ..endorsement()
            },
        ] {
            let signed = circle.endorse(e);
            assert!(matches!(
                Signed::<Endorsement>::from_bytes(&signed.to_bytes()),
                Err(Error::Malformed(_))
            ));
        }
    }

    #[test]
    fn salt_is_domain_separated_and_user_specific() {
        let mut h = sha2::Sha256::new();
        h.update(b"lockbox-circle-salt-v1\0alice");
        let expected: [u8; 32] = h.finalize().into();
        assert_eq!(circle_salt("alice"), expected);
        assert_ne!(circle_salt("alice"), circle_salt("alicf"));
    }
}
