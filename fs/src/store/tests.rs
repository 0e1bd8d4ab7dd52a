//! Unit tests of the store: sealing, staging, grouped syncs and their
//! recovery, block tags, the sweep and the journal hand-off.

use super::*;
use lockbox_crypto::seal::{self, tags::BlockTags};
use lockbox_crypto::{identity, seal::open_to_vec};
use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;
use waiting::SEAL_XATTR;

fn setup() -> (tempfile::TempDir, Store, lockbox_crypto::AgeIdentity) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store, identity::generate())
}

fn n(s: &str) -> Name {
    Name::new(s).unwrap()
}

#[test]
fn seal_then_open_round_trips_with_private_modes() {
    let (dir, store, id) = setup();
    let s = store
        .seal(
            &n("key"),
            Cursor::new(b"secret bytes"),
            &SealTo::keys(vec![id.to_public()]),
            1 << 20,
        )
        .unwrap();
    assert_eq!(s.plaintext_len, 12);
    let f = store.open_file(&n("key")).unwrap();
    assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"secret bytes");
    let mode = |p: &Path| p.metadata().unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&store.path_of(&n("key"))), 0o600);
    assert_eq!(mode(&dir.path().join("store")), 0o700);
    let e = store.entry(&n("key")).unwrap();
    assert_eq!(
        (e.state, e.size, e.stored_size),
        (FileState::Ciphertext, 12, s.ciphertext_len)
    );
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn too_large_changes_nothing() {
    let (dir, store, id) = setup();
    store
        .seal(
            &n("f"),
            Cursor::new(b"old"),
            &SealTo::keys(vec![id.to_public()]),
            10,
        )
        .unwrap();
    let err = store
        .seal(
            &n("f"),
            Cursor::new(vec![7u8; 11]),
            &SealTo::keys(vec![id.to_public()]),
            10,
        )
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    let f = store.open_file(&n("f")).unwrap();
    assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"old");
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn failing_reader_leaves_old_version() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("source vanished mid-read"))
        }
    }
    let (_dir, store, id) = setup();
    store
        .seal(
            &n("f"),
            Cursor::new(b"old"),
            &SealTo::keys(vec![id.to_public()]),
            10,
        )
        .unwrap();
    assert!(store
        .seal(&n("f"), Broken, &SealTo::keys(vec![id.to_public()]), 10)
        .is_err());
    let f = store.open_file(&n("f")).unwrap();
    assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"old");
}

/// A store whose files' states are recorded in a `meta.redb` beside it
/// (the [`Meta`] keeps it open).
fn setup_with_states() -> (tempfile::TempDir, Store, lockbox_crypto::AgeIdentity, Meta) {
    let (dir, store, id) = setup();
    let meta = Meta::open(&dir.path().join("meta.redb")).unwrap();
    let store = store.with_states(&meta);
    (dir, store, id, meta)
}

fn states_of(store: &Store) -> Vec<(String, FileState)> {
    store
        .list()
        .unwrap()
        .into_iter()
        .map(|e| (e.name.to_string(), e.state))
        .collect()
}

/// States come from what is recorded, never from names: a user's files
/// named like a failed seal or a conflict copy are ordinary files (and the
/// plaintext one is swept like any other).
#[test]
fn list_states_and_sweep() {
    let (dir, store, id, meta) = setup_with_states();
    let r = SealTo::keys(vec![id.to_public()]);
    store.seal(&n("a"), Cursor::new(b"aa"), &r, 100).unwrap();
    fs::write(store.path_of(&n("plain")), b"dropped in by hand").unwrap();
    fs::write(store.path_of(&n("big")), vec![1u8; 200]).unwrap();
    fs::write(store.path_of(&n("x.1714380000.failed")), b"x").unwrap();
    let conflict_like = n("notes.conflict-b-20260101-000000");
    store
        .seal(&conflict_like, Cursor::new(b"c"), &r, 100)
        .unwrap();
    // Recorded states, under names that say nothing.
    fs::write(store.path_of(&n("kept")), b"could not seal").unwrap();
    store
        .seal(&n("copy"), Cursor::new(b"lost"), &r, 100)
        .unwrap();
    meta.apply(&[
        crate::meta::Op::SetState(n("kept"), Some(State::Failed)),
        crate::meta::Op::SetState(n("copy"), Some(State::Conflict)),
    ])
    .unwrap();
    fs::create_dir(dir.path().join("store/sub")).unwrap();
    assert_eq!(
        states_of(&store),
        vec![
            ("a".into(), FileState::Ciphertext),
            ("big".into(), FileState::Plaintext),
            ("copy".into(), FileState::Conflict),
            ("kept".into(), FileState::Failed),
            (conflict_like.to_string(), FileState::Ciphertext),
            ("plain".into(), FileState::Plaintext),
            ("x.1714380000.failed".into(), FileState::Plaintext),
        ]
    );
    assert_eq!(store.entry(&n("kept")).unwrap().state, FileState::Failed);
    assert_eq!(
        store.entry(&n("x.1714380000.failed")).unwrap().state,
        FileState::Plaintext
    );
    let rep = store.sweep(&r, 100).unwrap();
    assert_eq!(rep.sealed, vec![n("plain"), n("x.1714380000.failed")]);
    assert_eq!(rep.too_large, vec![n("big")]);
    assert!(rep.failed.is_empty());
    let f = store.open_file(&n("plain")).unwrap();
    assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"dropped in by hand");
    // The failed file was left alone: it is not retried at every sweep.
    assert_eq!(
        fs::read(store.path_of(&n("kept"))).unwrap(),
        b"could not seal"
    );
}

#[test]
fn sweep_with_no_recipients_marks_failed() {
    let (_dir, store, id, _meta) = setup_with_states();
    let r = SealTo::keys(vec![id.to_public()]);
    // The user's own files hold the names the sweep would pick first.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let taken: Vec<Name> = (now..now + 3).map(|t| n("p").failed(t).unwrap()).collect();
    for t in &taken {
        store.seal(t, Cursor::new(b"mine"), &r, 100).unwrap();
    }
    fs::write(store.path_of(&n("p")), b"plain").unwrap();
    let rep = store.sweep(&SealTo::default(), 100).unwrap();
    assert_eq!(rep.failed.len(), 1, "{:?}", rep.failed);
    let failed = rep.failed[0].1.clone();
    assert!(!store.contains(&n("p")));
    assert!(!taken.contains(&failed), "{failed} was the user's");
    assert_eq!(store.state(&failed).unwrap(), Some(State::Failed));
    assert_eq!(store.entry(&failed).unwrap().state, FileState::Failed);
    assert_eq!(fs::read(store.path_of(&failed)).unwrap(), b"plain");
    for t in &taken {
        assert_eq!(store.entry(t).unwrap().state, FileState::Ciphertext);
        let f = store.open_file(t).unwrap();
        assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"mine");
    }
    // Not retried by the next sweep.
    let again = store.sweep(&r, 100).unwrap();
    assert!(again.sealed.is_empty() && again.failed.is_empty());
    // Renamed (back), it is an ordinary plaintext again: the next sweep
    // seals it, and the state is gone with the old name.
    store.rename(&failed, &n("p")).unwrap();
    assert_eq!(store.state(&failed).unwrap(), None);
    assert_eq!(store.entry(&n("p")).unwrap().state, FileState::Plaintext);
    let retried = store.sweep(&r, 100).unwrap();
    assert_eq!(retried.sealed, vec![n("p")]);
    assert_eq!(store.entry(&n("p")).unwrap().state, FileState::Ciphertext);
}

