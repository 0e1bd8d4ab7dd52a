//! What two envoys of different circles exchange once a join showed that
//! they know the same passphrase, and what each then does (see
//! `docs/protocol.md`, "Joining"): each side's [`Offer`] (its circle
//! secret and how many members its circle has), and the [`merge`] rule
//! that both sides apply to the two offers and that always gives them
//! complementary answers.
//!
//! Pure: the offers travel sealed under the join's keys
//! (`lockbox_crypto::join`); this module only encodes, parses and decides.

use lockbox_crypto::circle::{winner, CircleSecret, Endorsement, SECRET_LEN};
use lockbox_crypto::sign::{PublicKey, Signed, MAX_RECORD_BYTES};

/// Version byte of an encoded offer.
const OFFER_VERSION: u8 = 1;
/// Bytes of an encoded offer before the endorsement: version, member
/// count, circle secret, the endorsement's length.
pub const OFFER_LEN: usize = 1 + 4 + SECRET_LEN + 4;
/// Largest encoded offer.
pub const MAX_OFFER_LEN: usize = OFFER_LEN + MAX_RECORD_BYTES;

/// One side's circle, as offered in a join.
#[derive(Debug)]
pub struct Offer {
    /// The circle's secret.
    pub circle: CircleSecret,
    /// How many members the circle has, as the offering envoy knows them.
    pub members: u32,
    /// The offering envoy's own endorsement (in its own circle): what the
    /// winner endorses in its circle at once, so that it counts the envoy
    /// that adopts its circle before that envoy's first hello.
    pub endorsement: Signed<Endorsement>,
}

/// Why an offer does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OfferError {
    /// Not an offer of version 1 (its length, or its version byte).
    #[error("not a join offer of version {OFFER_VERSION} ({len} bytes)")]
    Shape {
        /// Its length.
        len: usize,
    },
    /// Its endorsement is not one.
    #[error("the offered endorsement is damaged: {0}")]
    Endorsement(String),
    /// Its circle secret is not one.
    #[error("the offered circle secret is damaged: {0}")]
    Circle(String),
}

impl Offer {
    /// The wire form (secret: it travels only sealed under a join's keys):
    /// `0x01 || members (u32) || circle secret || u32 len || endorsement`.
    pub fn encode(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let e = self.endorsement.to_bytes();
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(OFFER_LEN + e.len()));
        out.push(OFFER_VERSION);
        out.extend_from_slice(&self.members.to_be_bytes());
        out.extend_from_slice(&self.circle.to_bytes());
        out.extend_from_slice(&(e.len() as u32).to_be_bytes());
        out.extend_from_slice(&e);
        out
    }

    /// Parses [`Offer::encode`]'s output.
    ///
    /// # Errors
    ///
    /// [`OfferError`] for anything else.
    pub fn parse(b: &[u8]) -> Result<Offer, OfferError> {
        if b.len() < OFFER_LEN || b.len() > MAX_OFFER_LEN || b[0] != OFFER_VERSION {
            return Err(OfferError::Shape { len: b.len() });
        }
        let mut members = [0u8; 4];
        members.copy_from_slice(&b[1..5]);
        let secret_end = 5 + SECRET_LEN;
        let circle = CircleSecret::from_bytes(&b[5..secret_end])
            .map_err(|e| OfferError::Circle(e.to_string()))?;
        let mut len = [0u8; 4];
        len.copy_from_slice(&b[secret_end..OFFER_LEN]);
        if u32::from_be_bytes(len) as usize != b.len() - OFFER_LEN {
            return Err(OfferError::Shape { len: b.len() });
        }
        let endorsement = Signed::<Endorsement>::from_bytes(&b[OFFER_LEN..])
            .map_err(|e| OfferError::Endorsement(e.to_string()))?;
        Ok(Offer {
            circle,
            members: u32::from_be_bytes(members),
            endorsement,
        })
    }
}

/// What an envoy does with its own circle after a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Both offered the same circle: nothing to do.
    Same,
    /// Its own circle wins: keep it (the other side adopts it).
    Keep,
    /// The other circle wins: adopt it (and, if its own circle had other
    /// members, leave each a [`crate::handover::Handover`]).
    Adopt,
}

