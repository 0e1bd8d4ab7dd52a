//! What `lockbox status` and `lockbox list` report, how it is gathered from
//! the local state, and how it is printed. The agent fills in the live parts
//! (session, hardening); the CLI fills in what it can when no agent runs.
//! Every name and text it prints is escaped (`lockbox_fs::escape`): file
//! names may hold control characters, and peers' words reach it too. The
//! JSON forms carry them as they are (JSON escapes them itself).

use std::fmt::Write as _;

use lockbox_fs::escape::Escape;
use lockbox_fs::meta::Meta;
use lockbox_fs::{Entry, FileState, Store};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::paths::Paths;
use crate::sys::Hardening;
use lockbox_fs::mount::MountState;

/// One row of `lockbox list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListEntry {
    /// File name (lossy UTF-8 for display; see `name_bytes`).
    pub name: String,
    /// Raw name bytes when the name is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_bytes: Option<Vec<u8>>,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// `ciphertext`, `plaintext`, `failed` or `conflict` (failed and
    /// conflict as recorded in `meta.redb`, never read from the name).
    pub state: String,
    /// On how many envoys the file is known to be (this one included).
    pub envoys: u32,
}

impl ListEntry {
    /// The name's bytes: the raw ones when it is not UTF-8.
    pub fn raw_name(&self) -> &[u8] {
        self.name_bytes.as_deref().unwrap_or(self.name.as_bytes())
    }

    /// The row for a store entry.
    pub fn from_entry(e: &Entry) -> Self {
        let name = e.name.to_string();
        let utf8 = std::str::from_utf8(e.name.as_bytes()).is_ok();
        ListEntry {
            name,
            name_bytes: (!utf8).then(|| e.name.as_bytes().to_vec()),
            size: e.size,
            mtime: e.mtime,
            state: state_word(e.state).to_string(),
            envoys: 1,
        }
    }
}

/// `store`, for a command that runs with no agent, reading the files'
/// states from `meta.redb` (the returned [`Meta`] keeps it open while the
/// store is used). When the database cannot be opened (another lockbox
/// command holds it), the states are unknown: a warning says so and every
/// file shows as ciphertext or plaintext.
pub fn store_with_states(paths: &Paths, store: &Store) -> (Store, Option<Meta>) {
    let path = paths.meta();
    if !path.exists() {
        return (store.clone(), None);
    }
    match Meta::open(&path) {
        Ok(meta) => (store.clone().with_states(&meta), Some(meta)),
        Err(e) => {
            tracing::warn!("failed and conflict files cannot be told apart now: {e}");
            (store.clone(), None)
        }
    }
}

fn state_word(s: FileState) -> &'static str {
    match s {
        FileState::Ciphertext => "ciphertext",
        FileState::Plaintext => "plaintext",
        FileState::Failed => "failed",
        FileState::Conflict => "conflict",
    }
}

/// File counts by state, with the failed names (see `docs/operations.md`,
/// "Status").
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileCounts {
    /// All files.
    pub total: usize,
    /// Sealed files (conflict copies included).
    pub ciphertext: usize,
    /// Not yet sealed.
    pub plaintext: usize,
    /// Failed to seal.
    pub failed: usize,
    /// Conflict copies (also counted in `ciphertext`).
    pub conflict: usize,
    /// Names of the failed files.
    pub failed_names: Vec<String>,
}

impl FileCounts {
    /// Count a store listing.
    pub fn of(entries: &[Entry]) -> Self {
        let mut c = FileCounts {
            total: entries.len(),
            ..FileCounts::default()
        };
        for e in entries {
            match e.state {
                FileState::Ciphertext => c.ciphertext += 1,
                FileState::Conflict => {
                    c.ciphertext += 1;
                    c.conflict += 1
                }
                FileState::Plaintext => c.plaintext += 1,
                FileState::Failed => {
                    c.failed += 1;
                    c.failed_names.push(e.name.to_string());
                }
            }
        }
        c
    }
}

