//! The node's usage ledger: an append-only file of hash-chained records, one per
//! request, with checkpoints signed by the node key every N records or T seconds and at
//! shutdown. An auditor checks it with the node's public key alone
//! (`leasehold audit verify`).
//!
//! - [`record`]: the line format (hash chain, signed checkpoints).
//! - [`verify`]: checking a ledger and naming the first thing wrong with it.
//!
//! Durability: one writer thread appends and `fdatasync`s in groups; [`Ledger::append`]
//! returns only once its record is on disk, and the server answers a request only
//! after that. A crash can therefore leave at most an incomplete last line (no record of
//! an answered request): at the next start that torn tail is moved to a side file and a
//! `recovered` record names its size and hash, so it is neither accepted nor silently
//! dropped.

pub mod attestation;
pub mod audit;
pub mod head;
pub mod prompt_hash;
pub mod record;
pub mod report;
pub mod verify;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use crate::crypto::sha256;
use crate::fsutil::{self, FsError, Replace};
use crate::node::{clock, NodeIdentity};
use record::{Entry, RecordBody, Totals};

/// The ledger's file name in the node directory.
pub const LEDGER_FILE: &str = "usage.ledger";

/// When to sign a checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    pub every_records: u64,
    pub every: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every_records: 100,
            every: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the usage ledger {path} is damaged ({problem}); the node will not add to it. Check it with `leasehold audit verify`, and restore it from a backup or ask the vendor how to proceed")]
    Damaged { path: String, problem: String },
    #[error("the usage ledger {path} was {what}: this node last signed record {seq} into it (see {head}). Restore the ledger from a backup; a node does not start a new ledger over an old one")]
    RolledBack {
        path: String,
        what: &'static str,
        seq: u64,
        head: String,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("cannot write the usage ledger: {0}")]
    Write(String),
}

enum Op {
    Append(Entry, oneshot::Sender<Result<u64, String>>),
    Checkpoint(oneshot::Sender<Result<Position, String>>),
    Close(oneshot::Sender<()>),
}

/// Where the ledger stands at a signed checkpoint (what a renewal reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The genesis record's hash and time: which ledger this is, and since when.
    pub ledger_id: [u8; 32],
    pub since: DateTime<Utc>,
    /// The checkpoint's sequence number and hash, and the totals it signs.
    pub seq: u64,
    pub hash: [u8; 32],
    pub totals: Totals,
    /// The last checkpoint a license server acknowledged.
    pub reported: Option<(u64, [u8; 32])>,
}

/// What opening found.
#[derive(Debug, Clone)]
pub struct Opened {
    pub records: u64,
    pub totals: Totals,
    /// A torn tail moved aside: (bytes, where).
    pub recovered: Option<(u64, PathBuf)>,
    /// The ledger's complete records as read and verified here, so the caller need not
    /// read the file again (the cap windows are counted from them).
    pub bytes: Vec<u8>,
}

/// An open ledger; appends go through its writer thread.
pub struct Ledger {
    ops: mpsc::Sender<Op>,
    path: PathBuf,
    durable: Arc<Mutex<Head>>,
    /// Operations sent to the writer and not answered yet.
    pending: std::sync::atomic::AtomicU64,
}

/// The last record on disk: its sequence number and hash, and the totals up to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
    pub totals: Totals,
}

struct Writer {
    file: File,
    /// Signs checkpoints and the head (the node's signer, shared: no key bytes copied).
    identity: NodeIdentity,
    /// The checkpoint to record in `ledger.head` once it is on disk.
    pending_head: Option<(u64, [u8; 32])>,
    durable: Arc<Mutex<Head>>,
    seq: u64,
    head: [u8; 32],
    totals: Totals,
    genesis: ([u8; 32], DateTime<Utc>),
    last_checkpoint: Option<(u64, [u8; 32])>,
    reported: Option<(u64, [u8; 32])>,
    since_checkpoint: u64,
    last_checkpoint_at: Instant,
    /// The newest record time written: the next one is never earlier.
    last_at: DateTime<Utc>,
    policy: CheckpointPolicy,
    failed: Option<String>,
}

