//! The multicast discovery datagram, wire version 1 (see
//! `docs/protocol.md`, "2. Announcement datagram").
//!
//! Every agent periodically multicasts an [`Announcement`]: who it is (user,
//! envoy, age recipient, signing key), where its peer server listens, a
//! per-run instance id, and digests of its four tables. This module only
//! turns announcements into bytes and back; sending and receiving belong to
//! the socket layer.
//!
//! An announcement is a **hint**. Nothing in it is trusted: it tells a peer
//! where to connect and whether a table may be worth pulling, and everything
//! that matters (membership, keys, content) is checked over the mutual-TLS
//! connection that follows. Parsing is still strict, because the datagram
//! comes from anyone on the network segment: the length is capped before
//! any byte is read, every field has an explicit length, and unknown
//! versions, trailing bytes and malformed text are refused.
//!
//! The byte layout is in `docs/protocol.md` ("Announcement datagram").

use std::num::NonZeroU16;

use crate::codec::{put_short_bytes, Reader};
use crate::name::{check_text, text_from_wire, TextFault, WireName};
use crate::Error;

/// The first four bytes of every announcement.
pub const MAGIC: [u8; 4] = *b"LBXA";

/// The wire version this build writes and reads.
pub const VERSION: u8 = 1;

/// The longest datagram accepted, in bytes. Longer input is refused before
/// it is parsed. A version-1 announcement is at most 370 bytes.
pub const MAX_DATAGRAM_LEN: usize = 1024;

/// The length of each table digest, in bytes.
pub const DIGEST_LEN: usize = 16;

/// The length of an Ed25519 public key, in bytes.
pub const SIGNING_KEY_LEN: usize = 32;

/// What parse errors call the input.
const WHAT: &str = "announcement";

/// An age recipient as announced on the wire: text of the right shape
/// (`age1…`), not a parsed key — that is [`lockbox_crypto::AgeRecipient`],
/// whose name this type used to share.
///
/// Only its shape is checked here: at most 128 bytes, `age1` followed by
/// lowercase letters and digits. Whether it is a valid X25519 key, and
/// whether it belongs to a member, is decided after the mTLS exchange.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnnouncedRecipient(String);

impl AnnouncedRecipient {
    /// The longest recipient, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Check the shape of `recipient`.
    ///
    /// # Errors
    ///
    /// [`Error::BadText`] saying which rule it breaks.
    pub fn new(recipient: impl Into<String>) -> Result<Self, Error> {
        let recipient = recipient.into();
        Self::check(&recipient).map_err(|fault| Error::BadText {
            field: "age recipient",
            fault,
        })?;
        Ok(AnnouncedRecipient(recipient))
    }

    fn check(recipient: &str) -> Result<(), TextFault> {
        check_text(recipient, Self::MAX_LEN)?;
        let body = recipient
            .strip_prefix("age1")
            .ok_or(TextFault::NotAgeRecipient)?;
        if body.is_empty()
            || !body
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(TextFault::BadRecipientCharacters);
        }
        Ok(())
    }

    /// The recipient as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The recipient as an owned `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for AnnouncedRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Digests of the four replicated tables, as announced.
///
/// A digest that differs from the receiver's own says "pull this table";
/// equal digests mean there is nothing to catch up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Digests {
    /// The file manifest.
    pub files: [u8; DIGEST_LEN],
    /// The tombstone (DELETE) table.
    pub tombstones: [u8; DIGEST_LEN],
    /// The LEAVE/EVICT table.
    pub leaves: [u8; DIGEST_LEN],
    /// The resurrect table.
    pub resurrects: [u8; DIGEST_LEN],
}

