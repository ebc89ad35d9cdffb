//! The `leasehold` command line. Each command is a thin layer over the library: parse
//! flags, call the module that does the work, print the outcome, choose the exit code.

mod audit_cmds;
pub(crate) mod config;
pub mod exit;
mod generated;
pub(crate) mod inspect;
mod node_cmds;
mod progress;
mod prompt_hash;
#[cfg(feature = "inference")]
mod runtime_cmds;
mod server_cmds;
mod vendor;
#[cfg(feature = "inference")]
mod watermark_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::node::hardware::ComponentKind;

/// A command's outcome: an exit code, or an error to print (exit 1).
pub type Outcome = anyhow::Result<u8>;

#[derive(Parser, Debug)]
#[command(
    name = "leasehold",
    version,
    about = "Time-limited, hardware-bound licenses for sealed LLM weights",
    long_about = "leasehold seals GGUF models, issues Ed25519-signed licenses bound to one machine \
and a validity window, and checks them.\n\n\
Vendor:   keygen, seal, issue, certify-issuer, license-server, admin\n\
Operator: enroll, fingerprint, check, serve, run, status, renew, config check\n\
Auditor:  audit verify | report | verify-attestation | prompt-hash, watermark detect\n\
Anyone:   inspect, completions, man\n\n\
Quick start (demo root, this machine):\n  \
leasehold enroll --node-dir node --out node.enroll\n  \
leasehold seal model.gguf --model-id demo --out demo.sealed --key-out demo.key\n  \
leasehold issue --key keys/demo/root.key --enrollment node.enroll --sealed demo.sealed \\\n      \
--content-key demo.key --licensee 'Example Org' --expires +30d --out demo.license\n  \
leasehold check --license demo.license --sealed demo.sealed --node-dir node",
    after_help = exit::TABLE
)]
pub struct Cli {
    /// Log lines as text for people, or as JSON objects (one per line) for collectors.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "LEASEHOLD_LOG_FORMAT",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write leasehold.1 and one page per command (leasehold-serve.1, …) into this
    /// directory instead of printing leasehold.1.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an Ed25519 key pair (root or issuer): PREFIX.key (secret, 0600) and PREFIX.pub.
    Keygen(KeygenArgs),
    /// Encrypt a GGUF model into a sealed container and write its content key.
    Seal(SealArgs),
    /// Sign a license for an enrolled node and a sealed model.
    Issue(IssueArgs),
    /// Root-sign a certificate that lets an issuer key sign licenses within a scope.
    CertifyIssuer(CertifyIssuerArgs),
    /// Create this node's identity (once) and write an enrollment for the vendor.
    Enroll(EnrollArgs),
    /// Show the hardware components this machine would be bound by.
    Fingerprint(FingerprintArgs),
    /// Verify a license and print what it grants and its verdict for this machine now.
    #[command(after_help = exit::TABLE)]
    Inspect(InspectArgs),
    /// Dry run of everything `serve` does before loading: verify, match, unwrap, decrypt, hash.
    #[command(after_help = exit::TABLE)]
    Check(CheckArgs),
    /// Decrypt the model into memory and serve the OpenAI-compatible API until the license lapses.
    #[cfg(feature = "inference")]
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// One-shot generation (--prompt) or an interactive terminal chat (--chat).
    #[cfg(feature = "inference")]
    #[command(after_help = exit::TABLE)]
    Run(RunArgs),
    /// Show a running node's license state (exit 0 serving, 10 grace, 12 lapsed).
    Status(StatusArgs),
    /// Air-gapped renewal: write a signed request file, or take in the response file.
    #[command(after_help = RENEW_HELP)]
    Renew(RenewArgs),
    /// Run the license server: enrollments, approvals, short leases, revocation.
    #[command(after_help = LICENSE_SERVER_HELP)]
    LicenseServer(LicenseServerArgs),
    /// Administer a license server: models, entitlements, approvals, revocation, usage.
    Admin(AdminArgs),
    /// Auditor tools: check a node's usage ledger with public keys only.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The license-mandated text watermark: find it in a text.
    #[cfg(feature = "inference")]
    #[command(subcommand)]
    Watermark(WatermarkCommand),
    /// Print a shell completion script (e.g. `leasehold completions bash > /etc/bash_completion.d/leasehold`).
    Completions(CompletionsArgs),
    /// Print the man page, or write all of them with --out-dir.
    Man(ManArgs),
    /// Config files for `serve` and `license-server`.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a config file: tables, keys and values, with line numbers (exit 0 valid, 2 not).
    #[command(after_help = CONFIG_HELP)]
    Check(ConfigCheckArgs),
}

const CONFIG_HELP: &str = "\
A config file has a [serve] and/or a [license-server] table; keys are the command's long
flag names, values what the flag takes (true for a switch, an array for a repeated flag):

  [serve]
  license = \"/var/lib/leasehold/node.license\"
  sealed = \"/var/lib/leasehold/model.sealed\"
  node-dir = \"/var/lib/leasehold/node\"
  listen = \"0.0.0.0:8080\"
  parallel = 8

Precedence: command-line flag > environment (LEASEHOLD_LISTEN, LEASEHOLD_NODE_DIR, ...)
> config file (--config FILE or LEASEHOLD_CONFIG) > built-in default.";

#[derive(Args, Debug)]
pub struct ConfigCheckArgs {
    /// The config file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum WatermarkCommand {
    /// Is FILE text generated under a watermarked license? Reports the keyed counts,
    /// z-score, exact p-value and the license (exit 0 watermark found, 24 not found).
    #[command(after_help = WATERMARK_HELP)]
    Detect(WatermarkDetectArgs),
}

const WATERMARK_HELP: &str = "\
Two ways to hold the license's watermark key:

  On the node (the key is unwrapped with the node's key, the vocabulary read from the
  sealed model in memory):
    leasehold watermark detect --license node.license --node-dir node --sealed m.sealed answer.txt

  At the vendor (the key is derived again from the key that signed the license; give
  every license that might have produced the text, or a directory of them, and the
  detector names the one whose watermark it finds):
    leasehold watermark detect --vendor-key issuer.key --model plain.gguf \\
        --license licenses/ answer.txt

