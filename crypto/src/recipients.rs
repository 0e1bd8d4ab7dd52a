//! The `recipients.txt` format: who store files are sealed to.
//!
//! The file is a valid age recipients file (`age -R recipients.txt`
//! accepts it): one age X25519 recipient per line, each preceded by a
//! whole-line comment naming its envoy:
//!
//! ```text
//! # lockbox recipients: one envoy per recipient, named on the line above it
//! # envoy: laptop
//! age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
//! # envoy: desk
//! age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj
//! ```
//!
//! Blank lines and other lines starting with `#` are ignored; a recipient
//! with no `# envoy:` line before it has an empty name. The earlier form,
//! the name as a comment after the recipient on its own line
//! (`age1…  # laptop`), which age refuses, is still read, so files written
//! before stay valid; [`encode`] writes only the new one. Anything else is
//! an error naming the line. At most [`MAX_RECIPIENTS`] entries, no
//! duplicates, lines of at most [`MAX_LINE_BYTES`] bytes.
//!
//! It must not read or write the file itself (the callers do).

use std::collections::HashMap;
use std::str::FromStr;

use crate::seal::MAX_RECIPIENTS;
use crate::{AgeRecipient, Error, Result};

/// Longest line accepted, in bytes.
pub const MAX_LINE_BYTES: usize = 1024;

/// The comment [`encode`] writes at the top of the file.
const FILE_COMMENT: &str =
    "# lockbox recipients: one envoy per recipient, named on the line above it";

/// How a comment line names the envoy of the recipient below it.
const ENVOY_PREFIX: &str = "# envoy:";

/// One line of `recipients.txt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientEntry {
    /// The age X25519 recipient, `age1…` (canonical lowercase after [`parse`]).
    pub recipient: String,
    /// The envoy's name (may be empty).
    pub envoy: String,
}

/// Parses `recipients.txt`. Each recipient is checked to be a valid age
/// X25519 recipient and stored in canonical form.
pub fn parse(text: &str) -> Result<Vec<RecipientEntry>> {
    let mut entries = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    // The name of a `# envoy:` line, for the next recipient.
    let mut named: Option<&str> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let bad = |reason: String| Error::BadRecipients {
            line: line_no,
            reason,
        };
        if raw.len() > MAX_LINE_BYTES {
            return Err(bad(format!("line is longer than {MAX_LINE_BYTES} bytes")));
        }
        let line = raw.trim();
        if let Some(name) = line.strip_prefix(ENVOY_PREFIX) {
            named = Some(name.trim());
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (recipient, rest) = match line.find(char::is_whitespace) {
            Some(at) => (&line[..at], line[at..].trim_start()),
            None => (line, ""),
        };
        let above = named.take().unwrap_or_default();
        let envoy = if rest.is_empty() {
            above
        } else {
            rest.strip_prefix('#')
                .ok_or_else(|| {
                    bad("unexpected text after the recipient (a comment starts with #)".into())
                })?
                .trim()
        };
        let parsed = AgeRecipient::from_str(recipient)
            .map_err(|e| bad(format!("not an age X25519 recipient (age1…): {e}")))?;
        let canonical = parsed.to_string();
        if let Some(first) = seen.get(&canonical) {
            return Err(bad(format!("duplicate recipient (first on line {first})")));
        }
        if entries.len() == MAX_RECIPIENTS {
            return Err(bad(format!("more than {MAX_RECIPIENTS} recipients")));
        }
        seen.insert(canonical.clone(), line_no);
        entries.push(RecipientEntry {
            recipient: canonical,
            envoy: envoy.to_owned(),
        });
    }
    Ok(entries)
}

/// Writes `recipients.txt`: a comment line, then per entry a `# envoy:
/// NAME` line (when it has a name) and the recipient on a line of its own,
/// as age reads recipients files.
///
/// Control characters in an envoy name (which would break the line format)
/// are written as U+FFFD; names without them read back unchanged, apart
/// from leading and trailing whitespace.
pub fn encode(entries: &[RecipientEntry]) -> String {
    let mut out = String::with_capacity(80 + entries.len() * 100);
    out.push_str(FILE_COMMENT);
    out.push('\n');
    for e in entries {
        if !e.envoy.is_empty() {
            out.push_str(ENVOY_PREFIX);
            out.push(' ');
            out.extend(
                e.envoy
                    .chars()
                    .map(|c| if c.is_control() { '\u{fffd}' } else { c }),
            );
            out.push('\n');
        }
        out.push_str(&e.recipient);
        out.push('\n');
    }
    out
}

