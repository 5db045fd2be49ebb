//! Authentication and authorisation: who a caller is, and what they may do.
//!
//! Owns: [`AuthSettings`] (the `serve` flags and config keys), [`Auth`] (the running
//! authenticator: off, or a [`token::Validator`] with the instance's audience), the
//! caller's [`Identity`] and, for a token, its [`Principal`] (claims, roles, SMART
//! grants); [`scope`] parses SMART scopes, [`policy`] decides each operation and the rows
//! it may see, [`keys`] mints development keys and tokens. Must not: know HTTP (the front
//! ends pass the bearer text) or storage.

pub mod keys;
pub mod policy;
pub mod scope;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

pub use policy::{Access, authorize};
pub use scope::{Context, Grant, Letter};

/// Whether requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// No authentication: every caller may do everything (local development; refused on
    /// a non-loopback listen address).
    None,
    /// SMART on FHIR: every request but `metadata` and the SMART discovery document needs
    /// a bearer JWT from a trusted issuer.
    Smart,
}

/// Authentication settings of `serve`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Authentication")]
pub struct AuthSettings {
    /// `smart` (bearer JWTs, SMART scopes and roles) or `none` (development; loopback
    /// only). Default: `none` on a loopback address; required elsewhere.
    #[arg(long, env = "FHIRLAKE_AUTH", value_enum)]
    pub auth: Option<AuthMode>,
    /// A trusted token issuer (`iss`), e.g. https://login.example.org; repeat it with one
    /// `--jwks` per issuer, in the same order.
    #[arg(long, env = "FHIRLAKE_ISSUER", value_delimiter = ',')]
    pub issuer: Vec<String>,
    /// The keys of the `--issuer` at the same position: a JWKS file or URL.
    #[arg(long, env = "FHIRLAKE_JWKS", value_delimiter = ',')]
    pub jwks: Vec<String>,
    /// The audience (`aud`) tokens must carry (default: the public FHIR base URL).
    #[arg(long, env = "FHIRLAKE_AUDIENCE")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, e.g. 60s.
    #[arg(long, env = "FHIRLAKE_TOKEN_LEEWAY", default_value = "60s", value_parser = crate::config::parse_duration)]
    pub token_leeway: Duration,
    /// An unknown `kid` reloads the issuer's JWKS (key rotation) at most this often, e.g.
    /// 10s: forged tokens cannot turn into a flood of fetches.
    #[arg(long, env = "FHIRLAKE_JWKS_REFRESH_INTERVAL", default_value = "10s", value_parser = crate::config::parse_duration)]
    pub jwks_refresh_interval: Duration,
    /// The authorization server's authorize endpoint, for the SMART discovery document
    /// (default: `<first issuer>/authorize`).
    #[arg(long, env = "FHIRLAKE_SMART_AUTHORIZE_URL")]
    pub smart_authorize_url: Option<String>,
    /// The authorization server's token endpoint, for the SMART discovery document
    /// (default: `<first issuer>/token`).
    #[arg(long, env = "FHIRLAKE_SMART_TOKEN_URL")]
    pub smart_token_url: Option<String>,
    /// With `--auth smart`, `/metrics` answers loopback callers and callers presenting this
    /// bearer token (a secret; `config print` redacts it). Unset: loopback only.
    #[arg(long, env = "FHIRLAKE_METRICS_TOKEN")]
    pub metrics_token: Option<String>,
    /// Types any `patient/` token may read besides its compartment (Devices assigned to
    /// the patient or to nobody are readable too).
    #[arg(
        long,
        env = "FHIRLAKE_PATIENT_SHARED_TYPES",
        value_delimiter = ',',
        default_value = "Organization,Practitioner,Location,Medication"
    )]
    pub patient_shared_types: Vec<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        crate::config::clap_defaults()
    }
}

/// The built-in roles (the token's `roles` claim), modeled on the managed FHIR service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Read, vread, history, search, `$everything`.
    Reader,
    /// Reader, plus create, update, patch, delete, Bundles.
    Writer,
    /// Reader, plus `$export`.
    Exporter,
    /// Reader, plus `$import`.
    Importer,
    /// Every FHIR data operation (Writer, Exporter, Importer).
    Contributor,
    /// Read and write as the token's SMART scopes allow; turns scope enforcement on for
    /// everything the token does.
    SmartUser,
    /// SQL (`$sql`, Flight SQL) and ViewDefinition `$run`/`$materialize`.
    Analyst,
    /// Reads the audit table.
    Auditor,
}

impl Role {
    /// Every role, in the order of the role table.
    pub const ALL: [Role; 8] = [
        Role::Reader,
        Role::Writer,
        Role::Exporter,
        Role::Importer,
        Role::Contributor,
        Role::SmartUser,
        Role::Analyst,
        Role::Auditor,
    ];

    /// The name in a `roles` claim.
    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "Reader",
            Role::Writer => "Writer",
            Role::Exporter => "Exporter",
            Role::Importer => "Importer",
            Role::Contributor => "Contributor",
            Role::SmartUser => "SmartUser",
            Role::Analyst => "Analyst",
            Role::Auditor => "Auditor",
        }
    }

    /// The role a claim value names (case-insensitive), if any.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name().eq_ignore_ascii_case(name))
    }

    /// What the role may do.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission as P;
        match self {
            Role::Reader => &[P::Read],
            Role::Writer => &[P::Read, P::Write, P::Delete],
            Role::Exporter => &[P::Read, P::Export],
            Role::Importer => &[P::Read, P::Import],
            Role::Contributor => &[P::Read, P::Write, P::Delete, P::Export, P::Import],
            Role::SmartUser => &[P::Read, P::Write, P::Delete],
            Role::Analyst => &[P::Sql],
            Role::Auditor => &[P::Audit],
        }
    }
}