/// The merge rule, the same on both sides: with `own` and `theirs` as
/// `(public key, created, members)`, a circle of several members wins over
/// a circle of one (fewer envoys move); otherwise the one made earlier
/// wins, then the smaller public key ([`winner`]). `merge(a, b)` and
/// `merge(b, a)` are always complementary (`Keep` against `Adopt`, `Same`
/// against itself), and between two circles of several members each the
/// answer depends only on the circles, not on who counts how many: every
/// member of the losing circle that meets the winner moves the same way.
pub fn merge(own: (&PublicKey, u64, u32), theirs: (&PublicKey, u64, u32)) -> Merge {
    if own.0 == theirs.0 {
        return Merge::Same;
    }
    let by_age = || match winner((own.0, own.1), (theirs.0, theirs.1)) {
        std::cmp::Ordering::Greater => Merge::Adopt,
        _ => Merge::Keep,
    };
    match (own.2 > 1, theirs.2 > 1) {
        (true, false) => Merge::Keep,
        (false, true) => Merge::Adopt,
        _ => by_age(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> PublicKey {
        PublicKey([b; 32])
    }

    fn complement(m: Merge) -> Merge {
        match m {
            Merge::Keep => Merge::Adopt,
            Merge::Adopt => Merge::Keep,
            Merge::Same => Merge::Same,
        }
    }

    #[test]
    fn a_circle_of_several_wins_then_the_older() {
        let (a, b) = (key(1), key(2));
        assert_eq!(merge((&a, 5, 3), (&b, 1, 1)), Merge::Keep);
        assert_eq!(merge((&b, 1, 1), (&a, 5, 3)), Merge::Adopt);
        // Two circles of several: the older wins, whatever their sizes.
        assert_eq!(merge((&a, 5, 2), (&b, 1, 2)), Merge::Adopt);
        assert_eq!(merge((&b, 1, 2), (&a, 5, 9)), Merge::Keep);
        // Between circles of one, the older wins, then the smaller key.
        assert_eq!(merge((&b, 1, 1), (&a, 5, 1)), Merge::Keep);
        assert_eq!(merge((&b, 5, 1), (&a, 5, 1)), Merge::Adopt);
        assert_eq!(merge((&a, 5, 4), (&a, 5, 1)), Merge::Same);
    }

    fn endorsement() -> Signed<Endorsement> {
        let circle = CircleSecret::generate(1);
        circle.key().endorse(Endorsement {
            user: "alice".into(),
            envoy: "laptop".into(),
            recipient: "age1x".into(),
            signing_key: key(9),
            created_unix: 2,
        })
    }

    #[test]
    fn an_offer_round_trips_and_nothing_else_parses() {
        let o = Offer {
            circle: CircleSecret::generate(42),
            members: 3,
            endorsement: endorsement(),
        };
        let bytes = o.encode();
        let back = Offer::parse(&bytes).unwrap();
        assert_eq!(back.members, 3);
        assert_eq!(back.circle.public(), o.circle.public());
        assert_eq!(back.circle.created_unix(), 42);
        assert_eq!(back.endorsement, o.endorsement);
        let mut forged = bytes.to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(
            Offer::parse(&forged),
            Err(OfferError::Endorsement(_))
        ));
        for len in 0..bytes.len() {
            assert!(Offer::parse(&bytes[..len]).is_err(), "{len}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(Offer::parse(&longer).is_err());
        let mut flipped = bytes.to_vec();
        flipped[10] ^= 1;
        assert!(matches!(Offer::parse(&flipped), Err(OfferError::Circle(_))));
        let mut version = bytes.to_vec();
        version[0] = 2;
        assert!(Offer::parse(&version).is_err());
    }

    proptest! {
        #[test]
        fn both_sides_always_agree(
            a in any::<u8>(), b in any::<u8>(),
            ca in 0u64..4, cb in 0u64..4,
            ma in 0u32..4, mb in 0u32..4,
        ) {
            let (ka, kb) = (key(a), key(b));
            let ours = merge((&ka, ca, ma), (&kb, cb, mb));
            let theirs = merge((&kb, cb, mb), (&ka, ca, ma));
            prop_assert_eq!(theirs, complement(ours));
        }

        #[test]
        fn any_bytes_parse_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = Offer::parse(&b);
        }
    }
}