/// Everything `lockbox status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// This envoy's name.
    pub envoy: String,
    /// The user.
    pub user: String,
    /// Whether an agent answered.
    pub agent_running: bool,
    /// The agent's pid.
    pub agent_pid: Option<u32>,
    /// Whether the identity is held.
    pub unlocked: bool,
    /// Seconds until the idle timeout.
    pub idle_left_secs: Option<u64>,
    /// Mount state, in words.
    pub mount: String,
    /// Mount state: `mounted`, `stale` (its server is gone: `ls` says
    /// "Transport endpoint is not connected") or `not mounted`.
    #[serde(default)]
    pub mount_state: String,
    /// Where the mount is (or goes).
    #[serde(default)]
    pub mount_point: String,
    /// Envoy names of the recipient set.
    pub recipients: Vec<String>,
    /// Peers (filled in by the mesh).
    pub peers: Vec<PeerLine>,
    /// The mesh in words: its port and discovery, or why it is off.
    #[serde(default)]
    pub mesh: String,
    /// Whether the mesh runs.
    #[serde(default)]
    pub mesh_on: bool,
    /// Its peer port, when it runs.
    #[serde(default)]
    pub mesh_port: Option<u16>,
    /// Files sealed to a recipient set other than the current members
    /// (re-encrypted at unlock, or by `lockbox reencrypt`).
    #[serde(default)]
    pub recipient_drift: usize,
    /// Their names (lossy UTF-8).
    #[serde(default)]
    pub drifted: Vec<String>,
    /// The mesh's tables, and whether the live peers agree on them.
    #[serde(default)]
    pub tables: Vec<TableLine>,
    /// Set when this envoy left or was evicted from the circle.
    #[serde(default)]
    pub departed: Option<String>,
    /// File counts.
    pub files: FileCounts,
    /// Last completed catch-up with a peer, seconds since the epoch.
    pub last_catch_up: Option<i64>,
    /// The long-absence line, when it applies.
    pub long_absence: Option<String>,
    /// The agent's hardening as it reads it back.
    pub hardening: Option<Hardening>,
    /// Warnings (swap, core dumps, hardening).
    pub warnings: Vec<String>,
    /// Every member envoy, this one first: reporting or not, locked or
    /// not, its disk (the status page's envoy table).
    #[serde(default)]
    pub envoys: Vec<EnvoyLine>,
    /// Every file held here × every member: what each holds of it (the
    /// status page's presence matrix).
    #[serde(default)]
    pub presence: Vec<PresenceRow>,
    /// The deletes in force (tombstones no resurrect lifted), newest first.
    #[serde(default)]
    pub deletes: Vec<DeleteLine>,
}

/// One member envoy in `status --json` and on the status page.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvoyLine {
    /// Its name.
    pub envoy: String,
    /// Whether it is this envoy.
    pub this: bool,
    /// `reporting` (heard within `stale_after`), `stale` (heard before
    /// that, within [`NOT_REPORTING_AFTER`] times it) or `not reporting`.
    pub state: String,
    /// Seconds since it was last heard from (none: not since this agent
    /// started).
    pub last_seen_secs: Option<u64>,
    /// Whether its user's session is unlocked, as it last said (none: it
    /// did not say).
    pub unlocked: Option<bool>,
    /// Free disk of its store, percent, as it last said.
    pub free_percent: Option<u8>,
    /// Its disk is short: it refuses pushes.
    pub disk_short: bool,
    /// Pushes it refused for want of disk since this agent started (for
    /// this envoy, the ones it refused; for another, the ones it refused
    /// this envoy).
    #[serde(default)]
    pub disk_refusals: u64,
    /// The protocol it speaks, as it last said.
    pub protocol: Option<u32>,
    /// Where it was reached, and why the last contact failed if it did.
    pub detail: String,
}

/// A member heard from longer ago than this many `stale_after` is "not
/// reporting" rather than "stale".
pub const NOT_REPORTING_AFTER: u64 = 3;