impl Writer {
    fn push(&mut self, out: &mut String, entry: Entry) -> u64 {
        self.seq += 1;
        if let Err(e) = self.totals.add(&entry) {
            // Only reachable from a ledger verified at open, so never in practice; stop
            // adding rather than sign totals that are not the records' sum.
            self.failed.get_or_insert_with(|| e.to_string());
        }
        let checkpoint = matches!(entry, Entry::Checkpoint { .. });
        if let Entry::Reported { seq, hash } = &entry {
            self.reported = Some((*seq, *hash));
        }
        // Record times never go backwards, whatever the wall clock does.
        self.last_at = self.last_at.max(clock::system_now());
        let body = RecordBody {
            seq: self.seq,
            prev: self.head,
            at: self.last_at,
            entry,
        };
        let (line, hash) = record::encode(&body, Some(self.identity.signer()));
        out.push_str(&line);
        self.head = hash;
        if checkpoint {
            self.last_checkpoint = Some((self.seq, hash));
            self.since_checkpoint = 0;
            self.last_checkpoint_at = Instant::now();
        } else {
            self.since_checkpoint += 1;
        }
        self.seq
    }

    fn checkpoint(&mut self, out: &mut String) {
        let totals = self.totals;
        let seq = self.push(out, Entry::Checkpoint { totals });
        self.pending_head = Some((seq, self.head));
    }

    fn position(&self) -> Option<Position> {
        let (seq, hash) = self.last_checkpoint?;
        Some(Position {
            ledger_id: self.genesis.0,
            since: self.genesis.1,
            seq,
            hash,
            totals: self.totals,
            reported: self.reported,
        })
    }

    fn flush(&mut self, text: &str) -> Result<(), String> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self
            .file
            .write_all(text.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(|e| e.to_string());
        match &result {
            Err(e) => {
                // The file may now end in a partial line; stop adding to it.
                self.failed = Some(e.clone());
            }
            Ok(()) => {
                *self.durable.lock().unwrap() = Head {
                    seq: self.seq,
                    hash: self.head,
                    totals: self.totals,
                };
                if let Some((seq, hash)) = self.pending_head.take() {
                    if let Err(e) = head::write(&self.identity, seq, hash, clock::system_now()) {
                        tracing::error!("cannot record the ledger head: {e}");
                    }
                }
            }
        }
        result
    }

    fn run(mut self, ops: mpsc::Receiver<Op>) {
        loop {
            let due = self
                .policy
                .every
                .saturating_sub(self.last_checkpoint_at.elapsed());
            // Nothing to checkpoint: sleep until the next operation.
            let wait = if self.since_checkpoint == 0 {
                Duration::from_secs(3600)
            } else {
                due.max(Duration::from_millis(10))
            };
            let first = match ops.recv_timeout(wait) {
                Ok(op) => Some(op),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.close();
                    return;
                }
            };
            let mut batch: Vec<Op> = first.into_iter().collect();
            while let Ok(op) = ops.try_recv() {
                batch.push(op);
            }
            let mut text = String::new();
            let mut replies = Vec::new();
            let mut positions = Vec::new();
            let mut closing = None;
            for op in batch {
                match op {
                    Op::Append(entry, reply) => {
                        let seq = self.push(&mut text, entry);
                        replies.push((reply, seq));
                    }
                    Op::Checkpoint(reply) => positions.push(reply),
                    Op::Close(done) => closing = Some(done),
                }
            }
            let due = (self.since_checkpoint > 0
                && (self.since_checkpoint >= self.policy.every_records
                    || self.last_checkpoint_at.elapsed() >= self.policy.every
                    || closing.is_some()
                    || !positions.is_empty()))
                || (!positions.is_empty() && self.last_checkpoint.is_none());
            if due {
                self.checkpoint(&mut text);
            }
            let result = if text.is_empty() {
                Ok(())
            } else {
                self.flush(&text)
            };
            if let Err(e) = &result {
                tracing::error!(
                    "cannot write the usage ledger: {e}; requests are refused until it is fixed"
                );
            }
            for (reply, seq) in replies {
                let _ = reply.send(result.clone().map(|_| seq));
            }
            for reply in positions {
                let position = result.clone().and_then(|()| {
                    self.position()
                        .ok_or_else(|| "the ledger has no checkpoint".to_string())
                });
                let _ = reply.send(position);
            }
            if let Some(done) = closing {
                let _ = done.send(());
                return;
            }
        }
    }

    fn close(&mut self) {
        if self.since_checkpoint > 0 {
            let mut text = String::new();
            self.checkpoint(&mut text);
            let _ = self.flush(&text);
        }
    }
}