The text is tokenized with the model's vocabulary and scored under each license's key
with the license's scheme. Each token after the first `context` ones counts once (kgw:
each distinct pair of previous tokens and token; tournament: each distinct context).
kgw: a token is green or not, about gamma of them are green without the watermark.
tournament: a token has depth g-values (keyed coins), half of them 1 without the
watermark. The p-value is the exact binomial chance of at least that many green tokens
(g-values of 1) in text written without the key. The verdict is \"watermarked\" when
the smallest p-value, times the number of licenses tried, is below --max-p (default
1e-4). Greedy (temperature 0) answers carry no tournament watermark: a distortion-free
scheme cannot change a deterministic choice. Short texts (under about 25
tokens) cannot carry enough evidence either way. FILE - reads standard input.";

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("holder").required(true).args(["node_dir", "vendor_key"])))]
pub struct WatermarkDetectArgs {
    /// The text to test (- for standard input).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The license(s) that may have produced the text; repeatable; a directory means
    /// every *.license file in it. On the node, exactly one.
    #[arg(long = "license", value_name = "X.license", required = true)]
    pub licenses: Vec<PathBuf>,
    /// On the node: the node directory (its key unwraps the license's watermark key).
    #[arg(long, value_name = "DIR", requires = "sealed")]
    pub node_dir: Option<PathBuf>,
    /// On the node: the sealed model (its vocabulary tokenizes the text).
    #[arg(long, value_name = "M.sealed", requires = "node_dir")]
    pub sealed: Option<PathBuf>,
    /// At the vendor: the secret key that signed the license(s) (root or issuer).
    #[arg(long, value_name = "KEY", requires = "model", conflicts_with_all = ["node_dir", "sealed"])]
    pub vendor_key: Option<PathBuf>,
    /// At the vendor: the plain GGUF model (its vocabulary tokenizes the text).
    #[arg(long, value_name = "M.gguf", requires = "vendor_key")]
    pub model: Option<PathBuf>,
    /// The verdict is "watermarked" when the p-value (times the number of licenses
    /// tried) is below this.
    #[arg(long, value_name = "P", default_value_t = 1e-4)]
    pub max_p: f64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify a usage ledger: hash chain, order, checkpoint signatures (exit 0 intact, 23 damaged).
    #[command(
        after_help = "Names the first bad record and what is wrong: edited, deleted, reordered, truncated,\nforked, bad checkpoint signature. Needs only the node's public key (node.pub in the node\ndirectory) or its enrollment file."
    )]
    Verify(AuditVerifyArgs),
    /// Requests and tokens per period, license, model and client key, from a ledger.
    Report(AuditReportArgs),
    /// Check a node's signed attestation (from GET /v1/license/attestation) offline.
    VerifyAttestation(VerifyAttestationArgs),
    /// The salted hash of a prompt (nodes run with --ledger-prompt-hash), and which
    /// ledger records carry it (exit 0 found or no ledger given, 1 not found).
    #[command(
        after_help = "Needs the node's secret salt (NODE_DIR/ledger.salt), so only the operator, or someone\nthe operator hands it to, can tell which requests carried a prompt. --chat takes the\nrequest's messages as a JSON array of {\"role\", \"content\"} objects (content as text)."
    )]
    PromptHash(PromptHashArgs),
    /// Write an audit answer for an air-gapped node: its ledger records of a period under
    /// a header signed by the node key, for the vendor's `admin audit import`.
    #[command(
        after_help = "Run on the node (it needs the node key). The answer holds the usage ledger from its genesis\nrecord to the first signed checkpoint dated at or after --to (never prompts: the ledger\nholds none). A serving node signs a checkpoint every minute and at shutdown. Exit 0 written,\n1 no checkpoint after --to yet, 23 the ledger is damaged."
    )]
    Export(AuditExportArgs),
}

