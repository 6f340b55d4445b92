//! Revocation: the CA keeps a list of revoked serial numbers beside its key
//! and publishes them as `ca.crl`, which every process reloads.

use std::{
    fs,
    path::{Path, PathBuf},
};

use ::time::{Duration, OffsetDateTime};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{
    error::CertError,
    files::{certs_from_pem, crl_path},
    issue::{Ca, write_file},
};

/// `DIR/revoked.txt`: one revoked certificate a line, "<serial hex> <unix time> <name>".
fn revoked_path(dir: &Path) -> PathBuf {
    dir.join("revoked.txt")
}

fn serial_of(pem: &str, path: &Path) -> Result<Vec<u8>, CertError> {
    let der = certs_from_pem(pem.as_bytes())
        .ok()
        .and_then(|mut v| (!v.is_empty()).then(|| v.remove(0)))
        .ok_or_else(|| CertError::NoPem { path: path.into(), what: "certificate" })?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| CertError::BadCertificate(e.to_string()))?;
    Ok(cert.tbs_certificate.raw_serial().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Revokes the certificate now in `DIR/NAME.pem` and rewrites `DIR/ca.crl`.
/// Returns the revoked serial, in hex. Revoking the same certificate twice
/// changes nothing.
pub fn revoke(dir: &Path, name: &str) -> Result<String, CertError> {
    let ca = Ca::load(dir)?;
    let cert_path = dir.join(format!("{name}.pem"));
    let pem = fs::read_to_string(&cert_path).map_err(|cause| CertError::Read { path: cert_path.clone(), cause })?;
    let serial = hex(&serial_of(&pem, &cert_path)?);
    let list_path = revoked_path(dir);
    let mut lines: Vec<String> = match fs::read_to_string(&list_path) {
        Ok(text) => text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(cause) => return Err(CertError::Read { path: list_path, cause }),
    };
    let now = OffsetDateTime::now_utc();
    if !lines.iter().any(|l| l.split_whitespace().next() == Some(serial.as_str())) {
        lines.push(format!("{serial} {} {name}", now.unix_timestamp()));
    }
    write_file(&list_path, &(lines.join("\n") + "\n"), false)?;
    publish(&ca, dir, &lines, now)?;
    Ok(serial)
}

/// Signs and writes the CRL for the listed revocations.
fn publish(ca: &Ca, dir: &Path, lines: &[String], now: OffsetDateTime) -> Result<(), CertError> {
    let mut revoked = Vec::with_capacity(lines.len());
    for line in lines {
        let mut parts = line.split_whitespace();
        let (Some(serial), Some(at)) = (parts.next().and_then(unhex), parts.next().and_then(|t| t.parse::<i64>().ok()))
        else {
            return Err(CertError::BadCertificate(format!(
                "{}: unreadable line {line:?}",
                revoked_path(dir).display()
            )));
        };
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: OffsetDateTime::from_unix_timestamp(at).unwrap_or(now),
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(1),
        next_update: now + Duration::days(30),
        // Seconds since the epoch only ever grow.
        crl_number: SerialNumber::from_slice(&now.unix_timestamp().to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(ca.issuer())?;
    write_file(&crl_path(dir), &crl.pem()?, false)
}
