//! The agent (`lockbox daemon`): one process per user per envoy. It hardens
//! itself before any key is loaded, serves the control socket to its own uid
//! only, holds the unlock session with its idle timeout, and shuts down
//! cleanly on `lockbox stop`, SIGTERM or SIGINT.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use lockbox_crypto::seal::Opened;
use lockbox_fs::escape::Escape;
use lockbox_fs::Name;
use tokio::sync::Notify;

use lockbox_crypto::sign::Signed;
use lockbox_net::mesh::{Mesh, MeshConfig};
use lockbox_net::replica::{Replica, Reseal, Table};

use crate::control::{self, DataFrames, Failure, Frame, Request, Response};
use crate::envoy::{self, Envoy};
use crate::paths::Paths;
use crate::session::Session;
use crate::status::{ListEntry, StatusReport};
use crate::sys::{self, Hardening};
use lockbox_fs::fuse::{FsConfig, Keys, LockboxFs};
use lockbox_fs::mount::{self, Mount, MountState};

/// The line the agent prints on stdout once it serves requests; `daemon`
/// (detached) waits for it.
pub const READY_PREFIX: &str = "lockbox agent ready";

/// How long a seal, rename or delete in the store may stay undurable (see
/// `Store::with_grouped_syncs` and docs/design.md).
const SYNC_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);

struct Agent {
    envoy: Envoy,
    /// Records, tombstones and members.
    replica: Arc<Replica>,
    /// The mesh, when it runs.
    mesh: Option<Arc<Mesh>>,
    /// The mesh in words (for status).
    mesh_state: String,
    /// Woken when the member set changes (re-encryption).
    members_changed: Arc<Notify>,
    session: Arc<Mutex<Session>>,
    /// The mounted file system.
    fs: Arc<LockboxFs>,
    session_changed: Notify,
    shutdown: Notify,
    hardening: Hardening,
    /// Connections of `stop` callers: closed only when the process exits,
    /// which is how they learn the agent is gone.
    stoppers: Mutex<Vec<UnixStream>>,
    /// The status page, once `lockbox web` asked for it.
    web: Mutex<Option<crate::web::Web>>,
}

/// Run the agent in the foreground until stopped.
pub fn run(paths: Paths) -> anyhow::Result<()> {
    // Hardening comes first: nothing secret is loaded before it.
    let hardening = match sys::harden_process() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("could not harden the agent process: {e}");
            sys::read_hardening().unwrap_or(Hardening {
                dumpable: true,
                core_limit: u64::MAX,
            })
        }
    };
    // The lock comes before the store is touched: a second agent must not
    // clean up the first one's in-flight temp files.
    sys::return_freed_memory();
    lockbox_fs::pages::on_large_release(sys::trim_heap);
    // Seals through the mount, renames and deletes become durable within
    // SYNC_WINDOW (a content always before its rename into the store);
    // fsync(2) and stop wait for it.
    let (envoy, mut lock) = Envoy::load_exclusive(paths, Some(SYNC_WINDOW))?;
    lock.write_pid()?;
    // The socket's folder is checked (made 0700 under $XDG_RUNTIME_DIR)
    // before anything is mounted: a folder others can enter stops the
    // start with nothing changed.
    envoy.paths.check_socket_dir(sys::uid(), true)?;
    let replica = envoy
        .replica
        .clone()
        .context("the replica was not opened")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let timeout = envoy.config.idle_timeout_minutes;
    let session = Arc::new(Mutex::new(Session::new(timeout, Instant::now())));
    // No agent without its mount: otherwise ~/lockbox is a plain folder
    // that takes plaintext while the user believes it is sealed.
    let mount = mount_lockbox(&envoy, session.clone())?;
    let fs_for_mesh = mount.fs().clone();
    let members_changed = Arc::new(Notify::new());
    let (reseal, weak) = (members_changed.clone(), Arc::downgrade(&replica));
    replica.on_remote_change(move |name| {
        fs_for_mesh.invalidate(name);
        // A version from a peer still sealed to an envoy that is no member
        // here (it left, and the peer did not know yet): re-encrypt it.
        if weak.upgrade().is_some_and(|r| r.sealed_to_outsiders(name)) {
            reseal.notify_one();
        }
    });
    let (mesh, mesh_state) = runtime.block_on(start_mesh(&envoy, &replica));
    let agent = Arc::new(Agent {
        fs: mount.fs().clone(),
        envoy,
        replica,
        mesh,
        mesh_state,
        session,
        session_changed: Notify::new(),
        members_changed,
        shutdown: Notify::new(),
        hardening,
        stoppers: Mutex::new(Vec::new()),
        web: Mutex::new(None),
    });
    let notify = agent.members_changed.clone();
    agent.replica.on_members_change(move || notify.notify_one());
    if let Some(mesh) = &agent.mesh {
        // Joins run while unlocked, with what the session holds.
        let session = agent.session.clone();
        mesh.set_join_credentials(Box::new(move || session.lock().ok()?.join()));
        // Members' status pages show whether the user is unlocked here.
        let session = agent.session.clone();
        mesh.set_unlocked_source(Box::new(move || {
            session.lock().is_ok_and(|s| s.is_unlocked())
        }));
    }
    let result = runtime.block_on(serve(agent.clone()));
    // Seal what is open and unmount, then lock the session (zeroizing the
    // identity).
    if let Err(e) = mount.unmount() {
        tracing::warn!("unmount failed: {e}");
    }
    if let Err(e) = agent.envoy.store.sync_now() {
        tracing::warn!("final sync of the store failed: {e}");
    }
    if let Err(e) = agent.replica.flush() {
        tracing::warn!("final sync of the records failed: {e}");
    }
    lock_session(&agent);
    let _ = fs::remove_file(agent.envoy.paths.socket());
    let stoppers = agent
        .stoppers
        .lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default();
    // Blocking handlers still serving a client must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    drop(agent);
    tracing::info!("agent stopped");
    drop(lock);
    // `lockbox stop` waits for its connection to close. Leave that to the
    // kernel at process exit, so the caller returns only once we are gone.
    std::mem::forget(stoppers);
    result
}

