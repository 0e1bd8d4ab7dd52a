//! `status` and `doctor`.

use std::net::TcpListener;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use lockbox_net::tls::{TlsError, TlsMaterial};

use crate::client::{self, Client, ConnectError};
use crate::cmd;
use crate::control::{Request, Response};
use crate::envoy::{self, Envoy};
use crate::host;
use crate::paths::Paths;
use crate::status::StatusReport;

/// `lockbox status [--json]`: from the agent when it runs, else from disk.
pub fn status(paths: &Paths, json: bool) -> anyhow::Result<()> {
    let report = match Client::connect(paths) {
        Ok(mut c) => match c.call(&Request::Status)? {
            Response::Status(r) => with_new_certificate(paths, *r),
            other => return Err(client::into_error(other)),
        },
        Err(ConnectError::NotRunning) => {
            let e = Envoy::load(paths.clone())?;
            let (store, _meta) = crate::status::store_with_states(paths, &e.store);
            StatusReport::gather(&e.paths, &e.config, &store)?
        }
        Err(ConnectError::Refused(e)) => return Err(e),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

/// `lockbox web [--no-open]`: the status page's address, from the agent
/// (which starts the page the first time), opened with `xdg-open` when a
/// desktop session is there.
pub fn web(paths: &Paths, open: bool) -> anyhow::Result<()> {
    let mut c = match Client::connect(paths) {
        Ok(c) => c,
        Err(ConnectError::NotRunning) => {
            bail!("the agent is not running: the status page is the agent's; run lockbox unlock")
        }
        Err(ConnectError::Refused(e)) => return Err(e),
    };
    let url = match c.call(&Request::Web)? {
        Response::Web { url } => url,
        other => return Err(client::into_error(other)),
    };
    let desktop = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    // As Jupyter does, the browser is pointed at a 0600 file that redirects
    // to the address, so the token is in no process's arguments (which
    // every user can read); the page trades it for a cookie at once.
    let opened = open
        && desktop
        && open_file(paths, &url).is_some_and(|f| {
            std::process::Command::new("xdg-open")
                .arg(&f)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if opened {
        println!("{url}   (opened in your browser)");
    } else {
        println!("{url}");
    }
    Ok(())
}

/// Write the redirect to `url` that `lockbox web` opens (next to the
/// control socket, 0600), and return its path.
fn open_file(paths: &Paths, url: &str) -> Option<std::path::PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = paths.socket_dir().join("web-open.html");
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .ok()?;
    // The address is ours (hex and digits), but it is escaped all the same.
    let url = maud::html! { (url) }.into_string();
    writeln!(
        f,
        "<!DOCTYPE html><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"0;url={url}\">\
         <title>lockbox</title><a href=\"{url}\">Open the lockbox status page</a>"
    )
    .ok()?;
    Some(path)
}

/// The running agent's mesh is off for want of a certificate, and one is
/// there now (`fleet issue` after the agent started): the agent reads its
/// certificate at start only, so say to restart it.
fn with_new_certificate(paths: &Paths, mut report: StatusReport) -> StatusReport {
    let wanted_one = !report.mesh_on && report.mesh.starts_with("off: no mTLS certificate");
    if !wanted_one || TlsMaterial::load(&paths.tls()).is_err() {
        return report;
    }
    report.warnings.push(format!(
        "a certificate was issued in {} after the agent started, and the mesh is off: \
         restart the agent to use it (lockbox stop, then lockbox unlock)",
        paths.tls().display()
    ));
    report
}

#[derive(PartialEq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

/// How soon before expiry `doctor` starts warning about the certificate.
const RENEW_WITHIN: Duration = Duration::from_secs(30 * 24 * 3600);

/// The mTLS certificate in `~/.lockbox/tls`: missing is a warning (the
/// envoy works alone), damaged or expired a failure, expiring soon a warning.
fn certificate_check(paths: &Paths) -> (Level, String) {
    let tls = paths.tls();
    let renew = "run lockbox renew-cert --ca CA_DIR";
    match TlsMaterial::load(&tls) {
        Err(TlsError::NoCertificate { .. }) => (
            Level::Warn,
            format!(
                "no mTLS certificates in {}: the mesh needs ca.pem, cert.pem and key.pem; \
                 issue them with lockbox fleet issue --ca CA_DIR --envoy NAME --out {}",
                tls.display(),
                tls.display()
            ),
        ),
        Err(e) => (Level::Fail, format!("mTLS certificates: {e}")),
        Ok(m) => {
            let until = cmd::fleet::date(m.not_after());
            match m.not_after().duration_since(SystemTime::now()) {
                Err(_) => (
                    Level::Fail,
                    format!(
                        "mTLS certificate of envoy {} expired on {until}: {renew}",
                        m.envoy()
                    ),
                ),
                Ok(left) if left < RENEW_WITHIN => (
                    Level::Warn,
                    format!(
                        "mTLS certificate of envoy {} expires on {until} (in {} days): {renew}",
                        m.envoy(),
                        left.as_secs() / 86400
                    ),
                ),
                Ok(_) => (
                    Level::Ok,
                    format!(
                        "mTLS certificates in {}: envoy {}, valid until {until}",
                        tls.display(),
                        m.envoy()
                    ),
                ),
            }
        }
    }
}

/// Whether the peer port can serve this envoy: free, or held by this
/// envoy's own agent (which says so); held by anything else — another
/// user's agent, another program — it cannot.
fn peer_port_check(paths: &Paths, listen: &str, port: u16) -> (Level, String) {
    let e = match TcpListener::bind((listen, port)) {
        Ok(_) => return (Level::Ok, format!("peer port {listen}:{port} is free")),
        Err(e) => e,
    };
    let ours = Client::connect(paths)
        .ok()
        .and_then(|mut c| match c.call(&Request::Status) {
            Ok(Response::Status(r)) => Some(*r),
            _ => None,
        });
    match ours {
        Some(r) if r.mesh_port == Some(port) => (
            Level::Ok,
            format!("peer port {listen}:{port} is held by this envoy's agent"),
        ),
        Some(r) => {
            let agent = match r.mesh_port {
                Some(p) => format!("this envoy's agent serves its peers on port {p}"),
                None => "this envoy's agent serves no peers (its mesh is off)".to_string(),
            };
            (
                Level::Fail,
                format!(
                    "peer port {listen}:{port} is held by another program ({e}), not by this \
                     envoy's agent ({agent}): stop that program or set peer_port in {}",
                    paths.config().display()
                ),
            )
        }
        None => (
            Level::Warn,
            format!(
                "peer port {listen}:{port} is held by another program ({e}): the agent cannot \
                 serve its peers there; stop that program or set peer_port in {}",
                paths.config().display()
            ),
        ),
    }
}

/// `lockbox doctor`: one line per check; exit 1 when any check fails.
pub fn doctor(paths: &Paths) -> anyhow::Result<()> {
    let mut checks: Vec<(Level, String)> = Vec::new();
    let config = match envoy::load_config(paths) {
        Ok(c) if !paths.config().exists() => {
            checks.push((
                Level::Warn,
                format!(
                    "config {} does not exist: the defaults are in use (lockbox init writes it)",
                    paths.config().display()
                ),
            ));
            Some(c)
        }
        Ok(c) => {
            checks.push((
                Level::Ok,
                format!("config {} is valid", paths.config().display()),
            ));
            Some(c)
        }
        Err(e) => {
            checks.push((Level::Fail, format!("{e:#}")));
            None
        }
    };
    if paths.identity().exists() {
        checks.push((Level::Ok, "initialised (identity.age present)".into()));
    } else {
        checks.push((Level::Warn, "not initialised: run lockbox init".into()));
    }
    match host::fuse_available(crate::sys::uid() == 0) {
        Ok(()) => checks.push((Level::Ok, "FUSE is available".into())),
        Err(e) => checks.push((Level::Fail, e)),
    }
    if let Some(c) = &config {
        checks.push(peer_port_check(paths, &c.listen, c.peer_port));
    }
    checks.push(certificate_check(paths));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // 2024-01-01: a clock before that is certainly wrong (certificates and
    // version records carry times).
    if now < 1_704_067_200 {
        checks.push((
            Level::Fail,
            "the system clock is before 2024: set the time (NTP)".into(),
        ));
    } else {
        checks.push((Level::Ok, "the system clock is plausible".into()));
    }
    let swaps = host::swap_areas();
    let swap_warn = host::swap_warnings(&swaps);
    if swaps.is_empty() {
        checks.push((Level::Ok, "no swap is active".into()));
    } else if swap_warn.is_empty() {
        checks.push((
            Level::Ok,
            "swap is encrypted or in RAM (zram/dm-crypt)".into(),
        ));
    }
    checks.extend(swap_warn.into_iter().map(|w| (Level::Warn, w)));
    let core = host::core_dump_warnings();
    if core.is_empty() {
        checks.push((
            Level::Ok,
            "core dumps of the non-dumpable agent are off".into(),
        ));
    }
    checks.extend(core.into_iter().map(|w| (Level::Warn, w)));

    let mut failed = 0;
    for (level, msg) in &checks {
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => {
                failed += 1;
                "FAIL"
            }
        };
        // A check may quote a path or a name: no control character reaches
        // the terminal (`lockbox_fs::escape`).
        println!("{tag}  {}", lockbox_fs::escape::controls(msg));
    }
    if failed > 0 {
        bail!("{failed} check(s) failed: see the FAIL lines above");
    }
    Ok(())
}
