//! `~/.lockbox/config.yaml` (see `docs/operations.md`, "Configuration"):
//! parsing, defaults and validation.
//!
//! Unknown keys are an error that names the key, durations accept
//! `250ms`/`30s`/`90d`, sizes accept `1GiB`. Parsing is pure (`Config::parse`)
//! so every rule is tested without touching the disk.

use std::fmt;
use std::net::SocketAddrV4;
use std::time::Duration;

use lockbox_crypto::kdf::KdfParams;
use serde::{Deserialize, Deserializer};

/// The largest file lockbox seals or transfers (see `docs/design.md`, "Write
/// path", and `docs/protocol.md`, "6. Transport").
pub const MAX_FILE_SIZE: u64 = 1 << 30;

/// The weakest Argon2id memory cost `init` wraps an identity with: 64 MiB
/// (the reasons are in `docs/formats-crypto.md`, "The floor").
pub const KDF_FLOOR_MEMORY_KIB: u32 = 64 * 1024;
/// The fewest Argon2id passes `init` wraps an identity with.
pub const KDF_FLOOR_ITERATIONS: u32 = 2;
/// The environment variable that lets `init` go below the floor when it is
/// exactly `1`: for tests only (it says so on stderr each time).
pub const ALLOW_WEAK_KDF_ENV: &str = "LOCKBOX_TEST_ALLOW_WEAK_KDF";

/// Where announcements go, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multicast {
    /// Discovery by multicast is disabled.
    Off,
    /// The multicast group and port to announce on.
    Group(SocketAddrV4),
}

impl fmt::Display for Multicast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Multicast::Off => f.write_str("off"),
            Multicast::Group(a) => write!(f, "{a}"),
        }
    }
}

/// Argon2id cost settings in config (`kdf:`), used when `init` wraps this
/// envoy's identity. Absent means the tuned defaults. (The circle key's cost
/// is fixed, so envoys with different settings still share one circle.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfConfig {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

/// Every setting of one envoy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This envoy's name in the circle.
    pub envoy: String,
    /// The user whose lockbox this is.
    pub user: String,
    /// TCP port of the mTLS peer server (0 = ephemeral, announced).
    pub peer_port: u16,
    /// Address the peer server binds.
    pub listen: String,
    /// Multicast group for announcements, or `off`.
    #[serde(deserialize_with = "de_multicast")]
    pub multicast: Multicast,
    /// How often to announce.
    #[serde(deserialize_with = "de_duration")]
    pub announce_interval: Duration,
    /// Silence after which a peer stops getting pushes.
    #[serde(deserialize_with = "de_duration")]
    pub stale_after: Duration,
    /// Peers contacted directly (`host` or `host:port`).
    pub cross_subnet_peers: Vec<String>,
    /// Port of the status page (`lockbox web`) on 127.0.0.1; 0 = any free
    /// port.
    pub web_port: u16,
    /// Idle time after which the unlock session ends. A number means
    /// minutes; a duration string such as `2s` is accepted too (see
    /// `docs/operations.md`, "Configuration").
    #[serde(deserialize_with = "de_minutes")]
    pub idle_timeout_minutes: Duration,
    /// Largest file accepted (at most 1 GiB).
    #[serde(deserialize_with = "de_size")]
    pub max_file_size: u64,
    /// How long tombstones are kept.
    #[serde(deserialize_with = "de_duration")]
    pub tombstone_retention: Duration,
    /// Parallel pushes per sealed version.
    pub push_concurrency: u32,
    /// Refuse pushes when free disk is at or below this percentage.
    pub disk_pressure_percent: u8,
    /// Argon2id cost for wrapping the identity at `init`.
    pub kdf: Option<KdfConfig>,
    /// A program whose first line of output is the passphrase, used when
    /// no `--passphrase-file` or `--passphrase-command` is given (split
    /// into words without a shell; see `crate::passphrase`).
    pub passphrase_command: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            envoy: String::new(),
            user: String::new(),
            peer_port: 1531,
            listen: "0.0.0.0".into(),
            multicast: Multicast::Group(SocketAddrV4::new([224, 0, 0, 44].into(), 1533)),
            announce_interval: Duration::from_secs(30),
            stale_after: Duration::from_secs(90),
            cross_subnet_peers: Vec::new(),
            web_port: 0,
            idle_timeout_minutes: Duration::from_secs(60 * 60),
            max_file_size: MAX_FILE_SIZE,
            tombstone_retention: Duration::from_secs(90 * 24 * 3600),
            push_concurrency: 8,
            disk_pressure_percent: 10,
            kdf: None,
            passphrase_command: None,
        }
    }
}

