//! The handover: what an envoy whose circle lost a merge leaves for each
//! other member of that circle, so that the member follows into the
//! winning circle even while it is locked (see `docs/protocol.md`,
//! "Joining", and `docs/formats-crypto.md`, "7.3 Succession").
//!
//! A [`Handover`] for member `m` holds:
//! - the [`Succession`] "the old circle continues as the new one", signed
//!   with the old circle's key (only a holder of the old secret, who knows
//!   the passphrase, can make it);
//! - `m`'s endorsement by the new circle (same envoy, recipient and signing
//!   key as its old one);
//! - the new circle's secret sealed with age to `m`'s recipient (`m` opens
//!   it at its next unlock; it is kept as `m`'s `circle.secret` as is);
//! - the new circle's hello key, so `m`'s hellos are sealed from the start.
//!
//! It travels only to a peer that proved, on that connection, that it is
//! `m` of the old circle. Pure: this module encodes, parses and checks; it
//! must not read files or decide when a handover is made or sent (that is
//! `replica::handover` and the hello).

use lockbox_crypto::circle::{
    verify_endorsement, verify_succession, Endorsement, Succession, MAX_SEALED_SECRET_BYTES,
};
use lockbox_crypto::hello::{HelloKey, KEY_FILE_LEN};
use lockbox_crypto::sign::{PublicKey, Signed, MAX_RECORD_BYTES};

/// Version byte of an encoded handover.
const VERSION: u8 = 1;
/// Largest encoded handover: two records, a sealed secret, a hello key and
/// their lengths. Longer input is refused before anything is parsed.
pub const MAX_HANDOVER_LEN: usize =
    1 + 3 * 4 + 2 * MAX_RECORD_BYTES + MAX_SEALED_SECRET_BYTES + KEY_FILE_LEN;

/// One member's way into the circle that won a merge.
#[derive(Debug)]
pub struct Handover {
    /// The old circle continues as the new one (signed by the old circle).
    pub succession: Signed<Succession>,
    /// The member's endorsement by the new circle.
    pub endorsement: Signed<Endorsement>,
    /// The new circle's secret, sealed with age to the member's recipient.
    pub sealed_secret: Vec<u8>,
    /// The new circle's hello key.
    pub hello_key: HelloKey,
}

/// Why a handover is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandoverError {
    /// Not a handover of version 1.
    #[error("not a handover of version {VERSION} ({len} bytes)")]
    Shape {
        /// Its length.
        len: usize,
    },
    /// A part of it is damaged.
    #[error("the handover's {part} is damaged: {why}")]
    Damaged {
        /// Which part.
        part: &'static str,
        /// Why.
        why: String,
    },
    /// It is well formed but not for this envoy in this circle.
    #[error("the handover is not for this envoy: {0}")]
    NotOurs(String),
}

