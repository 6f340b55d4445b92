use std::{
    fs,
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, string::Ia5String,
};
use time::{Duration, OffsetDateTime};

use crate::{CertError, Identity};

/// A certificate authority able to issue corridor identities.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A freshly issued certificate and its private key, both PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What goes into an issued certificate beyond its identity.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Further URI SANs. Only tests use this, to make certificates the
    /// corridor must refuse.
    pub extra_uris: Vec<String>,
    /// Marks the leaf CA=true. Only tests use this, for the same reason.
    pub is_ca: bool,
}

impl IssueOptions {
    /// A one-year certificate valid on loopback and under the identity's own
    /// DNS name (the name a Kubernetes Service would carry).
    pub fn for_identity(id: &Identity) -> Self {
        let now = OffsetDateTime::now_utc();
        IssueOptions {
            dns_names: vec!["localhost".into(), id.name()],
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)],
            // A minute of slack for clocks that disagree a little.
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::days(365),
            extra_uris: Vec::new(),
            is_ca: false,
        }
    }
}

fn ia5(s: &str) -> Result<Ia5String, CertError> {
    Ia5String::try_from(s.to_string()).map_err(|e| CertError::BadIdentity(format!("{s:?}: {e}")))
}

impl Ca {
    /// Generates a new self-signed CA (ECDSA P-256, ten years).
    pub fn generate(common_name: &str) -> Result<Self, CertError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Corridor");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(1);
        params.not_after = now + Duration::days(3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// Loads `ca.pem` and `ca.key` from a certs directory.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert_pem = read(&dir.join("ca.pem"))?;
        let key_path = dir.join("ca.key");
        let key = KeyPair::from_pem(&read(&key_path)?)
            .map_err(|_| CertError::NoPem { path: key_path, what: "private key" })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|_| CertError::NoPem { path: dir.join("ca.pem"), what: "CA certificate" })?;
        Ok(Ca { cert_pem, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a leaf certificate for `id`, with one URI SAN naming it.
    pub fn issue(&self, id: &Identity, opts: &IssueOptions) -> Result<IssuedCert, CertError> {
        let params = leaf_params(id, opts)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Signs a certificate signing request (PEM), so that the private key
    /// never leaves the machine that made it. The request's signature must
    /// hold, and what it asks for must be an identity this CA issues: exactly
    /// one URI SAN naming a corridor identity, not a CA, and DNS and IP names
    /// that fit it (see `check_request_names`). Only the identity and those
    /// names are taken from the request; key usages and validity are the
    /// CA's, as for [`Ca::issue`].
    pub fn sign_request(
        &self,
        csr_pem: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<SignedRequest, CertError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => {
                CertError::Refused("its signature does not verify with the key it carries".into())
            }
            rcgen::Error::UnsupportedExtension => {
                CertError::Refused("it asks for an extension other than names, key usages and CA=false".into())
            }
            other => CertError::BadRequest(other.to_string()),
        })?;
        if !matches!(csr.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
            return Err(CertError::Refused("it asks for a CA certificate; this CA issues only identities".into()));
        }
        let (mut uris, mut dns_names, mut ips) = (Vec::new(), Vec::new(), Vec::new());
        for san in &csr.params.subject_alt_names {
            match san {
                SanType::URI(u) => uris.push(u.as_str().to_string()),
                SanType::DnsName(d) => dns_names.push(d.as_str().to_string()),
                SanType::IpAddress(ip) => ips.push(*ip),
                other => return Err(CertError::Refused(format!("it asks for a name of another kind: {other:?}"))),
            }
        }
        let id = match uris.as_slice() {
            [one] => Identity::from_uri(one).map_err(|_| {
                CertError::Refused(format!("{one:?} is not a corridor identity (spiffe://corridor/...)"))
            })?,
            [] => return Err(CertError::Refused("it names no identity (no URI SAN)".into())),
            many => {
                return Err(CertError::Refused(format!(
                    "it asks for {} URI SANs ({}); an identity certificate carries exactly one",
                    many.len(),
                    many.join(", ")
                )));
            }
        };
        check_request_names(&id, &dns_names, &ips)?;
        let opts = IssueOptions { dns_names, ips, not_before, not_after, extra_uris: Vec::new(), is_ca: false };
        let signed = CertificateSigningRequestParams { params: leaf_params(&id, &opts)?, public_key: csr.public_key }
            .signed_by(&self.issuer)?;
        Ok(SignedRequest { identity: id, cert_pem: signed.pem() })
    }
}

/// A signed request: whose it is, and the certificate (PEM). The key stays
/// with whoever made the request.
#[derive(Debug)]
pub struct SignedRequest {
    pub identity: Identity,
    pub cert_pem: String,
}

/// A certificate signing request and the private key it was made with, both
/// PEM; the key is written where it will be used and never travels.
pub struct CertRequest {
    pub csr_pem: String,
    pub key_pem: String,
}

/// Makes a new key pair and a signing request for `id` with `opts`'s names,
/// for [`Ca::sign_request`] at the CA.
pub fn request(id: &Identity, opts: &IssueOptions) -> Result<CertRequest, CertError> {
    let key = KeyPair::generate()?;
    let mut params = leaf_params(id, opts)?;
    // Which key signs is the CA's business, not the request's.
    params.use_authority_key_identifier_extension = false;
    let csr = params.serialize_request(&key)?;
    Ok(CertRequest { csr_pem: csr.pem()?, key_pem: key.serialize_pem() })
}

/// The identity a DNS name points at, when one of its labels names one: the
/// identity's own name (`node-hefei`) or its Kubernetes namespace
/// (`node.corridor-hefei.svc`).
fn named_by(label: &str) -> Option<Identity> {
    match label.strip_prefix("corridor-") {
        Some("gateway") => Some(Identity::Gateway),
        Some("reconciler") => Some(Identity::Reconciler),
        Some(city) => Some(Identity::Node(city.into())),
        None => Identity::from_name(label).ok(),
    }
}

/// A server identity (a node, the gateway) may carry any DNS name except one
/// that names another identity; a client identity (admin, org, reconciler)
/// only `localhost` and its own name, and only loopback addresses, as
/// [`IssueOptions::for_identity`] gives it.
fn check_request_names(id: &Identity, dns_names: &[String], ips: &[IpAddr]) -> Result<(), CertError> {
    let server = matches!(id, Identity::Node(_) | Identity::Gateway);
    for dns in dns_names {
        if dns == "localhost" {
            continue;
        }
        if let Some(other) = dns.split('.').filter_map(named_by).find(|other| other != id) {
            return Err(CertError::Refused(format!("DNS name {dns:?} belongs to {other}, not to {id}")));
        }
        if !server && *dns != id.name() {
            return Err(CertError::Refused(format!(
                "{id} is a client identity: its DNS names are localhost and {} only, not {dns:?}",
                id.name()
            )));
        }
    }
    if let Some(ip) = ips.iter().find(|ip| !server && !ip.is_loopback()) {
        return Err(CertError::Refused(format!("{id} is a client identity: it may not claim the address {ip}")));
    }
    Ok(())
}

/// The parameters of every leaf the CA signs, issued here or requested.
fn leaf_params(id: &Identity, opts: &IssueOptions) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.name());
    dn.push(DnType::OrganizationName, "Corridor");
    params.distinguished_name = dn;
    params.subject_alt_names.push(SanType::URI(ia5(&id.uri())?));
    for uri in &opts.extra_uris {
        params.subject_alt_names.push(SanType::URI(ia5(uri)?));
    }
    for dns in &opts.dns_names {
        params.subject_alt_names.push(SanType::DnsName(ia5(dns)?));
    }
    for ip in &opts.ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    // Nodes are servers to the gateway and clients of each other, so every
    // identity may do both.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if opts.is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    params.not_before = opts.not_before;
    params.not_after = opts.not_after;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|cause| CertError::Read { path: path.into(), cause })
}

