//! Who may talk to the status page: the rules every request passes before
//! a handler sees it, kept apart from the server so they are tested without
//! a socket (see `docs/status-page.md`, "Serving it safely").
//!
//! - `Host` must name the page's own loopback address (`127.0.0.1:PORT` or
//!   `localhost:PORT`), and `Origin`, when a browser sends one, the same:
//!   a page on another site that rebinds its DNS name to 127.0.0.1 sends
//!   its own name, and is refused.
//! - Each `lockbox web` mints a fresh token ([`Gate::mint`]) and prints it
//!   once, in the URL; the answer moves it into a cookie (`HttpOnly`,
//!   `SameSite=Strict`) and redirects to the same path without it, so it
//!   leaves the address bar and history. Every other request must carry
//!   the cookie. The last [`TOKENS_KEPT`] tokens stay valid, so a page
//!   opened before goes on working; all end with the agent.
//! - A request that changes something is a POST carrying the CSRF value
//!   of the page in a header, besides the cookie.

/// The cookie that carries the token.
pub const COOKIE: &str = "lockbox_web";
/// The header that carries the CSRF value on a POST.
pub const CSRF_HEADER: &str = "x-lockbox-csrf";

/// Tokens that stay valid at once: the newest ones minted.
pub const TOKENS_KEPT: usize = 16;

/// The secrets of one run of the page: the tokens minted so far (the
/// newest [`TOKENS_KEPT`]) and the CSRF value, new at each agent start.
pub struct Gate {
    port: u16,
    tokens: std::sync::Mutex<std::collections::VecDeque<String>>,
    csrf: String,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// What a request is, as far as the gate looks.
#[derive(Debug, Default)]
pub struct Ask<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The query, if any.
    pub query: Option<&'a str>,
    /// The `Host` header.
    pub host: Option<&'a str>,
    /// The `Origin` header.
    pub origin: Option<&'a str>,
    /// Every `Cookie` header.
    pub cookies: Vec<&'a str>,
    /// The CSRF header.
    pub csrf: Option<&'a str>,
}

/// What the gate decides.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on to the handler.
    Pass,
    /// The token in the URL is right: set the cookie, redirect to `path`.
    SetCookie {
        /// Where to go (the same path, without the token).
        path: String,
        /// The token, for the cookie.
        token: String,
    },
    /// 401: no token or a wrong one.
    Unauthorized,
    /// 403, and why.
    Forbidden(&'static str),
}

