//! The admission rule: whether a version a peer offers is wanted, and
//! under which name (its own, or its conflict copy), or why it is refused.
//! It must not read or write the body or the store.

use lockbox_crypto::sign::Signed;
use lockbox_fs::Name;

use super::{in_mesh, internal, Admission, Refusal, Replica};
use crate::records::FileVersion;
use crate::version::{resolve, Resolution};

impl Replica {
    /// Check a version offered by a peer for `name`, before its body is read.
    pub fn admit(&self, name: &Name, rec: &Signed<FileVersion>) -> Result<Admission, Refusal> {
        let v = rec.body();
        if self.members().by_key(&rec.signer()).is_none() {
            return Err(Refusal::NotMember(format!(
                "the version of {name} is signed by {}, which is not a member of this circle",
                rec.signer()
            )));
        }
        if v.user != self.user {
            return Err(Refusal::Bad(format!("the record is for user {}", v.user)));
        }
        if !v.fits_name(name) || !in_mesh(name) {
            return Err(Refusal::Bad(format!(
                "a record of {} cannot be stored as {name}",
                v.name
            )));
        }
        self.decide(name, v)
    }

    /// Where an admitted version goes, given what is held now.
    pub(super) fn decide(&self, name: &Name, v: &FileVersion) -> Result<Admission, Refusal> {
        if self.is_deleted(name, &v.vv) {
            return Err(Refusal::Tombstoned);
        }
        let current = self.record(name).map_err(internal)?;
        let Some(cur) = current else {
            return Ok(Admission::Store(name.clone()));
        };
        let (a, b) = (cur.body().candidate(), v.candidate());
        match resolve(&a, &b) {
            Resolution::Same => Ok(Admission::Same),
            Resolution::Supersedes { newer, .. } if newer == &b => {
                Ok(Admission::Store(name.clone()))
            }
            Resolution::Supersedes { .. } => Err(Refusal::Newer(name.to_string())),
            Resolution::Conflict { winner, .. } if winner == &b => {
                Ok(Admission::Store(name.clone()))
            }
            Resolution::Conflict { .. } => {
                // The newcomer loses: it is kept as its conflict copy.
                let copy = v
                    .conflict_name()
                    .ok_or_else(|| Refusal::Bad("no conflict-copy name".into()))?;
                if &copy == name {
                    return Err(Refusal::Newer(name.to_string()));
                }
                self.decide(&copy, v)
            }
        }
    }
}