impl Config {
    /// Parse and validate config text. The error names the offending key.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        // An empty file is an empty mapping, not an error.
        let cfg: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        // Empty means "not set yet" (init fills both in); otherwise the names
        // must be valid on the wire, where announcements carry them.
        for (key, v) in [("envoy", &self.envoy), ("user", &self.user)] {
            if !v.is_empty() {
                lockbox_net::WireName::new(v.as_str())
                    .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
            }
        }
        if self.max_file_size == 0 || self.max_file_size > MAX_FILE_SIZE {
            bail!("max_file_size: must be between 1 byte and 1GiB");
        }
        if !(1..=256).contains(&self.push_concurrency) {
            bail!("push_concurrency: must be between 1 and 256");
        }
        if self.disk_pressure_percent > 99 {
            bail!("disk_pressure_percent: must be between 0 and 99");
        }
        for (key, d) in [
            ("announce_interval", self.announce_interval),
            ("stale_after", self.stale_after),
            ("idle_timeout_minutes", self.idle_timeout_minutes),
            ("tombstone_retention", self.tombstone_retention),
        ] {
            if d.is_zero() {
                bail!("{key}: must be greater than zero");
            }
        }
        if self.stale_after < self.announce_interval {
            bail!("stale_after: must be at least announce_interval");
        }
        if self.listen.parse::<std::net::IpAddr>().is_err() {
            bail!("listen: '{}' is not an IP address", self.listen);
        }
        if let Some(k) = self.kdf {
            self.kdf_params_of(k)?;
        }
        if let Some(c) = &self.passphrase_command {
            match crate::passphrase::split_words(c) {
                Ok(w) if w.is_empty() => bail!("passphrase_command: give a program to run"),
                Ok(_) => {}
                Err(e) => bail!("passphrase_command: {e}"),
            }
        }
        Ok(())
    }

    fn kdf_params_of(&self, k: KdfConfig) -> anyhow::Result<KdfParams> {
        let p = KdfParams {
            memory_kib: k.memory_kib,
            iterations: k.iterations,
            parallelism: k.parallelism,
        };
        p.validate().map_err(|e| anyhow::anyhow!("kdf: {e}"))?;
        Ok(p)
    }

    /// The Argon2id parameters `init` wraps the identity with, refused when
    /// below the floor ([`KDF_FLOOR_MEMORY_KIB`], [`KDF_FLOOR_ITERATIONS`])
    /// unless `allow_weak` (tests). `Ok((params, weak))`: `weak` says they
    /// are below it (allowed).
    pub fn kdf_params_for_init(&self, allow_weak: bool) -> anyhow::Result<(KdfParams, bool)> {
        let p = match self.kdf {
            Some(k) => self.kdf_params_of(k)?,
            None => KdfParams::DEFAULT,
        };
        let weak = p.memory_kib < KDF_FLOOR_MEMORY_KIB || p.iterations < KDF_FLOOR_ITERATIONS;
        if weak && !allow_weak {
            anyhow::bail!(
                "kdf: memory_kib {} and iterations {} are below the floor init accepts \
                 (memory_kib at least {KDF_FLOOR_MEMORY_KIB}, i.e. 64 MiB, and iterations at \
                 least {KDF_FLOOR_ITERATIONS}): a passphrase wrapped so cheaply is cheap to \
                 guess from a stolen disk; raise them in config.yaml, or remove the kdf line \
                 for the tuned default",
                p.memory_kib,
                p.iterations
            );
        }
        Ok((p, weak))
    }

    /// The text `init` writes: every key with its value and a comment.
    pub fn render(&self) -> String {
        let peers = if self.cross_subnet_peers.is_empty() {
            "[]".to_string()
        } else {
            let quoted: Vec<String> = self
                .cross_subnet_peers
                .iter()
                .map(|p| format!("{p:?}"))
                .collect();
            format!("[{}]", quoted.join(", "))
        };
        let mut out = format!(
            "# lockbox settings (see docs/operations.md). Unknown keys are an error.\n\
             envoy: {envoy:?}              # this machine's name in the circle\n\
             user: {user:?}                # whose lockbox this is\n\
             peer_port: {peer_port}              # mTLS peer port (0 = ephemeral)\n\
             listen: {listen:?}\n\
             multicast: {multicast:?}     # group:port to announce on, or \"off\"\n\
             announce_interval: {ai}\n\
             stale_after: {sa}\n\
             cross_subnet_peers: {peers}       # host or host:port\n\
             idle_timeout_minutes: {idle}\n\
             max_file_size: {max}\n\
             tombstone_retention: {tr}\n\
             push_concurrency: {pc}\n\
             disk_pressure_percent: {dp}\n\
             web_port: {wp}                # status page on 127.0.0.1 (0 = any free port)\n",
            envoy = self.envoy,
            user = self.user,
            peer_port = self.peer_port,
            listen = self.listen,
            multicast = self.multicast.to_string(),
            ai = render_duration(self.announce_interval),
            sa = render_duration(self.stale_after),
            idle = render_minutes(self.idle_timeout_minutes),
            max = render_size(self.max_file_size),
            tr = render_duration(self.tombstone_retention),
            pc = self.push_concurrency,
            dp = self.disk_pressure_percent,
            wp = self.web_port,
        );
        if let Some(k) = self.kdf {
            out.push_str(&format!(
                "kdf: {{memory_kib: {}, iterations: {}, parallelism: {}}}\n",
                k.memory_kib, k.iterations, k.parallelism
            ));
        }
        if let Some(c) = &self.passphrase_command {
            // A JSON string is a YAML double-quoted scalar, whatever it holds.
            let quoted = serde_json::to_string(c).unwrap_or_default();
            out.push_str(&format!(
                "passphrase_command: {quoted}   # prints the passphrase (no shell)\n"
            ));
        }
        out
    }
}