#[derive(Args, Debug)]
pub struct AuditExportArgs {
    /// The node directory (its key signs the answer; its usage.ledger is read).
    #[arg(long, value_name = "DIR")]
    pub node_dir: PathBuf,
    /// Start of the period (RFC 3339, or -90d).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub from: String,
    /// End of the period (records before it).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub to: String,
    /// The audit answered (from the vendor); without it the server takes the open audit
    /// of the node's organization whose period the answer covers.
    #[arg(long, value_name = "ID")]
    pub audit: Option<String>,
    /// Where to write the answer.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("prompt").required(true).args(["text", "chat"])))]
pub struct PromptHashArgs {
    /// The salt file (NODE_DIR/ledger.salt).
    #[arg(long, value_name = "FILE")]
    pub salt: PathBuf,
    /// A completions prompt.
    #[arg(long, value_name = "TEXT")]
    pub text: Option<String>,
    /// A chat request's messages (JSON array).
    #[arg(long, value_name = "FILE.json")]
    pub chat: Option<PathBuf>,
    /// A ledger to search for records with this prompt.
    #[arg(long, value_name = "LEDGER")]
    pub ledger: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyAttestationArgs {
    /// The attestation file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub key: NodeKeyArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub use crate::ledger::report::Period;

/// Output format of `audit report`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Table,
    Json,
    Csv,
}

#[derive(Args, Debug)]
pub struct AuditReportArgs {
    /// The ledger file.
    #[arg(value_name = "LEDGER")]
    pub ledger: PathBuf,
    /// Only records at or after this time (RFC 3339, or -30d).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// Only records before this time.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub to: Option<String>,
    /// Group by UTC day, month or quarter.
    #[arg(long, value_enum, default_value = "month")]
    pub by: Period,
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,
}

/// The node key an auditor checks against.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct NodeKeyArgs {
    /// The node's public signing key (NODE_DIR/node.pub).
    #[arg(long, value_name = "NODE.pub")]
    pub node_pub: Option<PathBuf>,
    /// The node's enrollment (carries its public key).
    #[arg(long, value_name = "NODE.enroll")]
    pub enrollment: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AuditVerifyArgs {
    /// The ledger file (NODE_DIR/usage.ledger on the node).
    #[arg(value_name = "LEDGER")]
    pub ledger: PathBuf,
    #[command(flatten)]
    pub key: NodeKeyArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

const RENEW_HELP: &str = "\
For nodes that cannot reach the license server:
  1. on the node:      leasehold renew --node-dir DIR --license X.license --request-out req.json
  2. at the vendor:    leasehold admin --server URL --token-file F renew --request req.json --response-out resp.json
  3. on the node:      leasehold renew --node-dir DIR --license X.license --response resp.json
Step 3 checks the response (signed by a trusted issuer, for this node, answering the
request of step 1) and writes the renewed license to X.license atomically; a running
`serve` takes it over on SIGHUP.

Exit codes: 0 done; 1 error; 22 the license server refused (revoked, ended, denied).";

const LICENSE_SERVER_HELP: &str = "\
The server signs with an issuer key that the vendor's root certified:
  leasehold keygen --out issuer
  leasehold certify-issuer --root root.key --issuer-pub issuer.pub --org 'Example Org' \\
      --model demo --valid-until +365d --max-lease 7d --out issuer.cert
  leasehold license-server --issuer-key issuer.key --issuer-cert issuer.cert \\
      --db sqlite:/var/lib/leasehold/server.db --listen 127.0.0.1:8443 --admin-token-file admin.token

Databases: sqlite:PATH (embedded, WAL, group commit) or postgres://USER:PASS@HOST/DB
(several replicas behind a load balancer may share one database).

Node API: POST /v1/enrollments, POST /v1/renewals, GET /health. Admin API under /admin
(Bearer token): use `leasehold admin`. Every node message is signed, so plain HTTP
cannot forge or replay them; use --tls-cert/--tls-key (rustls) on production listeners
for privacy and to protect the admin token. Clients (nodes, `admin`) trust the system's
CA roots plus the PEM file named by LEASEHOLD_TLS_CA.";

#[cfg(feature = "inference")]
const SERVE_HELP: &str = "\
API (OpenAI-compatible):
  POST /v1/chat/completions   chat, streamed with \"stream\": true (SSE)
  POST /v1/completions        raw text completion
  GET  /v1/models             the served model
  GET  /v1/license            license state: phase (serving, grace, lapsed), seconds_left, caps
  GET  /health                200 while serving, 503 once lapsed
  POST /admin/license         body: a renewed license file (needs the admin token)

Lapse and renewal: at expiry the node keeps serving through the grace period (header
x-leasehold-license-phase: grace); then new requests get HTTP 403 (code license_expired),
running streams end with an error event, and the weights are wiped from memory. A renewed
license (same node and model, higher serial) brings service back without a restart: replace
the license file and send SIGHUP, or POST it to /admin/license.

With --license-server URL the node fetches its first license (after `leasehold enroll
--server URL ...` and the vendor's approval), renews at about half of each lease, retries
with backoff while the server is unreachable, and lapses at once if the license is revoked.

Memory: llama.cpp's CPU kernels repack some tensor types (Q4_0, Q4_K, IQ4_NL on x86)
into buffers of their own; the decrypted pages those copies replace are released after
loading, so the weights are held once (the log says how much).

Environment:
  LEASEHOLD_CPU_KERNELS=NAME  load this CPU-kernel module (e.g. haswell) instead of the best
  LEASEHOLD_LOG=debug         more logging (LEASEHOLD_LOG_FORMAT=json for JSON lines)

Exit codes: 0 clean shutdown; 1 error; 11-18, 20, 21 refused at start (as for check);
12 lapsed with --exit-on-lapse; 22 the license server refused a license; 23 the usage
ledger is damaged, deleted or rolled back (NODE_DIR/ledger.head remembers its last
signed checkpoint); 25 llama.cpp's libraries or CPU kernels are not this build's.";

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Output prefix: writes PREFIX.key and PREFIX.pub; refuses to overwrite either.
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct SealArgs {
    /// The plaintext GGUF model to seal (it is read, never modified).
    #[arg(value_name = "MODEL.gguf")]
    pub model: PathBuf,
    /// Model id bound into the sealed header and licenses (letters, digits, . _ - :).
    #[arg(long)]
    pub model_id: String,
    /// Where to write the sealed model (replaced atomically if it exists).
    #[arg(long, value_name = "M.sealed")]
    pub out: PathBuf,
    /// Where to write the content key (mode 0600; never overwritten). Keep it secret:
    /// whoever holds it can decrypt the model.
    #[arg(long, value_name = "M.key")]
    pub key_out: PathBuf,
    /// Segment size in bytes (power of two, 4096 to 16 MiB).
    #[arg(long, default_value_t = crate::seal::header::DEFAULT_SEGMENT, hide = true)]
    pub segment_size: u32,
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// Signing key: the root's, or an issuer's (then also pass --issuer-cert).
    #[arg(long, value_name = "ROOT_OR_ISSUER.key")]
    pub key: PathBuf,
    /// Issuer certificate (from certify-issuer) when --key is an issuer key.
    #[arg(long, value_name = "ISSUER.cert")]
    pub issuer_cert: Option<PathBuf>,
    /// The node's enrollment (from `leasehold enroll`).
    #[arg(long, value_name = "NODE.enroll")]
    pub enrollment: PathBuf,
    /// The sealed model the license is for.
    #[arg(long, value_name = "M.sealed")]
    pub sealed: PathBuf,
    /// The model's content key (from `leasehold seal`); it is wrapped to the node.
    #[arg(long, value_name = "M.key")]
    pub content_key: PathBuf,
    /// Licensee organization.
    #[arg(long, value_name = "ORG")]
    pub licensee: String,
    /// Expiry: RFC 3339 (2027-01-31T00:00:00Z) or relative to now (+30d, +12h, +90s).
    #[arg(long, value_name = "TIME")]
    pub expires: String,
    /// Start of validity (default: now); same forms as --expires.
    #[arg(long, value_name = "TIME")]
    pub not_before: Option<String>,
    /// Grace period after expiry during which the node keeps serving with warnings.
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    pub grace: String,
    /// Serial number (default: issue time in milliseconds, so later licenses are higher).
    #[arg(long)]
    pub serial: Option<u64>,
    /// Renew an existing license: keep its license id (32 hex digits, as `inspect`
    /// shows it), so nodes that saw it treat this one as its renewal (give a higher
    /// --serial than theirs; they refuse lower serials of an id they saw).
    #[arg(long, value_name = "HEX")]
    pub license_id: Option<String>,
    /// A usage cap, NAME=N; repeatable. Names: requests-per-day, requests-per-month,
    /// tokens-per-day, tokens-per-month, concurrent, context.
    #[arg(long = "cap", value_name = "NAME=N")]
    pub caps: Vec<String>,
    /// License server URL for renewals; repeatable.
    #[arg(long = "renewal", value_name = "URL")]
    pub renewal: Vec<String>,
    #[command(flatten)]
    pub safeguards: SafeguardArgs,
    /// Where to write the license (default: standard output).
    #[arg(long, value_name = "X.license")]
    pub out: Option<PathBuf>,
}

/// Safeguards a license mandates; the node applies them and its operator cannot turn
/// them off.
#[derive(Args, Debug, Default)]
pub struct SafeguardArgs {
    /// Mandate a text watermark on everything the model samples. Distortion-free
    /// tournament sampling (SynthID-Text): scheme=tournament,depth=8,context=2 (depth
    /// = g-values per token, 1 to 64; context = previous tokens seeding them, 1 to 8);
    /// greedy (temperature 0) answers are not marked. Or the green-list watermark
    /// (Kirchenbauer et al. 2023), which marks greedy answers too but changes the
    /// model's distribution: gamma=0.25,delta=2.0[,context=1] (gamma = green-list
    /// fraction, delta = logit bias). Find it later with `leasehold watermark detect`.
    #[arg(
        long,
        value_name = "scheme=tournament,depth=D,context=N | gamma=G,delta=D[,context=N]"
    )]
    pub watermark: Option<String>,
    /// Mandate an output filter: a TOML file with `terms = ["..."]` (matched ignoring
    /// case) and `patterns = ['regex']` (each of bounded length). A match ends the
    /// answer with finish_reason "content_filter"; the matched text never leaves the node.
    #[arg(long, value_name = "RULES.toml")]
    pub filter_rules: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CertifyIssuerArgs {
    /// The root secret key.
    #[arg(long, value_name = "ROOT.key")]
    pub root: PathBuf,
    /// The issuer's public key (from `leasehold keygen`).
    #[arg(long, value_name = "ISSUER.pub")]
    pub issuer_pub: PathBuf,
    /// Organizations the issuer may license; repeatable; '*' for any.
    #[arg(long = "org", value_name = "ORG", required = true)]
    pub orgs: Vec<String>,
    /// Model ids the issuer may license; repeatable; '*' for any.
    #[arg(long = "model", value_name = "ID", required = true)]
    pub models: Vec<String>,
    /// Start of the certificate's validity (default: now).
    #[arg(long, value_name = "TIME")]
    pub valid_from: Option<String>,
    /// End of the certificate's validity: RFC 3339 or +DURATION.
    #[arg(long, value_name = "TIME")]
    pub valid_until: String,
    /// Longest license the issuer may sign (not-before to expiry), e.g. 7d.
    #[arg(long, value_name = "DURATION")]
    pub max_lease: String,
    /// Where to write the certificate.
    #[arg(long, value_name = "ISSUER.cert")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// The node directory: holds the node's keys (created once, 0600) and trusted time.
    #[arg(long, value_name = "DIR")]
    pub node_dir: PathBuf,
    /// Where to write the enrollment (to send to the vendor, or to keep with --server).
    #[arg(long, value_name = "NODE.enroll", required_unless_present = "server")]
    pub out: Option<PathBuf>,
    /// With --server: a file holding the organization's enrollment token (from its
    /// portal page or `admin org enrollment-token`); an entitlement that approves
    /// automatically then approves the node at once while it has a free seat.
    #[arg(long, value_name = "F", requires = "server")]
    pub enrollment_token_file: Option<PathBuf>,
    /// Submit the enrollment to this license server; its id is printed as the last line
    /// (the vendor approves it with `leasehold admin approve ID`).
    #[arg(long, value_name = "URL", requires_all = ["org", "model"])]
    pub server: Option<String>,
    /// The organization whose entitlement this node counts against (with --server).
    #[arg(long, value_name = "ORG")]
    pub org: Option<String>,
    /// The model id this node will serve (with --server).
    #[arg(long, value_name = "ID")]
    pub model: Option<String>,
    /// What the node will be used for (shown to the approver).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub use_case: String,
    /// How prompts and outputs are handled (shown to the approver).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub data_handling: String,
    /// Security measures around the node: access control, network placement (shown to the approver).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub security_measures: String,
    /// Bind only these components (comma-separated); default: all that this machine has.
    #[arg(long, value_delimiter = ',', value_name = "KINDS")]
    pub bind: Option<Vec<ComponentKind>>,
    /// Components that must always match (comma-separated); default: machine-id and
    /// those of product-uuid, root-disk-serial and default-route-mac readable here
    /// (what a copy of the disk does not carry; see `leasehold fingerprint`).
    #[arg(long, value_delimiter = ',', value_name = "KINDS")]
    pub require: Option<Vec<ComponentKind>>,
    /// How many of the other bound components must match; default: 2 (or fewer if fewer exist).
    #[arg(long, value_name = "N")]
    pub min_others: Option<u32>,
    /// Keep the node's keys in the TPM 2.0: the unwrap key is a P-256 key that never leaves
    /// it and the signing key is sealed to it, so a copy of the node directory loads
    /// neither key on another machine. `--tpm` requires a TPM,
    /// `--tpm auto` uses one when /dev/tpmrm0 exists or a TCTI is named, `--tpm off` (the
    /// default) keeps file keys. Applies when the node directory is created.
    #[arg(long, value_enum, value_name = "WHEN", num_args = 0..=1, default_missing_value = "on", default_value = "off")]
    pub tpm: TpmChoice,
    /// The TPM, named as tpm2-tools name it: device:/dev/tpmrm0 (the default),
    /// swtpm:host=127.0.0.1,port=2321 for a software TPM. Default: the TCTI environment
    /// variable. Later commands (serve, run, check) find it the same way: set TCTI for
    /// them too unless the TPM is /dev/tpmrm0.
    #[arg(long, value_name = "TCTI")]
    pub tcti: Option<String>,
}

/// Whether `enroll` puts the unwrap key in a TPM.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TpmChoice {
    /// File keys (unwrap.key).
    Off,
    /// The TPM; fail when there is none.
    On,
    /// The TPM when one is present, else file keys.
    Auto,
}

#[derive(Args, Debug)]
pub struct FingerprintArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The license file.
    #[arg(value_name = "X.license")]
    pub license: PathBuf,
    /// This node's directory: also check the node keys and trusted time.
    #[arg(long, value_name = "DIR")]
    pub node_dir: Option<PathBuf>,
    /// Print JSON (verdict, exit code, message, license fields).
    #[arg(long)]
    pub json: bool,
}

/// The license, the sealed model and the node directory that check, serve and run use.
#[derive(Args, Debug)]
pub struct LicensedModel {
    /// The license file.
    #[arg(long, value_name = "X.license")]
    pub license: PathBuf,
    /// The sealed model the license is for.
    #[arg(long, value_name = "M.sealed")]
    pub sealed: PathBuf,
    /// This node's directory (from `leasehold enroll`).
    #[arg(long, value_name = "DIR")]
    pub node_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub licensed: LicensedModel,
    /// Print JSON instead of a step-by-step report.
    #[arg(long)]
    pub json: bool,
}

/// A timeout between 100 ms and 1 hour (`10s`, `500ms`, `2m`).
fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("'{text}' is not a duration like 10s or 500ms: {e}"))?;
    if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(3600) {
        return Err(format!("'{text}' is outside 100ms to 1h"));
    }
    Ok(d)
}