/// One file in the presence matrix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PresenceRow {
    /// Its name (lossy UTF-8; see [`ListEntry::name`]).
    pub name: String,
    /// Plaintext size of the version held here.
    pub size: u64,
    /// When that version was sealed, Unix seconds by its author's clock.
    pub sealed_unix: i64,
    /// The envoy that wrote it.
    pub author: String,
    /// Per member envoy: `current`, `older`, `newer`, `conflict`,
    /// `missing` or `unknown` (see `lockbox_net::mesh::Presence`).
    pub holders: std::collections::BTreeMap<String, String>,
    /// Every member holds the version held here.
    pub everywhere: bool,
    /// It is a conflict copy (`name~conflict-…`), or a member holds a
    /// version concurrent with it.
    pub conflict: bool,
}

/// One delete on record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeleteLine {
    /// The deleted name (lossy UTF-8).
    pub name: String,
    /// The envoy that deleted it.
    pub by: String,
    /// When, Unix seconds by its clock.
    pub deleted_unix: i64,
}

/// One table of the mesh in `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableLine {
    /// `files`, `tombstones`, `resurrects` or `leaves`.
    pub table: String,
    /// Records it holds.
    pub records: usize,
    /// Live members whose copy of it differs (a catch-up is due).
    pub differs_on: Vec<String>,
}

/// One peer in `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerLine {
    /// Envoy name.
    pub envoy: String,
    /// `live`, `stale`, `absent`, `refused` or `unreachable`.
    pub state: String,
    /// Where it was reached, and why it was refused (if it was).
    #[serde(default)]
    pub detail: String,
}

impl StatusReport {
    /// What can be known from disk alone (no agent).
    pub fn gather(paths: &Paths, config: &Config, store: &Store) -> anyhow::Result<Self> {
        let state = lockbox_fs::mount::state(&paths.mount);
        let at = paths.mount.display();
        let mount = match state {
            MountState::NotMounted => "not mounted (agent not running)".to_string(),
            MountState::Stale => format!(
                "stale: the agent is gone but its mount at {at} is left (ls says \"Transport \
                 endpoint is not connected\"); run lockbox unlock, which clears it (or umount -l {at})"
            ),
            MountState::Mounted => format!(
                "mounted at {at} by a process that does not answer as an agent: unmount it \
                 (umount {at}) and run lockbox unlock"
            ),
        };
        let entries = store.list()?;
        let recipients = std::fs::read_to_string(paths.recipients())
            .ok()
            .and_then(|t| lockbox_crypto::recipients::parse(&t).ok())
            .map(|v| v.into_iter().map(|r| r.envoy).collect())
            .unwrap_or_default();
        let mut warnings = crate::host::swap_warnings(&crate::host::swap_areas());
        warnings.extend(crate::host::core_dump_warnings());
        Ok(StatusReport {
            envoy: config.envoy.clone(),
            user: config.user.clone(),
            agent_running: false,
            agent_pid: None,
            unlocked: false,
            idle_left_secs: None,
            mount,
            mount_state: mount_state_word(state).into(),
            mount_point: paths.mount.display().to_string(),
            recipients,
            peers: Vec::new(),
            mesh: "off (agent not running)".into(),
            mesh_on: false,
            mesh_port: None,
            recipient_drift: 0,
            drifted: vec![],
            tables: vec![],
            departed: None,
            files: FileCounts::of(&entries),
            last_catch_up: None,
            long_absence: None,
            hardening: None,
            warnings,
            envoys: vec![],
            presence: vec![],
            deletes: vec![],
        })
    }