/// Whatever replaces or removes a file forgets its recorded state.
#[test]
fn a_state_goes_with_its_file() {
    let (_dir, store, id, meta) = setup_with_states();
    let r = SealTo::keys(vec![id.to_public()]);
    let set = |name: &str, state| {
        meta.apply(&[crate::meta::Op::SetState(n(name), Some(state))])
            .unwrap()
    };
    for name in ["sealed-over", "removed", "renamed", "renamed-over", "kept"] {
        store.seal(&n(name), Cursor::new(b"x"), &r, 100).unwrap();
        set(name, State::Conflict);
    }
    store
        .seal(&n("sealed-over"), Cursor::new(b"y"), &r, 100)
        .unwrap();
    store.remove(&n("removed")).unwrap();
    store.rename(&n("renamed"), &n("renamed-over")).unwrap();
    assert_eq!(
        meta.states().unwrap(),
        vec![(b"kept".to_vec(), State::Conflict)]
    );
    assert_eq!(states_of(&store)[0], ("kept".into(), FileState::Conflict));
}

/// A file that can neither be sealed nor renamed aside (its name has
/// no room for the `.<ts>.failed` suffix) is reported, and the sweep
/// goes on to the next one.
#[test]
fn one_file_the_sweep_cannot_handle_does_not_stop_it() {
    let (_dir, store, _id, _meta) = setup_with_states();
    let long = n(&"a".repeat(250));
    fs::write(store.path_of(&long), b"plain").unwrap();
    fs::write(store.path_of(&n("b")), b"plain too").unwrap();
    let rep = store.sweep(&SealTo::default(), 100).unwrap();
    assert_eq!(rep.failed.len(), 2, "{:?}", rep.failed);
    assert_eq!(rep.failed[0].0, long);
    assert_eq!(rep.failed[0].1, long, "nowhere to rename it to");
    assert!(store.contains(&long));
    assert_eq!(rep.failed[1].0, n("b"));
    assert_eq!(store.state(&rep.failed[1].1).unwrap(), Some(State::Failed));
    assert!(!store.contains(&n("b")) && store.contains(&rep.failed[1].1));
}

/// Everything in the bare folder is the user's plaintext: an age file
/// there is sealed again (reading back as the same bytes), not taken
/// into the store as it is.
#[test]
fn import_dir_moves_plaintext_into_store() {
    let (dir, store, id) = setup();
    let bare = dir.path().join("bare");
    fs::create_dir(&bare).unwrap();
    fs::write(bare.join("notes"), b"hello").unwrap();
    fs::write(bare.join("huge"), vec![0u8; 500]).unwrap();
    // An age file of the user's, to a key that is not the envoy's.
    let other = identity::generate();
    let (_, age_file) =
        seal::seal_stream(&[other.to_public()], Cursor::new(b"theirs"), Vec::new()).unwrap();
    fs::write(bare.join("backup.age"), &age_file).unwrap();
    let rep = store
        .import_dir(&bare, &SealTo::keys(vec![id.to_public()]), 400)
        .unwrap();
    let mut sealed = rep.sealed.clone();
    sealed.sort();
    assert_eq!(sealed, vec![n("backup.age"), n("notes")]);
    assert_eq!(rep.too_large, vec![n("huge")]);
    assert!(!bare.join("notes").exists() && bare.join("huge").exists());
    assert!(!bare.join("backup.age").exists());
    let f = store.open_file(&n("notes")).unwrap();
    assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"hello");
    let f = store.open_file(&n("backup.age")).unwrap();
    assert_eq!(open_to_vec(&id, f).unwrap()[..], age_file[..]);
    let e = store.entry(&n("backup.age")).unwrap();
    assert_eq!(
        (e.state, e.size),
        (FileState::Ciphertext, age_file.len() as u64)
    );
}

/// With folders, the bare folder's whole tree is sealed into the store at
/// the same paths, folders (empty ones too) made, and the plaintext goes
/// with the folders it leaves empty; a file over the limit keeps its
/// folder.
#[test]
fn import_dir_takes_a_whole_tree_with_folders() {
    let (dir, store, id) = setup();
    let store = store.with_folders();
    let bare = dir.path().join("bare");
    fs::create_dir_all(bare.join("ssh/keys")).unwrap();
    fs::create_dir_all(bare.join("empty")).unwrap();
    fs::create_dir_all(bare.join("big")).unwrap();
    fs::write(bare.join("ssh/keys/id"), b"key").unwrap();
    fs::write(bare.join("ssh/config"), b"Host *").unwrap();
    fs::write(bare.join("big/huge"), vec![0u8; 500]).unwrap();
    let rep = store
        .import_dir(&bare, &SealTo::keys(vec![id.to_public()]), 400)
        .unwrap();
    let mut sealed = rep.sealed.clone();
    sealed.sort();
    assert_eq!(sealed, vec![n("ssh/config"), n("ssh/keys/id")]);
    assert_eq!(rep.too_large, vec![n("big/huge")]);
    assert_eq!(read(&store, &id, "ssh/keys/id"), b"key");
    assert!(store.is_folder(&n("empty")) && store.is_folder(&n("ssh/keys")));
    let left = tree::walk(&bare, crate::name::MAX_DEPTH).unwrap();
    assert_eq!(left.files, vec![n("big/huge")]);
    assert_eq!(left.folders, vec![n("big")]);
}

/// A failed sync of the waiting seals drops them: a second sync could
/// succeed without the pages the first failed to write, so installing
/// them then would put a file with holes in place of a whole version.
/// The name keeps its previous version, and nothing is left in `tmp/`.
#[test]
fn a_failed_sync_drops_the_waiting_seals_instead_of_installing_them() {
    let (dir, store, id) = grouped();
    let seal = |name: &str, text: &[u8]| seal_later(&store, &id, name, text);
    seal("kept", b"version one");
    store.sync_now().unwrap();
    seal("kept", b"version two");
    seal("new", b"never stored");
    let w = store.waiting.as_ref().unwrap();
    w.fail_next_sync.store(true, Ordering::SeqCst);
    assert!(store.sync_now().is_err(), "the failed sync is reported");
    store.sync_now().unwrap();
    let f = store.open_file(&n("kept")).unwrap();
    assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"version one");
    assert!(!store.contains(&n("new")));
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

    // The same when a rename needs a waiting seal in place first.
    seal("moved", b"about to move");
    store.sync_now().unwrap();
    seal("moved", b"moved, never stored");
    w.fail_next_sync.store(true, Ordering::SeqCst);
    store.rename(&n("moved"), &n("there")).unwrap_err();
    store.sync_now().unwrap();
    let f = store.open_file(&n("moved")).unwrap();
    assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"about to move");
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

