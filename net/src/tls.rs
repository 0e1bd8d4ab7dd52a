//! The fleet certificate authority and the mutual-TLS configuration of the
//! peer transport (see `docs/protocol.md`, "6. Transport").
//!
//! # Trust model
//!
//! A *fleet* is the set of machines that may talk to each other on the peer
//! port. It is defined by one certificate authority, [`FleetCa`]: `ca.pem`
//! (the certificate, shared with every envoy) and `ca.key` (its private key,
//! kept wherever the user keeps it — ideally offline). Each envoy holds, in
//! `~/.lockbox/tls/`, the CA certificate and a leaf certificate and key the CA
//! issued to it ([`Issued`], loaded as [`TlsMaterial`]).
//!
//! Both sides of every connection present their leaf and check the other's
//! against the fleet CA, with the CA as the *only* root: a peer without a
//! certificate, with one from another CA, or with an expired one fails in the
//! handshake, before any HTTP is spoken.
//!
//! The client does **not** check that the server's certificate names the host
//! it dialled. Envoys are reached at whatever address multicast discovery or
//! `cross_subnet_peers` reports, which is rarely a name in the certificate,
//! and the fleet certificate only says "this machine belongs to the fleet".
//! Which *envoy* and which *circle member* a peer is gets proven afterwards by
//! the circle endorsement exchanged over the connection (see `docs/design.md`,
//! "Membership"), which a
//! fleet certificate alone cannot forge. So the client verifier runs exactly
//! the chain checks of rustls's `WebPkiServerVerifier` — same function, same
//! trust anchor, same expiry and signature checks, same `serverAuth` key
//! usage — and leaves out only the final step that matches the server name.
//! It does so by calling the chain check itself rather than filtering
//! name-mismatch errors out of the full verifier, so that it never depends on
//! the order in which the full verifier runs its checks. Callers may pass any
//! [`ServerName`](rustls::pki_types::ServerName) to the connector; the peer's
//! IP address is the natural choice.
//!
//! # Certificates
//!
//! - Keys are ECDSA P-256 (SHA-256 signatures): universally supported and
//!   cheap to generate.
//! - The CA is valid for ten years ([`CA_VALIDITY`]), `CA:true` with a path
//!   length of 0 (it signs leaves only), key usage `keyCertSign` + `cRLSign`.
//! - A leaf has subject `CN=<envoy name>`, extended key usage `serverAuth` +
//!   `clientAuth` (every envoy is both), a fresh key per issue, and is valid
//!   from one hour before issue (tolerating clock skew between envoys) for the
//!   requested time, but never beyond the CA's own expiry.
//! - A leaf's subject alternative names are, in this order and without
//!   repeats: the hosts asked for, the envoy name when it is a valid DNS name,
//!   and always `localhost`, `127.0.0.1` and `::1`. The transport does not
//!   check them (see above); they are there so that ordinary tools (`curl
//!   --cacert ca.pem --cert cert.pem --key key.pem https://127.0.0.1:1531/…`)
//!   can talk to an envoy for debugging, and so that a renewal keeps them
//!   ([`TlsMaterial::hosts`] returns them all; issuing them again yields the
//!   same list).
//!
//! # Files
//!
//! Every file is PEM, written mode 0600 through a temporary file, fsync and
//! rename, in a folder made mode 0700. Files are read only up to
//! [`MAX_PEM_LEN`] bytes. A CA key is never overwritten. The three files of an
//! envoy are replaced one by one; a crash in between leaves a key that does not
//! match its certificate, which [`TlsMaterial::load`] reports, and issuing
//! again repairs it.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use lockbox_fs::durable::Existing;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use zeroize::{Zeroize, Zeroizing};

use crate::WireName;

/// The CA certificate, in a CA folder and in every envoy's TLS folder.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key, only in the CA folder.
pub const CA_KEY_FILE: &str = "ca.key";
/// An envoy's leaf certificate.
pub const CERT_FILE: &str = "cert.pem";
/// An envoy's leaf private key.
pub const KEY_FILE: &str = "key.pem";

/// The largest PEM file read, in bytes; anything longer is refused unread.
/// (A P-256 certificate is under 1 KiB.)
pub const MAX_PEM_LEN: u64 = 64 * 1024;

/// How long a new fleet CA is valid: ten years.
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);

/// The longest validity [`FleetCa::issue`] accepts: a hundred years.
pub const MAX_VALIDITY: Duration = Duration::from_secs(36500 * 24 * 3600);

