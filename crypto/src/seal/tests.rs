//! Tests of sealing, opening, header caps and length arithmetic, all in memory.

use super::*;
use proptest::prelude::*;
use rand::{rngs::StdRng, RngCore, SeedableRng};
use std::io::Cursor;

const C: usize = CHUNK_SIZE as usize;

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn seal_to(recipients: &[AgeRecipient], plaintext: &[u8]) -> Vec<u8> {
    let (n, out) = seal_stream(recipients, plaintext, Vec::new()).unwrap();
    assert_eq!(n, plaintext.len() as u64);
    out
}

fn keypair() -> (AgeIdentity, AgeRecipient) {
    let id = AgeIdentity::generate();
    let r = id.to_public();
    (id, r)
}

/// Header length as found by looking for the MAC line directly.
fn real_header_len(file: &[u8]) -> u64 {
    let at = file.windows(5).position(|w| w == b"\n--- ").unwrap();
    let nl = file[at + 1..].iter().position(|&b| b == b'\n').unwrap();
    (at + 1 + nl + 1) as u64
}

/// A tampered or truncated file must fail at open or with an
/// authentication error while reading; it must never read back fully.
fn assert_rejected(id: &AgeIdentity, file: &[u8], what: &str) {
    match Opened::open(id, Cursor::new(file)) {
        Err(_) => {}
        Ok(mut opened) => {
            let mut out = Vec::new();
            let e = opened
                .read_to_end(&mut out)
                .expect_err(&format!("{what}: read back OK"));
            assert!(is_auth_failure(&e), "{what}: {e:?}");
        }
    }
    assert!(open_to_vec(id, Cursor::new(file)).is_err(), "{what}");
}

fn round_trip(len: usize, seed: u64) {
    let (id, r) = keypair();
    let pt = data(len, seed);
    let file = seal_to(&[r], &pt);
    let header_len = real_header_len(&file);
    assert_eq!(
        scan_header(&file).unwrap(),
        HeaderInfo {
            header_len,
            stanzas: 2 // ours plus age's grease stanza
        }
    );
    assert_eq!(
        file.len() as u64,
        ciphertext_len(header_len, len as u64),
        "len {len}"
    );
    assert_eq!(
        plaintext_len(header_len, file.len() as u64).unwrap(),
        len as u64
    );
    let opened = Opened::open(&id, Cursor::new(&file)).unwrap();
    assert_eq!(opened.plaintext_len(), len as u64);
    assert_eq!(opened.header_len(), header_len);
    assert_eq!(&open_to_vec(&id, Cursor::new(&file)).unwrap()[..], &pt[..]);
}

#[test]
fn round_trip_edge_sizes() {
    for (i, len) in [0, 1, 15, 16, 17, C - 1, C, C + 1, 2 * C, 3 * C + 5]
        .into_iter()
        .enumerate()
    {
        round_trip(len, i as u64);
    }
}

#[test]
fn sealer_accepts_small_writes() {
    let (id, r) = keypair();
    let pt = data(C + 100, 9);
    let mut sealer = Sealer::new(&[r], Vec::new()).unwrap();
    for piece in pt.chunks(777) {
        sealer.write_all(piece).unwrap();
    }
    sealer.flush().unwrap();
    let file = sealer.finish().unwrap();
    assert_eq!(&open_to_vec(&id, Cursor::new(&file)).unwrap()[..], &pt[..]);
}

#[test]
fn open_respects_start_position() {
    let (id, r) = keypair();
    let pt = data(1000, 3);
    let mut buf = b"PREFIX".to_vec();
    buf.extend(seal_to(&[r], &pt));
    let mut cursor = Cursor::new(&buf);
    cursor.set_position(6);
    assert_eq!(&open_to_vec(&id, cursor).unwrap()[..], &pt[..]);
}

#[test]
fn empty_recipients_is_an_error() {
    assert!(matches!(
        Sealer::new(&[], Vec::new()),
        Err(Error::NoRecipients)
    ));
    assert!(matches!(
        seal_stream(&[], &b"x"[..], Vec::new()),
        Err(Error::NoRecipients)
    ));
}

