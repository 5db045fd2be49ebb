//! `fhirlake auth keygen` and `fhirlake auth token`: a key pair and tokens for running an
//! authenticated server locally, without an identity provider.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::CliResult;
use crate::auth::keys;

/// `fhirlake auth`.
#[derive(Debug, Args)]
pub struct AuthArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: AuthAction,
}

/// What `fhirlake auth` does.
#[derive(Debug, Subcommand)]
pub enum AuthAction {
    /// Write a signing key pair: DIR/private-key.pem and DIR/jwks.json (for --jwks).
    Keygen {
        /// The folder to write to.
        #[arg(long)]
        out: PathBuf,
        /// Signing algorithm: RS256, RS384, ES256 or ES384.
        #[arg(long, default_value = "RS256")]
        alg: String,
    },
    /// Print a signed access token (for local use and tests).
    Token(Box<TokenArgs>),
}

/// Options of `auth token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The key folder written by `auth keygen` (or its private-key.pem).
    #[arg(long)]
    key: PathBuf,
    /// `iss`: the issuer the server trusts (its --issuer).
    #[arg(long)]
    issuer: String,
    /// `aud`: the server's public FHIR base URL (or its --audience).
    #[arg(long)]
    audience: String,
    /// SMART scopes, space-separated, e.g. "patient/*.rs" or "system/*.cruds".
    #[arg(long, default_value = "")]
    scope: String,
    /// The launch patient (`patient` claim) of patient/ scopes.
    #[arg(long)]
    patient: Option<String>,
    /// Roles, comma-separated: Reader, Writer, Exporter, Importer, Contributor, SmartUser,
    /// Analyst, Auditor.
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
    /// `fhirUser`, e.g. Practitioner/1.
    #[arg(long)]
    fhir_user: Option<String>,
    /// `sub`.
    #[arg(long)]
    subject: Option<String>,
    /// `client_id`.
    #[arg(long)]
    client_id: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    expires_in: i64,
}

/// Runs `fhirlake auth`.
pub fn run(a: AuthArgs) -> CliResult<ExitCode> {
    match a.action {
        AuthAction::Keygen { out, alg } => {
            let alg: jsonwebtoken::Algorithm =
                alg.parse().map_err(|_| format!("'{alg}' is not an algorithm (RS256, RS384, ES256, ES384)"))?;
            let key = keys::generate(alg)?;
            let (private, jwks) = keys::write(&key, &out)?;
            crate::outln!("wrote {} (keep it secret) and {} (kid {})", private.display(), jwks.display(), key.kid);
            crate::outln!("serve with: --auth smart --issuer <URL> --jwks {}", jwks.display());
            Ok(ExitCode::SUCCESS)
        }
        AuthAction::Token(t) => {
            let (pem, alg, kid) = keys::load(&t.key)?;
            for r in &t.roles {
                if crate::auth::Role::parse(r).is_none() {
                    return Err(format!("'{r}' is not a fhirlake role").into());
                }
            }
            let request = keys::TokenRequest {
                issuer: t.issuer,
                audience: t.audience,
                scope: t.scope,
                subject: t.subject,
                patient: t.patient,
                roles: t.roles,
                fhir_user: t.fhir_user,
                client_id: t.client_id,
                expires_in: t.expires_in,
            };
            crate::outln!("{}", keys::mint(&pem, alg, &kid, &request)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