/// The names every leaf certificate carries besides the hosts asked for.
pub const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The application protocol both sides offer: HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// How far before "now" a certificate's validity starts, so that a peer whose
/// clock is a little behind accepts it at once.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// Everything that can go wrong with fleet certificates. Each message names
/// the file involved and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A CA folder lacks `ca.pem` or `ca.key`.
    #[error(
        "no fleet CA in {dir}: {file} is missing; give --ca the folder that holds the \
         fleet's ca.pem and ca.key, or create a new fleet with `lockbox fleet init --out {dir}`",
        dir = .dir.display(), file = .file.display()
    )]
    NoCa {
        /// The CA folder.
        dir: PathBuf,
        /// The missing file.
        file: PathBuf,
    },

    /// An envoy's TLS folder lacks one of its three files.
    #[error(
        "no mTLS certificate in {dir} ({file} is missing): run `lockbox fleet issue --ca CA_DIR \
         --envoy NAME --out {dir}` with the folder of the fleet's CA",
        dir = .dir.display(), file = .file.display()
    )]
    NoCertificate {
        /// The TLS folder.
        dir: PathBuf,
        /// The missing file.
        file: PathBuf,
    },

    /// A file could not be read.
    #[error("cannot read {file}: {source}", file = .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The OS error.
        source: io::Error,
    },

    /// A file is larger than [`MAX_PEM_LEN`].
    #[error(
        "{file} is larger than {max} bytes, so it is not a certificate or key lockbox wrote: \
         replace it",
        file = .file.display()
    )]
    TooLarge {
        /// The file.
        file: PathBuf,
        /// The limit in bytes.
        max: u64,
    },

    /// A file is not the PEM certificate or key it should be.
    #[error(
        "{file} is not a valid {what} ({reason}): restore it, or issue a new one",
        file = .file.display()
    )]
    Damaged {
        /// The file.
        file: PathBuf,
        /// What it should hold, e.g. `"PEM certificate"`.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A `ca.pem` holds a certificate that is not a CA.
    #[error(
        "{file} is not a CA certificate (it lacks basicConstraints CA:true): give the \
         fleet CA's ca.pem, not an envoy's cert.pem",
        file = .file.display()
    )]
    NotCa {
        /// The file.
        file: PathBuf,
    },

    /// A private key does not belong to the certificate next to it.
    #[error(
        "{key} does not belong to {cert}: the files were mixed up or replaced halfway; \
         restore both from the same place, or issue a new certificate",
        key = .key.display(), cert = .cert.display()
    )]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },

    /// A leaf certificate was not issued by the CA next to it.
    #[error(
        "{cert} was not issued by the CA in {ca}: issue this envoy a certificate from the \
         fleet's CA with `lockbox fleet issue`",
        cert = .cert.display(), ca = .ca.display()
    )]
    WrongCa {
        /// The leaf certificate file.
        cert: PathBuf,
        /// The CA certificate file.
        ca: PathBuf,
    },

    /// The CA has expired, so nothing it issues would be accepted.
    #[error(
        "the fleet CA in {file} expired on {not_after}: create a new fleet with \
         `lockbox fleet init` and issue every envoy a new certificate",
        file = .file.display()
    )]
    CaExpired {
        /// The CA certificate file.
        file: PathBuf,
        /// When it expired, as written in the certificate.
        not_after: String,
    },

    /// Writing a CA would overwrite an existing CA key.
    #[error(
        "{file} already exists: refusing to overwrite a fleet CA key (every envoy's \
         certificate depends on it); choose another folder",
        file = .file.display()
    )]
    CaExists {
        /// The existing key file.
        file: PathBuf,
    },

    /// A file or folder could not be written.
    #[error("cannot write {file}: {source}", file = .file.display())]
    Write {
        /// The file or folder.
        file: PathBuf,
        /// The OS error.
        source: io::Error,
    },

    /// A folder could not be created or made private.
    #[error(transparent)]
    Folder(#[from] lockbox_fs::Error),

    /// The envoy name breaks the rules for names on the wire.
    #[error(
        "bad envoy name {name:?} ({source}): use 1 to {max} bytes without '/', NUL or \
         control characters",
        max = WireName::MAX_LEN
    )]
    BadEnvoyName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        #[source]
        source: crate::Error,
    },

    /// A host for the certificate is neither an IP address nor a DNS name.
    #[error(
        "bad host {host:?}: give an IP address or a DNS name (letters, digits and '-' in \
         dot-separated labels of 1 to 63 characters)"
    )]
    BadHost {
        /// The host as given.
        host: String,
    },

    /// A certificate date falls outside what a certificate can hold, because
    /// the system clock is far off.
    #[error("the time {0:?} cannot go in a certificate: check the system clock (NTP)")]
    BadClock(SystemTime),

    /// The requested validity is zero or longer than [`MAX_VALIDITY`].
    #[error("a certificate must be valid for between 1 second and 100 years, not {0:?}")]
    BadValidity(Duration),

    /// Generating a key or signing a certificate failed.
    #[error("cannot create the certificate: {0}")]
    Generate(#[from] rcgen::Error),

    /// rustls refused the material when building a TLS configuration.
    #[error("cannot use the certificate in {dir} for TLS: {reason}", dir = .dir.display())]
    Config {
        /// The folder the material came from.
        dir: PathBuf,
        /// rustls's reason.
        reason: String,
    },
}

/// A fleet certificate authority: the CA certificate and its private key.
///
/// The key PEM is held in a [`Zeroizing`] string, wiped when the value is
/// dropped, and never shown by `Debug`.
pub struct FleetCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: Zeroizing<String>,
    not_after: SystemTime,
    not_after_text: String,
    origin: PathBuf,
}

impl fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetCa")
            .field("origin", &self.origin)
            .field("not_after", &self.not_after_text)
            .field("key", &"[elided]")
            .finish()
    }
}