/// A duration as config takes it back: whole days as `90d` (humantime
/// would write 90 days as "2months 29days 2h 52m 48s", its month being
/// 30.44 days), anything else as humantime writes it (`1m 30s`).
fn render_duration(d: Duration) -> String {
    const DAY: u64 = 24 * 3600;
    if d.subsec_nanos() == 0 && d.as_secs() >= DAY && d.as_secs().is_multiple_of(DAY) {
        format!("{}d", d.as_secs() / DAY)
    } else {
        humantime::format_duration(d).to_string()
    }
}

fn render_minutes(d: Duration) -> String {
    if d.as_secs().is_multiple_of(60) && d.subsec_nanos() == 0 {
        (d.as_secs() / 60).to_string()
    } else {
        humantime::format_duration(d).to_string()
    }
}

fn render_size(n: u64) -> String {
    if n.is_multiple_of(1 << 30) {
        format!("{}GiB", n >> 30)
    } else if n.is_multiple_of(1 << 20) {
        format!("{}MiB", n >> 20)
    } else {
        n.to_string()
    }
}

/// Parse `250ms`, `30s`, `90d`, ….
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration like 250ms, 30s or 90d ({e})"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Text(String),
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn de_minutes<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(m) => m
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| serde::de::Error::custom("too many minutes")),
        NumOrText::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(n) => Ok(n),
        NumOrText::Text(s) => s
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| serde::de::Error::custom(format!("'{s}' is not a size like 1GiB ({e})"))),
    }
}