fn lock_session(agent: &Agent) {
    if let Ok(mut s) = agent.session.lock() {
        s.lock();
        s.take_cleanup();
    }
    // Decrypted chunks and open readers' keys go with the session.
    agent.fs.on_lock();
}

/// The agent's side of the file system's needs: the session's identity and
/// the recipient set.
struct AgentKeys {
    session: Arc<Mutex<Session>>,
    recipients: envoy::RecipientsFile,
}

impl Keys for AgentKeys {
    fn identity(&self) -> Option<Arc<lockbox_crypto::AgeIdentity>> {
        self.session.lock().ok()?.use_identity(Instant::now())
    }

    fn used(&self) {
        if let Ok(mut s) = self.session.lock() {
            s.touch(Instant::now());
        }
    }

    fn is_unlocked(&self) -> bool {
        self.session.lock().is_ok_and(|s| s.is_unlocked())
    }

    fn recipients(&self) -> Result<lockbox_fs::SealTo, lockbox_fs::Error> {
        self.recipients
            .get()
            .map_err(|e| lockbox_fs::Error::Recipients(format!("{e:#}").into()))
    }

    fn tag_key(&self) -> Option<Arc<lockbox_crypto::seal::tags::TagKey>> {
        self.session.lock().ok()?.tag_key()
    }
}

/// Detach a stale mount, sweep plaintext from the bare folder and the
/// store, and mount `~/lockbox`.
fn mount_lockbox(envoy: &Envoy, session: Arc<Mutex<Session>>) -> anyhow::Result<Mount> {
    let path = &envoy.paths.mount;
    if mount::state(path) == MountState::Stale {
        tracing::warn!(
            "{} is a stale mount of a killed agent: detaching it",
            path.display()
        );
        mount::detach(path).with_context(|| {
            format!(
                "the stale mount at {} could not be detached: run fusermount3 -uz {}",
                path.display(),
                path.display()
            )
        })?;
    }
    // A bare ~/lockbox takes plaintext while no agent runs: it is 0700
    // whatever the umask it was made with (re-made if it was removed,
    // tightened and logged if it was widened).
    if mount::state(path) == MountState::NotMounted {
        mount::ensure_private(path)
            .with_context(|| format!("cannot make {} a private folder", path.display()))?;
    }
    match envoy.sweep() {
        Ok(r) if !r.sealed.is_empty() => {
            tracing::info!(
                "sealed {} plaintext file(s) before mounting",
                r.sealed.len()
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("sweep before mounting failed: {e:#}"),
    }
    crate::host::fuse_available(sys::uid() == 0)
        .map_err(|e| anyhow::anyhow!("cannot mount {}: {e}", path.display()))?;
    let keys = Arc::new(AgentKeys {
        session,
        recipients: envoy::RecipientsFile::new(envoy.paths.recipients()),
    });
    let config = FsConfig {
        max_file_size: envoy.config.max_file_size,
        cache_bytes: 16 << 20,
    };
    let fs = LockboxFs::new(envoy.store.clone(), keys, config)?;
    let m = Mount::start(Arc::new(fs), path, 4).with_context(|| {
        format!(
            "cannot mount {} (lockbox doctor checks FUSE)",
            path.display()
        )
    })?;
    tracing::info!("mounted {}", path.display());
    Ok(m)
}

async fn serve(agent: Arc<Agent>) -> anyhow::Result<()> {
    let sock_path = agent.envoy.paths.socket();
    // We hold the agent lock, so a socket file here is a dead agent's.
    let _ = fs::remove_file(&sock_path);
    // A path too long for sun_path is bound through its folder.
    let listener = crate::paths::SocketAddr::of(&sock_path)
        .and_then(|addr| tokio::net::UnixListener::bind(addr.path()))
        .with_context(|| format!("cannot listen on {}", sock_path.display()))?;
    fs::set_permissions(&sock_path, fs::Permissions::from_mode(0o600))?;

    tokio::spawn(idle_timer(agent.clone()));
    tokio::spawn(reencrypt_when_needed(agent.clone()));
    tokio::spawn(trim_when_idle());
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;

    tracing::info!(
        "agent for {} on envoy {} serving {}",
        agent.envoy.config.user,
        agent.envoy.config.envoy,
        sock_path.display()
    );
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "{READY_PREFIX} (pid {}, socket {}, mounted at {})",
        std::process::id(),
        sock_path.display(),
        agent.envoy.paths.mount.display()
    );
    let _ = out.flush();
    // systemd (Type=notify): the mount is up and the socket answers.
    crate::notify::notify(crate::notify::READY);

    let me = sys::uid();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => { tracing::warn!("control socket accept failed: {e}"); continue; }
                };
                let stream = match stream.into_std().and_then(|s| { s.set_nonblocking(false)?; Ok(s) }) {
                    Ok(s) => s,
                    Err(e) => { tracing::warn!("control connection setup failed: {e}"); continue; }
                };
                match sys::peer_uid(&stream) {
                    Ok(uid) if uid == me => {}
                    Ok(uid) => {
                        tracing::warn!("refused a control connection from uid {uid}: only uid {me} may use this agent");
                        continue;
                    }
                    Err(e) => { tracing::warn!("cannot read control peer credentials: {e}"); continue; }
                }
                let agent = agent.clone();
                tokio::task::spawn_blocking(move || handle(&agent, stream));
            }
            _ = agent.shutdown.notified() => { tracing::info!("stop requested"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
        }
    }
    crate::notify::notify(crate::notify::STOPPING);
    Ok(())
}

