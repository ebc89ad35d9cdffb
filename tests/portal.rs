//! The portal against a real `leasehold license-server` process (SQLite, and two
//! replicas on PostgreSQL), driven over HTTP as a browser without JavaScript drives
//! it: cookies, forms, redirects. The vendor invites an organization, the organization
//! applies, the vendor reviews; and what a hostile user tries (no session, a forged
//! form, another organization's application, a used invitation, a staff page) is
//! refused.

mod common;

use std::collections::HashMap;

use common::postgres::{postgres_url, TempDatabase};
use common::vendor::{ok, Node, Vendor, ADMIN_TOKEN, ORG};
use leasehold::node::NodeIdentity;
use leasehold::protocol::UsageCheckpoint;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::StatusCode;

/// A cookie-keeping client that follows no redirect by itself.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: HashMap<String, String>,
    /// Every Set-Cookie line received, for the attribute checks.
    set_cookies: Vec<String>,
}

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The value of the first `<input … name="NAME" value="…">`.
    fn input(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let at = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no input {name} in\n{}", self.body));
        let rest = &self.body[at + marker.len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }

    /// The text of the element with this id.
    fn element(&self, id: &str) -> String {
        let marker = format!("id=\"{id}\"");
        let at = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no #{id} in\n{}", self.body));
        let rest = &self.body[at..];
        let start = rest.find('>').unwrap() + 1;
        let end = rest[start..].find('<').unwrap() + start;
        rest[start..end].trim().to_string()
    }
}

fn encode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Browser {
    fn new(base: &str) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.to_string(),
            cookies: HashMap::new(),
            set_cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn take(&mut self, response: reqwest::Response) -> Page {
        let status = response.status();
        let headers = response.headers().clone();
        for line in headers.get_all(SET_COOKIE) {
            let line = line.to_str().unwrap().to_string();
            let pair = line.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if line.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
            self.set_cookies.push(line);
        }
        let body = response.text().await.unwrap();
        Page {
            status,
            headers,
            body,
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let response = self
            .http
            .get(self.url(path))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.take(response).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let response = self
            .http
            .post(self.url(path))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode(form))
            .send()
            .await
            .unwrap();
        self.take(response).await
    }

    /// Sign in with a token from the sign-in page.
    async fn sign_in(&mut self, token: &str) -> Page {
        let page = self.get("/portal/").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let form = page.input("form");
        self.post("/portal/sign-in", &[("form", &form), ("token", token)])
            .await
    }

    /// The CSRF token of this session's pages.
    async fn csrf(&mut self) -> String {
        self.get("/portal/applications").await.input("csrf")
    }
}

/// Staff signs in with the admin token, invites `org`; the link's path.
async fn invite(staff: &mut Browser, org: &str) -> String {
    let csrf = staff.csrf().await;
    let page = staff
        .post("/portal/orgs/invitations", &[("csrf", &csrf), ("org", org)])
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let link = page.element("invitation-link");
    assert!(link.starts_with(&staff.base), "{link}");
    link[staff.base.len()..].to_string()
}

/// An organization's browser, signed in through a fresh invitation; its access token.
async fn org_account(base: &str, link: &str, contact: &str) -> (Browser, String) {
    let mut org = Browser::new(base);
    let page = org.get(link).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let form = page.input("form");
    let page = org
        .post(link, &[("form", &form), ("contact", contact)])
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let token = page.element("access-token");
    (org, token)
}

fn application_form<'a>(csrf: &'a str, use_case: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("csrf", csrf),
        ("model_id", "tiny"),
        ("use_case", use_case),
        (
            "downstream_applications",
            "an internal help desk for 40 agents",
        ),
        (
            "data_handling",
            "prompts stay on the node; no logs of prompts",
        ),
        ("security_measures", "VPN only, SSO, audit logging"),
        ("fine_tuning_datasets", ""),
        ("nodes", "2"),
        ("term_days", "90"),
        ("track", "commercial"),
    ]
}

/// Apply; the new application's id.
async fn apply(org: &mut Browser, use_case: &str) -> String {
    let csrf = org.csrf().await;
    let page = org
        .post("/portal/applications", &application_form(&csrf, use_case))
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    page.location()
        .strip_prefix("/portal/applications/")
        .unwrap_or_else(|| panic!("redirected to {}", page.location()))
        .to_string()
}

