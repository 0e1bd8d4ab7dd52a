//! The command line tells the truth about the state it leaves: `lock` and
//! `stop` succeed when what they ask for already holds; `decrypt` writes to
//! stdout without `-o` (refusing a terminal unless forced); a failed `-o`
//! names the user's path; `encrypt` refuses an oversize file before reading
//! it.

use std::os::unix::net::UnixListener;

use crate::harness::fs;
use crate::harness::*;
use crate::require_fuse;

#[test]
fn lock_and_stop_with_no_agent_say_so_and_succeed() {
    require_fuse!();
    let e = Envoy::new();
    // Not even initialised: nothing runs, so both already hold.
    assert_eq!(
        e.ok(&["lock"]).trim(),
        "already locked: no agent is running"
    );
    assert_eq!(
        e.ok(&["stop"]).trim(),
        "already stopped: no agent is running"
    );
    e.init("alpha");
    e.unlock();
    assert_eq!(e.ok(&["lock"]).trim(), "locked");
    assert_eq!(e.ok(&["stop"]).trim(), "agent stopped");
    assert_eq!(e.agent_pid(), None);
    assert_eq!(
        e.ok(&["stop"]).trim(),
        "already stopped: no agent is running"
    );
    assert_eq!(
        e.ok(&["lock"]).trim(),
        "already locked: no agent is running"
    );
    // A dead agent's socket (nobody listening) is no agent either.
    drop(UnixListener::bind(e.state().join("agent.sock")).unwrap());
    assert_eq!(
        e.ok(&["stop"]).trim(),
        "already stopped: no agent is running"
    );
    assert_eq!(
        e.ok(&["lock"]).trim(),
        "already locked: no agent is running"
    );
    // A socket that is not this user's agent is still an error, not "stopped".
    fs::remove_file(e.state().join("agent.sock")).unwrap();
    fs::write(e.state().join("agent.sock"), b"not a socket").unwrap();
    let err = e.fails(1, &["stop"]);
    assert!(err.contains("not a socket"), "{err}");
    let err = e.fails(1, &["lock"]);
    assert!(err.contains("not a socket"), "{err}");
    fs::remove_file(e.state().join("agent.sock")).unwrap();
}