impl FleetCa {
    /// A new CA with subject `CN=<common_name>`, a fresh P-256 key, valid for
    /// [`CA_VALIDITY`] (see the module docs for its extensions).
    pub fn generate(common_name: &str) -> Result<FleetCa, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = asn1_time(now - CLOCK_SKEW)?;
        params.not_after = asn1_time(now + CA_VALIDITY)?;
        let cert = params.self_signed(&key)?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        FleetCa::parse(
            Path::new(CA_CERT_FILE),
            cert.pem(),
            Path::new(CA_KEY_FILE),
            key_pem,
        )
    }

    /// Read `DIR/ca.pem` and `DIR/ca.key`, checking that the certificate is a
    /// CA and that the key is its key.
    pub fn load(dir: &Path) -> Result<FleetCa, TlsError> {
        let missing = |file: &Path| TlsError::NoCa {
            dir: dir.to_owned(),
            file: file.to_owned(),
        };
        let cert_file = dir.join(CA_CERT_FILE);
        let key_file = dir.join(CA_KEY_FILE);
        let cert_pem = read_pem(&cert_file, missing)?;
        let key_pem = read_pem(&key_file, missing)?;
        FleetCa::parse(&cert_file, cert_pem.to_string(), &key_file, key_pem)
    }

    fn parse(
        cert_file: &Path,
        cert_pem: String,
        key_file: &Path,
        key_pem: Zeroizing<String>,
    ) -> Result<FleetCa, TlsError> {
        let cert_der = first_certificate(cert_file, cert_pem.as_bytes())?;
        let cert = parse_x509(cert_file, &cert_der)?;
        if !cert.is_ca() {
            return Err(TlsError::NotCa {
                file: cert_file.to_owned(),
            });
        }
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Damaged {
            file: key_file.to_owned(),
            what: "PEM private key",
            reason: e.to_string(),
        })?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(TlsError::KeyMismatch {
                key: key_file.to_owned(),
                cert: cert_file.to_owned(),
            });
        }
        let not_after = system_time(cert.validity().not_after.timestamp());
        let not_after_text = cert.validity().not_after.to_string();
        Ok(FleetCa {
            cert_pem,
            cert_der,
            key_pem,
            not_after,
            not_after_text,
            origin: cert_file.to_owned(),
        })
    }

    /// Write `DIR/ca.key` and `DIR/ca.pem` (mode 0600; `DIR` is created, or
    /// made, mode 0700). Refuses with [`TlsError::CaExists`] when `DIR/ca.key`
    /// exists, even if it appears between the check and the write.
    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        let key_file = dir.join(CA_KEY_FILE);
        if key_file.symlink_metadata().is_ok() {
            return Err(TlsError::CaExists { file: key_file });
        }
        lockbox_fs::durable::ensure_private_dir(dir)?;
        // The key first: it is the claim on the folder.
        write_private(&key_file, self.key_pem.as_bytes(), Existing::Keep)?;
        write_private(
            &dir.join(CA_CERT_FILE),
            self.cert_pem.as_bytes(),
            Existing::Replace,
        )?;
        lockbox_fs::durable::sync_dir(dir)?;
        Ok(())
    }

    /// The CA certificate in PEM, as shared with every envoy.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// When the CA expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Issue a leaf certificate to `envoy` for the given hosts (IP addresses
    /// or DNS names), valid from an hour ago for `validity`, cut short at the
    /// CA's own expiry. The subject alternative names are `hosts` plus the
    /// defaults described in the module docs.
    pub fn issue(
        &self,
        envoy: &str,
        hosts: &[String],
        validity: Duration,
    ) -> Result<Issued, TlsError> {
        if validity.is_zero() || validity > MAX_VALIDITY {
            return Err(TlsError::BadValidity(validity));
        }
        let now = SystemTime::now();
        let not_after = (now + validity).min(self.not_after);
        self.issue_between(envoy, hosts, now - CLOCK_SKEW, not_after)
    }

    /// [`issue`](Self::issue) with an explicit validity window (tests use it
    /// for certificates that are already expired).
    fn issue_between(
        &self,
        envoy: &str,
        hosts: &[String],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Issued, TlsError> {
        if let Err(source) = WireName::new(envoy) {
            return Err(TlsError::BadEnvoyName {
                name: envoy.to_owned(),
                source,
            });
        }
        if self.not_after <= SystemTime::now() {
            return Err(TlsError::CaExpired {
                file: self.origin.clone(),
                not_after: self.not_after_text.clone(),
            });
        }
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, ca_key)?;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, envoy);
        params.subject_alt_names = subject_alt_names(envoy, hosts)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = asn1_time(not_before)?;
        params.not_after = asn1_time(not_after)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Issued {
            ca_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
            not_after: system_time(unix_seconds(not_after)),
        })
    }
}

/// A leaf certificate and key just issued, with the CA certificate: the three
/// files an envoy needs in `~/.lockbox/tls/`.
pub struct Issued {
    /// The fleet CA certificate (PEM).
    pub ca_pem: String,
    /// The envoy's leaf certificate (PEM).
    pub cert_pem: String,
    /// The envoy's private key (PKCS#8 PEM), wiped when dropped.
    pub key_pem: Zeroizing<String>,
    /// When the leaf expires.
    pub not_after: SystemTime,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// Write `DIR/ca.pem`, `DIR/key.pem` and `DIR/cert.pem` (mode 0600;
    /// `DIR` is created, or made, mode 0700), replacing what is there — this
    /// is how a certificate is renewed.
    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        lockbox_fs::durable::ensure_private_dir(dir)?;
        for (file, text) in [
            (CA_CERT_FILE, self.ca_pem.as_str()),
            (KEY_FILE, self.key_pem.as_str()),
            (CERT_FILE, self.cert_pem.as_str()),
        ] {
            write_private(&dir.join(file), text.as_bytes(), Existing::Replace)?;
        }
        lockbox_fs::durable::sync_dir(dir)?;
        Ok(())
    }
}