    /// A report with only the config's identity fields, for when the store
    /// cannot be read.
    pub fn gather_minimal(config: &crate::config::Config) -> StatusReport {
        StatusReport {
            envoy: config.envoy.clone(),
            user: config.user.clone(),
            agent_running: true,
            agent_pid: Some(std::process::id()),
            unlocked: false,
            idle_left_secs: None,
            mount: String::new(),
            mount_state: String::new(),
            mount_point: String::new(),
            recipients: vec![],
            peers: vec![],
            mesh: String::new(),
            mesh_on: false,
            mesh_port: None,
            recipient_drift: 0,
            drifted: vec![],
            tables: vec![],
            departed: None,
            files: Default::default(),
            last_catch_up: None,
            long_absence: None,
            hardening: None,
            warnings: vec![],
            envoys: vec![],
            presence: vec![],
            deletes: vec![],
        }
    }

    /// The text `lockbox status` prints.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "envoy: {}", self.envoy.escaped());
        let _ = writeln!(o, "user: {}", self.user.escaped());
        match (self.agent_running, self.agent_pid) {
            (true, Some(pid)) => {
                let _ = writeln!(o, "agent: running (pid {pid})");
            }
            (true, None) => {
                let _ = writeln!(o, "agent: running");
            }
            _ => {
                let _ = writeln!(o, "agent: not running (run 'lockbox unlock' to start it)");
            }
        }
        if self.unlocked {
            let left = self.idle_left_secs.unwrap_or(0);
            let _ = writeln!(
                o,
                "session: unlocked ({} idle time left)",
                humantime::format_duration(std::time::Duration::from_secs(left))
            );
        } else {
            let _ = writeln!(o, "session: locked (run 'lockbox unlock' to decrypt)");
        }
        let _ = writeln!(o, "mount: {}", self.mount.escaped());
        let _ = writeln!(
            o,
            "recipients: {}",
            if self.recipients.is_empty() {
                "none (run 'lockbox init')".to_string()
            } else {
                join_escaped(&self.recipients)
            }
        );
        if self.recipient_drift > 0 {
            let _ = writeln!(
                o,
                "recipient drift: {} file(s) sealed to an older member set \
                 (re-encrypted while unlocked; or run 'lockbox reencrypt')",
                self.recipient_drift
            );
        }
        if let Some(d) = &self.departed {
            let _ = writeln!(o, "circle: {}", d.escaped());
        }
        let _ = writeln!(o, "mesh: {}", self.mesh.escaped());
        if self.peers.is_empty() {
            let _ = writeln!(o, "peers: none seen");
        } else {
            let _ = writeln!(o, "peers:");
            for p in &self.peers {
                if p.detail.is_empty() {
                    let _ = writeln!(o, "  {}: {}", p.envoy.escaped(), p.state.escaped());
                } else {
                    let _ = writeln!(
                        o,
                        "  {}: {} ({})",
                        p.envoy.escaped(),
                        p.state.escaped(),
                        p.detail.escaped()
                    );
                }
            }
        }
        let f = &self.files;
        let _ = writeln!(o, "files: {}", f.total);
        let _ = writeln!(o, "  ciphertext: {}", f.ciphertext);
        if f.conflict > 0 {
            let _ = writeln!(o, "    conflict copies: {}", f.conflict);
        }
        if f.plaintext > 0 {
            let _ = writeln!(
                o,
                "  plaintext: {} (run 'lockbox unlock' to encrypt and sync)",
                f.plaintext
            );
        } else {
            let _ = writeln!(o, "  plaintext: 0");
        }
        let _ = writeln!(o, "  failed: {}", f.failed);
        for n in &f.failed_names {
            let _ = writeln!(o, "    {}", n.escaped());
        }
        if !self.tables.is_empty() {
            let _ = writeln!(o, "tables:");
            for t in &self.tables {
                let agree = if t.differs_on.is_empty() {
                    "same on every live peer".to_string()
                } else {
                    format!("differs on {}: catching up", join_escaped(&t.differs_on))
                };
                let _ = writeln!(o, "  {}: {} ({agree})", t.table.escaped(), t.records);
            }
        }
        match self.last_catch_up {
            Some(t) => {
                let _ = writeln!(o, "last catch-up: {}", fmt_time(t));
            }
            None => {
                let _ = writeln!(o, "last catch-up: never");
            }
        }
        if let Some(l) = &self.long_absence {
            let _ = writeln!(o, "long absence: {}", l.escaped());
        }
        if let Some(h) = self.hardening {
            let _ = writeln!(
                o,
                "hardening: dumpable={} core_limit={}",
                u8::from(h.dumpable),
                h.core_limit
            );
        }
        for w in &self.warnings {
            let _ = writeln!(o, "warning: {}", w.escaped());
        }
        o
    }
}