/// A checkpoint interval: whole seconds (`30`) or a duration (`2m`), 1 s to 1 h.
fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let d = match text.parse::<u64>() {
        Ok(secs) => std::time::Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text).map_err(|e| {
            format!("'{text}' is not a number of seconds or a duration like 60s: {e}")
        })?,
    };
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(3600) {
        return Err(format!("'{text}' is outside 1s to 1h"));
    }
    Ok(d)
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub licensed: LicensedModel,
    /// Read settings from this TOML file ([serve] table; keys are the long flag
    /// names). A flag beats the environment (LEASEHOLD_<FLAG>), which beats the file.
    #[arg(long, value_name = "FILE", env = "LEASEHOLD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: String,
    /// Context length per sequence, in tokens.
    #[arg(long, default_value_t = 2048, value_name = "N")]
    pub ctx: u32,
    /// CPU threads for inference (default: all cores). On a machine where other busy
    /// processes share the cores, use fewer than the cores: llama.cpp's threads wait for
    /// each other at every step, and one that is descheduled stalls them all (README,
    /// "Threads under competing load").
    #[arg(long, value_name = "N")]
    pub threads: Option<i32>,
    /// Sequences decoded together (continuous batching); more requests wait in a queue.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub parallel: u32,
    /// Most tokens in one decode call (llama.cpp's batch and micro-batch); a longer
    /// prompt is fed over several calls. At least --parallel.
    #[arg(long, default_value_t = 512, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub batch: u32,
    /// Most prompt tokens in one decode call while other sequences are generating:
    /// their next tokens wait for that call, so a smaller chunk keeps running streams
    /// smooth while a long prompt arrives, and a larger one gives the prompt its first
    /// token sooner. Without generating sequences a prompt takes --batch per call.
    #[arg(long, default_value_t = 128, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub prompt_chunk: u32,
    /// Most requests waiting for a sequence slot; beyond it requests get HTTP 503 with
    /// Retry-After (and a `refused:queue_full` ledger record) instead of waiting.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub queue: u32,
    /// File of client API keys, one per line; clients then send `Authorization: Bearer KEY`.
    /// Required when --listen is not a loopback address (see --allow-unauthenticated).
    /// With keys, /v1/license and /metrics show the licensee, model and license ids only
    /// to clients with a key.
    #[arg(long, value_name = "F")]
    pub api_key_file: Option<PathBuf>,
    /// Listen on a non-loopback address without API keys (a proxy in front
    /// authenticates clients). Without it, such a --listen needs --api-key-file.
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// File holding the admin token for /admin endpoints (disabled without it); at
    /// least 16 characters.
    #[arg(long, value_name = "F")]
    pub admin_token_file: Option<PathBuf>,
    /// Most client connections open at once; more are closed at accept.
    #[arg(long, default_value_t = 1024, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// How long a client may take to send a request's headers; also how long an idle
    /// keep-alive connection stays open. Request bodies get four times as long.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_timeout)]
    pub header_timeout: std::time::Duration,
    /// Exit (code 12) when the license lapses instead of waiting for a renewal.
    #[arg(long)]
    pub exit_on_lapse: bool,
    /// Get the license from this license server (waiting for approval when the
    /// --license file does not exist yet) and renew it automatically, writing each
    /// renewal to the --license file.
    #[arg(long, value_name = "URL")]
    pub license_server: Option<String>,
    /// Between renewals, report the usage ledger's position to the --license-server
    /// this often (a signed checkpoint report; seconds, or a duration like 2m). A node
    /// directory restored from a backup is flagged at its next report, so it hides at
    /// most this much usage from the vendor.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_interval)]
    pub checkpoint_interval: std::time::Duration,
    /// The usage ledger (default: NODE_DIR/usage.ledger). Every request is recorded
    /// there, durably, before it is answered.
    #[arg(long, value_name = "PATH", conflicts_with = "no_ledger")]
    pub ledger: Option<PathBuf>,
    /// Also record in each ledger record a salted SHA-256 of the prompt (never the
    /// text). The salt is a secret in NODE_DIR/ledger.salt; with it, `leasehold audit
    /// prompt-hash` shows whether a given prompt was served.
    #[arg(long)]
    pub ledger_prompt_hash: bool,
    /// Run without a usage ledger, for benchmarks: refused unless the license chains to
    /// the DEMO root (whose key is public, so it protects nothing anyway).
    #[arg(long, hide = true)]
    pub no_ledger: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["prompt", "chat"])))]
