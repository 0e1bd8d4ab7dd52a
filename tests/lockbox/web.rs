//! The status page (`lockbox web`; `docs/status-page.md`) on real agents:
//! who may read it (the token, its cookie, `Host`, `Origin`, the CSRF
//! header, loopback only), that it never serves a file's content, and that
//! it and `status --json` show a circle as it is: each envoy reporting or
//! not, locked or not, and which envoy holds which file.

use std::process::Command;
use std::time::Duration;

use crate::harness::fs;
use crate::harness::*;
use crate::{require, require_fuse};

/// One answer of curl: status, headers (lower-cased names), body.
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

/// `curl -i` with `args`; `None` when nothing answered.
fn curl(args: &[&str]) -> Option<Answer> {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    Some(Answer {
        status,
        headers: head.to_lowercase(),
        body: body.to_string(),
    })
}

/// The page's address as `lockbox web --no-open` prints it: (base, token).
fn web_url(e: &Envoy) -> (String, String) {
    let out = e.ok(&["web", "--no-open"]);
    let url = out.trim();
    let (base, token) = url
        .split_once("/?token=")
        .unwrap_or_else(|| panic!("no token in {url:?}"));
    assert!(base.starts_with("http://127.0.0.1:"), "{url}");
    (base.to_string(), token.to_string())
}

/// The cookie a browser gets for `token`.
fn cookie(token: &str) -> String {
    format!("lockbox_web={token}")
}