fn open_append(path: &Path) -> Result<File, LedgerError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| LedgerError::Fs(FsError::io(path, e)))
}

impl Ledger {
    /// Open the ledger at `path` (creating it), check it with the node's key, move a
    /// torn tail aside, and start the writer.
    pub fn open(
        path: &Path,
        identity: &NodeIdentity,
        policy: CheckpointPolicy,
    ) -> Result<(Ledger, Opened), LedgerError> {
        let public = identity.public();
        let node_id = public.node_id();
        let head_path = identity.dir().join(head::HEAD_FILE);
        let recorded = head::read(identity).map_err(|problem| LedgerError::Damaged {
            path: head_path.display().to_string(),
            problem,
        })?;
        let rolled_back = |what: &'static str, seq: u64| LedgerError::RolledBack {
            path: path.display().to_string(),
            what,
            seq,
            head: head_path.display().to_string(),
        };
        if !path.exists() {
            if let Some(h) = &recorded {
                return Err(rolled_back("deleted", h.seq));
            }
            let genesis = RecordBody {
                seq: 0,
                prev: [0; 32],
                at: clock::system_now(),
                entry: Entry::Genesis {
                    node_id: node_id.clone(),
                },
            };
            let (line, _) = record::encode(&genesis, None);
            fsutil::write_atomic(path, line.as_bytes(), fsutil::SECRET_MODE, Replace::Never)?;
        }
        let file = open_append(path)?;
        if let Err(e) = file.try_lock() {
            return Err(LedgerError::Write(match e {
                std::fs::TryLockError::WouldBlock => format!(
                    "the usage ledger {} is in use by another leasehold process; one node directory serves one process at a time (or give each its own --ledger)",
                    path.display()
                ),
                std::fs::TryLockError::Error(e) => {
                    format!("cannot lock the usage ledger {}: {e}", path.display())
                }
            }));
        }
        let mut bytes = std::fs::read(path).map_err(|e| LedgerError::Fs(FsError::io(path, e)))?;
        let (summary, problem) = verify::verify(&bytes, &public.signing_key, &node_id);
        let mut recovered = None;
        match problem {
            None => {}
            Some(verify::Problem::Truncated { bytes: torn, .. }) => {
                let tail = &bytes[summary.valid_len as usize..];
                let mut side = path.as_os_str().to_owned();
                side.push(format!(".torn-{}", clock::system_now().timestamp()));
                let side = PathBuf::from(side);
                fsutil::write_atomic(&side, tail, fsutil::SECRET_MODE, Replace::Never)?;
                file.set_len(summary.valid_len)
                    .and_then(|_| file.sync_all())
                    .map_err(|e| LedgerError::Fs(FsError::io(path, e)))?;
                tracing::warn!(
                    "the usage ledger {} ended in an incomplete record ({torn} bytes, a write cut by a crash); moved to {} and recorded",
                    path.display(),
                    side.display()
                );
                recovered = Some((torn, side, sha256(&[tail])));
            }
            Some(p) => {
                return Err(LedgerError::Damaged {
                    path: path.display().to_string(),
                    problem: p.explain(),
                })
            }
        }
        if let Some(h) = &recorded {
            // The head always names a checkpoint.
            let found = summary.checkpoint_hashes.iter().find(|c| c.0 == h.seq);
            match found {
                Some(c) if c.1 == h.hash => {}
                Some(_) => return Err(rolled_back("replaced by another history", h.seq)),
                None if summary.head_seq >= h.seq => {
                    return Err(rolled_back("replaced by another history", h.seq))
                }
                None => return Err(rolled_back("rolled back or truncated", h.seq)),
            }
        }
        let genesis = summary.genesis.ok_or_else(|| LedgerError::Damaged {
            path: path.display().to_string(),
            problem: "it has no genesis record".into(),
        })?;
        let durable = Arc::new(Mutex::new(Head {
            seq: summary.head_seq,
            hash: summary.head_hash,
            totals: summary.totals,
        }));
        let mut writer = Writer {
            file,
            identity: identity.clone(),
            pending_head: None,
            durable: durable.clone(),
            seq: summary.head_seq,
            head: summary.head_hash,
            totals: summary.totals,
            genesis,
            last_checkpoint: summary.last_checkpoint,
            reported: summary.reported,
            since_checkpoint: 0,
            last_checkpoint_at: Instant::now(),
            last_at: summary.last_at.unwrap_or(DateTime::<Utc>::MIN_UTC),
            policy,
            failed: None,
        };
        if let Some((torn, side, digest)) = &recovered {
            let mut text = String::new();
            writer.push(
                &mut text,
                Entry::Recovered {
                    torn_bytes: *torn,
                    torn_sha256: *digest,
                    moved_to: side.display().to_string(),
                },
            );
            writer.flush(&text).map_err(LedgerError::Write)?;
        }
        bytes.truncate(summary.valid_len as usize);
        let opened = Opened {
            records: summary.records,
            totals: summary.totals,
            recovered: recovered.map(|(n, side, _)| (n, side)),
            bytes,
        };
        let (ops, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("leasehold-ledger".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| LedgerError::Write(format!("cannot start the ledger thread: {e}")))?;
        Ok((
            Ledger {
                ops,
                path: path.to_path_buf(),
                durable,
                pending: std::sync::atomic::AtomicU64::new(0),
            },
            opened,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last record on disk.
    pub fn head(&self) -> Head {
        *self.durable.lock().unwrap()
    }

    /// Send `op` to the writer and wait for its answer.
    async fn call<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Op,
    ) -> Result<T, LedgerError> {
        use std::sync::atomic::Ordering;
        let (reply, done) = oneshot::channel();
        self.ops
            .send(op(reply))
            .map_err(|_| LedgerError::Write("the ledger is closed".into()))?;
        self.pending.fetch_add(1, Ordering::Relaxed);
        let answer = done.await;
        self.pending.fetch_sub(1, Ordering::Relaxed);
        answer
            .map_err(|_| LedgerError::Write("the ledger thread stopped".into()))?
            .map_err(LedgerError::Write)
    }

    /// Operations waiting for the writer (records not yet durable).
    pub fn pending(&self) -> u64 {
        self.pending.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Append a record; resolves once it is durable, with its sequence number.
    pub async fn append(&self, entry: Entry) -> Result<u64, LedgerError> {
        self.call(|reply| Op::Append(entry, reply)).await
    }

    /// Sign a checkpoint now (unless the last record is one) and say where the ledger
    /// stands: what a renewal reports to the license server.
    pub async fn checkpoint(&self) -> Result<Position, LedgerError> {
        self.call(Op::Checkpoint).await
    }

    /// Sign a final checkpoint and stop the writer.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.ops.send(Op::Close(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// The time of the newest complete record in the ledger at `path` (`None` when there
/// is no ledger), read from its tail only. A trusted-time floor at start: `serve`
/// verifies the whole chain right after, so an edited tail does not get far.
pub fn newest_record_time(path: &Path) -> Result<Option<DateTime<Utc>>, FsError> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 64 * 1024;
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FsError::io(path, e)),
    };
    let len = file.metadata().map_err(|e| FsError::io(path, e))?.len();
    let start = len.saturating_sub(TAIL);
    file.seek(SeekFrom::Start(start))
        .map_err(|e| FsError::io(path, e))?;
    let mut tail = Vec::with_capacity((len - start) as usize);
    file.take(TAIL)
        .read_to_end(&mut tail)
        .map_err(|e| FsError::io(path, e))?;
    // Complete lines only: drop a torn last line, and a partial first one.
    let end = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let begin = if start == 0 {
        0
    } else {
        tail.iter().position(|&b| b == b'\n').map_or(end, |i| i + 1)
    };
    Ok(record::each(&tail[begin.min(end)..end])
        .flatten()
        .map(|p| p.body.at)
        .max())
}