/// What an envoy loads from `~/.lockbox/tls/`: the fleet CA, its own
/// certificate chain and key, and what the certificate says.
///
/// Loading checks that the files parse, that the key belongs to the
/// certificate and that the CA issued it, but not whether the certificate has
/// expired: status, `doctor` and `renew-cert` need to read expired ones. An
/// expired certificate fails in the handshake instead.
pub struct TlsMaterial {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    envoy: String,
    hosts: Vec<String>,
    not_after: SystemTime,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("dir", &self.dir)
            .field("envoy", &self.envoy)
            .field("hosts", &self.hosts)
            .field("not_after", &self.not_after)
            .field("key", &"[elided]")
            .finish()
    }
}

impl Drop for TlsMaterial {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl TlsMaterial {
    /// Read `DIR/ca.pem`, `DIR/cert.pem` and `DIR/key.pem`. A missing file
    /// gives [`TlsError::NoCertificate`], which says how to issue one.
    pub fn load(dir: &Path) -> Result<TlsMaterial, TlsError> {
        let missing = |file: &Path| TlsError::NoCertificate {
            dir: dir.to_owned(),
            file: file.to_owned(),
        };
        let ca_file = dir.join(CA_CERT_FILE);
        let cert_file = dir.join(CERT_FILE);
        let key_file = dir.join(KEY_FILE);
        let ca_pem = read_pem(&ca_file, missing)?;
        let cert_pem = read_pem(&cert_file, missing)?;
        let key_pem = read_pem(&key_file, missing)?;
        TlsMaterial::parse(
            dir,
            [
                (&ca_file, ca_pem.as_bytes()),
                (&cert_file, cert_pem.as_bytes()),
                (&key_file, key_pem.as_bytes()),
            ],
        )
    }

    /// The material in `issued`, without going through files (for tests and
    /// in-process fleets). Errors name the files as if in the current folder.
    pub fn from_issued(issued: &Issued) -> Result<TlsMaterial, TlsError> {
        TlsMaterial::parse(
            Path::new(""),
            [
                (Path::new(CA_CERT_FILE), issued.ca_pem.as_bytes()),
                (Path::new(CERT_FILE), issued.cert_pem.as_bytes()),
                (Path::new(KEY_FILE), issued.key_pem.as_bytes()),
            ],
        )
    }

    fn parse(dir: &Path, [ca, cert, key]: [(&Path, &[u8]); 3]) -> Result<TlsMaterial, TlsError> {
        let (ca_file, cert_file, key_file) = (ca.0, cert.0, key.0);
        let ca_der = first_certificate(ca_file, ca.1)?;
        let ca_x509 = parse_x509(ca_file, &ca_der)?;
        if !ca_x509.is_ca() {
            return Err(TlsError::NotCa {
                file: ca_file.to_owned(),
            });
        }

        let chain = CertificateDer::pem_slice_iter(cert.1)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| damaged(cert_file, "PEM certificate", e))?;
        let leaf_der = chain
            .first()
            .ok_or_else(|| damaged(cert_file, "PEM certificate", "no CERTIFICATE block found"))?;
        let leaf = parse_x509(cert_file, leaf_der)?;
        if leaf.issuer().as_raw() != ca_x509.subject().as_raw()
            || leaf.verify_signature(Some(ca_x509.public_key())).is_err()
        {
            return Err(TlsError::WrongCa {
                cert: cert_file.to_owned(),
                ca: ca_file.to_owned(),
            });
        }

        let key_der = PrivateKeyDer::from_pem_slice(key.1)
            .map_err(|e| damaged(key_file, "PEM private key", e))?;
        let signing_key = provider()
            .key_provider
            .load_private_key(key_der.clone_key())
            .map_err(|e| damaged(key_file, "PEM private key", e))?;
        if let Some(spki) = signing_key.public_key() {
            if spki.as_ref() != leaf.public_key().raw {
                return Err(TlsError::KeyMismatch {
                    key: key_file.to_owned(),
                    cert: cert_file.to_owned(),
                });
            }
        }

        let envoy = leaf
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| {
                damaged(
                    cert_file,
                    "envoy certificate",
                    "its subject has no common name (the envoy name)",
                )
            })?
            .to_owned();
        let hosts = sans_of(cert_file, &leaf)?;
        let not_after = system_time(leaf.validity().not_after.timestamp());
        Ok(TlsMaterial {
            dir: dir.to_owned(),
            ca: ca_der,
            chain,
            key: key_der,
            envoy,
            hosts,
            not_after,
        })
    }

    /// When the envoy's certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The envoy name in the certificate (its subject common name).
    pub fn envoy(&self) -> String {
        self.envoy.clone()
    }

    /// The certificate's subject alternative names (DNS names and IP
    /// addresses, as text), in certificate order. Passing them to
    /// [`FleetCa::issue`] reproduces them.
    pub fn hosts(&self) -> Vec<String> {
        self.hosts.clone()
    }

    /// Whether `ca` is the CA this material trusts (the same certificate).
    pub fn is_from(&self, ca: &FleetCa) -> bool {
        self.ca == ca.cert_der
    }

    /// The peer server's configuration: TLS 1.3 only, ALPN `h2`, presents this
    /// envoy's certificate and requires a client certificate issued by the
    /// fleet CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots(), Arc::clone(&provider))
                .build()
                .map_err(|e| self.config_error(e))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.config_error(e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| self.config_error(e))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    /// The peer client's configuration: TLS 1.3 only, ALPN `h2`, presents this
    /// envoy's certificate and accepts a server whose certificate the fleet CA
    /// issued, whatever name it was dialled by (see the module docs).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = provider();
        let verifier = Arc::new(FleetServerVerifier::new(self.roots(), &provider));
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.config_error(e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| self.config_error(e))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    /// The fleet CA as the only trust anchor.
    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        // `parse` already read this certificate with x509-parser; webpki is
        // stricter, so a failure here is reported by the verifier builders
        // ("no root certificates") rather than ignored silently.
        let _ = roots.add(self.ca.clone());
        Arc::new(roots)
    }

    fn config_error(&self, e: impl fmt::Display) -> TlsError {
        TlsError::Config {
            dir: self.dir.clone(),
            reason: e.to_string(),
        }
    }
}