/// Start the mesh if this envoy has its mTLS material; otherwise say why
/// it is off. Returns the mesh and a line for `status`.
async fn start_mesh(envoy: &Envoy, replica: &Arc<Replica>) -> (Option<Arc<Mesh>>, String) {
    let c = &envoy.config;
    let tls = match lockbox_net::tls::TlsMaterial::load(&envoy.paths.tls()) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("the mesh is off: {e}");
            return (None, format!("off: {e}"));
        }
    };
    let (server, client) = match (tls.server_config(), tls.client_config()) {
        (Ok(s), Ok(c)) => (s, c),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("the mesh is off: {e}");
            return (None, format!("off: {e}"));
        }
    };
    let ip: std::net::IpAddr = match c.listen.parse() {
        Ok(ip) => ip,
        Err(_) => {
            return (
                None,
                format!("off: listen address {:?} is not an IP address", c.listen),
            )
        }
    };
    let multicast = match c.multicast {
        crate::config::Multicast::Off => None,
        crate::config::Multicast::Group(g) => Some(g),
    };
    let cfg = MeshConfig {
        listen: std::net::SocketAddr::new(ip, c.peer_port),
        multicast,
        announce_interval: c.announce_interval,
        stale_after: c.stale_after,
        static_peers: c.cross_subnet_peers.clone(),
        push_concurrency: c.push_concurrency as usize,
        disk_pressure_percent: c.disk_pressure_percent,
        max_file_size: c.max_file_size,
        recipient: replica.own_recipient().unwrap_or_default(),
        default_port: 1531,
        tombstone_retention: c.tombstone_retention,
    };
    match Mesh::start(replica.clone(), cfg, server, client).await {
        Ok(m) => {
            let state = format!(
                "on: peer port {}, discovery {}, {} static peer(s)",
                m.port(),
                c.multicast,
                c.cross_subnet_peers.len()
            );
            (Some(m), state)
        }
        Err(e) => {
            tracing::warn!("the mesh is off: {e}");
            (None, format!("off: {e}"))
        }
    }
}

/// While unlocked, re-encrypt every file sealed to an older member set:
/// at unlock, and whenever the member set changes.
async fn reencrypt_when_needed(agent: Arc<Agent>) {
    loop {
        let a = agent.clone();
        let _ =
            tokio::task::spawn_blocking(move || reencrypt(&a, Reseal::Drifted, |_, _| {})).await;
        tokio::select! {
            _ = agent.members_changed.notified() => {}
        }
    }
}

/// Why a re-encryption could not start.
#[derive(Debug)]
enum ReencryptError {
    /// No unlock session: re-sealing needs the old plaintext.
    Locked,
    /// The current members could not be read.
    Recipients(anyhow::Error),
}

impl ReencryptError {
    /// The control protocol's answer for it.
    fn response(&self) -> Response {
        match self {
            ReencryptError::Locked => Response::Error {
                failure: Failure::Locked,
                message: "locked: run lockbox unlock".into(),
            },
            ReencryptError::Recipients(e) => Response::Error {
                failure: Failure::Damaged,
                message: format!("{e:#}"),
            },
        }
    }
}

/// Re-encrypt `which` files now, if unlocked; `progress(done, total)` after
/// each. Returns how many were re-encrypted and how many were considered.
fn reencrypt(
    agent: &Agent,
    which: Reseal,
    mut progress: impl FnMut(usize, usize),
) -> Result<(usize, usize), ReencryptError> {
    let drift = match which {
        Reseal::Drifted => agent.replica.drift(),
        Reseal::All => agent
            .replica
            .manifest()
            .into_iter()
            .map(|(n, _)| n)
            .collect(),
    };
    if drift.is_empty() {
        return Ok((0, 0));
    }
    let identity = agent
        .session
        .lock()
        .ok()
        .and_then(|s| s.peek_identity())
        .ok_or(ReencryptError::Locked)?;
    let max = agent.envoy.config.max_file_size;
    let total = drift.len();
    let mut done = 0;
    for (i, name) in drift.iter().enumerate() {
        // Read for each file: the members may change during a long run, and
        // each record names the envoys its file was sealed to.
        let recipients = envoy::read_recipients(&agent.envoy.paths.recipients())
            .map_err(ReencryptError::Recipients)?;
        let r = agent.replica.reseal(name, which, |src, out| {
            let opened = Opened::open(&identity, src).map_err(|e| e.to_string())?;
            let shares = agent.envoy.store.shares();
            lockbox_fs::store::seal_into(out, name, opened, &recipients, shares, max)
                .map_err(|e| e.to_string())
        });
        match r {
            Ok(true) => done += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!("could not re-encrypt {}: {e}", name.escaped()),
        }
        progress(i + 1, total);
    }
    if done > 0 {
        tracing::info!("re-encrypted {done} file(s) to the current members");
    }
    Ok((done, total))
}

/// How long `leave` and `evict` wait for the live members to take the
/// record.
const DELIVER_WITHIN: std::time::Duration = std::time::Duration::from_secs(15);

/// Push a leave or eviction to the live members now (on the agent's runtime,
/// from this blocking thread) and say how many took it.
fn deliver_leave(agent: &Agent, record: Vec<u8>, members: usize) -> Response {
    let (took, asked) = match (&agent.mesh, tokio::runtime::Handle::try_current()) {
        (Some(mesh), Ok(rt)) => rt.block_on(mesh.deliver(Table::Leaves, record, DELIVER_WITHIN)),
        _ => (0, 0),
    };
    Response::Delivered {
        took,
        asked,
        members,
    }
}

/// `Reencrypt`: every file, with a `Progress` frame after each, then
/// `Reencrypted`.
fn reencrypt_all(agent: &Agent, stream: &mut UnixStream) -> std::io::Result<()> {
    // Re-sealing shows the user nothing: it does not count as use of the
    // session (only reads, writes, decrypt and encrypt do), but a timeout
    // already passed locks before it starts.
    if let Ok(mut s) = agent.session.lock() {
        s.expire(Instant::now());
    }
    agent.session_changed.notify_one();
    let mut sent = Ok(());
    let result = reencrypt(agent, Reseal::All, |done, total| {
        if sent.is_ok() {
            sent = control::write_message(&mut *stream, &Response::Progress { done, total });
        }
    });
    sent?;
    match result {
        Ok((resealed, total)) => {
            control::write_message(stream, &Response::Reencrypted { resealed, total })
        }
        Err(e) => control::write_message(stream, &e.response()),
    }
}