/// A data action a role grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read, vread, history, search.
    Read,
    /// Create, update, patch.
    Write,
    /// Delete.
    Delete,
    /// `$export`.
    Export,
    /// `$import`.
    Import,
    /// SQL and ViewDefinition operations.
    Sql,
    /// The audit table.
    Audit,
}

impl Permission {
    /// The roles that grant it, for a 403's text.
    pub fn granted_by(self) -> Vec<&'static str> {
        Role::ALL.into_iter().filter(|r| r.permissions().contains(&self)).map(Role::name).collect()
    }
}

/// A caller authenticated by a token.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The verified claims.
    pub claims: token::Claims,
    /// The roles among the `roles` claim that fhirlake knows.
    pub roles: Vec<Role>,
    /// The SMART clinical grants, or why the token's scope is refused.
    pub grants: Result<Vec<Grant>, scope::ScopeError>,
    /// The patient `patient/` grants are limited to: the `patient` claim, else the id of a
    /// `fhirUser` that is a Patient.
    pub patient: Option<String>,
}

impl Principal {
    /// The principal of verified `claims`; `is_resource_type` checks scope targets.
    pub fn of(claims: token::Claims, is_resource_type: impl Fn(&str) -> bool) -> Self {
        let roles = claims.roles.iter().filter_map(|r| Role::parse(r)).collect();
        let grants = scope::parse(&claims.scope, is_resource_type);
        let patient = claims.patient.clone().or_else(|| {
            let u = claims.fhir_user.as_deref()?;
            let (rt, id) = u.trim_end_matches('/').rsplit_once('/')?;
            (rt.rsplit('/').next() == Some("Patient")).then(|| id.to_string())
        });
        Principal { claims, roles, grants, patient }
    }

    /// Whether a role grants `p`.
    pub fn has(&self, p: Permission) -> bool {
        self.roles.iter().any(|r| r.permissions().contains(&p))
    }

    /// Whether SMART scopes limit what the token does (it holds SmartUser).
    pub fn smart(&self) -> bool {
        self.roles.contains(&Role::SmartUser)
    }
}

/// Who is asking.
#[derive(Debug, Clone, Default)]
pub enum Identity {
    /// Nobody proved anything: every operation that needs a right is refused (401). The
    /// default, so a front end that forgets to authenticate fails closed.
    #[default]
    Anonymous,
    /// Authentication is off (`--auth none`): everything is allowed.
    Open,
    /// A verified token.
    Token(Arc<Principal>),
}

/// The running authenticator of an instance.
#[derive(Debug)]
pub struct Auth {
    /// The validator, `None` when authentication is off.
    pub validator: Option<token::Validator>,
    /// Settings (discovery endpoints, shared types).
    pub settings: AuthSettings,
}

impl Auth {
    /// Authentication off.
    pub fn off() -> Self {
        Auth { validator: None, settings: AuthSettings::default() }
    }

    /// Whether requests must carry a token.
    pub fn enabled(&self) -> bool {
        self.validator.is_some()
    }

    /// Starts the authenticator of `settings` for an instance whose tokens carry
    /// `audience` (loads every issuer's keys).
    pub async fn start(settings: AuthSettings, audience: String) -> Result<Self, String> {
        if settings.auth != Some(AuthMode::Smart) {
            return Ok(Auth { validator: None, settings });
        }
        if settings.issuer.len() != settings.jwks.len() {
            return Err(format!(
                "--issuer and --jwks come in pairs: {} issuers, {} JWKS",
                settings.issuer.len(),
                settings.jwks.len()
            ));
        }
        let issuers = settings
            .issuer
            .iter()
            .zip(&settings.jwks)
            .map(|(i, j)| (i.trim_end_matches('/').to_string(), token::JwksSource::parse(j)))
            .collect();
        let audience = settings.audience.clone().unwrap_or(audience);
        let validator =
            token::Validator::new(issuers, vec![audience], settings.token_leeway, settings.jwks_refresh_interval)
                .await?;
        Ok(Auth { validator: Some(validator), settings })
    }

    /// The identity of a request with `authorization` (the header's value, if any).
    pub async fn identify(
        &self,
        authorization: Option<&str>,
        model: &fhirlake_schemas::Model,
    ) -> Result<Identity, crate::error::ApiError> {
        let Some(v) = &self.validator else { return Ok(Identity::Open) };
        let unauthenticated = crate::error::ApiError::Unauthenticated;
        let header = authorization
            .ok_or_else(|| unauthenticated("this server needs a bearer token (Authorization: Bearer ...)".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthenticated("the Authorization header is not 'Bearer <token>'".into()))?;
        let claims = v.validate(token).await.map_err(unauthenticated)?;
        Ok(Identity::Token(Arc::new(Principal::of(claims, |t| model.is_resource_type(t)))))
    }
}