fn de_multicast<'de, D: Deserializer<'de>>(d: D) -> Result<Multicast, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim() == "off" {
        return Ok(Multicast::Off);
    }
    let addr: SocketAddrV4 = s.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "'{s}' is not 'off' or a group like 224.0.0.44:1533"
        ))
    })?;
    if !addr.ip().is_multicast() {
        return Err(serde::de::Error::custom(format!(
            "'{s}' is not a multicast address"
        )));
    }
    Ok(Multicast::Group(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        assert_eq!(
            Config::parse("# only a comment\n").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn durations_sizes_and_multicast_parse() {
        let c = Config::parse(
            "announce_interval: 250ms\nstale_after: 2s\ntombstone_retention: 90d\n\
             max_file_size: 64MiB\nmulticast: off\nidle_timeout_minutes: 5\n",
        )
        .unwrap();
        assert_eq!(c.announce_interval, Duration::from_millis(250));
        assert_eq!(c.stale_after, Duration::from_secs(2));
        assert_eq!(c.tombstone_retention, Duration::from_secs(90 * 86400));
        assert_eq!(c.max_file_size, 64 << 20);
        assert_eq!(c.multicast, Multicast::Off);
        assert_eq!(c.idle_timeout_minutes, Duration::from_secs(300));
        let c = Config::parse("idle_timeout_minutes: 2s\nmax_file_size: 1GiB\n").unwrap();
        assert_eq!(c.idle_timeout_minutes, Duration::from_secs(2));
        assert_eq!(c.max_file_size, MAX_FILE_SIZE);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("envoy: a\nfrobnicate: 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("frobnicate"), "{e}");
    }

    #[test]
    fn bad_values_are_errors_naming_the_problem() {
        for (text, needle) in [
            ("announce_interval: soon\n", "soon"),
            ("max_file_size: 2GiB\n", "max_file_size"),
            ("multicast: 10.0.0.1:1533\n", "multicast"),
            ("push_concurrency: 0\n", "push_concurrency"),
            ("stale_after: 1s\nannounce_interval: 5s\n", "stale_after"),
            ("listen: nowhere\n", "listen"),
            ("peer_port: 70000\n", "peer_port"),
            ("envoy: a/b\n", "envoy"),
            ("envoy: \"tab\\there\"\n", "envoy"),
            ("user: \"..\"\n", "user"),
            (
                "kdf: {memory_kib: 0, iterations: 1, parallelism: 1}\n",
                "kdf",
            ),
            ("- a list\n", "invalid type"),
            ("passphrase_command: \"  \"\n", "passphrase_command"),
            ("passphrase_command: \"pass 'x\"\n", "passphrase_command"),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?} gave {e}");
        }
    }

    #[test]
    fn init_refuses_a_kdf_below_the_floor_unless_allowed() {
        let kdf = |m: u32, t: u32| {
            Config::parse(&format!(
                "kdf: {{memory_kib: {m}, iterations: {t}, parallelism: 1}}\n"
            ))
            .unwrap()
        };
        let floor = kdf(KDF_FLOOR_MEMORY_KIB, KDF_FLOOR_ITERATIONS);
        assert!(
            !floor.kdf_params_for_init(false).unwrap().1,
            "the floor itself"
        );
        let (p, weak) = Config::default().kdf_params_for_init(false).unwrap();
        assert_eq!((p, weak), (KdfParams::DEFAULT, false));
        for weak in [
            kdf(KDF_FLOOR_MEMORY_KIB - 1, 3),
            kdf(1 << 20, KDF_FLOOR_ITERATIONS - 1),
            kdf(64, 1),
        ] {
            let e = weak.kdf_params_for_init(false).unwrap_err().to_string();
            assert!(e.contains("below the floor") && e.contains("65536"), "{e}");
            let (p, flagged) = weak.kdf_params_for_init(true).unwrap();
            assert!(flagged);
            assert_eq!(p.memory_kib, weak.kdf.unwrap().memory_kib);
        }
    }

    #[test]
    fn render_round_trips() {
        let mut c = Config {
            envoy: "laptop".into(),
            user: "ada".into(),
            cross_subnet_peers: vec!["h1".into(), "h2:1600".into()],
            idle_timeout_minutes: Duration::from_secs(3),
            max_file_size: 5 << 20,
            multicast: Multicast::Off,
            ..Config::default()
        };
        c.kdf = Some(KdfConfig {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        });
        c.passphrase_command = Some("pass show \"lockbox main\" 'x\\y' \u{1b}".into());
        assert_eq!(Config::parse(&c.render()).unwrap(), c);
        let d = Config::default();
        assert_eq!(Config::parse(&d.render()).unwrap(), d);
    }

    #[test]
    fn rendered_durations_read_as_a_person_would_write_them() {
        let text = Config::default().render();
        assert!(text.contains("tombstone_retention: 90d\n"), "{text}");
        assert!(text.contains("stale_after: 1m 30s\n"), "{text}");
        for (secs, nanos) in [(86_400 * 7, 0), (86_400 + 1, 0), (3 * 86_400, 5), (30, 0)] {
            let d = Duration::new(secs, nanos);
            let c = Config {
                tombstone_retention: d,
                ..Config::default()
            };
            assert_eq!(Config::parse(&c.render()).unwrap().tombstone_retention, d);
        }
    }
}