fn started_vendor() -> Vendor {
    let mut vendor = Vendor::new(None, &[]);
    vendor.start();
    vendor.add_model();
    vendor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organization_applies_and_the_vendor_approves_it_into_an_entitlement() {
    let vendor = started_vendor();
    let base = vendor.url();
    let mut staff = Browser::new(&base);
    let signed = staff.sign_in(ADMIN_TOKEN).await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.body);
    let link = invite(&mut staff, ORG).await;

    let (mut org, token) = org_account(&base, &link, "Dana Ortiz").await;
    assert!(token.len() >= 40, "{token}");
    let id = apply(&mut org, "summarising support tickets <b>internally</b>").await;
    let page = org.get(&format!("/portal/applications/{id}")).await;
    assert_eq!(page.element("status"), "submitted");
    // What the organization typed is shown as text, never as markup.
    assert!(
        page.body
            .contains("summarising support tickets &#60;b&#62;internally&#60;/b&#62;")
            || page
                .body
                .contains("summarising support tickets &lt;b&gt;internally&lt;/b&gt;"),
        "{}",
        page.body
    );

    // The vendor asks for changes; the organization sees the note and resubmits.
    let csrf = staff.csrf().await;
    let page = staff
        .post(
            &format!("/portal/applications/{id}/review"),
            &[
                ("csrf", &csrf),
                ("decision", "request-changes"),
                ("note", "say which countries the agents work from"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let page = org.get(&format!("/portal/applications/{id}")).await;
    assert_eq!(page.element("status"), "changes-requested");
    assert!(page
        .body
        .contains("say which countries the agents work from"));
    let csrf = org.csrf().await;
    let mut form = application_form(&csrf, "summarising support tickets, agents in DE and FR");
    form.push(("note", "countries added"));
    let page = org
        .post(&format!("/portal/applications/{id}/resubmit"), &form)
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);

    // Approval with a cap creates the entitlement: nodes, term, lease, grace, caps.
    let csrf = staff.csrf().await;
    let term_end = (chrono::Utc::now() + chrono::Duration::days(30))
        .format("%Y-%m-%d")
        .to_string();
    let page = staff
        .post(
            &format!("/portal/applications/{id}/review"),
            &[
                ("csrf", &csrf),
                ("decision", "approve"),
                ("nodes", "2"),
                ("term_end", &term_end),
                ("lease", "30m"),
                ("grace", "5m"),
                ("caps", "requests-per-day=500\n"),
                ("watermark", "gamma=0.25,delta=2.0"),
                ("filter_rules", "terms = [\"Project Albatross\"]\n"),
                ("note", ""),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let page = org.get(&format!("/portal/applications/{id}")).await;
    assert_eq!(page.element("status"), "approved");
    let entitlements = vendor.admin_json(&["entitlements"]);
    let e = &entitlements["entitlements"][0];
    assert_eq!(e["org"], ORG);
    assert_eq!(e["models"][0], "tiny");
    assert_eq!(e["nodes"], 2);
    assert_eq!(e["lease_seconds"], 1800);
    assert_eq!(e["grace_seconds"], 300);
    assert_eq!(e["caps"]["requests_per_day"], 500, "{e}");
    // The watermark and output filter every license of the entitlement mandates.
    assert_eq!(e["safeguards"]["watermark"]["gamma"], 0.25, "{e}");
    assert_eq!(
        e["safeguards"]["output_filter"]["terms"][0], "Project Albatross",
        "{e}"
    );
    assert!(page.body.contains(e["id"].as_str().unwrap()));

    // The entitlement takes nodes: one enrolls and is approved as before.
    let node = Node::new(&vendor);
    let enrollment = node.enroll_ok(&vendor);
    vendor.admin_ok(&["approve", &enrollment]);

    // Every step is in the history, with who and when; the CSV export has them all.
    let history = vendor.admin_json(&["history"]);
    let steps: Vec<(String, String)> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let org_actor = format!("org:{ORG} (Dana Ortiz)");
    assert_eq!(
        steps,
        [
            ("submitted".to_string(), org_actor.clone()),
            ("changes-requested".to_string(), "staff:admin".to_string()),
            ("resubmitted".to_string(), org_actor),
            ("approved".to_string(), "staff:admin".to_string()),
        ]
    );
    let csv = vendor.admin_ok(&["history", "--csv"]);
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.starts_with("seq,at,application_id,org,actor,action,note\n"));
    assert!(csv.contains("\"say which countries the agents work from\""));

    // The organization signs in again with its token; sign-out ends the session.
    let mut again = Browser::new(&base);
    assert_eq!(again.sign_in(&token).await.status, StatusCode::SEE_OTHER);
    let page = again.get("/portal/applications").await;
    assert!(page.body.contains(&id));
    let session = again.cookies["leasehold_session"].clone();
    let csrf = again.csrf().await;
    let out = again.post("/portal/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    let mut replay = Browser::new(&base);
    replay
        .cookies
        .insert("leasehold_session".into(), session.clone());
    let page = replay.get("/portal/applications").await;
    assert_eq!(
        page.status,
        StatusCode::SEE_OTHER,
        "a signed-out session still works"
    );
    assert_eq!(page.location(), "/portal/");

    // Session cookies: HttpOnly, SameSite=Strict, scoped to the portal (plain HTTP here,
    // so not Secure).
    let line = staff
        .set_cookies
        .iter()
        .find(|l| l.starts_with("leasehold_session=") && !l.contains("Max-Age=0"))
        .unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/portal"] {
        assert!(line.contains(attribute), "{line}");
    }
    assert!(!line.contains("Secure"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_refuses_forged_forms_strangers_and_other_organizations() {
    let vendor = started_vendor();
    let base = vendor.url();
    let mut staff = Browser::new(&base);
    staff.sign_in(ADMIN_TOKEN).await;
    let link_a = invite(&mut staff, ORG).await;
    let link_b = invite(&mut staff, "Globex").await;
    let (mut a, _) = org_account(&base, &link_a, "Ann").await;
    let (mut b, _) = org_account(&base, &link_b, "Bo").await;
    let id = apply(&mut a, "support chat").await;
    let submitted = || {
        vendor.admin_json(&["applications", "--status", "all"])["applications"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(submitted(), 1);

    // No session: the form is not taken; the browser is sent to sign in.
    let mut stranger = Browser::new(&base);
    let page = stranger
        .post("/portal/applications", &application_form("x", "stolen"))
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/portal/");
    // A session but a forged CSRF token (a form posted from another site).
    let page = a
        .post(
            "/portal/applications",
            &application_form("forged", "forged"),
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert_eq!(submitted(), 1, "a refused form stored an application");

    // Another organization's application is not found, not listed, not resubmittable.
    let page = b.get(&format!("/portal/applications/{id}")).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(!b.get("/portal/applications").await.body.contains(&id));
    let csrf = b.csrf().await;
    let page = b
        .post(
            &format!("/portal/applications/{id}/resubmit"),
            &application_form(&csrf, "hijacked"),
        )
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);

    // Organizations cannot reach the vendor's pages or decide.
    assert_eq!(b.get("/portal/orgs").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        b.get("/portal/enrollments").await.status,
        StatusCode::NOT_FOUND
    );
    let csrf = a.csrf().await;
    let page = a
        .post(
            &format!("/portal/applications/{id}/review"),
            &[
                ("csrf", &csrf),
                ("decision", "deny"),
                ("note", "self-service"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    let status = vendor.admin_json(&["application", "show", &id])["application"]["status"].clone();
    assert_eq!(status, "submitted");

    // An invitation works once; an unknown token and a wrong sign-in get nowhere.
    let mut late = Browser::new(&base);
    assert_eq!(late.get(&link_a).await.status, StatusCode::CONFLICT);
    assert_eq!(
        late.get("/portal/invitations/not-a-token").await.status,
        StatusCode::NOT_FOUND
    );
    let page = late.sign_in("not-a-token-of-anyone").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(!late.cookies.contains_key("leasehold_session"));
    // A sign-in form without its double-submit cookie (posted from another site).
    let mut csrf_less = Browser::new(&base);
    let page = csrf_less
        .post("/portal/sign-in", &[("form", "x"), ("token", ADMIN_TOKEN)])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(!csrf_less.cookies.contains_key("leasehold_session"));

    // Pages carry the headers that keep them out of frames and caches.
    let page = a.get("/portal/applications").await;
    for (name, value) in [
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(page.headers[name], value, "{name}");
    }
    assert!(page.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
}

#[test]
fn every_portal_action_is_also_an_admin_command() {
    let vendor = started_vendor();
    let out = vendor.admin_json(&["org", "invite", "--org", ORG]);
    let url = out["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("{}/portal/invitations/", vendor.url())));
    let staff = vendor.admin_json(&["staff", "add", "Rosa"]);
    let staff_token = staff["token"].as_str().unwrap().to_string();
    assert_ne!(
        vendor.admin(&["staff", "add", "Rosa"]).status.code(),
        Some(0),
        "a second token for the same name"
    );
    let orgs = vendor.admin_json(&["org", "list"]);
    assert_eq!(orgs["orgs"][0]["name"], ORG);
    assert_eq!(orgs["orgs"][0]["open_invitations"], 1);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = rt.block_on(async {
        let link = &url[vendor.url().len()..];
        let (mut org, _) = org_account(&vendor.url(), link, "Lee").await;
        let first = apply(&mut org, "first").await;
        let second = apply(&mut org, "second").await;
        // A named staff member signs in with their token.
        let mut rosa = Browser::new(&vendor.url());
        assert_eq!(
            rosa.sign_in(&staff_token).await.status,
            StatusCode::SEE_OTHER
        );
        assert!(rosa.get("/portal/applications").await.body.contains(&first));
        (first, second)
    });

    let queue = vendor.admin_json(&["applications"]);
    assert_eq!(queue["applications"].as_array().unwrap().len(), 2);
    let (first, second) = id;
    // Deny and request changes need a note; approval takes entitle's flags.
    let out = vendor.admin(&["application", "deny", &first, "--note", " "]);
    assert_ne!(out.status.code(), Some(0));
    vendor.admin_ok(&["application", "deny", &first, "--note", "not for this use"]);
    vendor.admin_ok(&[
        "application",
        "request-changes",
        &second,
        "--note",
        "name the datasets",
    ]);
    let out = vendor.admin(&["application", "approve", &second, "--lease", "30m"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "approving an application that waits for changes"
    );
    let denied = vendor.admin_json(&["applications", "--status", "denied"]);
    assert_eq!(denied["applications"][0]["id"], first.as_str());
    let shown = ok(&vendor.admin(&["application", "show", &first]), "show");
    assert!(
        shown.contains("denied") && shown.contains("not for this use"),
        "{shown}"
    );
    let history = vendor.admin_ok(&["history"]);
    assert_eq!(history.lines().count(), 4, "{history}");
    assert!(
        history.contains("staff:admin: not for this use"),
        "{history}"
    );
}

/// Two replicas on one PostgreSQL database: a session made on one is good on the other
/// (sessions live in the database), an invitation used on one is used on both, and an
/// application decided on one cannot be decided again on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_sessions_and_decisions_hold_across_two_replicas_on_postgres() {
    let Some(admin_url) = postgres_url() else {
        return;
    };
    let db = TempDatabase::create(&admin_url);
    let mut one = Vendor::new(Some(db.url()), &[]);
    one.start();
    one.add_model();
    let mut two = Vendor::new(Some(db.url()), &[]);
    // Same issuer: the second replica uses the first one's key and certificate.
    for file in ["issuer.key", "issuer.cert", "admin.token"] {
        std::fs::copy(one.path().join(file), two.path().join(file)).unwrap();
    }
    two.start();

    let mut staff = Browser::new(&one.url());
    staff.sign_in(ADMIN_TOKEN).await;
    let link = invite(&mut staff, ORG).await;
    // The invitation opened on replica two; used there, it is used on replica one too.
    let (mut org, _) = org_account(&two.url(), &link, "Kim").await;
    let mut late = Browser::new(&one.url());
    assert_eq!(late.get(&link).await.status, StatusCode::CONFLICT);
    let id = apply(&mut org, "research assistant").await;

    // The staff session from replica one works on replica two.
    let mut staff_two = Browser::new(&two.url());
    staff_two.cookies = staff.cookies.clone();
    let page = staff_two.get(&format!("/portal/applications/{id}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let csrf = page.input("csrf");
    let denied = staff_two
        .post(
            &format!("/portal/applications/{id}/review"),
            &[
                ("csrf", &csrf),
                ("decision", "deny"),
                ("note", "out of scope"),
            ],
        )
        .await;
    assert_eq!(denied.status, StatusCode::SEE_OTHER, "{}", denied.body);
    // Replica one, with a page loaded before the denial, cannot approve it now.
    let csrf = staff.csrf().await;
    let late_approval = staff
        .post(
            &format!("/portal/applications/{id}/review"),
            &[
                ("csrf", &csrf),
                ("decision", "approve"),
                ("nodes", "1"),
                ("term_end", "2099-01-01"),
                ("lease", "30m"),
                ("grace", "0s"),
            ],
        )
        .await;
    assert_eq!(
        late_approval.status,
        StatusCode::CONFLICT,
        "{}",
        late_approval.body
    );
    assert!(one.admin_json(&["entitlements"])["entitlements"]
        .as_array()
        .unwrap()
        .is_empty());
}

/// A renewal of the node in `node_dir` reporting `usage` (as `serve` sends one).
async fn renew_reporting(base: &str, node_dir: &std::path::Path, usage: UsageCheckpoint) {
    let identity = leasehold::node::NodeIdentity::load(node_dir).unwrap();
    let (request, _) = leasehold::protocol::sign_request(
        &identity,
        "tiny",
        Some(leasehold::protocol::LicenseRef {
            license_id: "0".repeat(32),
            serial: 0,
        }),
        usage,
        chrono::Utc::now(),
    );
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/renewals"))
        .body(request.render())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversight_shows_nodes_usage_against_caps_and_revokes_after_confirmation() {
    let mut vendor = started_vendor();
    let base = vendor.url();
    ok(
        &vendor.try_entitle(2, "30m", "0s", &["--cap", "requests-per-day=40"]),
        "entitle",
    );
    let node = Node::new(&vendor);
    let enrollment = node.enroll_ok(&vendor);
    vendor.admin_ok(&["approve", &enrollment]);
    let node_dir = node.path().join("node");
    let node_id = leasehold::node::NodeIdentity::load(&node_dir)
        .unwrap()
        .public()
        .node_id();
    // Two checkpoints of one run: 5 then 12 requests in total; the day counts 12.
    let since = Some(chrono::Utc::now() - chrono::Duration::minutes(5));
    for (requests, tokens) in [(5, 100), (12, 260)] {
        let usage = UsageCheckpoint {
            since,
            requests,
            prompt_tokens: tokens,
            completion_tokens: tokens / 2,
            ..UsageCheckpoint::default()
        };
        renew_reporting(&base, &node_dir, usage).await;
    }

    let mut staff = Browser::new(&base);
    staff.sign_in(ADMIN_TOKEN).await;
    let org_path = format!("/portal/orgs/{}", ORG.replace(' ', "%20"));
    let page = staff.get(&org_path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains(&node_id));
    assert!(page
        .body
        .contains(r#"<span class="status active">active</span>"#));
    // The day's bar and the cap: 12 requests today, the per-node cap 40 times 2 nodes.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(
        page.body.contains(&format!("{today}: 12</title>")),
        "{}",
        page.body
    );
    assert!(page.body.contains("cap 80"), "{}", page.body);
    assert!(page
        .body
        .contains(&format!("node {node_id} requests per day")));
    assert!(page.body.contains("cap 40"));
    let quarter = format!(
        "{}-Q{}",
        chrono::Utc::now().format("%Y"),
        (chrono::Datelike::month0(&chrono::Utc::now()) / 3) + 1
    );
    assert!(page.body.contains(&format!(
        "<td>{quarter}</td><td>12</td><td>260</td><td>130</td>"
    )));
    // The same figures from the command line.
    let shown = vendor.admin_json(&["org", "show", ORG]);
    assert_eq!(shown["daily"][0]["requests"], 12);
    assert_eq!(shown["nodes"][0]["phase"], "active");

    // The organization sees its own usage, not another organization's page.
    let link = invite(&mut staff, ORG).await;
    let (mut org, _) = org_account(&base, &link, "Uma").await;
    let own = org.get("/portal/usage").await;
    assert_eq!(own.status, StatusCode::OK);
    assert!(own.body.contains(&format!("{today}: 12</title>")));
    assert!(
        !own.body.contains("Revoke"),
        "an organization is offered a revocation"
    );
    assert_eq!(
        org.get("/portal/orgs/Globex").await.status,
        StatusCode::NOT_FOUND
    );
    // It makes an enrollment token for its nodes (shown once); staff have no such button.
    assert!(own.body.contains("make-enrollment-token"));
    let csrf = org.csrf().await;
    let made = org
        .post("/portal/enrollment-tokens", &[("csrf", &csrf)])
        .await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.body);
    assert!(made.element("enrollment-token").len() >= 40);
    assert!(!staff
        .get(&org_path)
        .await
        .body
        .contains("make-enrollment-token"));

    // Revocation asks for confirmation first; unconfirmed, nothing happens.
    let confirm = staff.get(&format!("/portal/nodes/{node_id}/revoke")).await;
    assert_eq!(confirm.status, StatusCode::OK);
    let csrf = confirm.input("csrf");
    let path = format!("/portal/nodes/{node_id}/revoke");
    let unconfirmed = staff
        .post(&path, &[("csrf", &csrf), ("reason", "audit refused")])
        .await;
    assert_eq!(unconfirmed.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        vendor.admin_json(&["org", "show", ORG])["nodes"][0]["phase"],
        "active"
    );
    // An organization cannot revoke, even its own node.
    let csrf_org = org.csrf().await;
    let refused = org
        .post(
            &path,
            &[("csrf", &csrf_org), ("reason", "x"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    let done = staff
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("reason", "audit refused"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let page = staff.get(&org_path).await;
    assert!(page
        .body
        .contains(r#"<span class="status revoked">revoked</span>"#));
    assert!(page.body.contains("audit refused (by staff:admin)"));
    vendor.stop();
}

#[test]
fn an_enrollment_token_gets_a_node_approved_on_arrival_within_the_seats() {
    let vendor = started_vendor();
    ok(
        &vendor.try_entitle(1, "30m", "0s", &["--auto-approve"]),
        "entitle --auto-approve",
    );
    let token = |org: &str| {
        vendor.admin_json(&["org", "enrollment-token", "--org", org])["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (ours, theirs) = (token(ORG), token("Globex"));
    let enroll = |token: Option<&str>| {
        let node = Node::new(&vendor);
        let out = match token {
            Some(t) => {
                std::fs::write(node.path().join("enrollment.token"), format!("{t}\n")).unwrap();
                node.enroll_with(&vendor, &["--enrollment-token-file", "enrollment.token"])
            }
            None => node.enroll(&vendor),
        };
        let stdout = ok(&out, "enroll");
        let id = stdout.lines().last().unwrap().trim().to_string();
        (stdout, id)
    };
    // Without a token, or with another organization's: pending, as before (anyone can
    // submit an enrollment naming any organization).
    let (out, plain) = enroll(None);
    assert!(out.contains("is pending"), "{out}");
    let (out, foreign) = enroll(Some(&theirs));
    assert!(out.contains("is pending"), "{out}");
    // With the organization's token: approved at once, taking the one seat.
    let (out, first) = enroll(Some(&ours));
    assert!(out.contains("is approved"), "{out}");
    // The seat is taken: the next one waits for the vendor, token or not.
    let (out, second) = enroll(Some(&ours));
    assert!(out.contains("is pending"), "{out}");
    let status = |id: &str| {
        vendor.admin_json(&["enrollments", "--status", "all"])["enrollments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        [
            status(&plain),
            status(&foreign),
            status(&first),
            status(&second)
        ],
        ["pending", "pending", "approved", "pending"]
    );
    // The queue tells the vendor which pending ones came with the organization's token.
    let with_token = |id: &str| {
        vendor.admin_json(&["enrollments", "--status", "all"])["enrollments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .unwrap()["with_token"]
            .as_bool()
            .unwrap()
    };
    assert_eq!(
        [
            with_token(&plain),
            with_token(&foreign),
            with_token(&second)
        ],
        [false, false, true]
    );
    // The approved node gets its license at its first request, as any approved node.
    let entitlements = vendor.admin_json(&["entitlements"]);
    assert_eq!(entitlements["entitlements"][0]["enrolled"], 1);
    assert_eq!(entitlements["entitlements"][0]["auto_approve"], true);
    // A revoked enrollment token approves nothing more, even with a free seat on an
    // entitlement that approves on arrival.
    let revoked = vendor.admin_json(&["org", "revoke-tokens", "--org", ORG, "--enrollment"]);
    assert_eq!(revoked["enrollment_tokens"], 1);
    assert_eq!(revoked["access_tokens"], 0);
    ok(
        &vendor.try_entitle(1, "30m", "0s", &["--auto-approve"]),
        "entitle --auto-approve",
    );
    let (out, _) = enroll(Some(&ours));
    assert!(out.contains("is pending"), "{out}");
    // A fresh token does (the control).
    let (out, _) = enroll(Some(&token(ORG)));
    assert!(out.contains("is approved"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_tokens_end_their_sessions_and_a_stale_review_is_refused() {
    let vendor = started_vendor();
    let base = vendor.url();
    let staff_token = vendor.admin_json(&["staff", "add", "Rosa"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut rosa = Browser::new(&base);
    assert_eq!(
        rosa.sign_in(&staff_token).await.status,
        StatusCode::SEE_OTHER
    );
    let link = invite(&mut rosa, ORG).await;
    let (mut org, org_token) = org_account(&base, &link, "Ira").await;
    let id = apply(&mut org, "first version").await;

    // Rosa opens the application; meanwhile changes are asked for and it is resubmitted
    // with another use case. Her approval of the version she saw is refused.
    let page = rosa.get(&format!("/portal/applications/{id}")).await;
    let (seen, csrf) = (page.input("seen"), page.input("csrf"));
    vendor.admin_ok(&[
        "application",
        "request-changes",
        &id,
        "--note",
        "more detail",
    ]);
    let csrf_org = org.csrf().await;
    let page = org
        .post(
            &format!("/portal/applications/{id}/resubmit"),
            &application_form(&csrf_org, "second version, quite different"),
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let stale = rosa
        .post(
            &format!("/portal/applications/{id}/review"),
            &[
                ("csrf", &csrf),
                ("seen", &seen),
                ("decision", "approve"),
                ("nodes", "1"),
                ("term_end", "2099-01-01"),
                ("lease", "30m"),
                ("grace", "0s"),
            ],
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.body);
    assert!(vendor.admin_json(&["entitlements"])["entitlements"]
        .as_array()
        .unwrap()
        .is_empty());

    // Removing Rosa's token ends her session; revoking the organization's access tokens
    // ends its sessions and its token signs in no more.
    vendor.admin_ok(&["staff", "remove", "Rosa"]);
    let page = rosa.get("/portal/applications").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(
        rosa.sign_in(&staff_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    let revoked = vendor.admin_json(&["org", "revoke-tokens", "--org", ORG, "--access"]);
    assert_eq!(revoked["access_tokens"], 1);
    assert_eq!(
        org.get("/portal/applications").await.status,
        StatusCode::SEE_OTHER
    );
    let mut again = Browser::new(&base);
    assert_eq!(
        again.sign_in(&org_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Contact names cannot hide text with bidi controls (an actor that reads as staff).
    let mut admin = Browser::new(&base);
    admin.sign_in(ADMIN_TOKEN).await;
    let link = invite(&mut admin, ORG).await;
    let mut spoof = Browser::new(&base);
    let page = spoof.get(&link).await;
    let form = page.input("form");
    let page = spoof
        .post(
            &link,
            &[("form", &form), ("contact", "x\u{202E}nimda:ffats")],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_the_public_url_makes_the_links_and_secure_cookies() {
    let mut vendor = Vendor::new(None, &[]);
    vendor.start_with(&["--public-url", "https://licenses.example/"]);
    let mut staff = Browser::new(&vendor.url());
    staff.sign_in(ADMIN_TOKEN).await;
    let line = staff
        .set_cookies
        .iter()
        .find(|l| l.starts_with("leasehold_session="))
        .unwrap()
        .clone();
    assert!(line.contains("; Secure"), "{line}");
    let csrf = staff.csrf().await;
    let page = staff
        .post("/portal/orgs/invitations", &[("csrf", &csrf), ("org", ORG)])
        .await;
    let link = page.element("invitation-link");
    assert!(
        link.starts_with("https://licenses.example/portal/invitations/"),
        "{link}"
    );
}

// ---- Audits ----

/// POST the audit request form.
async fn post_form(browser: &mut Browser, fields: &[(String, String)]) -> Page {
    let pairs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    browser.post("/portal/audits", &pairs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_request_audits_in_the_portal_and_its_reports_download_as_the_node_reports() {
    let mut vendor = Vendor::new(None, &[]);
    vendor.start();
    vendor.entitle(1, "50m", "10m");
    let base = vendor.url();
    let node = Node::new(&vendor);
    let enrollment = node.enroll_ok(&vendor);
    vendor.admin_ok(&["approve", &enrollment]);
    let identity = NodeIdentity::load(&node.path().join("node")).unwrap();
    let node_id = identity.public().node_id();

    // Usage before the period ends, reported at a renewal; the period ends a moment later.
    let first = common::audit::write_requests(&identity, None, 0..3).await;
    common::audit::renew_reporting(&base, &identity, &first).await;
    common::audit::write_requests(&identity, Some(&first), 3..6).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let to = leasehold::format::time::rfc3339(chrono::Utc::now());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    // Staff find the request form from the organization's overview, prefilled.
    let mut staff = Browser::new(&base);
    staff.sign_in(ADMIN_TOKEN).await;
    let overview = staff.get("/portal/orgs/Acme%20Corp").await;
    assert!(
        overview.body.contains("/portal/audits?org=Acme%20Corp"),
        "{}",
        overview.body
    );
    let page = staff.get("/portal/audits?org=Acme%20Corp").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("href=\"/portal/audits\">Audits</a>"));
    assert_eq!(page.input("org"), ORG);
    assert_eq!(page.input("max_renewals"), "3");
    let csrf = page.input("csrf");
    let audits = |v: &Vendor| {
        v.admin_json(&["audit", "list"])["audits"]
            .as_array()
            .unwrap()
            .clone()
    };
    let note = "Q4 <script>alert(1)</script> & co";
    let request = |csrf: &str, org: &str, to: &str| -> Vec<(String, String)> {
        [
            ("csrf", csrf),
            ("org", org),
            ("from", "2020-01-01"),
            ("to", to),
            ("max_renewals", "3"),
            ("note", note),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };

    // Without the session's CSRF token (a form posted from another site): refused.
    let forged = post_form(&mut staff, &request("forged", ORG, &to)).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
    let missing = staff
        .post(
            "/portal/audits",
            &[("org", ORG), ("from", "2020-01-01"), ("to", &to)],
        )
        .await;
    assert!(missing.status.is_client_error(), "{}", missing.status);
    assert!(
        audits(&vendor).is_empty(),
        "a refused form requested an audit"
    );
    // A period that ends before it starts, or an organization without nodes: the form
    // again with the message and what was typed.
    let bad = post_form(&mut staff, &request(&csrf, ORG, "2019-06-01")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert!(bad.element("error").contains("ends"), "{}", bad.body);
    assert_eq!(bad.input("to"), "2019-06-01");
    let nobody = post_form(&mut staff, &request(&csrf, "Globex", &to)).await;
    assert_eq!(nobody.status, StatusCode::BAD_REQUEST, "{}", nobody.body);
    assert!(nobody.element("error").contains("no approved nodes"));
    assert!(audits(&vendor).is_empty());

    // The request: the audit's page, and the same audit through the admin CLI.
    let made = post_form(&mut staff, &request(&csrf, ORG, &to)).await;
    assert_eq!(made.status, StatusCode::SEE_OTHER, "{}", made.body);
    let audit_id = made
        .location()
        .strip_prefix("/portal/audits/")
        .unwrap_or_else(|| panic!("redirected to {}", made.location()))
        .to_string();
    let listed = audits(&vendor);
    assert_eq!(listed.len(), 1);
    let a = &listed[0];
    assert_eq!(a["id"], audit_id.as_str());
    assert_eq!(a["org"], ORG);
    assert_eq!(a["from"], "2020-01-01T00:00:00Z");
    assert_eq!(a["to"], to.as_str());
    assert_eq!(a["max_renewals"], 3);
    assert_eq!(a["note"], note);
    assert_eq!(a["requested_by"], "staff:admin");
    assert_eq!(a["nodes"][0]["node_id"], node_id.as_str());
    let audit_path = format!("/portal/audits/{audit_id}");
    let page = staff.get(&audit_path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.element("status"), "open");
    assert_eq!(page.element(&format!("node-status-{node_id}")), "waiting");
    // The note is text, never markup.
    assert!(!page.body.contains("<script>"), "{}", page.body);
    assert!(
        page.body
            .contains("Q4 &#60;script&#62;alert(1)&#60;/script&#62; &#38; co")
            || page
                .body
                .contains("Q4 &lt;script&gt;alert(1)&lt;/script&gt; &amp; co"),
        "{}",
        page.body
    );
    assert!(staff.get("/portal/audits").await.body.contains(&audit_id));

    // Organizations: A sees its own audit (read-only) and cannot request one; B sees
    // nothing of A's.
    let link = invite(&mut staff, ORG).await;
    let (mut org_a, _) = org_account(&base, &link, "Ann").await;
    let link = invite(&mut staff, "Globex").await;
    let (mut org_b, _) = org_account(&base, &link, "Bo").await;
    let own = org_a.get("/portal/audits").await;
    assert_eq!(own.status, StatusCode::OK);
    assert!(own.body.contains(&audit_id));
    assert!(
        !own.body.contains("action=\"/portal/audits\""),
        "an organization is offered the request form"
    );
    assert_eq!(org_a.get(&audit_path).await.status, StatusCode::OK);
    let csrf_a = org_a.csrf().await;
    let refused = post_form(&mut org_a, &request(&csrf_a, ORG, &to)).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.body);
    assert_eq!(audits(&vendor).len(), 1);
    assert!(!org_b.get("/portal/audits").await.body.contains(&audit_id));
    let csv_path = format!("{audit_path}/nodes/{node_id}/report.csv");
    let json_path = format!("{audit_path}/nodes/{node_id}/report.json");
    for path in [&audit_path, &csv_path, &json_path] {
        let page = org_b.get(path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}: {}", page.body);
    }
    // Nothing to download before the node answers.
    assert_eq!(staff.get(&csv_path).await.status, StatusCode::CONFLICT);

    // The node finds the audit in its next renewal's response, and (air-gapped here)
    // exports its answer, which the vendor imports.
    let after = common::audit::write_requests(&identity, Some(&first), 6..7).await;
    let answer = common::audit::renew_reporting(&base, &identity, &after).await;
    assert_eq!(answer["audit"]["audit_id"], audit_id.as_str(), "{answer}");
    let dir = node.path();
    let from = "2020-01-01T00:00:00Z";
    ok(
        &common::audit::export(dir, from, &to, "answer.audit"),
        "audit export",
    );
    let answer_file = dir.join("answer.audit");
    let imported = vendor.admin_json(&["audit", "import", answer_file.to_str().unwrap()]);
    assert_eq!(imported["accepted"], true, "{imported}");
    let node_report = |by: &str, format: &str| {
        ok(
            &common::audit::report(dir, from, &to, by, format),
            "audit report",
        )
    };
    let expected = node_report("quarter", "csv");
    assert!(
        expected.contains(",6,"),
        "six requests in the period:\n{expected}"
    );

    // The CSV download is `audit report` on the node's ledger, byte for byte; the JSON
    // has its totals. The organization downloads the same.
    let page = staff.get(&audit_path).await;
    assert_eq!(page.element("status"), "complete");
    assert_eq!(page.element(&format!("node-status-{node_id}")), "answered");
    assert!(page.body.contains(&format!("id=\"report-{node_id}\"")));
    assert!(page
        .body
        .contains(&format!("href=\"{csv_path}?by=quarter\"")));
    for browser in [&mut staff, &mut org_a] {
        let csv = browser.get(&csv_path).await;
        assert_eq!(csv.status, StatusCode::OK, "{}", csv.body);
        assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
        let disposition = csv.headers["content-disposition"].to_str().unwrap();
        assert!(
            disposition.starts_with("attachment; filename=\"audit-")
                && disposition.ends_with(&format!("-{node_id}.csv\"")),
            "{disposition}"
        );
        assert_eq!(csv.body, expected);
        let json = browser.get(&json_path).await;
        assert_eq!(json.status, StatusCode::OK, "{}", json.body);
        let report: serde_json::Value = serde_json::from_str(&json.body).unwrap();
        let on_node: serde_json::Value =
            serde_json::from_str(&node_report("quarter", "json")).unwrap();
        assert_eq!(report["totals"], on_node["totals"], "{report}");
        assert_eq!(report["totals"]["requests"], 6);
        assert_eq!(report["audit_id"], audit_id.as_str());
        assert_eq!(report["by"], "quarter");
    }
    let by_day = staff.get(&format!("{csv_path}?by=day")).await;
    assert_eq!(by_day.body, node_report("day", "csv"));
    assert_eq!(
        staff.get(&format!("{csv_path}?by=week")).await.status,
        StatusCode::BAD_REQUEST
    );
    for path in [&audit_path, &csv_path, &json_path] {
        assert_eq!(
            org_b.get(path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    // Without a session: to the sign-in page.
    let mut stranger = Browser::new(&base);
    let page = stranger.get(&csv_path).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/portal/");

    // An audit the node lets go unanswered through its renewals is flagged in the list.
    let second = vendor.admin_json(&[
        "audit",
        "request",
        "--org",
        ORG,
        "--from",
        from,
        "--to",
        &to,
        "--renewals",
        "1",
    ]);
    let second_id = second["id"].as_str().unwrap();
    common::audit::renew_reporting(&base, &identity, &after).await;
    let list = staff.get("/portal/audits").await;
    assert!(list.body.contains(second_id));
    assert!(list.body.contains("FLAGGED"), "{}", list.body);
    let page = staff.get(&format!("/portal/audits/{second_id}")).await;
    assert_eq!(
        page.element(&format!("node-status-{node_id}")),
        "unanswered"
    );
    assert_eq!(page.element("flagged"), "FLAGGED");
    vendor.stop();
}
