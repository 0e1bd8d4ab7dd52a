//! The status page's HTML, rendered from a [`StatusReport`] (the same one
//! `lockbox status --json` prints) with `maud`, which escapes every value
//! it interpolates: file and envoy names reach the page only as text.
//!
//! The page is whole without its script: the script only swaps in a fresh
//! [`main`] when the server says the status changed, and sends the buttons'
//! POSTs.

use maud::{html, Markup, DOCTYPE};

use crate::status::{fmt_size, fmt_time, PresenceRow, StatusReport};

/// Which rows of the presence matrix to show (`?only=` in the address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Only {
    /// Every file.
    #[default]
    All,
    /// Files some member does not hold as they are here.
    NotEverywhere,
    /// Conflict copies, and files a member holds a concurrent version of.
    Conflicts,
}

impl Only {
    /// From the query of the address.
    pub fn of_query(query: Option<&str>) -> Only {
        let v = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("only="));
        match v {
            Some("not-everywhere") => Only::NotEverywhere,
            Some("conflicts") => Only::Conflicts,
            _ => Only::All,
        }
    }

    fn keeps(self, row: &PresenceRow) -> bool {
        match self {
            Only::All => true,
            Only::NotEverywhere => !row.everywhere,
            Only::Conflicts => row.conflict,
        }
    }
}

/// Drifted files named on the page; `status --json` has them all.
const DRIFT_SHOWN: usize = 50;

/// The whole page.
pub fn page(report: &StatusReport, csrf: &str, only: Only, now: i64) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="lockbox-csrf" content=(csrf);
                title { "lockbox · " (report.envoy) }
                link rel="stylesheet" href="/app.css";
                script src="/app.js" defer {}
            }
            body {
                div #main { (main(report, only, now)) }
            }
        }
    }
    .into_string()
}

