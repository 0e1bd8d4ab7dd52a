//! Fleet CA and mutual-TLS configuration (work in progress).
