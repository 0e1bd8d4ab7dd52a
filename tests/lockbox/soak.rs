//! The soak (issue 29; `docs/operations.md`, "Soak"): a seeded, bounded
//! random run on a three-envoy loopback mesh with real mounts. Each round a
//! PRNG seeded from `LOCKBOX_SOAK_SEED` picks one operation — a write (new,
//! `O_TRUNC`, append), simultaneous writes of one name on two envoys, rm,
//! mv, rename over, `kill -9` of an agent mid-write or right after a close,
//! stop and start, lock and unlock — and a model records every write and
//! which envoy had seen what. At the end, once the mesh settles, the envoys
//! must hold the same names and bytes, every acknowledged write must survive
//! unless an envoy that had seen it replaced or removed it, no file may be
//! torn, the stores must be sealed and free of plaintext, no deleted name
//! may come back, and the tables must agree. It must not sleep in the hope
//! that something happened: every wait is for an event, with a deadline.

use crate::harness::crash::files_containing;
use crate::harness::fs;
use crate::harness::writer::{Open, Writer};
use crate::harness::*;
use crate::require_fuse;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The envoys of the soak's mesh.
const ENVOYS: [&str; 3] = ["a", "b", "c"];
/// How many names the operations pick from (so that they collide).
const POOL: usize = 12;
/// The seed when `LOCKBOX_SOAK_SEED` is not set.
const DEFAULT_SEED: u64 = 29;
/// The rounds when `LOCKBOX_SOAK_ROUNDS` is not set: about a minute here.
const DEFAULT_ROUNDS: usize = 130;
/// What every write's content starts with (then its seed, round, envoy,
/// write number and a nonce): the needle of the plaintext scan.
const MARK: &str = "SOAKMARK-";
/// How long the end waits for contents, and then for tables, to agree.
const SETTLE: Duration = Duration::from_secs(60);
/// The name of the file written at the end to settle the mesh.
const LAST: &str = "soak-settled";

/// splitmix64: small, seeded, the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// What became of a write, in the model.
enum Fate {
    /// Acknowledged and not superseded: it must be the file at this name.
    Live(String),
    /// Replaced or removed by a later operation on an envoy that had seen it.
    Gone(String),
    /// Never acknowledged (its agent was killed before the close): it may
    /// be lost, and must not replace anything.
    Unacked,
}

struct Write {
    round: usize,
    envoy: &'static str,
    marker: String,
    content: Vec<u8>,
    fate: Fate,
}

/// The model of the run and the mesh it drives.
struct Soak<'c> {
    seed: u64,
    rounds: usize,
    round: usize,
    c: &'c Circle,
    rng: Rng,
    writer: Writer,
    writes: Vec<Write>,
    /// Every name the model expects (pool names and conflict copies), and
    /// the write it holds.
    at: BTreeMap<String, usize>,
    /// Pool names removed (rm, mv away) and not written since, with the
    /// round of their removal.
    deleted: BTreeMap<String, usize>,
    up: [bool; 3],
    /// An envoy stopped, and the round it is started again.
    down: Option<(usize, usize)>,
    failures: Vec<String>,
    stats: BTreeMap<&'static str, usize>,
}

impl<'c> Soak<'c> {
    fn node(&self, x: usize) -> &'c Node {
        self.c.node(ENVOYS[x])
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    /// Record a failed check; the run goes on, and fails at its end.
    fn fail(&mut self, check: &str, msg: String) {
        let when = if self.round > self.rounds {
            "at the end".to_string()
        } else {
            format!("round {}", self.round)
        };
        let line = format!("check {check}: seed {}, {when}: {msg}", self.seed);
        eprintln!("FAIL {line}");
        self.failures.push(line);
        self.keep_logs();
    }

    /// With `LOCKBOX_SOAK_LOGS=DIR`, each failure keeps every envoy's whole
    /// agent log as it is then (`DIR/failure-N-ENVOY.log`), for a replay
    /// to be read after the run's folders are gone.
    fn keep_logs(&self) {
        let Ok(dir) = std::env::var("LOCKBOX_SOAK_LOGS") else {
            return;
        };
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("LOCKBOX_SOAK_LOGS folder");
        for (x, envoy) in ENVOYS.iter().enumerate() {
            let log = self.node(x).m.e.state().join("agent.log");
            let to = dir.join(format!("failure-{}-{envoy}.log", self.failures.len()));
            if let Err(e) = std::fs::copy(&log, &to) {
                eprintln!("cannot keep {}: {e}", log.display());
            }
        }
        eprintln!("agent logs kept in {}", dir.display());
    }

    fn describe(&self, id: usize) -> String {
        let w = &self.writes[id];
        let fate = match &w.fate {
            Fate::Live(name) => format!("expected at {name}"),
            Fate::Gone(why) => format!("gone: {why}"),
            Fate::Unacked => "not acknowledged".into(),
        };
        format!(
            "write #{id} (round {}, on {}, {:?}, {} bytes; {fate})",
            w.round,
            w.envoy,
            w.marker.trim_end(),
            w.content.len()
        )
    }