#[test]
fn every_recipient_opens_and_a_stranger_cannot() {
    let pairs: Vec<_> = (0..3).map(|_| keypair()).collect();
    let recipients: Vec<_> = pairs.iter().map(|(_, r)| r.clone()).collect();
    let pt = data(5000, 4);
    let file = seal_to(&recipients, &pt);
    assert_eq!(scan_header(&file).unwrap().stanzas, 4);
    for (id, _) in &pairs {
        assert_eq!(&open_to_vec(id, Cursor::new(&file)).unwrap()[..], &pt[..]);
    }
    let (stranger, _) = keypair();
    assert!(matches!(
        Opened::open(&stranger, Cursor::new(&file)),
        Err(Error::NotARecipient)
    ));
}

#[test]
fn recipient_cap_matches_stanza_cap() {
    let pairs: Vec<_> = (0..MAX_RECIPIENTS + 1).map(|_| keypair()).collect();
    let recipients: Vec<_> = pairs.iter().map(|(_, r)| r.clone()).collect();
    assert!(matches!(
        Sealer::new(&recipients, Vec::new()),
        Err(Error::TooManyRecipients(n)) if n == MAX_RECIPIENTS + 1
    ));
    // The largest allowed set, plus age's grease stanza, still opens.
    let file = seal_to(&recipients[..MAX_RECIPIENTS], b"hi");
    let info = scan_header(&file).unwrap();
    assert_eq!(info.stanzas, MAX_STANZAS);
    assert!(info.header_len < MAX_HEADER_BYTES as u64);
    let last = &pairs[MAX_RECIPIENTS - 1].0;
    assert_eq!(&open_to_vec(last, Cursor::new(&file)).unwrap()[..], b"hi");
}

#[test]
fn interop_with_age_library_both_ways() {
    let (id, r) = keypair();
    let pt = data(2 * C + 3, 5);

    // Ours -> age.
    let file = seal_to(std::slice::from_ref(&r), &pt);
    let decryptor = age::Decryptor::new(&file[..]).unwrap();
    let mut reader = decryptor
        .decrypt(iter::once(&id as &dyn age::Identity))
        .unwrap();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    assert_eq!(out, pt);

    // age -> ours.
    let encryptor = Encryptor::with_recipients(iter::once(&r as &dyn age::Recipient)).unwrap();
    let mut file = Vec::new();
    let mut w = encryptor.wrap_output(&mut file).unwrap();
    w.write_all(&pt).unwrap();
    w.finish().unwrap();
    assert_eq!(&open_to_vec(&id, Cursor::new(&file)).unwrap()[..], &pt[..]);
}

#[test]
fn every_flipped_byte_of_a_small_file_is_rejected() {
    let (id, r) = keypair();
    let pt = data(100, 6);
    let file = seal_to(&[r], &pt);
    for i in 0..file.len() {
        let mut bad = file.clone();
        bad[i] ^= 1 << (i % 8);
        assert_rejected(&id, &bad, &format!("flip at {i}"));
    }
}

#[test]
fn every_truncation_of_a_small_file_is_rejected() {
    let (id, r) = keypair();
    let file = seal_to(&[r], &data(100, 7));
    for len in 0..file.len() {
        assert_rejected(&id, &file[..len], &format!("truncated to {len}"));
    }
}

