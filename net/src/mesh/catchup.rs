//! Anti-entropy: after a hello, pull the tables whose digests differ from
//! ours and the peer's manifest, merge them as they arrive (read as
//! streams, never held whole), and fetch every version we lack; also how an envoy that was away catches up (ending a long
//! absence). It must not push anything (that is [`super::fanout`]).

use lockbox_fs::escape::Escape;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use lockbox_fs::Name;

use super::body::{
    apply_table_body, declared_over, receive_body, BodyError, ListBody, ListBodyError,
    TableBodyError,
};
use super::route::Route;
use super::{record_header, unix_now, Mesh, PeerError, MAX_TABLE_BODY};
use crate::announce::Digests;
use crate::replica::{self, Admission, ManifestError, Refusal, Table, MAX_TABLE_ENTRIES};

impl Mesh {
    /// Pull the tables whose digests differ from ours, and merge them in
    /// the order of [`Table::ALL`] (leaves, resurrects, tombstones), then
    /// the manifest.
    pub(super) async fn catch_up(
        self: &Arc<Self>,
        addr: SocketAddr,
        theirs: Digests,
    ) -> Result<(), PeerError> {
        for table in Table::ALL {
            let their = match table {
                Table::Tombstones => theirs.tombstones,
                Table::Resurrects => theirs.resurrects,
                Table::Leaves => theirs.leaves,
                // Announced within the files' digest, pulled with them.
                Table::Folders => continue,
            };
            if their != self.replica.table_digest(table) {
                self.pull_table(addr, table).await?;
            }
        }
        let now = unix_now();
        if let Ok(mut a) = self.absence.lock() {
            if a.holding_back() {
                a.back_at = Some(now);
                tracing::info!("caught up after a long absence: pushing again");
            }
        }
        // An envoy that left the circle keeps its tables (so it knows) but
        // takes no more files.
        if theirs.files != self.replica.files_digest() && self.replica.departed().is_none() {
            // The folders first (an envoy from before folders has none to
            // serve), so the files that follow find theirs on record.
            match self.pull_table(addr, Table::Folders).await {
                Ok(()) => {}
                Err(PeerError::NotServed { status, .. }) if status.as_u16() == 404 => {}
                Err(e) => return Err(e),
            }
            self.pull_files(addr).await?;
        }
        if let Ok(mut l) = self.last_catchup.lock() {
            // Persisted at most once a minute (it only matters in days).
            let stored = self.replica.last_contact().unwrap_or(0);
            if now.saturating_sub(stored) >= 60 {
                self.replica.set_last_contact(now);
            }
            *l = Some(SystemTime::now());
        }
        Ok(())
    }

    /// Pull `table` from `addr` and apply it as it arrives (one record at
    /// a time, a batch per blocking task; see `body::apply_table_body`),
    /// holding one of the table permits meanwhile.
    pub(super) async fn pull_table(&self, addr: SocketAddr, table: Table) -> Result<(), PeerError> {
        let resp = self.get(addr, &self.path(&Route::GetTable(table))).await?;
        if !resp.status().is_success() {
            return Err(PeerError::NotServed {
                what: table.path(),
                status: resp.status(),
            });
        }
        if declared_over(resp.body(), MAX_TABLE_BODY) {
            return Err(BodyError::TooLarge {
                cap: MAX_TABLE_BODY,
            }
            .into());
        }
        let Ok(_permit) = self.table_permits.acquire().await else {
            return Ok(());
        };
        match apply_table_body(self.replica.clone(), table, resp.into_body(), false).await {
            Ok(()) => Ok(()),
            Err(TableBodyError::Body(e)) => Err(e.into()),
            Err(TableBodyError::Task(e)) => Err(e.into()),
            // What was valid is applied; one refused entry, or a malformed
            // list after the entries that were whole, must not stop the
            // catch-up of the rest.
            Err(e) => {
                tracing::debug!("{} from {addr}: {e}", table.path());
                Ok(())
            }
        }
    }

