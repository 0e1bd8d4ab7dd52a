//! The circle: its key, member endorsements, and how circles continue
//! and merge (see `docs/formats-crypto.md`, "7. The circle", and
//! `docs/design.md`, "Membership").
//!
//! **Protocol 2.** The circle key is a random Ed25519 key made once, by the
//! first envoy (`init`), as a [`CircleSecret`]. It travels only to envoys
//! that proved they know the passphrase (the join, [`crate::join`]), and is
//! kept on disk sealed with age to the envoy's own recipient
//! ([`seal_secret`], [`open_secret`]): readable only while unlocked. When
//! two circles set up apart meet, [`winner`] picks the one that continues,
//! and the other's key signs a [`Succession`] ("the circle `old` continues
//! as `new`") so its members follow.
//!
//! **Protocol 1** derived the circle key from the passphrase
//! ([`CircleKey::derive`]); anyone who saw the public key could test
//! passphrase guesses offline. It is kept only to read stores made by
//! protocol 1.
//!
//! Every member carries an [`Endorsement`] of its envoy name, age recipient
//! and signing key, signed with the circle key. Peers accept a member only
//! if [`verify_endorsement`] passes under *their own* circle public key.
//!
//! This module owns these formats and checks; it must not read files or
//! clocks (times are arguments) or decide membership (that is the mesh's).

use std::cmp::Ordering;
use std::fmt;
use std::io::Write;
use std::str::FromStr;

use rand::{rngs::OsRng, RngCore};
use secrecy::SecretString;
use sha2::Digest;
use zeroize::Zeroizing;

use crate::kdf::KdfParams;
use crate::seal::{open_to_vec, Sealer};
use crate::sign::{Decoder, Encoder, PublicKey, Record, Signed, SigningKey};
use crate::{AgeIdentity, AgeRecipient, Error, Result};

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
    /// **Protocol 1 only, kept to read stores made by it.** Derives the
    /// circle key of `user` from `passphrase`. Deterministic: the same
    /// passphrase, user and parameters give the same key on every machine
    /// (which is why its public key lets anyone test passphrase guesses
    /// offline). New circles use a random [`CircleSecret`]. Production code
    /// passes [`CIRCLE_PARAMS`].
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

/// Version byte of [`CircleSecret::to_bytes`].
const SECRET_VERSION: u8 = 1;
/// Bytes of [`CircleSecret::to_bytes`]: version, seed, created, public key.
pub const SECRET_LEN: usize = 1 + 32 + 8 + 32;
/// Largest sealed circle secret [`open_secret`] reads. A one-recipient age
/// file of [`SECRET_LEN`] bytes is a few hundred bytes (age adds a random
/// grease stanza of varying length); anything near this cap is not one.
pub const MAX_SEALED_SECRET_BYTES: usize = 4096;

/// A circle's secrets: the Ed25519 seed of the circle key and when the
/// circle was made. Made once by the first envoy ([`CircleSecret::generate`])
/// and handed on only through a join. The seed is wiped on drop; `Debug`
/// shows only the public key.
pub struct CircleSecret {
    seed: Zeroizing<[u8; 32]>,
    public: PublicKey,
    created_unix: u64,
}