/// With grouped syncs (the agent's store), the folder's rename of an
/// imported file would wait for the next round; the plaintext original
/// must not go before it, so the import syncs the store first.
#[test]
fn import_dir_leaves_nothing_to_sync_behind_the_removed_originals() {
    let (dir, store, id) = grouped();
    let bare = dir.path().join("bare");
    fs::create_dir(&bare).unwrap();
    fs::write(bare.join("notes"), b"hello").unwrap();
    let rep = store
        .import_dir(&bare, &SealTo::keys(vec![id.to_public()]), 100)
        .unwrap();
    assert_eq!(rep.sealed, vec![n("notes")]);
    assert!(!bare.join("notes").exists());
    let w = store.waiting.as_ref().expect("a grouped store");
    assert!(
        w.changed.is_empty() && lock(&w.files).is_empty(),
        "the plaintext is gone while its sealed copy still waits for a sync"
    );
    let f = store.open_file(&n("notes")).unwrap();
    assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"hello");
}

#[test]
fn grouped_dir_sync_still_installs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path())
        .unwrap()
        .with_grouped_syncs(std::time::Duration::from_millis(5));
    let id = identity::generate();
    store
        .seal(
            &n("g"),
            Cursor::new(b"grouped"),
            &SealTo::keys(vec![id.to_public()]),
            100,
        )
        .unwrap();
    // Visible immediately; only the folder's durability is deferred.
    let f = store.open_file(&n("g")).unwrap();
    assert_eq!(&open_to_vec(&id, f).unwrap()[..], b"grouped");
    store.rename(&n("g"), &n("h")).unwrap();
    store.remove(&n("h")).unwrap();
    store.sync_now().unwrap();
    assert!(!store.contains(&n("h")));
}

/// A store that groups its syncs, with a window so long that only the
/// test's own rounds run.
fn grouped() -> (tempfile::TempDir, Store, lockbox_crypto::AgeIdentity) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path())
        .unwrap()
        .with_grouped_syncs(std::time::Duration::from_secs(3600));
    (dir, store, identity::generate())
}

/// The modification time the tests' seals through the mount give.
fn then() -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_secs(1_577_836_800)
}

fn mtime_of(store: &Store, name: &str) -> SystemTime {
    store.metadata(&n(name)).unwrap().modified().unwrap()
}

fn seal_later(store: &Store, id: &lockbox_crypto::AgeIdentity, name: &str, text: &[u8]) {
    let to = SealTo::keys(vec![id.to_public()]);
    let seal = store
        .seal_deferred(
            &n(name),
            Cursor::new(text.to_vec()),
            &to,
            1 << 20,
            crate::store::SealAttrs::new(then(), false),
            &crate::Base::Current,
        )
        .unwrap();
    assert_eq!(seal.sealed.plaintext_len, text.len() as u64);
    assert_eq!(
        mtime_of(store, name),
        then(),
        "the mount's time, also waiting"
    );
}

fn read(store: &Store, id: &lockbox_crypto::AgeIdentity, name: &str) -> Vec<u8> {
    open_to_vec(id, store.open_file(&n(name)).unwrap())
        .unwrap()
        .to_vec()
}

fn temps(dir: &tempfile::TempDir) -> usize {
    fs::read_dir(dir.path().join("tmp")).unwrap().count()
}

/// `len` bytes that differ from byte to byte.
fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 977) as u8).collect()
}

#[test]
fn a_stream_sealed_in_pieces_is_one_age_file_in_either_mode() {
    for grouped_mode in [false, true] {
        let (dir, store, id) = if grouped_mode { grouped() } else { setup() };
        let text = bytes(3 * 64 * 1024 + 1234 + (1 << 20));
        let to = SealTo::keys(vec![id.to_public()]);
        let mut stream = store.begin_stream(&to).unwrap();
        for piece in text.chunks(100_003) {
            stream.append(piece).unwrap();
        }
        assert_eq!(stream.len(), text.len() as u64);
        assert_eq!(temps(&dir), 1, "the stream writes into a temp file");
        let Seal {
            sealed,
            recorded: pending,
            ..
        } = store
            .finish_stream(
                stream,
                &n("s"),
                crate::store::SealAttrs::new(then(), false),
                &crate::Base::Current,
            )
            .unwrap();
        drop(pending);
        assert_eq!(sealed.plaintext_len, text.len() as u64);
        assert_eq!(read(&store, &id, "s"), text, "grouped: {grouped_mode}");
        let raw = fs::read(store.current_path(&n("s"))).unwrap();
        assert_eq!(sealed.ciphertext_len, raw.len() as u64);
        assert_eq!(sealed.hash, lockbox_crypto::digest::Sha256::of(&raw));
        store.sync_now().unwrap();
        assert_eq!(temps(&dir), 0);
        assert_eq!(read(&store, &id, "s"), text);
        assert_eq!(mtime_of(&store, "s"), then(), "grouped: {grouped_mode}");
    }
}

