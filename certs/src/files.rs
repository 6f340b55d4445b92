//! What every loader of a certs directory shares: reading certificates from
//! PEM, and where the CA publishes its revocation list. Below `tls` (which
//! loads credentials and the CRL) and `revoke` (which reads a certificate's
//! serial and writes the CRL), so that neither needs the other.

use std::{
    io,
    path::{Path, PathBuf},
};

use rustls::pki_types::{CertificateDer, pem::PemObject};

/// Every certificate in `pem`, in order.
pub(crate) fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, io::Error> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// The CRL every process loads when it exists.
pub fn crl_path(dir: &Path) -> PathBuf {
    dir.join("ca.crl")
}