impl CircleSecret {
    /// A new random circle, made at `now_unix` (seconds since the Unix
    /// epoch, from the caller's clock).
    pub fn generate(now_unix: u64) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut seed[..]);
        Self::from_seed(seed, now_unix)
    }

    /// The circle of a store made by protocol 1, whose key was derived
    /// from the passphrase and the user name ([`CircleKey::derive`]), as a
    /// circle secret made at time 0 (so it wins a merge against any circle
    /// made since, [`winner`]). Production code passes [`CIRCLE_PARAMS`].
    pub fn protocol_1(passphrase: &SecretString, user: &str, params: KdfParams) -> Result<Self> {
        let seed = params.derive(passphrase, &circle_salt(user))?;
        Ok(Self::from_seed(seed, 0))
    }

    fn from_seed(seed: Zeroizing<[u8; 32]>, created_unix: u64) -> Self {
        let public = SigningKey::from_seed(&seed).public();
        Self {
            seed,
            public,
            created_unix,
        }
    }

    /// The circle key, to endorse members and sign records.
    pub fn key(&self) -> CircleKey {
        CircleKey(SigningKey::from_seed(&self.seed))
    }

    /// The circle public key, which every member holds.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// When the circle was made (seconds since the Unix epoch).
    pub fn created_unix(&self) -> u64 {
        self.created_unix
    }

    /// Whether this is a circle made by protocol 1, whose seed was derived
    /// from the passphrase ([`CircleSecret::protocol_1`], made at time 0):
    /// nothing that would let a guess be tested may be derived from it.
    pub fn is_protocol_1(&self) -> bool {
        self.created_unix == 0
    }

    /// The seed, for keys derived from it within this crate.
    pub(crate) fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// Signs the [`Succession`] "this circle continues as `new`" with this
    /// circle's key (the losing side of a merge does this).
    pub fn sign_succession(
        &self,
        user: &str,
        new: &PublicKey,
        new_created_unix: u64,
    ) -> Signed<Succession> {
        self.key().sign(Succession {
            user: user.to_owned(),
            old: self.public,
            new: *new,
            new_created_unix,
        })
    }

    /// The fixed-length encoding, version 1 ([`SECRET_LEN`] bytes):
    /// `0x01 || seed (32) || created_unix (u64) || public key (32)`.
    /// Secret: seal it ([`seal_secret`]) or send it sealed in a join.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(SECRET_LEN));
        out.push(SECRET_VERSION);
        out.extend_from_slice(&self.seed[..]);
        out.extend_from_slice(&self.created_unix.to_be_bytes());
        out.extend_from_slice(&self.public.0);
        out
    }

    /// Parses [`CircleSecret::to_bytes`]. Anything but exactly
    /// [`SECRET_LEN`] bytes of version 1 whose public key matches its seed
    /// is [`Error::Malformed`].
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.len() != SECRET_LEN {
            return Err(Error::Malformed(format!(
                "circle secret is {} bytes, expected {SECRET_LEN}",
                b.len()
            )));
        }
        if b[0] != SECRET_VERSION {
            return Err(Error::Malformed(format!(
                "circle secret version {} is not supported; upgrade lockbox",
                b[0]
            )));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&b[1..33]);
        let mut created = [0u8; 8];
        created.copy_from_slice(&b[33..41]);
        let secret = Self::from_seed(seed, u64::from_be_bytes(created));
        if secret.public.0[..] != b[41..] {
            return Err(Error::Malformed(
                "circle secret's public key does not match its seed".into(),
            ));
        }
        Ok(secret)
    }
}

impl fmt::Debug for CircleSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircleSecret")
            .field("public", &self.public)
            .field("created_unix", &self.created_unix)
            .finish_non_exhaustive()
    }
}

/// Seals `secret` with age to `recipient` (the envoy's own): how the circle
/// secret is kept on disk, readable only while the envoy is unlocked.
pub fn seal_secret(secret: &CircleSecret, recipient: &AgeRecipient) -> Result<Vec<u8>> {
    let mut sealer = Sealer::new(std::slice::from_ref(recipient), Vec::new())?;
    sealer.write_all(&secret.to_bytes())?;
    sealer.finish()
}

/// Opens what [`seal_secret`] wrote. Input over
/// [`MAX_SEALED_SECRET_BYTES`] is refused before age parses it; then the
/// errors of [`crate::seal::open_to_vec`] ([`Error::NotARecipient`] for
/// another envoy's file, [`Error::Corrupt`] for a damaged one), and
/// [`Error::Malformed`] if what it holds is not a circle secret.
pub fn open_secret(sealed: &[u8], identity: &AgeIdentity) -> Result<CircleSecret> {
    if sealed.len() > MAX_SEALED_SECRET_BYTES {
        return Err(Error::Malformed(format!(
            "sealed circle secret of {} bytes exceeds the {MAX_SEALED_SECRET_BYTES}-byte cap",
            sealed.len()
        )));
    }
    let plain = open_to_vec(identity, std::io::Cursor::new(sealed))?;
    CircleSecret::from_bytes(&plain)
}

/// The statement, signed by the circle key `old`, that the circle `old`
/// continues as `new` (made when `old` loses a merge, see [`winner`]).
/// Members of `old` that verify it follow `new`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Succession {
    /// The user both circles belong to.
    pub user: String,
    /// The circle that ends.
    pub old: PublicKey,
    /// The circle it continues as.
    pub new: PublicKey,
    /// When `new` was made (seconds since the Unix epoch).
    pub new_created_unix: u64,
}

impl Record for Succession {
    const DOMAIN: &'static str = "lockbox/succession/v1";

    fn encode(&self, e: &mut Encoder) {
        e.str(&self.user);
        e.key(&self.old);
        e.key(&self.new);
        e.u64(self.new_created_unix);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(Self {
            user: d.str(MAX_NAME_BYTES)?.to_owned(),
            old: d.key()?,
            new: d.key()?,
            new_created_unix: d.u64()?,
        })
    }
}

