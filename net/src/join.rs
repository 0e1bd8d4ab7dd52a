//! What two envoys of different circles exchange once a join showed that
//! they know the same passphrase, and what each then does (see
//! `docs/protocol.md`, "Joining"): each side's [`Offer`] (its circle
//! secret and how many members its circle has), and the [`merge`] rule
//! that both sides apply to the two offers and that always gives them
//! complementary answers.
//!
//! Pure: the offers travel sealed under the join's keys
//! (`lockbox_crypto::join`); this module only encodes, parses and decides.

use lockbox_crypto::circle::{winner, CircleSecret, SECRET_LEN};
use lockbox_crypto::sign::PublicKey;

/// Version byte of an encoded offer.
const OFFER_VERSION: u8 = 1;
/// Bytes of an encoded offer: version, member count, circle secret.
pub const OFFER_LEN: usize = 1 + 4 + SECRET_LEN;

/// One side's circle, as offered in a join.
#[derive(Debug)]
pub struct Offer {
    /// The circle's secret.
    pub circle: CircleSecret,
    /// How many members the circle has, as the offering envoy knows them.
    pub members: u32,
}

/// Why an offer does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OfferError {
    /// Not [`OFFER_LEN`] bytes of version 1.
    #[error("a join offer is {OFFER_LEN} bytes of version {OFFER_VERSION}; got {len} bytes")]
    Shape {
        /// Its length.
        len: usize,
    },
    /// Its circle secret is not one.
    #[error("the offered circle secret is damaged: {0}")]
    Circle(String),
}

impl Offer {
    /// The wire form (secret: it travels only sealed under a join's keys):
    /// `0x01 || members (u32) || circle secret`.
    pub fn encode(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(OFFER_LEN));
        out.push(OFFER_VERSION);
        out.extend_from_slice(&self.members.to_be_bytes());
        out.extend_from_slice(&self.circle.to_bytes());
        out
    }

    /// Parses [`Offer::encode`]'s output.
    ///
    /// # Errors
    ///
    /// [`OfferError`] for anything else.
    pub fn parse(b: &[u8]) -> Result<Offer, OfferError> {
        if b.len() != OFFER_LEN || b[0] != OFFER_VERSION {
            return Err(OfferError::Shape { len: b.len() });
        }
        let mut members = [0u8; 4];
        members.copy_from_slice(&b[1..5]);
        let circle =
            CircleSecret::from_bytes(&b[5..]).map_err(|e| OfferError::Circle(e.to_string()))?;
        Ok(Offer {
            circle,
            members: u32::from_be_bytes(members),
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
    /// The other circle wins: adopt it.
    Adopt,
    /// Both circles have several members: they stay apart (merging two
    /// circles of several envoys each is not done; `status` says so).
    Apart,
}

/// The merge rule, the same on both sides: with `own` and `theirs` as
/// `(public key, created, members)`, a circle of several members wins over
/// a circle of one; between two circles of one, the one made earlier wins,
/// then the smaller public key ([`winner`]); two circles of several members
/// each stay apart. `merge(a, b)` and `merge(b, a)` are always
/// complementary: `Keep` against `Adopt`, `Same` and `Apart` against
/// themselves.
pub fn merge(own: (&PublicKey, u64, u32), theirs: (&PublicKey, u64, u32)) -> Merge {
    if own.0 == theirs.0 {
        return Merge::Same;
    }
    match (own.2 > 1, theirs.2 > 1) {
        (true, true) => Merge::Apart,
        (true, false) => Merge::Keep,
        (false, true) => Merge::Adopt,
        (false, false) => match winner((own.0, own.1), (theirs.0, theirs.1)) {
            std::cmp::Ordering::Greater => Merge::Adopt,
            _ => Merge::Keep,
        },
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
            other => other,
        }
    }

    #[test]
    fn a_circle_of_several_wins_and_two_stay_apart() {
        let (a, b) = (key(1), key(2));
        assert_eq!(merge((&a, 5, 3), (&b, 1, 1)), Merge::Keep);
        assert_eq!(merge((&b, 1, 1), (&a, 5, 3)), Merge::Adopt);
        assert_eq!(merge((&a, 5, 2), (&b, 1, 2)), Merge::Apart);
        // Between circles of one, the older wins, then the smaller key.
        assert_eq!(merge((&b, 1, 1), (&a, 5, 1)), Merge::Keep);
        assert_eq!(merge((&b, 5, 1), (&a, 5, 1)), Merge::Adopt);
        assert_eq!(merge((&a, 5, 4), (&a, 5, 1)), Merge::Same);
    }

    #[test]
    fn an_offer_round_trips_and_nothing_else_parses() {
        let o = Offer {
            circle: CircleSecret::generate(42),
            members: 3,
        };
        let bytes = o.encode();
        let back = Offer::parse(&bytes).unwrap();
        assert_eq!(back.members, 3);
        assert_eq!(back.circle.public(), o.circle.public());
        assert_eq!(back.circle.created_unix(), 42);
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