pub struct RunArgs {
    #[command(flatten)]
    pub licensed: LicensedModel,
    /// The usage ledger (default: NODE_DIR/usage.ledger); every answer is recorded.
    #[arg(long, value_name = "PATH")]
    pub ledger: Option<PathBuf>,
    /// Generate one answer to this prompt and exit.
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Chat in the terminal; an empty line ends the chat.
    #[arg(long)]
    pub chat: bool,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_tokens: u32,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.7, value_name = "T")]
    pub temperature: f32,
    /// Sampling seed (default: random).
    #[arg(long)]
    pub seed: Option<u32>,
    /// Context length, in tokens.
    #[arg(long, default_value_t = 2048, value_name = "N")]
    pub ctx: u32,
    /// CPU threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<i32>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("direction").required(true).args(["request_out", "response"])))]
pub struct RenewArgs {
    /// This node's directory.
    #[arg(long, value_name = "DIR")]
    pub node_dir: PathBuf,
    /// The license in force (read for the request; replaced by the renewal).
    #[arg(long, value_name = "X.license")]
    pub license: PathBuf,
    /// Write a signed renewal request to this file (carry it to the vendor).
    #[arg(long, value_name = "F")]
    pub request_out: Option<PathBuf>,
    /// Take in the vendor's response file and write the renewed license.
    #[arg(long, value_name = "G")]
    pub response: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LicenseServerArgs {
    /// The issuer's secret key (from `leasehold keygen`).
    #[arg(long, value_name = "K")]
    pub issuer_key: PathBuf,
    /// The issuer certificate from the root (`leasehold certify-issuer`).
    #[arg(long, value_name = "C")]
    pub issuer_cert: PathBuf,
    /// The database: sqlite:PATH or postgres://USER:PASSWORD@HOST/DB.
    #[arg(long, value_name = "URL")]
    pub db: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "ADDR")]
    pub listen: String,
    /// File holding the admin token (first non-comment line).
    #[arg(long, value_name = "F")]
    pub admin_token_file: PathBuf,
    /// Serve HTTPS with this certificate chain (PEM); with --tls-key.
    #[arg(long, value_name = "CERT.pem", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Enrollment submissions accepted per minute from one source address (bursts up to
    /// N; more get HTTP 429 with Retry-After). Per replica; 0: no limit.
    #[arg(long, value_name = "N", default_value_t = crate::license_server::DEFAULT_ENROLLMENTS_PER_ADDRESS)]
    pub enrollments_per_address: u32,
    /// Enrollment submissions accepted per minute for one organization, from anywhere
    /// (bursts up to N; more get HTTP 429). Per replica; 0: no limit.
    #[arg(long, value_name = "N", default_value_t = crate::license_server::DEFAULT_ENROLLMENTS_PER_ORG)]
    pub enrollments_per_org: u32,
    /// The address people reach this server at (https://licenses.example), when it
    /// differs from what they send: behind a proxy or load balancer. The portal's
    /// invitation links use it, and an https address makes its cookies Secure.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Read settings from this TOML file ([license-server] table; keys are the long flag
    /// names). A flag beats the environment (LEASEHOLD_<FLAG>), which beats the file.
    #[arg(long, value_name = "FILE", env = "LEASEHOLD_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The license server's base URL.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// File holding the admin token.
    #[arg(long, value_name = "F")]
    pub token_file: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Models the server can license.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Grant an organization licenses for models, for a number of nodes, until a date.
    Entitle(EntitleArgs),
    /// List entitlements.
    Entitlements,
    /// List enrollments with each node's declared use (default: pending ones).
    Enrollments(EnrollmentsArgs),
    /// Approve a pending enrollment: the node gets its license at its next request.
    Approve(DecideArgs),
    /// Deny a pending enrollment (frees its seat on the entitlement).
    Deny(DecideArgs),
    /// List licenses: node, serial, expiry, revocation.
    List,
    /// Revoke a license, every license of a node, or a whole organization.
    Revoke(RevokeArgs),
    /// Usage reported by nodes, per organization and node, over a period.
    Usage(UsageArgs),
    /// Answer an air-gapped node's renewal request file.
    Renew(AdminRenewArgs),
    /// Named staff tokens for the portal (vendor staff sign in with them).
    #[command(subcommand)]
    Staff(StaffCommand),
    /// Organizations: invite one to the portal, list them.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Organizations' applications for models (default: those waiting for review).
    Applications(ApplicationsArgs),
    /// One application: show it, approve it (creating the entitlement), deny it, or ask
    /// for changes.
    #[command(subcommand)]
    Application(ApplicationCommand),
    /// Every step of every application (who, when, what), oldest first: the append-only
    /// history, for export.
    History(HistoryArgs),
    /// Audits: ask an organization's nodes for their usage-ledger records of a period,
    /// follow their answers, get each node's report.
    #[command(subcommand)]
    Audit(AdminAuditCommand),
}

