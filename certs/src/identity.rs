use std::fmt;

use x509_parser::{extensions::GeneralName, prelude::*};

use crate::error::CertError;

/// The trust domain every corridor identity lives in.
pub const TRUST_DOMAIN: &str = "corridor";

/// Who a peer is, as its certificate's single URI SAN says.
///
/// Every authorization decision in the corridor is made on this value, never
/// on a network address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// `spiffe://corridor/gateway`: the public entry point; reads every city.
    Gateway,
    /// `spiffe://corridor/reconciler`: the settlement job; reads every city.
    Reconciler,
    /// `spiffe://corridor/city/<city>/node`: the node serving that city.
    Node(String),
    /// `spiffe://corridor/city/<city>/admin`: the operator who writes that city's data.
    Admin(String),
    /// `spiffe://corridor/org/<name>`: an enterprise or lab client.
    Org(String),
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

impl Identity {
    /// The file stem used under a certs directory: `gateway`, `node-hefei`, `org-demo`.
    pub fn name(&self) -> String {
        match self {
            Identity::Gateway => "gateway".into(),
            Identity::Reconciler => "reconciler".into(),
            Identity::Node(c) => format!("node-{c}"),
            Identity::Admin(c) => format!("admin-{c}"),
            Identity::Org(o) => format!("org-{o}"),
        }
    }

    /// Parses a file stem as written by [`Identity::name`].
    pub fn from_name(name: &str) -> Result<Self, CertError> {
        let id = match name {
            "gateway" => Identity::Gateway,
            "reconciler" => Identity::Reconciler,
            _ => match name.split_once('-') {
                Some(("node", c)) => Identity::Node(c.into()),
                Some(("admin", c)) => Identity::Admin(c.into()),
                Some(("org", o)) => Identity::Org(o.into()),
                _ => {
                    return Err(CertError::BadIdentity(format!(
                        "{name:?}: expected gateway, reconciler, node-<city>, admin-<city> or org-<name>"
                    )));
                }
            },
        };
        id.check()?;
        Ok(id)
    }

    /// The SPIFFE-style URI carried as the certificate's only URI SAN.
    pub fn uri(&self) -> String {
        let path = match self {
            Identity::Gateway => "gateway".into(),
            Identity::Reconciler => "reconciler".into(),
            Identity::Node(c) => format!("city/{c}/node"),
            Identity::Admin(c) => format!("city/{c}/admin"),
            Identity::Org(o) => format!("org/{o}"),
        };
        format!("spiffe://{TRUST_DOMAIN}/{path}")
    }

    /// Parses a URI SAN. Anything outside the corridor trust domain is refused.
    pub fn from_uri(uri: &str) -> Result<Self, CertError> {
        let bad = || CertError::BadIdentity(format!("{uri:?} is not a corridor identity URI"));
        let path = uri
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.strip_prefix(TRUST_DOMAIN))
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(bad)?;
        let parts: Vec<&str> = path.split('/').collect();
        let id = match parts.as_slice() {
            ["gateway"] => Identity::Gateway,
            ["reconciler"] => Identity::Reconciler,
            ["city", c, "node"] => Identity::Node((*c).into()),
            ["city", c, "admin"] => Identity::Admin((*c).into()),
            ["org", o] => Identity::Org((*o).into()),
            _ => return Err(bad()),
        };
        id.check().map_err(|_| bad())?;
        Ok(id)
    }

    fn check(&self) -> Result<(), CertError> {
        match self {
            Identity::Node(s) | Identity::Admin(s) | Identity::Org(s) if !valid_segment(s) => {
                Err(CertError::BadIdentity(format!("{s:?}: names are lowercase letters, digits and '-'")))
            }
            _ => Ok(()),
        }
    }

    /// Reads the identity of a leaf certificate. The leaf must not be a CA and
    /// must carry exactly one URI SAN; chain validity is the TLS layer's job.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::BadCertificate(e.to_string()))?;
        if cert.is_ca() {
            return Err(CertError::BadCertificate("a CA certificate cannot be used as a peer identity".into()));
        }
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(u) = name {
                    uris.push(*u);
                }
            }
        }
        match uris.as_slice() {
            [one] => Identity::from_uri(one),
            [] => Err(CertError::BadCertificate("no URI SAN: the certificate names no identity".into())),
            _ => Err(CertError::BadCertificate(format!(
                "{} URI SANs: an identity certificate carries exactly one",
                uris.len()
            ))),
        }
    }

    /// The city this identity acts for, if any.
    pub fn city(&self) -> Option<&str> {
        match self {
            Identity::Node(c) | Identity::Admin(c) => Some(c),
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_uris_round_trip() {
        for id in [
            Identity::Gateway,
            Identity::Reconciler,
            Identity::Node("hefei".into()),
            Identity::Admin("wuhu".into()),
            Identity::Org("demo".into()),
        ] {
            assert_eq!(Identity::from_name(&id.name()).unwrap(), id);
            assert_eq!(Identity::from_uri(&id.uri()).unwrap(), id);
        }
        assert_eq!(Identity::Node("hefei".into()).uri(), "spiffe://corridor/city/hefei/node");
    }

    #[test]
    fn foreign_and_malformed_uris_are_refused() {
        for uri in [
            "spiffe://other/gateway",
            "spiffe://corridor/city/hefei",
            "spiffe://corridor/city/Hefei/node",
            "spiffe://corridor/city//admin",
            "https://corridor/gateway",
            "spiffe://corridorx/gateway",
        ] {
            assert!(Identity::from_uri(uri).is_err(), "{uri}");
        }
        assert!(Identity::from_name("root").is_err());
        assert!(Identity::from_name("node-").is_err());
    }
}
