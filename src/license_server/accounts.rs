//! Who may use the portal, and their sessions.
//!
//! - Vendor staff sign in with the server's admin token (as `admin`) or a named staff
//!   token (`admin staff add NAME`, shown once).
//! - An organization's people get an invitation link from the vendor (`admin org invite
//!   --org ORG`, or the portal's button): opening it once creates the organization's
//!   account and shows its access token, once.
//! - A session is a random cookie value; the database keeps only its SHA-256 (as it does
//!   for every token), the account, a CSRF token for its forms and its expiry, so that
//!   replicas share sessions and a database copy signs nobody in.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::registry::{time, ts};
use super::store::sql::{Sql, Value};
use super::store::StoreError;
use super::{ApiError, Service};
use crate::crypto::random;
use crate::http_auth::token_matches;
use crate::node::clock;

/// How long a portal session lasts from sign-in.
pub const SESSION_HOURS: i64 = 8;
/// How long an invitation link stays valid.
pub const INVITATION_DAYS: i64 = 14;

/// A new random secret (token, session id, CSRF token): 32 bytes, base64url.
pub fn new_secret() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random::bytes::<32>())
}

/// What the database keeps of a secret.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The two kinds of portal account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    Staff,
    Org,
}

impl AccountKind {
    fn as_str(self) -> &'static str {
        match self {
            AccountKind::Staff => "staff",
            AccountKind::Org => "org",
        }
    }
}

/// A signed-in portal user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub kind: AccountKind,
    /// The staff member's name, or the organization's.
    pub name: String,
    /// Who, for the history: `staff:NAME` or `org:ORG (CONTACT)`.
    pub actor: String,
}

impl Account {
    pub fn is_staff(&self) -> bool {
        self.kind == AccountKind::Staff
    }

    /// The organization whose data this account may see (none for staff: all).
    pub fn org(&self) -> Option<&str> {
        (self.kind == AccountKind::Org).then_some(self.name.as_str())
    }
}

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub account: Account,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
    /// What it signed in with: the hash of a staff or organization token, or
    /// [`ADMIN_CREDENTIAL`]. Revoking that token ends the session.
    pub credential: String,
}

/// A session's credential when it signed in with the server's admin token.
pub const ADMIN_CREDENTIAL: &str = "admin-token";

/// A new session: the cookie value (only the caller sees it) and the session.
pub struct NewSession {
    pub cookie: String,
    pub session: Session,
}

/// `POST /admin/staff`: a named staff token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StaffRequest {
    pub name: String,
}

/// A staff token, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StaffAdded {
    pub name: String,
    pub token: String,
}

/// `POST /admin/invitations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InviteRequest {
    pub org: String,
}

/// An invitation: the link's path on this server (the token is in it), shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invitation {
    pub org: String,
    pub path: String,
    pub expires_at: DateTime<Utc>,
}

/// An organization account, made from an invitation: its access token, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrgAccount {
    pub org: String,
    pub contact: String,
    pub token: String,
}

/// An organization the vendor invited.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Org {
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// Accounts made from its invitations.
    pub accounts: u64,
    /// Invitations not yet used and not expired.
    pub open_invitations: u64,
}

/// `GET /admin/orgs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrgList {
    pub orgs: Vec<Org>,
}

/// `POST /admin/enrollment-tokens`, or an organization's own request in the portal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentTokenRequest {
    pub org: String,
}

/// A token an organization's nodes send with their enrollment (`leasehold enroll
/// --enrollment-token-file`): an entitlement that approves automatically approves
/// them on arrival. Shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollmentToken {
    pub org: String,
    pub token: String,
}

/// Delete sessions that expired or ended before `before`.
pub fn forget_sessions(sql: &mut dyn Sql, before: DateTime<Utc>) -> Result<u64, StoreError> {
    sql.execute(
        "DELETE FROM sessions WHERE expires_at < $1 OR ended_at < $1",
        &[ts(before)],
    )
}

