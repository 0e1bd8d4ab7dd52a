//! `lockbox demo`: a throwaway walk-through in a temporary directory that
//! drives the real CLI, agent and FUSE mount as a user would, then cleans up
//! — also on Ctrl-C. Until the mesh exists it runs one envoy; it becomes the
//! three-envoy mesh demo when the mesh lands.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context};

/// One envoy of the demo: its HOME.
struct DemoEnvoy {
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
        println!("$ lockbox {}", args.join(" "));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{}", indent(&stdout));
        eprint!("{}", indent(&String::from_utf8_lossy(&out.stderr)));
        if !out.status.success() {
            bail!("lockbox {} failed", args.join(" "));
        }
        Ok(stdout)
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
    let envoy = DemoEnvoy {
        home: dir.path().join("alpha"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let root = dir.path().to_owned();
    let home = envoy.home.clone();
    let outcome = runtime.block_on(async move {
        let steps = tokio::task::spawn_blocking(move || steps(&root, &DemoEnvoy { home }));
        tokio::select! {
            r = steps => r.unwrap_or_else(|e| Err(anyhow::anyhow!("demo step panicked: {e}"))),
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Cleanup runs whatever happened above.
    envoy.stop();
    drop(runtime);
    let path = dir.path().to_owned();
    dir.close()
        .with_context(|| format!("cannot remove {}", path.display()))?;
    println!("cleaned up {}", path.display());
    outcome
}

fn steps(root: &Path, a: &DemoEnvoy) -> anyhow::Result<()> {
    println!("lockbox demo: one envoy in {}\n", root.display());
    std::fs::create_dir_all(a.home.join(".lockbox"))?;
    let pass = root.join("passphrase");
    let phrase = format!("demo-{:016x}", rand::random::<u64>());
    crate::envoy::write_private(&pass, phrase.as_bytes())?;
    let pass = pass.to_string_lossy().into_owned();
    // The demo's envoys stay off the network.
    crate::envoy::write_private(
        &a.home.join(".lockbox/config.yaml"),
        b"multicast: off\npeer_port: 0\nlisten: 127.0.0.1\n",
    )?;

    a.show(&["init", "--passphrase-file", &pass, "--envoy", "alpha"])?;
    a.show(&["unlock", "--passphrase-file", &pass])?;

    // Write through the mount, as any program would.
    let mnt = a.home.join("lockbox");
    let content =
        "-----BEGIN DEMO KEY-----\nnot a real key, but sealed like one\n-----END DEMO KEY-----\n";
    std::fs::write(mnt.join("id_demo"), content)?;
    println!("$ cp id_demo ~/lockbox/     (written through the FUSE mount)");
    let back = std::fs::read_to_string(mnt.join("id_demo"))?;
    if back != content {
        bail!("reading back through the mount gave different content");
    }
    println!("$ cat ~/lockbox/id_demo\n{}", indent(&back));
    let stored = a.home.join(".lockbox/store/id_demo");
    let head = std::fs::read(&stored)?;
    let first = head.split(|&b| b == b'\n').next().unwrap_or_default();
    println!(
        "the store holds only ciphertext: {} ({} bytes) starts with {:?}\n",
        stored.display(),
        head.len(),
        String::from_utf8_lossy(first)
    );

    a.show(&["lock"])?;
    match std::fs::read(mnt.join("id_demo")) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            println!("$ cat ~/lockbox/id_demo     (while locked)\n    {e}\n")
        }
        other => bail!("reading while locked should be refused, got {other:?}"),
    }
    let locked = a.lockbox(&["decrypt", "id_demo", "-o", "-"])?;
    println!("$ lockbox decrypt id_demo -o -     (while locked)");
    print!("{}", indent(&String::from_utf8_lossy(&locked.stderr)));
    if locked.status.code() != Some(1) {
        bail!("decrypt while locked should fail with exit 1");
    }
    a.show(&["unlock", "--passphrase-file", &pass])?;
    let plain = a.show(&["decrypt", "id_demo", "-o", "-"])?;
    if plain != content {
        bail!("decrypted content differs from what was written");
    }
    println!("decrypted content matches what was written\n");
    a.show(&["list"])?;
    a.show(&["status"])?;
    a.show(&["stop"])?;
    Ok(())
}