/// The age recipients of `entries`, in order. An entry that does not parse
/// is reported with its 1-based position as the line.
pub fn to_age(entries: &[RecipientEntry]) -> Result<Vec<AgeRecipient>> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            AgeRecipient::from_str(&e.recipient).map_err(|reason| Error::BadRecipients {
                line: i + 1,
                reason: format!("not an age X25519 recipient (age1…): {reason}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AgeIdentity;
    use proptest::prelude::*;

    fn recipient() -> String {
        AgeIdentity::generate().to_public().to_string()
    }

    fn line_of(err: Error) -> usize {
        match err {
            Error::BadRecipients { line, .. } => line,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parses_entries_comments_and_blank_lines() {
        let (a, b, c) = (recipient(), recipient(), recipient());
        let text =
            format!("# header\n\n{a}  # laptop\r\n   \n  # indented comment\n{b} #desk\n{c}\n");
        let entries = parse(&text).unwrap();
        assert_eq!(
            entries,
            vec![
                RecipientEntry {
                    recipient: a,
                    envoy: "laptop".into()
                },
                RecipientEntry {
                    recipient: b,
                    envoy: "desk".into()
                },
                RecipientEntry {
                    recipient: c,
                    envoy: String::new()
                },
            ]
        );
        assert_eq!(to_age(&entries).unwrap().len(), 3);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn round_trip() {
        let entries: Vec<_> = ["laptop", "desk pc", "", "Zoë's phone #2"]
            .iter()
            .map(|n| RecipientEntry {
                recipient: recipient(),
                envoy: n.to_string(),
            })
            .collect();
        let text = encode(&entries);
        assert!(text.starts_with("# lockbox recipients"));
        assert_eq!(parse(&text).unwrap(), entries);
        // As age reads a recipients file: every line is empty, a whole-line
        // comment, or exactly a recipient.
        for line in text.lines() {
            assert!(
                line.starts_with('#') || entries.iter().any(|e| e.recipient == line),
                "{line:?} is not a line age accepts"
            );
        }
    }

    #[test]
    fn reads_the_earlier_form_with_names_after_the_recipient() {
        let (a, b, c) = (recipient(), recipient(), recipient());
        // Written by the releases before: the header, then `age1…  # name`.
        let old = format!(
            "# lockbox recipients: one envoy per line\n{a}  # laptop\n{b}  # desk pc\n{c}\n"
        );
        let names: Vec<_> = parse(&old).unwrap().into_iter().map(|e| e.envoy).collect();
        assert_eq!(names, ["laptop", "desk pc", ""]);
        // Mixed: a name after the recipient wins over one above it; a
        // `# envoy:` line names only the next recipient.
        let mixed = format!("# envoy: above\n{a} # after\n# envoy: b\n\n# note\n{b}\n{c}\n");
        let names: Vec<_> = parse(&mixed)
            .unwrap()
            .into_iter()
            .map(|e| e.envoy)
            .collect();
        assert_eq!(names, ["after", "b", ""]);
    }

    #[test]
    fn control_characters_cannot_inject_lines() {
        let evil = RecipientEntry {
            recipient: recipient(),
            envoy: format!("x\n{}  # injected", recipient()),
        };
        let back = parse(&encode(std::slice::from_ref(&evil))).unwrap();
        assert_eq!(back.len(), 1);
        assert!(back[0].envoy.starts_with("x\u{fffd}"));
    }

    #[test]
    fn errors_name_the_line() {
        let a = recipient();
        assert_eq!(
            line_of(parse(&format!("# c\n{a}\nage1bogus\n")).unwrap_err()),
            3
        );
        assert_eq!(line_of(parse(&format!("{a} laptop\n")).unwrap_err()), 1);
        assert_eq!(line_of(parse("AGE-SECRET-KEY-1XYZ\n").unwrap_err()), 1);
        assert_eq!(line_of(parse("ssh-ed25519 AAAA # key\n").unwrap_err()), 1);
        let dup = parse(&format!("{a} # one\n\n{a} # two\n")).unwrap_err();
        assert!(
            matches!(&dup, Error::BadRecipients { line: 3, reason } if reason.contains("line 1"))
        );
        let long = format!("{a}  # {}\n", "x".repeat(MAX_LINE_BYTES));
        assert_eq!(line_of(parse(&long).unwrap_err()), 1);
    }

    #[test]
    fn uppercase_recipients_are_canonicalised_and_deduplicated() {
        let a = recipient();
        let entries = parse(&a.to_uppercase()).unwrap();
        assert_eq!(entries[0].recipient, a);
        assert_eq!(
            line_of(parse(&format!("{a}\n{}\n", a.to_uppercase())).unwrap_err()),
            2
        );
    }

    #[test]
    fn entry_count_is_capped() {
        let mut text = String::new();
        for i in 0..MAX_RECIPIENTS {
            text.push_str(&format!("{}  # e{i}\n", recipient()));
        }
        assert_eq!(parse(&text).unwrap().len(), MAX_RECIPIENTS);
        text.push_str(&recipient());
        assert_eq!(line_of(parse(&text).unwrap_err()), MAX_RECIPIENTS + 1);
    }

    #[test]
    fn to_age_rejects_bad_entries() {
        let entries = vec![
            RecipientEntry {
                recipient: recipient(),
                envoy: "a".into(),
            },
            RecipientEntry {
                recipient: "age1nope".into(),
                envoy: "b".into(),
            },
        ];
        assert_eq!(line_of(to_age(&entries).unwrap_err()), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn parse_never_panics(text in "(age1[a-z0-9]{0,60}|#|\\s|[ -~]){0,40}") {
            let _ = parse(&text);
        }

        #[test]
        fn encoded_names_round_trip(names in proptest::collection::vec("[a-zA-Z0-9][a-zA-Z0-9 ._#-]{0,30}[a-zA-Z0-9]", 0..5)) {
            let entries: Vec<_> = names
                .into_iter()
                .map(|n| RecipientEntry { recipient: recipient(), envoy: n })
                .collect();
            prop_assert_eq!(parse(&encode(&entries)).unwrap(), entries);
        }
    }
}