/// The organization an enrollment token belongs to (none when unknown or revoked).
pub fn enrollment_token_org(sql: &mut dyn Sql, hash: &str) -> Result<Option<String>, StoreError> {
    sql.query_opt(
        "SELECT org FROM enrollment_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
        &[hash.into()],
    )?
    .map(|row| row.text(0))
    .transpose()
}

/// `POST /admin/orgs/{org}/revoke-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeTokensRequest {
    pub org: String,
    /// The organization's portal access tokens.
    pub access: bool,
    /// Its enrollment tokens.
    pub enrollment: bool,
}

/// How many tokens a revocation ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokensRevoked {
    pub access_tokens: u64,
    pub enrollment_tokens: u64,
}

/// A name for a staff member, organization or contact: 1 to 256 printable characters.
pub fn check_name(what: &str, name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    // Control characters, and the invisible ones that reorder or hide text (bidi
    // controls, zero-width marks), which could make one actor read as another.
    let invisible = |c: char| matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{061C}' | '\u{00AD}');
    if name.is_empty() || name.len() > 256 || name.chars().any(|c| c.is_control() || invisible(c)) {
        return Err(ApiError::BadRequest(format!(
            "{what} must be 1 to 256 printable characters"
        )));
    }
    Ok(name.to_string())
}

fn add_staff(
    sql: &mut dyn Sql,
    name: &str,
    hash: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if sql
        .query_opt("SELECT name FROM staff WHERE name = $1", &[name.into()])?
        .is_some()
    {
        return Err(StoreError::Conflict(format!(
            "staff member '{name}' has a token already"
        )));
    }
    sql.execute(
        "INSERT INTO staff (name, token_hash, created_at) VALUES ($1, $2, $3)",
        &[name.into(), hash.into(), ts(now)],
    )?;
    Ok(())
}

fn invite(
    sql: &mut dyn Sql,
    org: &str,
    hash: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if sql
        .query_opt("SELECT name FROM orgs WHERE name = $1", &[org.into()])?
        .is_none()
    {
        sql.execute(
            "INSERT INTO orgs (name, created_at, invited_by) VALUES ($1, $2, $3)",
            &[org.into(), ts(now), by.into()],
        )?;
    }
    sql.execute(
        "INSERT INTO invitations (token_hash, org, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        &[
            hash.into(),
            org.into(),
            by.into(),
            ts(now),
            ts(now + Duration::days(INVITATION_DAYS)),
        ],
    )?;
    Ok(())
}

/// The organization an open invitation is for.
fn invitation_org(sql: &mut dyn Sql, hash: &str, now: DateTime<Utc>) -> Result<String, StoreError> {
    let row = sql
        .query_opt(
            "SELECT org, expires_at, used_at FROM invitations WHERE token_hash = $1",
            &[hash.into()],
        )?
        .ok_or_else(|| {
            StoreError::NotFound(
                "this invitation link is not known here; ask the vendor for a new one".into(),
            )
        })?;
    if row.opt_int(2)?.is_some() {
        return Err(StoreError::Conflict(
            "this invitation link was used already; sign in with the access token it gave, or ask the vendor for a new link".into(),
        ));
    }
    if time(row.int(1)?) <= now {
        return Err(StoreError::Refused(
            "this invitation link has expired; ask the vendor for a new one".into(),
        ));
    }
    row.text(0)
}

fn accept_invitation(
    sql: &mut dyn Sql,
    hash: &str,
    contact: &str,
    token_hash: &str,
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    let org = invitation_org(sql, hash, now)?;
    // Once: a second acceptance (another replica, a double click) changes no row.
    let used = sql.execute(
        "UPDATE invitations SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
        &[ts(now), hash.into()],
    )?;
    if used != 1 {
        return Err(StoreError::Conflict(
            "this invitation link was used already".into(),
        ));
    }
    sql.execute(
        "INSERT INTO org_members (token_hash, org, contact, created_at) VALUES ($1, $2, $3, $4)",
        &[token_hash.into(), (&org).into(), contact.into(), ts(now)],
    )?;
    Ok(org)
}

