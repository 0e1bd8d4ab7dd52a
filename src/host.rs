//! Checks of the host that `status` and `doctor` report: swap that could
//! page secrets to disk, core-dump settings, FUSE availability. The parsers
//! are pure; the readers of `/proc` and `/sys` are one-liners around them.

use std::path::Path;

/// One active swap area and whether it can leak secrets to disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapArea {
    /// Device or file as `/proc/swaps` names it.
    pub name: String,
    /// Whether its contents are safe at rest (zram or dm-crypt).
    pub safe: bool,
}

/// Parse `/proc/swaps`. `is_crypt` tells whether a device-mapper device
/// (`dm-N`) is a dm-crypt target.
pub fn parse_swaps(text: &str, is_crypt: impl Fn(&str) -> bool) -> Vec<SwapArea> {
    text.lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .map(|name| {
            let base = name.rsplit('/').next().unwrap_or(name);
            let safe = base.starts_with("zram") || (base.starts_with("dm-") && is_crypt(base));
            SwapArea {
                name: name.replace("\\040", " "),
                safe,
            }
        })
        .collect()
}

/// The active swap areas of this host.
pub fn swap_areas() -> Vec<SwapArea> {
    let text = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    parse_swaps(&text, |dm| {
        std::fs::read_to_string(format!("/sys/block/{dm}/dm/uuid"))
            .map(|u| u.starts_with("CRYPT-"))
            .unwrap_or(false)
    })
    .into_iter()
    .map(|mut a| {
        // /dev/mapper/NAME is a symlink to ../dm-N: classify by its target.
        if !a.safe && a.name.starts_with("/dev/mapper/") {
            if let Ok(t) = std::fs::canonicalize(&a.name) {
                let dm = t.file_name().map(|f| f.to_string_lossy().into_owned());
                if let Some(dm) = dm {
                    a.safe = parse_swaps(&format!("h\n{dm} x"), |d| {
                        std::fs::read_to_string(format!("/sys/block/{d}/dm/uuid"))
                            .map(|u| u.starts_with("CRYPT-"))
                            .unwrap_or(false)
                    })
                    .first()
                    .is_some_and(|s| s.safe);
                }
            }
        }
        a
    })
    .collect()
}

/// Warnings for swap areas that could hold paged-out secrets.
pub fn swap_warnings(areas: &[SwapArea]) -> Vec<String> {
    areas
        .iter()
        .filter(|a| !a.safe)
        .map(|a| {
            format!(
                "unencrypted swap is active on {}: unlocked secrets could be paged to disk; \
                 use zram or dm-crypt swap, or swapoff (docs/operations.md)",
                a.name
            )
        })
        .collect()
}

/// Warnings about core-dump settings that would defeat the agent's
/// non-dumpable flag.
pub fn core_dump_warnings() -> Vec<String> {
    let suid = std::fs::read_to_string("/proc/sys/fs/suid_dumpable").unwrap_or_default();
    core_dump_warnings_from(suid.trim())
}

fn core_dump_warnings_from(suid_dumpable: &str) -> Vec<String> {
    match suid_dumpable {
        "2" => vec![
            "fs.suid_dumpable=2 lets non-dumpable processes such as the agent dump core \
                     (readable by root); set it to 0"
                .to_string(),
        ],
        _ => vec![],
    }
}

/// Whether `/dev/fuse` exists and, for a non-root user, `fusermount3` is on
/// PATH. `Err` says what is missing.
pub fn fuse_available(is_root: bool) -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing: load the fuse module (modprobe fuse)".into());
    }
    if !is_root {
        if which("fusermount3").is_none() {
            return Err("fusermount3 is not installed: install the fuse3 package".into());
        }
        // fusermount3 opens the device with the user's own rights, so its
        // mode decides who may mount (distributions ship it 0666).
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
        {
            return Err(format!(
                "/dev/fuse cannot be opened by this user ({e}): FUSE for ordinary users needs it \
                 mode 0666, as the fuse3 package sets it (as root: chmod 0666 /dev/fuse)"
            ));
        }
    }
    Ok(())
}

/// The first `name` on PATH.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SWAPS: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
        /dev/sda2                               partition\t1048572\t\t0\t\t-2\n\
        /dev/zram0                              partition\t4194300\t\t0\t\t100\n\
        /dev/dm-1                               partition\t1048572\t\t0\t\t-3\n\
        /dev/dm-2                               partition\t1048572\t\t0\t\t-4\n\
        /swap\\040file                           file\t1048572\t\t0\t\t-5\n";

    #[test]
    fn swaps_are_classified() {
        let areas = parse_swaps(SWAPS, |dm| dm == "dm-1");
        let got: Vec<(&str, bool)> = areas.iter().map(|a| (a.name.as_str(), a.safe)).collect();
        assert_eq!(
            got,
            vec![
                ("/dev/sda2", false),
                ("/dev/zram0", true),
                ("/dev/dm-1", true),
                ("/dev/dm-2", false),
                ("/swap file", false),
            ]
        );
        let w = swap_warnings(&areas);
        assert_eq!(w.len(), 3);
        assert!(w[0].contains("/dev/sda2"));
    }

    #[test]
    fn no_swap_no_warning() {
        let areas = parse_swaps("Filename Type Size Used Priority\n", |_| false);
        assert!(areas.is_empty());
        assert!(swap_warnings(&areas).is_empty());
        assert!(parse_swaps("", |_| false).is_empty());
    }

    #[test]
    fn suid_dumpable_two_warns() {
        assert_eq!(core_dump_warnings_from("2").len(), 1);
        assert!(core_dump_warnings_from("0").is_empty());
    }
}