#[derive(Subcommand, Debug)]
pub enum AdminAuditCommand {
    /// Ask an organization's approved nodes for their ledger records of a period; each
    /// answers after its next renewal (air-gapped ones by `audit export` + `import`).
    Request(AuditRequestArgs),
    /// Audits, newest first, with each node's status.
    List(AuditListArgs),
    /// One audit: each node's status, answer, findings and totals.
    Show(AuditShowArgs),
    /// One node's report for an audit: the rows `leasehold audit report` gives on its
    /// ledger for the audit's period.
    Report(AdminAuditReportArgs),
    /// Import an answer an air-gapped node wrote with `leasehold audit export`; it is
    /// checked as an upload is (exit 0 accepted, 23 refused).
    Import(AuditImportArgs),
}

#[derive(Args, Debug)]
pub struct AuditRequestArgs {
    #[arg(long, value_name = "ORG")]
    pub org: String,
    /// Start of the period (RFC 3339, or -90d).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub from: String,
    /// End of the period (records before it; may lie ahead: nodes answer once it passed).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub to: String,
    /// Renewals that carry the request before a node that has not answered is flagged.
    #[arg(long, value_name = "N", default_value_t = crate::license_server::audits::DEFAULT_MAX_RENEWALS)]
    pub renewals: u32,
    /// A note kept with the audit.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub note: String,
}

#[derive(Args, Debug)]
pub struct AuditListArgs {
    /// Only this organization's audits.
    #[arg(long, value_name = "ORG")]
    pub org: Option<String>,
}

#[derive(Args, Debug)]
pub struct AuditShowArgs {
    #[arg(value_name = "AUDIT")]
    pub id: String,
}

#[derive(Args, Debug)]
pub struct AdminAuditReportArgs {
    #[arg(value_name = "AUDIT")]
    pub id: String,
    /// The node (its id, as `admin audit show` lists it).
    #[arg(long, value_name = "NODE")]
    pub node: String,
    /// Group by UTC day, month or quarter.
    #[arg(long, value_enum, default_value = "quarter")]
    pub by: Period,
    /// Table, JSON or CSV (the CSV of `leasehold audit report`).
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,
}