    /// Pull the peer's manifest and fetch every version it lists that we
    /// lack. The manifest is read as a stream, one entry at a time; each
    /// wanted version is fetched as its entry arrives, with at most
    /// `push_concurrency` fetches started and not yet done (the manifest
    /// waits meanwhile), so neither the manifest nor the list of what is
    /// wanted is ever held whole. A malformed entry or list ends the pull
    /// with an error after the fetches already started are done.
    pub(super) async fn pull_files(self: &Arc<Self>, addr: SocketAddr) -> Result<(), PeerError> {
        let free = self.replica.store().free_percent().unwrap_or(100);
        if free <= self.cfg.disk_pressure_percent {
            return Err(PeerError::DiskPressure {
                free,
                limit: self.cfg.disk_pressure_percent,
            });
        }
        let resp = self.get(addr, &self.path(&Route::Manifest)).await?;
        if !resp.status().is_success() {
            return Err(PeerError::NotServed {
                what: "manifest",
                status: resp.status(),
            });
        }
        let mut list = ListBody::new(resp.into_body(), MAX_TABLE_ENTRIES)?;
        let most = self.cfg.push_concurrency.max(1);
        let mut tasks = tokio::task::JoinSet::new();
        // What the peer holds, for the presence matrix (see `presence`).
        let mut listed = std::collections::HashMap::new();
        let read = async {
            while let Some(item) = list.next().await.map_err(|e| match e {
                ListBodyError::Body(e) => PeerError::Body(e),
                ListBodyError::List(e) => PeerError::Manifest(ManifestError::List(e)),
            })? {
                let (name, rec) = replica::decode_manifest_entry(&item)?;
                listed.insert(name.clone(), super::Held::of(rec.body()));
                if let Err(e) = self.size_allowed(&name, rec.body()) {
                    tracing::debug!("peer {addr}: not taking {}: {e}", name.escaped());
                    continue;
                }
                match self.replica.admit(&name, &rec) {
                    Ok(Admission::Store(_)) => {}
                    Ok(Admission::Same) => continue,
                    Err(Refusal::Newer(_) | Refusal::Tombstoned) => continue,
                    Err(e) => {
                        tracing::debug!("peer {addr}: not taking {}: {e}", name.escaped());
                        continue;
                    }
                }
                while tasks.len() >= most {
                    tasks.join_next().await;
                }
                let me = self.clone();
                tasks.spawn(async move {
                    let _permit = me.transfers.acquire().await;
                    if let Err(e) = me.fetch(addr, &name).await {
                        tracing::warn!("could not fetch {} from {addr}: {e}", name.escaped());
                    }
                });
            }
            Ok::<_, PeerError>(())
        }
        .await;
        while tasks.join_next().await.is_some() {}
        if read.is_ok() {
            self.learn_manifest(addr, listed);
        }
        read
    }

    /// Fetch one version from `addr` and install it.
    pub(super) async fn fetch(&self, addr: SocketAddr, name: &Name) -> Result<(), PeerError> {
        let resp = self
            .get(addr, &self.path(&Route::File(name.clone())))
            .await?;
        if !resp.status().is_success() {
            return Err(PeerError::FileNotServed(resp.status()));
        }
        let rec = record_header(resp.headers())?;
        let name = name.clone();
        self.size_allowed(&name, rec.body())?;
        match self.replica.admit(&name, &rec) {
            Ok(Admission::Same) | Err(Refusal::Newer(_) | Refusal::Tombstoned) => return Ok(()),
            Ok(Admission::Store(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let replica = self.replica.clone();
        let version = rec.body().clone();
        match receive_body(replica, name.clone(), rec, resp.into_body()).await {
            Ok(_) => {
                self.learn_version(addr, &name, &version);
                Ok(())
            }
            // Overtaken while it streamed (a newer version or a delete came
            // in meanwhile): nothing to fetch any more.
            Err(Refusal::Newer(_) | Refusal::Tombstoned) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