/// The CSRF value the page carries.
fn csrf_of(page: &str) -> String {
    let at = page
        .find(r#"name="lockbox-csrf" content=""#)
        .expect("the page has its CSRF value")
        + r#"name="lockbox-csrf" content=""#.len();
    page[at..].split('"').next().unwrap().to_string()
}

#[test]
fn only_the_token_on_loopback_reads_the_page_and_no_content_is_served() {
    require_fuse!();
    require!(
        Command::new("curl").arg("--version").output().is_ok(),
        "curl is not installed"
    );
    let m = MountedEnvoy::unlocked();
    let marker = "PLAINTEXT-MARKER-5f1e0c";
    fs::write(m.at("secret.txt"), marker).expect("write");
    m.e.settle();
    let (base, token) = web_url(&m.e);
    // A second call gives the same page (one per agent) with a fresh
    // token; both are valid (a page opened before goes on working).
    let (again, second) = web_url(&m.e);
    assert_eq!(again, base);
    assert_ne!(second, token, "a fresh token each time");
    for t in [&token, &second] {
        let a = curl(&[
            "-H",
            &format!("Cookie: lockbox_web={t}"),
            &format!("{base}/status.json"),
        ])
        .unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let port = base.rsplit(':').next().unwrap().to_string();
    let cookie = cookie(&token);
    let mut bodies = Vec::new();

    // No token, a wrong one, a cookie with a wrong one: 401.
    let a = curl(&[&format!("{base}/")]).expect("answers");
    assert_eq!(a.status, 401, "{}", a.body);
    let a = curl(&[&format!("{base}/status.json?token={}", "0".repeat(64))]).unwrap();
    assert_eq!(a.status, 401);
    let a = curl(&[
        "-H",
        &format!("Cookie: lockbox_web={}", "f".repeat(64)),
        &format!("{base}/status.json"),
    ])
    .unwrap();
    assert_eq!(a.status, 401);

    // The token in the address: a cookie for it, and a redirect without it.
    let a = curl(&[&format!("{base}/?token={token}")]).unwrap();
    assert_eq!(a.status, 303, "{}", a.headers);
    assert!(a.headers.contains("location: /\r\n"), "{}", a.headers);
    let set = a
        .headers
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .expect("a cookie is set");
    assert!(
        set.contains("httponly") && set.contains("samesite=strict") && set.contains("path=/"),
        "{set}"
    );

    // With the cookie: the page, with its protective headers.
    let page = curl(&["-H", &format!("Cookie: {cookie}"), &format!("{base}/")]).unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    for h in [
        "content-security-policy: default-src 'self'",
        "x-frame-options: deny",
        "cache-control: no-store",
        "referrer-policy: no-referrer",
    ] {
        assert!(page.headers.contains(h), "{h} in {}", page.headers);
    }
    assert!(page.body.contains("secret.txt"), "the file is listed");
    let csrf = csrf_of(&page.body);
    bodies.push(page.body);

    // Another Host (DNS rebinding) or Origin: refused even with the cookie.
    for (h, v) in [
        ("Host", format!("evil.example:{port}")),
        ("Host", "127.0.0.1:1".to_string()),
        ("Origin", format!("http://evil.example:{port}")),
    ] {
        let a = curl(&[
            "-H",
            &format!("Cookie: {cookie}"),
            "-H",
            &format!("{h}: {v}"),
            &format!("{base}/status.json"),
        ])
        .unwrap();
        assert_eq!(a.status, 403, "{h}: {v}: {}", a.body);
    }

    // A POST needs the CSRF header besides the cookie.
    let post = |extra: &[&str]| {
        let mut args = vec!["-X", "POST", "-H"];
        let c = format!("Cookie: {cookie}");
        args.push(&c);
        args.extend_from_slice(extra);
        let url = format!("{base}/reencrypt");
        args.push(&url);
        curl(&args).unwrap()
    };
    assert_eq!(post(&[]).status, 403);
    assert_eq!(
        post(&["-H", &format!("X-Lockbox-CSRF: {token}")]).status,
        403
    );
    let a = post(&["-H", &format!("X-Lockbox-CSRF: {csrf}")]);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("re-encrypted"), "{}", a.body);

    // Every route, and what each gives.
    for path in [
        "/status.json",
        "/main",
        "/app.js",
        "/app.css",
        "/?only=conflicts",
    ] {
        let a = curl(&["-H", &format!("Cookie: {cookie}"), &format!("{base}{path}")]).unwrap();
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        bodies.push(a.body);
    }
    let st: serde_json::Value = serde_json::from_str(&bodies[1]).expect("status.json is JSON");
    assert_eq!(st["envoys"][0]["this"], true, "{st}");
    assert_eq!(st["envoys"][0]["unlocked"], true, "{st}");
    // The event stream stays open (curl gives up at --max-time), and on
    // an idle envoy it says "changed" once, at its start: the seconds
    // since peers were heard, or the idle time left, move no event.
    let ev = Command::new("curl")
        .args(["-s", "--max-time", "3", "-H", &format!("Cookie: {cookie}")])
        .arg(format!("{base}/events"))
        .output()
        .expect("curl");
    assert_eq!(ev.status.code(), Some(28), "the event stream ended");
    let events = String::from_utf8_lossy(&ev.stdout);
    assert_eq!(events.matches("data: ").count(), 1, "{events}");
    for b in &bodies {
        assert!(!b.contains(marker), "a response holds the file's content");
    }

    // Loopback only: no other address of this host answers on the port.
    let addrs = Command::new("hostname")
        .arg("-I")
        .output()
        .expect("hostname -I");
    for ip in String::from_utf8_lossy(&addrs.stdout).split_whitespace() {
        if ip.contains(':') {
            continue;
        }
        let a = curl(&["--connect-timeout", "2", &format!("http://{ip}:{port}/")]);
        assert!(a.is_none(), "{ip}:{port} answered");
    }
}

/// With a desktop, `lockbox web` opens the page through `xdg-open`, which
/// is given a 0600 file that leads to the address, never the token itself
/// (every user can read a process's arguments); without one, or with
/// `--no-open`, it only prints the address.
#[test]
fn web_opens_the_browser_without_the_token_in_any_arguments() {
    require_fuse!();
    let m = MountedEnvoy::unlocked();
    let bin = tempfile::tempdir().expect("tmp");
    let said = bin.path().join("said");
    let fake = bin.path().join("xdg-open");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nprintf '%s\\n' \"$@\" >> {}\n", said.display()),
    )
    .expect("a fake xdg-open");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let web = |extra: &[&str], display: Option<&str>| {
        let mut args = vec!["web"];
        args.extend_from_slice(extra);
        let mut c = m.e.cmd(&args);
        c.env("PATH", &path)
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
        if let Some(d) = display {
            c.env("DISPLAY", d);
        }
        let out = c.output().expect("lockbox web");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let out = web(&[], Some(":0"));
    assert!(out.contains("(opened in your browser)"), "{out}");
    let url = out.split_whitespace().next().unwrap().to_string();
    let token = url.split_once("?token=").expect("a token").1.to_string();
    let args = std::fs::read_to_string(&said).expect("xdg-open ran");
    assert!(
        !args.contains(&token),
        "the token is in xdg-open's arguments: {args}"
    );
    let file = std::path::PathBuf::from(args.trim());
    assert_eq!(mode(&file) & 0o777, 0o600, "{}", file.display());
    let page = std::fs::read_to_string(&file).expect("the redirect file");
    assert!(page.contains(&url.replace('&', "&amp;")), "{page}");

    // No desktop, or --no-open: the address only, and no browser.
    std::fs::remove_file(&said).expect("rm");
    let base = url.split_once("/?token=").unwrap().0;
    for (extra, display) in [(&[][..], None), (&["--no-open"][..], Some(":0"))] {
        let out = web(extra, display);
        assert!(out.trim().starts_with(&format!("{base}/?token=")), "{out}");
        assert!(!out.contains("opened"), "{out}");
    }
    assert!(!said.exists(), "a browser was opened");
}

