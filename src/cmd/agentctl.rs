//! `daemon`, `unlock`, `lock`, `stop`: starting, talking to and stopping the
//! agent.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context};

use crate::agent;
use crate::client::{Client, ConnectError};
use crate::control::{Failure, Passphrase, Request, Response};
use crate::envoy::Envoy;
use crate::passphrase::{self, Attempt, Source};
use crate::paths::Paths;

/// `lockbox daemon [--foreground]`.
pub fn daemon(paths: &Paths, foreground: bool) -> anyhow::Result<()> {
    if foreground {
        return agent::run(paths.clone());
    }
    match Client::connect(paths) {
        Ok(_c) => {
            bail!("an agent is already running for this user: use it, or run lockbox stop first")
        }
        Err(ConnectError::NotRunning) => {}
        Err(ConnectError::Refused(e)) => return Err(e),
    }
    let pid = spawn_detached(paths)?;
    println!(
        "lockbox agent started (pid {pid}); log: {}",
        paths.log().display()
    );
    Ok(())
}

/// Start `lockbox daemon --foreground` in its own process group, logging to
/// `~/.lockbox/agent.log`, and return once it reports ready.
pub fn spawn_detached(paths: &Paths) -> anyhow::Result<u32> {
    // Fail early with the real reason (not initialised, bad config).
    drop(Envoy::load(paths.clone())?);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(paths.log())
        .with_context(|| format!("cannot open {}", paths.log().display()))?;
    let exe = std::env::current_exe().context("cannot find the lockbox executable")?;
    let mut child = Command::new(exe)
        .args(["daemon", "--foreground", "--log-file"])
        .arg(paths.log())
        // Its readiness is the line it prints, not a message to a systemd
        // unit this command may run under.
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start the agent")?;
    let stdout = child.stdout.take().context("agent stdout")?;
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    loop {
        line.clear();
        let n = reader.read_line(&mut line).unwrap_or(0);
        if n == 0 {
            let status = child.wait().ok();
            bail!(
                "the agent exited before it was ready ({}): {}",
                status.map(|s| s.to_string()).unwrap_or_default(),
                last_log_line(&paths.log())
            );
        }
        if line.starts_with(agent::READY_PREFIX) {
            return Ok(child.id());
        }
    }
}

fn last_log_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("see {}", path.display()))
}

/// Connect to the agent, starting it if it is not running.
pub fn connect_or_start(paths: &Paths) -> anyhow::Result<Client> {
    match Client::connect(paths) {
        Ok(c) => Ok(c),
        Err(ConnectError::NotRunning) => {
            spawn_detached(paths)?;
            Client::require(paths)
        }
        Err(ConnectError::Refused(e)) => Err(e),
    }
}

/// `lockbox unlock`. The passphrase is read before any agent is started,
/// and an agent this command started is stopped again when its unlock
/// fails: a wrong passphrase never leaves an agent running. At a terminal
/// a wrong passphrase may be typed again (up to three tries).
pub fn unlock(paths: &Paths, pass: &Source) -> anyhow::Result<()> {
    let swept = passphrase::with_tries(pass, "Lockbox passphrase: ", |pass| {
        let mut started = false;
        let outcome = (|| {
            let mut client = match Client::connect(paths) {
                Ok(c) => c,
                Err(ConnectError::NotRunning) => {
                    spawn_detached(paths)?;
                    started = true;
                    Client::require(paths)?
                }
                Err(ConnectError::Refused(e)) => return Err(e),
            };
            match client.call(&Request::Unlock {
                passphrase: Passphrase(pass),
            })? {
                Response::Unlocked { swept } => Ok(Attempt::Done(swept)),
                r if crate::client::is_failure(&r, Failure::WrongPassphrase) => {
                    Ok(Attempt::Wrong(anyhow!("wrong passphrase")))
                }
                other => Err(crate::client::into_error(other)),
            }
        })();
        if started && !matches!(outcome, Ok(Attempt::Done(_))) {
            stop_started(paths);
        }
        outcome
    })?;
    println!("unlocked");
    if swept > 0 {
        println!("sealed {swept} plaintext file(s) found in the lockbox");
    }
    Ok(())
}

/// Stop the agent this command started for an unlock that failed, and wait
/// until it has exited (best effort: the unlock's own error is what the
/// user is told).
fn stop_started(paths: &Paths) {
    if let Ok(mut c) = Client::connect(paths) {
        if let Ok(Response::Stopping) = c.call(&Request::Stop) {
            c.wait_closed();
        }
    }
}

/// `lockbox lock`. With no agent running nothing holds the identity: the
/// state asked for already holds, so it says so and succeeds.
pub fn lock(paths: &Paths) -> anyhow::Result<()> {
    let mut client = match Client::connect(paths) {
        Ok(c) => c,
        Err(ConnectError::NotRunning) => {
            println!("already locked: no agent is running");
            return Ok(());
        }
        Err(ConnectError::Refused(e)) => return Err(e),
    };
    match client.call(&Request::Lock)? {
        Response::Ok => {
            println!("locked");
            Ok(())
        }
        other => Err(crate::client::into_error(other)),
    }
}

/// `lockbox stop`: returns once the agent has exited. With none running it
/// says so and succeeds.
pub fn stop(paths: &Paths) -> anyhow::Result<()> {
    let mut client = match Client::connect(paths) {
        Ok(c) => c,
        Err(ConnectError::NotRunning) => {
            println!("already stopped: no agent is running");
            return Ok(());
        }
        Err(ConnectError::Refused(e)) => return Err(e),
    };
    match client.call(&Request::Stop)? {
        Response::Stopping => {
            client.wait_closed();
            println!("agent stopped");
            Ok(())
        }
        other => Err(crate::client::into_error(other)),
    }
}