#[derive(Args, Debug)]
pub struct AuditImportArgs {
    /// The answer file from `leasehold audit export`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum StaffCommand {
    /// Make a staff member's portal token (printed once; keep it secret).
    Add(StaffAddArgs),
    /// Remove a staff member's token; their portal sessions end with it.
    Remove(StaffAddArgs),
}

#[derive(Args, Debug)]
pub struct StaffAddArgs {
    /// The staff member's name, as the history shows it.
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Subcommand, Debug)]
pub enum OrgCommand {
    /// Make an invitation link for an organization (works once, for 14 days): opening it
    /// creates the organization's portal account.
    Invite(OrgInviteArgs),
    /// List invited organizations.
    List,
    /// An organization's entitlements, nodes (phase, expiry, last renewal, findings) and
    /// usage per day, month or quarter.
    Show(OrgShowArgs),
    /// Make an enrollment token for an organization's nodes (printed once): with it an
    /// entitlement made with --auto-approve approves them on enrollment.
    EnrollmentToken(OrgInviteArgs),
    /// Revoke an organization's portal access tokens (its sessions end) and/or its
    /// enrollment tokens (its nodes then wait for approval again); both when neither
    /// flag is given.
    RevokeTokens(OrgRevokeTokensArgs),
}

#[derive(Args, Debug)]
pub struct OrgRevokeTokensArgs {
    #[arg(long, value_name = "ORG")]
    pub org: String,
    /// Only its portal access tokens.
    #[arg(long)]
    pub access: bool,
    /// Only its enrollment tokens.
    #[arg(long)]
    pub enrollment: bool,
}

#[derive(Args, Debug)]
pub struct OrgShowArgs {
    #[arg(value_name = "ORG")]
    pub org: String,
    /// Usage per day, month or quarter.
    #[arg(long, value_enum, default_value = "month")]
    pub per: UsagePeriod,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum UsagePeriod {
    Day,
    Month,
    Quarter,
}

#[derive(Args, Debug)]
pub struct OrgInviteArgs {
    /// The organization, as its licenses will name it.
    #[arg(long, value_name = "ORG")]
    pub org: String,
}

#[derive(Args, Debug)]
pub struct ApplicationsArgs {
    /// Applications with this status (submitted, changes-requested, approved, denied) or 'all'.
    #[arg(long, default_value = "submitted")]
    pub status: String,
    /// Only this organization's.
    #[arg(long, value_name = "ORG")]
    pub org: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ApplicationCommand {
    /// Show an application, its history and its entitlement.
    Show(ApplicationIdArgs),
    /// Approve: create the organization's entitlement for the model applied for.
    Approve(ApplicationApproveArgs),
    /// Deny, saying why (the organization reads the note).
    Deny(ApplicationNoteArgs),
    /// Ask for changes (the organization revises and resubmits).
    RequestChanges(ApplicationNoteArgs),
}

#[derive(Args, Debug)]
pub struct ApplicationIdArgs {
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Args, Debug)]
pub struct ApplicationNoteArgs {
    #[arg(value_name = "ID")]
    pub id: String,
    /// Why, for the organization.
    #[arg(long)]
    pub note: String,
}

#[derive(Args, Debug)]
pub struct ApplicationApproveArgs {
    #[arg(value_name = "ID")]
    pub id: String,
    /// How many nodes may enroll (default: as many as requested).
    #[arg(long, value_name = "N")]
    pub nodes: Option<u64>,
    /// End of the entitlement: RFC 3339 or +DURATION (default: the term requested).
    #[arg(long, value_name = "TIME")]
    pub term_end: Option<String>,
    /// Length of each lease, e.g. 1h.
    #[arg(long, value_name = "DURATION")]
    pub lease: String,
    /// Grace after a lease expires while the server is unreachable.
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    pub grace: String,
    /// A usage cap, NAME=N; repeatable (as for `entitle`).
    #[arg(long = "cap", value_name = "NAME=N")]
    pub caps: Vec<String>,
    #[command(flatten)]
    pub safeguards: SafeguardArgs,
    /// Approve nodes that enroll with one of the organization's enrollment tokens at once,
    /// while a seat is free.
    #[arg(long)]
    pub auto_approve: bool,
    /// A note kept with the decision.
    #[arg(long, default_value = "")]
    pub note: String,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Only this organization's applications.
    #[arg(long, value_name = "ORG")]
    pub org: Option<String>,
    /// CSV instead of a table (--json for JSON).
    #[arg(long)]
    pub csv: bool,
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Upload a sealed model's header and its content key (stored encrypted).
    Add(ModelAddArgs),
}

#[derive(Args, Debug)]
pub struct ModelAddArgs {
    /// The sealed model (only its header is sent).
    #[arg(long, value_name = "M.sealed")]
    pub sealed: PathBuf,
    /// Its content key (from `leasehold seal`).
    #[arg(long, value_name = "M.key")]
    pub content_key: PathBuf,
}

#[derive(Args, Debug)]
pub struct EntitleArgs {
    /// The licensee organization.
    #[arg(long, value_name = "ORG")]
    pub org: String,
    /// Model ids covered; repeatable; '*' for any the issuer may license.
    #[arg(long = "model", value_name = "ID", required = true)]
    pub models: Vec<String>,
    /// How many nodes may enroll.
    #[arg(long, value_name = "N")]
    pub nodes: u64,
    /// End of the entitlement: RFC 3339 or +DURATION. No lease runs past it.
    #[arg(long, value_name = "TIME")]
    pub term_end: String,
    /// Length of each lease (renewed at about half), e.g. 1h; at most the issuer's max lease.
    #[arg(long, value_name = "DURATION")]
    pub lease: String,
    /// Grace after a lease expires while the server is unreachable.
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    pub grace: String,
    /// A usage cap, NAME=N; repeatable (as for `issue`).
    #[arg(long = "cap", value_name = "NAME=N")]
    pub caps: Vec<String>,
    #[command(flatten)]
    pub safeguards: SafeguardArgs,
    /// Approve nodes that enroll with one of the organization's enrollment tokens at
    /// once, while a seat is free (others wait for `admin approve` as usual).
    #[arg(long)]
    pub auto_approve: bool,
}

#[derive(Args, Debug)]
pub struct EnrollmentsArgs {
    /// Show enrollments with this status (pending, approved, denied, revoked) or 'all'.
    #[arg(long, default_value = "pending")]
    pub status: String,
}

#[derive(Args, Debug)]
pub struct DecideArgs {
    /// The enrollment id (printed by `leasehold enroll --server`).
    #[arg(value_name = "ID")]
    pub id: String,
    /// A note kept with the decision (shown to the node when denied).
    #[arg(long, default_value = "")]
    pub note: String,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["license", "node", "org"])))]