    fn pool_name(&mut self) -> String {
        format!("f{:02}", self.rng.below(POOL))
    }

    fn pool_names(&self, present: bool) -> Vec<String> {
        (0..POOL)
            .map(|i| format!("f{i:02}"))
            .filter(|n| self.at.contains_key(n) == present)
            .collect()
    }

    fn pick(&mut self, from: &[String]) -> Option<String> {
        (!from.is_empty()).then(|| from[self.rng.below(from.len())].clone())
    }

    fn up_envoys(&self) -> Vec<usize> {
        (0..3).filter(|&x| self.up[x]).collect()
    }

    /// A new write's bytes, unique to it: the marker line, then 0–64 KiB of
    /// random bulk (sometimes about 1 MiB). Returns (marker, bytes).
    fn fresh(&mut self, x: usize) -> (String, Vec<u8>) {
        let marker = format!(
            "{MARK}{}-r{}-{}-w{}-{:016x}\n",
            self.seed,
            self.round,
            ENVOYS[x],
            self.writes.len(),
            self.rng.next()
        );
        let len = if self.rng.chance(6) {
            MIB + self.rng.below(64 << 10)
        } else {
            self.rng.below((64 << 10) + 1)
        };
        let mut bytes = marker.clone().into_bytes();
        bytes.extend(self.rng.bytes(len));
        (marker, bytes)
    }

    fn add_write(&mut self, x: usize, marker: String, content: Vec<u8>, fate: Fate) -> usize {
        self.writes.push(Write {
            round: self.round,
            envoy: ENVOYS[x],
            marker,
            content,
            fate,
        });
        self.writes.len() - 1
    }

    /// The model's content of `name`.
    fn expected(&self, name: &str) -> Option<&[u8]> {
        self.at.get(name).map(|&id| &self.writes[id].content[..])
    }

    /// Whether envoy `x` shows `name` as `want` (absent for `None`).
    fn shows(&self, x: usize, name: &str, want: Option<&[u8]>) -> bool {
        let at = self.node(x).at(name);
        match want {
            None => !fs::present(&at),
            Some(w) => {
                fs::metadata(&at).is_ok_and(|m| m.len() == w.len() as u64)
                    && fs::read(&at).is_ok_and(|c| c == w)
            }
        }
    }

    /// Wait until envoy `x` shows `name` as the model has it: from then on
    /// `x` has seen the current version, and an operation there may replace
    /// it. If instead the write expected there turns up as a conflict copy
    /// (the envoys took something else for concurrent with it), or nothing
    /// changes in time, the model takes what the envoys up agree on
    /// ([`Soak::resync`]); a write kept nowhere fails check 2, a removed
    /// name that stays check 5.
    fn await_view(&mut self, x: usize, name: &str) {
        let prefix = format!("{name}.conflict-");
        let expected = self.expected(name);
        let kept_aside = || {
            expected
                .is_some_and(|want| self.look(x, name, &prefix).1.iter().any(|(_, b)| b == want))
        };
        let mut aside = false;
        if wait_until(CONVERGE, || {
            aside = kept_aside();
            aside || self.shows(x, name, expected)
        })
        .is_ok()
            && !aside
        {
            return;
        }
        if self.at.contains_key(name) {
            self.resync(name, x);
            return;
        }
        let got = self.shown(x, name);
        self.fail(
            "5",
            format!(
                "{name}, removed, is still {got} on {} after {CONVERGE:?}",
                ENVOYS[x]
            ),
        );
        self.resync(name, x);
    }

    /// What envoy `x` shows at `name`, for a message.
    fn shown(&self, x: usize, name: &str) -> String {
        fs::read(self.node(x).at(name))
            .ok()
            .map_or("absent".into(), |b| self.which(&b))
    }

    /// After envoy `x` did not show `name` as the model has it: wait until
    /// every envoy up shows the same at `name` and take that into the model
    /// (the write expected there is then tracked at the conflict copy that
    /// holds it, or failed as lost).
    fn resync(&mut self, name: &str, x: usize) {
        let up = self.up_envoys();
        let mut file = None;
        if wait_until(CONVERGE, || {
            let v: Vec<_> = up
                .iter()
                .map(|&x| fs::read(self.node(x).at(name)).ok())
                .collect();
            file = v[0].clone();
            v.iter().all(|f| *f == file)
        })
        .is_err()
        {
            panic!(
                "seed {}, round {}: the envoys up never agree on {name}; failures so far:\n{}\n{}",
                self.seed,
                self.round,
                self.failures.join("\n"),
                self.c.dump()
            );
        }
        let now = match &file {
            Some(b) => match self.writes.iter().position(|w| w.content == *b) {
                Some(id) => Some(id),
                None => {
                    self.fail(
                        "3",
                        format!("{name} is torn: {} bytes of no write", b.len()),
                    );
                    panic!(
                        "seed {}: the model cannot go on:\n{}",
                        self.seed,
                        self.failures.join("\n")
                    );
                }
            },
            None => None,
        };
        eprintln!(
            "round {}: the envoys up agree on {name} as {}; the model takes that",
            self.round,
            now.map_or("absent".into(), |id| self.describe(id))
        );
        let was = match now {
            Some(id) => self.at.insert(name.to_string(), id),
            None => self.at.remove(name),
        };
        if let Some(id) = now {
            self.writes[id].fate = Fate::Live(name.to_string());
            self.deleted.remove(name);
        }
        let Some(was) = was else { return };
        if Some(was) == now {
            return;
        }
        let prefix = format!("{name}.conflict-");
        let copy = self
            .look(up[0], name, &prefix)
            .1
            .into_iter()
            .find(|(_, b)| *b == self.writes[was].content);
        match copy {
            Some((copy, _)) => {
                // Kept, so not lost; but the name went to a version `x`
                // had seen and replaced: counted, shown, not failed.
                eprintln!(
                    "round {}: {} is kept only as {copy}; {name} is {} on {}",
                    self.round,
                    self.describe(was),
                    self.shown(x, name),
                    ENVOYS[x]
                );
                self.count("writes kept only as a conflict copy");
                self.track_copy(copy, was);
            }
            None => {
                let msg = format!(
                    "{} never reached {} ({CONVERGE:?}) and is kept nowhere: {name} is {}",
                    self.describe(was),
                    ENVOYS[x],
                    self.shown(x, name)
                );
                self.fail("2", msg);
                self.writes[was].fate = Fate::Gone("LOST (reported)".into());
            }
        }
    }

