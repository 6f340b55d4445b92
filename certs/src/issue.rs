use std::{
    fs,
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, string::Ia5String,
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
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
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

    fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
        crate::tls::certs_from_pem(pem.as_bytes()).unwrap().remove(0).to_vec()
    }
}