/// What changes: everything under `#main` (also served alone, for the
/// script's live updates).
pub fn main(report: &StatusReport, only: Only, now: i64) -> Markup {
    let members = report.envoys.len().max(1);
    html! {
        header {
            h1 { "lockbox" }
            p.who {
                (report.user) " on " b { (report.envoy) } " · "
                @if report.unlocked {
                    span.badge.unlocked #session { "unlocked" }
                } @else {
                    span.badge.locked #session { "locked" }
                }
            }
            @if let Some(line) = &report.long_absence {
                p.warn { (line) }
            }
            @if let Some(d) = &report.departed {
                p.warn { (d) }
            }
            @for w in &report.warnings {
                p.warn { (w) }
            }
        }
        section #envoys {
            h2 { "Envoys" }
            div.scroll { table {
                thead { tr { th { "envoy" } th { "state" } th { "session" } th { "disk free" } th { "last heard" } th { "protocol" } } }
                tbody {
                    @for e in &report.envoys {
                        tr data-envoy=(e.envoy) data-state=(e.state) {
                            td { (e.envoy) @if e.this { " (this one)" } }
                            td.state { (e.state) }
                            td.session {
                                @match e.unlocked {
                                    Some(true) => "unlocked",
                                    Some(false) => "locked",
                                    None => "?",
                                }
                            }
                            td {
                                @match e.free_percent {
                                    Some(f) => {
                                        (f) "%" @if e.disk_short { " (short: takes no pushes)" }
                                        @if e.disk_refusals > 0 { " · " (e.disk_refusals) " push(es) refused" }
                                    },
                                    None => "?",
                                }
                            }
                            td {
                                @match e.last_seen_secs {
                                    Some(_) if e.this => "now",
                                    Some(s) => { (s) " s ago" },
                                    None => "never, since this agent started",
                                }
                            }
                            td { @match e.protocol { Some(p) => (p), None => "?" } }
                        }
                    }
                }
            } }
            @let refused: Vec<_> = report.peers.iter().filter(|p| matches!(p.state.as_str(), "refused" | "join refused" | "unreachable")).collect();
            @if !refused.is_empty() {
                h3 { "Refused and unreachable peers" }
                ul #refused {
                    @for p in refused {
                        li { b { (p.envoy) } " " (p.state) ": " (p.detail) }
                    }
                }
            }
        }
        section #presence {
            h2 { "Files" }
            p.filters {
                a href="/" class=[(only == Only::All).then_some("on")] { "all" } " · "
                a href="/?only=not-everywhere" class=[(only == Only::NotEverywhere).then_some("on")] { "not everywhere" } " · "
                a href="/?only=conflicts" class=[(only == Only::Conflicts).then_some("on")] { "conflicts" }
                " · "
                (report.presence.iter().filter(|r| r.everywhere).count()) " of " (report.presence.len()) " on all " (members) " envoys"
            }
            div.scroll {
                table.matrix {
                    thead {
                        tr {
                            th.name { "file" } th { "size" } th { "sealed" }
                            @for e in &report.envoys { th { (e.envoy) } }
                        }
                    }
                    tbody {
                        @for r in report.presence.iter().filter(|r| only.keeps(r)) {
                            tr data-name=(r.name) data-everywhere=(r.everywhere) {
                                td.name { (r.name) }
                                td { (fmt_size(r.size)) }
                                td title=(fmt_time(r.sealed_unix)) { (age(now - r.sealed_unix)) " by " (r.author) }
                                @for e in &report.envoys {
                                    @let word = r.holders.get(&e.envoy).map_or("unknown", String::as_str);
                                    td class={ "p " (word) } data-envoy=(e.envoy) { (word) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section #drift {
            h2 { "Recipient drift" }
            @if report.recipient_drift == 0 {
                p { "Every file is sealed to the current members." }
            } @else {
                p {
                    b #drift-count { (report.recipient_drift) } " file(s) are sealed to a set other than the current members. "
                    button data-action="/reencrypt" { "Re-encrypt now" }
                }
                ul #drifted {
                    @for n in report.drifted.iter().take(DRIFT_SHOWN) { li { (n) } }
                    @if report.drifted.len() > DRIFT_SHOWN {
                        li { "and " (report.drifted.len() - DRIFT_SHOWN) " more (lockbox status --json lists them all)" }
                    }
                }
            }
        }
        section #deletes {
            h2 { "Deletes" }
            @if report.deletes.is_empty() {
                p { "None in force." }
            } @else {
                div.scroll { table {
                    thead { tr { th { "name" } th { "by" } th { "when" } th {} } }
                    tbody {
                        @for d in &report.deletes {
                            tr data-name=(d.name) {
                                td.name { (d.name) }
                                td { (d.by) }
                                td title=(fmt_time(d.deleted_unix)) { (age(now - d.deleted_unix)) }
                                td { button data-action="/resurrect" data-name=(d.name) { "Resurrect" } }
                            }
                        }
                    }
                } }
            }
            p.small {
                "Last catch-up: "
                @match report.last_catch_up { Some(t) => (fmt_time(t)), None => "none since this agent started" }
            }
        }
        p #said role="status" {}
    }
}

/// A duration in the largest unit that fits ("3 min ago").
fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{EnvoyLine, PresenceRow};

    fn report() -> StatusReport {
        let mut r = StatusReport {
            envoy: "alpha".into(),
            user: "u".into(),
            ..StatusReport::default()
        };
        let line = |e: &str, this| EnvoyLine {
            envoy: e.into(),
            this,
            state: "reporting".into(),
            last_seen_secs: Some(1),
            unlocked: Some(true),
            free_percent: Some(50),
            disk_short: false,
            disk_refusals: 0,
            protocol: Some(3),
            detail: String::new(),
        };
        r.envoys = vec![line("alpha", true), line("<b>ravo", false)];
        let row = |n: &str, everywhere, conflict, b: &str| PresenceRow {
            name: n.into(),
            size: 10,
            sealed_unix: 0,
            author: "alpha".into(),
            holders: [
                ("alpha".into(), "current".into()),
                ("<b>ravo".into(), b.into()),
            ]
            .into(),
            everywhere,
            conflict,
        };
        r.presence = vec![
            row("a<script>", true, false, "current"),
            row("b", false, false, "missing"),
            row("c", false, true, "conflict"),
        ];
        r
    }

    #[test]
    fn names_are_text_never_markup() {
        let p = page(&report(), "c", Only::All, 100);
        assert!(
            !p.contains("a<script>") && p.contains("a&lt;script&gt;"),
            "{p}"
        );
        assert!(!p.contains("<b>ravo") && p.contains("&lt;b&gt;ravo"));
    }

    #[test]
    fn the_filters_keep_the_rows_they_name() {
        let rows = |only| {
            let p = main(&report(), only, 100).into_string();
            ["a&lt;script&gt;", "b", "c"]
                .iter()
                .filter(|n| p.contains(&format!("<tr data-name=\"{n}\"")))
                .count()
        };
        assert_eq!(rows(Only::All), 3);
        assert_eq!(rows(Only::NotEverywhere), 2);
        assert_eq!(rows(Only::Conflicts), 1);
        assert_eq!(Only::of_query(Some("x=1&only=conflicts")), Only::Conflicts);
        assert_eq!(Only::of_query(Some("only=nonsense")), Only::All);
    }

    #[test]
    fn each_cell_says_what_the_envoy_holds() {
        let p = main(&report(), Only::All, 100).into_string();
        assert!(
            p.contains(r#"<td class="p missing" data-envoy="&lt;b&gt;ravo">missing</td>"#),
            "{p}"
        );
        assert!(p.contains("locked"));
        assert!(p.contains("1 of 3 on all 2 envoys"), "{p}");
    }
}