    /// Write `id` is kept as the conflict copy `copy`. A copy that took the
    /// name of one the model already holds replaced that one's write: a
    /// loss (check 2).
    fn track_copy(&mut self, copy: String, id: usize) {
        if let Some(old) = self.at.insert(copy.clone(), id) {
            if old != id {
                let msg = format!(
                    "{} is lost: its conflict copy {copy} now holds {}",
                    self.describe(old),
                    self.describe(id)
                );
                self.fail("2", msg);
                self.writes[old].fate = Fate::Gone("LOST (reported)".into());
            }
        }
        self.writes[id].fate = Fate::Live(copy);
    }

    /// `name` on `x` now holds write `id`, which replaced what was there.
    fn replaced(&mut self, x: usize, name: &str, id: usize, how: &str) {
        if let Some(old) = self.at.insert(name.to_string(), id) {
            self.writes[old].fate =
                Fate::Gone(format!("{how} on {} in round {}", ENVOYS[x], self.round));
        }
        self.deleted.remove(name);
    }

    /// An agent killed or stopped: its mount detached, started and
    /// unlocked again.
    fn restart(&mut self, x: usize) {
        let n = self.node(x);
        detach_mount(&n.m.mnt);
        n.m.e.unlock();
        n.m.assert_mounted();
        self.up[x] = true;
    }

    fn kill(&mut self, x: usize) {
        let pid = self.node(x).m.e.agent_pid().expect("agent pid");
        kill9(pid);
        assert!(
            exited(pid),
            "seed {}: {} survived SIGKILL",
            self.seed,
            ENVOYS[x]
        );
        self.count("kills");
    }

    // ---- operations ----

    /// A write on `x`: a new file, `O_TRUNC` or append over the current one.
    fn op_write(&mut self, x: usize) {
        let name = self.pool_name();
        self.await_view(x, &name);
        let old = self.expected(&name).map(<[u8]>::to_vec);
        let append = old.is_some() && self.rng.chance(35);
        let (marker, part) = self.fresh(x);
        let how = if append { Open::Append } else { Open::Trunc };
        let full = if append {
            [old.unwrap_or_default(), part.clone()].concat()
        } else {
            part.clone()
        };
        let kind = match (append, self.at.contains_key(&name)) {
            (true, _) => "append",
            (false, true) => "overwrite",
            (false, false) => "new file",
        };
        self.count(kind);
        eprintln!("round {}: {kind} {name} on {}", self.round, ENVOYS[x]);
        let path = self.node(x).at(&name);
        match self.writer.put(how, &path, &part) {
            Ok(()) => {
                let id = self.add_write(x, marker, full, Fate::Live(name.clone()));
                self.replaced(x, &name, id, kind);
            }
            Err(e) => self.fail(
                "2",
                format!("{kind} of {name} on {} failed: {e}", ENVOYS[x]),
            ),
        }
    }

