//! Comparing the ledger checkpoint a node reports (at renewal, and in checkpoint reports
//! between renewals: `checkpoints`) with the ones it reported before. A node whose operator deletes the ledger (and its `ledger.head`), restores
//! an older copy, or rolls it back and writes on is flagged here even though the node
//! itself cannot tell: the server remembers what it was shown.
//!
//! Each renewal names the ledger (its genesis hash), a fresh signed checkpoint (sequence
//! number, hash, totals) and the last checkpoint a server acknowledged, as the ledger
//! itself records it (`reported` records). So a ledger continues the one the server
//! heard from before exactly when it is the same ledger, never goes back, and names the
//! checkpoint the server holds.

use serde::Serialize;

use super::store::{Sql, StoreError};
use crate::protocol::{LedgerPosition, UsageCheckpoint};

/// What was wrong with a reported ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// Another ledger than before: deleted and started afresh, or swapped.
    Replaced,
    /// Lower sequence number or totals than before: an older copy restored.
    WentBackwards,
    /// Does not continue the checkpoint the server holds: rolled back and written on.
    Forked,
    /// Continues an earlier checkpoint but not the latest one the server holds: a lost
    /// renewal response, or a ledger rolled back to between the two.
    Unconfirmed,
    /// A TPM node counted refused rolled-back node states since it last reported: its
    /// node directory (or `state.json`) was restored from a backup or a snapshot.
    StateRolledBack,
    /// A TPM node's count of refused rolled-back states went missing from its reports,
    /// or went down: its counter was deleted, or `counter.tpm` points elsewhere.
    RollbackCountUnverified,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Replaced => "replaced",
            FindingKind::WentBackwards => "went-backwards",
            FindingKind::Forked => "forked",
            FindingKind::Unconfirmed => "unconfirmed",
            FindingKind::StateRolledBack => "state-rolled-back",
            FindingKind::RollbackCountUnverified => "rollback-count-unverified",
        }
    }
}

/// A finding and what it is about, for `admin usage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    pub detail: String,
}

impl Finding {
    /// Stored as `kind: detail`.
    pub fn render(&self) -> String {
        format!("{}: {}", self.kind.as_str(), self.detail)
    }
}

/// The latest checkpoint the server holds for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub ledger_id: String,
    pub seq: u64,
    pub hash: String,
    pub totals: [u64; 3],
}

fn short(hex_id: &str) -> &str {
    &hex_id[..hex_id.len().min(12)]
}

/// Compare a reported position with the latest one held. `known(seq, hash)` says
/// whether the server holds that checkpoint of this ledger from an earlier renewal.
pub fn compare(
    held: &Held,
    new: &LedgerPosition,
    usage: &UsageCheckpoint,
    known: &mut dyn FnMut(u64, &str) -> Result<bool, StoreError>,
) -> Result<Option<Finding>, StoreError> {
    let finding = |kind, detail: String| Ok(Some(Finding { kind, detail }));
    let ledger_id = hex::encode(new.ledger_id);
    if ledger_id != held.ledger_id {
        return finding(
            FindingKind::Replaced,
            format!(
                "ledger {} is not ledger {} reported before (checkpoint {}): it was deleted and started afresh, or replaced",
                short(&ledger_id),
                short(&held.ledger_id),
                held.seq
            ),
        );
    }
    let totals = [usage.requests, usage.prompt_tokens, usage.completion_tokens];
    if new.seq < held.seq || totals.iter().zip(&held.totals).any(|(n, h)| n < h) {
        return finding(
            FindingKind::WentBackwards,
            format!(
                "checkpoint {} ({} requests) after checkpoint {} ({} requests): an older copy of the ledger was restored",
                new.seq, usage.requests, held.seq, held.totals[0]
            ),
        );
    }
    let hash = hex::encode(new.hash);
    if new.seq == held.seq {
        if hash != held.hash {
            return finding(
                FindingKind::Forked,
                format!("checkpoint {} has another hash than the one reported before: the ledger was rewritten", new.seq),
            );
        }
        return Ok(None);
    }
    let forked = |detail: String| finding(FindingKind::Forked, detail);
    match &new.reported {
        Some(a) if a.seq == held.seq && hex::encode(a.hash) == held.hash => Ok(None),
        Some(a) if a.seq == held.seq => forked(format!(
            "the ledger's checkpoint {} is not the one this server received: it was rolled back and written again",
            a.seq
        )),
        Some(a) if a.seq < held.seq && known(a.seq, &hex::encode(a.hash))? => finding(
            FindingKind::Unconfirmed,
            format!(
                "the ledger names checkpoint {} as last acknowledged, not the later {} this server holds: a lost renewal response, or a ledger rolled back to between them",
                a.seq, held.seq
            ),
        ),
        Some(a) => forked(format!(
            "the ledger names checkpoint {} as last acknowledged, which this server never received: it does not continue checkpoint {}",
            a.seq, held.seq
        )),
        None => forked(format!(
            "the ledger has no record of checkpoint {} that this server received: it was rolled back and written again",
            held.seq
        )),
    }
}