/// Give free heap back to the system once the agent has gone idle after
/// work (see [`sys::TrimWhenIdle`]).
async fn trim_when_idle() {
    let mut when = sys::TrimWhenIdle::default();
    let mut every = tokio::time::interval(sys::TrimWhenIdle::PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if when.tick(sys::process_cpu_time()) {
            sys::trim_heap();
            when.trimmed(sys::process_cpu_time());
        }
    }
}

/// Lock the session when it has been idle for the timeout.
async fn idle_timer(agent: Arc<Agent>) {
    loop {
        let deadline = agent.session.lock().ok().and_then(|s| s.deadline());
        match deadline {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(d.into()) => {
                        // Whether the timeout locked it now or a read that
                        // came first did (`Session::use_identity` expires it
                        // too), what the file system holds goes here.
                        let locked = agent.session.lock().is_ok_and(|mut s| {
                            s.expire(Instant::now());
                            // (Unlocked again since: nothing to drop.)
                            s.take_cleanup() && !s.is_unlocked()
                        });
                        if locked {
                            agent.fs.on_lock();
                            tracing::info!("idle timeout: session locked");
                        }
                    }
                    _ = agent.session_changed.notified() => {}
                }
            }
            None => agent.session_changed.notified().await,
        }
    }
}

fn handle(agent: &Arc<Agent>, mut stream: UnixStream) {
    let req = match control::read_frame::<Request>(&mut stream) {
        Ok(Some(Frame::Message(r))) => r,
        Ok(None) => return,
        Ok(Some(Frame::Data(_))) | Err(_) => {
            let _ = reply_err(&mut stream, Failure::Invalid, "malformed request".into());
            return;
        }
    };
    let result = match req {
        Request::Status => {
            control::write_message(&mut stream, &Response::Status(Box::new(status(agent))))
        }
        Request::Web => control::write_message(&mut stream, &web_page(agent)),
        Request::List => match agent.envoy.store.list() {
            Ok(entries) => control::write_message(
                &mut stream,
                &Response::List(entries.iter().map(ListEntry::from_entry).collect()),
            ),
            Err(e) => reply_err(&mut stream, Failure::Internal, e.to_string()),
        },
        Request::Unlock { passphrase } => {
            let resp = unlock(agent, &passphrase.0);
            drop(passphrase);
            control::write_message(&mut stream, &resp)
        }
        Request::Lock => {
            lock_session(agent);
            agent.session_changed.notify_one();
            tracing::info!("session locked");
            control::write_message(&mut stream, &Response::Ok)
        }
        Request::Encrypt { name, executable } => encrypt(agent, &mut stream, name, executable),
        Request::Reencrypt => reencrypt_all(agent, &mut stream),
        Request::Resurrect { name } => {
            let resp = match resurrect_name(agent, name) {
                Ok(_) => Response::Ok,
                Err(message) => Response::Error {
                    failure: Failure::Invalid,
                    message,
                },
            };
            control::write_message(&mut stream, &resp)
        }
        Request::Leave => {
            let members = agent.replica.members().len().saturating_sub(1);
            let resp = match agent.replica.leave() {
                Ok(l) => deliver_leave(agent, l.to_bytes(), members),
                Err(e) => Response::Error {
                    failure: Failure::Internal,
                    message: e.to_string(),
                },
            };
            control::write_message(&mut stream, &resp)
        }
        Request::Evict { record } => {
            let members = agent.replica.members().len().saturating_sub(1);
            let resp = match Signed::<lockbox_net::records::Leave>::from_bytes(&record)
                .map_err(|e| format!("bad eviction record: {e}"))
                .and_then(|l| {
                    agent
                        .replica
                        .evict(&l)
                        .map(|()| l)
                        .map_err(|e| e.to_string())
                }) {
                Ok(l) => deliver_leave(agent, l.to_bytes(), members),
                Err(message) => Response::Error {
                    failure: Failure::Invalid,
                    message,
                },
            };
            control::write_message(&mut stream, &resp)
        }
        Request::Decrypt { name } => decrypt(agent, &mut stream, name),
        Request::MakeFolder { name } => {
            let resp = change_name(agent, name, |n| agent.envoy.make_folder(n));
            control::write_message(&mut stream, &resp)
        }
        Request::Delete { name } => {
            let resp = change_name(agent, name, |n| agent.envoy.delete(n));
            control::write_message(&mut stream, &resp)
        }
        Request::Stop => {
            let r = control::write_message(&mut stream, &Response::Stopping);
            if let Ok(mut s) = agent.stoppers.lock() {
                s.push(stream);
            }
            agent.shutdown.notify_one();
            return drop(r);
        }
        Request::EndOfData => reply_err(
            &mut stream,
            Failure::Invalid,
            "unexpected end of data".into(),
        ),
    };
    if let Err(e) = result {
        tracing::debug!("control client went away: {e}");
    }
}

/// A change of the name `raw` asked on the control socket: `change`, then
/// the mount told.
fn change_name(
    agent: &Agent,
    raw: Vec<u8>,
    change: impl FnOnce(&Name) -> anyhow::Result<()>,
) -> Response {
    match Name::new(raw) {
        Ok(n) => match change(&n) {
            Ok(()) => {
                invalidate(agent, &n);
                Response::Ok
            }
            Err(e) => error_response(&e),
        },
        Err(e) => Response::Error {
            failure: Failure::Invalid,
            message: e.to_string(),
        },
    }
}

/// Tell the kernel a store file changed outside the mount: it caches
/// names and attributes until told (see `TTL` in `lockbox_fs::fuse`).
fn invalidate(agent: &Agent, name: &Name) {
    agent.fs.invalidate(name);
}

fn reply_err(stream: &mut UnixStream, failure: Failure, message: String) -> std::io::Result<()> {
    control::write_message(stream, &Response::Error { failure, message })
}

/// Map an error to a response: file-not-found and bad names are the user's
/// to fix; the rest is reported as is.
fn error_response(e: &anyhow::Error) -> Response {
    let failure = match e.downcast_ref::<lockbox_fs::Error>() {
        Some(lockbox_fs::Error::NotFound(_)) => Failure::NotFound,
        Some(lockbox_fs::Error::BadName { .. } | lockbox_fs::Error::TooLarge { .. }) => {
            Failure::Invalid
        }
        _ => Failure::Internal,
    };
    Response::Error {
        failure,
        message: format!("{e:#}"),
    }
}