    /// Writes of one name on two envoys, each opened before the other
    /// closed: neither writer saw the other, so both must survive (one as
    /// the file, one as a conflict copy). Half the time the second close
    /// waits until the first's version has reached its envoy.
    fn op_simultaneous(&mut self, x: usize, y: usize) {
        let name = self.pool_name();
        self.await_view(x, &name);
        self.await_view(y, &name);
        self.count("simultaneous pair");
        let base = self.expected(&name).map(<[u8]>::to_vec);
        let mut plan = Vec::new();
        for (slot, e) in [("x", x), ("y", y)] {
            let append = base.is_some() && self.rng.chance(30);
            let (marker, part) = self.fresh(e);
            let full = match (&base, append) {
                (Some(b), true) => [b.clone(), part.clone()].concat(),
                _ => part.clone(),
            };
            let how = if append { Open::Append } else { Open::Trunc };
            plan.push((slot, e, how, marker, part, full));
        }
        let (first, second) = if self.rng.chance(50) { (0, 1) } else { (1, 0) };
        let wait_arrival = self.rng.chance(50);
        eprintln!(
            "round {}: simultaneous {name} on {} and {} ({:?}/{:?}), {} closes first{}",
            self.round,
            ENVOYS[x],
            ENVOYS[y],
            plan[0].2,
            plan[1].2,
            ENVOYS[plan[first].1],
            if wait_arrival {
                ", the other after its version arrives"
            } else {
                ""
            }
        );
        let store_of = |e: usize| self.node(e).m.e.store().join(&name);
        let (first_store, second_store) = (store_of(plan[first].1), store_of(plan[second].1));
        let before = fs::read(&second_store).ok();
        for (slot, e, how, _, part, _) in &plan {
            let path = self.node(*e).at(&name);
            if let Err(err) = self
                .writer
                .open(slot, *how, &path)
                .and_then(|()| self.writer.write(slot, part))
            {
                self.fail(
                    "2",
                    format!("simultaneous write of {name} on {}: {err}", ENVOYS[*e]),
                );
            }
        }
        let mut acked = [false, false];
        acked[first] = match self.writer.close(plan[first].0) {
            Ok(()) => true,
            Err(e) => {
                self.fail(
                    "2",
                    format!("close of {name} on {}: {e}", ENVOYS[plan[first].1]),
                );
                false
            }
        };
        if wait_arrival {
            let arrived = wait_until(Duration::from_secs(10), || {
                let theirs = fs::read(&first_store).ok();
                theirs.is_some() && theirs != before && fs::read(&second_store).ok() == theirs
            });
            if arrived.is_ok() {
                self.count("second close after the first arrived");
            }
        }
        acked[second] = match self.writer.close(plan[second].0) {
            Ok(()) => true,
            Err(e) => {
                self.fail(
                    "2",
                    format!("close of {name} on {}: {e}", ENVOYS[plan[second].1]),
                );
                false
            }
        };
        let ids: Vec<usize> = plan
            .into_iter()
            .zip(acked)
            .map(|((_, e, _, marker, _, full), ok)| {
                let fate = if ok {
                    Fate::Live(name.clone())
                } else {
                    Fate::Unacked
                };
                self.add_write(e, marker, full, fate)
            })
            .collect();
        self.settle_pair(&name, [x, y], [ids[0], ids[1]], acked);
    }

    /// After simultaneous writes `ids` of `name`: wait until every envoy up
    /// shows the same file at `name` and, for the other write, the same
    /// conflict copy; record which is which. An acknowledged write found
    /// nowhere is a failure of check 2.
    fn settle_pair(&mut self, name: &str, on: [usize; 2], ids: [usize; 2], acked: [bool; 2]) {
        let up = self.up_envoys();
        let prefix = format!("{name}.conflict-");
        let contents = [
            self.writes[ids[0]].content.clone(),
            self.writes[ids[1]].content.clone(),
        ];
        let mut outcome = None;
        {
            let contents = &contents;
            // The outcome every envoy up agrees on: (winner, loser's copy).
            let agreed = || -> Option<(usize, Option<String>)> {
                let views: Vec<_> = up.iter().map(|&x| self.look(x, name, &prefix)).collect();
                let file = views[0].0.clone()?;
                let winner = (0..2).find(|&i| acked[i] && file == contents[i])?;
                let loser = 1 - winner;
                let copy = if acked[loser] {
                    let (c, _) = views[0].1.iter().find(|(_, b)| *b == contents[loser])?;
                    Some(c.clone())
                } else {
                    None
                };
                views
                    .iter()
                    .all(|(f, copies)| {
                        f.as_ref() == Some(&file)
                            && copy.as_ref().is_none_or(|c| {
                                copies.iter().any(|(n, b)| n == c && *b == contents[loser])
                            })
                    })
                    .then_some((winner, copy))
            };
            let _ = wait_until(CONVERGE, || {
                outcome = agreed();
                outcome.is_some()
            });
        }
        if let Some((winner, copy)) = outcome {
            self.replaced(on[winner], name, ids[winner], "simultaneous write");
            if let Some(copy) = copy {
                self.track_copy(copy, ids[1 - winner]);
                self.count("conflict copies");
            }
            return;
        }
        // Which acknowledged write is missing? Look on every envoy up.
        let views: Vec<_> = up
            .iter()
            .map(|&x| (x, self.look(x, name, &prefix)))
            .collect();
        for i in (0..2).filter(|&i| acked[i]) {
            let found = views.iter().any(|(_, (f, copies))| {
                f.as_ref() == Some(&contents[i]) || copies.iter().any(|(_, b)| *b == contents[i])
            });
            if found {
                // Kept somewhere, but not alike everywhere: the end checks it.
                self.writes[ids[i]].fate = Fate::Gone("kept, not yet alike (see the end)".into());
                continue;
            }
            let shows: Vec<String> = views
                .iter()
                .map(|(x, (f, copies))| {
                    format!(
                        "{} shows {name} as {} and {} other conflict cop(ies)",
                        ENVOYS[*x],
                        f.as_deref().map_or("absent".into(), |b| self.which(b)),
                        copies.len()
                    )
                })
                .collect();
            let msg = format!(
                "acknowledged simultaneous {} is lost: neither {name} nor a conflict copy \
                 holds it ({})",
                self.describe(ids[i]),
                shows.join("; ")
            );
            self.fail("2", msg);
            self.writes[ids[i]].fate = Fate::Gone("LOST (reported)".into());
        }
        // Go on from what the envoys up agree on at `name`.
        let mut file = None;
        self.c.wait(
            &format!(
                "seed {}, round {}: {name} alike on {up:?}",
                self.seed, self.round
            ),
            CONVERGE,
            || {
                let v: Vec<_> = up
                    .iter()
                    .map(|&x| fs::read(self.node(x).at(name)).ok())
                    .collect();
                file = v[0].clone();
                v.iter().all(|f| *f == file)
            },
        );
        match file.and_then(|f| (0..2).find(|&i| acked[i] && f == contents[i])) {
            Some(i) => self.replaced(on[i], name, ids[i], "simultaneous write"),
            None => panic!(
                "seed {}, round {}: {name} holds neither simultaneous write; failures so far: {:#?}",
                self.seed, self.round, self.failures
            ),
        }
    }

