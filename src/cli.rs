//! The command line (see `docs/operations.md`, "The command line"): clap
//! definitions and dispatch. Exit codes: 0 success, 1 a user-facing error
//! with one line on stderr, 2 a usage error (clap's own).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::cmd;
use crate::passphrase::Source;
use crate::paths::Paths;

/// Keep secrets in ~/lockbox on every machine you use, sealed with age.
#[derive(Parser, Debug)]
#[command(name = "lockbox", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// First-time setup on this envoy: identity, signing key, store, config.
    Init {
        #[command(flatten)]
        pass: PassArgs,
        /// This envoy's name (default: the host name).
        #[arg(long, value_name = "NAME")]
        envoy: Option<String>,
    },
    /// Run the agent (detaches and returns once it is ready).
    Daemon {
        /// Stay in the foreground, logging to stderr.
        #[arg(long)]
        foreground: bool,
        /// (Set by a detached start.) Standard error is this log file:
        /// rotate it past its cap.
        #[arg(long, value_name = "FILE", hide = true, requires = "foreground")]
        log_file: Option<PathBuf>,
    },
    /// Unlock: hold this envoy's identity in the agent (starting it if needed).
    Unlock {
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Drop the identity from the agent's memory.
    Lock,
    /// Stop the agent.
    Stop,
    /// Add a plaintext file from anywhere, sealed (works while locked).
    Encrypt {
        /// The file to add (with -r, the folder).
        path: PathBuf,
        /// Name in the lockbox, a path like ssh/id_ed25519 (default: the
        /// file's base name).
        #[arg(long, value_name = "NAME")]
        name: Option<OsString>,
        /// Add a folder and everything in it, under NAME (default: the
        /// folder's base name).
        #[arg(short = 'r', long)]
        recursive: bool,
    },
    /// Write a file's plaintext to OUT, or to stdout; needs unlock.
    Decrypt {
        /// The file's name in the lockbox.
        name: OsString,
        /// Output path, created 0600 (without it, or with `-`: stdout).
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        out: Option<PathBuf>,
        /// Write binary plaintext to a terminal all the same.
        #[arg(long)]
        force: bool,
    },
    /// Delete a file on every envoy (a signed tombstone; works while locked).
    Delete {
        /// The file's name in the lockbox.
        name: OsString,
    },
    /// Lift the delete of a name on every envoy (re-adding a file does this itself).
    Resurrect {
        /// The deleted file's name.
        name: OsString,
    },
    /// List files: name, size, mtime, state, envoys.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the envoy, session, mount, recipients, peers and file counts.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Open the status page: envoys, which envoy holds what, drift, deletes.
    ///
    /// The running agent serves it on 127.0.0.1 (web_port in the config, or
    /// a free port); this prints its address with a fresh token and opens
    /// it in the browser when a desktop is there.
    Web {
        /// Print the address only; do not start a browser.
        #[arg(long)]
        no_open: bool,
    },
    /// Print this envoy's AGE-SECRET-KEY for offline recovery (after the passphrase).
    ExportIdentity {
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Re-encrypt every file to the current members of the circle (needs unlock).
    Reencrypt,
    /// Leave the circle: tell the other envoys, then wipe this envoy's lockbox.
    Leave {
        /// Yes, remove this envoy from the circle and wipe ~/.lockbox and ~/lockbox.
        #[arg(long)]
        yes: bool,
    },
    /// Remove another envoy from the circle (needs the passphrase).
    Evict {
        /// The envoy's name.
        envoy: String,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Wipe this envoy's lockbox without telling the other envoys.
    Purge {
        /// Yes, wipe ~/.lockbox and ~/lockbox here.
        #[arg(long)]
        yes: bool,
    },
    /// Fleet certificates: create the fleet CA, issue an envoy's mTLS certificate.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Re-issue this envoy's mTLS certificate (same name and hosts) into ~/.lockbox/tls.
    RenewCert {
        /// The fleet CA's folder (holding ca.pem and ca.key).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Days the new certificate is valid (cut short at the CA's expiry).
        #[arg(long, value_name = "N", default_value_t = cmd::fleet::DEFAULT_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(cmd::fleet::MAX_DAYS)))]
        days: u32,
    },
    /// The systemd user service that runs the agent at login.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Check FUSE, ports, certificates, clock, swap and core dumps.
    Doctor,
    /// A throwaway walk-through in a temporary directory; cleans up after itself.
    Demo,
    /// Print a shell completion script to stdout.
    ///
    /// bash: `source <(lockbox completions bash)` (or save it in
    /// ~/.local/share/bash-completion/completions/lockbox); zsh: save it as
    /// `_lockbox` in a folder of your $fpath; fish: save it in
    /// ~/.config/fish/completions/lockbox.fish.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages into DIR: lockbox.1 and lockbox-COMMAND.1 for
    /// each command (`man -l DIR/lockbox.1` reads one).
    Manpages {
        /// The folder to write to (created if missing; pages are replaced).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Where a command that needs the passphrase reads it (see
/// `crate::passphrase`); without either, `passphrase_command:` of
/// config.yaml, else the terminal.
#[derive(Args, Debug)]
struct PassArgs {
    /// Read the passphrase from the first line of FILE (`-`: standard input).
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_command")]
    passphrase_file: Option<PathBuf>,
    /// Run CMD (split into words, no shell) and read the passphrase from the
    /// first line it prints.
    #[arg(long, value_name = "CMD")]
    passphrase_command: Option<String>,
}

impl PassArgs {
    /// The source, with config.yaml's `passphrase_command:` when neither
    /// option is given.
    fn source(self, paths: &Paths) -> anyhow::Result<Source> {
        let configured = if self.passphrase_file.is_none() && self.passphrase_command.is_none() {
            crate::envoy::load_config(paths)?.passphrase_command
        } else {
            None
        };
        Ok(Source::new(
            self.passphrase_file,
            self.passphrase_command,
            configured,
        ))
    }
}

#[derive(Subcommand, Debug)]
enum ServiceCommand {
    /// Write ~/.config/systemd/user/lockbox.service, running this binary's
    /// agent (locked) at login, and print the systemctl line that enables it.
    Install {
        /// Replace an existing lockbox.service that differs.
        #[arg(long)]
        force: bool,
    },
    /// Remove lockbox.service (disable it with systemctl first).
    Uninstall,
}

#[derive(Subcommand, Debug)]
enum FleetCommand {
    /// Create a new fleet CA (ca.pem and ca.key) in DIR; refuses if DIR/ca.key exists.
    Init {
        /// The folder for the CA (created mode 0700).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Issue an envoy's certificate: writes ca.pem, cert.pem and key.pem to DIR
    /// (`--out ~/.lockbox/tls` installs them on this envoy).
    Issue {
        /// The fleet CA's folder (holding ca.pem and ca.key).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The envoy's name, as in its config.yaml.
        #[arg(long, value_name = "NAME")]
        envoy: String,
        /// An IP address or DNS name of the envoy, for tools that check names
        /// (repeatable; localhost, 127.0.0.1 and ::1 are always added).
        #[arg(long = "host", value_name = "H")]
        hosts: Vec<String>,
        /// The folder to write to (created mode 0700; existing files are replaced).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Days the certificate is valid (cut short at the CA's expiry).
        #[arg(long, value_name = "N", default_value_t = cmd::fleet::DEFAULT_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(cmd::fleet::MAX_DAYS)))]
        days: u32,
    },
}

/// Parse argv (exits 2 on usage errors).
pub fn parse() -> Cli {
    Cli::parse()
}

/// Run a parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let (daemon, log_file) = match &cli.command {
        Command::Daemon { log_file, .. } => (true, log_file.clone()),
        _ => (false, None),
    };
    init_logging(daemon, log_file);
    let paths = match cli.command {
        Command::Demo => return cmd::demo::run(),
        Command::Completions { shell } => return completions(shell),
        Command::Manpages { ref dir } => return manpages(dir),
        // The fleet commands work on the folders they are given, not on HOME.
        Command::Fleet { ref command } => return fleet(command),
        _ => Paths::from_env()?,
    };
    match cli.command {
        Command::Init { pass, envoy } => cmd::init::run(&paths, pass.source(&paths)?, envoy),
        Command::Daemon { foreground, .. } => cmd::agentctl::daemon(&paths, foreground),
        Command::Unlock { pass } => cmd::agentctl::unlock(&paths, &pass.source(&paths)?),
        Command::Lock => cmd::agentctl::lock(&paths),
        Command::Stop => cmd::agentctl::stop(&paths),
        Command::Encrypt {
            path,
            name,
            recursive,
        } => {
            if recursive {
                cmd::files::encrypt_tree(&paths, &path, name)
            } else {
                cmd::files::encrypt(&paths, &path, name)
            }
        }
        Command::Decrypt { name, out, force } => {
            cmd::files::decrypt(&paths, &name, out.as_deref(), force)
        }
        Command::Delete { name } => cmd::files::delete(&paths, &name),
        Command::List { json } => cmd::files::list(&paths, json),
        Command::Status { json } => cmd::report::status(&paths, json),
        Command::Web { no_open } => cmd::report::web(&paths, !no_open),
        Command::ExportIdentity { pass } => {
            cmd::init::export_identity(&paths, &pass.source(&paths)?)
        }
        Command::Reencrypt => cmd::files::reencrypt(&paths),
        Command::Resurrect { name } => cmd::files::resurrect(&paths, &name),
        Command::Leave { yes } => cmd::circle::leave(&paths, yes),
        Command::Evict { envoy, pass } => cmd::circle::evict(&paths, &envoy, &pass.source(&paths)?),
        Command::Purge { yes } => cmd::circle::purge(&paths, yes),
        Command::Fleet { ref command } => fleet(command),
        Command::RenewCert { ca, days } => cmd::fleet::renew(&paths, &ca, days),
        Command::Service { command } => match command {
            ServiceCommand::Install { force } => cmd::service::install(&paths, force),
            ServiceCommand::Uninstall => cmd::service::uninstall(&paths),
        },
        Command::Doctor => cmd::report::doctor(&paths),
        Command::Demo => cmd::demo::run(),
        Command::Completions { shell } => completions(shell),
        Command::Manpages { ref dir } => manpages(dir),
    }
}

/// `lockbox completions SHELL`: the script, from the clap definitions above.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "lockbox", &mut out);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&out)
        .and_then(|()| stdout.flush())
        .context("cannot write to standard output")
}

/// `lockbox manpages DIR`: one page for lockbox and one per command (and
/// per `fleet` command), from the clap definitions above.
fn manpages(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
    println!("wrote the manual pages into {}", dir.display());
    Ok(())
}

fn fleet(command: &FleetCommand) -> anyhow::Result<()> {
    match command {
        FleetCommand::Init { out } => cmd::fleet::init(out),
        FleetCommand::Issue {
            ca,
            envoy,
            hosts,
            out,
            days,
        } => cmd::fleet::issue(ca, envoy, hosts, out, *days),
    }
}

/// Logs go to stderr, control characters escaped (see `crate::log`);
/// `RUST_LOG` filters. The agent logs at info by default, the CLI only
/// warnings; fuser's own lines (ioctls and extended attributes it does not
/// implement, its mount chatter) only when they are errors. When stderr is
/// the journal (the agent under systemd), lines carry their priority
/// instead of a time and a level: journald adds the time. When stderr is
/// the detached agent's `log_file`, it is rotated past its cap.
fn init_logging(daemon: bool, log_file: Option<PathBuf>) {
    let default = if daemon {
        "info,fuser=error"
    } else {
        "warn,fuser=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // No colours: their escape sequences would be escaped too.
        .with_ansi(false)
        .with_target(false);
    if crate::log::stderr_is_journal() {
        let _ = fmt
            .without_time()
            .with_level(false)
            .with_writer(crate::log::Journal)
            .try_init();
    } else if let Some(path) = log_file {
        let cap = crate::log::log_cap();
        let bytes = cap.clone().unwrap_or(crate::log::DEFAULT_LOG_CAP);
        let log = crate::log::RotatingLog::new(path, bytes);
        let _ = fmt.with_writer(crate::log::Rotating(log)).try_init();
        if let Err(why) = cap {
            tracing::warn!("{why}");
        }
    } else {
        let _ = fmt
            .with_writer(crate::log::EscapedStderr::default)
            .try_init();
    }
}