/// The account a token signs in as (the admin token is checked by the caller).
fn account_of_token(sql: &mut dyn Sql, hash: &str) -> Result<Option<Account>, StoreError> {
    if let Some(row) = sql.query_opt(
        "SELECT name FROM staff WHERE token_hash = $1 AND revoked_at IS NULL",
        &[hash.into()],
    )? {
        let name = row.text(0)?;
        return Ok(Some(Account {
            kind: AccountKind::Staff,
            actor: format!("staff:{name}"),
            name,
        }));
    }
    if let Some(row) = sql.query_opt(
        "SELECT org, contact FROM org_members WHERE token_hash = $1 AND revoked_at IS NULL",
        &[hash.into()],
    )? {
        let (org, contact) = (row.text(0)?, row.text(1)?);
        return Ok(Some(Account {
            kind: AccountKind::Org,
            actor: format!("org:{org} ({contact})"),
            name: org,
        }));
    }
    Ok(None)
}

fn start_session(
    sql: &mut dyn Sql,
    hash: &str,
    session: &Session,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let a = &session.account;
    sql.execute(
        "INSERT INTO sessions (id_hash, kind, account, actor, csrf, credential, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            hash.into(),
            a.kind.as_str().into(),
            (&a.name).into(),
            (&a.actor).into(),
            (&session.csrf).into(),
            (&session.credential).into(),
            ts(now),
            ts(session.expires_at),
        ],
    )?;
    Ok(())
}