    /// (the content of `name`, the conflict copies named `prefix…` the model
    /// with their contents) on envoy `x`.
    #[allow(clippy::type_complexity)]
    fn look(
        &self,
        x: usize,
        name: &str,
        prefix: &str,
    ) -> (Option<Vec<u8>>, Vec<(String, Vec<u8>)>) {
        let n = self.node(x);
        let copies = n
            .listing()
            .into_iter()
            .filter(|f| f.starts_with(prefix))
            .filter_map(|f| fs::read(n.at(&f)).ok().map(|c| (f, c)))
            .collect();
        (fs::read(n.at(name)).ok(), copies)
    }

    /// Which write `bytes` are, for a message.
    fn which(&self, bytes: &[u8]) -> String {
        match self.writes.iter().position(|w| w.content == bytes) {
            Some(id) => format!("write #{id}"),
            None => format!("{} bytes of no write", bytes.len()),
        }
    }

    fn op_rm(&mut self, x: usize) {
        let Some(name) = self.pick(&self.pool_names(true)) else {
            return self.op_write(x);
        };
        self.await_view(x, &name);
        self.count("rm");
        eprintln!("round {}: rm {name} on {}", self.round, ENVOYS[x]);
        if let Err(e) = fs::remove_file(self.node(x).at(&name)) {
            panic!(
                "seed {}, round {}: rm {name} on {}: {e}",
                self.seed, self.round, ENVOYS[x]
            );
        }
        let id = self.at.remove(&name).expect("present");
        self.writes[id].fate =
            Fate::Gone(format!("removed on {} in round {}", ENVOYS[x], self.round));
        self.deleted.insert(name, self.round);
    }

    /// `mv` to a new name (`over` false) or over an existing one.
    fn op_mv(&mut self, x: usize, over: bool) {
        let from = self.pool_names(true);
        let to = self.pool_names(!over);
        let Some(src) = self.pick(&from) else {
            return self.op_write(x);
        };
        let to: Vec<String> = to.into_iter().filter(|n| *n != src).collect();
        let Some(dst) = self.pick(&to) else {
            return self.op_write(x);
        };
        self.await_view(x, &src);
        self.await_view(x, &dst);
        let kind = if over { "rename over" } else { "mv" };
        self.count(kind);
        eprintln!(
            "round {}: {kind} {src} -> {dst} on {}",
            self.round, ENVOYS[x]
        );
        let n = self.node(x);
        if let Err(e) = fs::rename(n.at(&src), n.at(&dst)) {
            panic!(
                "seed {}, round {}: {kind} {src} {dst} on {}: {e}",
                self.seed, self.round, ENVOYS[x]
            );
        }
        let id = self.at.remove(&src).expect("present");
        self.writes[id].fate = Fate::Live(dst.clone());
        self.replaced(x, &dst, id, "renamed over");
        self.deleted.insert(src, self.round);
    }

    /// The start of a round that kills `x`'s agent around a write (counted
    /// as `what`, logged as "kill -9 X `how` NAME"): a pool name `x` has
    /// seen as the model has it, and fresh content for it; returns the
    /// name, the write's marker and content, and its path on `x`'s mount.
    fn kill_round(
        &mut self,
        x: usize,
        what: &'static str,
        how: &str,
    ) -> (String, String, Vec<u8>, std::path::PathBuf) {
        let name = self.pool_name();
        self.await_view(x, &name);
        self.count(what);
        eprintln!("round {}: kill -9 {} {how} {name}", self.round, ENVOYS[x]);
        let (marker, part) = self.fresh(x);
        let path = self.node(x).at(&name);
        (name, marker, part, path)
    }

