//! The vendor's side of the license-server tests: an issuer certified by the demo root,
//! a sealed tiny model, an admin token and a running `leasehold license-server`.

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use tempfile::TempDir;

use super::node::{leasehold, leasehold_env, Server};

/// The organization every license-server test entitles.
pub const ORG: &str = "Acme Corp";
/// The admin token written to `admin.token` in the vendor directory.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// The vendor's side: an issuer certified by the demo root, a sealed tiny model, an
/// admin token, and a running license server.
pub struct Vendor {
    pub dir: TempDir,
    pub db: String,
    pub server: Option<Server>,
    pub addr: Option<String>,
    /// Serve HTTPS with tls.crt / tls.key from the vendor directory; clients trust ca.crt.
    pub tls: bool,
}

pub const CA_ENV: &str = "LEASEHOLD_TLS_CA";

pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Vendor {
    /// `certify` adds flags to certify-issuer (scope, validity, max lease).
    pub fn new(db: Option<String>, certify: &[&str]) -> Vendor {
        let dir = TempDir::new().unwrap();
        let p = dir.path();
        ok(&leasehold(p, &["keygen", "--out", "issuer"]), "keygen");
        let root = super::repo_path("keys/demo/root.key");
        let mut args = vec![
            "certify-issuer",
            "--root",
            root.to_str().unwrap(),
            "--issuer-pub",
            "issuer.pub",
            "--valid-until",
            "+30d",
            "--out",
            "issuer.cert",
        ];
        if certify.is_empty() {
            args.extend(["--org", ORG, "--model", "tiny", "--max-lease", "1h"]);
        }
        args.extend_from_slice(certify);
        ok(&leasehold(p, &args), "certify-issuer");
        std::fs::write(p.join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
        std::fs::write(p.join("tiny.gguf"), super::gguf::tiny_llama(1)).unwrap();
        ok(
            &leasehold(
                p,
                &[
                    "seal",
                    "tiny.gguf",
                    "--model-id",
                    "tiny",
                    "--out",
                    "m.sealed",
                    "--key-out",
                    "m.key",
                ],
            ),
            "seal",
        );
        let db = db.unwrap_or_else(|| format!("sqlite:{}", p.join("server.db").display()));
        Vendor {
            dir,
            db,
            server: None,
            addr: None,
            tls: false,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Start the server (on the same port as before, after a restart).
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Start the server with extra `license-server` flags.
    pub fn start_with(&mut self, extra: &[&str]) {
        let listen = self.addr.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        let mut args = vec![
            "license-server",
            "--issuer-key",
            "issuer.key",
            "--issuer-cert",
            "issuer.cert",
            "--db",
            &self.db,
            "--listen",
            &listen,
            "--admin-token-file",
            "admin.token",
        ];
        if self.tls {
            args.extend(["--tls-cert", "tls.crt", "--tls-key", "tls.key"]);
        }
        args.extend_from_slice(extra);
        let server = Server::start(self.path(), &args);
        self.addr = Some(server.base.split_once("://").unwrap().1.to_string());
        self.server = Some(server);
    }

    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }

    pub fn url(&self) -> String {
        let addr = self.addr.as_ref().expect("started");
        if self.tls {
            // The test certificate names localhost.
            format!("https://localhost:{}", addr.rsplit_once(':').unwrap().1)
        } else {
            format!("http://{addr}")
        }
    }

    /// The environment clients need: the private CA when serving TLS.
    pub fn client_env(&self) -> Vec<(&'static str, std::path::PathBuf)> {
        if self.tls {
            vec![(CA_ENV, self.path().join("ca.crt"))]
        } else {
            vec![]
        }
    }

    /// Run leasehold as a client of this server.
    pub fn client(&self, dir: &Path, args: &[&str]) -> Output {
        let env = self.client_env();
        let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
        leasehold_env(dir, args, &env)
    }

    pub fn admin(&self, args: &[&str]) -> Output {
        let url = self.url();
        let mut all = vec!["admin", "--server", &url, "--token-file", "admin.token"];
        all.extend_from_slice(args);
        self.client(self.path(), &all)
    }

    pub fn admin_ok(&self, args: &[&str]) -> String {
        ok(&self.admin(args), &format!("admin {args:?}"))
    }

    /// Answer a node's renewal request file as the vendor of an air-gapped site does:
    /// `dir/request` copied here, `admin renew`, the response copied to `dir/response`.
    pub fn answer_renewal_file(&self, dir: &Path, request: &str, response: &str) {
        std::fs::copy(dir.join(request), self.path().join(request)).unwrap();
        self.admin_ok(&["renew", "--request", request, "--response-out", response]);
        std::fs::copy(self.path().join(response), dir.join(response)).unwrap();
    }

    pub fn admin_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.admin_ok(&all)).unwrap()
    }

    pub fn add_model(&self) {
        self.admin_ok(&[
            "model",
            "add",
            "--sealed",
            "m.sealed",
            "--content-key",
            "m.key",
        ]);
    }

    /// `admin entitle` for our organization and the tiny model, with extra flags.
    pub fn try_entitle(&self, nodes: u32, lease: &str, grace: &str, extra: &[&str]) -> Output {
        let nodes = nodes.to_string();
        let mut args = vec![
            "entitle",
            "--org",
            ORG,
            "--model",
            "tiny",
            "--nodes",
            &nodes,
            "--term-end",
            "+1d",
            "--lease",
            lease,
            "--grace",
            grace,
        ];
        args.extend_from_slice(extra);
        self.admin(&args)
    }

    /// Add the model and an entitlement.
    pub fn entitle(&self, nodes: u32, lease: &str, grace: &str) {
        self.add_model();
        ok(&self.try_entitle(nodes, lease, grace, &[]), "admin entitle");
    }
}

