//! The routes of the peer port, both ways: [`Route::parse`] turns a
//! request's method and path into one [`Route`] (user and file name
//! percent-decoded and validated), and [`Route::path`] builds the path a
//! client sends. It is pure — no sockets, no replica — so every route and
//! every refusal is unit-tested here; it must not look at headers or
//! bodies, or decide anything beyond which endpoint a request names.
//!
//! The endpoints, all under `/lockbox/<kind>/<user>`:
//!
//! | method | path                           | route                    |
//! |--------|--------------------------------|--------------------------|
//! | POST   | `hello/<user>`                 | [`Route::Hello`]         |
//! | GET    | `hello/<user>`                 | [`Route::OldHello`]      |
//! | POST   | `join/<user>`                  | [`Route::Join`]          |
//! | POST   | `join-confirm/<user>`          | [`Route::JoinConfirm`]   |
//! | GET    | `files/<user>`                 | [`Route::Manifest`]      |
//! | GET    | `files/<user>/<name>`          | [`Route::File`]          |
//! | POST   | `push/<user>/<name>`           | [`Route::Push`]          |
//! | POST   | `push/<user>`                  | [`Route::PushBatch`]     |
//! | GET    | `tombstones\|resurrects\|leaves/<user>` | [`Route::GetTable`] |
//! | POST   | `tombstones\|resurrects\|leaves/<user>` | [`Route::PostTable`] |

use http::Method;
use lockbox_fs::Name;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::replica::{Refusal, Table};

/// The bytes left as they are in a path segment; everything else is
/// percent-encoded.
const PATH_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'_').remove(b'-');

/// One endpoint of the peer port, as a request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /lockbox/hello/<user>`: the membership exchange of protocol
    /// 2, which carries a session proof.
    Hello,
    /// `GET /lockbox/hello/<user>`: the hello of protocol 1, answered with
    /// `426 Upgrade Required` so an older envoy says what to do.
    OldHello,
    /// `POST /lockbox/join/<user>`: the first message of a join.
    Join,
    /// `POST /lockbox/join-confirm/<user>`: the asker's confirmation of a
    /// join begun on the same connection.
    JoinConfirm,
    /// `GET /lockbox/files/<user>`: the manifest (every name and record).
    Manifest,
    /// `GET /lockbox/files/<user>/<name>`: the ciphertext of one version.
    File(Name),
    /// `POST /lockbox/push/<user>/<name>`: a version pushed to us.
    Push(Name),
    /// `POST /lockbox/push/<user>`: several small versions pushed to us in
    /// one body (see `batch`).
    PushBatch,
    /// `GET /lockbox/<table>/<user>`: every record of a table.
    GetTable(Table),
    /// `POST /lockbox/<table>/<user>`: records for a table.
    PostTable(Table),
}

/// Why a request names no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The path or method is not one of the endpoints (404).
    #[error("no such endpoint")]
    NotFound,
    /// The path names another user than the one this agent serves (410
    /// `dormant`): that user has no lockbox here.
    #[error("no lockbox for that user here (dormant)")]
    OtherUser,
    /// The file name in the path is not a valid name (400).
    #[error("{0}")]
    BadName(String),
}

impl RouteError {
    /// The protocol refusal this error is answered with, if it has one (a
    /// plain 404 has none).
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            RouteError::NotFound => None,
            RouteError::OtherUser => Some(Refusal::Dormant),
            RouteError::BadName(e) => Some(Refusal::Bad(e.clone())),
        }
    }
}

/// The table an endpoint path segment names.
fn table_of(segment: &str) -> Option<Table> {
    Table::SERVED.into_iter().find(|t| t.path() == segment)
}

