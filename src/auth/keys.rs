//! Development keys and tokens: `fhirlake auth keygen` and `fhirlake auth token`.
//!
//! Owns: generating a signing key pair (RS256 or ES256, aws-lc-rs), writing it as a PKCS#8
//! PEM file and a JWKS file whose `kid` is the key's RFC 7638 thumbprint, and minting a
//! signed access token with SMART claims from such a key. For local use and tests: a real
//! deployment's tokens come from its authorization server. Must not: validate tokens
//! (`token` does).

use std::path::Path;

use aws_lc_rs::encoding::AsDer;
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A generated key pair.
pub struct KeyPair {
    /// The private key, PKCS#8 PEM.
    pub private_pem: String,
    /// The public key as a JWK Set of one key.
    pub jwks: JwkSet,
    /// Its key id.
    pub kid: String,
    /// The algorithm it signs with.
    pub alg: Algorithm,
}

/// A new key pair for `alg` (RS256/RS384: RSA 2048; ES256: P-256; ES384: P-384).
pub fn generate(alg: Algorithm) -> Result<KeyPair, String> {
    let der: Vec<u8> = match alg {
        Algorithm::RS256 | Algorithm::RS384 => {
            let k = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| "RSA key generation failed")?;
            k.as_der().map_err(|_| "cannot encode the RSA key")?.as_ref().to_vec()
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            let curve = if alg == Algorithm::ES256 {
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let k = aws_lc_rs::signature::EcdsaKeyPair::generate(curve).map_err(|_| "EC key generation failed")?;
            k.to_pkcs8v1().map_err(|_| "cannot encode the EC key")?.as_ref().to_vec()
        }
        other => return Err(format!("{other:?} keys are not supported (RS256, RS384, ES256, ES384 are)")),
    };
    let private_pem = pem("PRIVATE KEY", &der);
    let key = encoding_key(&private_pem, alg)?;
    let mut jwk = Jwk::from_encoding_key(&key, alg).map_err(|e| format!("cannot describe the key as a JWK: {e}"))?;
    let kid = jwk.thumbprint(ThumbprintHash::SHA256).map_err(|e| format!("key thumbprint: {e}"))?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.key_algorithm = Some(key_algorithm(alg));
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    Ok(KeyPair { private_pem, jwks: JwkSet { keys: vec![jwk] }, kid, alg })
}

fn key_algorithm(alg: Algorithm) -> KeyAlgorithm {
    match alg {
        Algorithm::RS384 => KeyAlgorithm::RS384,
        Algorithm::ES256 => KeyAlgorithm::ES256,
        Algorithm::ES384 => KeyAlgorithm::ES384,
        _ => KeyAlgorithm::RS256,
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn encoding_key(private_pem: &str, alg: Algorithm) -> Result<EncodingKey, String> {
    match alg {
        Algorithm::RS256 | Algorithm::RS384 => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
        _ => EncodingKey::from_ec_pem(private_pem.as_bytes()),
    }
    .map_err(|e| format!("the private key is not a {alg:?} key: {e}"))
}

/// Writes `key` to `dir`: `private-key.pem` (owner-only where the OS allows) and
/// `jwks.json`. Returns their paths.
pub fn write(key: &KeyPair, dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let private = dir.join("private-key.pem");
    let jwks = dir.join("jwks.json");
    let meta = json!({"alg": format!("{:?}", key.alg), "kid": key.kid});
    std::fs::write(&private, &key.private_pem).map_err(|e| format!("cannot write {}: {e}", private.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600));
    }
    std::fs::write(dir.join("key.json"), meta.to_string()).map_err(|e| format!("cannot write key.json: {e}"))?;
    let text = serde_json::to_string_pretty(&key.jwks).map_err(|e| e.to_string())?;
    std::fs::write(&jwks, text).map_err(|e| format!("cannot write {}: {e}", jwks.display()))?;
    Ok((private, jwks))
}

/// Claims of a minted token.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// `scope`.
    pub scope: String,
    /// `sub` (default `fhirlake-dev`).
    pub subject: Option<String>,
    /// `patient`.
    pub patient: Option<String>,
    /// `roles`.
    pub roles: Vec<String>,
    /// `fhirUser`.
    pub fhir_user: Option<String>,
    /// `client_id`.
    pub client_id: Option<String>,
    /// Lifetime in seconds (`exp` = now + this).
    pub expires_in: i64,
}

/// A token signed with the PEM key `private_pem` (`alg`, `kid`).
pub fn mint(private_pem: &str, alg: Algorithm, kid: &str, r: &TokenRequest) -> Result<String, String> {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let mut claims = json!({
        "iss": r.issuer,
        "aud": r.audience,
        "sub": r.subject.clone().unwrap_or_else(|| "fhirlake-dev".into()),
        "scope": r.scope,
        "iat": now,
        "nbf": now,
        "exp": now + r.expires_in,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    let obj = claims.as_object_mut().expect("an object");
    if let Some(p) = &r.patient {
        obj.insert("patient".into(), Value::String(p.clone()));
    }
    if !r.roles.is_empty() {
        obj.insert("roles".into(), json!(r.roles));
    }
    if let Some(u) = &r.fhir_user {
        obj.insert("fhirUser".into(), Value::String(u.clone()));
    }
    obj.insert("client_id".into(), Value::String(r.client_id.clone().unwrap_or_else(|| "fhirlake-cli".into())));
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, &encoding_key(private_pem, alg)?).map_err(|e| format!("cannot sign: {e}"))
}

/// The key written by [`write`] in `dir` (or a PEM file with `key.json` beside it).
pub fn load(path: &Path) -> Result<(String, Algorithm, String), String> {
    let (pem_path, dir) = if path.is_dir() {
        (path.join("private-key.pem"), path.to_path_buf())
    } else {
        (path.to_path_buf(), path.parent().map(Path::to_path_buf).unwrap_or_default())
    };
    let private_pem =
        std::fs::read_to_string(&pem_path).map_err(|e| format!("cannot read {}: {e}", pem_path.display()))?;
    let meta_path = dir.join("key.json");
    let meta: Value = std::fs::read(&meta_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("{} is missing: write keys with `fhirlake auth keygen`", meta_path.display()))?;
    let alg: Algorithm = meta
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("{} names no algorithm", meta_path.display()))?;
    let kid = meta.get("kid").and_then(Value::as_str).unwrap_or_default().to_string();
    Ok((private_pem, alg, kid))
}
