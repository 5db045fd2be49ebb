//! Bearer-token validation: a resource server's half of OAuth2 with JWTs.
//!
//! Owns: [`Validator`] — the trusted issuers, each with its JWKS (a file or an `https://`
//! URL), the accepted audiences and clock skew — and its checks: the signature with a key
//! found by `kid` (RS256, RS384, ES256, ES384 only; `none`, HMAC and anything else are
//! refused before a key is looked up), `iss` among the issuers, `aud`, `exp` and `nbf`.
//! An unknown `kid` reloads the issuer's JWKS (key rotation), at most once per
//! `refresh_every` (`--jwks-refresh-interval`) per issuer so a flood of forged tokens cannot turn into a flood of
//! fetches. Verified tokens are cached by their full text until they expire, so a client
//! reusing its token pays for the signature once. Must not: log tokens or keys, or decide
//! what a token allows (`policy` does).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// The algorithms a token may be signed with.
pub const ALGORITHMS: [Algorithm; 4] = [Algorithm::RS256, Algorithm::RS384, Algorithm::ES256, Algorithm::ES384];

/// Most verified tokens kept (each a few KB).
const CACHE_ENTRIES: usize = 10_000;

/// Where an issuer's keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS file.
    File(std::path::PathBuf),
    /// A JWKS URL (`https://`, or `http://` for a local identity provider).
    Url(String),
}

impl JwksSource {
    /// `http(s)://...` is a URL; anything else a file path (`file://` stripped).
    pub fn parse(text: &str) -> Self {
        if text.starts_with("https://") || text.starts_with("http://") {
            JwksSource::Url(text.to_string())
        } else {
            JwksSource::File(text.strip_prefix("file://").unwrap_or(text).into())
        }
    }

    async fn load(&self) -> Result<JwkSet, String> {
        let bytes = match self {
            JwksSource::File(p) => {
                tokio::fs::read(p).await.map_err(|e| format!("cannot read the JWKS file {}: {e}", p.display()))?
            }
            JwksSource::Url(u) => {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| format!("HTTP client: {e}"))?;
                let r = client.get(u).send().await.map_err(|e| format!("cannot fetch the JWKS {u}: {e}"))?;
                if !r.status().is_success() {
                    return Err(format!("the JWKS {u} answered {}", r.status()));
                }
                r.bytes().await.map_err(|e| format!("cannot read the JWKS {u}: {e}"))?.to_vec()
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| format!("the JWKS {self:?} is not a JWK Set: {e}"))
    }
}

/// One trusted issuer and its keys.
struct Issuer {
    issuer: String,
    source: JwksSource,
    keys: tokio::sync::Mutex<Keys>,
}

struct Keys {
    set: JwkSet,
    loaded: Option<Instant>,
}

/// A verified token's claims, as the policy reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: Option<String>,
    /// `client_id`, else `azp`, else `appid`.
    pub client_id: Option<String>,
    /// `fhirUser`.
    pub fhir_user: Option<String>,
    /// `scope` (space-separated), else `scp` (a string or a list).
    pub scope: String,
    /// `roles` (a list, or one string).
    pub roles: Vec<String>,
    /// `patient`: the SMART launch patient.
    pub patient: Option<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: i64,
}

impl Claims {
    fn of(v: &Value) -> Claims {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let list = |k: &str| match v.get(k) {
            Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_string).collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            _ => Vec::new(),
        };
        let scope = text("scope").unwrap_or_else(|| list("scp").join(" "));
        let roles = match v.get("roles") {
            Some(Value::String(s)) => vec![s.clone()],
            _ => list("roles"),
        };
        Claims {
            issuer: text("iss").unwrap_or_default(),
            subject: text("sub"),
            client_id: text("client_id").or_else(|| text("azp")).or_else(|| text("appid")),
            fhir_user: text("fhirUser"),
            scope,
            roles,
            patient: text("patient"),
            expires_at: v.get("exp").and_then(Value::as_i64).unwrap_or(0),
        }
    }
}

/// Validates bearer tokens against trusted issuers.
pub struct Validator {
    issuers: Vec<Issuer>,
    audiences: Vec<String>,
    leeway: Duration,
    refresh_every: Duration,
    verified: Mutex<HashMap<Box<str>, Claims>>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<&str> = self.issuers.iter().map(|i| i.issuer.as_str()).collect();
        f.debug_struct("Validator").field("issuers", &issuers).field("audiences", &self.audiences).finish()
    }
}