impl Handover {
    /// The wire and file form: `0x01 || u32 len || succession || u32 len ||
    /// endorsement || u32 len || sealed secret || hello key`.
    pub fn encode(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = zeroize::Zeroizing::new(Vec::new());
        out.push(VERSION);
        for part in [
            self.succession.to_bytes(),
            self.endorsement.to_bytes(),
            self.sealed_secret.clone(),
        ] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(&part);
        }
        out.extend_from_slice(&self.hello_key.to_bytes());
        out
    }

    /// Parses [`Handover::encode`]'s output.
    ///
    /// # Errors
    ///
    /// [`HandoverError::Shape`] over [`MAX_HANDOVER_LEN`] bytes (not read)
    /// or when the lengths do not add up; [`HandoverError::Damaged`] when a
    /// part does not parse or a record's signature does not verify.
    pub fn parse(b: &[u8]) -> Result<Handover, HandoverError> {
        let shape = || HandoverError::Shape { len: b.len() };
        if b.len() > MAX_HANDOVER_LEN || b.first() != Some(&VERSION) {
            return Err(shape());
        }
        let mut rest = &b[1..];
        let mut part = |cap: usize| -> Result<&[u8], HandoverError> {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(shape)?;
            let len = u32::from_be_bytes(*len) as usize;
            if len > cap || len > tail.len() {
                return Err(shape());
            }
            let (p, tail) = tail.split_at(len);
            rest = tail;
            Ok(p)
        };
        let damaged = |part: &'static str| {
            move |e: lockbox_crypto::Error| HandoverError::Damaged {
                part,
                why: e.to_string(),
            }
        };
        let succession = Signed::<Succession>::from_bytes(part(MAX_RECORD_BYTES)?)
            .map_err(damaged("succession"))?;
        let endorsement = Signed::<Endorsement>::from_bytes(part(MAX_RECORD_BYTES)?)
            .map_err(damaged("endorsement"))?;
        let sealed_secret = part(MAX_SEALED_SECRET_BYTES)?.to_vec();
        if rest.len() != KEY_FILE_LEN {
            return Err(shape());
        }
        let hello_key = HelloKey::from_bytes(rest).map_err(damaged("hello key"))?;
        Ok(Handover {
            succession,
            endorsement,
            sealed_secret,
            hello_key,
        })
    }

    /// The circle this handover leads to.
    pub fn new_circle(&self) -> PublicKey {
        self.succession.body().new
    }

    /// Checks that this handover leads the envoy endorsed by `own` in the
    /// circle `old` into another circle: the succession is `old`'s, the new
    /// endorsement is the new circle's and endorses the same envoy with the
    /// same recipient and signing key, and the hello key is the new
    /// circle's.
    ///
    /// # Errors
    ///
    /// [`HandoverError::NotOurs`] saying which part does not hold.
    pub fn check(&self, old: &PublicKey, own: &Endorsement) -> Result<(), HandoverError> {
        let not = |why: &str| Err(HandoverError::NotOurs(why.to_owned()));
        if verify_succession(&self.succession, old).is_err() {
            return not("its succession is not signed by this envoy's circle");
        }
        let s = self.succession.body();
        if s.user != own.user {
            return not("it is another user's");
        }
        if verify_endorsement(&self.endorsement, &s.new).is_err() {
            return not("its endorsement is not the new circle's");
        }
        let e = self.endorsement.body();
        if (&e.user, &e.envoy, &e.recipient, &e.signing_key)
            != (&own.user, &own.envoy, &own.recipient, &own.signing_key)
        {
            return not("it endorses another envoy");
        }
        if self.hello_key.circle() != s.new {
            return not("its hello key is another circle's");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockbox_crypto::circle::CircleSecret;
    use lockbox_crypto::sign::SigningKey;
    use proptest::prelude::*;

    struct Case {
        old: CircleSecret,
        new: CircleSecret,
        own: Endorsement,
        handover: Handover,
    }

    fn case() -> Case {
        let old = CircleSecret::generate(200);
        let new = CircleSecret::generate(100);
        let identity = lockbox_crypto::identity::generate();
        let own = Endorsement {
            user: "alice".into(),
            envoy: "laptop".into(),
            recipient: identity.to_public().to_string(),
            signing_key: SigningKey::from_seed(&[5; 32]).public(),
            created_unix: 7,
        };
        let handover = Handover {
            succession: old.sign_succession("alice", &new.public(), new.created_unix()),
            endorsement: new.key().endorse(Endorsement {
                created_unix: 300,
                ..own.clone()
            }),
            sealed_secret: lockbox_crypto::circle::seal_secret(&new, &identity.to_public())
                .unwrap(),
            hello_key: HelloKey::of(&new).unwrap(),
        };
        Case {
            old,
            new,
            own,
            handover,
        }
    }

    #[test]
    fn a_handover_round_trips_and_leads_its_envoy_into_the_new_circle() {
        let c = case();
        let bytes = c.handover.encode();
        let back = Handover::parse(&bytes).unwrap();
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.new_circle(), c.new.public());
        back.check(&c.old.public(), &c.own).unwrap();
        for len in 0..bytes.len() {
            assert!(Handover::parse(&bytes[..len]).is_err(), "{len}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(Handover::parse(&longer).is_err());
    }

    #[test]
    fn a_handover_for_another_circle_or_envoy_is_refused() {
        let c = case();
        // Another circle's member.
        let stranger = CircleSecret::generate(1);
        assert!(c.handover.check(&stranger.public(), &c.own).is_err());
        // Another envoy of the same circle (another signing key, name or
        // recipient).
        for other in [
            Endorsement {
                signing_key: SigningKey::from_seed(&[6; 32]).public(),
                ..c.own.clone()
            },
            Endorsement {
                envoy: "desk".into(),
                ..c.own.clone()
            },
            Endorsement {
                recipient: lockbox_crypto::identity::generate().to_public().to_string(),
                ..c.own.clone()
            },
        ] {
            assert!(matches!(
                c.handover.check(&c.old.public(), &other),
                Err(HandoverError::NotOurs(_))
            ));
        }
        // A succession signed by someone else than the old circle.
        let forged = Handover {
            succession: stranger.sign_succession("alice", &c.new.public(), 100),
            ..Handover::parse(&c.handover.encode()).unwrap()
        };
        assert!(forged.check(&c.old.public(), &c.own).is_err());
        // An endorsement by another circle than the succession names.
        let wrong = Handover {
            endorsement: stranger.key().endorse(c.own.clone()),
            ..Handover::parse(&c.handover.encode()).unwrap()
        };
        assert!(wrong.check(&c.old.public(), &c.own).is_err());
        // A hello key of another circle.
        let wrong = Handover {
            hello_key: HelloKey::of(&stranger).unwrap(),
            ..Handover::parse(&c.handover.encode()).unwrap()
        };
        assert!(wrong.check(&c.old.public(), &c.own).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Handover::parse(&b);
        }

        #[test]
        fn a_flipped_bit_never_yields_a_handover_that_checks(at in any::<usize>(), bit in 0u8..8) {
            let c = case();
            let mut bytes = c.handover.encode().to_vec();
            let i = at % bytes.len();
            bytes[i] ^= 1 << bit;
            // A flip in the sealed secret is found only when it is opened
            // (age authenticates it), one in the hello key's 32 key bytes
            // when the first hello does not open (the next unlock writes
            // the key again from the secret); everything else fails here.
            let sealed_at = {
                let s = c.handover.succession.to_bytes().len();
                let e = c.handover.endorsement.to_bytes().len();
                1 + 4 + s + 4 + e + 4
            };
            let in_sealed = (sealed_at..sealed_at + c.handover.sealed_secret.len()).contains(&i);
            let key_at = bytes.len() - KEY_FILE_LEN + 1;
            let in_key = (key_at..key_at + 32).contains(&i);
            if !in_sealed && !in_key {
                prop_assert!(Handover::parse(&bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|h| h.check(&c.old.public(), &c.own).map_err(|e| e.to_string()))
                    .is_err());
            }
        }
    }
}
