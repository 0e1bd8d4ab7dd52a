//! A session for unit tests: an identity and its tag key, locked and
//! unlocked by hand (the agent's is `src/session.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lockbox_crypto::seal::tags::TagKey;
use lockbox_crypto::AgeIdentity;

use crate::keys::Keys;
use crate::store::SealTo;

pub(crate) struct TestKeys {
    pub id: Arc<AgeIdentity>,
    pub key: Arc<TagKey>,
    pub unlocked: AtomicBool,
}

impl TestKeys {
    /// A fresh identity, unlocked.
    pub fn unlocked() -> Arc<TestKeys> {
        let id = AgeIdentity::generate();
        Arc::new(TestKeys {
            key: Arc::new(TagKey::of(&id)),
            id: Arc::new(id),
            unlocked: AtomicBool::new(true),
        })
    }

    pub fn set_unlocked(&self, unlocked: bool) {
        self.unlocked.store(unlocked, Ordering::SeqCst);
    }
}

impl Keys for TestKeys {
    fn identity(&self) -> Option<Arc<AgeIdentity>> {
        self.is_unlocked().then(|| self.id.clone())
    }
    fn is_unlocked(&self) -> bool {
        self.unlocked.load(Ordering::SeqCst)
    }
    fn recipients(&self) -> Result<SealTo, crate::Error> {
        Ok(SealTo::keys(vec![self.id.to_public()]))
    }
    fn tag_key(&self) -> Option<Arc<TagKey>> {
        self.is_unlocked().then(|| self.key.clone())
    }
}
