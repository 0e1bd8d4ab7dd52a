//! Argon2id: turning a passphrase into a 256-bit key.
//!
//! [`KdfParams`] travels inside `identity.age`, so it is untrusted input:
//! [`KdfParams::validate`] caps every parameter before a single byte of Argon2
//! memory is allocated, and [`KdfParams::derive`] always validates first.
//!
//! Argon2 is used as Argon2id, version 0x13 (19), with a 32-byte output and
//! no secret or associated data.

use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Largest memory cost accepted from untrusted input: 4 GiB, in KiB.
pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
/// Largest iteration (time) cost accepted from untrusted input.
pub const MAX_ITERATIONS: u32 = 64;
/// Largest degree of parallelism (lanes) accepted from untrusted input.
pub const MAX_PARALLELISM: u32 = 16;
/// Shortest salt accepted (the Argon2 specification's minimum).
pub const MIN_SALT_LEN: usize = 8;

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory cost in KiB (Argon2 `m`).
    pub memory_kib: u32,
    /// Number of passes over the memory (Argon2 `t`).
    pub iterations: u32,
    /// Number of lanes (Argon2 `p`). The pure-Rust implementation computes
    /// lanes one after another, so more lanes buy no speed here.
    pub parallelism: u32,
}

impl KdfParams {
    /// Parameters for new identity files and for the circle key.
    ///
    /// 256 MiB, 3 passes, 1 lane: one derivation takes about 0.8 s in a
    /// release build on the 2-core reference machine (measurement and
    /// reasoning in `docs/formats-crypto.md`).
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 256 * 1024,
        iterations: 3,
        parallelism: 1,
    };

    /// Tiny parameters (64 KiB, 1 pass) **for tests only**: they offer no
    /// protection against guessing. Never write them into a real identity file.
    pub const TEST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    /// Checks the parameters against the caps for untrusted input:
    /// `1 <= parallelism <= 16`, `8 * parallelism <= memory_kib <= 4 GiB`,
    /// `1 <= iterations <= 64`.
    pub fn validate(&self) -> Result<()> {
        let Self {
            memory_kib,
            iterations,
            parallelism,
        } = *self;
        if !(1..=MAX_PARALLELISM).contains(&parallelism) {
            return Err(Error::KdfParams(format!(
                "parallelism {parallelism} is outside 1..={MAX_PARALLELISM}"
            )));
        }
        // Cannot overflow: parallelism <= 16 was checked above.
        let min_memory = 8 * parallelism;
        if !(min_memory..=MAX_MEMORY_KIB).contains(&memory_kib) {
            return Err(Error::KdfParams(format!(
                "memory {memory_kib} KiB is outside {min_memory}..={MAX_MEMORY_KIB} KiB"
            )));
        }
        if !(1..=MAX_ITERATIONS).contains(&iterations) {
            return Err(Error::KdfParams(format!(
                "iterations {iterations} is outside 1..={MAX_ITERATIONS}"
            )));
        }
        Ok(())
    }

    /// Derives a 32-byte key from `passphrase` and `salt` with Argon2id v19.
    ///
    /// Validates the parameters first, so hostile parameters fail fast
    /// instead of allocating. The salt must be at least [`MIN_SALT_LEN`] bytes.
    pub fn derive(&self, passphrase: &SecretString, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        self.validate()?;
        if salt.len() < MIN_SALT_LEN {
            return Err(Error::KdfParams(format!(
                "salt is {} bytes, at least {MIN_SALT_LEN} are required",
                salt.len()
            )));
        }
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| Error::KdfParams(e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; 32]);
        argon2
            .hash_password_into(passphrase.expose_secret().as_bytes(), salt, &mut key[..])
            .map_err(|e| Error::KdfParams(e.to_string()))?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn pass(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn default_and_test_params_are_valid() {
        KdfParams::DEFAULT.validate().unwrap();
        KdfParams::TEST.validate().unwrap();
    }

    #[test]
    fn caps_reject_hostile_params() {
        let ok = KdfParams::TEST;
        let bad = [
            KdfParams {
                parallelism: 0,
                ..ok
            },
            KdfParams {
                parallelism: 17,
                ..ok
            },
            KdfParams {
                iterations: 0,
                ..ok
            },
            KdfParams {
                iterations: 65,
                ..ok
            },
            KdfParams {
                memory_kib: 7,
                ..ok
            },
            KdfParams {
                memory_kib: 8 * 4 - 1,
                parallelism: 4,
                ..ok
            },
            KdfParams {
                memory_kib: MAX_MEMORY_KIB + 1,
                ..ok
            },
            KdfParams {
                memory_kib: u32::MAX,
                iterations: u32::MAX,
                parallelism: u32::MAX,
            },
        ];
        for p in bad {
            assert!(matches!(p.validate(), Err(Error::KdfParams(_))), "{p:?}");
            // derive must refuse without allocating anything.
            assert!(
                matches!(p.derive(&pass("x"), &[0; 16]), Err(Error::KdfParams(_))),
                "{p:?}"
            );
        }
        let edges = [
            KdfParams {
                memory_kib: 8,
                iterations: 1,
                parallelism: 1,
            },
            KdfParams {
                memory_kib: 128,
                iterations: 64,
                parallelism: 16,
            },
            KdfParams {
                memory_kib: MAX_MEMORY_KIB,
                iterations: 1,
                parallelism: 16,
            },
        ];
        for p in edges {
            p.validate().unwrap();
        }
    }

    #[test]
    fn derive_is_deterministic_and_input_sensitive() {
        let p = KdfParams::TEST;
        let salt = [7u8; 16];
        let a = p.derive(&pass("correct horse"), &salt).unwrap();
        let b = p.derive(&pass("correct horse"), &salt).unwrap();
        assert_eq!(*a, *b);
        let c = p.derive(&pass("correct horsf"), &salt).unwrap();
        assert_ne!(*a, *c);
        let d = p.derive(&pass("correct horse"), &[8u8; 16]).unwrap();
        assert_ne!(*a, *d);
        let e = KdfParams { iterations: 2, ..p }
            .derive(&pass("correct horse"), &salt)
            .unwrap();
        assert_ne!(*a, *e);
    }

    #[test]
    fn known_answer() {
        // A regression pin (value from argon2 0.5.3, which checks itself
        // against the RFC 9106 vectors): Argon2id, v0x13, 32-byte output, no
        // secret. A dependency change must not silently lock users out.
        let key = KdfParams::TEST
            .derive(&pass("password"), b"somesaltsomesalt")
            .unwrap();
        assert_eq!(
            hex::encode(*key),
            "e793d64ef75d58f503d4631b2b149f7f80127c5f3993d89b1c9b781e51d0b413"
        );
    }

    #[test]
    fn short_salt_is_rejected() {
        assert!(matches!(
            KdfParams::TEST.derive(&pass("x"), &[0; 7]),
            Err(Error::KdfParams(_))
        ));
    }

    /// Timing of one derivation with the candidates for [`KdfParams::DEFAULT`].
    /// Run in release:
    /// `cargo test --release -p lockbox-crypto -- --ignored --nocapture kdf_timing`
    #[test]
    #[ignore = "slow; a measurement, run in release with --ignored --nocapture"]
    fn kdf_timing() {
        let candidates = [
            KdfParams {
                memory_kib: 64 * 1024,
                iterations: 3,
                parallelism: 1,
            },
            KdfParams {
                memory_kib: 128 * 1024,
                iterations: 3,
                parallelism: 1,
            },
            KdfParams {
                memory_kib: 256 * 1024,
                iterations: 2,
                parallelism: 1,
            },
            KdfParams {
                memory_kib: 256 * 1024,
                iterations: 3,
                parallelism: 1,
            },
            KdfParams {
                memory_kib: 256 * 1024,
                iterations: 3,
                parallelism: 4,
            },
            KdfParams {
                memory_kib: 512 * 1024,
                iterations: 2,
                parallelism: 1,
            },
            KdfParams::DEFAULT,
        ];
        // A debug build is an order of magnitude slower: time DEFAULT once.
        let (candidates, rounds) = if cfg!(debug_assertions) {
            (&candidates[candidates.len() - 1..], 1)
        } else {
            (&candidates[..], 3)
        };
        for &p in candidates {
            let mut best = f64::MAX;
            for _ in 0..rounds {
                let start = Instant::now();
                p.derive(&pass("timing"), &[1; 16]).unwrap();
                best = best.min(start.elapsed().as_secs_f64());
            }
            println!(
                "m={} MiB t={} p={}: best of {rounds} = {:.3} s{}",
                p.memory_kib / 1024,
                p.iterations,
                p.parallelism,
                best,
                if p == KdfParams::DEFAULT {
                    "  <- DEFAULT"
                } else {
                    ""
                }
            );
        }
    }
}