/// Verifies a peer server's certificate against the fleet CA without
/// matching its name (see the module docs for why).
#[derive(Debug)]
struct FleetServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl FleetServerVerifier {
    fn new(roots: Arc<RootCertStore>, provider: &CryptoProvider) -> Self {
        FleetServerVerifier {
            roots,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for FleetServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Everything `WebPkiServerVerifier::verify_server_cert` checks (chain
        // to the fleet CA, validity period, signatures, `serverAuth`), minus
        // `verify_server_name`. There are no CRLs, and OCSP is not used.
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The one crypto provider lockbox uses: ring.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The subject alternative names of a leaf: `hosts`, the envoy name if it is
/// a DNS name, then [`DEFAULT_HOSTS`]; each once, IP addresses in canonical
/// form and DNS names in lower case.
fn subject_alt_names(envoy: &str, hosts: &[String]) -> Result<Vec<SanType>, TlsError> {
    let mut sans: Vec<SanType> = Vec::new();
    let envoy_host = is_dns_name(envoy).then_some(envoy);
    let wanted = hosts
        .iter()
        .map(String::as_str)
        .chain(envoy_host)
        .chain(DEFAULT_HOSTS);
    for host in wanted {
        let san = if let Ok(ip) = host.parse::<IpAddr>() {
            SanType::IpAddress(ip)
        } else if is_dns_name(host) {
            // `is_dns_name` admits ASCII only, which is all Ia5String needs.
            let name = host
                .to_ascii_lowercase()
                .try_into()
                .map_err(|_| TlsError::BadHost {
                    host: host.to_owned(),
                })?;
            SanType::DnsName(name)
        } else {
            return Err(TlsError::BadHost {
                host: host.to_owned(),
            });
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// Whether `s` is a DNS name: dot-separated labels of 1–63 ASCII letters,
/// digits and inner hyphens, 253 bytes at most.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The DNS and IP subject alternative names of a certificate, as text.
fn sans_of(file: &Path, cert: &X509Certificate<'_>) -> Result<Vec<String>, TlsError> {
    let ext = cert
        .subject_alternative_name()
        .map_err(|e| damaged(file, "envoy certificate", e))?;
    let Some(ext) = ext else {
        return Ok(Vec::new());
    };
    let mut hosts = Vec::new();
    for name in &ext.value.general_names {
        match name {
            GeneralName::DNSName(dns) => hosts.push((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes).map(IpAddr::from).ok(),
                    16 => <[u8; 16]>::try_from(*bytes).map(IpAddr::from).ok(),
                    _ => None,
                };
                match ip {
                    Some(ip) => hosts.push(ip.to_string()),
                    None => {
                        return Err(damaged(
                            file,
                            "envoy certificate",
                            "an IP address name is neither 4 nor 16 bytes",
                        ))
                    }
                }
            }
            // Other kinds (e-mail, URI) are not ours; leave them out.
            _ => {}
        }
    }
    Ok(hosts)
}

fn damaged(file: &Path, what: &'static str, reason: impl fmt::Display) -> TlsError {
    TlsError::Damaged {
        file: file.to_owned(),
        what,
        reason: reason.to_string(),
    }
}

/// The first certificate in a PEM file, as DER.
fn first_certificate(file: &Path, pem: &[u8]) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            damaged(file, "PEM certificate", "no CERTIFICATE block found")
        }
        e => damaged(file, "PEM certificate", e),
    })
}

/// Parse DER as an X.509 certificate, refusing trailing bytes.
fn parse_x509<'a>(file: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, TlsError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(damaged(
            file,
            "PEM certificate",
            format!("{} unexpected bytes after the certificate", rest.len()),
        )),
        Err(e) => Err(damaged(file, "PEM certificate", e)),
    }
}

/// Read a PEM file of at most [`MAX_PEM_LEN`] bytes; `missing` makes the
/// error for a file that does not exist.
fn read_pem(
    file: &Path,
    missing: impl Fn(&Path) -> TlsError,
) -> Result<Zeroizing<String>, TlsError> {
    let read_error = |source| TlsError::Read {
        file: file.to_owned(),
        source,
    };
    let f = match fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing(file)),
        Err(e) => return Err(read_error(e)),
    };
    let too_large = || TlsError::TooLarge {
        file: file.to_owned(),
        max: MAX_PEM_LEN,
    };
    if f.metadata().map_err(read_error)?.len() > MAX_PEM_LEN {
        return Err(too_large());
    }
    let mut bytes = Zeroizing::new(Vec::new());
    f.take(MAX_PEM_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_PEM_LEN {
        return Err(too_large());
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Zeroizing::new(text.to_owned())),
        Err(_) => Err(damaged(file, "PEM file", "it is not text")),
    }
}

/// Write a 0600 file atomically (see [`lockbox_fs::durable::write_private_file`]);
/// the caller syncs the folder. With [`Existing::Keep`] an existing file is
/// [`TlsError::CaExists`].
fn write_private(path: &Path, bytes: &[u8], existing: Existing) -> Result<(), TlsError> {
    lockbox_fs::durable::write_private_file(path, bytes, existing).map_err(|source| {
        if existing == Existing::Keep && source.kind() == io::ErrorKind::AlreadyExists {
            TlsError::CaExists {
                file: path.to_owned(),
            }
        } else {
            TlsError::Write {
                file: path.to_owned(),
                source,
            }
        }
    })
}

