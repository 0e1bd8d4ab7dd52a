//! `lockbox fleet init|issue` and `lockbox renew-cert` (work in progress).