impl Drop for Vendor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A node at a customer site: its own directory with the sealed model.
pub struct Node {
    pub dir: TempDir,
}

impl Node {
    pub fn new(vendor: &Vendor) -> Node {
        let dir = TempDir::new().unwrap();
        std::fs::copy(vendor.path().join("m.sealed"), dir.path().join("m.sealed")).unwrap();
        Node { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn enroll(&self, vendor: &Vendor) -> Output {
        self.enroll_with(vendor, &[])
    }

    /// `enroll --server` with extra flags.
    pub fn enroll_with(&self, vendor: &Vendor, extra: &[&str]) -> Output {
        let url = vendor.url();
        let mut args = vec![
            "enroll",
            "--node-dir",
            "node",
            "--server",
            &url,
            "--org",
            ORG,
            "--model",
            "tiny",
            "--use-case",
            "support chat",
            "--data-handling",
            "prompts stay in the EU",
            "--security-measures",
            "VPN only",
        ];
        args.extend_from_slice(extra);
        vendor.client(self.path(), &args)
    }

    /// Enroll; the enrollment id (the last line of output).
    pub fn enroll_ok(&self, vendor: &Vendor) -> String {
        let out = ok(&self.enroll(vendor), "enroll --server");
        out.lines().last().unwrap().trim().to_string()
    }

    pub fn serve(&self, vendor: &Vendor) -> Server {
        self.serve_with(vendor, &[])
    }

    /// `serve` with the license server and extra flags.
    pub fn serve_with(&self, vendor: &Vendor, extra: &[&str]) -> Server {
        let url = vendor.url();
        let env = vendor.client_env();
        let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
        let args = serve_args(&url);
        let mut args = as_strs(&args);
        args.extend_from_slice(extra);
        Server::start_env(self.path(), &args, &env)
    }
}

/// `serve` with a license server, as a node runs it.
pub fn serve_args(url: &str) -> Vec<String> {
    [
        "serve",
        "--license",
        "node.license",
        "--sealed",
        "m.sealed",
        "--node-dir",
        "node",
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--license-server",
        url,
    ]
    .map(String::from)
    .to_vec()
}

pub fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