/// Seconds since the epoch (negative before it).
fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn system_time(unix: i64) -> SystemTime {
    let magnitude = Duration::from_secs(unix.unsigned_abs());
    if unix >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

fn asn1_time(t: SystemTime) -> Result<time::OffsetDateTime, TlsError> {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds(t)).map_err(|_| TlsError::BadClock(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    const HOUR: Duration = Duration::from_secs(3600);

    fn material(ca: &FleetCa, envoy: &str) -> TlsMaterial {
        TlsMaterial::from_issued(&ca.issue(envoy, &[], HOUR).unwrap()).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// The rustls error inside an I/O error from tokio-rustls, if any.
    fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
        e.get_ref().and_then(|inner| inner.downcast_ref())
    }

    /// A real handshake on loopback TCP: the client sends "ping!", the server
    /// answers "pong!". Returns what each side got, or its error; the server
    /// also reports the negotiated ALPN protocol.
    async fn exchange(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (io::Result<(Vec<u8>, Option<Vec<u8>>)>, io::Result<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(server);
        let connector = TlsConnector::from(client);
        let server_side = async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await?;
            tls.write_all(b"pong!").await?;
            tls.shutdown().await?;
            Ok((buf.to_vec(), alpn))
        };
        let client_side = async move {
            let tcp = TcpStream::connect(addr).await?;
            // A name that is in no certificate: the fleet does not match names.
            let name = ServerName::try_from("not-in-the-certificate.invalid").unwrap();
            let mut tls = connector.connect(name, tcp).await?;
            tls.write_all(b"ping!").await?;
            tls.flush().await?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await?;
            Ok(buf.to_vec())
        };
        // A bound on a bug, not a wait: each side finishes or fails at once.
        tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(server_side, client_side)
        })
        .await
        .expect("the handshake neither finished nor failed")
    }

    fn client_without_certificate(trusting: &TlsMaterial) -> Arc<ClientConfig> {
        let provider = provider();
        let verifier = Arc::new(FleetServerVerifier::new(trusting.roots(), &provider));
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Arc::new(config)
    }

    #[tokio::test]
    async fn two_envoys_of_one_fleet_shake_hands_and_exchange_bytes() {
        let ca = FleetCa::generate("test fleet").unwrap();
        let (a, b) = (material(&ca, "alpha"), material(&ca, "beta"));
        let (server, client) =
            exchange(a.server_config().unwrap(), b.client_config().unwrap()).await;
        let (got, alpn) = server.unwrap();
        assert_eq!(got, b"ping!");
        assert_eq!(alpn.as_deref(), Some(ALPN_H2));
        assert_eq!(client.unwrap(), b"pong!");
    }

    #[tokio::test]
    async fn server_refuses_a_client_without_a_certificate() {
        let ca = FleetCa::generate("test fleet").unwrap();
        let a = material(&ca, "alpha");
        let (server, client) =
            exchange(a.server_config().unwrap(), client_without_certificate(&a)).await;
        let err = server.unwrap_err();
        assert!(
            matches!(
                rustls_error(&err),
                Some(rustls::Error::NoCertificatesPresented)
            ),
            "{err:?}"
        );
        assert!(client.is_err(), "the client must not get an answer");
    }

    #[tokio::test]
    async fn server_refuses_a_client_from_another_fleet() {
        let ours = FleetCa::generate("our fleet").unwrap();
        let theirs = FleetCa::generate("their fleet").unwrap();
        let server_side = material(&ours, "alpha");
        let intruder = material(&theirs, "mallory");
        let (server, client) = exchange(
            server_side.server_config().unwrap(),
            // The intruder trusts our CA, so only the server's check can stop it.
            client_trusting(&intruder, &ours),
        )
        .await;
        let err = server.unwrap_err();
        assert!(
            matches!(
                rustls_error(&err),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{err:?}"
        );
        assert!(client.is_err());
    }

    /// A client presenting `me`'s certificate but trusting `ca` for servers.
    fn client_trusting(me: &TlsMaterial, ca: &FleetCa) -> Arc<ClientConfig> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let verifier = Arc::new(FleetServerVerifier::new(Arc::new(roots), &provider));
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(me.chain.clone(), me.key.clone_key())
            .unwrap();
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Arc::new(config)
    }

    #[tokio::test]
    async fn client_refuses_a_server_from_another_fleet() {
        let ours = FleetCa::generate("our fleet").unwrap();
        let theirs = FleetCa::generate("their fleet").unwrap();
        let impostor = material(&theirs, "alpha");
        let client_side = material(&ours, "beta");
        let (server, client) = exchange(
            impostor.server_config().unwrap(),
            client_side.client_config().unwrap(),
        )
        .await;
        let err = client.unwrap_err();
        assert!(
            matches!(
                rustls_error(&err),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{err:?}"
        );
        assert!(server.is_err());
    }

    fn is_expired(e: &io::Error) -> bool {
        matches!(
            rustls_error(e),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
            ))
        )
    }

    fn expired(ca: &FleetCa, envoy: &str) -> TlsMaterial {
        let now = SystemTime::now();
        let issued = ca
            .issue_between(envoy, &[], now - 48 * HOUR, now - 24 * HOUR)
            .unwrap();
        TlsMaterial::from_issued(&issued).unwrap()
    }

    #[tokio::test]
    async fn expired_certificates_are_refused_on_both_sides() {
        let ca = FleetCa::generate("test fleet").unwrap();
        let good = material(&ca, "alpha");
        let old = expired(&ca, "beta");
        assert!(old.not_after() < SystemTime::now());

        let (server, client) =
            exchange(good.server_config().unwrap(), old.client_config().unwrap()).await;
        let err = server.unwrap_err();
        assert!(is_expired(&err), "server: {err:?}");
        assert!(client.is_err());

        let (server, client) =
            exchange(old.server_config().unwrap(), good.client_config().unwrap()).await;
        let err = client.unwrap_err();
        assert!(is_expired(&err), "client: {err:?}");
        assert!(server.is_err());
    }

    #[test]
    fn issue_sets_name_hosts_defaults_and_validity() {
        let ca = FleetCa::generate("test fleet").unwrap();
        let hosts = vec![
            "192.0.2.7".to_owned(),
            "Alpha.Example".to_owned(),
            "::1".to_owned(),
        ];
        let before = SystemTime::now();
        let issued = ca.issue("alpha", &hosts, 10 * HOUR).unwrap();
        let m = TlsMaterial::from_issued(&issued).unwrap();
        assert_eq!(m.envoy(), "alpha");
        assert_eq!(
            m.hosts(),
            [
                "192.0.2.7",
                "alpha.example",
                "::1",
                "alpha",
                "localhost",
                "127.0.0.1"
            ]
        );
        assert_eq!(m.not_after(), issued.not_after);
        let left = m.not_after().duration_since(before).unwrap();
        assert!(
            left <= 10 * HOUR && left > 10 * HOUR - Duration::from_secs(60),
            "{left:?}"
        );
        assert!(m.is_from(&ca));
        assert!(!m.is_from(&FleetCa::generate("other").unwrap()));

        // Renewal: the same name and hosts give the same certificate names.
        let again =
            TlsMaterial::from_issued(&ca.issue(&m.envoy(), &m.hosts(), HOUR).unwrap()).unwrap();
        assert_eq!(again.hosts(), m.hosts());

        // A name that is not a DNS name is only the subject, not a SAN.
        let m = material(&ca, "my laptop");
        assert_eq!(m.envoy(), "my laptop");
        assert_eq!(m.hosts(), DEFAULT_HOSTS);
    }

    #[test]
    fn issue_refuses_bad_names_hosts_and_validity() {
        let ca = FleetCa::generate("test fleet").unwrap();
        for name in ["", "a/b", "..", "tab\there", &"x".repeat(65)] {
            let err = ca.issue(name, &[], HOUR).unwrap_err();
            assert!(
                matches!(err, TlsError::BadEnvoyName { .. }),
                "{name:?}: {err}"
            );
        }
        for host in [
            "",
            "-bad.example",
            "under_score",
            "a..b",
            "trailing.",
            "é.example",
        ] {
            let err = ca.issue("alpha", &[host.to_owned()], HOUR).unwrap_err();
            assert!(matches!(err, TlsError::BadHost { .. }), "{host:?}: {err}");
        }
        for validity in [Duration::ZERO, MAX_VALIDITY + HOUR] {
            let err = ca.issue("alpha", &[], validity).unwrap_err();
            assert!(matches!(err, TlsError::BadValidity(_)), "{err}");
        }
    }

    #[test]
    fn a_leaf_never_outlives_its_ca() {
        let ca = FleetCa::generate("test fleet").unwrap();
        let issued = ca.issue("alpha", &[], MAX_VALIDITY).unwrap();
        assert_eq!(issued.not_after, ca.not_after());
    }

    #[test]
    fn files_are_private_and_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let ca_dir = tmp.path().join("new/ca");
        let ca = FleetCa::generate("test fleet").unwrap();
        ca.write(&ca_dir).unwrap();
        assert_eq!(mode(&ca_dir), 0o700);
        assert_eq!(mode(&ca_dir.join(CA_CERT_FILE)), 0o600);
        assert_eq!(mode(&ca_dir.join(CA_KEY_FILE)), 0o600);
        let loaded = FleetCa::load(&ca_dir).unwrap();
        assert_eq!(loaded.certificate_pem(), ca.certificate_pem());

        // An existing folder with loose permissions is made private.
        let tls = tmp.path().join("tls");
        fs::create_dir(&tls).unwrap();
        fs::set_permissions(&tls, fs::Permissions::from_mode(0o755)).unwrap();
        let issued = loaded.issue("alpha", &[], HOUR).unwrap();
        issued.write(&tls).unwrap();
        assert_eq!(mode(&tls), 0o700);
        for f in [CA_CERT_FILE, CERT_FILE, KEY_FILE] {
            assert_eq!(mode(&tls.join(f)), 0o600, "{f}");
        }
        let m = TlsMaterial::load(&tls).unwrap();
        assert!(m.is_from(&ca));
        // Renewal overwrites; no temporary files are left behind.
        let renewed = loaded.issue("alpha", &m.hosts(), 2 * HOUR).unwrap();
        renewed.write(&tls).unwrap();
        assert!(TlsMaterial::load(&tls).unwrap().not_after() > m.not_after());
        let mut names: Vec<_> = fs::read_dir(&tls)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [CA_CERT_FILE, CERT_FILE, KEY_FILE]);
    }

    #[test]
    fn writing_a_ca_never_overwrites_a_ca_key() {
        let tmp = tempfile::tempdir().unwrap();
        let first = FleetCa::generate("first").unwrap();
        first.write(tmp.path()).unwrap();
        let key_before = fs::read(tmp.path().join(CA_KEY_FILE)).unwrap();
        let err = FleetCa::generate("second")
            .unwrap()
            .write(tmp.path())
            .unwrap_err();
        assert!(matches!(err, TlsError::CaExists { .. }), "{err}");
        assert!(err.to_string().contains("ca.key already exists"), "{err}");
        assert_eq!(fs::read(tmp.path().join(CA_KEY_FILE)).unwrap(), key_before);
        assert_eq!(
            FleetCa::load(tmp.path()).unwrap().certificate_pem(),
            first.certificate_pem()
        );

        // The no-clobber write itself refuses, even without the early check.
        let err = write_private(&tmp.path().join(CA_KEY_FILE), b"x", Existing::Keep).unwrap_err();
        assert!(matches!(err, TlsError::CaExists { .. }), "{err}");
        assert_eq!(fs::read(tmp.path().join(CA_KEY_FILE)).unwrap(), key_before);
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            2,
            "no temp file left"
        );
    }

    #[test]
    fn missing_files_say_what_to_run() {
        let tmp = tempfile::tempdir().unwrap();
        let err = TlsMaterial::load(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("no mTLS certificate in"), "{err}");
        assert!(err.contains("ca.pem is missing"), "{err}");
        assert!(
            err.contains("lockbox fleet issue --ca CA_DIR --envoy NAME --out"),
            "{err}"
        );

        let err = FleetCa::load(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("no fleet CA in"), "{err}");
        assert!(err.contains("lockbox fleet init --out"), "{err}");

        // With ca.pem present, the message names the next missing file.
        let ca = FleetCa::generate("test fleet").unwrap();
        fs::write(tmp.path().join(CA_CERT_FILE), ca.certificate_pem()).unwrap();
        let err = TlsMaterial::load(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("cert.pem is missing"), "{err}");
        let err = FleetCa::load(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("ca.key is missing"), "{err}");
    }

    #[test]
    fn damaged_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = FleetCa::generate("test fleet").unwrap();
        let issued = ca.issue("alpha", &[], HOUR).unwrap();
        let good = |dir: &Path| {
            issued.write(dir).unwrap();
        };
        let cases: [(&str, &[u8], &str); 6] = [
            (
                CERT_FILE,
                b"garbage",
                "cert.pem is not a valid PEM certificate",
            ),
            (
                KEY_FILE,
                b"garbage",
                "key.pem is not a valid PEM private key",
            ),
            (
                CA_CERT_FILE,
                b"garbage",
                "ca.pem is not a valid PEM certificate",
            ),
            (
                CERT_FILE,
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "cert.pem is not a valid PEM certificate",
            ),
            (
                KEY_FILE,
                &[0xff, 0xfe, 0x00],
                "key.pem is not a valid PEM file",
            ),
            (
                CA_CERT_FILE,
                &[b'A'; MAX_PEM_LEN as usize + 1],
                "ca.pem is larger than 65536 bytes",
            ),
        ];
        for (file, content, want) in cases {
            good(tmp.path());
            fs::write(tmp.path().join(file), content).unwrap();
            let err = TlsMaterial::load(tmp.path()).unwrap_err().to_string();
            assert!(err.contains(want), "{file}: {err}");
        }

        // A key from another issue: the pair does not match.
        good(tmp.path());
        let other = ca.issue("alpha", &[], HOUR).unwrap();
        fs::write(tmp.path().join(KEY_FILE), other.key_pem.as_bytes()).unwrap();
        let err = TlsMaterial::load(tmp.path()).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");

        // A certificate from another fleet next to our ca.pem.
        good(tmp.path());
        let foreign = FleetCa::generate("test fleet")
            .unwrap()
            .issue("alpha", &[], HOUR)
            .unwrap();
        fs::write(tmp.path().join(CERT_FILE), &foreign.cert_pem).unwrap();
        fs::write(tmp.path().join(KEY_FILE), foreign.key_pem.as_bytes()).unwrap();
        let err = TlsMaterial::load(tmp.path()).unwrap_err();
        assert!(matches!(err, TlsError::WrongCa { .. }), "{err}");

        // A leaf where the CA should be.
        good(tmp.path());
        fs::write(tmp.path().join(CA_CERT_FILE), &issued.cert_pem).unwrap();
        let err = TlsMaterial::load(tmp.path()).unwrap_err();
        assert!(matches!(err, TlsError::NotCa { .. }), "{err}");

        // A CA folder with a garbage key, and one with another CA's key.
        let ca_dir = tmp.path().join("ca");
        ca.write(&ca_dir).unwrap();
        fs::write(ca_dir.join(CA_KEY_FILE), "garbage").unwrap();
        let err = FleetCa::load(&ca_dir).unwrap_err().to_string();
        assert!(
            err.contains("ca.key is not a valid PEM private key"),
            "{err}"
        );
        let stranger = tmp.path().join("stranger");
        FleetCa::generate("stranger")
            .unwrap()
            .write(&stranger)
            .unwrap();
        fs::copy(stranger.join(CA_KEY_FILE), ca_dir.join(CA_KEY_FILE)).unwrap();
        let err = FleetCa::load(&ca_dir).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn debug_output_hides_keys() {
        let ca = FleetCa::generate("test fleet").unwrap();
        let issued = ca.issue("alpha", &[], HOUR).unwrap();
        let m = TlsMaterial::from_issued(&issued).unwrap();
        for text in [format!("{ca:?}"), format!("{issued:?}"), format!("{m:?}")] {
            assert!(!text.contains("PRIVATE KEY"), "{text}");
        }
    }
}