pub struct RevokeArgs {
    #[arg(long, value_name = "ID")]
    pub license: Option<String>,
    #[arg(long, value_name = "ID")]
    pub node: Option<String>,
    #[arg(long, value_name = "ORG")]
    pub org: Option<String>,
    /// Why (shown to the node and kept in the record).
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Args, Debug)]
pub struct UsageArgs {
    /// Only this organization.
    #[arg(long, value_name = "ORG")]
    pub org: Option<String>,
    /// Start of the period (RFC 3339 or -DURATION like -30d); default: the beginning.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// End of the period; default: now.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub to: Option<String>,
}

#[derive(Args, Debug)]
pub struct AdminRenewArgs {
    /// The node's request file (from `leasehold renew --request-out`).
    #[arg(long, value_name = "F")]
    pub request: PathBuf,
    /// Where to write the signed response to carry back to the node.
    #[arg(long, value_name = "G")]
    pub response_out: PathBuf,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The node's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Print the JSON from /v1/license.
    #[arg(long)]
    pub json: bool,
    /// A file with one of the node's API keys (its first line): a node with keys shows
    /// the licensee, model and license only to clients with one.
    #[arg(long, value_name = "F")]
    pub api_key_file: Option<PathBuf>,
}

/// `--log-format json` is in force: errors go out as log events too.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Report the error a command ends with: `error: …` for people, a JSON log event for
/// collectors.
pub(crate) fn report_error(message: &str) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::error!("{message}");
    } else {
        eprintln!("error: {message}");
    }
}

/// `leasehold --version`: the version, then the trust roots compiled in, one per line
/// (key id, file in `keys/`, and DEMO for the demo root).
fn version_text() -> String {
    let mut text = format!(
        "{}\n{}",
        env!("CARGO_PKG_VERSION"),
        crate::license::TrustRoots::compiled_in().describe()
    );
    if !cfg!(feature = "inference") {
        text.push_str("\nno inference runtime in this build (no serve, run, watermark detect)");
    }
    text
}

/// The commands a build without the `inference` feature leaves out.
const INFERENCE_COMMANDS: [&str; 3] = ["serve", "run", "watermark"];

/// Run the command line; the process exit code is returned.
pub fn main() -> ExitCode {
    // The TPM software stack (libtss2) prints its own warnings for what leasehold's
    // errors already say (a TPM that does not answer, a key that does not load). Quiet
    // unless the operator asks (TSS2_LOG=all+debug). Set before any thread exists.
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+none");
    }
    let argv = match config::layer(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let subcommand = argv
        .iter()
        .skip(1)
        .find(|a| !a.to_string_lossy().starts_with('-'))
        .map(|a| a.to_string_lossy().into_owned());
    let cli = match Cli::command()
        .version(version_text())
        .try_get_matches_from(argv)
        .and_then(|mut matches| Cli::from_arg_matches_mut(&mut matches))
    {
        Ok(cli) => cli,
        Err(e) => {
            if !cfg!(feature = "inference")
                && e.kind() == clap::error::ErrorKind::InvalidSubcommand
                && subcommand
                    .as_deref()
                    .is_some_and(|c| INFERENCE_COMMANDS.contains(&c))
            {
                report_error(&format!(
                    "`{}` needs the inference runtime (llama.cpp), which this build leaves out \
                     (built without the `inference` feature: the license server's and the \
                     vendor's binary). Install the node package (leasehold .deb or the `node` \
                     container image), or build with the default features.",
                    subcommand.unwrap_or_default()
                ));
                return ExitCode::from(exit::USAGE);
            }
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    // Daemons log their events (renewals, lapses, refusals, caps) at info; one-shot
    // commands only warnings. LEASEHOLD_LOG overrides (e.g. `debug`).
    let default_level = match cli.command {
        #[cfg(feature = "inference")]
        Command::Serve(_) => "info",
        Command::LicenseServer(_) => "info",
        _ => "warn",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("LEASEHOLD_LOG").unwrap_or_else(|_| {
            // tss-esapi logs the TPM errors that leasehold reports itself, with less
            // context; LEASEHOLD_LOG=tss_esapi=debug shows them.
            tracing_subscriber::EnvFilter::new(format!("{default_level},tss_esapi=off"))
        });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.log_format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => {
            JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
            logs.json().flatten_event(true).init()
        }
    }
    let outcome = match cli.command {
        Command::Keygen(a) => vendor::keygen(a),
        Command::Seal(a) => vendor::seal(a),
        Command::Issue(a) => vendor::issue(a),
        Command::CertifyIssuer(a) => vendor::certify_issuer(a),
        Command::Enroll(a) => node_cmds::enroll(a),
        Command::Fingerprint(a) => node_cmds::fingerprint(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Check(a) => inspect::check(a),
        #[cfg(feature = "inference")]
        Command::Serve(a) => runtime_cmds::serve(a),
        #[cfg(feature = "inference")]
        Command::Run(a) => runtime_cmds::run(a),
        Command::Status(a) => node_cmds::status(a),
        Command::Renew(a) => node_cmds::renew(a),
        Command::LicenseServer(a) => server_cmds::license_server(a),
        Command::Admin(a) => server_cmds::admin(a),
        Command::Audit(AuditCommand::Verify(a)) => inspect::audit_verify(a),
        Command::Audit(AuditCommand::Report(a)) => inspect::audit_report(a),
        Command::Audit(AuditCommand::Export(a)) => audit_cmds::export(a),
        Command::Audit(AuditCommand::VerifyAttestation(a)) => inspect::verify_attestation(a),
        Command::Audit(AuditCommand::PromptHash(a)) => prompt_hash::run(a),
        #[cfg(feature = "inference")]
        Command::Watermark(WatermarkCommand::Detect(a)) => watermark_cmd::detect(a),
        Command::Completions(a) => generated::completions(a),
        Command::Man(a) => generated::man(a),
        Command::Config(ConfigCommand::Check(a)) => config::check(a),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report_error(&format!("{e:#}"));
            ExitCode::from(exit::for_error(&e))
        }
    }
}