/// Whether `holders` (a presence row's) says `current` for every envoy in
/// `envoys`.
fn held_by(row: &serde_json::Value, envoys: &[&str]) -> bool {
    envoys.iter().all(|e| row["holders"][e] == "current")
}

fn row<'a>(st: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    st["presence"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
}

fn envoy<'a>(st: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    st["envoys"].as_array()?.iter().find(|r| r["envoy"] == name)
}

#[test]
fn the_circle_shows_who_holds_what_who_is_locked_and_who_reports() {
    require_fuse!();
    let c = Circle::loopback(&ALL);
    let bravo = c.node("bravo");
    fs::write(c.node("alpha").at("ssh-key"), b"key material").expect("write");
    c.wait(
        "every envoy holds ssh-key, as bravo sees it",
        CONVERGE,
        || {
            let st = bravo.m.e.status_json();
            row(&st, "ssh-key").is_some_and(|r| held_by(r, &ALL) && r["everywhere"] == true)
        },
    );
    let st = bravo.m.e.status_json();
    let r = row(&st, "ssh-key").unwrap();
    assert_eq!(r["author"], "alpha", "{r}");
    assert_eq!(r["size"], 12, "{r}");
    for n in ALL {
        let e = envoy(&st, n).unwrap_or_else(|| panic!("{n} in {st}"));
        assert_eq!(e["state"], "reporting", "{e}");
        assert_eq!(e["unlocked"], true, "{e}");
    }

    // charlie locks: bravo learns it at its next hello.
    c.node("charlie").m.e.ok(&["lock"]);
    c.wait("bravo sees charlie locked", CONVERGE, || {
        envoy(&bravo.m.e.status_json(), "charlie").is_some_and(|e| e["unlocked"] == false)
    });

    // The page shows the same.
    let (base, token) = web_url(&bravo.m.e);
    let page = curl(&[
        "-H",
        &format!("Cookie: {}", cookie(&token)),
        &format!("{base}/"),
    ])
    .unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains(r#"<td class="p current" data-envoy="charlie">current</td>"#),
        "{}",
        page.body
    );

    // charlie stops: stale after stale_after (3 s), then not reporting.
    c.node("charlie").m.e.ok(&["stop"]);
    c.wait("bravo calls charlie stale", Duration::from_secs(20), || {
        envoy(&bravo.m.e.status_json(), "charlie").is_some_and(|e| e["state"] == "stale")
    });
    c.wait(
        "bravo calls charlie not reporting",
        Duration::from_secs(30),
        || {
            envoy(&bravo.m.e.status_json(), "charlie")
                .is_some_and(|e| e["state"] == "not reporting")
        },
    );

    // A delete shows, with who made it.
    fs::remove_file(c.node("alpha").at("ssh-key")).expect("rm");
    c.wait("bravo lists alpha's delete", CONVERGE, || {
        let st = bravo.m.e.status_json();
        st["deletes"].as_array().is_some_and(|d| {
            d.iter()
                .any(|x| x["name"] == "ssh-key" && x["by"] == "alpha")
        })
    });
}