fn status(agent: &Agent) -> StatusReport {
    let now = Instant::now();
    // Looking is not using: a status widget polling this must not keep the
    // session unlocked. It may notice the timeout (and lock) first.
    let (unlocked, idle_left) = match agent.session.lock() {
        Ok(mut s) => {
            s.expire(now);
            (s.is_unlocked(), s.idle_left(now))
        }
        Err(_) => (false, None),
    };
    agent.session_changed.notify_one();
    let e = &agent.envoy;
    let mut report = match StatusReport::gather(&e.paths, &e.config, &e.store) {
        Ok(r) => r,
        Err(err) => {
            tracing::warn!("status: {err:#}");
            return StatusReport {
                warnings: vec![format!("could not read the store: {err:#}")],
                ..StatusReport::gather_minimal(&e.config)
            };
        }
    };
    report.agent_running = true;
    report.agent_pid = Some(std::process::id());
    report.unlocked = unlocked;
    report.idle_left_secs = idle_left.map(|d| d.as_secs());
    let state = mount::state(&e.paths.mount);
    report.mount_state = crate::status::mount_state_word(state).into();
    report.mount_point = e.paths.mount.display().to_string();
    report.mount = match state {
        MountState::Mounted => format!("mounted at {}", e.paths.mount.display()),
        MountState::Stale => {
            "stale: the mount stopped answering; run lockbox stop, then lockbox unlock".into()
        }
        MountState::NotMounted => {
            "not mounted (unmounted behind the agent's back): run lockbox stop, then lockbox unlock"
                .into()
        }
    };
    report.mesh = agent.mesh_state.clone();
    report.mesh_on = agent.mesh.is_some();
    report.mesh_port = agent.mesh.as_ref().map(|m| m.port());
    let drift = agent.replica.drift();
    report.recipient_drift = drift.len();
    report.drifted = drift.iter().map(|n| n.to_string()).collect();
    if let Some(mesh) = &agent.mesh {
        report.last_catch_up = mesh
            .last_catchup()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64);
        let peers = mesh.peers();
        report.peers = peer_lines(
            &agent.replica.members().names(),
            &agent.envoy.config,
            &peers,
        );
        // Addresses whose joins failed: each was an online passphrase guess,
        // or an envoy set up with another passphrase.
        report.peers.extend(
            mesh.refused_joins()
                .into_iter()
                .map(|r| crate::status::PeerLine {
                    envoy: "?".into(),
                    state: "join refused".into(),
                    detail: format!(
                    "{}: {} failed join(s) in the last hour (at most {} are answered), the last \
                     {}s ago: {}",
                    r.addr,
                    r.failed_last_hour,
                    lockbox_net::mesh::FAILED_JOINS_PER_HOUR,
                    r.last_secs,
                    r.why
                ),
                }),
        );
        report.tables = table_lines(&agent.replica, &mesh.digests(), &peers);
        report.long_absence = mesh.long_absence();
    }
    fill_circle_tables(agent, &mut report, unlocked);
    report.departed = agent.replica.departed().map(|l| {
        format!(
            "this envoy {} the circle on {}: the others refuse it; run lockbox purge --yes \
             to wipe it here",
            l.body().kind.verb(),
            lockbox_net::version::utc_date(l.body().left_unix)
        )
    });
    report.hardening = Some(agent.hardening);
    report.warnings.extend(agent.replica.kept_where_written());
    if agent.hardening.dumpable {
        report
            .warnings
            .push("the agent could not make itself non-dumpable".into());
    }
    if agent.hardening.core_limit != 0 {
        report
            .warnings
            .push("the agent could not disable core dumps".into());
    }
    report
}

/// The status page's address, starting it on the agent's runtime the first
/// time (on `web_port`, or a free port).
fn web_page(agent: &Arc<Agent>) -> Response {
    let Ok(mut web) = agent.web.lock() else {
        return Response::Error {
            failure: Failure::Internal,
            message: "the status page's state is damaged".into(),
        };
    };
    if web.is_none() {
        let source: Arc<dyn crate::web::Source> = Arc::new(WebSource(agent.clone()));
        let port = agent.envoy.config.web_port;
        let started = tokio::runtime::Handle::try_current()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|h| h.block_on(crate::web::Web::start(port, source)));
        match started {
            Ok(w) => {
                tracing::info!("status page on http://{}/", w.addr());
                *web = Some(w);
            }
            Err(e) => {
                return Response::Error {
                    failure: Failure::Internal,
                    message: format!(
                        "cannot serve the status page on 127.0.0.1:{port}: {e} (set web_port \
                         in ~/.lockbox/config.yaml to a free port, or 0 for any)"
                    ),
                }
            }
        }
    }
    match web.as_ref() {
        Some(w) => Response::Web { url: w.url() },
        None => Response::Error {
            failure: Failure::Internal,
            message: "the status page did not start".into(),
        },
    }
}

/// The agent as the status page sees it: its status, and the two actions
/// the page offers.
struct WebSource(Arc<Agent>);

impl crate::web::Source for WebSource {
    fn status(&self) -> StatusReport {
        status(&self.0)
    }