fn find_session(
    sql: &mut dyn Sql,
    hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<Session>, StoreError> {
    let Some(row) = sql.query_opt(
        "SELECT kind, account, actor, csrf, expires_at, credential FROM sessions WHERE id_hash = $1 AND ended_at IS NULL AND expires_at > $2",
        &[hash.into(), ts(now)],
    )?
    else {
        return Ok(None);
    };
    let kind = match row.text(0)?.as_str() {
        "staff" => AccountKind::Staff,
        "org" => AccountKind::Org,
        other => return Err(StoreError::Corrupt(format!("session kind '{other}'"))),
    };
    let credential = row.text(5)?;
    // The token it signed in with must still be good: a removed one ends its sessions.
    let table = match kind {
        AccountKind::Staff => "staff",
        AccountKind::Org => "org_members",
    };
    if credential != ADMIN_CREDENTIAL
        && sql
            .query_opt(
                &format!("SELECT 1 FROM {table} WHERE token_hash = $1 AND revoked_at IS NULL"),
                &[(&credential).into()],
            )?
            .is_none()
    {
        return Ok(None);
    }
    Ok(Some(Session {
        account: Account {
            kind,
            name: row.text(1)?,
            actor: row.text(2)?,
        },
        csrf: row.text(3)?,
        expires_at: time(row.int(4)?),
        credential,
    }))
}

fn orgs(sql: &mut dyn Sql, now: DateTime<Utc>) -> Result<Vec<Org>, StoreError> {
    sql.query(
        "SELECT name, created_at,
            (SELECT COUNT(*) FROM org_members m WHERE m.org = orgs.name AND m.revoked_at IS NULL),
            (SELECT COUNT(*) FROM invitations i WHERE i.org = orgs.name AND i.used_at IS NULL AND i.expires_at > $1)
         FROM orgs ORDER BY name",
        &[ts(now)],
    )?
    .iter()
    .map(|row| {
        Ok(Org {
            name: row.text(0)?,
            created_at: time(row.int(1)?),
            accounts: row.int(2)?.max(0) as u64,
            open_invitations: row.int(3)?.max(0) as u64,
        })
    })
    .collect()
}

impl Service {
    /// A named staff token for the portal (`admin staff add NAME`), shown once.
    pub async fn add_staff(&self, request: StaffRequest) -> Result<StaffAdded, ApiError> {
        let name = check_name("the staff member's name", &request.name)?;
        if name == "admin" {
            return Err(ApiError::BadRequest(
                "'admin' is the name the admin token signs in as; choose another".into(),
            ));
        }
        let token = new_secret();
        let hash = secret_hash(&token);
        let n = name.clone();
        self.store
            .transact(move |sql| add_staff(sql, &n, &hash, clock::system_now()))
            .await?;
        tracing::info!("staff token added for '{name}'");
        Ok(StaffAdded { name, token })
    }

    /// An invitation link for an organization, made by `by` (an actor).
    pub async fn invite(&self, request: InviteRequest, by: &str) -> Result<Invitation, ApiError> {
        let org = check_name("the organization's name", &request.org)?;
        let token = new_secret();
        let hash = secret_hash(&token);
        let now = clock::system_now();
        let (o, b) = (org.clone(), by.to_string());
        self.store
            .transact(move |sql| invite(sql, &o, &hash, &b, now))
            .await?;
        tracing::info!("invitation for organization '{org}' made by {by}");
        Ok(Invitation {
            org,
            path: format!("/portal/invitations/{token}"),
            expires_at: now + Duration::days(INVITATION_DAYS),
        })
    }

    /// The organization an open invitation link is for.
    pub async fn invitation(&self, token: &str) -> Result<String, ApiError> {
        let hash = secret_hash(token);
        Ok(self
            .store
            .transact(move |sql| invitation_org(sql, &hash, clock::system_now()))
            .await?)
    }

    /// Use an invitation (once): the organization's account, with its access token.
    pub async fn accept_invitation(
        &self,
        token: &str,
        contact: &str,
    ) -> Result<OrgAccount, ApiError> {
        let contact = check_name("your name", contact)?;
        let hash = secret_hash(token);
        let access = new_secret();
        let access_hash = secret_hash(&access);
        let c = contact.clone();
        let org = self
            .store
            .transact(move |sql| {
                accept_invitation(sql, &hash, &c, &access_hash, clock::system_now())
            })
            .await?;
        tracing::info!("organization '{org}' account made by {contact}");
        Ok(OrgAccount {
            org,
            contact,
            token: access,
        })
    }

    /// A new enrollment token for an organization, made by `by` (an actor).
    pub async fn enrollment_token(
        &self,
        request: EnrollmentTokenRequest,
        by: &str,
    ) -> Result<EnrollmentToken, ApiError> {
        let org = check_name("the organization's name", &request.org)?;
        let token = new_secret();
        let hash = secret_hash(&token);
        let (o, b) = (org.clone(), by.to_string());
        self.store
            .transact(move |sql| {
                sql.execute(
                    "INSERT INTO enrollment_tokens (token_hash, org, created_by, created_at) VALUES ($1, $2, $3, $4)",
                    &[hash.into(), o.into(), b.into(), ts(clock::system_now())],
                )
            })
            .await?;
        tracing::info!("enrollment token for '{org}' made by {by}");
        Ok(EnrollmentToken { org, token })
    }

    /// Remove a staff member's token; their sessions end with it.
    pub async fn remove_staff(&self, name: &str) -> Result<u64, ApiError> {
        let n = name.to_string();
        let removed = self
            .store
            .transact(move |sql| {
                sql.execute(
                    "UPDATE staff SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
                    &[ts(clock::system_now()), n.into()],
                )
            })
            .await?;
        if removed == 0 {
            return Err(ApiError::NotFound(format!(
                "no staff token for '{name}' (unknown, or removed already)"
            )));
        }
        tracing::warn!("staff token of '{name}' removed");
        Ok(removed)
    }

    /// Revoke an organization's access tokens (its portal accounts, whose sessions end)
    /// and/or its enrollment tokens (its nodes then wait for approval again).
    pub async fn revoke_org_tokens(
        &self,
        request: RevokeTokensRequest,
    ) -> Result<TokensRevoked, ApiError> {
        let org = request.org.clone();
        let revoked = self
            .store
            .transact(move |sql| {
                let now = ts(clock::system_now());
                let mut revoked = TokensRevoked {
                    access_tokens: 0,
                    enrollment_tokens: 0,
                };
                if request.access {
                    revoked.access_tokens = sql.execute(
                        "UPDATE org_members SET revoked_at = $1 WHERE org = $2 AND revoked_at IS NULL",
                        &[now.clone(), (&request.org).into()],
                    )?;
                }
                if request.enrollment {
                    revoked.enrollment_tokens = sql.execute(
                        "UPDATE enrollment_tokens SET revoked_at = $1 WHERE org = $2 AND revoked_at IS NULL",
                        &[now, (&request.org).into()],
                    )?;
                }
                Ok(revoked)
            })
            .await?;
        tracing::warn!(
            "organization '{org}': {} access token(s) and {} enrollment token(s) revoked",
            revoked.access_tokens,
            revoked.enrollment_tokens
        );
        Ok(revoked)
    }

    pub async fn orgs(&self) -> Result<Vec<Org>, ApiError> {
        Ok(self
            .store
            .transact(|sql| orgs(sql, clock::system_now()))
            .await?)
    }

    /// Sign in with a token: the admin token, a staff token or an organization's access
    /// token. `None` when it is none of them.
    pub async fn sign_in(
        &self,
        token: &str,
        admin_token: &str,
    ) -> Result<Option<NewSession>, ApiError> {
        let now = clock::system_now();
        let hash = secret_hash(token);
        let admin = token_matches(token, admin_token);
        let cookie = new_secret();
        let cookie_hash = secret_hash(&cookie);
        let csrf = new_secret();
        let session = self
            .store
            .transact(move |sql| {
                let account = if admin {
                    Some(Account {
                        kind: AccountKind::Staff,
                        name: "admin".into(),
                        actor: "staff:admin".into(),
                    })
                } else {
                    account_of_token(sql, &hash)?
                };
                let Some(account) = account else {
                    return Ok(None);
                };
                let session = Session {
                    account,
                    csrf,
                    expires_at: now + Duration::hours(SESSION_HOURS),
                    credential: if admin {
                        ADMIN_CREDENTIAL.to_string()
                    } else {
                        hash
                    },
                };
                start_session(sql, &cookie_hash, &session, now)?;
                Ok(Some(session))
            })
            .await?;
        Ok(session.map(|session| NewSession { cookie, session }))
    }

    /// Sign in with a fresh organization account (right after its invitation): `token`
    /// is the access token it was given.
    pub async fn session_for(&self, account: Account, token: &str) -> Result<NewSession, ApiError> {
        let now = clock::system_now();
        let cookie = new_secret();
        let hash = secret_hash(&cookie);
        let session = Session {
            account,
            csrf: new_secret(),
            expires_at: now + Duration::hours(SESSION_HOURS),
            credential: secret_hash(token),
        };
        let s = session.clone();
        self.store
            .transact(move |sql| start_session(sql, &hash, &s, now))
            .await?;
        Ok(NewSession { cookie, session })
    }

    /// The live session of a cookie value.
    pub async fn session(&self, cookie: &str) -> Result<Option<Session>, ApiError> {
        let hash = secret_hash(cookie);
        Ok(self
            .store
            .transact(move |sql| find_session(sql, &hash, clock::system_now()))
            .await?)
    }

    /// End a session (sign-out).
    pub async fn end_session(&self, cookie: &str) -> Result<(), ApiError> {
        let hash = secret_hash(cookie);
        self.store
            .transact(move |sql| {
                sql.execute(
                    "UPDATE sessions SET ended_at = $1 WHERE id_hash = $2 AND ended_at IS NULL",
                    &[ts(clock::system_now()), Value::Text(hash)],
                )
            })
            .await?;
        Ok(())
    }
}