#[test]
fn truncation_at_chunk_boundaries_is_rejected() {
    let (id, r) = keypair();
    for pt_len in [C, 2 * C, 2 * C + 1, 3 * C] {
        let file = seal_to(std::slice::from_ref(&r), &data(pt_len, 8));
        let body = real_header_len(&file) as usize + NONCE_LEN as usize;
        let mut cut = body;
        while cut < file.len() {
            for len in [cut, cut + 1, cut + TAG_LEN as usize, cut.saturating_sub(1)] {
                if len < file.len() {
                    assert_rejected(&id, &file[..len], &format!("{pt_len} cut to {len}"));
                }
            }
            cut += ENCRYPTED_CHUNK_SIZE as usize;
        }
        // Dropping a whole middle chunk is caught too.
        if pt_len > 2 * C {
            let mut spliced = file[..body + ENCRYPTED_CHUNK_SIZE as usize].to_vec();
            spliced.extend_from_slice(&file[body + 2 * ENCRYPTED_CHUNK_SIZE as usize..]);
            assert_rejected(&id, &spliced, "chunk removed");
        }
    }
}

#[test]
fn trailing_garbage_is_rejected() {
    let (id, r) = keypair();
    for pt_len in [0, 10, C] {
        let mut file = seal_to(std::slice::from_ref(&r), &data(pt_len, 10));
        file.push(0);
        assert_rejected(&id, &file, "one extra byte");
    }
}