/// JavaScript: the text of the presence cell of file `f` for envoy `e`.
fn cell(f: &str, e: &str) -> String {
    format!(
        "(document.querySelector('#presence tr[data-name=\"{f}\"] td[data-envoy=\"{e}\"]') \
         || {{}}).textContent"
    )
}

/// JavaScript: whether every envoy's cell of file `f` says `current`.
fn complete(f: &str) -> String {
    ALL.iter()
        .map(|e| format!("{} === 'current'", cell(f, e)))
        .collect::<Vec<_>>()
        .join(" && ")
}

/// JavaScript: the data-state of envoy `e`'s row.
fn envoy_state(e: &str) -> String {
    format!("(document.querySelector('#envoys tr[data-envoy=\"{e}\"]') || {{dataset: {{}}}}).dataset.state")
}

/// The page in a real browser (headless Chromium) on bravo of a circle of
/// three, as the user sees it: signed in by the printed address, the
/// matrix right, and every change arriving without a reload (a value set
/// in the page at the start is still there at the end): a file written
/// on alpha, a lock on another envoy and on this one, a delete and its
/// resurrect by the page's button, charlie going stale then not
/// reporting, and the drift after charlie is evicted, whose button says
/// what a locked session needs, and which clears once bravo is unlocked.
/// It also fits a phone-sized window.
#[test]
fn the_page_in_a_browser_follows_the_circle_live() {
    use crate::harness::browser::{chromium, Browser};
    require_fuse!();
    require!(
        chromium().is_some(),
        "chromium is not installed (apt-get install chromium)"
    );
    let c = Circle::loopback(&ALL);
    let bravo = c.node("bravo");
    for (on, f) in [("alpha", "from-alpha"), ("charlie", "from-charlie")] {
        fs::write(c.node(on).at(f), format!("written on {on}")).expect("write");
    }
    let (base, token) = web_url(&bravo.m.e);
    let mut b = Browser::open(&format!("{base}/?token={token}"), 1100, 900);
    let limit = Duration::from_secs(30);
    b.wait_for(
        "the page loads with its cookie, the token gone from the address",
        limit,
        "location.pathname === '/' && location.search === '' \
         && !!document.querySelector('#presence')",
        "location.href + ' ' + document.title",
    );
    b.eval("window.kept = 'no reload'");
    let kept = "window.kept === 'no reload'";
    for f in ["from-alpha", "from-charlie"] {
        b.wait_for(
            &format!("{f} on every envoy"),
            CONVERGE,
            &complete(f),
            "document.querySelector('#presence').innerText",
        );
    }
    let shot = tempfile::tempdir().expect("tmp");
    let png = match std::env::var_os("LOCKBOX_WRITE_SCREENSHOT") {
        Some(_) => {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png")
        }
        None => shot.path().join("status-page.png"),
    };
    b.screenshot(&png);
    let bytes = std::fs::read(&png).expect("the screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{} bytes",
        bytes.len()
    );

    // A file written on alpha: its row turns complete on bravo's page.
    fs::write(c.node("alpha").at("new-key"), b"fresh").expect("write");
    b.wait_for(
        "new-key complete on bravo's page, live",
        CONVERGE,
        &format!("{} && {kept}", complete("new-key")),
        "document.querySelector('#presence').innerText",
    );

    // alpha locks: its session cell says so; bravo locks: the page's own
    // badge says so.
    c.node("alpha").m.e.ok(&["lock"]);
    b.wait_for(
        "alpha shows locked",
        CONVERGE,
        "document.querySelector('#envoys tr[data-envoy=\"alpha\"] td.session').textContent === 'locked'",
        "document.querySelector('#envoys').innerText",
    );
    bravo.m.e.ok(&["lock"]);
    b.wait_for(
        "bravo's page shows it locked",
        limit,
        &format!("document.querySelector('#session').textContent === 'locked' && {kept}"),
        "document.querySelector('header').innerText",
    );

    // A delete on alpha shows on bravo's page; its button lifts it.
    c.node("alpha").m.e.ok(&["delete", "from-charlie"]);
    let delete_row = "document.querySelector('#deletes tr[data-name=\"from-charlie\"]')";
    b.wait_for(
        "the delete is listed",
        CONVERGE,
        &format!("!!{delete_row}"),
        "document.querySelector('#deletes').innerText",
    );
    b.eval(&format!(
        "{delete_row}.querySelector('button').click(); true"
    ));
    b.wait_for(
        "the resurrect went through and the delete is gone",
        limit,
        &format!(
            "document.querySelector('#said').textContent.startsWith('resurrected') \
             && !{delete_row} && {kept}"
        ),
        "document.querySelector('#said').textContent + ' | ' + document.querySelector('#deletes').innerText",
    );

    // charlie stops: stale, then not reporting.
    c.node("charlie").m.e.ok(&["stop"]);
    b.wait_for(
        "charlie stale",
        Duration::from_secs(20),
        &format!("{} === 'stale'", envoy_state("charlie")),
        "document.querySelector('#envoys').innerText",
    );
    b.wait_for(
        "charlie not reporting",
        Duration::from_secs(30),
        &format!("{} === 'not reporting' && {kept}", envoy_state("charlie")),
        "document.querySelector('#envoys').innerText",
    );

    // charlie is evicted: bravo, locked, cannot re-seal, so the files
    // drift; the button says it needs the session unlocked; the unlock
    // re-seals them and the drift clears.
    let pass = text(&c.node("alpha").m.e.pass);
    c.node("alpha")
        .m
        .e
        .ok(&["evict", "charlie", "--passphrase-file", &pass]);
    b.wait_for(
        "drift shows, naming the files",
        CONVERGE,
        "!!document.querySelector('#drift button') \
         && document.querySelector('#drifted').innerText.includes('from-alpha')",
        "document.querySelector('#drift').innerText",
    );
    b.eval("document.querySelector('#drift button').click(); true");
    b.wait_for(
        "the button says the session is locked",
        limit,
        "document.querySelector('#said').textContent.startsWith('locked')",
        "document.querySelector('#said').textContent",
    );
    bravo.m.e.unlock();
    b.wait_for(
        "the drift clears once bravo is unlocked",
        CONVERGE,
        &format!(
            "!document.querySelector('#drift button') \
             && document.querySelector('#session').textContent === 'unlocked' && {kept}"
        ),
        "document.querySelector('#drift').innerText",
    );
    drop(b);

    // A phone-sized window: nothing sticks out sideways but the matrix,
    // which scrolls in its own box.
    let mut phone = Browser::open(&format!("{base}/?token={token}"), 390, 800);
    phone.wait_for(
        "the page loads on a phone",
        limit,
        "!!document.querySelector('#presence')",
        "location.href",
    );
    let wide = phone.eval("document.documentElement.scrollWidth");
    assert!(
        wide.as_u64().is_some_and(|w| w <= 390),
        "the page is {wide} px wide"
    );
}