/// Compare two strings in time that depends on their lengths only.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// 32 random bytes, in hex.
fn random_hex() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Gate {
    /// A gate for a page on `port`, with a fresh CSRF value and no token
    /// yet ([`Gate::mint`]).
    pub fn new(port: u16) -> Gate {
        Gate {
            port,
            tokens: std::sync::Mutex::new(std::collections::VecDeque::new()),
            csrf: random_hex(),
        }
    }

    /// A fresh token (for the URL `lockbox web` prints); the oldest of
    /// more than [`TOKENS_KEPT`] stops being valid.
    pub fn mint(&self) -> String {
        let t = random_hex();
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.push_back(t.clone());
        while tokens.len() > TOKENS_KEPT {
            tokens.pop_front();
        }
        t
    }

    /// Whether `t` is a valid token (compared with each, in constant time).
    fn valid(&self, t: &str) -> bool {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.iter().fold(false, |ok, known| same(t, known) | ok)
    }

    /// The CSRF value (for the page, which sends it back on its POSTs).
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// The value of `Set-Cookie` that hands the browser `token`.
    pub fn set_cookie(token: &str) -> String {
        format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/")
    }

    fn own_host(&self, host: &str) -> bool {
        host == format!("127.0.0.1:{}", self.port) || host == format!("localhost:{}", self.port)
    }

    fn token_in_query(query: &str) -> Option<&str> {
        query.split('&').find_map(|kv| kv.strip_prefix("token="))
    }

    fn token_in_cookies<'a>(cookies: &[&'a str]) -> Option<&'a str> {
        cookies
            .iter()
            .flat_map(|h| h.split(';'))
            .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
    }

    /// Decide on `ask`.
    pub fn check(&self, ask: &Ask) -> Verdict {
        match ask.host {
            Some(h) if self.own_host(h) => {}
            _ => return Verdict::Forbidden("wrong Host: open the address lockbox web printed"),
        }
        if let Some(o) = ask.origin {
            let own = o.strip_prefix("http://").is_some_and(|h| self.own_host(h));
            if !own {
                return Verdict::Forbidden("a request from another site");
            }
        }
        if let Some(t) = ask.query.and_then(Self::token_in_query) {
            if ask.method != "GET" {
                return Verdict::Forbidden("the token goes in a cookie, not in a POST's address");
            }
            return if self.valid(t) {
                Verdict::SetCookie {
                    path: ask.path.to_string(),
                    token: t.to_string(),
                }
            } else {
                Verdict::Unauthorized
            };
        }
        match Self::token_in_cookies(&ask.cookies) {
            Some(t) if self.valid(t) => {}
            _ => return Verdict::Unauthorized,
        }
        match ask.method {
            "GET" | "HEAD" => Verdict::Pass,
            "POST" => match ask.csrf {
                Some(c) if same(c, &self.csrf) => Verdict::Pass,
                _ => Verdict::Forbidden("missing or wrong CSRF header: use the page's buttons"),
            },
            _ => Verdict::Forbidden("method not allowed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gate with one token minted, and that token.
    fn gate() -> (Gate, String) {
        let g = Gate::new(4321);
        let t = g.mint();
        (g, t)
    }

    fn get<'a>(g: &'a Gate, cookie: &'a str) -> Ask<'a> {
        let _ = g;
        Ask {
            method: "GET",
            path: "/",
            host: Some("127.0.0.1:4321"),
            cookies: vec![cookie],
            ..Ask::default()
        }
    }

    #[test]
    fn the_token_in_the_url_becomes_a_cookie_once() {
        let (g, token) = gate();
        let q = format!("token={}", token.as_str());
        let ask = Ask {
            method: "GET",
            path: "/",
            query: Some(&q),
            host: Some("localhost:4321"),
            ..Ask::default()
        };
        assert_eq!(
            g.check(&ask),
            Verdict::SetCookie {
                path: "/".into(),
                token: token.clone()
            }
        );
        let c = Gate::set_cookie(&token);
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
        let wrong = format!("token={}", "0".repeat(64));
        assert_eq!(
            g.check(&Ask {
                query: Some(&wrong),
                ..ask
            }),
            Verdict::Unauthorized
        );
    }

    #[test]
    fn without_the_cookie_nothing_passes() {
        let (g, token) = gate();
        let cookie = format!("a=b; {COOKIE}={}", token.as_str());
        assert_eq!(g.check(&get(&g, &cookie)), Verdict::Pass);
        assert_eq!(g.check(&get(&g, "a=b")), Verdict::Unauthorized);
        let other = format!("{COOKIE}={}", gate().1);
        assert_eq!(g.check(&get(&g, &other)), Verdict::Unauthorized);
        // A prefix of the token is no token.
        let short = format!("{COOKIE}={}", &token.as_str()[..10]);
        assert_eq!(g.check(&get(&g, &short)), Verdict::Unauthorized);
    }

    #[test]
    fn another_host_or_origin_is_refused_even_with_the_cookie() {
        let (g, token) = gate();
        let cookie = format!("{COOKIE}={}", token.as_str());
        for host in [
            None,
            Some("evil.example:4321"),
            Some("127.0.0.1:4322"),
            Some("127.0.0.1"),
        ] {
            let ask = Ask {
                host,
                ..get(&g, &cookie)
            };
            assert!(matches!(g.check(&ask), Verdict::Forbidden(_)), "{host:?}");
        }
        for origin in ["http://evil.example:4321", "https://127.0.0.1:4321", "null"] {
            let ask = Ask {
                origin: Some(origin),
                ..get(&g, &cookie)
            };
            assert!(matches!(g.check(&ask), Verdict::Forbidden(_)), "{origin}");
        }
        let ask = Ask {
            origin: Some("http://localhost:4321"),
            ..get(&g, &cookie)
        };
        assert_eq!(g.check(&ask), Verdict::Pass);
    }

    #[test]
    fn a_post_needs_the_csrf_header() {
        let (g, token) = gate();
        let cookie = format!("{COOKIE}={}", token.as_str());
        let post = Ask {
            method: "POST",
            path: "/reencrypt",
            ..get(&g, &cookie)
        };
        assert!(matches!(g.check(&post), Verdict::Forbidden(_)));
        let wrong = Ask {
            csrf: Some(&token),
            ..post
        };
        assert!(matches!(g.check(&wrong), Verdict::Forbidden(_)));
        let right = Ask {
            csrf: Some(g.csrf()),
            ..wrong
        };
        assert_eq!(g.check(&right), Verdict::Pass);
        let other = Ask {
            method: "DELETE",
            ..right
        };
        assert!(matches!(g.check(&other), Verdict::Forbidden(_)));
    }

    #[test]
    fn each_minted_token_is_valid_until_many_newer_ones_are() {
        let (g, first) = gate();
        let second = g.mint();
        assert_ne!(first, second, "a fresh token each time");
        for t in [&first, &second] {
            let cookie = format!("{COOKIE}={t}");
            assert_eq!(g.check(&get(&g, &cookie)), Verdict::Pass);
        }
        for _ in 0..TOKENS_KEPT {
            g.mint();
        }
        let cookie = format!("{COOKIE}={first}");
        assert_eq!(g.check(&get(&g, &cookie)), Verdict::Unauthorized);
    }
}
