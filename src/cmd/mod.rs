//! One module per group of commands; each is a thin layer over the agent
//! (via [`crate::client`]) or over the local state (via [`crate::envoy`]).

pub mod agentctl;
pub mod circle;
pub mod demo;
pub mod files;
pub mod fleet;
pub mod init;
pub mod report;
pub mod service;