    /// `kill -9` of `x`'s agent with a file written but not closed; the
    /// write is not acknowledged.
    fn op_kill_mid_write(&mut self, x: usize) {
        let (name, marker, part, path) = self.kill_round(x, "kill mid-write", "mid-write of");
        let opened = self
            .writer
            .open("k", Open::Trunc, &path)
            .and_then(|()| self.writer.write("k", &part));
        if let Err(e) = opened {
            self.fail(
                "2",
                format!("write of {name} on {} before the kill: {e}", ENVOYS[x]),
            );
        }
        self.kill(x);
        let closed = self.writer.close("k");
        if closed.is_ok() {
            // The close won: an acknowledged write like any other.
            let id = self.add_write(x, marker, part, Fate::Live(name.clone()));
            self.replaced(x, &name, id, "overwrite whose close won the kill");
        } else {
            self.add_write(x, marker, part, Fate::Unacked);
        }
        self.restart(x);
    }

    /// `kill -9` of `x`'s agent right after a close returned: the write is
    /// acknowledged and must survive.
    fn op_kill_after_close(&mut self, x: usize) {
        let (name, marker, part, path) =
            self.kill_round(x, "kill after close", "right after closing");
        let put = self.writer.put(Open::Trunc, &path, &part);
        self.kill(x);
        match put {
            Ok(()) => {
                let id = self.add_write(x, marker, part, Fate::Live(name.clone()));
                self.replaced(x, &name, id, "overwrite killed right after its close");
            }
            Err(e) => self.fail("2", format!("write of {name} on {}: {e}", ENVOYS[x])),
        }
        self.restart(x);
    }

    /// `lockbox stop` on `x`; it is started again a few rounds later. Every
    /// envoy up first shows every name as the model has it, so nothing
    /// exists only on the stopped one.
    fn op_stop(&mut self, x: usize) {
        for y in self.up_envoys() {
            for i in 0..POOL {
                self.await_view(y, &format!("f{i:02}"));
            }
        }
        self.count("stop");
        let back = self.round + 1 + self.rng.below(4);
        eprintln!(
            "round {}: stop {} until round {back}",
            self.round, ENVOYS[x]
        );
        self.node(x).m.e.ok(&["stop"]);
        self.up[x] = false;
        self.down = Some((x, back));
    }

    /// `lockbox lock` and `unlock` on `x`, sometimes with an `O_TRUNC` write
    /// while locked.
    fn op_lock(&mut self, x: usize) {
        let name = self.pool_name();
        self.await_view(x, &name);
        let write = self.rng.chance(50);
        self.count("lock/unlock");
        eprintln!(
            "round {}: lock {}{}",
            self.round,
            ENVOYS[x],
            if write {
                format!(", write {name} while locked")
            } else {
                String::new()
            }
        );
        self.node(x).m.e.ok(&["lock"]);
        if write {
            self.count("write while locked");
            let (marker, part) = self.fresh(x);
            let path = self.node(x).at(&name);
            match self.writer.put(Open::Trunc, &path, &part) {
                Ok(()) => {
                    let id = self.add_write(x, marker, part, Fate::Live(name.clone()));
                    self.replaced(x, &name, id, "overwrite while locked");
                }
                Err(e) => self.fail("2", format!("write of {name} on locked {}: {e}", ENVOYS[x])),
            }
        }
        self.node(x).m.e.unlock();
    }

    fn round(&mut self) {
        if let Some((x, back)) = self.down {
            if self.round >= back {
                eprintln!("round {}: start {}", self.round, ENVOYS[x]);
                self.count("start");
                self.restart(x);
                self.down = None;
            }
        }
        let up = self.up_envoys();
        let x = up[self.rng.below(up.len())];
        let roll = self.rng.below(100);
        match roll {
            0..=35 => self.op_write(x),
            36..=47 => {
                let others: Vec<usize> = up.iter().copied().filter(|&y| y != x).collect();
                let y = others[self.rng.below(others.len())];
                self.op_simultaneous(x, y)
            }
            48..=56 => self.op_rm(x),
            57..=64 => self.op_mv(x, false),
            65..=71 => self.op_mv(x, true),
            72..=76 => self.op_kill_mid_write(x),
            77..=83 => self.op_kill_after_close(x),
            84..=89 if self.down.is_none() => self.op_stop(x),
            84..=89 => self.op_write(x),
            _ => self.op_lock(x),
        }
    }

    // ---- the end ----

    /// Bring every envoy up, write a last file, and wait until every envoy
    /// shows every name as the model has it; each one that does not in time
    /// is a lost write (check 2) or a deleted name back (check 5).
    fn settle_contents(&mut self) {
        if let Some((x, _)) = self.down.take() {
            self.count("start");
            self.restart(x);
        }
        let (marker, part) = self.fresh(0);
        let path = self.node(0).at(LAST);
        self.writer
            .put(Open::Trunc, &path, &part)
            .expect("the last write");
        let id = self.add_write(0, marker, part, Fate::Live(LAST.into()));
        self.at.insert(LAST.into(), id);
        let names: Vec<String> = self
            .at
            .keys()
            .cloned()
            .chain(self.deleted.keys().cloned())
            .collect();
        let _ = wait_until(SETTLE, || {
            (0..3).all(|x| names.iter().all(|n| self.shows(x, n, self.expected(n))))
        });
        for (x, envoy) in ENVOYS.iter().enumerate() {
            for name in &names {
                if self.shows(x, name, self.expected(name)) {
                    continue;
                }
                let got = fs::read(self.node(x).at(name))
                    .ok()
                    .map_or("absent".into(), |b| self.which(&b));
                match self.at.get(name) {
                    Some(&id) => self.fail(
                        "2",
                        format!(
                            "{} is lost on {}: {name} is {got}",
                            self.describe(id),
                            envoy
                        ),
                    ),
                    None => self.fail(
                        "5",
                        format!(
                            "{name}, removed in round {}, is back on {} as {got}",
                            self.deleted[name], envoy
                        ),
                    ),
                }
            }
        }
    }