/// The word `status --json` gives for a mount state.
pub fn mount_state_word(state: MountState) -> &'static str {
    match state {
        MountState::Mounted => "mounted",
        MountState::Stale => "stale",
        MountState::NotMounted => "not mounted",
    }
}

/// Names joined with ", ", each escaped.
fn join_escaped(names: &[String]) -> String {
    let escaped: Vec<String> = names.iter().map(|n| n.escaped().to_string()).collect();
    escaped.join(", ")
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS ZONE`, in the local
/// time zone (`TZ`, else the system's).
pub fn fmt_time(t: i64) -> String {
    fmt_time_in(t, &jiff::tz::TimeZone::system())
}

/// [`fmt_time`] in time zone `tz`; a time out of range shows as seconds.
fn fmt_time_in(t: i64, tz: &jiff::tz::TimeZone) -> String {
    match jiff::Timestamp::from_second(t) {
        Ok(ts) => ts
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => format!("{t} s after 1970"),
    }
}

/// A size as people read it: bytes up to 1 KiB, then KiB, MiB, GiB with
/// one decimal.
pub fn fmt_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The text `lockbox list` prints.
pub fn render_list(rows: &[ListEntry]) -> String {
    let mut o = String::new();
    // As a tree: each folder on a line of its own (`name/`) the first time
    // a file below it comes, its entries indented under it. The rows come
    // sorted by path, so a folder's files follow it.
    let mut lines: Vec<(String, Option<&ListEntry>)> = Vec::new();
    let mut open: Vec<&[u8]> = Vec::new();
    for r in rows {
        let parts: Vec<&[u8]> = r.raw_name().split(|b| *b == b'/').collect();
        let (folders, file) = parts.split_at(parts.len() - 1);
        let same = open.iter().zip(folders).take_while(|(a, b)| a == b).count();
        open.truncate(same);
        for (depth, f) in folders.iter().enumerate().skip(same) {
            lines.push((format!("{}{}/", "  ".repeat(depth), f.escaped()), None));
            open.push(f);
        }
        let indent = "  ".repeat(folders.len());
        lines.push((format!("{indent}{}", file[0].escaped()), Some(r)));
    }
    let w = lines
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        o,
        "{:<w$}  {:>10}  {:<25}  {:<10}  ENVOYS",
        "NAME", "SIZE", "MODIFIED", "STATE"
    );
    for (name, row) in &lines {
        match row {
            Some(r) => {
                let _ = writeln!(
                    o,
                    "{:<w$}  {:>10}  {:<25}  {:<10}  {}",
                    name,
                    fmt_size(r.size),
                    fmt_time(r.mtime),
                    r.state,
                    r.envoys
                );
            }
            None => {
                let _ = writeln!(o, "{name}");
            }
        }
    }
    o
}

/// One file held here, for [`presence_rows`].
pub struct LocalVersion {
    /// Its name.
    pub name: lockbox_fs::Name,
    /// The version held here.
    pub held: lockbox_net::mesh::Held,
    /// Its plaintext size.
    pub size: u64,
    /// When it was sealed (its author's clock).
    pub sealed_unix: i64,
    /// Who wrote it.
    pub author: String,
}

/// The presence matrix: each file held here (`local`) against what every
/// other member holds of it (`holdings`, by envoy); this envoy (`me`)
/// holds each by definition.
pub fn presence_rows(
    me: &str,
    local: Vec<LocalVersion>,
    holdings: &std::collections::HashMap<String, lockbox_net::mesh::Holdings>,
) -> Vec<PresenceRow> {
    use lockbox_net::mesh::Presence;
    local
        .into_iter()
        .map(|v| {
            let mut holders = std::collections::BTreeMap::new();
            holders.insert(me.to_string(), Presence::Current.word().to_string());
            let mut everywhere = true;
            let mut conflict = lockbox_net::version::conflict_origin(v.name.as_bytes()).is_some();
            for (envoy, h) in holdings {
                let p = h.of(&v.name, &v.held);
                everywhere &= p == Presence::Current;
                conflict |= p == Presence::Conflict;
                holders.insert(envoy.clone(), p.word().to_string());
            }
            PresenceRow {
                name: v.name.to_string(),
                size: v.size,
                sealed_unix: v.sealed_unix,
                author: v.author,
                holders,
                everywhere,
                conflict,
            }
        })
        .collect()
}

/// The envoy table: this envoy (`me`, unlocked or not, its free disk),
/// then each other member as `peers` (the mesh's view) has it.
pub fn envoy_lines(
    me: EnvoyLine,
    members: &[String],
    peers: &[lockbox_net::mesh::PeerStatus],
    stale_after: std::time::Duration,
) -> Vec<EnvoyLine> {
    let gone = stale_after.as_secs().max(1) * NOT_REPORTING_AFTER;
    let this = me.envoy.clone();
    let mut out = vec![me];
    for m in members.iter().filter(|m| **m != this) {
        let seen: Vec<_> = peers
            .iter()
            .filter(|p| p.envoy.as_deref() == Some(m.as_str()) && p.refused.is_none())
            .collect();
        // The address heard from last speaks for the envoy.
        let best = seen
            .iter()
            .filter(|p| p.last_seen_secs.is_some())
            .min_by_key(|p| p.last_seen_secs);
        out.push(match best {
            Some(p) => EnvoyLine {
                envoy: m.clone(),
                this: false,
                state: if p.live {
                    "reporting"
                } else if p.last_seen_secs.is_some_and(|s| s < gone) {
                    "stale"
                } else {
                    "not reporting"
                }
                .into(),
                last_seen_secs: p.last_seen_secs,
                unlocked: p.unlocked,
                free_percent: p.free_percent,
                disk_short: p.disk_short,
                disk_refusals: p.disk_refusals,
                protocol: p.protocol,
                detail: match &p.error {
                    Some(e) => format!("{}; since then: {e}", p.addr),
                    None => p.addr.clone(),
                },
            },
            None => EnvoyLine {
                envoy: m.clone(),
                this: false,
                state: "not reporting".into(),
                last_seen_secs: None,
                unlocked: None,
                free_percent: None,
                disk_short: false,
                disk_refusals: 0,
                protocol: None,
                detail: "not heard from since this agent started".into(),
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        StatusReport {
            envoy: "laptop".into(),
            user: "ada".into(),
            agent_running: true,
            agent_pid: Some(42),
            unlocked: false,
            idle_left_secs: None,
            mount: "mounted at /home/ada/lockbox".into(),
            mount_state: "mounted".into(),
            mount_point: "/home/ada/lockbox".into(),
            recipients: vec!["laptop".into()],
            peers: vec![],
            mesh: "off (multicast off, no peers configured)".into(),
            mesh_on: false,
            mesh_port: None,
            recipient_drift: 0,
            drifted: vec![],
            tables: vec![],
            departed: None,
            files: FileCounts {
                total: 5,
                ciphertext: 3,
                plaintext: 1,
                failed: 1,
                conflict: 0,
                failed_names: vec!["vigo-lic-backup.tar.gz.20260429.failed".into()],
            },
            last_catch_up: None,
            long_absence: None,
            hardening: Some(Hardening {
                dumpable: false,
                core_limit: 0,
            }),
            warnings: vec![],
            ..StatusReport::default()
        }
    }

    #[test]
    fn counts_render_with_their_sub_counts() {
        let text = report().render();
        let expected = "files: 5\n  ciphertext: 3\n  plaintext: 1 (run 'lockbox unlock' to encrypt and sync)\n  failed: 1\n    vigo-lic-backup.tar.gz.20260429.failed\n";
        assert!(text.contains(expected), "{text}");
        assert!(text.contains("session: locked"));
        assert!(text.contains("hardening: dumpable=0 core_limit=0"));
    }

    #[test]
    fn json_round_trips() {
        let r = report();
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<StatusReport>(&j).unwrap(), r);
    }

    #[test]
    fn names_print_escaped() {
        let mut r = report();
        r.files.failed_names = vec!["a\x1b[31mred\nfake line.failed".into()];
        r.recipients = vec!["laptop".into(), "back\\slash".into()];
        r.warnings = vec!["w\x1b".into()];
        let text = r.render();
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(
            text.contains("    a\\x1b[31mred\\nfake line.failed\n"),
            "{text}"
        );
        assert!(
            text.contains("recipients: laptop, back\\\\slash\n"),
            "{text}"
        );
        let row = |name: &str, bytes: Option<Vec<u8>>| ListEntry {
            name: name.into(),
            name_bytes: bytes,
            size: 1,
            mtime: 0,
            state: "ciphertext".into(),
            envoys: 1,
        };
        let list = render_list(&[
            row("a\x1b[31mred\nfake line", None),
            row("caf\u{fffd}", Some(b"caf\xe9".to_vec())),
        ]);
        assert_eq!(list.lines().count(), 3, "{list}");
        assert!(list.contains("\na\\x1b[31mred\\nfake line  "), "{list}");
        assert!(list.contains("\ncaf\\xe9  "), "{list}");
    }

    #[test]
    fn the_list_shows_the_tree() {
        let row = |name: &str| ListEntry {
            name: name.into(),
            name_bytes: None,
            size: 1,
            mtime: 0,
            state: "ciphertext".into(),
            envoys: 2,
        };
        let list = render_list(&[
            row("aws/config"),
            row("aws/sso/cache/t.json"),
            row("aws/sso/x"),
            row("id"),
            row("ssh/a\nb"),
        ]);
        let firsts: Vec<String> = list
            .lines()
            .skip(1)
            .map(|l| {
                let indent = l.len() - l.trim_start().len();
                let word = l.split_whitespace().next().unwrap_or("");
                format!("{indent}:{word}")
            })
            .collect();
        assert_eq!(
            firsts,
            [
                "0:aws/", "2:config", "2:sso/", "4:cache/", "6:t.json", "4:x", "0:id", "0:ssh/",
                "2:a\\nb",
            ],
            "{list}"
        );
        // A folder line has no columns; a file line has them all.
        assert!(list.lines().any(|l| l == "aws/"), "{list}");
        assert!(
            list.lines()
                .any(|l| l.starts_with("  config") && l.ends_with("  2")),
            "{list}"
        );
    }

    #[test]
    fn times_show_in_the_local_zone() {
        let utc = jiff::tz::TimeZone::UTC;
        assert_eq!(fmt_time_in(0, &utc), "1970-01-01 00:00:00 UTC");
        // Paris's rule as a POSIX TZ string (needs no tzdata on the host).
        let paris = jiff::tz::TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").expect("TZ rule");
        assert_eq!(
            fmt_time_in(1_714_380_000, &paris),
            "2024-04-29 10:40:00 CEST"
        );
        assert_eq!(
            fmt_time_in(i64::MAX, &utc),
            format!("{} s after 1970", i64::MAX)
        );
    }

    #[test]
    fn sizes_read_like_sizes() {
        for (bytes, shown) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (5 << 20, "5.0 MiB"),
            (3 << 30, "3.0 GiB"),
            (u64::MAX, "16777216.0 TiB"),
        ] {
            assert_eq!(fmt_size(bytes), shown, "{bytes}");
        }
    }
}