/// One discovery datagram.
///
/// Every field is valid by construction (the text fields by their types, the
/// port by being non-zero), so [`Announcement::encode`] cannot fail and its
/// output always parses back to the same value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Announcement {
    /// The user whose lockbox this agent serves.
    pub user: WireName,
    /// The sending envoy's name.
    pub envoy: WireName,
    /// The sending envoy's age recipient.
    pub recipient: AnnouncedRecipient,
    /// The sending envoy's Ed25519 public signing key.
    pub signing_key: [u8; SIGNING_KEY_LEN],
    /// The TCP port of the sender's mTLS peer server.
    pub peer_port: NonZeroU16,
    /// A random number the agent picks afresh each time it starts: it lets an
    /// agent recognise its own announcements and lets peers notice restarts.
    pub instance_id: u64,
    /// Digests of the sender's tables.
    pub digests: Digests,
}

impl Announcement {
    /// The datagram bytes, in wire version [`VERSION`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            4 + 1
                + 3
                + self.user.as_str().len()
                + self.envoy.as_str().len()
                + self.recipient.as_str().len()
                + SIGNING_KEY_LEN
                + 2
                + 8
                + 4 * DIGEST_LEN,
        );
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        put_short_bytes(&mut out, self.user.as_str().as_bytes());
        put_short_bytes(&mut out, self.envoy.as_str().as_bytes());
        put_short_bytes(&mut out, self.recipient.as_str().as_bytes());
        out.extend_from_slice(&self.signing_key);
        out.extend_from_slice(&self.peer_port.get().to_be_bytes());
        out.extend_from_slice(&self.instance_id.to_be_bytes());
        out.extend_from_slice(&self.digests.files);
        out.extend_from_slice(&self.digests.tombstones);
        out.extend_from_slice(&self.digests.leaves);
        out.extend_from_slice(&self.digests.resurrects);
        out
    }

    /// Parse a received datagram.
    ///
    /// # Errors
    ///
    /// - [`Error::TooLarge`] for more than [`MAX_DATAGRAM_LEN`] bytes (checked
    ///   before anything else);
    /// - [`Error::BadMagic`] if it does not start with [`MAGIC`];
    /// - [`Error::UnsupportedVersion`] for any version but [`VERSION`];
    /// - [`Error::Truncated`] if it ends inside a field;
    /// - [`Error::TrailingBytes`] if anything follows the last field;
    /// - [`Error::BadText`] for a user or envoy name or recipient that breaks
    ///   its rules (too long, not UTF-8, NUL, `/`, …);
    /// - [`Error::ZeroPort`] for peer port 0.
    pub fn parse(datagram: &[u8]) -> Result<Announcement, Error> {
        if datagram.len() > MAX_DATAGRAM_LEN {
            return Err(Error::TooLarge {
                what: WHAT,
                len: datagram.len(),
                max: MAX_DATAGRAM_LEN,
            });
        }
        let mut r = Reader::new(datagram, WHAT);
        let magic = r.array::<4>("the magic bytes")?;
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let version = r.u8("the version byte")?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        let user = read_name(&mut r, "the user name", "announced user name")?;
        let envoy = read_name(&mut r, "the envoy name", "announced envoy name")?;
        let recipient = read_recipient(&mut r)?;
        let signing_key = r.array("the signing key")?;
        let peer_port = NonZeroU16::new(r.u16("the peer port")?).ok_or(Error::ZeroPort)?;
        let instance_id = r.u64("the instance id")?;
        let digests = Digests {
            files: r.array("the files digest")?,
            tombstones: r.array("the tombstones digest")?,
            leaves: r.array("the leaves digest")?,
            resurrects: r.array("the resurrects digest")?,
        };
        r.finish()?;
        Ok(Announcement {
            user,
            envoy,
            recipient,
            signing_key,
            peer_port,
            instance_id,
            digests,
        })
    }

    /// Whether this announcement was sent by the agent run whose instance id
    /// is `instance_id` — that is, whether it is our own, looped back by the
    /// multicast group, and should be ignored.
    pub fn is_own(&self, instance_id: u64) -> bool {
        self.instance_id == instance_id
    }
}

