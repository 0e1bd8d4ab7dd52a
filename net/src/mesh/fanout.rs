//! Fan-out: pushing each new local version, tombstone and resurrect at
//! once to every live member peer (`fan_out`, `push`, `push_record`), with
//! retries, and `deliver` for a leave that must reach someone. It must not
//! pull anything (that is [`super::catchup`]).

use lockbox_fs::escape::Escape;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use lockbox_fs::Name;

use super::body::{file_body, full, read_capped};
use super::route::Route;
use super::{now_instant, Mesh, H_RECORD};
use crate::records;
use crate::replica::{Outgoing, Table};

pub(super) async fn fan_out(
    mesh: Arc<Mesh>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Outgoing>,
) {
    while let Some(out) = rx.recv().await {
        if mesh.holding_back() || mesh.replica.departed().is_some() {
            // Kept in the tables; anti-entropy carries it once caught up (a
            // departed envoy's are refused anyway).
            continue;
        }
        // Queued per peer: a burst goes in batches (see `batch` and
        // `record_queue`).
        let record = match &out {
            Outgoing::Version(_) => None,
            Outgoing::Tombstone(t) => Some((Table::Tombstones, t.to_bytes())),
            Outgoing::Resurrect(r) => Some((Table::Resurrects, r.to_bytes())),
            Outgoing::Folder(f) => Some((Table::Folders, f.to_bytes())),
        };
        for addr in mesh.push_targets() {
            match (&out, &record) {
                (Outgoing::Version(name), _) => mesh.queue_push(addr, name.clone()),
                (_, Some((table, bytes))) => mesh.queue_record(addr, *table, bytes.clone()),
                (_, None) => {}
            }
        }
    }
}

/// How a push failed: worth another attempt, or not.
enum PushError {
    Retry(String),
    Final(String),
}

impl Mesh {
    /// Member peers heard from within `stale_after` with room on disk.
    pub(super) fn push_targets(&self) -> Vec<SocketAddr> {
        let now = now_instant();
        let members = self.replica.members().names();
        let Ok(peers) = self.peers.lock() else {
            return Vec::new();
        };
        peers
            .iter()
            .filter(|(_, p)| {
                p.member
                    && p.envoy.as_ref().is_some_and(|e| members.contains(e))
                    && p.last_seen
                        .is_some_and(|t| now.duration_since(t) < self.cfg.stale_after)
                    && !p.disk_short
                    && p.free_percent
                        .is_none_or(|f| f > self.cfg.disk_pressure_percent)
            })
            .map(|(a, _)| *a)
            .collect()
    }

    /// Push the current version of `name` to `addr`, with retries.
    pub(super) async fn push(&self, addr: SocketAddr, name: &Name) {
        let mut delay = Duration::from_millis(200);
        const ATTEMPTS: u32 = 4;
        for attempt in 1..=ATTEMPTS {
            match self.push_once(addr, name).await {
                Ok(()) => return,
                Err(PushError::Final(e)) => {
                    tracing::debug!("push of {} to {addr}: {e}", name.escaped());
                    return;
                }
                Err(PushError::Retry(e)) => {
                    tracing::debug!(
                        "push of {} to {addr} failed (attempt {attempt}): {e}",
                        name.escaped()
                    );
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 3;
            }
        }
        tracing::info!(
            "could not push {} to {addr}; anti-entropy will deliver it",
            name.escaped()
        );
    }

    async fn push_once(&self, addr: SocketAddr, name: &Name) -> Result<(), PushError> {
        // The version held now (a newer one may have replaced the one that
        // triggered this push; then that one is pushed).
        let rec = match self.replica.record(name) {
            Ok(Some(r)) => r,
            _ => return Err(PushError::Final("no longer held".into())),
        };
        let file = self
            .replica
            .store()
            .open_file(name)
            .map_err(|e| PushError::Final(e.to_string()))?;
        let body = file_body(file);
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.uri(addr, &self.path(&Route::Push(name.clone()))))
            .header(H_RECORD, hex::encode(rec.to_bytes()))
            .header(http::header::CONTENT_LENGTH, rec.body().ciphertext_len)
            .body(body)
            .map_err(|e| PushError::Final(e.to_string()))?;
        let resp = self
            .request(addr, req)
            .await
            .map_err(|e| PushError::Retry(e.to_string()))?;
        let status = resp.status();
        let text = read_capped(resp.into_body(), 4096)
            .await
            .unwrap_or_default();
        match status.as_u16() {
            200..=299 => {
                self.learn_version(addr, name, rec.body());
                Ok(())
            }
            409 | 410 | 400 | 403 | 413 => Err(PushError::Final(format!(
                "{status}: {}",
                String::from_utf8_lossy(&text)
            ))),
            507 => {
                self.disk_refused_by(addr);
                Err(PushError::Final("peer disk full".into()))
            }
            _ => Err(PushError::Retry(format!("{status}"))),
        }
    }