    fn fingerprint(&self) -> Vec<u8> {
        let agent = &self.0;
        let e = &agent.envoy;
        let unlocked = agent.session.lock().is_ok_and(|s| s.is_unlocked());
        let members = agent.replica.members().names();
        let mut digests = vec![agent.replica.files_digest()];
        digests.extend(Table::ALL.map(|t| agent.replica.table_digest(t)));
        let (peers, mesh) = match &agent.mesh {
            Some(m) => (
                m.peers(),
                Some((
                    m.holdings_learnt(),
                    m.disk_refusals(),
                    m.last_catchup(),
                    m.long_absence(),
                )),
            ),
            None => (Vec::new(), None),
        };
        // The envoy lines as the page words them, without what moves with
        // the clock alone.
        let me = own_envoy_line(agent, unlocked);
        let lines: Vec<_> = crate::status::envoy_lines(me, &members, &peers, e.config.stale_after)
            .into_iter()
            .map(|l| {
                (
                    l.envoy,
                    l.state,
                    l.unlocked,
                    l.free_percent,
                    l.disk_short,
                    l.disk_refusals,
                    l.protocol,
                )
            })
            .collect();
        // Refusals, failures, and each peer's files digest (equal to ours
        // turns its whole column current).
        let views: Vec<_> = peers
            .iter()
            .map(|p| {
                let files = p.digests.map(|d| d.files);
                (p.addr.clone(), p.refused.clone(), p.error.is_some(), files)
            })
            .collect();
        format!("{unlocked:?}{members:?}{digests:?}{lines:?}{views:?}{mesh:?}").into_bytes()
    }

    fn act(&self, action: crate::web::Action) -> crate::web::ActionResult {
        let agent = &self.0;
        match action {
            crate::web::Action::Reencrypt => match reencrypt(agent, Reseal::Drifted, |_, _| {}) {
                Ok((done, total)) => Ok(format!(
                    "re-encrypted {done} of {total} drifted file(s) to the current members"
                )),
                // The CLI's message: "locked: run lockbox unlock", or why
                // the members could not be read.
                Err(e) => {
                    let status = match e {
                        ReencryptError::Locked => 403,
                        ReencryptError::Recipients(_) => 500,
                    };
                    match e.response() {
                        Response::Error { message, .. } => Err((status, message)),
                        _ => Err((status, "re-encryption did not start".into())),
                    }
                }
            },
            crate::web::Action::Resurrect(name) => resurrect_name(agent, name.into_bytes())
                .map(|n| format!("resurrected {}", n.escaped()))
                .map_err(|e| (400, e)),
        }
    }
}

/// This envoy's line of the envoy table.
fn own_envoy_line(agent: &Agent, unlocked: bool) -> crate::status::EnvoyLine {
    let e = &agent.envoy;
    let free = e.store.free_percent().ok();
    crate::status::EnvoyLine {
        envoy: e.config.envoy.clone(),
        this: true,
        state: "reporting".into(),
        last_seen_secs: Some(0),
        unlocked: Some(unlocked),
        free_percent: free,
        disk_short: free.is_some_and(|f| f <= e.config.disk_pressure_percent),
        disk_refusals: agent.mesh.as_ref().map_or(0, |m| m.disk_refusals()),
        protocol: Some(lockbox_net::mesh::PROTOCOL_VERSION),
        detail: "this envoy".into(),
    }
}

/// Lift the delete of the name `raw` (`lockbox resurrect` and the status
/// page's button); the error is the user's to read.
fn resurrect_name(agent: &Agent, raw: Vec<u8>) -> Result<Name, String> {
    let name = Name::new(raw).map_err(|e| e.to_string())?;
    agent
        .replica
        .resurrect(&name)
        .map(|_| name)
        .map_err(|e| e.to_string())
}

/// The status page's tables: the envoys, the presence matrix and the
/// deletes (see `docs/status-page.md`).
fn fill_circle_tables(agent: &Agent, report: &mut StatusReport, unlocked: bool) {
    use lockbox_net::mesh::Held;
    use lockbox_net::records::{FileVersion, Tombstone};
    let e = &agent.envoy;
    let members = agent.replica.members().names();
    let (peers, holdings) = match &agent.mesh {
        Some(m) => (m.peers(), m.holdings()),
        None => Default::default(),
    };
    report.envoys = crate::status::envoy_lines(
        own_envoy_line(agent, unlocked),
        &members,
        &peers,
        e.config.stale_after,
    );
    let local = agent
        .replica
        .manifest()
        .into_iter()
        .filter_map(|(name, rec)| {
            let rec = Signed::<FileVersion>::from_trusted_bytes(&rec).ok()?;
            let v = rec.body();
            Some(crate::status::LocalVersion {
                held: Held::of(v),
                size: v.plaintext_len,
                sealed_unix: v.sealed_unix,
                author: v.author.to_string(),
                name,
            })
        })
        .collect();
    report.presence = crate::status::presence_rows(&e.config.envoy, local, &holdings);
    let mut deletes: Vec<_> = agent
        .replica
        .table_records(lockbox_net::replica::Table::Tombstones)
        .iter()
        .filter_map(|b| Signed::<Tombstone>::from_trusted_bytes(b).ok())
        // A delete a resurrect lifted is not one any more.
        .filter(|t| {
            let name = &t.body().name;
            lockbox_net::records::has_live_tombstone(
                &agent.replica.tombstones(name),
                &agent.replica.resurrects(name),
            )
        })
        .map(|t| crate::status::DeleteLine {
            name: t.body().name.to_string(),
            by: t.body().author.to_string(),
            deleted_unix: t.body().deleted_unix,
        })
        .collect();
    deletes.sort_by(|a, b| {
        b.deleted_unix
            .cmp(&a.deleted_unix)
            .then(a.name.cmp(&b.name))
    });
    report.deletes = deletes;
}

/// One line per member envoy (live, stale, or absent when never heard
/// from), then one per refused peer.
/// Each table's size, and the live members whose digest of it differs.
fn table_lines(
    replica: &Replica,
    mine: &lockbox_net::announce::Digests,
    peers: &[lockbox_net::mesh::PeerStatus],
) -> Vec<crate::status::TableLine> {
    use lockbox_net::announce::Digests;
    let sizes = replica.table_sizes();
    let count = |t: Table| sizes.iter().find(|(x, _)| *x == t).map_or(0, |(_, n)| *n);
    let digest = |d: &Digests, table: &str| match table {
        "files" => d.files,
        "tombstones" => d.tombstones,
        "resurrects" => d.resurrects,
        _ => d.leaves,
    };
    [
        ("files", replica.manifest().len()),
        ("tombstones", count(Table::Tombstones)),
        ("resurrects", count(Table::Resurrects)),
        ("leaves", count(Table::Leaves)),
    ]
    .into_iter()
    .map(|(table, records)| crate::status::TableLine {
        table: table.into(),
        records,
        differs_on: peers
            .iter()
            .filter(|p| p.live && p.refused.is_none())
            .filter_map(|p| {
                let d = p.digests.as_ref()?;
                (digest(d, table) != digest(mine, table))
                    .then(|| p.envoy.clone().unwrap_or_else(|| p.addr.clone()))
            })
            .collect(),
    })
    .collect()
}