impl Route {
    /// The route of a request with `method` and `path` (the URI's path,
    /// without a query) to the agent of `user`.
    ///
    /// The checks go in this order, so that each request gets the same
    /// answer as before the routes were a type: a path that is not
    /// `/lockbox/<kind>/<user>[/<name>]` is [`RouteError::NotFound`]; then a
    /// user other than `user` is [`RouteError::OtherUser`] (whatever the
    /// kind); then a bad name is [`RouteError::BadName`]; then a kind or
    /// method that is not an endpoint is [`RouteError::NotFound`].
    ///
    /// # Errors
    ///
    /// A [`RouteError`] saying why the request names no route.
    pub fn parse(method: &Method, path: &str, user: &str) -> Result<Route, RouteError> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (kind, their_user, rest) = match parts.as_slice() {
            ["lockbox", kind, user] => (*kind, *user, None),
            ["lockbox", kind, user, name] => (*kind, *user, Some(*name)),
            _ => return Err(RouteError::NotFound),
        };
        let user_ok = percent_decode_str(their_user)
            .decode_utf8()
            .is_ok_and(|u| u == user);
        if !user_ok {
            return Err(RouteError::OtherUser);
        }
        let name = match rest.map(|r| Name::new(percent_decode_str(r).collect::<Vec<u8>>())) {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(e)) => return Err(RouteError::BadName(e.to_string())),
        };
        match (method, kind, name) {
            (&Method::POST, "hello", None) => Ok(Route::Hello),
            (&Method::GET, "hello", None) => Ok(Route::OldHello),
            (&Method::POST, "join", None) => Ok(Route::Join),
            (&Method::POST, "join-confirm", None) => Ok(Route::JoinConfirm),
            (&Method::GET, "files", None) => Ok(Route::Manifest),
            (&Method::GET, "files", Some(name)) => Ok(Route::File(name)),
            (&Method::POST, "push", Some(name)) => Ok(Route::Push(name)),
            (&Method::POST, "push", None) => Ok(Route::PushBatch),
            (&Method::GET, kind, None) => table_of(kind)
                .map(Route::GetTable)
                .ok_or(RouteError::NotFound),
            (&Method::POST, kind, None) => table_of(kind)
                .map(Route::PostTable)
                .ok_or(RouteError::NotFound),
            _ => Err(RouteError::NotFound),
        }
    }

    /// The method a client sends this route with.
    pub fn method(&self) -> Method {
        match self {
            Route::OldHello | Route::Manifest | Route::File(_) | Route::GetTable(_) => Method::GET,
            Route::Hello
            | Route::Join
            | Route::JoinConfirm
            | Route::Push(_)
            | Route::PushBatch
            | Route::PostTable(_) => Method::POST,
        }
    }

    /// The path a client sends this route with, to the agent of `user`:
    /// the user and name percent-encoded (all but ASCII letters, digits,
    /// `.`, `_` and `-`), so that [`Route::parse`] gives this route back.
    pub fn path(&self, user: &str) -> String {
        let kind = match self {
            Route::Hello | Route::OldHello => "hello",
            Route::Join => "join",
            Route::JoinConfirm => "join-confirm",
            Route::Manifest | Route::File(_) => "files",
            Route::Push(_) | Route::PushBatch => "push",
            Route::GetTable(t) | Route::PostTable(t) => t.path(),
        };
        let user_path = format!("/lockbox/{kind}/{}", utf8_percent_encode(user, PATH_SET));
        match self {
            Route::File(name) | Route::Push(name) => format!(
                "{user_path}/{}",
                percent_encoding::percent_encode(name.as_bytes(), PATH_SET)
            ),
            _ => user_path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "alice";

    fn get(path: &str) -> Result<Route, RouteError> {
        Route::parse(&Method::GET, path, USER)
    }

    fn post(path: &str) -> Result<Route, RouteError> {
        Route::parse(&Method::POST, path, USER)
    }

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn every_endpoint_parses() {
        assert_eq!(post("/lockbox/hello/alice"), Ok(Route::Hello));
        assert_eq!(get("/lockbox/hello/alice"), Ok(Route::OldHello));
        assert_eq!(post("/lockbox/join/alice"), Ok(Route::Join));
        assert_eq!(post("/lockbox/join-confirm/alice"), Ok(Route::JoinConfirm));
        assert_eq!(post("/lockbox/push/alice"), Ok(Route::PushBatch));
        assert_eq!(get("/lockbox/push/alice"), Err(RouteError::NotFound));
        assert_eq!(get("/lockbox/join/alice"), Err(RouteError::NotFound));
        assert_eq!(get("/lockbox/files/alice"), Ok(Route::Manifest));
        assert_eq!(
            get("/lockbox/files/alice/notes.txt"),
            Ok(Route::File(name("notes.txt")))
        );
        assert_eq!(
            post("/lockbox/push/alice/notes.txt"),
            Ok(Route::Push(name("notes.txt")))
        );
        for (segment, table) in [
            ("tombstones", Table::Tombstones),
            ("resurrects", Table::Resurrects),
            ("leaves", Table::Leaves),
            ("folders", Table::Folders),
        ] {
            let path = format!("/lockbox/{segment}/alice");
            assert_eq!(get(&path), Ok(Route::GetTable(table)), "{path}");
            assert_eq!(post(&path), Ok(Route::PostTable(table)), "{path}");
        }
    }

    #[test]
    fn every_route_round_trips_through_its_path() {
        let odd = Name::new(b"caf\xc3\xa9 %2F \xff.conflict-x".to_vec()).unwrap();
        let mut routes = vec![
            Route::Hello,
            Route::OldHello,
            Route::Join,
            Route::JoinConfirm,
            Route::Manifest,
            Route::File(name("a")),
            Route::Push(name("report 2026.pdf")),
            Route::File(odd.clone()),
            Route::Push(odd),
            Route::PushBatch,
        ];
        for t in Table::SERVED {
            routes.push(Route::GetTable(t));
            routes.push(Route::PostTable(t));
        }
        for user in [USER, "bob smith", "zoë"] {
            for r in &routes {
                let path = r.path(user);
                assert_eq!(
                    Route::parse(&r.method(), &path, user).as_ref(),
                    Ok(r),
                    "{path}"
                );
            }
        }
        assert_eq!(
            Route::Push(name("a b")).path("bob smith"),
            "/lockbox/push/bob%20smith/a%20b"
        );
    }

    #[test]
    fn a_wrong_method_is_not_found() {
        assert_eq!(post("/lockbox/files/alice"), Err(RouteError::NotFound));
        assert_eq!(post("/lockbox/files/alice/a"), Err(RouteError::NotFound));
        assert_eq!(get("/lockbox/push/alice/a"), Err(RouteError::NotFound));
        for m in [Method::PUT, Method::DELETE, Method::HEAD, Method::PATCH] {
            for path in [
                "/lockbox/hello/alice",
                "/lockbox/files/alice",
                "/lockbox/files/alice/a",
                "/lockbox/push/alice/a",
                "/lockbox/tombstones/alice",
            ] {
                assert_eq!(
                    Route::parse(&m, path, USER),
                    Err(RouteError::NotFound),
                    "{m} {path}"
                );
            }
        }
    }

    #[test]
    fn a_name_where_none_belongs_or_none_where_one_does_is_not_found() {
        assert_eq!(get("/lockbox/hello/alice/a"), Err(RouteError::NotFound));
        // (`POST push/<user>` without a name is the batch route.)
        assert_eq!(get("/lockbox/push/alice"), Err(RouteError::NotFound));
        assert_eq!(post("/lockbox/join/alice/a"), Err(RouteError::NotFound));
        assert_eq!(
            get("/lockbox/tombstones/alice/a"),
            Err(RouteError::NotFound)
        );
        assert_eq!(post("/lockbox/leaves/alice/a"), Err(RouteError::NotFound));
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for path in [
            "",
            "/",
            "/lockbox",
            "/lockbox/",
            "/lockbox/hello",
            "/other/hello/alice",
            "/LOCKBOX/hello/alice",
            "/lockbox/files/alice/a/b",
            "/lockbox/files/alice/a/",
            "/lockbox/Hello/alice",
            "/lockbox/manifest/alice",
            "/lockbox/tombstone/alice",
            "/x/lockbox/files/alice",
        ] {
            assert_eq!(get(path), Err(RouteError::NotFound), "{path:?}");
            assert_eq!(post(path), Err(RouteError::NotFound), "{path:?}");
        }
        // Leading slashes are all stripped, as before.
        assert_eq!(post("//lockbox/hello/alice"), Ok(Route::Hello));
        assert_eq!(post("lockbox/hello/alice"), Ok(Route::Hello));
    }

    #[test]
    fn another_user_is_dormant_whatever_the_endpoint() {
        for path in [
            "/lockbox/hello/bob",
            "/lockbox/files/bob",
            "/lockbox/files/bob/a",
            "/lockbox/push/Alice/a",
            "/lockbox/nonsense/bob",
            "/lockbox/hello/alice%20",
            "/lockbox/hello/%61lic",
            "/lockbox/hello/",
            // Not UTF-8 once decoded.
            "/lockbox/hello/%ff",
        ] {
            assert_eq!(get(path), Err(RouteError::OtherUser), "{path}");
        }
        assert_eq!(
            RouteError::OtherUser.refusal().map(|r| r.status()),
            Some(410)
        );
        // The user is compared decoded.
        assert_eq!(post("/lockbox/hello/%61lice"), Ok(Route::Hello));
        assert_eq!(
            Route::parse(&Method::POST, "/lockbox/hello/bob%20smith", "bob smith"),
            Ok(Route::Hello)
        );
        // The user is checked before the name.
        assert_eq!(get("/lockbox/files/bob/.."), Err(RouteError::OtherUser));
    }

    #[test]
    fn bad_and_traversing_names_are_refused() {
        for path in [
            "/lockbox/files/alice/..",
            "/lockbox/files/alice/.",
            "/lockbox/files/alice/%2e%2e",
            "/lockbox/files/alice/%2E",
            "/lockbox/files/alice/..%2Fetc%2Fpasswd",
            "/lockbox/files/alice/%2Fetc",
            "/lockbox/files/alice/a%00b",
            "/lockbox/files/alice/",
            "/lockbox/push/alice/..",
            "/lockbox/push/alice/a%2F%2Fb",
            "/lockbox/push/alice/a%2F",
            "/lockbox/push/alice/a%2F..%2Fb",
        ] {
            let got =
                Route::parse(&Method::GET, path, USER).and(Route::parse(&Method::POST, path, USER));
            assert!(
                matches!(got, Err(RouteError::BadName(_))),
                "{path}: {got:?}"
            );
        }
        let long = format!("/lockbox/files/alice/{}", "a".repeat(256));
        assert!(matches!(get(&long), Err(RouteError::BadName(_))));
        assert_eq!(
            get(&format!("/lockbox/files/alice/{}", "a".repeat(255))),
            Ok(Route::File(name(&"a".repeat(255))))
        );
        // A bad name is refused whatever the kind (checked before it).
        assert!(matches!(
            get("/lockbox/hello/alice/.."),
            Err(RouteError::BadName(_))
        ));
        // A path in folders is a name (whether this envoy holds folders is
        // the replica's to say), percent-encoded '/' and all.
        assert_eq!(
            get("/lockbox/files/alice/ssh%2Fkeys%2Fid"),
            Ok(Route::File(name("ssh/keys/id")))
        );
        let e = get("/lockbox/files/alice/..").unwrap_err();
        assert_eq!(e.refusal().map(|r| r.status()), Some(400));
        assert!(e.to_string().contains("'.' or '..'"), "{e}");
    }

    #[test]
    fn names_are_percent_decoded_as_bytes() {
        assert_eq!(
            get("/lockbox/files/alice/a%20b"),
            Ok(Route::File(name("a b")))
        );
        assert_eq!(
            get("/lockbox/files/alice/%ff%fe"),
            Ok(Route::File(Name::new(vec![0xff, 0xfe]).unwrap()))
        );
        // A malformed escape is taken literally, as before.
        assert_eq!(
            get("/lockbox/files/alice/100%"),
            Ok(Route::File(name("100%")))
        );
        assert_eq!(
            get("/lockbox/files/alice/%zz"),
            Ok(Route::File(name("%zz")))
        );
    }

    #[test]
    fn not_found_has_no_refusal() {
        assert_eq!(RouteError::NotFound.refusal(), None);
    }
}