    /// POST one signed record to `addr`'s `table`, with a few retries.
    /// Returns whether the peer took it.
    pub(super) async fn push_record(&self, addr: SocketAddr, table: Table, record: &[u8]) -> bool {
        self.push_records(addr, table, &[record]).await
    }

    /// POST signed records of `table` to `addr` as one list, with a few
    /// retries. Returns whether the peer took them.
    pub(super) async fn push_records(
        &self,
        addr: SocketAddr,
        table: Table,
        records: &[impl AsRef<[u8]>],
    ) -> bool {
        let body = records::encode_list(records.iter().map(AsRef::as_ref));
        for _ in 0..3 {
            let req = match Request::builder()
                .method(Method::POST)
                .uri(self.uri(addr, &self.path(&Route::PostTable(table))))
                .body(full(body.clone()))
            {
                Ok(r) => r,
                Err(_) => return false,
            };
            match self.request(addr, req).await {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) => {
                    tracing::debug!("{} to {addr}: {}", table.path(), r.status());
                    return false;
                }
                Err(e) => tracing::debug!("{} to {addr}: {e}", table.path()),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        false
    }

    /// Where a record that must reach every member it can goes: one
    /// address of each member envoy — the one it proved itself on last,
    /// live or not, proven at this moment or not (the push proves
    /// membership on its connection first), full disk or not (a record is
    /// small) — so the answers count envoys.
    fn deliver_targets(&self) -> Vec<SocketAddr> {
        let members = self.replica.members().names();
        let Ok(peers) = self.peers.lock() else {
            return Vec::new();
        };
        // Per envoy, the address proven last (a peer that only claimed a
        // member's name in a refusal never displaces a proven one).
        type Best = (SocketAddr, (bool, Option<std::time::Instant>));
        let mut best: std::collections::HashMap<&str, Best> = std::collections::HashMap::new();
        for (addr, p) in peers.iter() {
            let Some(envoy) = p
                .envoy
                .as_deref()
                .filter(|e| members.iter().any(|m| m == e))
            else {
                continue;
            };
            let rank = (p.member, p.last_seen);
            if best.get(envoy).is_none_or(|(_, r)| rank > *r) {
                best.insert(envoy, (*addr, rank));
            }
        }
        best.into_values().map(|(a, _)| a).collect()
    }

    /// Push a signed table record to every member envoy now (see
    /// [`Mesh::deliver_targets`]) and wait (at most `within`) for the
    /// answers: `(took it, asked)`. For a leave, which must reach someone
    /// before the envoy scrubs itself: a member that went quiet for a few
    /// seconds on a loaded machine is still asked.
    pub async fn deliver(
        self: &Arc<Self>,
        table: Table,
        record: Vec<u8>,
        within: Duration,
    ) -> (usize, usize) {
        let targets = self.deliver_targets();
        let asked = targets.len();
        let mut tasks = tokio::task::JoinSet::new();
        for addr in targets {
            let me = self.clone();
            let record = record.clone();
            tasks.spawn(async move { me.push_record(addr, table, &record).await });
        }
        let mut took = 0;
        let _ = tokio::time::timeout(within, async {
            while let Some(r) = tasks.join_next().await {
                took += usize::from(r.unwrap_or(false));
            }
        })
        .await;
        (took, asked)
    }
}