#[test]
fn read_errors_are_invalid_data_and_carry_no_plaintext() {
    let (id, r) = keypair();
    let pt = data(3 * C, 11);
    let mut file = seal_to(&[r], &pt);
    // Corrupt the middle chunk; the last chunk (checked at open) is intact.
    let mid =
        real_header_len(&file) as usize + NONCE_LEN as usize + ENCRYPTED_CHUNK_SIZE as usize + 10;
    file[mid] ^= 0x80;
    let mut opened = Opened::open(&id, Cursor::new(&file)).unwrap();
    let mut first = vec![0u8; C];
    opened.read_exact(&mut first).unwrap();
    assert_eq!(first, pt[..C]);
    let mut buf = vec![0u8; 100];
    let e = opened.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(is_auth_failure(&e));
    assert!(buf.iter().all(|&b| b == 0), "no bytes of the bad chunk");
    // The handle is now poisoned: every further call fails the same way.
    assert!(is_auth_failure(&opened.read(&mut buf).unwrap_err()));
    assert!(is_auth_failure(
        &opened.seek(SeekFrom::Start(2 * C as u64)).unwrap_err()
    ));
    // A fresh handle reads around the bad chunk; seeking into it fails.
    let mut opened = Opened::open(&id, Cursor::new(&file)).unwrap();
    opened.seek(SeekFrom::Start(2 * C as u64)).unwrap();
    let mut last = Vec::new();
    opened.read_to_end(&mut last).unwrap();
    assert_eq!(last, pt[2 * C..]);
    let e = opened.seek(SeekFrom::Start(C as u64 + 5)).unwrap_err();
    assert!(is_auth_failure(&e));
    assert!(matches!(
        open_to_vec(&id, Cursor::new(&file)),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn seek_variants_and_past_end() {
    let (id, r) = keypair();
    let pt = data(2 * C + 10, 12);
    let file = seal_to(&[r], &pt);
    let mut o = Opened::open(&id, Cursor::new(&file)).unwrap();
    assert_eq!(o.seek(SeekFrom::End(-10)).unwrap(), 2 * C as u64);
    let mut tail = Vec::new();
    o.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, pt[2 * C..]);
    assert_eq!(
        o.seek(SeekFrom::Current(-(C as i64) - 10)).unwrap(),
        C as u64
    );
    let mut b = [0u8; 4];
    o.read_exact(&mut b).unwrap();
    assert_eq!(b, pt[C..C + 4]);
    assert_eq!(o.seek(SeekFrom::End(100)).unwrap(), pt.len() as u64 + 100);
    assert_eq!(o.read(&mut b).unwrap(), 0);
    assert_eq!(
        o.seek(SeekFrom::Start(pt.len() as u64)).unwrap(),
        pt.len() as u64
    );
    assert_eq!(o.read(&mut b).unwrap(), 0);
    let e = o
        .seek(SeekFrom::Current(-(pt.len() as i64) - 1))
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    o.seek(SeekFrom::Start(0)).unwrap();
    let mut all = Vec::new();
    o.read_to_end(&mut all).unwrap();
    assert_eq!(all, pt);
}

/// A syntactically valid header with `stanzas` stanzas (no valid MAC).
fn fake_header(stanzas: usize) -> Vec<u8> {
    let mut h = AGE_MAGIC.to_vec();
    for _ in 0..stanzas {
        h.extend_from_slice(b"-> X25519 ");
        h.extend_from_slice(&[b'A'; 43]);
        h.extend_from_slice(b"\n");
        h.extend_from_slice(&[b'B'; 43]);
        h.extend_from_slice(b"\n");
    }
    h.extend_from_slice(b"--- ");
    h.extend_from_slice(&[b'C'; 43]);
    h.extend_from_slice(b"\n");
    h
}

/// A header of exactly `len` bytes: one stanza whose argument fills it up.
fn header_of_len(len: usize) -> Vec<u8> {
    // magic + "-> t " + arg + "\n" + "\n" + "--- " + mac + "\n"
    let fixed = AGE_MAGIC.len() + 5 + 1 + 1 + 4 + 43 + 1;
    let mut h = AGE_MAGIC.to_vec();
    h.extend_from_slice(b"-> t ");
    h.extend(std::iter::repeat_n(b'a', len - fixed));
    h.extend_from_slice(b"\n\n--- ");
    h.extend_from_slice(&[b'C'; 43]);
    h.extend_from_slice(b"\n");
    assert_eq!(h.len(), len);
    h
}

#[test]
fn scan_counts_stanzas_and_caps_them() {
    let ok = fake_header(MAX_STANZAS);
    assert_eq!(
        scan_header(&ok).unwrap(),
        HeaderInfo {
            header_len: ok.len() as u64,
            stanzas: MAX_STANZAS
        }
    );
    let mut too_many = fake_header(MAX_STANZAS + 1);
    too_many.extend_from_slice(&[0u8; 64]);
    assert!(matches!(scan_header(&too_many), Err(Error::TooManyStanzas)));
    // Refused as soon as stanza 257 starts, without seeing the rest.
    let cut = too_many.len() - 64 - 48 - 20;
    assert!(matches!(
        scan_header(&too_many[..cut]),
        Err(Error::TooManyStanzas)
    ));
    let (id, _) = keypair();
    assert!(matches!(
        Opened::open(&id, Cursor::new(&too_many)),
        Err(Error::TooManyStanzas)
    ));
}

#[test]
fn scan_caps_header_size() {
    let exact = header_of_len(MAX_HEADER_BYTES);
    assert_eq!(
        scan_header(&exact).unwrap().header_len,
        MAX_HEADER_BYTES as u64
    );
    assert_eq!(
        read_header(&exact[..]).unwrap().header_len,
        MAX_HEADER_BYTES as u64
    );
    let mut big = header_of_len(MAX_HEADER_BYTES + 1);
    assert!(matches!(scan_header(&big), Err(Error::HeaderTooLarge)));
    assert!(matches!(read_header(&big[..]), Err(Error::HeaderTooLarge)));
    // A giant stanza body is refused the same way.
    let mut body = fake_header(1);
    body.truncate(body.len() - 48 - 44);
    for _ in 0..2000 {
        body.extend_from_slice(&[b'B'; 64]);
        body.push(b'\n');
    }
    assert!(matches!(scan_header(&body), Err(Error::HeaderTooLarge)));
    big.extend_from_slice(&[0u8; 64]);
    let (id, _) = keypair();
    assert!(matches!(
        Opened::open(&id, Cursor::new(&big)),
        Err(Error::HeaderTooLarge)
    ));
}

#[test]
fn scan_rejects_garbage_and_reports_truncation() {
    assert!(matches!(scan_header(b""), Err(Error::Truncated(_))));
    assert!(matches!(scan_header(b"age-enc"), Err(Error::Truncated(_))));
    assert!(matches!(scan_header(b"hello world"), Err(Error::NotAge)));
    assert!(matches!(
        scan_header(b"age-encryption.org/v2\n-> "),
        Err(Error::NotAge)
    ));
    assert!(matches!(scan_header(&[0xff; 100]), Err(Error::NotAge)));
    assert!(!is_age(b"age-encryption.org/v2\n"));
    assert!(is_age(AGE_MAGIC));

    let good = fake_header(2);
    for len in 0..good.len() {
        assert!(
            matches!(scan_header(&good[..len]), Err(Error::Truncated(_))),
            "prefix {len}"
        );
    }
    let corrupt = |needle: &[u8], with: &[u8]| {
        let at = good
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        let mut bad = good.clone();
        bad.splice(at..at + needle.len(), with.iter().copied());
        scan_header(&bad)
    };
    for (needle, with) in [
        (&b"-> X25519 "[..], &b"-> X25519  "[..]), // empty argument
        (b"-> X25519 ", b"-> X2\x01519 "),         // control character
        (b"BBBB", b"BB=B"),                        // not base64
        (b"BBBB\n", b"BBBB\r\n"),                  // CR in body
        (b"--- ", b"---"),                         // MAC line without space
        (b"--- CC", b"--- C"),                     // short MAC
    ] {
        assert!(
            matches!(corrupt(needle, with), Err(Error::Corrupt(_))),
            "{:?}",
            String::from_utf8_lossy(with)
        );
    }
    // A body line after the body ended, and a body line with no stanza.
    let mut bad = AGE_MAGIC.to_vec();
    bad.extend_from_slice(b"QUJD\n");
    assert!(matches!(scan_header(&bad), Err(Error::Corrupt(_))));
    let mut bad = AGE_MAGIC.to_vec();
    bad.extend_from_slice(b"-> a\nQUJD\nQUJD\n");
    assert!(matches!(scan_header(&bad), Err(Error::Corrupt(_))));
    // No stanzas at all.
    let mut bad = AGE_MAGIC.to_vec();
    bad.extend_from_slice(b"--- ");
    bad.extend_from_slice(&[b'C'; 43]);
    bad.push(b'\n');
    assert!(matches!(scan_header(&bad), Err(Error::Corrupt(_))));
}

#[test]
fn a_valid_looking_header_with_a_bad_mac_is_corrupt() {
    let (id, _) = keypair();
    // Non-canonical base64 in the stanza: age's parser refuses it.
    let mut file = fake_header(1);
    file.extend_from_slice(&[0u8; 64]);
    let err = Opened::open(&id, Cursor::new(&file)).err().unwrap();
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    // Canonical base64: a well-formed X25519 stanza that is not for us.
    let mut file = fake_header(1);
    for b in &mut file[AGE_MAGIC.len()..] {
        if *b == b'B' || *b == b'C' {
            *b = b'A';
        }
    }
    file.extend_from_slice(&[0u8; 64]);
    let err = Opened::open(&id, Cursor::new(&file)).err().unwrap();
    assert!(
        matches!(err, Error::NotARecipient | Error::Corrupt(_)),
        "{err:?}"
    );
}

/// A reader that hands out one byte per call.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((b, rest)), Some(slot)) => {
                *slot = *b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

#[test]
fn short_non_age_inputs_are_not_age_when_complete() {
    let (id, _) = keypair();
    for input in [&b""[..], b"a", b"age-enc", b"plain text\n"] {
        assert!(
            matches!(read_header(input), Err(Error::NotAge)),
            "{input:?}"
        );
        assert!(matches!(
            Opened::open(&id, Cursor::new(input)),
            Err(Error::NotAge)
        ));
        assert!(!is_age(input));
    }
    assert!(matches!(read_header(AGE_MAGIC), Err(Error::Truncated(_))));
}

#[test]
fn read_header_from_a_slow_reader() {
    let (_, r) = keypair();
    let file = seal_to(&[r], b"x");
    assert_eq!(
        read_header(Trickle(&file)).unwrap(),
        scan_header(&file).unwrap()
    );
    let h = fake_header(3);
    assert!(matches!(
        read_header(Trickle(&h[..h.len() - 1])),
        Err(Error::Truncated(_))
    ));
}

#[test]
fn length_arithmetic_edges() {
    let h = 100;
    assert_eq!(ciphertext_len(h, 0), h + 32);
    assert_eq!(plaintext_len(h, h + 32).unwrap(), 0);
    assert_eq!(ciphertext_len(h, CHUNK_SIZE), h + 16 + CHUNK_SIZE + 16);
    assert_eq!(
        ciphertext_len(h, CHUNK_SIZE + 1),
        h + 16 + CHUNK_SIZE + 1 + 32
    );
    assert!(matches!(plaintext_len(h, h + 31), Err(Error::Truncated(_))));
    assert!(matches!(plaintext_len(h, 50), Err(Error::Truncated(_))));
    // A last chunk shorter than its tag.
    let one_chunk = h + 16 + ENCRYPTED_CHUNK_SIZE;
    for extra in 1..=TAG_LEN {
        assert!(
            plaintext_len(h, one_chunk + extra).is_err(),
            "extra {extra}"
        );
    }
    assert_eq!(
        plaintext_len(h, one_chunk + TAG_LEN + 1).unwrap(),
        CHUNK_SIZE + 1
    );
    assert_eq!(ciphertext_len(u64::MAX, 5), u64::MAX);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn length_arithmetic_round_trips(header_len in 0u64..1 << 20, pt_len in 0u64..1 << 40) {
        let ct = ciphertext_len(header_len, pt_len);
        prop_assert_eq!(plaintext_len(header_len, ct).unwrap(), pt_len);
    }

    #[test]
    fn plaintext_len_inverts_whenever_it_succeeds(header_len in 0u64..1000, ct in 0u64..1 << 24) {
        if let Ok(pt) = plaintext_len(header_len, ct) {
            prop_assert_eq!(ciphertext_len(header_len, pt), ct);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn round_trip_any_size(len in 0usize..300 * 1024, seed: u64) {
        round_trip(len, seed);
    }

    #[test]
    fn seek_reads_any_range(
        len in 0usize..300 * 1024,
        seed: u64,
        ranges in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..100_000), 1..6),
    ) {
        let (id, r) = keypair();
        let pt = data(len, seed);
        let file = seal_to(&[r], &pt);
        let mut opened = Opened::open(&id, Cursor::new(&file)).unwrap();
        for (at, want) in ranges {
            let offset = if len == 0 { 0 } else { at.index(len + 1) };
            prop_assert_eq!(opened.seek(SeekFrom::Start(offset as u64)).unwrap(), offset as u64);
            let mut got = Vec::new();
            (&mut opened).take(want as u64).read_to_end(&mut got).unwrap();
            let end = (offset + want).min(len);
            prop_assert_eq!(&got[..], &pt[offset..end]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_flipped_byte_of_a_multi_chunk_file_is_rejected(
        len in C..3 * C,
        seed: u64,
        at: prop::sample::Index,
        bit in 0u8..8,
        in_header: bool,
    ) {
        let (id, r) = keypair();
        let mut file = seal_to(&[r], &data(len, seed));
        let header_len = real_header_len(&file) as usize;
        // Half the cases aim at the header and nonce, the rest anywhere.
        let i = if in_header { at.index(header_len + 16) } else { at.index(file.len()) };
        file[i] ^= 1 << bit;
        assert_rejected(&id, &file, &format!("flip at {i}"));
    }

    #[test]
    fn any_truncation_is_rejected(len in 0usize..3 * C, seed: u64, at: prop::sample::Index) {
        let (id, r) = keypair();
        let file = seal_to(&[r], &data(len, seed));
        let cut = at.index(file.len());
        assert_rejected(&id, &file[..cut], &format!("cut to {cut}"));
    }
}

#[test]
fn handles_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<Opened<std::fs::File>>();
    assert_send::<Opened<Cursor<Vec<u8>>>>();
    assert_send::<Sealer<std::fs::File>>();
}