#[test]
fn block_tags_are_kept_for_their_version_and_follow_renames_and_removes() {
    let (dir, store, id) = grouped();
    let key = Arc::new(TagKey::of(&id));
    let tagged = SealTo {
        tags: Some(key.clone()),
        ..SealTo::keys(vec![id.to_public()])
    };
    let untagged = SealTo::keys(vec![id.to_public()]);
    let text = bytes(200_000);
    let tags_of = |name: &str| dir.path().join("tags").join(name);
    let check = |name: &str| -> Option<BlockTags> {
        let f = store.open_file(&n(name)).unwrap();
        let p = seal::Payload::open(&id, &f).unwrap();
        store.read_tags(&n(name), &key, &p.binding(), p.plaintext_len())
    };
    let seal = |name: &str, to: &SealTo, text: &[u8]| {
        store
            .seal_deferred(
                &n(name),
                Cursor::new(text.to_vec()),
                to,
                1 << 20,
                crate::store::SealAttrs::new(then(), false),
                &crate::Base::Current,
            )
            .unwrap()
            .tags
    };
    let kept = seal("f", &tagged, &text).expect("tags for a file of four chunks");
    assert_eq!(kept.plaintext_len(), text.len() as u64);
    let read = check("f").expect("the tags file is this version's");
    assert_eq!(read.binding(), kept.binding());
    let mode = fs::metadata(tags_of("f")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // One chunk, or sealed without the key: no tags, and the old ones go.
    assert!(seal("f", &tagged, &text[..60_000]).is_none());
    assert!(!tags_of("f").exists());
    seal("f", &tagged, &text);
    assert!(seal("f", &untagged, &text).is_none());
    assert!(!tags_of("f").exists());
    // Another version's tags put back are not this version's.
    seal("f", &tagged, &text);
    let old = fs::read(tags_of("f")).unwrap();
    seal("f", &tagged, &text);
    fs::write(tags_of("f"), &old).unwrap();
    assert!(check("f").is_none(), "stale tags are told apart");
    // Renames move them (over a name with tags of its own), removes drop them.
    seal("f", &tagged, &text);
    seal("g", &tagged, &text);
    store.rename(&n("f"), &n("g")).unwrap();
    assert!(!tags_of("f").exists());
    assert!(check("g").is_some(), "g has f's tags");
    seal("h", &untagged, &text);
    store.rename(&n("h"), &n("g")).unwrap();
    assert!(!tags_of("g").exists(), "g took h's lack of tags");
    seal("g", &tagged, &text);
    store.remove(&n("g")).unwrap();
    assert!(!tags_of("g").exists());
    store.sync_now().unwrap();
    assert_eq!(temps(&dir), 0, "no tags temp file is left behind");
    // A store opened afresh knows the tags already on disk.
    seal("k", &tagged, &text);
    store.sync_now().unwrap();
    let again = Store::open(dir.path()).unwrap();
    again.rename(&n("k"), &n("m")).unwrap();
    assert!(
        !tags_of("k").exists(),
        "left behind by a rename after a reopen"
    );
    assert!(check("m").is_some(), "m has k's tags");
    again.remove(&n("m")).unwrap();
    assert!(
        !tags_of("m").exists(),
        "left behind by a remove after a reopen"
    );

    // Tags made after the fact are kept only for the current version,
    // whether it waits in the temp folder or is in place.
    seal("u", &untagged, &text);
    let made = |f: &File| {
        let p = seal::Payload::open(&id, f).unwrap();
        p.tag_blocks(f, &key, || true).unwrap().unwrap()
    };
    let v1 = store.open_file(&n("u")).unwrap();
    let t1 = made(&v1);
    assert!(store.attach_tags(&n("u"), &v1, &t1).unwrap());
    assert_eq!(check("u").map(|t| t.encode()), Some(t1.encode()));
    store.sync_now().unwrap();
    let v1 = store.open_file(&n("u")).unwrap();
    assert!(store.attach_tags(&n("u"), &v1, &t1).unwrap(), "in place");
    seal("u", &untagged, &text);
    assert!(!tags_of("u").exists());
    assert!(!store.attach_tags(&n("u"), &v1, &t1).unwrap(), "replaced");
    assert!(!tags_of("u").exists(), "tags of a replaced version kept");
    store.remove(&n("u")).unwrap();
    assert!(!store.attach_tags(&n("u"), &v1, &t1).unwrap(), "removed");
    assert!(!tags_of("u").exists());
    store.sync_now().unwrap();
    assert_eq!(temps(&dir), 0);
}

#[test]
fn a_stream_given_up_returns_its_plaintext_and_leaves_nothing() {
    let (dir, store, id) = setup();
    let to = SealTo::keys(vec![id.to_public()]);
    for len in [0, 10, 64 * 1024, 2 << 20] {
        let text = bytes(len);
        let mut stream = store.begin_stream(&to).unwrap();
        stream.append(&text).unwrap();
        let pages = stream.into_plaintext(&id).unwrap();
        assert_eq!(pages.len(), len as u64);
        let mut back = vec![0u8; len];
        pages.read_at(0, &mut back);
        assert_eq!(back, text, "len {len}");
        assert_eq!(temps(&dir), 0, "len {len}");
    }
    // Dropped unfinished: the temp file goes too, and nothing is stored.
    let mut stream = store.begin_stream(&to).unwrap();
    stream.append(&bytes(3 << 20)).unwrap();
    drop(stream);
    assert_eq!(temps(&dir), 0);
    assert!(store.names().unwrap().is_empty());
}

#[test]
fn a_deferred_seal_is_read_from_its_temp_until_a_round_installs_it() {
    let (dir, store, id) = grouped();
    seal_later(&store, &id, "a", b"first");
    seal_later(&store, &id, "a", b"second, longer");
    // Not in the store folder yet, but every read finds the newest seal.
    assert!(!dir.path().join("store/a").exists());
    assert_eq!(temps(&dir), 1, "the older waiting seal was removed");
    assert!(store.contains(&n("a")));
    assert_eq!(read(&store, &id, "a"), b"second, longer");
    assert_eq!(store.entry(&n("a")).unwrap().size, 14);
    assert_eq!(store.names().unwrap(), vec![n("a")]);
    assert_eq!(store.list().unwrap().len(), 1);
    let before = store.metadata(&n("a")).unwrap();
    store.sync_now().unwrap();
    // Installed: same inode, size and mtime (what the records keep).
    let after = fs::symlink_metadata(dir.path().join("store/a")).unwrap();
    assert_eq!((before.ino(), before.len()), (after.ino(), after.len()));
    assert_eq!(before.mtime_nsec(), after.mtime_nsec());
    assert_eq!(after.permissions().mode() & 0o777, 0o600);
    assert_eq!(temps(&dir), 0);
    assert_eq!(read(&store, &id, "a"), b"second, longer");
    assert_eq!(store.names().unwrap(), vec![n("a")]);
}

#[test]
fn changes_of_a_waiting_name_act_on_its_newest_seal() {
    let (dir, store, id) = grouped();
    let to = SealTo::keys(vec![id.to_public()]);
    let ino_of = |name: &str| fs::metadata(dir.path().join("store").join(name)).map(|m| m.ino());
    let log = Arc::new(Log::default());
    let store = store.with_journal(log.clone());
    // Renaming a name that is only a waiting seal (a temp file written,
    // closed and renamed over its target, as editors and rsync do)
    // passes the seal on, without a sync; the round puts it in place.
    // (Where the temp file cannot be marked with its new name, it is
    // put in place first, as before.)
    let passes = has_user_xattrs(dir.path());
    seal_later(&store, &id, "a", b"new a");
    let temp_ino = store.local_stat(&n("a")).unwrap().ino;
    store.rename(&n("a"), &n("b")).unwrap();
    assert!(!store.contains(&n("a")));
    assert_eq!(read(&store, &id, "b"), b"new a");
    assert_eq!(
        temps(&dir),
        usize::from(passes),
        "still waiting, now as b's"
    );
    assert_eq!(
        ino_of("b").is_err(),
        passes,
        "put in place before its round"
    );
    assert_eq!(
        log.entries().last().unwrap(),
        &format!("renamed a b ino={temp_ino}"),
        "the journal has the waiting file's stat"
    );
    store.sync_now().unwrap();
    assert_eq!(temps(&dir), 0);
    assert_eq!(ino_of("b").unwrap(), temp_ino);
    assert_eq!(read(&store, &id, "b"), b"new a");
    // Over a name with a file in the store, which stays until the round.
    store
        .seal(&n("t"), Cursor::new(b"old t"), &to, 100)
        .unwrap();
    let old_t = ino_of("t").unwrap();
    seal_later(&store, &id, "t.swp", b"new t");
    store.rename(&n("t.swp"), &n("t")).unwrap();
    assert_eq!(read(&store, &id, "t"), b"new t");
    assert_eq!(
        ino_of("t").unwrap() == old_t,
        passes,
        "the old file went before the round"
    );
    store.sync_now().unwrap();
    assert_eq!(read(&store, &id, "t"), b"new t");
    assert_ne!(ino_of("t").unwrap(), old_t);
    assert!(!store.contains(&n("t.swp")));
    // A waiting seal of a name that also has a file in the store is put
    // in place first: the old file must leave the name with it.
    store
        .seal(&n("g"), Cursor::new(b"old g"), &to, 100)
        .unwrap();
    seal_later(&store, &id, "g", b"new g");
    store.rename(&n("g"), &n("h")).unwrap();
    assert!(ino_of("h").is_ok() && ino_of("g").is_err());
    assert_eq!(read(&store, &id, "h"), b"new g");
    assert_eq!(temps(&dir), 0);
    store.remove(&n("h")).unwrap();
    store.remove(&n("t")).unwrap();
    // Removing a name removes its installed file and its waiting seal.
    store
        .seal(&n("c"), Cursor::new(b"old c"), &to, 100)
        .unwrap();
    seal_later(&store, &id, "c", b"new c");
    store.remove(&n("c")).unwrap();
    assert!(!store.contains(&n("c")));
    assert!(matches!(store.remove(&n("c")), Err(Error::NotFound(_))));
    seal_later(&store, &id, "w", b"only waiting");
    store.remove(&n("w")).unwrap();
    assert!(!store.contains(&n("w")));
    assert_eq!(temps(&dir), 0);
    // A rename onto a waiting name replaces it: the older seal must not
    // come back with the next round.
    seal_later(&store, &id, "d", b"stale d");
    store
        .seal(&n("e"), Cursor::new(b"e's bytes"), &to, 100)
        .unwrap();
    store.rename(&n("e"), &n("d")).unwrap();
    store.sync_now().unwrap();
    assert_eq!(read(&store, &id, "d"), b"e's bytes");
    // So does a file put in place from a peer (commit_staged).
    seal_later(&store, &id, "f", b"local f");
    let (staged, ()) = store
        .stage(|file| seal_into(file, &n("f"), Cursor::new(b"peer f"), &to, None, 100).map(drop))
        .unwrap();
    {
        let _guard = store.change_lock();
        store.commit_staged(staged, &n("f")).unwrap();
    }
    store.sync_now().unwrap();
    assert_eq!(read(&store, &id, "f"), b"peer f");
    assert_eq!(temps(&dir), 0);
    assert_eq!(store.names().unwrap(), vec![n("b"), n("d"), n("f")]);
}

#[test]
fn many_waiting_seals_share_one_round() {
    let (dir, store, id) = grouped();
    for i in 0..50 {
        seal_later(
            &store,
            &id,
            &format!("f{i:02}"),
            format!("body {i}").as_bytes(),
        );
    }
    assert_eq!(temps(&dir), 50);
    assert_eq!(store.names().unwrap().len(), 50);
    store.sync_round(false).unwrap();
    assert_eq!(temps(&dir), 0);
    for i in 0..50 {
        let p = dir.path().join(format!("store/f{i:02}"));
        assert!(seal::is_age(&fs::read(&p).unwrap()), "{}", p.display());
        assert_eq!(
            read(&store, &id, &format!("f{i:02}")),
            format!("body {i}").as_bytes()
        );
    }
}

#[test]
fn leftover_temp_files_are_removed_only_when_asked() {
    let (dir, store, _id) = setup();
    fs::write(dir.path().join("tmp/dead.partial"), b"partial").unwrap();
    Store::open(dir.path()).unwrap();
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
    let done = store.recover_leftovers().unwrap();
    assert_eq!((done.removed, done.recovered.len()), (1, 0));
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

/// Whether the file system under `dir` keeps user extended attributes.
fn has_user_xattrs(dir: &Path) -> bool {
    let p = dir.join("xattr-probe");
    let f = File::create(&p).unwrap();
    let ok = rustix::fs::fsetxattr(&f, "user.probe", b"1", rustix::fs::XattrFlags::empty());
    fs::remove_file(&p).unwrap();
    ok.is_ok()
}

#[test]
fn a_seal_still_waiting_when_the_agent_died_is_put_in_place_at_the_next_start() {
    let (dir, store, id) = grouped();
    let to = SealTo::keys(vec![id.to_public()]);
    store
        .seal(&n("kept"), Cursor::new(b"old"), &to, 100)
        .unwrap();
    seal_later(&store, &id, "kept", b"closed, not yet synced");
    seal_later(&store, &id, "new", b"brand new");
    seal_later(&store, &id, "new", b"brand new, second close");
    // A temp file closed and renamed over its target: its seal waits
    // under the target's name.
    store
        .seal(&n("target"), Cursor::new(b"target's old"), &to, 100)
        .unwrap();
    seal_later(&store, &id, "target~", b"target's new");
    store.rename(&n("target~"), &n("target")).unwrap();
    // A partial temp of a seal in progress, and a complete one from an
    // earlier boot (its bytes may be torn by the power loss).
    fs::write(
        dir.path().join("tmp/cut.partial"),
        b"age-encryption.org/v1\n-> X",
    )
    .unwrap();
    let old_boot = dir.path().join("tmp/old-boot.partial");
    let f = File::create(&old_boot).unwrap();
    let v = "not-this-boot\n7\nghost";
    let marked = rustix::fs::fsetxattr(
        &f,
        SEAL_XATTR,
        v.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    );
    drop(f);
    // The agent dies: no round ran (the window is an hour). The next
    // start opens the store afresh.
    drop(store);
    let again = Store::open(dir.path()).unwrap();
    let done = again.recover_leftovers().unwrap();
    assert_eq!(temps(&dir), 0);
    assert!(!again.contains(&n("ghost")));
    if !has_user_xattrs(dir.path()) {
        assert!(marked.is_err());
        eprintln!(
            "no user xattrs under {}: waiting seals are lost with the agent",
            dir.path().display()
        );
        assert_eq!(read(&again, &id, "kept"), b"old");
        assert!(!again.contains(&n("new")));
        assert_eq!(read(&again, &id, "target"), b"target's old");
        assert!(!again.contains(&n("target~")));
        return;
    }
    assert_eq!(done.recovered, vec![n("kept"), n("new"), n("target")]);
    assert_eq!(done.removed, 2);
    assert_eq!(read(&again, &id, "kept"), b"closed, not yet synced");
    assert_eq!(read(&again, &id, "new"), b"brand new, second close");
    assert_eq!(read(&again, &id, "target"), b"target's new");
    assert!(!again.contains(&n("target~")));
    let p = dir.path().join("store/new");
    assert!(
        rustix::fs::getxattr(&p, SEAL_XATTR, &mut [0u8; 512][..]).is_err(),
        "mark left"
    );
}

/// Records what the journal is told; holds every call while its gate
/// is closed (a slow journal).
#[derive(Debug, Default)]
struct Log {
    entries: Mutex<Vec<String>>,
    closed: Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Log {
    fn add(&self, what: String) {
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
        self.entries.lock().unwrap().push(what);
    }
    fn gate(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }
    fn entries(&self) -> Vec<String> {
        self.entries.lock().unwrap().clone()
    }
}

fn ino(stat: Option<LocalStat>) -> String {
    stat.map_or("none".into(), |s| s.ino.to_string())
}

impl Journal for Log {
    fn changed(&self, name: &Name, sealed: Option<&Sealed>, stat: Option<LocalStat>) {
        self.add(format!(
            "changed {name} sealed={} ino={}",
            sealed.is_some(),
            ino(stat)
        ));
    }
    fn removed(&self, name: &Name) {
        self.add(format!("removed {name}"));
    }
    fn renamed(&self, from: &Name, to: &Name, stat: Option<LocalStat>) {
        self.add(format!("renamed {from} {to} ino={}", ino(stat)));
    }
}

#[test]
fn pending_changes_are_queued_at_drop_and_a_slow_journal_holds_up_no_change() {
    let (dir, store, id) = setup();
    let log = Arc::new(Log::default());
    let store = store.with_journal(log.clone());
    let to = SealTo::keys(vec![id.to_public()]);
    log.gate(true);

    let (sealed, pending) = store
        .seal_pending(&n("a"), Cursor::new(b"one".to_vec()), &to, 1 << 20)
        .unwrap();
    assert_eq!(sealed.plaintext_len, 3);
    let a_ino = fs::metadata(dir.path().join("store/a")).unwrap().ino();
    // On disk already; until it is dropped no other change can start.
    assert!(store.contains(&n("a")));
    assert!(store.changes.try_lock().is_err());
    drop(pending);
    // Queued: the lock is free although the journal cannot run.
    assert!(store.changes.try_lock().is_ok());
    let pending = store.rename_pending(&n("a"), &n("b")).unwrap();
    assert!(store.contains(&n("b")) && !store.contains(&n("a")));
    assert!(store.changes.try_lock().is_err());
    drop(pending);
    drop(store.remove_pending(&n("b")).unwrap());
    assert!(!store.contains(&n("b")));
    assert!(log.entries().is_empty());

    // The mesh's lock waits for the whole queue, delivered in order, and
    // carries the stat each change had (the file is gone by now).
    let other = store.clone();
    let holder = std::thread::spawn(move || {
        let _guard = other.change_lock();
        // Nothing can be queued while the lock is held.
        other.journal.as_ref().unwrap().len()
    });
    log.gate(false);
    assert_eq!(holder.join().unwrap(), 0);
    assert_eq!(
        log.entries(),
        [
            format!("changed a sealed=true ino={a_ino}"),
            format!("renamed a b ino={a_ino}"),
            "removed b".to_string(),
        ]
    );
}

#[test]
fn the_journal_thread_delivers_without_being_asked_and_immediate_forms_wait() {
    let (_dir, store, id) = setup();
    let log = Arc::new(Log::default());
    let store = store.with_journal(log.clone());
    let to = SealTo::keys(vec![id.to_public()]);

    drop(
        store
            .seal_pending(&n("a"), Cursor::new(b"one".to_vec()), &to, 1 << 20)
            .unwrap(),
    );
    // Nobody drains: the journal's thread delivers on its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while log.entries().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never delivered");
        std::thread::yield_now();
    }
    assert_eq!(log.entries().len(), 1);

    // The immediate forms are journaled before they return; a failed
    // change journals nothing and leaves the lock free.
    store
        .seal(&n("c"), Cursor::new(b"two".to_vec()), &to, 1 << 20)
        .unwrap();
    assert_eq!(log.entries().len(), 2);
    store.rename(&n("c"), &n("d")).unwrap();
    store.remove(&n("d")).unwrap();
    assert_eq!(log.entries().len(), 4);
    assert!(matches!(store.remove(&n("gone")), Err(Error::NotFound(_))));
    assert!(store.rename_pending(&n("gone"), &n("x")).is_err());
    assert_eq!(log.entries().len(), 4);
    assert!(store.changes.try_lock().is_ok());
}

/// A journal that keeps the held bytes of every delete (as the mesh does
/// until the delete's record is durable).
#[derive(Debug, Default)]
struct Holder(Mutex<Vec<(Name, PathBuf)>>);

impl Journal for Holder {
    fn changed(&self, _: &Name, _: Option<&Sealed>, _: Option<LocalStat>) {}
    fn removed(&self, _: &Name) {}
    fn removed_held(&self, name: &Name, held: &[PathBuf]) {
        for h in held {
            self.0.lock().unwrap().push((name.clone(), h.clone()));
        }
    }
    fn renamed(&self, _: &Name, _: &Name, _: Option<LocalStat>) {}
}

/// A delete takes the name away at once and holds its bytes until the
/// journal lets go of them (without a journal: at once); a rename marks
/// the moved bytes with the name they came from.
#[test]
fn deleted_bytes_are_held_until_the_journal_lets_go() {
    let (dir, store, id) = setup();
    let to = SealTo::keys(vec![id.to_public()]);
    let held_dir = dir.path().join("removed");
    assert_eq!(mode(&held_dir), 0o700);
    let held = || fs::read_dir(&held_dir).unwrap().count();

    store
        .seal(&n("plain"), Cursor::new(b"x".to_vec()), &to, 1 << 20)
        .unwrap();
    store.remove(&n("plain")).unwrap();
    assert_eq!(held(), 0, "no journal: nothing to wait for");

    let holder = Arc::new(Holder::default());
    let store = store.with_journal(holder.clone());
    store
        .seal(&n("h"), Cursor::new(b"bytes".to_vec()), &to, 1 << 20)
        .unwrap();
    let bytes = fs::read(store.path_of(&n("h"))).unwrap();
    store.remove(&n("h")).unwrap();
    assert!(!store.contains(&n("h")));
    assert!(store.names().unwrap().is_empty(), "a held file is listed");
    let kept = holder.0.lock().unwrap().clone();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].0, n("h"));
    assert_eq!(store.held_files().unwrap(), vec![kept[0].1.clone()]);
    assert_eq!(
        fs::read(&kept[0].1).unwrap(),
        bytes,
        "not the deleted bytes"
    );
    release_held(&kept[0].1);
    assert_eq!(held(), 0);
    assert!(matches!(store.remove(&n("h")), Err(Error::NotFound(_))));

    // A held folder that cannot take them (here: not a folder; on a full
    // disk, a rename that needs a block): the delete still works.
    fs::remove_dir(&held_dir).unwrap();
    fs::write(&held_dir, b"in the way").unwrap();
    store
        .seal(&n("f"), Cursor::new(b"f".to_vec()), &to, 1 << 20)
        .unwrap();
    store.remove(&n("f")).unwrap();
    assert!(!store.contains(&n("f")));
    assert!(!store.path_of(&n("f")).exists());
    fs::remove_file(&held_dir).unwrap();
    fs::create_dir(&held_dir).unwrap();

    store
        .seal(&n("m"), Cursor::new(b"m".to_vec()), &to, 1 << 20)
        .unwrap();
    assert_eq!(store.moved_from(&n("m")), None);
    store.rename(&n("m"), &n("there")).unwrap();
    assert_eq!(store.moved_from(&n("there")), Some(n("m")));
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Names in folders: the store is a tree (`docs/format.md`, "The store"),
/// in either sync mode; folders are made as names need them, private,
/// and listed, renamed, swept and recovered like names at the root.
#[test]
fn names_in_folders_live_in_a_tree_of_private_folders() {
    for grouped_mode in [false, true] {
        let (dir, store, id) = if grouped_mode { grouped() } else { setup() };
        let store = store.with_folders();
        let to = SealTo::keys(vec![id.to_public()]);
        store
            .seal(&n("ssh/keys/id"), Cursor::new(b"deep"), &to, 100)
            .unwrap();
        store
            .seal(&n("top"), Cursor::new(b"top"), &to, 100)
            .unwrap();
        assert_eq!(read(&store, &id, "ssh/keys/id"), b"deep");
        let root = dir.path().join("store");
        assert_eq!(mode(&root.join("ssh")), 0o700);
        assert_eq!(mode(&root.join("ssh/keys")), 0o700);
        assert_eq!(mode(&root.join("ssh/keys/id")), 0o600);
        // A seal waiting for its round reads as the name's, in its folder
        // too, and its round makes the folders.
        if grouped_mode {
            seal_later(&store, &id, "later/f", b"waits");
            assert!(!root.join("later").exists(), "made before its round");
            assert_eq!(read(&store, &id, "later/f"), b"waits");
            store.sync_now().unwrap();
            assert_eq!(mode(&root.join("later")), 0o700);
        } else {
            store
                .seal(&n("later/f"), Cursor::new(b"waits"), &to, 100)
                .unwrap();
        }
        assert_eq!(
            store.names().unwrap(),
            vec![n("later/f"), n("ssh/keys/id"), n("top")]
        );
        // Renames across folders, into new ones, and to the root.
        store.rename(&n("ssh/keys/id"), &n("gpg/id")).unwrap();
        store.rename(&n("later/f"), &n("f")).unwrap();
        store.rename(&n("top"), &n("ssh/top")).unwrap();
        store.sync_now().unwrap();
        assert_eq!(
            store.names().unwrap(),
            vec![n("f"), n("gpg/id"), n("ssh/top")]
        );
        assert_eq!(read(&store, &id, "gpg/id"), b"deep");
        // A file where a folder of the name goes: refused, nothing moved.
        let e = store.rename(&n("f"), &n("ssh/top/x")).unwrap_err();
        assert!(e.to_string().contains("ssh/top"), "{e}");
        assert_eq!(read(&store, &id, "f"), b"waits");
        // A delete takes the file and leaves its folder.
        store.remove(&n("gpg/id")).unwrap();
        assert!(!store.contains(&n("gpg/id")));
        assert!(root.join("gpg").is_dir());
        // Plaintext in a folder is swept like plaintext at the root.
        fs::write(root.join("ssh/plain"), b"left by hand").unwrap();
        let rep = store.sweep(&to, 100).unwrap();
        assert_eq!(rep.sealed, vec![n("ssh/plain")]);
        assert_eq!(read(&store, &id, "ssh/plain"), b"left by hand");
        // Opened again, the store reads the same tree.
        drop(store);
        let again = Store::open(dir.path()).unwrap();
        // Without folders (the mount and the mesh today), only the top.
        assert_eq!(again.names().unwrap(), vec![n("f")]);
        let again = again.with_folders();
        assert_eq!(
            again.names().unwrap(),
            vec![n("f"), n("ssh/plain"), n("ssh/top")]
        );
        assert_eq!(read(&again, &id, "ssh/top"), b"top");
    }
}

/// A seal in a folder still waiting when the agent died is put in place
/// at the next start, its folders made then.
#[test]
fn a_waiting_seal_in_a_new_folder_is_put_in_place_at_the_next_start() {
    let (dir, store, id) = grouped();
    seal_later(&store, &id, "new/deeper/f", b"closed, not yet synced");
    drop(store);
    let again = Store::open(dir.path()).unwrap();
    let done = again.recover_leftovers().unwrap();
    if !has_user_xattrs(dir.path()) {
        eprintln!("no user xattrs: waiting seals are lost with the agent");
        assert!(!again.contains(&n("new/deeper/f")));
        return;
    }
    assert_eq!(done.recovered, vec![n("new/deeper/f")]);
    assert_eq!(read(&again, &id, "new/deeper/f"), b"closed, not yet synced");
    assert_eq!(mode(&dir.path().join("store/new/deeper")), 0o700);
    assert_eq!(temps(&dir), 0);
}

/// Block tags of a name in a folder live in the same folder under
/// `tags/`, follow renames across folders, and are found at the next open.
#[test]
fn block_tags_of_names_in_folders_follow_them() {
    let (dir, store, id) = setup();
    let key = Arc::new(TagKey::of(&id));
    let tagged = SealTo {
        tags: Some(key.clone()),
        ..SealTo::keys(vec![id.to_public()])
    };
    let text = bytes(200_000);
    let tags_of = |name: &str| dir.path().join("tags").join(name);
    let check = |store: &Store, name: &str| -> Option<BlockTags> {
        let f = store.open_file(&n(name)).unwrap();
        let p = seal::Payload::open(&id, &f).unwrap();
        store.read_tags(&n(name), &key, &p.binding(), p.plaintext_len())
    };
    store
        .seal(&n("a/b/big"), Cursor::new(text.clone()), &tagged, 1 << 20)
        .unwrap();
    assert!(tags_of("a/b/big").is_file());
    assert!(check(&store, "a/b/big").is_some());
    store.rename(&n("a/b/big"), &n("c/big")).unwrap();
    assert!(!tags_of("a/b/big").exists());
    assert!(check(&store, "c/big").is_some(), "the tags moved with it");
    drop(store);
    let again = Store::open(dir.path()).unwrap();
    again.rename(&n("c/big"), &n("big")).unwrap();
    assert!(!tags_of("c/big").exists(), "known after a reopen");
    assert!(check(&again, "big").is_some());
    again.remove(&n("big")).unwrap();
    assert!(!tags_of("big").exists());
}

/// The errno of a folder operation, `None` for success.
fn errno_of_folder<T>(r: Result<T, Error>) -> Option<i32> {
    match r {
        Ok(_) => None,
        Err(Error::Folder { source, .. }) => Some(source.raw_os_error().expect("an errno")),
        Err(e) => panic!("not a folder error: {e}"),
    }
}

fn errno_of_io<T>(r: io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().expect("an errno"))
}

