//! TLS for `wss://`: rustls with the ring provider chosen explicitly (nothing is left to a process-wide
//! default, so nothing can panic at connect time), web PKI roots, plus an optional PEM file of extra CAs.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::answer::StartError;

pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, StartError> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        fn bad<E: std::error::Error + Send + Sync + 'static>(path: &Path) -> impl FnOnce(E) -> StartError + '_ {
            move |e| StartError::CaFile { path: path.to_owned(), source: Box::new(e) }
        }
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(bad(path))? {
            let cert = cert.map_err(bad(path))?;
            roots.add(cert).map_err(bad(path))?;
            added += 1;
        }
        if added == 0 {
            return Err(StartError::NoCaCertificate(path.to_owned()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(StartError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
