//! Multicast discovery sockets (work in progress).