    /// Check 6: within [`SETTLE`], every envoy sees the others live and no
    /// table differs anywhere, and the envoys' table sizes are equal.
    fn check_tables(&mut self) {
        let lines = |n: &Node| -> Vec<(String, u64, Vec<String>)> {
            let s = n.m.e.status_json();
            s["tables"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|t| {
                            let differs = t["differs_on"]
                                .as_array()
                                .map(|d| {
                                    d.iter()
                                        .filter_map(|v| v.as_str().map(String::from))
                                        .collect()
                                })
                                .unwrap_or_default();
                            (
                                t["table"].as_str().unwrap_or("?").to_string(),
                                t["records"].as_u64().unwrap_or(0),
                                differs,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let agree = || {
            let all: Vec<_> = self.c.nodes.iter().map(lines).collect();
            let live = self.c.nodes.iter().all(|n| {
                n.peers().iter().filter(|(_, s, _)| s == "live").count() == self.c.nodes.len() - 1
            });
            live && !all[0].is_empty()
                && all.iter().all(|t| t.iter().all(|(_, _, d)| d.is_empty()))
                && all.iter().all(|t| {
                    t.iter().map(|(n, r, _)| (n, r)).collect::<Vec<_>>()
                        == all[0].iter().map(|(n, r, _)| (n, r)).collect::<Vec<_>>()
                })
        };
        let start = Instant::now();
        if wait_until(SETTLE, agree).is_ok() {
            eprintln!("tables agreed {:?} after the contents", start.elapsed());
            return;
        }
        let shown: Vec<String> = self
            .c
            .nodes
            .iter()
            .map(|n| format!("{}: {:?} peers {:?}", n.name, lines(n), n.peers()))
            .collect();
        self.fail(
            "6",
            format!(
                "the tables still differ {SETTLE:?} after the contents agreed: {}",
                shown.join("; ")
            ),
        );
    }

    /// Checks 1, 3 and 5 on what each envoy lists: the same names and bytes
    /// everywhere; every file exactly one write's bytes; no name outside
    /// the model but conflict copies of acknowledged writes.
    fn check_listings(&mut self) {
        let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
        for (id, w) in self.writes.iter().enumerate() {
            by_hash.entry(hash(&w.content)).or_default().push(id);
        }
        let mut views = Vec::new();
        for (x, envoy) in ENVOYS.iter().enumerate() {
            let n = self.node(x);
            let files: BTreeMap<String, Vec<u8>> = n
                .listing()
                .into_iter()
                .map(|f| {
                    let b = fs::read(n.at(&f)).unwrap_or_else(|e| {
                        panic!("seed {}: read {f} on {}: {e}", self.seed, envoy)
                    });
                    (f, b)
                })
                .collect();
            views.push(files);
        }
        for x in 1..3 {
            let (a, b) = (&views[0], &views[x]);
            if a.keys().ne(b.keys()) {
                self.fail(
                    "1",
                    format!(
                        "{} lists {:?}, {} lists {:?}",
                        ENVOYS[0],
                        a.keys().collect::<Vec<_>>(),
                        ENVOYS[x],
                        b.keys().collect::<Vec<_>>()
                    ),
                );
            }
            let differ: Vec<&String> = a
                .iter()
                .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
                .map(|(k, _)| k)
                .collect();
            if !differ.is_empty() {
                self.fail(
                    "1",
                    format!("{differ:?} differ between {} and {}", ENVOYS[0], ENVOYS[x]),
                );
            }
        }
        let mut extra = Vec::new();
        for (x, files) in views.iter().enumerate() {
            for (name, bytes) in files {
                let id = by_hash.get(&hash(bytes)).and_then(|ids| {
                    ids.iter()
                        .copied()
                        .find(|&i| self.writes[i].content == *bytes)
                });
                let Some(id) = id else {
                    self.fail(
                        "3",
                        format!(
                            "{name} on {} is torn: {} bytes of no write",
                            ENVOYS[x],
                            bytes.len()
                        ),
                    );
                    continue;
                };
                if self.at.contains_key(name) {
                    continue; // compared with the model by settle_contents
                }
                let is_copy = name.contains(".conflict-");
                match (&self.writes[id].fate, is_copy) {
                    (Fate::Unacked, _) => self.fail(
                        "2",
                        format!(
                            "{name} on {} is {}, never acknowledged",
                            ENVOYS[x],
                            self.describe(id)
                        ),
                    ),
                    (_, true) => {
                        extra.push(format!("{name} on {} ({})", ENVOYS[x], self.describe(id)))
                    }
                    (_, false) => self.fail(
                        "5",
                        format!(
                            "{name} on {} is {}: a name the model does not hold",
                            ENVOYS[x],
                            self.describe(id)
                        ),
                    ),
                }
            }
        }
        if !extra.is_empty() {
            // A copy of a write its replacer had seen: no loss, but a
            // conflict that should not have been; counted in the figures.
            eprintln!("conflict copies the model did not ask for (kept, not lost): {extra:?}");
            let on_first = extra
                .iter()
                .filter(|e| e.contains(&format!(" on {} (", ENVOYS[0])));
            *self.stats.entry("unrequested conflict copies").or_default() += on_first.count();
        }
    }

    /// Check 4: each store holds only age files of mode 0600, its temp
    /// folder empties, and no write's marker is anywhere in HOME but in
    /// the mount (after a positive control of the scan).
    fn check_stores(&mut self) {
        let probe_dir = tempfile::tempdir().expect("tempdir");
        let probe = probe_dir.path().join("probe");
        fs::write(&probe, format!("plain {MARK}probe")).expect("probe");
        assert_eq!(
            files_containing(probe_dir.path(), MARK.as_bytes()),
            [probe.to_string_lossy().into_owned()],
            "the plaintext scan does not find its probe"
        );
        for (x, envoy) in ENVOYS.iter().enumerate() {
            let n = self.node(x);
            let store = n.m.e.store();
            for f in fs::read_dir(&store).expect("store").flatten() {
                let p = f.path();
                let meta = fs::symlink_metadata(&p).expect("stat");
                let head = fs::read(&p)
                    .map(|b| b.starts_with(AGE_MAGIC))
                    .unwrap_or(false);
                if !meta.is_file() || meta.mode() & 0o777 != 0o600 || !head {
                    self.fail(
                        "4",
                        format!(
                            "{} on {}: mode {:o}, age file: {head}",
                            p.display(),
                            envoy,
                            meta.mode() & 0o7777
                        ),
                    );
                }
            }
            let tmp = n.m.tmp();
            let temps = || -> Vec<PathBuf> {
                fs::read_dir(&tmp)
                    .map(|rd| rd.flatten().map(|e| e.path()).collect())
                    .unwrap_or_default()
            };
            if wait_until(Duration::from_secs(10), || temps().is_empty()).is_err() {
                self.fail(
                    "4",
                    format!("left in {}'s temp folder: {:?}", envoy, temps()),
                );
            }
            let found = files_containing(&n.m.e.home, MARK.as_bytes());
            if !found.is_empty() {
                self.fail(
                    "4",
                    format!("plaintext of a write on {}'s disk: {found:?}", envoy),
                );
            }
        }
    }
}

fn hash(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The soak: `LOCKBOX_SOAK_SEED` (default 29) and `LOCKBOX_SOAK_ROUNDS`
/// (default about a minute's worth) choose the run; a failure names the
/// seed, the round and the write, and how to replay it.
#[test]
fn soak() {
    require_fuse!();
    let seed = env_or("LOCKBOX_SOAK_SEED", DEFAULT_SEED);
    let rounds = env_or("LOCKBOX_SOAK_ROUNDS", DEFAULT_ROUNDS);
    eprintln!("soak: LOCKBOX_SOAK_SEED={seed} LOCKBOX_SOAK_ROUNDS={rounds}");
    let started = Instant::now();
    let c = Circle::loopback(&ENVOYS);
    let mut s = Soak {
        seed,
        rounds,
        round: 0,
        c: &c,
        rng: Rng(seed),
        writer: Writer::start(),
        writes: Vec::new(),
        at: BTreeMap::new(),
        deleted: BTreeMap::new(),
        up: [true; 3],
        down: None,
        failures: Vec::new(),
        stats: BTreeMap::new(),
    };
    for r in 1..=rounds {
        s.round = r;
        s.round();
    }
    s.round = rounds + 1;
    let ran = started.elapsed();
    s.settle_contents();
    s.check_tables();
    s.check_listings();
    s.check_stores();
    let acked = s
        .writes
        .iter()
        .filter(|w| !matches!(w.fate, Fate::Unacked))
        .count();
    eprintln!(
        "soak: seed {seed}, {rounds} rounds in {ran:.0?} ({:.0?} in all), {} writes ({acked} \
         acknowledged), {} names at the end; {:?}",
        started.elapsed(),
        s.writes.len(),
        s.at.len(),
        s.stats
    );
    assert!(
        s.failures.is_empty(),
        "soak seed {seed}, {} rounds: {} failure(s):\n{}\nreplay: LOCKBOX_SOAK_SEED={seed} \
         LOCKBOX_SOAK_ROUNDS={} cargo test --test lockbox soak -- --nocapture",
        s.rounds,
        s.failures.len(),
        s.failures.join("\n"),
        s.rounds
    );
}