/// Writes `contents` to `path`; with `private`, the file is created mode 0600
/// so that no other user can ever read it, not even briefly.
pub(crate) fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let err = |cause| CertError::Write { path: path.into(), cause };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    let mut file = opts.open(path).map_err(err)?;
    if private {
        // An existing file keeps its old mode on open; tighten it explicitly.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

/// Writes `DIR/NAME.pem` and `DIR/NAME.key` (mode 0600).
pub fn write_identity(dir: &Path, name: &str, cert: &IssuedCert) -> Result<(), CertError> {
    write_file(&dir.join(format!("{name}.key")), &cert.key_pem, true)?;
    write_file(&dir.join(format!("{name}.pem")), &cert.cert_pem, false)
}

/// Writes `DIR/NAME.key` (mode 0600) and `DIR/NAME.csr`. An existing key is
/// never replaced: it may be the one a running process uses.
pub fn write_request(dir: &Path, name: &str, req: &CertRequest) -> Result<(), CertError> {
    let key = dir.join(format!("{name}.key"));
    if key.exists() {
        return Err(CertError::KeyExists { path: key });
    }
    fs::create_dir_all(dir).map_err(|cause| CertError::Write { path: dir.into(), cause })?;
    write_file(&key, &req.key_pem, true)?;
    write_file(&dir.join(format!("{name}.csr")), &req.csr_pem, false)
}

/// Creates a development CA and every corridor identity for `cities` in `out`:
/// `gateway`, `reconciler`, `node-<city>`, `admin-<city>` and `org-demo`.
/// Refuses to overwrite an existing CA unless `force` is set. Returns the
/// identity names written.
pub fn init_dir(out: &Path, cities: &[&str], force: bool) -> Result<Vec<String>, CertError> {
    let ca_path: PathBuf = out.join("ca.pem");
    if ca_path.exists() && !force {
        return Err(CertError::Exists { path: ca_path });
    }
    fs::create_dir_all(out).map_err(|cause| CertError::Write { path: out.into(), cause })?;
    let ca = Ca::generate("Corridor Development CA")?;
    write_file(&out.join("ca.key"), &ca.key_pem(), true)?;
    write_file(&ca_path, ca.cert_pem(), false)?;
    let mut ids = vec![Identity::Gateway, Identity::Reconciler, Identity::Org("demo".into())];
    for c in cities {
        ids.push(Identity::Node((*c).into()));
        ids.push(Identity::Admin((*c).into()));
    }
    let mut names = Vec::with_capacity(ids.len());
    for id in &ids {
        // Round-trip through the name so that a malformed city is refused here.
        let id = Identity::from_name(&id.name())?;
        write_identity(out, &id.name(), &ca.issue(&id, &IssueOptions::for_identity(&id))?)?;
        names.push(id.name());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_writes_every_identity_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let names = init_dir(dir.path(), &["hefei", "wuhu"], false).unwrap();
        assert!(names.contains(&"node-hefei".to_string()));
        assert!(names.contains(&"admin-wuhu".to_string()));
        assert!(names.contains(&"org-demo".to_string()));
        for name in names.iter().map(String::as_str).chain(["ca"]) {
            let key = dir.path().join(format!("{name}.key"));
            let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}.key");
            assert!(dir.path().join(format!("{name}.pem")).exists());
        }
        // A second init must not silently replace the CA.
        assert!(matches!(init_dir(dir.path(), &["hefei"], false), Err(CertError::Exists { .. })));
    }

    #[test]
    fn issued_leaf_names_its_identity_and_loaded_ca_still_issues() {
        let dir = tempfile::tempdir().unwrap();
        init_dir(dir.path(), &["hefei"], false).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let id = Identity::Admin("hefei".into());
        let issued = ca.issue(&id, &IssueOptions::for_identity(&id)).unwrap();
        let der = rustls_pemfile_der(&issued.cert_pem);
        assert_eq!(Identity::from_cert_der(&der).unwrap(), id);
    }

    #[test]
    fn leaves_that_break_the_identity_rules_are_refused() {
        let ca = Ca::generate("test").unwrap();
        let id = Identity::Org("demo".into());
        let mut two = IssueOptions::for_identity(&id);
        two.extra_uris.push("spiffe://corridor/gateway".into());
        let der = rustls_pemfile_der(&ca.issue(&id, &two).unwrap().cert_pem);
        assert!(Identity::from_cert_der(&der).unwrap_err().to_string().contains("2 URI SANs"));
        let mut ca_leaf = IssueOptions::for_identity(&id);
        ca_leaf.is_ca = true;
        let der = rustls_pemfile_der(&ca.issue(&id, &ca_leaf).unwrap().cert_pem);
        assert!(Identity::from_cert_der(&der).unwrap_err().to_string().contains("CA certificate"));
    }

    fn year() -> (OffsetDateTime, OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        (now - Duration::minutes(1), now + Duration::days(365))
    }

    /// A request the corridor CA must refuse, made with rcgen directly.
    fn forged(edit: impl FnOnce(&mut CertificateParams)) -> String {
        let id = Identity::Node("hefei".into());
        let mut params = leaf_params(&id, &IssueOptions::for_identity(&id)).unwrap();
        params.use_authority_key_identifier_extension = false;
        edit(&mut params);
        params.serialize_request(&KeyPair::generate().unwrap()).unwrap().pem().unwrap()
    }

    #[test]
    fn requests_for_what_this_ca_must_not_issue_are_refused_with_the_reason() {
        let ca = Ca::generate("test").unwrap();
        let (from, to) = year();
        let uri = |u: &str| SanType::URI(ia5(u).unwrap());
        let cases: Vec<(String, &str)> = vec![
            (forged(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)), "it asks for a CA certificate"),
            (forged(|p| p.subject_alt_names.push(uri("spiffe://corridor/gateway"))), "it asks for 2 URI SANs"),
            (
                forged(|p| {
                    p.subject_alt_names.retain(|s| !matches!(s, SanType::URI(_)));
                    p.subject_alt_names.push(uri("spiffe://elsewhere/gateway"));
                }),
                "\"spiffe://elsewhere/gateway\" is not a corridor identity",
            ),
            (forged(|p| p.subject_alt_names.retain(|s| !matches!(s, SanType::URI(_)))), "it names no identity"),
            (
                forged(|p| p.subject_alt_names.push(SanType::DnsName(ia5("node.corridor-wuhu.svc").unwrap()))),
                "DNS name \"node.corridor-wuhu.svc\" belongs to spiffe://corridor/city/wuhu/node",
            ),
        ];
        for (csr, want) in cases {
            let err = ca.sign_request(&csr, from, to).unwrap_err().to_string();
            assert!(err.starts_with("certificate signing request refused: "), "{err}");
            assert!(err.contains(want), "{want:?} in {err:?}");
        }

        // A client identity claims no server names.
        let admin = Identity::Admin("hefei".into());
        let mut opts = IssueOptions::for_identity(&admin);
        opts.dns_names.push("portal.example.org".into());
        let err = ca.sign_request(&request(&admin, &opts).unwrap().csr_pem, from, to).unwrap_err().to_string();
        assert!(err.contains("client identity"), "{err}");

        // A request whose signature does not match the key it carries.
        let good = request(&admin, &IssueOptions::for_identity(&admin)).unwrap().csr_pem;
        let mut der = pem_der(&good);
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered =
            format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", base64(&der));
        let err = ca.sign_request(&tampered, from, to).unwrap_err().to_string();
        assert!(err.contains("signature does not verify") || err.contains("malformed"), "{err}");
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in body.bytes().filter(|c| *c != b'=') {
            bits = (bits << 6) | table.iter().position(|t| *t == c).unwrap() as u32;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
            }
        }
        out
    }

    fn base64(der: &[u8]) -> String {
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in der.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let v = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(table[(v >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
        crate::files::certs_from_pem(pem.as_bytes()).unwrap().remove(0).to_vec()
    }
}