fn peer_lines(
    members: &[String],
    config: &crate::config::Config,
    peers: &[lockbox_net::mesh::PeerStatus],
) -> Vec<crate::status::PeerLine> {
    let mut lines = Vec::new();
    for m in members.iter().filter(|m| **m != config.envoy) {
        let seen: Vec<_> = peers
            .iter()
            .filter(|p| p.envoy.as_deref() == Some(m.as_str()) && p.refused.is_none())
            .collect();
        let line = match seen.iter().find(|p| p.live).or(seen.first()) {
            Some(p) => crate::status::PeerLine {
                envoy: m.clone(),
                state: if p.live { "live" } else { "stale" }.into(),
                detail: {
                    let mut d = match (p.last_seen_secs, &p.error) {
                        (Some(s), None) => format!("{}, heard {s}s ago", p.addr),
                        (Some(s), Some(e)) => {
                            format!("{}, heard {s}s ago; since then: {e}", p.addr)
                        }
                        (None, _) => p.addr.clone(),
                    };
                    let free = p.free_percent.unwrap_or(100);
                    if p.disk_short || free <= config.disk_pressure_percent {
                        d.push_str(&format!(
                            "; its disk is short ({free}% free): it gets no pushes"
                        ));
                    }
                    d
                },
            },
            None => crate::status::PeerLine {
                envoy: m.clone(),
                state: "absent".into(),
                detail: "a member, not heard from since this agent started".into(),
            },
        };
        lines.push(line);
    }
    // Addresses that never answered as a member (a static peer that is down
    // or refused us in the TLS handshake).
    for p in peers
        .iter()
        .filter(|p| p.refused.is_none() && p.envoy.is_none())
    {
        if let Some(e) = &p.error {
            lines.push(crate::status::PeerLine {
                envoy: "?".into(),
                state: "unreachable".into(),
                detail: format!("{}: {e}", p.addr),
            });
        }
    }
    for p in peers.iter().filter(|p| p.refused.is_some()) {
        lines.push(crate::status::PeerLine {
            envoy: p.envoy.clone().unwrap_or_else(|| "?".into()),
            state: "refused".into(),
            detail: format!("{}: {}", p.addr, p.refused.clone().unwrap_or_default()),
        });
    }
    lines
}

fn unlock(agent: &Agent, passphrase: &str) -> Response {
    let path = agent.envoy.paths.identity();
    let file = match fs::read(&path) {
        Ok(b) if b.len() <= 64 * 1024 => b,
        Ok(_) => {
            return Response::Error {
                failure: Failure::Damaged,
                message: format!("{} is too large to be an identity file", path.display()),
            }
        }
        Err(e) => {
            return Response::Error {
                failure: Failure::Damaged,
                message: format!("cannot read {}: {e}", path.display()),
            }
        }
    };
    let secret = lockbox_crypto::SecretString::from(passphrase.to_owned());
    let identity = match lockbox_crypto::identity::unwrap(&file, &secret) {
        Ok(id) => id,
        Err(lockbox_crypto::Error::WrongPassphrase) => {
            tracing::warn!("unlock refused: wrong passphrase");
            return Response::Error {
                failure: Failure::WrongPassphrase,
                message: "wrong passphrase".into(),
            };
        }
        Err(e) => {
            return Response::Error {
                failure: Failure::Damaged,
                message: e.to_string(),
            }
        }
    };
    let join = join_credentials(agent, &secret, &identity);
    if let Ok(mut s) = agent.session.lock() {
        s.unlock(identity, Instant::now());
        if let Some(j) = join {
            s.set_join(j);
        }
    }
    agent.session_changed.notify_one();
    // Unlocking lets files sealed to an older member set be re-encrypted.
    agent.members_changed.notify_one();
    tracing::info!("session unlocked");
    let swept = match agent.envoy.sweep() {
        Ok(r) => {
            // Plaintext in the store became ciphertext, or `.failed`.
            let failed = r.failed.iter().flat_map(|(from, to, _)| [from, to]);
            r.sealed
                .iter()
                .chain(failed)
                .for_each(|n| invalidate(agent, n));
            r.sealed.len()
        }
        Err(e) => {
            tracing::warn!("sweep after unlock failed: {e:#}");
            0
        }
    };
    Response::Unlocked { swept }
}

