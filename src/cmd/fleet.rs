//! `lockbox fleet init|issue` and `lockbox renew-cert`: the fleet CA and each
//! envoy's mTLS certificate (see `docs/protocol.md`, "6. Transport", and
//! `docs/design.md`, "Certificates"). The certificate rules live in
//! `lockbox_net::tls`; this is the command-line shell around them.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::bail;
use lockbox_net::tls::{FleetCa, TlsMaterial, CA_CERT_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE};
use lockbox_net::WireName;

use crate::paths::Paths;

/// How long an issued certificate is valid unless `--days` says otherwise:
/// 825 days (about 27 months), the longest validity browsers accepted for
/// server certificates, so renewal stays a rare chore that is still practised.
pub const DEFAULT_DAYS: u32 = 825;

/// The longest `--days` accepted (a hundred years; the CA's own expiry cuts
/// any certificate shorter anyway).
pub const MAX_DAYS: u32 = 36500;

/// `lockbox fleet init --out DIR`: a new fleet CA in DIR.
pub fn init(out: &Path) -> anyhow::Result<()> {
    let ca = FleetCa::generate(&format!("lockbox fleet CA of {}", crate::sys::user_name()))?;
    ca.write(out)?;
    println!(
        "fleet CA written: {} (the certificate every envoy trusts) and {} (its private key: \
         keep it safe, ideally offline)",
        out.join(CA_CERT_FILE).display(),
        out.join(CA_KEY_FILE).display()
    );
    println!("valid until {}", date(ca.not_after()));
    println!(
        "next, for each envoy: lockbox fleet issue --ca {} --envoy NAME --out ~/.lockbox/tls",
        out.display()
    );
    Ok(())
}

/// `lockbox fleet issue --ca DIR --envoy NAME [--host H]... --out DIR [--days N]`.
pub fn issue(
    ca_dir: &Path,
    envoy: &str,
    hosts: &[String],
    out: &Path,
    days: u32,
) -> anyhow::Result<()> {
    if let Err(e) = WireName::new(envoy) {
        bail!(
            "bad envoy name {envoy:?}: {e}; use the name the envoy has in its config.yaml \
             (1 to {} bytes, no '/', NUL or control characters)",
            WireName::MAX_LEN
        );
    }
    let ca = FleetCa::load(ca_dir)?;
    let issued = ca.issue(envoy, hosts, validity(days))?;
    issued.write(out)?;
    let material = TlsMaterial::load(out)?;
    println!(
        "issued a certificate for envoy {envoy} (names: {}), valid until {}",
        material.hosts().join(", "),
        date(material.not_after())
    );
    println!(
        "wrote {}, {} and {}",
        out.join(CA_CERT_FILE).display(),
        out.join(CERT_FILE).display(),
        out.join(KEY_FILE).display()
    );
    let installed = Paths::from_env()
        .map(|p| same_dir(out, &p.tls()))
        .unwrap_or(false);
    if !installed {
        println!(
            "next: copy the three files to ~/.lockbox/tls/ on {envoy} (mode 0600), then \
             lockbox stop; lockbox unlock there"
        );
    }
    Ok(())
}

/// `lockbox renew-cert --ca DIR [--days N]`: a new certificate for this
/// envoy, with the same name and hosts, from the same fleet CA.
pub fn renew(paths: &Paths, ca_dir: &Path, days: u32) -> anyhow::Result<()> {
    let tls = paths.tls();
    let current = TlsMaterial::load(&tls)?;
    let ca = FleetCa::load(ca_dir)?;
    if !current.is_from(&ca) {
        bail!(
            "{} is not the CA that issued {}: give --ca the folder of this fleet's CA (to move \
             this envoy to another fleet, use lockbox fleet issue --out {})",
            ca_dir.join(CA_CERT_FILE).display(),
            tls.join(CERT_FILE).display(),
            tls.display()
        );
    }
    let envoy = current.envoy();
    let issued = ca.issue(&envoy, &current.hosts(), validity(days))?;
    issued.write(&tls)?;
    println!(
        "renewed the certificate of envoy {envoy} in {}: valid until {} (was {})",
        tls.display(),
        date(issued.not_after),
        date(current.not_after())
    );
    println!("a running agent picks it up at its next start: lockbox stop; lockbox unlock");
    Ok(())
}

fn validity(days: u32) -> Duration {
    Duration::from_secs(u64::from(days) * 24 * 3600)
}

/// A date for people, in the local time zone: `2027-03-01 13:00:00 CET`.
pub fn date(t: SystemTime) -> String {
    let secs = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    crate::status::fmt_time(secs)
}

/// Whether two paths name the same existing folder.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
