//! `lockbox demo`: a throwaway three-envoy mesh on loopback, each envoy with
//! its own HOME, agent and FUSE mount, driven through the real CLI as a user
//! would. It writes a file through envoy alpha's mount, shows it decrypted
//! through bravo's and charlie's, prints each status, and cleans everything
//! up — also on Ctrl-C and on SIGTERM, which it handles alike.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];

/// One envoy of the demo: its name and HOME.
struct DemoEnvoy {
    name: &'static str,
    home: PathBuf,
}

impl DemoEnvoy {
    fn lockbox(&self, args: &[&str]) -> anyhow::Result<Output> {
        let exe = std::env::current_exe()?;
        Command::new(exe)
            .args(args)
            .env("HOME", &self.home)
            .env_remove("RUST_LOG")
            .output()
            .context("cannot run lockbox")
    }

    /// Run, echo the command and its output, and require success.
    fn show(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.lockbox(args)?;
        println!("[{}] $ lockbox {}", self.name, args.join(" "));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{}", indent(&stdout));
        eprint!("{}", indent(&String::from_utf8_lossy(&out.stderr)));
        if !out.status.success() {
            bail!("[{}] lockbox {} failed", self.name, args.join(" "));
        }
        Ok(stdout)
    }

    fn status_json(&self) -> Option<serde_json::Value> {
        let out = self.lockbox(&["status", "--json"]).ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn mount(&self) -> PathBuf {
        self.home.join("lockbox")
    }

    /// Stop the agent if one runs (cleanup; errors ignored).
    fn stop(&self) {
        let _ = self.lockbox(&["stop"]);
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// Run the demo.
pub fn run() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("lockbox-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let root = dir.path().to_owned();
    let envoys: Vec<DemoEnvoy> = NAMES
        .iter()
        .map(|n| DemoEnvoy {
            name: n,
            home: root.join(n),
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let homes: Vec<PathBuf> = envoys.iter().map(|e| e.home.clone()).collect();
    let steps_root = root.clone();
    let outcome = runtime.block_on(async move {
        // SIGTERM (a `timeout`, a service manager, `kill`) ends the demo
        // exactly like Ctrl-C: the cleanup below runs either way.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot handle SIGTERM")?;
        let steps = tokio::task::spawn_blocking(move || {
            let envoys: Vec<DemoEnvoy> = NAMES
                .iter()
                .zip(homes)
                .map(|(name, home)| DemoEnvoy { name, home })
                .collect();
            steps(&steps_root, &envoys)
        });
        tokio::select! {
            r = steps => r.unwrap_or_else(|e| Err(anyhow::anyhow!("demo step panicked: {e}"))),
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = terminate.recv() => Err(anyhow::anyhow!("interrupted (SIGTERM)")),
        }
    });
    // Cleanup runs whatever happened above.
    for e in &envoys {
        e.stop();
    }
    drop(runtime);
    dir.close()
        .with_context(|| format!("cannot remove {}", root.display()))?;
    println!("cleaned up {}", root.display());
    outcome
}

/// Three loopback ports that are free now.
fn free_ports() -> anyhow::Result<Vec<u16>> {
    // Below the kernel's ephemeral range when there is room: a port it
    // hands out for `bind(0)` (another program's listener, or a test's
    // agent on a busy machine) cannot then take one of ours between this
    // check and the agents' own binds.
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut ports = Vec::new();
    if low > 11_000 {
        for _ in 0..200 {
            let port = rand::Rng::gen_range(&mut rand::thread_rng(), 10_000..low);
            if !ports.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                ports.push(port);
                if ports.len() == 3 {
                    return Ok(ports);
                }
            }
        }
    }
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("cannot find free loopback ports")?;
    Ok(listeners
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
        .collect())
}

/// Poll `check` until it holds or `limit` passes.
fn wait_for(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

fn steps(root: &Path, envoys: &[DemoEnvoy]) -> anyhow::Result<()> {
    println!(
        "lockbox demo: three envoys ({}) on loopback in {}\n",
        NAMES.join(", "),
        root.display()
    );
    let pass = root.join("passphrase");
    let phrase = format!("demo-{:016x}", rand::random::<u64>());
    crate::envoy::write_private(&pass, phrase.as_bytes())?;
    let pass = pass.to_string_lossy().into_owned();
    let ca = root.join("fleet-ca").to_string_lossy().into_owned();

    // One fleet CA; a certificate per envoy.
    envoys[0].show(&["fleet", "init", "--out", &ca])?;
    let ports = free_ports()?;
    for (i, e) in envoys.iter().enumerate() {
        std::fs::create_dir_all(e.home.join(".lockbox"))?;
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("\"127.0.0.1:{p}\""))
            .collect();
        // Loopback only, no multicast; short intervals so the demo is quick.
        // Its files are a few KiB: it also runs on a disk with less than
        // the default 10 % free, which would make each envoy refuse the
        // others' pushes (`disk_pressure_percent`).
        let config = format!(
            "multicast: off\nlisten: 127.0.0.1\npeer_port: {}\ncross_subnet_peers: [{}]\n\
             announce_interval: 1s\nstale_after: 5s\ndisk_pressure_percent: 0\n",
            ports[i],
            peers.join(", ")
        );
        crate::envoy::write_private(&e.home.join(".lockbox/config.yaml"), config.as_bytes())?;
        let tls = e.home.join(".lockbox/tls").to_string_lossy().into_owned();
        e.show(&[
            "fleet",
            "issue",
            "--ca",
            &ca,
            "--envoy",
            e.name,
            "--host",
            "127.0.0.1",
            "--out",
            &tls,
        ])?;
        // The same passphrase on every envoy: that is what makes them one circle.
        e.show(&["init", "--passphrase-file", &pass, "--envoy", e.name])?;
    }
    for e in envoys {
        e.show(&["unlock", "--passphrase-file", &pass])?;
    }

    // The envoys find each other and verify each other's endorsements.
    let took = wait_for(
        "the envoys to form one circle",
        Duration::from_secs(30),
        || {
            envoys.iter().all(|e| {
                e.status_json().is_some_and(|s| {
                    s["recipients"].as_array().is_some_and(|r| r.len() == 3)
                        && s["peers"]
                            .as_array()
                            .is_some_and(|p| p.iter().filter(|p| p["state"] == "live").count() == 2)
                })
            })
        },
    )?;
    println!(
        "\nthe three envoys found each other and agree on the circle ({} ms)\n",
        took.as_millis()
    );

    // Write through alpha's mount, as any program would.
    let content =
        "-----BEGIN DEMO KEY-----\nnot a real key, but sealed like one\n-----END DEMO KEY-----\n";
    let written = Instant::now();
    std::fs::write(envoys[0].mount().join("id_demo"), content)?;
    println!("[alpha] $ cp id_demo ~/lockbox/     (written through the FUSE mount)");
    for e in &envoys[1..] {
        let path = e.mount().join("id_demo");
        wait_for(
            &format!("id_demo on {}", e.name),
            Duration::from_secs(20),
            || std::fs::read_to_string(&path).is_ok_and(|c| c == content),
        )?;
        println!(
            "[{}] $ cat ~/lockbox/id_demo     ({} ms after alpha's close)\n{}",
            e.name,
            written.elapsed().as_millis(),
            indent(content)
        );
    }
    let stored = envoys[1].home.join(".lockbox/store/id_demo");
    let head = std::fs::read(&stored)?;
    let first = head.split(|&b| b == b'\n').next().unwrap_or_default();
    println!(
        "bravo's store holds only ciphertext: {} ({} bytes) starts with {:?}\n",
        stored.display(),
        head.len(),
        String::from_utf8_lossy(first)
    );

    // A folder made on charlie, with a file in it: the tree reaches everyone.
    let folder = envoys[2].mount().join("ssh");
    std::fs::create_dir(&folder)?;
    std::fs::write(folder.join("config"), "Host *\n  IdentitiesOnly yes\n")?;
    println!("[charlie] $ mkdir ~/lockbox/ssh && echo ... > ~/lockbox/ssh/config");
    for e in &envoys[..2] {
        let path = e.mount().join("ssh/config");
        wait_for(
            &format!("ssh/config on {}", e.name),
            Duration::from_secs(20),
            || path.is_file(),
        )?;
        println!("[{}] $ ls ~/lockbox/ssh     config", e.name);
    }
    println!();

    // A file written on bravo, deleted on charlie: the delete reaches everyone.
    std::fs::write(envoys[1].mount().join("old_key"), "an old key\n")?;
    println!("[bravo] $ echo 'an old key' > ~/lockbox/old_key");
    let old_on_charlie = envoys[2].mount().join("old_key");
    wait_for("old_key on charlie", Duration::from_secs(20), || {
        old_on_charlie.exists()
    })?;
    std::fs::remove_file(&old_on_charlie)?;
    println!("[charlie] $ rm ~/lockbox/old_key");
    for e in &envoys[..2] {
        let path = e.mount().join("old_key");
        wait_for(
            &format!("the delete on {}", e.name),
            Duration::from_secs(20),
            || !path.exists(),
        )?;
        println!(
            "[{}] old_key is gone (signed tombstone from charlie)",
            e.name
        );
    }
    // Each envoy compares its tables with what it last heard from the
    // others; once a round of hellos has passed, they all agree.
    wait_for(
        "the envoys' tables to agree",
        Duration::from_secs(20),
        || {
            envoys.iter().all(|e| {
                e.status_json().is_some_and(|s| {
                    s["tables"].as_array().is_some_and(|t| {
                        t.iter()
                            .all(|t| t["differs_on"].as_array().is_some_and(|d| d.is_empty()))
                    })
                })
            })
        },
    )?;
    println!();
    for e in envoys {
        e.show(&["status"])?;
    }
    for e in envoys {
        e.show(&["stop"])?;
    }
    Ok(())
}
