//! A node site on disk (enrolled through the CLI, tiny model sealed through the CLI)
//! and a running `leasehold serve` process for HTTP tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// GET `url`; its JSON body.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// GET `url`; the answer as text.
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// POST `body` as JSON to `url`; the JSON answer.
pub async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Value {
    let response = http.post(url).json(body).send().await.unwrap();
    response.json().await.unwrap()
}

pub fn leasehold(dir: &Path, args: &[&str]) -> Output {
    leasehold_env(dir, args, &[])
}

/// Run leasehold with extra environment variables.
pub fn leasehold_env(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .args(args)
        .current_dir(dir)
        .env_remove("LEASEHOLD_LOG")
        .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
        .output()
        .expect("run leasehold")
}

/// Debian's libfaketime (package `faketime`), multi-threaded variant.
pub fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists());
    found.expect("libfaketime is missing: run scripts/setup.sh (Debian package faketime)")
}

/// `leasehold ARGS` as an operator runs it under Debian's faketime: libfaketime
/// preloaded, as the `faketime` command does (but in the process itself, so signals
/// reach it). `spec` is faketime's format, e.g. `-30m` (wound back), `@2026-12-02
/// 06:00:00` (starts there and runs) or `2026-12-02 06:00:00` (frozen). Only the wall
/// clock is faked: the monotonic clock runs on, as it does when an operator sets the date.
pub fn faketime_command(spec: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    command
        .args(args)
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", spec)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env_remove("LEASEHOLD_LOG");
    command
}

/// A directory with an enrolled node (`node/`, `node.enroll`) and a sealed model.
pub struct NodeSite {
    pub dir: TempDir,
    pub model_id: String,
}

impl NodeSite {
    /// Seal `gguf` (a path, or the tiny test model when `None`).
    pub fn new(gguf: Option<&Path>) -> NodeSite {
        let dir = TempDir::new().unwrap();
        let site = NodeSite {
            dir,
            model_id: if gguf.is_some() {
                "smollm2-135m".into()
            } else {
                "tiny".into()
            },
        };
        site.ok(&["enroll", "--node-dir", "node", "--out", "node.enroll"]);
        let model = match gguf {
            Some(p) => p.to_path_buf(),
            None => {
                let p = site.path().join("tiny.gguf");
                std::fs::write(&p, super::gguf::tiny_llama(1)).unwrap();
                p
            }
        };
        site.ok(&[
            "seal",
            model.to_str().unwrap(),
            "--model-id",
            &site.model_id.clone(),
            "--out",
            "m.sealed",
            "--key-out",
            "m.key",
        ]);
        if gguf.is_none() {
            std::fs::remove_file(model).unwrap();
        }
        site
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let out = leasehold(self.path(), args);
        assert!(
            out.status.success(),
            "leasehold {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Issue a demo-root license to `out` with extra `issue` flags.
    pub fn issue(&self, out: &str, expires: &str, extra: &[&str]) {
        let root = super::repo_path("keys/demo/root.key");
        let mut args = vec![
            "issue",
            "--key",
            root.to_str().unwrap(),
            "--enrollment",
            "node.enroll",
            "--sealed",
            "m.sealed",
            "--content-key",
            "m.key",
            "--licensee",
            "Example Org",
            "--expires",
            expires,
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    /// `serve` on a free loopback port with `license` and extra flags. One inference
    /// thread: the test harness runs two tests at once on a 2-core machine, and two
    /// servers of two threads each make ggml's spinning thread barriers wait on one
    /// another (a 60-token answer once took over 120 s in CI that way).
    pub fn serve_args<'a>(license: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = Self::model_args("serve", license, &["--listen", "127.0.0.1:0"]);
        args.extend_from_slice(extra);
        args
    }

    /// `run` with `license` and extra flags, one inference thread (as `serve_args`).
    pub fn run_args<'a>(license: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = Self::model_args("run", license, &[]);
        args.extend_from_slice(extra);
        args
    }

    /// `command --license LICENSE --sealed m.sealed --node-dir node OWN… --threads 1`
    /// (tests address `serve`'s `--listen` value by its position, 8).
    fn model_args<'a>(command: &'a str, license: &'a str, own: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            command,
            "--license",
            license,
            "--sealed",
            "m.sealed",
            "--node-dir",
            "node",
        ];
        args.extend_from_slice(own);
        args.extend_from_slice(&["--threads", "1"]);
        args
    }

    /// Start `serve` (see [`NodeSite::serve_args`]) and wait until it listens.
    pub fn serve(&self, license: &str, extra: &[&str]) -> Server {
        Server::start(self.path(), &Self::serve_args(license, extra))
    }
}

/// A running `leasehold serve`; killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub stderr_log: PathBuf,
}

impl Server {
    pub fn start(dir: &Path, args: &[&str]) -> Server {
        Self::start_env(dir, args, &[])
    }

    /// Start with extra environment variables.
    pub fn start_env(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_leasehold"));
        command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v.as_os_str())));
        Self::start_command(dir, command)
    }

    /// Start `command` (leasehold, or a wrapper such as `faketime` around it) in `dir`
    /// and wait until it announces its address.
    pub fn start_command(dir: &Path, command: Command) -> Server {
        Self::start_command_with(dir, command, |_| {})
    }

    /// [`Server::start_command`], calling `spawned` with the pid as soon as it runs.
    pub fn start_command_with(
        dir: &Path,
        mut command: Command,
        spawned: impl FnOnce(u32),
    ) -> Server {
        let stderr_log = dir.join(format!("serve-{}.stderr", std::process::id()));
        let mut child = command
            .current_dir(dir)
            .env("LEASEHOLD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap())
            .spawn()
            .expect("start leasehold");
        spawned(child.id());
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                for scheme in ["http", "https"] {
                    if let Some(rest) = line.split(&format!(" on {scheme}://")).nth(1) {
                        let addr = rest.split_whitespace().next().unwrap().to_string();
                        let _ = tx.send(format!("{scheme}://{addr}"));
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok().and_then(|s| s.code());
                panic!(
                    "serve did not start (exit {status:?}): {}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                );
            }
        };
        Server {
            child,
            base: addr,
            stderr_log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Does the process still map or hold a memfd of weights? Reading another
    /// process's /proc entries needs root (serve is not dumpable): a read error panics
    /// rather than passing for "no weights". Callers assert `true` before they rely on
    /// `false` (the positive control).
    /// (The process also holds its CPU-kernel module in a memfd of another name, for as
    /// long as it runs.)
    pub fn holds_weights(&self) -> bool {
        const WEIGHTS_MEMFD: &str = "memfd:leasehold-weights";
        let pid = self.pid();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_else(|e| {
            panic!("cannot read /proc/{pid}/maps (run the tests as root): {e}")
        });
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap_or_else(|e| panic!("cannot list /proc/{pid}/fd (run the tests as root): {e}"))
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .any(|l| l.to_string_lossy().contains(WEIGHTS_MEMFD));
        maps.contains(WEIGHTS_MEMFD) || fds
    }

    /// Resident set size in bytes.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Stop it as systemd would (SIGTERM) and check that it exits cleanly (0) within
    /// 30 s, its ledger closed with a final checkpoint.
    pub fn stop(&mut self) {
        self.signal("TERM");
        assert_eq!(self.wait_exit(Duration::from_secs(30)), Some(0));
    }

    /// Wait for the process to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `f` until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
