//! `lockbox init` (first-time setup) and `lockbox export-identity`.

use anyhow::{bail, Context};
use lockbox_crypto::circle::{CircleSecret, Endorsement};
use lockbox_crypto::kdf::KdfParams;
use lockbox_crypto::recipients::RecipientEntry;
use lockbox_crypto::sign::SigningKey;
use lockbox_crypto::{identity, ExposeSecret, SecretString};

use crate::envoy::{self, write_private};
use crate::passphrase::{self, Attempt, Source};
use crate::paths::Paths;

/// Set up this envoy. Refuses if it is already initialised. The wrapped
/// identity is written last, so an interrupted init can simply be re-run.
pub fn run(paths: &Paths, pass: Source, envoy_name: Option<String>) -> anyhow::Result<()> {
    if paths.identity().exists() {
        bail!(
            "already initialised: {} exists (to start over on this envoy: lockbox purge --yes)",
            paths.identity().display()
        );
    }
    envoy::private_dir(&paths.state)?;
    // A config written beforehand (tests, provisioning) is kept and validated.
    let mut config = envoy::load_config(paths)?;
    if let Some(name) = envoy_name {
        config.envoy = name;
    }
    if config.envoy.is_empty() {
        config.envoy = host_name();
    }
    let config = crate::config::Config::parse(&config.render())
        .context("the envoy name is not usable: pick another with --envoy NAME")?;
    let user = if config.user.is_empty() {
        crate::sys::user_name()
    } else {
        config.user.clone()
    };
    let config = crate::config::Config { user, ..config };
    // Checked before anything is asked or written.
    let kdf = kdf_params(&config)?;

    let pass = passphrase::read_new(&pass, "New lockbox passphrase: ")?;
    let secret = SecretString::from(pass.to_string());

    let id = identity::generate();
    let recipient = id.to_public().to_string();
    let signing = SigningKey::generate();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // A circle of its own, with a random key: nothing any other machine can
    // see is a function of the passphrase. Envoys set up apart with the same
    // passphrase merge their circles when they meet, through an online join
    // (see docs/design.md, "Membership").
    let circle_secret = CircleSecret::generate(now);
    let circle = circle_secret.key();
    let sealed_circle = lockbox_crypto::circle::seal_secret(&circle_secret, &id.to_public())?;
    let endorsement = circle.endorse(Endorsement {
        user: config.user.clone(),
        envoy: config.envoy.clone(),
        recipient: recipient.clone(),
        signing_key: signing.public(),
        created_unix: now,
    });
    let wrapped = identity::wrap(&id, &secret, kdf)?;

    write_private(&paths.config(), config.render().as_bytes())?;
    write_private(&paths.signing_key(), signing.encode_file().as_bytes())?;
    write_private(&paths.circle_secret(), &sealed_circle)?;
    if let Some(hello) = lockbox_crypto::hello::HelloKey::of(&circle_secret) {
        write_private(&paths.circle_hello(), &hello.to_bytes())?;
    }
    write_private(
        &paths.circle_public(),
        format!("{}\n", circle.public()).as_bytes(),
    )?;
    envoy::private_dir(&paths.members())?;
    write_private(
        &paths
            .members()
            .join(format!("{}.endorsement", config.envoy)),
        &endorsement.to_bytes(),
    )?;
    let entries = [RecipientEntry {
        recipient,
        envoy: config.envoy.clone(),
    }];
    write_private(
        &paths.recipients(),
        lockbox_crypto::recipients::encode(&entries).as_bytes(),
    )?;
    envoy::private_dir(&paths.store())?;
    envoy::private_dir(&paths.tls())?;
    // 0700 whatever the umask (create, then chmod).
    lockbox_fs::mount::ensure_private(&paths.mount)
        .with_context(|| format!("cannot create {}", paths.mount.display()))?;
    write_private(&paths.identity(), &wrapped)?;

    println!(
        "initialised envoy '{}' for user '{}' in {}",
        config.envoy,
        config.user,
        paths.state.display()
    );
    println!("next: lockbox unlock   (starts the agent and holds your key in memory)");
    Ok(())
}

/// The config's `kdf`, refused below the floor unless the test switch
/// (`LOCKBOX_TEST_ALLOW_WEAK_KDF=1`, exactly) is set; when it lets weak
/// settings through it says so on stderr every time, so it cannot go
/// unnoticed outside a test.
fn kdf_params(config: &crate::config::Config) -> anyhow::Result<KdfParams> {
    use crate::config::ALLOW_WEAK_KDF_ENV;
    let allow_weak = std::env::var_os(ALLOW_WEAK_KDF_ENV).is_some_and(|v| v == "1");
    let (params, weak) = config.kdf_params_for_init(allow_weak)?;
    if weak {
        eprintln!(
            "warning: {ALLOW_WEAK_KDF_ENV}=1: the identity is wrapped with kdf settings below \
             the floor (memory_kib {}, iterations {}); for tests only: its passphrase is cheap \
             to guess from a copy of this disk",
            params.memory_kib, params.iterations
        );
    }
    Ok(params)
}

/// The host name, for the default envoy name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && !s.contains('/'))
        .unwrap_or_else(|| "envoy".into())
}

/// Print the AGE-SECRET-KEY after checking the passphrase (at a terminal,
/// up to three tries).
pub fn export_identity(paths: &Paths, pass: &Source) -> anyhow::Result<()> {
    let path = paths.identity();
    if !path.exists() {
        bail!("lockbox is not initialised for this user: run lockbox init");
    }
    let file = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let id = passphrase::with_tries(pass, "Lockbox passphrase: ", |pass| match identity::unwrap(
        &file,
        &SecretString::from(pass.to_string()),
    ) {
        Ok(id) => Ok(Attempt::Done(id)),
        Err(lockbox_crypto::Error::WrongPassphrase) => {
            Ok(Attempt::Wrong(anyhow::anyhow!("wrong passphrase")))
        }
        Err(e) => Err(e.into()),
    })?;
    eprintln!(
        "warning: the key below decrypts every lockbox file sealed to this envoy. \
         Store it offline (paper, a safe); anyone who has it can read your secrets."
    );
    println!("{}", id.to_string().expose_secret());
    Ok(())
}
