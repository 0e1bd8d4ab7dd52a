//! Batched record pushes: a burst of deletes (tombstones), resurrects or
//! folder records goes to each peer as one `POST` per table, not one per
//! record.
//!
//! A table's `POST` has always taken a list of records (see
//! `records::encode_list`); the receiver applies it a record at a time, in
//! batches of its own. What a record cost was the request around it: the
//! headers, a stream, a task on each side, and a permit. During an
//! `rm -r` or a `mv` of many files that was most of what the mesh spent.
//! So each (peer, table) pair has a queue, as versions do (`batch`): the
//! first record goes alone at once (no added latency), and whatever
//! queues while a request is in flight goes next, as one list of at most
//! [`MAX_RECORDS`]. Nothing changes on the wire: an envoy of any protocol
//! 2 release takes these lists.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::replica::Table;

use super::Mesh;

/// Most records in one request (the receiver applies 256 per blocking
/// task).
pub const MAX_RECORDS: usize = 256;

/// The records waiting to be pushed, per peer and table, and whether a
/// sender runs for each.
#[derive(Debug, Default)]
pub(super) struct RecordQueues(HashMap<(SocketAddr, Table), Waiting>);

#[derive(Debug, Default)]
struct Waiting {
    records: Vec<Vec<u8>>,
    sending: bool,
}

impl RecordQueues {
    /// Queue `record` for `to`; whether a sender must be started for it.
    fn push(&mut self, to: (SocketAddr, Table), record: Vec<u8>) -> bool {
        let w = self.0.entry(to).or_default();
        w.records.push(record);
        !std::mem::replace(&mut w.sending, true)
    }

    /// The next records for `to`, oldest first, at most [`MAX_RECORDS`];
    /// none when its queue is empty, and its sender then stops.
    fn next(&mut self, to: (SocketAddr, Table)) -> Vec<Vec<u8>> {
        let Some(w) = self.0.get_mut(&to) else {
            return Vec::new();
        };
        if w.records.is_empty() {
            self.0.remove(&to);
            return Vec::new();
        }
        let n = w.records.len().min(MAX_RECORDS);
        w.records.drain(..n).collect()
    }
}

impl Mesh {
    /// Push the signed `record` of `table` to `addr`: at once if nothing
    /// of that table is in flight to it, else with the next list.
    pub(super) fn queue_record(self: &Arc<Self>, addr: SocketAddr, table: Table, record: Vec<u8>) {
        let start = match self.record_queues.lock() {
            Ok(mut q) => q.push((addr, table), record),
            Err(_) => return,
        };
        if start {
            tokio::spawn(self.clone().send_records(addr, table));
        }
    }

    /// Push what is queued for `addr` and `table` until none is left.
    async fn send_records(self: Arc<Self>, addr: SocketAddr, table: Table) {
        loop {
            let records = match self.record_queues.lock() {
                Ok(mut q) => q.next((addr, table)),
                Err(_) => return,
            };
            if records.is_empty() {
                return;
            }
            let _permit = self.transfers.acquire().await;
            self.push_records(addr, table, &records).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_record_starts_a_sender_and_the_rest_wait_for_it() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut q = RecordQueues::default();
        assert!(q.push((a, Table::Tombstones), b"1".to_vec()));
        assert!(!q.push((a, Table::Tombstones), b"2".to_vec()));
        // Another table or another peer has a queue of its own.
        assert!(q.push((a, Table::Resurrects), b"r".to_vec()));
        assert!(q.push((b, Table::Tombstones), b"x".to_vec()));
        assert_eq!(
            q.next((a, Table::Tombstones)),
            vec![b"1".to_vec(), b"2".to_vec()]
        );
        // Queued while the first list was in flight: the sender takes it.
        assert!(!q.push((a, Table::Tombstones), b"3".to_vec()));
        assert_eq!(q.next((a, Table::Tombstones)), vec![b"3".to_vec()]);
        // Empty: the sender stops, and the next record starts one again.
        assert!(q.next((a, Table::Tombstones)).is_empty());
        assert!(q.push((a, Table::Tombstones), b"4".to_vec()));
    }

    #[test]
    fn a_list_holds_at_most_max_records_in_order() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut q = RecordQueues::default();
        for i in 0..MAX_RECORDS + 3 {
            q.push((a, Table::Folders), i.to_string().into_bytes());
        }
        let first = q.next((a, Table::Folders));
        assert_eq!(first.len(), MAX_RECORDS);
        assert_eq!(first[0], b"0");
        assert_eq!(
            first[MAX_RECORDS - 1],
            (MAX_RECORDS - 1).to_string().into_bytes()
        );
        let rest = q.next((a, Table::Folders));
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[2], (MAX_RECORDS + 2).to_string().into_bytes());
        assert!(q.next((a, Table::Folders)).is_empty());
    }
}