/// The latest checkpoint the database holds for this node, if any.
pub fn held(sql: &mut dyn Sql, node_id: &str) -> Result<Option<Held>, StoreError> {
    let Some(row) = sql.query_opt(
        "SELECT ledger_id, ledger_seq, ledger_hash, requests, prompt_tokens, completion_tokens
         FROM checkpoints WHERE node_id = $1 AND ledger_id IS NOT NULL ORDER BY id DESC LIMIT 1",
        &[node_id.into()],
    )?
    else {
        return Ok(None);
    };
    Ok(Some(Held {
        ledger_id: row.text(0)?,
        seq: row.int(1)?.max(0) as u64,
        hash: row.text(2)?,
        totals: [
            row.int(3)?.max(0) as u64,
            row.int(4)?.max(0) as u64,
            row.int(5)?.max(0) as u64,
        ],
    }))
}

impl Held {
    /// The reported position is exactly this one: same ledger, checkpoint and totals.
    pub fn is(&self, new: &LedgerPosition, usage: &UsageCheckpoint) -> bool {
        self.ledger_id == hex::encode(new.ledger_id)
            && self.seq == new.seq
            && self.hash == hex::encode(new.hash)
            && self.totals == [usage.requests, usage.prompt_tokens, usage.completion_tokens]
    }
}

/// Compare a reported position with `held`, the latest the database holds for this
/// node ([`held`]); `None` when consistent.
pub fn check(
    sql: &mut dyn Sql,
    node_id: &str,
    held: &Held,
    new: &LedgerPosition,
    usage: &UsageCheckpoint,
) -> Result<Option<Finding>, StoreError> {
    let ledger_id = held.ledger_id.clone();
    let mut known = |seq: u64, hash: &str| -> Result<bool, StoreError> {
        Ok(sql
            .query_opt(
                "SELECT 1 FROM checkpoints WHERE node_id = $1 AND ledger_id = $2 AND ledger_seq = $3 AND ledger_hash = $4",
                &[
                    node_id.into(),
                    (&ledger_id).into(),
                    super::store::Value::Int(i64::try_from(seq).unwrap_or(i64::MAX)),
                    hash.into(),
                ],
            )?
            .is_some())
    };
    compare(held, new, usage, &mut known)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::LedgerAnchor;

    fn held() -> Held {
        Held {
            ledger_id: hex::encode([1u8; 32]),
            seq: 10,
            hash: hex::encode([10u8; 32]),
            totals: [5, 50, 60],
        }
    }

    fn report(
        id: u8,
        seq: u64,
        hash: u8,
        requests: u64,
        reported: Option<(u64, u8)>,
    ) -> UsageCheckpoint {
        UsageCheckpoint {
            since: None,
            requests,
            prompt_tokens: requests * 10,
            completion_tokens: requests * 12,
            ledger: Some(LedgerPosition {
                ledger_id: [id; 32],
                seq,
                hash: [hash; 32],
                reported: reported.map(|(seq, h)| LedgerAnchor { seq, hash: [h; 32] }),
            }),
            tpm_rollbacks: None,
        }
    }

    fn kind(usage: UsageCheckpoint) -> Option<FindingKind> {
        // The server holds checkpoints 4 (hash 4) and 10 (hash 10).
        let mut known = |seq: u64, hash: &str| Ok(seq == 4 && hash == hex::encode([4u8; 32]));
        compare(&held(), usage.ledger.as_ref().unwrap(), &usage, &mut known)
            .unwrap()
            .map(|f| f.kind)
    }

    #[test]
    fn continuing_ledgers_pass() {
        assert_eq!(kind(report(1, 10, 10, 5, Some((4, 4)))), None);
        assert_eq!(kind(report(1, 14, 14, 7, Some((10, 10)))), None);
    }

    #[test]
    fn each_break_is_named() {
        use FindingKind::*;
        assert_eq!(kind(report(2, 3, 3, 0, None)), Some(Replaced));
        assert_eq!(kind(report(1, 8, 8, 4, Some((4, 4)))), Some(WentBackwards));
        assert_eq!(
            kind(report(1, 12, 12, 4, Some((10, 10)))),
            Some(WentBackwards)
        );
        assert_eq!(kind(report(1, 10, 11, 5, Some((4, 4)))), Some(Forked));
        assert_eq!(kind(report(1, 14, 14, 7, Some((10, 9)))), Some(Forked));
        assert_eq!(kind(report(1, 14, 14, 7, None)), Some(Forked));
        assert_eq!(kind(report(1, 14, 14, 7, Some((12, 12)))), Some(Forked));
        assert_eq!(kind(report(1, 14, 14, 7, Some((6, 6)))), Some(Forked));
        assert_eq!(kind(report(1, 14, 14, 7, Some((4, 4)))), Some(Unconfirmed));
    }
}