/// `mkdir`, `rmdir` and `rename` of folders answer what Linux answers on
/// the same file system: each case runs on a plain tree beside the store
/// and on the store, and the errors must agree.
#[test]
fn folder_operations_answer_as_linux_does() {
    for grouped_mode in [false, true] {
        let (dir, store, id) = if grouped_mode { grouped() } else { setup() };
        let store = store.with_folders();
        let to = SealTo::keys(vec![id.to_public()]);
        let plain = dir.path().join("plain");
        fs::create_dir(&plain).unwrap();
        let p = |s: &str| plain.join(s);
        // The same starting tree in both: a/b/, full/x, empty/, f.
        for f in ["a", "a/b", "full", "empty"] {
            fs::create_dir(p(f)).unwrap();
            store.make_folder(&n(f)).unwrap();
        }
        for f in ["full/x", "f"] {
            fs::write(p(f), b"x").unwrap();
            store.seal(&n(f), Cursor::new(b"x"), &to, 100).unwrap();
        }
        let mkdirs = ["a", "f", "nope/y", "f/y", "new"];
        for m in mkdirs {
            assert_eq!(
                errno_of_folder(store.make_folder(&n(m))),
                errno_of_io(fs::create_dir(p(m))),
                "mkdir {m}"
            );
        }
        for r in ["a", "f", "nope", "full", "new"] {
            assert_eq!(
                errno_of_folder(store.remove_folder(&n(r))),
                errno_of_io(fs::remove_dir(p(r))),
                "rmdir {r}"
            );
        }
        for (from, dest) in [
            ("a", "a/b/c"),
            ("a", "a/b"),
            ("a", "full"),
            ("a", "f"),
            ("nope", "z"),
            ("a", "nope/z"),
            ("a", "empty"),
            ("empty", "a"),
        ] {
            assert_eq!(
                errno_of_folder(store.rename_folder(&n(from), &n(dest))),
                errno_of_io(fs::rename(p(from), p(dest))),
                "rename {from} {dest}"
            );
        }
        // Both trees ended the same.
        let root = dir.path().join("store");
        assert_eq!(
            tree::walk(&root, crate::name::MAX_DEPTH).unwrap(),
            tree::walk(&plain, crate::name::MAX_DEPTH).unwrap()
        );
    }
}

