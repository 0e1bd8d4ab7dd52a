//! A headless Chromium for the status page's tests, driven over the
//! DevTools protocol on a pipe (`--remote-debugging-pipe`: commands go in on
//! its fd 3, answers and events come out on its fd 4, each a JSON message
//! ended by a NUL), so no port is opened and no WebSocket client is needed.
//!
//! One [`Browser`] holds one tab. It is killed when dropped, whatever the
//! test did.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The Chromium binary (Debian's `chromium`), if installed.
pub fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A headless Chromium with one tab.
pub struct Browser {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    next: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Start Chromium and open `url` in its tab, `width` × `height` pixels.
    pub fn open(url: &str, width: u32, height: u32) -> Browser {
        let bin = chromium().expect("chromium is installed");
        let profile = tempfile::tempdir().expect("a profile folder");
        // The shell moves its stdin and stdout (our two pipes) to fds 3
        // and 4, where Chromium's pipe wants them, then becomes Chromium.
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"exec 3<&0 4>&1 </dev/null >/dev/null; exec "$0" "$@""#)
            .arg(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c.spawn().expect("chromium starts");
        let to = child.stdin.take().expect("its fd 3");
        let from = BufReader::new(child.stdout.take().expect("its fd 4"));
        let mut b = Browser {
            child,
            to,
            from,
            next: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target = target["targetId"].as_str().expect("a target").to_string();
        let s = b.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        b.session = s["sessionId"].as_str().expect("a session").to_string();
        b.send(
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600
            }),
        );
        b.send("Page.enable", json!({}));
        b.send("Page.navigate", json!({ "url": url }));
        b
    }

    /// Send `method` to the browser (`session` none) or the tab, and
    /// return its result; panics on an error answer.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// [`Browser::call`], with an error answer returned.
    fn try_call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("JSON");
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .expect("chromium takes the command");
        loop {
            let mut buf = Vec::new();
            let n = self.from.read_until(0, &mut buf).expect("chromium answers");
            assert!(n > 0, "chromium closed its pipe during {method}");
            buf.pop();
            let v: Value = serde_json::from_slice(&buf).expect("a JSON message");
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    return Err(e.clone());
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// [`Browser::call`] in the tab.
    pub fn send(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        self.call(Some(&s), method, params)
    }

    /// The value of the JavaScript expression `js` in the page (promises
    /// awaited); `Null` when it threw, or when the page had no context to
    /// run it in (it was being loaded).
    pub fn eval(&mut self, js: &str) -> Value {
        let s = self.session.clone();
        let r = self.try_call(
            Some(&s),
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
        );
        match r {
            Ok(r) if r.get("exceptionDetails").is_none() => r["result"]["value"].clone(),
            _ => Value::Null,
        }
    }

    /// Wait until `js` is `true` in the page; the last value of `show` in
    /// the panic when it never is.
    pub fn wait_for(&mut self, what: &str, limit: Duration, js: &str, show: &str) {
        let start = Instant::now();
        loop {
            if self.eval(js) == json!(true) {
                return;
            }
            if start.elapsed() > limit {
                let seen = self.eval(show);
                panic!("{what}: not within {limit:?}; the page shows {seen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the page as it shows now, written to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        use base64::Engine as _;
        // Right after a swap of the page's content the tab may have no
        // layout yet ("0 width"): it is asked again until it has.
        let s = self.session.clone();
        let mut tries = 0;
        let r = loop {
            match self.try_call(
                Some(&s),
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            ) {
                Ok(r) => break r,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("Page.captureScreenshot: {e}"),
            }
        };
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("image data"))
            .expect("base64");
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