/// A length byte and that many bytes of name. The length is checked against
/// the cap before the bytes are read.
fn read_name(
    r: &mut Reader<'_>,
    field: &'static str,
    label: &'static str,
) -> Result<WireName, Error> {
    let len = usize::from(r.u8(field)?);
    if len > WireName::MAX_LEN {
        return Err(Error::BadText {
            field: label,
            fault: TextFault::TooLong {
                len,
                max: WireName::MAX_LEN,
            },
        });
    }
    WireName::from_wire(r.take(len, field)?, label)
}

/// A length byte and that many bytes of age recipient.
fn read_recipient(r: &mut Reader<'_>) -> Result<AnnouncedRecipient, Error> {
    const FIELD: &str = "the age recipient";
    const LABEL: &str = "announced age recipient";
    let len = usize::from(r.u8(FIELD)?);
    if len > AnnouncedRecipient::MAX_LEN {
        return Err(Error::BadText {
            field: LABEL,
            fault: TextFault::TooLong {
                len,
                max: AnnouncedRecipient::MAX_LEN,
            },
        });
    }
    let text = text_from_wire(
        r.take(len, FIELD)?,
        AnnouncedRecipient::MAX_LEN,
        LABEL,
        AnnouncedRecipient::check,
    )?;
    Ok(AnnouncedRecipient(text.to_owned()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    const RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    /// A valid announcement (the fuzz corpus seeds from it too).
    pub(crate) fn sample() -> Announcement {
        Announcement {
            user: WireName::new("alice").unwrap(),
            envoy: WireName::new("laptop").unwrap(),
            recipient: AnnouncedRecipient::new(RECIPIENT).unwrap(),
            signing_key: [7; 32],
            peer_port: NonZeroU16::new(1531).unwrap(),
            instance_id: 0x0102_0304_0506_0708,
            digests: Digests {
                files: [0xf1; 16],
                tombstones: [0x70; 16],
                leaves: [0x1e; 16],
                resurrects: [0x2e; 16],
            },
        }
    }

    /// A datagram built field by field, without the encoder's checks, so
    /// tests can put anything in any field.
    struct Raw {
        magic: Vec<u8>,
        version: u8,
        user: Vec<u8>,
        envoy: Vec<u8>,
        recipient: Vec<u8>,
        port: u16,
    }

    impl Raw {
        fn valid() -> Self {
            Raw {
                magic: b"LBXA".to_vec(),
                version: 1,
                user: b"alice".to_vec(),
                envoy: b"laptop".to_vec(),
                recipient: RECIPIENT.as_bytes().to_vec(),
                port: 1531,
            }
        }

        fn bytes(&self) -> Vec<u8> {
            let mut out = self.magic.clone();
            out.push(self.version);
            for text in [&self.user, &self.envoy, &self.recipient] {
                out.push(text.len() as u8);
                out.extend_from_slice(text);
            }
            out.extend_from_slice(&[7; 32]);
            out.extend_from_slice(&self.port.to_be_bytes());
            out.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
            for fill in [0xf1, 0x70, 0x1e, 0x2e] {
                out.extend_from_slice(&[fill; 16]);
            }
            out
        }
    }

    fn text_fault(result: Result<Announcement, Error>) -> (&'static str, TextFault) {
        match result {
            Err(Error::BadText { field, fault }) => (field, fault),
            other => panic!("expected BadText, got {other:?}"),
        }
    }

    #[test]
    fn layout_is_pinned() {
        // The raw builder writes the layout of docs/protocol.md by hand; the
        // encoder must agree byte for byte.
        assert_eq!(sample().encode(), Raw::valid().bytes());
        assert_eq!(Announcement::parse(&Raw::valid().bytes()), Ok(sample()));
        let bytes = sample().encode();
        assert_eq!(&bytes[..6], b"LBXA\x01\x05");
        assert_eq!(bytes.len(), 114 + 5 + 6 + RECIPIENT.len());
    }

    #[test]
    fn largest_announcement_fits_well_under_the_cap() {
        let a = Announcement {
            user: WireName::new("u".repeat(64)).unwrap(),
            envoy: WireName::new("e".repeat(64)).unwrap(),
            recipient: AnnouncedRecipient::new(format!("age1{}", "q".repeat(124))).unwrap(),
            ..sample()
        };
        let bytes = a.encode();
        assert_eq!(bytes.len(), 370);
        assert_eq!(Announcement::parse(&bytes), Ok(a));
    }

    #[test]
    fn every_truncation_fails() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(
                matches!(
                    Announcement::parse(&bytes[..n]),
                    Err(Error::Truncated { .. })
                ),
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn trailing_byte_is_rejected() {
        let mut bytes = sample().encode();
        bytes.push(0);
        assert_eq!(
            Announcement::parse(&bytes),
            Err(Error::TrailingBytes {
                what: "announcement",
                count: 1
            })
        );
    }

    #[test]
    fn future_version_is_rejected_by_number() {
        let mut bytes = sample().encode();
        bytes[4] = 2;
        let err = Announcement::parse(&bytes).unwrap_err();
        assert_eq!(
            err,
            Error::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        );
        assert!(err.to_string().contains("version 2"), "{err}");
        // Whatever follows the version byte is not looked at.
        assert_eq!(
            Announcement::parse(b"LBXA\x07"),
            Err(Error::UnsupportedVersion {
                found: 7,
                supported: 1
            })
        );
        assert!(matches!(
            Announcement::parse(b"LBXA\x00"),
            Err(Error::UnsupportedVersion { found: 0, .. })
        ));
    }

    #[test]
    fn bad_magic_is_rejected() {
        let mut raw = Raw::valid();
        raw.magic = b"LBXB".to_vec();
        assert_eq!(
            Announcement::parse(&raw.bytes()),
            Err(Error::BadMagic { found: *b"LBXB" })
        );
    }

    #[test]
    fn oversize_is_rejected_before_parsing() {
        // A valid datagram padded past the cap: refused for its size, not for
        // the trailing bytes.
        let mut bytes = sample().encode();
        bytes.resize(MAX_DATAGRAM_LEN + 1, 0);
        assert_eq!(
            Announcement::parse(&bytes),
            Err(Error::TooLarge {
                what: "announcement",
                len: 1025,
                max: 1024
            })
        );
        let garbage = vec![0xffu8; 4096];
        assert!(matches!(
            Announcement::parse(&garbage),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn port_zero_is_rejected() {
        let mut raw = Raw::valid();
        raw.port = 0;
        assert_eq!(Announcement::parse(&raw.bytes()), Err(Error::ZeroPort));
    }

    #[test]
    fn bad_names_are_rejected() {
        let cases: [(&[u8], TextFault); 7] = [
            (b"", TextFault::Empty),
            (&[b'x'; 65], TextFault::TooLong { len: 65, max: 64 }),
            (b"al\xffce", TextFault::NotUtf8),
            (b"al\0ce", TextFault::ContainsNul),
            (b"../etc", TextFault::ContainsSlash),
            (b"al\nce", TextFault::ContainsControl),
            (b"..", TextFault::DotName),
        ];
        for (bad, want) in cases {
            let mut raw = Raw::valid();
            raw.user = bad.to_vec();
            assert_eq!(
                text_fault(Announcement::parse(&raw.bytes())),
                ("announced user name", want),
                "user {bad:?}"
            );
            let mut raw = Raw::valid();
            raw.envoy = bad.to_vec();
            assert_eq!(
                text_fault(Announcement::parse(&raw.bytes())),
                ("announced envoy name", want),
                "envoy {bad:?}"
            );
        }
    }

    #[test]
    fn bad_recipients_are_rejected() {
        let long = format!("age1{}", "q".repeat(125));
        let cases: [(&[u8], TextFault); 9] = [
            (b"", TextFault::Empty),
            (long.as_bytes(), TextFault::TooLong { len: 129, max: 128 }),
            (b"age1\xff", TextFault::NotUtf8),
            (b"age1q\0q", TextFault::ContainsNul),
            (b"age1q/q", TextFault::ContainsSlash),
            (b"AGE1QQQ", TextFault::NotAgeRecipient),
            (b"ssh-ed25519", TextFault::NotAgeRecipient),
            (b"age1", TextFault::BadRecipientCharacters),
            (b"age1q q", TextFault::BadRecipientCharacters),
        ];
        for (bad, want) in cases {
            let mut raw = Raw::valid();
            raw.recipient = bad.to_vec();
            assert_eq!(
                text_fault(Announcement::parse(&raw.bytes())),
                ("announced age recipient", want),
                "recipient {bad:?}"
            );
        }
    }

    #[test]
    fn over_long_length_byte_is_rejected_before_reading() {
        // A length byte of 200 for the user name, with fewer bytes behind it:
        // refused as too long, not as truncated.
        let mut bytes = b"LBXA\x01".to_vec();
        bytes.push(200);
        bytes.extend_from_slice(b"abc");
        assert_eq!(
            text_fault(Announcement::parse(&bytes)),
            (
                "announced user name",
                TextFault::TooLong { len: 200, max: 64 }
            )
        );
    }

    #[test]
    fn is_own_compares_instance_ids() {
        let a = sample();
        assert!(a.is_own(0x0102_0304_0506_0708));
        assert!(!a.is_own(0x0102_0304_0506_0709));
    }

    #[test]
    fn error_messages_are_readable() {
        let err = Announcement::parse(b"LBXA\x01\x05ali").unwrap_err();
        assert_eq!(
            err.to_string(),
            "announcement is truncated: it ends inside the user name; the sender is \
             damaged or is not lockbox"
        );
    }

    /// Names that obey every rule, including multi-byte ones.
    fn wire_name() -> impl Strategy<Value = WireName> {
        "\\PC{1,16}".prop_filter_map("not a valid name", |s| {
            WireName::new(s.replace('/', "_")).ok()
        })
    }

    fn recipient() -> impl Strategy<Value = AnnouncedRecipient> {
        "age1[a-z0-9]{1,124}".prop_map(|s| AnnouncedRecipient::new(s).unwrap())
    }

    fn announcement() -> impl Strategy<Value = Announcement> {
        (
            (wire_name(), wire_name(), recipient()),
            any::<[u8; 32]>(),
            1..=u16::MAX,
            any::<u64>(),
            any::<[[u8; 16]; 4]>(),
        )
            .prop_map(
                |((user, envoy, recipient), signing_key, port, instance_id, d)| Announcement {
                    user,
                    envoy,
                    recipient,
                    signing_key,
                    peer_port: NonZeroU16::new(port).unwrap(),
                    instance_id,
                    digests: Digests {
                        files: d[0],
                        tombstones: d[1],
                        leaves: d[2],
                        resurrects: d[3],
                    },
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(a in announcement()) {
            let bytes = a.encode();
            prop_assert!(bytes.len() <= 370);
            prop_assert_eq!(Announcement::parse(&bytes), Ok(a));
        }

        #[test]
        fn truncations_of_any_valid_datagram_fail(a in announcement(), cut in any::<prop::sample::Index>()) {
            let bytes = a.encode();
            let n = cut.index(bytes.len());
            prop_assert!(Announcement::parse(&bytes[..n]).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Announcement::parse(&bytes);
        }

        #[test]
        fn garbage_after_a_valid_header_never_panics(tail in prop::collection::vec(any::<u8>(), 0..512)) {
            // Starting with magic and version gets the garbage past the first
            // checks, into the field parsers.
            let mut bytes = b"LBXA\x01".to_vec();
            bytes.extend_from_slice(&tail);
            if let Ok(a) = Announcement::parse(&bytes) {
                // Anything accepted is canonical: it encodes to the same bytes.
                prop_assert_eq!(a.encode(), bytes);
            }
        }

        #[test]
        fn single_byte_corruption_never_panics(a in announcement(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = a.encode();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            if let Ok(b) = Announcement::parse(&bytes) {
                prop_assert_eq!(b.encode(), bytes);
            }
        }
    }
}