/// A folder holding only a seal that waits for its round is not empty,
/// and a folder rename takes such seals, block tags and recorded states
/// along; a store without folders refuses folder operations.
#[test]
fn a_folder_rename_takes_everything_below_along() {
    let (dir, store, id) = grouped();
    let meta = Arc::new(Meta::open(&dir.path().join("meta.redb")).unwrap());
    let store = store.with_states(&meta).with_folders();
    let key = Arc::new(TagKey::of(&id));
    let tagged = SealTo {
        tags: Some(key.clone()),
        ..SealTo::keys(vec![id.to_public()])
    };
    store.make_folder(&n("old")).unwrap();
    store.make_folder(&n("old/sub")).unwrap();
    seal_later(&store, &id, "old/sub/waits", b"waits");
    assert_eq!(
        errno_of_folder(store.remove_folder(&n("old/sub"))),
        Some(libc::ENOTEMPTY)
    );
    store
        .seal(&n("old/big"), Cursor::new(bytes(200_000)), &tagged, 1 << 20)
        .unwrap();
    store
        .seal(&n("old/kept"), Cursor::new(b"x"), &tagged, 100)
        .unwrap();
    meta.apply(&[crate::meta::Op::SetState(
        n("old/kept"),
        Some(State::Conflict),
    )])
    .unwrap();
    let moved = store.rename_folder(&n("old"), &n("new")).unwrap();
    assert_eq!(
        moved,
        vec![
            (n("old/big"), n("new/big")),
            (n("old/kept"), n("new/kept")),
            (n("old/sub/waits"), n("new/sub/waits")),
        ]
    );
    assert_eq!(read(&store, &id, "new/sub/waits"), b"waits");
    assert_eq!(read(&store, &id, "new/big"), bytes(200_000));
    assert!(!store.contains(&n("old/big")) && !store.is_folder(&n("old")));
    assert_eq!(store.state(&n("new/kept")).unwrap(), Some(State::Conflict));
    assert_eq!(store.state(&n("old/kept")).unwrap(), None);
    let f = store.open_file(&n("new/big")).unwrap();
    let p = seal::Payload::open(&id, &f).unwrap();
    assert!(
        store
            .read_tags(&n("new/big"), &key, &p.binding(), p.plaintext_len())
            .is_some(),
        "the tags moved with the folder"
    );
    assert!(!dir.path().join("tags/old").exists());
    store.sync_now().unwrap();
    assert_eq!(
        store.names().unwrap(),
        vec![n("new/big"), n("new/kept"), n("new/sub/waits")]
    );
    // Without folders, every folder operation is refused.
    let flat = Store::open(dir.path()).unwrap();
    assert_eq!(
        errno_of_folder(flat.make_folder(&n("x"))),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno_of_folder(flat.remove_folder(&n("new/sub"))),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno_of_folder(flat.rename_folder(&n("new"), &n("x"))),
        Some(libc::EPERM)
    );
}