impl Validator {
    /// A validator of tokens from `issuers` (issuer URL, its keys) for `audiences`, with
    /// `leeway` on `exp`/`nbf` and at most one JWKS reload per `refresh_every` per issuer;
    /// every issuer's JWKS is loaded now, so a wrong path or URL stops start-up.
    pub async fn new(
        issuers: Vec<(String, JwksSource)>,
        audiences: Vec<String>,
        leeway: Duration,
        refresh_every: Duration,
    ) -> Result<Self, String> {
        if issuers.is_empty() {
            return Err("--auth smart needs at least one --issuer with its --jwks".into());
        }
        let mut out = Vec::new();
        for (issuer, source) in issuers {
            let set = source.load().await.map_err(|e| format!("issuer {issuer}: {e}"))?;
            if set.keys.is_empty() {
                return Err(format!("issuer {issuer}: the JWKS holds no keys"));
            }
            out.push(Issuer {
                issuer,
                source,
                keys: tokio::sync::Mutex::new(Keys { set, loaded: Some(Instant::now()) }),
            });
        }
        Ok(Validator { issuers: out, audiences, leeway, refresh_every, verified: Mutex::new(HashMap::new()) })
    }

    /// The trusted issuers.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.issuers.iter().map(|i| i.issuer.as_str())
    }

    /// The claims of `token` once every check holds, else why not (for the 401's text:
    /// it never repeats the token).
    pub async fn validate(&self, token: &str) -> Result<Claims, String> {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        if let Some(c) = self.verified.lock().expect("cache lock").get(token)
            && c.expires_at + self.leeway.as_secs() as i64 > now
        {
            return Ok(c.clone());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("the token is not a JWT ({e})"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(format!(
                "tokens signed with {:?} are not accepted (RS256, RS384, ES256, ES384 are)",
                header.alg
            ));
        }
        // The issuer picks the key set; the signature is checked before any claim is used.
        let unverified: Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|e| format!("the token's claims are not JSON ({e})"))?;
        let iss = unverified.get("iss").and_then(Value::as_str).ok_or("the token has no iss claim")?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or_else(|| format!("issuer '{iss}' is not trusted here"))?;
        let key = issuer.key(header.kid.as_deref(), header.alg, self.refresh_every).await?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&issuer.issuer]);
        v.set_audience(&self.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_nbf = true;
        v.leeway = self.leeway.as_secs();
        let data = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(|e| describe(&e))?;
        let claims = Claims::of(&data.claims);
        let mut cache = self.verified.lock().expect("cache lock");
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.expires_at + self.leeway.as_secs() as i64 > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(token.into(), claims.clone());
        Ok(claims)
    }
}

impl Issuer {
    /// The key `kid` names for `alg`, reloading the JWKS once (rate-limited) when the key
    /// is unknown. A token without `kid` is accepted only when the set holds exactly one
    /// key of the algorithm's family.
    async fn key(&self, kid: Option<&str>, alg: Algorithm, refresh_every: Duration) -> Result<DecodingKey, String> {
        let mut keys = self.keys.lock().await;
        if let Some(k) = pick(&keys.set, kid, alg)? {
            return Ok(k);
        }
        let due = keys.loaded.is_none_or(|t| t.elapsed() >= refresh_every);
        if due {
            keys.loaded = Some(Instant::now());
            match self.source.load().await {
                Ok(set) => keys.set = set,
                Err(e) => {
                    tracing::warn!(issuer = %self.issuer, error = %e, "JWKS reload failed; the keys loaded before stay")
                }
            }
            if let Some(k) = pick(&keys.set, kid, alg)? {
                return Ok(k);
            }
        }
        Err(match kid {
            Some(k) => format!("no key '{k}' in the JWKS of issuer {}", self.issuer),
            None => format!("the token has no kid and the JWKS of issuer {} has no single key for it", self.issuer),
        })
    }
}

fn pick(set: &JwkSet, kid: Option<&str>, alg: Algorithm) -> Result<Option<DecodingKey>, String> {
    let family = alg.family();
    let candidates: Vec<&jsonwebtoken::jwk::Jwk> = match kid {
        Some(k) => set.find(k).into_iter().collect(),
        None => set.keys.iter().collect(),
    };
    let usable: Vec<&jsonwebtoken::jwk::Jwk> = candidates
        .into_iter()
        .filter(|j| {
            let key_family = match &j.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Some(jsonwebtoken::AlgorithmFamily::Rsa),
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Some(jsonwebtoken::AlgorithmFamily::Ec),
                _ => None,
            };
            let alg_ok = j.common.key_algorithm.is_none_or(|ka| ka.to_string() == format!("{alg:?}"));
            key_family == Some(family) && alg_ok
        })
        .collect();
    match usable.as_slice() {
        [one] => DecodingKey::from_jwk(one).map(Some).map_err(|e| format!("the JWKS key is unusable: {e}")),
        [] => Ok(None),
        _ if kid.is_some() => Err("the JWKS holds several keys with this kid".into()),
        _ => Ok(None),
    }
}

/// A validation error for the 401's text.
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => "the token's signature does not verify".into(),
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        K::InvalidAudience => "the token is not for this server (aud)".into(),
        K::InvalidIssuer => "the token's issuer is not trusted here".into(),
        K::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
        K::InvalidAlgorithm => "the token's algorithm does not match its key".into(),
        other => format!("the token is invalid ({other:?})"),
    }
}