/// What this envoy joins other circles with while unlocked: the join
/// password, and its circle's secret from `circle.secret`. A store made by
/// protocol 1 has no such file: its circle key was derived from the
/// passphrase, which let anyone holding one of its endorsements test
/// passphrase guesses offline. At its first unlock the circle is re-keyed
/// ([`rekey_protocol_1`]). `None`, with a warning, when nothing works: the
/// envoy then syncs with its circle but cannot join another.
fn join_credentials(
    agent: &Agent,
    passphrase: &lockbox_crypto::SecretString,
    identity: &lockbox_crypto::AgeIdentity,
) -> Option<Arc<lockbox_net::mesh::JoinCredentials>> {
    use lockbox_crypto::circle::{open_secret, seal_secret, CircleSecret, CIRCLE_PARAMS};
    let paths = &agent.envoy.paths;
    let user = agent.replica.user().to_string();
    let circle = match fs::read(paths.circle_secret()) {
        Ok(sealed) => match open_secret(&sealed, identity) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    "{} cannot be opened ({e}): this envoy cannot join other circles",
                    paths.circle_secret().display()
                );
                return None;
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!("a store made by protocol 1: deriving its circle key once");
            let c = match CircleSecret::protocol_1(passphrase, &user, CIRCLE_PARAMS) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("cannot derive the circle key: {e}");
                    return None;
                }
            };
            if c.public() != agent.replica.circle() {
                tracing::warn!(
                    "{} names another circle than the passphrase derives: this envoy \
                     cannot join other circles",
                    paths.circle_public().display()
                );
                return None;
            }
            match rekey_protocol_1(agent, &c) {
                Some(new) => new,
                None => {
                    // Kept sealed, as it is: re-keyed at a later unlock.
                    match seal_secret(&c, &identity.to_public()) {
                        Ok(sealed) => {
                            if let Err(e) = envoy::write_private(&paths.circle_secret(), &sealed) {
                                tracing::warn!("cannot keep the circle secret: {e:#}");
                            }
                        }
                        Err(e) => tracing::warn!("cannot seal the circle secret: {e}"),
                    }
                    c
                }
            }
        }
        Err(e) => {
            tracing::warn!("cannot read {}: {e}", paths.circle_secret().display());
            return None;
        }
    };
    if circle.public() != agent.replica.circle() {
        tracing::warn!(
            "{} does not hold this envoy's circle: this envoy cannot join other circles",
            paths.circle_secret().display()
        );
        return None;
    }
    // Its hellos are sealed from now on, locked or not.
    if let Err(e) = agent.replica.keep_hello_key(&circle) {
        tracing::warn!("cannot keep the circle's hello key: {e}");
    }
    // A handover followed while unlocked is opened with the identity,
    // held by the credentials, which are dropped at lock.
    let id = identity.clone();
    Some(Arc::new(
        lockbox_net::mesh::JoinCredentials::new(
            lockbox_crypto::join::JoinPassword::derive(passphrase, &user),
            circle,
        )
        .with_opener(Box::new(move |sealed| open_secret(sealed, &id).ok())),
    ))
}

/// Re-keys a circle made by protocol 1 (`old`, derived from the
/// passphrase): a random circle succeeds it, every other member gets a
/// handover (so it follows at its next hello, locked or not), and this
/// envoy adopts the new circle. The new circle counts as made at time 1,
/// keeping the old circle's seniority in merges (protocol 1's counted as
/// made at 0). Returns the new secret, or `None` (with a warning) if the
/// re-key failed and the old circle stays.
fn rekey_protocol_1(
    agent: &Agent,
    old: &lockbox_crypto::circle::CircleSecret,
) -> Option<lockbox_crypto::circle::CircleSecret> {
    let new = lockbox_crypto::circle::CircleSecret::generate(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let replica = &agent.replica;
    let done = replica.make_handovers(old, &new, now).and_then(|handed| {
        replica.adopt_circle(&new, now)?;
        replica.learn_members(&handed);
        Ok(handed.len())
    });
    match done {
        Ok(n) => {
            tracing::info!(
                "re-keyed the circle made by protocol 1 to a random one ({} other member(s) \
                 handed over)",
                n
            );
            Some(new)
        }
        Err(e) => {
            tracing::warn!("cannot re-key the circle made by protocol 1: {e}");
            None
        }
    }
}

fn encrypt(
    agent: &Agent,
    stream: &mut UnixStream,
    name: Vec<u8>,
    executable: Option<bool>,
) -> std::io::Result<()> {
    let name = match Name::new(name) {
        Ok(n) => n,
        Err(e) => return reply_err(stream, Failure::Invalid, e.to_string()),
    };
    let shown = name.escaped();
    // The user's use: it keeps the session from its idle lock (a seal
    // needs no key, so this works locked too).
    if let Ok(mut s) = agent.session.lock() {
        s.touch(Instant::now());
    }
    // Tell the client to start sending, then seal straight from the frames.
    control::write_message(stream, &Response::Ok)?;
    let mut reader = stream.try_clone()?;
    let resp = match agent
        .envoy
        .encrypt(&name, DataFrames::new(&mut reader), executable)
    {
        Ok(s) => {
            invalidate(agent, &name);
            Response::Encrypted {
                len: s.plaintext_len,
            }
        }
        Err(e) => {
            tracing::warn!(
                "encrypt of {shown} failed: {e:#}; the old version (if any) is unchanged"
            );
            error_response(&e)
        }
    };
    control::write_message(stream, &resp)
}

fn decrypt(agent: &Agent, stream: &mut UnixStream, name: Vec<u8>) -> std::io::Result<()> {
    let name = match Name::new(name) {
        Ok(n) => n,
        Err(e) => return reply_err(stream, Failure::Invalid, e.to_string()),
    };
    let shown = name.escaped();
    let identity = agent
        .session
        .lock()
        .ok()
        .and_then(|mut s| s.use_identity(Instant::now()));
    agent.session_changed.notify_one();
    let Some(identity) = identity else {
        return reply_err(stream, Failure::Locked, "locked: run lockbox unlock".into());
    };
    let file = match agent.envoy.store.open_file(&name) {
        Ok(f) => f,
        Err(e) => return control::write_message(stream, &error_response(&e.into())),
    };
    let executable = file
        .metadata()
        .is_ok_and(|m| lockbox_fs::store::is_executable(&m));
    let mut opened = match Opened::open(&identity, file) {
        Ok(o) => o,
        Err(lockbox_crypto::Error::NotAge) => {
            return reply_err(
                stream,
                Failure::Damaged,
                format!("{shown} is not sealed yet (plaintext): run lockbox unlock to seal it"),
            )
        }
        Err(e) => {
            tracing::warn!("cannot decrypt {shown}: {e}");
            return reply_err(stream, Failure::Damaged, format!("{shown}: {e}"));
        }
    };
    control::write_message(
        stream,
        &Response::Decrypting {
            len: opened.plaintext_len(),
            executable,
        },
    )?;
    let mut buf = zeroize::Zeroizing::new(vec![0u8; control::DATA_CHUNK]);
    loop {
        match opened.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => control::write_data(stream, &buf[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(
                    "{shown}: ciphertext failed authentication ({e}); refusing to return it"
                );
                return reply_err(
                    stream,
                    Failure::Damaged,
                    format!("{shown}: the ciphertext is damaged or was tampered with ({e}); nothing was written"),
                );
            }
        }
    }
    control::write_message(stream, &Response::End)
}