/// The owner's execute bit (`store::mode`): a seal gives it as asked or
/// keeps the one of the version it replaces, the sweep keeps a plaintext
/// file's, and `set_executable` flips it on the newest bytes (a waiting
/// seal's too) and tells the journal only when it changed.
#[test]
fn the_execute_bit_is_given_kept_and_flipped_as_a_change() {
    let (dir, store, id) = grouped();
    let log = Arc::new(Log::default());
    let store = store.with_journal(log.clone());
    let to = SealTo::keys(vec![id.to_public()]);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let at = |name: &str| store.current_path(&n(name));
    let exec = SealAttrs {
        executable: Some(true),
        ..SealAttrs::default()
    };
    let sealed = store
        .seal_with(
            &n("run"),
            Cursor::new(b"#!/bin/sh".to_vec()),
            &to,
            1 << 20,
            exec,
        )
        .unwrap();
    assert!(sealed.executable);
    assert_eq!(mode(&at("run")), 0o700);
    // A seal with nothing asked keeps it.
    let sealed = store
        .seal(
            &n("run"),
            Cursor::new(b"#!/bin/sh\n".to_vec()),
            &to,
            1 << 20,
        )
        .unwrap();
    assert!(sealed.executable && store.executable(&n("run")));
    // A new name starts plain; a deferred seal (waiting for its round)
    // takes what the mount asks.
    store
        .seal(&n("plain"), Cursor::new(b"x".to_vec()), &to, 1 << 20)
        .unwrap();
    assert!(!store.executable(&n("plain")));
    assert_eq!(mode(&at("plain")), 0o600);
    let seal = store
        .seal_deferred(
            &n("plain"),
            Cursor::new(b"y".to_vec()),
            &to,
            1 << 20,
            SealAttrs::new(then(), true),
            &crate::Base::Current,
        )
        .unwrap();
    assert!(seal.sealed.executable);
    drop(seal);
    assert!(store.waiting_temp(&n("plain")).is_some(), "still waiting");
    assert_eq!(mode(&at("plain")), 0o700);
    store.deliver_journal();
    let before = log.entries().len();
    // chmod: the waiting seal's bytes flip; the same bit again is no change.
    assert!(store.set_executable(&n("plain"), true).unwrap().is_none());
    drop(
        store
            .set_executable(&n("plain"), false)
            .unwrap()
            .expect("a change"),
    );
    store.deliver_journal();
    assert_eq!(mode(&at("plain")), 0o600);
    let entries = log.entries();
    assert_eq!(entries.len(), before + 1, "{entries:?}");
    assert!(
        entries[before].starts_with("changed plain sealed=false"),
        "{entries:?}"
    );
    store.sync_now().unwrap();
    assert_eq!(mode(&dir.path().join("store/plain")), 0o600);
    assert!(matches!(
        store.set_executable(&n("gone"), true),
        Err(Error::NotFound(_))
    ));
    // The sweep keeps a plaintext file's bit.
    let bare = dir.path().join("bare");
    fs::create_dir(&bare).unwrap();
    fs::write(bare.join("script"), b"#!/bin/sh").unwrap();
    fs::set_permissions(bare.join("script"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(bare.join("notes"), b"n").unwrap();
    store.import_dir(&bare, &to, 1 << 20).unwrap();
    assert!(store.executable(&n("script")));
    assert!(!store.executable(&n("notes")));
}

/// A listing never misses a name whose seal a round is putting in place
/// meanwhile: the round renames it into the store folder and then drops
/// it from the waiting seals, and a listing that read the folder before
/// the one and the waiting seals after the other saw it in neither.
#[test]
fn a_listing_during_rounds_sees_every_sealed_name() {
    let (_dir, store, id) = grouped();
    let store = store.with_folders();
    let to = SealTo::keys(vec![id.to_public()]);
    store.make_folder(&n("d")).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rounds = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                store.sync_now().unwrap();
            }
        })
    };
    let mut misses = Vec::new();
    for i in 0..400 {
        let name = n(&format!("d/f{i:03}"));
        let seal = store
            .seal_deferred(
                &name,
                Cursor::new(b"x".to_vec()),
                &to,
                1 << 20,
                SealAttrs::new(then(), false),
                &crate::Base::Current,
            )
            .unwrap();
        drop(seal);
        for _ in 0..3 {
            let listed = store.entries_in(Some(&n("d"))).unwrap();
            if !listed.iter().any(|(l, _)| *l == name) {
                misses.push(name.to_string());
            }
            if !store.names().unwrap().contains(&name) {
                misses.push(format!("{name} (names)"));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    rounds.join().unwrap();
    assert!(misses.is_empty(), "listed without: {misses:?}");
}
