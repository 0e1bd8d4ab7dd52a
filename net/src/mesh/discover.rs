//! The mesh's periodic rounds: hearing multicast announcements (and
//! contacting a peer whose digests or membership changed), and the ticker
//! that announces this envoy, contacts `cross_subnet_peers` and forgets
//! expired deletes. The datagram itself is [`crate::announce`], its socket
//! [`crate::discovery`]; this must not answer or send requests itself.

use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::announce::{AnnouncedRecipient, Announcement};
use crate::discovery::Discovery;

use super::{unix_now, Mesh, PRUNE_EVERY};

pub(super) async fn listen_announcements(mesh: Arc<Mesh>, d: Arc<Discovery>) {
    loop {
        let (a, from) = match d.recv().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("discovery receive failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if a.is_own(mesh.instance) || a.user != *mesh.replica.user() {
            continue;
        }
        let addr = SocketAddr::new(from.ip(), a.peer_port.get());
        let digests = a.digests;
        let mut need = false;
        mesh.seen(addr, |p| {
            need = !p.member || p.instance != Some(a.instance_id) || p.digests != Some(digests);
            if p.envoy.is_none() {
                p.envoy = Some(a.envoy.to_string());
            }
        });
        let mine = mesh.digests();
        if need || digests != mine {
            let m = mesh.clone();
            tokio::spawn(async move { m.contact(addr).await });
        }
    }
}

pub(super) async fn ticker(mesh: Arc<Mesh>, discovery: Option<Arc<Discovery>>) {
    let mut interval = tokio::time::interval(mesh.cfg.announce_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pruned = Instant::now();
    loop {
        interval.tick().await;
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = Instant::now();
            let (replica, retention) = (
                mesh.replica.clone(),
                mesh.cfg.tombstone_retention.as_secs() as i64,
            );
            let _ = tokio::task::spawn_blocking(move || replica.prune(retention, unix_now())).await;
        }
        if let Some(d) = &discovery {
            if let Some(a) = mesh.announcement() {
                if let Err(e) = d.announce(&a).await {
                    tracing::debug!("announce failed: {e}");
                }
            }
        }
        for spec in mesh.cfg.static_peers.clone() {
            let m = mesh.clone();
            tokio::spawn(async move {
                match resolve_peer(&spec, m.cfg.default_port).await {
                    Some(addr) => m.contact(addr).await,
                    None => tracing::debug!("cannot resolve peer {spec}"),
                }
            });
        }
    }
}

impl Mesh {
    pub(super) fn announcement(&self) -> Option<Announcement> {
        let digests = self.digests();
        Some(Announcement {
            user: self.replica.user().clone(),
            envoy: self.replica.envoy().clone(),
            recipient: AnnouncedRecipient::new(self.cfg.recipient.clone()).ok()?,
            signing_key: self.replica.signing_public().0,
            peer_port: NonZeroU16::new(self.port)?,
            instance_id: self.instance,
            digests,
        })
    }
}

pub(super) async fn resolve_peer(spec: &str, default_port: u16) -> Option<SocketAddr> {
    let spec = spec.to_string();
    tokio::task::spawn_blocking(move || {
        let with_port = if spec.parse::<SocketAddr>().is_ok()
            || spec
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            spec
        } else {
            format!("{spec}:{default_port}")
        };
        with_port.to_socket_addrs().ok()?.next()
    })
    .await
    .ok()
    .flatten()
}