/// Checks that `s` was signed by the circle key `old` and says that `old`
/// continues as another circle. [`Error::WrongCircle`] if another key
/// signed it or it names another old circle; [`Error::Malformed`] if it
/// names `old` as its own successor.
pub fn verify_succession(s: &Signed<Succession>, old: &PublicKey) -> Result<()> {
    if s.signer() != *old || s.body().old != *old {
        return Err(Error::WrongCircle);
    }
    let reparsed = Signed::<Succession>::from_bytes(&s.to_bytes())?;
    if reparsed != *s {
        return Err(Error::BadSignature);
    }
    if s.body().new == *old {
        return Err(Error::Malformed(
            "succession names the circle as its own successor".into(),
        ));
    }
    Ok(())
}

/// Which circle continues when two circles of one user meet: `Less` if
/// `a` wins, `Greater` if `b` does, `Equal` only if they are the same
/// circle (same public key). A circle is `(public key, created_unix)`.
///
/// The one created earlier wins; equal times are broken by the smaller
/// public key bytes. A pure, total order, so both envoys of a merge reach
/// the same answer from the same two values: `winner(a, b)` is always
/// `winner(b, a).reverse()`.
pub fn winner(a: (&PublicKey, u64), b: (&PublicKey, u64)) -> Ordering {
    if a.0 == b.0 {
        return Ordering::Equal;
    }
    a.1.cmp(&b.1).then_with(|| a.0 .0.cmp(&b.0 .0))
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
    use proptest::prelude::*;

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

    #[test]
    fn circle_secret_round_trip_and_debug() {
        let s = CircleSecret::generate(1_700_000_123);
        assert_eq!(s.created_unix(), 1_700_000_123);
        assert_eq!(s.key().public(), s.public());
        let bytes = s.to_bytes();
        assert_eq!(bytes.len(), SECRET_LEN);
        assert_eq!(bytes[0], 1);
        let back = CircleSecret::from_bytes(&bytes).unwrap();
        assert_eq!(back.public(), s.public());
        assert_eq!(back.created_unix(), s.created_unix());
        assert_eq!(back.to_bytes()[..], bytes[..]);
        // Random: two circles never share a key.
        assert_ne!(CircleSecret::generate(0).public(), s.public());
        // Debug shows the public key and the time, never the seed.
        let dbg = format!("{s:?}");
        assert!(dbg.contains(&s.public().to_base64()), "{dbg}");
        assert!(!dbg.contains(&hex::encode(&bytes[1..33])), "{dbg}");
        assert!(!dbg.contains(&format!("{:?}", &bytes[1..33])), "{dbg}");
    }

    #[test]
    fn circle_secret_rejects_anything_else() {
        let bytes = CircleSecret::generate(7).to_bytes();
        for len in 0..bytes.len() + 2 {
            if len == SECRET_LEN {
                continue;
            }
            let mut b = bytes.to_vec();
            b.resize(len, 0);
            assert!(
                matches!(CircleSecret::from_bytes(&b), Err(Error::Malformed(_))),
                "{len}"
            );
        }
        let mut version = bytes.to_vec();
        version[0] = 2;
        assert!(matches!(
            CircleSecret::from_bytes(&version),
            Err(Error::Malformed(m)) if m.contains("version 2")
        ));
        // A flipped bit in the seed or the public key no longer matches.
        for i in (1..33).chain(41..SECRET_LEN) {
            let mut bad = bytes.to_vec();
            bad[i] ^= 0x01;
            assert!(
                matches!(CircleSecret::from_bytes(&bad), Err(Error::Malformed(m)) if m.contains("does not match")),
                "byte {i}"
            );
        }
    }

    #[test]
    fn sealed_secret_opens_only_with_its_identity() {
        let id = AgeIdentity::generate();
        let s = CircleSecret::generate(42);
        let sealed = seal_secret(&s, &id.to_public()).unwrap();
        assert!(crate::seal::is_age(&sealed));
        assert!(
            sealed.len() < MAX_SEALED_SECRET_BYTES / 4,
            "{}",
            sealed.len()
        );
        let back = open_secret(&sealed, &id).unwrap();
        assert_eq!(back.public(), s.public());
        assert_eq!(back.created_unix(), 42);
        assert!(matches!(
            open_secret(&sealed, &AgeIdentity::generate()),
            Err(Error::NotARecipient)
        ));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            open_secret(&tampered, &id),
            Err(Error::Corrupt(_))
        ));
        let mut big = sealed.clone();
        big.resize(MAX_SEALED_SECRET_BYTES + 1, b'\n');
        assert!(matches!(
            open_secret(&big, &id),
            Err(Error::Malformed(m)) if m.contains("cap")
        ));
        // An age file that holds something else is not a circle secret.
        let mut other = crate::seal::Sealer::new(&[id.to_public()], Vec::new()).unwrap();
        other.write_all(b"not a circle secret").unwrap();
        let other = other.finish().unwrap();
        assert!(matches!(open_secret(&other, &id), Err(Error::Malformed(_))));
    }

    #[test]
    fn succession_signed_by_the_old_circle() {
        let old = CircleSecret::generate(200);
        let new = CircleSecret::generate(100);
        let s = old.sign_succession("alice", &new.public(), new.created_unix());
        verify_succession(&s, &old.public()).unwrap();
        let back = Signed::<Succession>::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back.body().new, new.public());
        assert_eq!(back.body().old, old.public());
        assert_eq!(back.body().new_created_unix, 100);
        verify_succession(&back, &old.public()).unwrap();
        // Checked against another circle, or signed by one: refused.
        assert!(matches!(
            verify_succession(&s, &new.public()),
            Err(Error::WrongCircle)
        ));
        let forged = new.key().sign(Succession {
            user: "alice".into(),
            old: old.public(),
            new: new.public(),
            new_created_unix: 100,
        });
        assert!(matches!(
            verify_succession(&forged, &old.public()),
            Err(Error::WrongCircle)
        ));
        // Signed by old but naming another old circle: refused.
        let elsewhere = old.key().sign(Succession {
            user: "alice".into(),
            old: new.public(),
            new: new.public(),
            new_created_unix: 100,
        });
        assert!(matches!(
            verify_succession(&elsewhere, &old.public()),
            Err(Error::WrongCircle)
        ));
        let to_itself = old.sign_succession("alice", &old.public(), 200);
        assert!(matches!(
            verify_succession(&to_itself, &old.public()),
            Err(Error::Malformed(_))
        ));
        // A succession never verifies as an endorsement (domains differ).
        assert!(Signed::<Endorsement>::from_bytes(&s.to_bytes()).is_err());
    }

    #[test]
    fn the_earlier_circle_wins_then_the_smaller_key() {
        let k = |b: u8| PublicKey([b; 32]);
        assert_eq!(winner((&k(9), 1), (&k(1), 2)), Ordering::Less);
        assert_eq!(winner((&k(1), 2), (&k(9), 1)), Ordering::Greater);
        assert_eq!(winner((&k(1), 5), (&k(2), 5)), Ordering::Less);
        assert_eq!(winner((&k(2), 5), (&k(1), 5)), Ordering::Greater);
        assert_eq!(winner((&k(3), 5), (&k(3), 5)), Ordering::Equal);
        assert_eq!(winner((&k(3), 5), (&k(3), 6)), Ordering::Equal);
    }

    proptest! {
        #[test]
        fn both_sides_of_a_merge_agree(
            ka: [u8; 32], ta: u64, kb: [u8; 32], tb: u64,
            kc: [u8; 32], tc: u64, same_time: bool,
        ) {
            let tb = if same_time { ta } else { tb };
            let (a, b, c) = (PublicKey(ka), PublicKey(kb), PublicKey(kc));
            let ab = winner((&a, ta), (&b, tb));
            // Antisymmetric: each side, putting itself first, agrees.
            prop_assert_eq!(ab, winner((&b, tb), (&a, ta)).reverse());
            prop_assert_eq!(ab == Ordering::Equal, ka == kb);
            prop_assert_eq!(winner((&a, ta), (&a, ta)), Ordering::Equal);
            // Transitive, so a fleet of circles settles on one.
            let bc = winner((&b, tb), (&c, tc));
            if ab == Ordering::Less && bc == Ordering::Less && ka != kc {
                prop_assert_eq!(winner((&a, ta), (&c, tc)), Ordering::Less);
            }
            if ka != kb && ta != tb {
                prop_assert_eq!(ab == Ordering::Less, ta < tb);
            }
        }

        #[test]
        fn circle_secret_parse_never_panics(
            mut input in proptest::collection::vec(any::<u8>(), 0..100),
            version_one: bool,
        ) {
            // Half the inputs get past the version byte.
            if let (true, Some(first)) = (version_one, input.first_mut()) {
                *first = SECRET_VERSION;
            }
            match CircleSecret::from_bytes(&input) {
                Ok(s) => prop_assert_eq!(&s.to_bytes()[..], &input[..]),
                Err(e) => prop_assert!(matches!(e, Error::Malformed(_))),
            }
        }
    }
}
