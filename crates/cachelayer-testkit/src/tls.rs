//! A throw-away certificate authority and a server certificate for `localhost`, for TLS tests.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// PEM files of a test CA and a server certificate for `localhost` and `127.0.0.1` signed by
/// it, written into a directory.
#[derive(Debug, Clone)]
pub struct TestCertificates {
    /// The CA certificate, PEM.
    pub ca_cert_pem: String,
    /// Path of the CA certificate file.
    pub ca_cert_file: PathBuf,
    /// Path of the server certificate file.
    pub server_cert_file: PathBuf,
    /// Path of the server private key file.
    pub server_key_file: PathBuf,
}

impl TestCertificates {
    /// Generate a CA and a server certificate and write them into `dir`.
    ///
    /// # Panics
    /// If key generation or writing the files fails (a broken test environment).
    pub fn generate(dir: &Path) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
            .expect("self-signed ca");

        let server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        let server_key = KeyPair::generate().expect("server key");
        let server_cert = server_params
            .signed_by(&server_key, &ca)
            .expect("server certificate");

        let write = |name: &str, contents: &str| {
            let path = dir.join(name);
            std::fs::write(&path, contents).expect("write certificate file");
            path
        };
        Self {
            ca_cert_pem: ca.pem(),
            ca_cert_file: write("ca.crt", &ca.pem()),
            server_cert_file: write("server.crt", &server_cert.pem()),
            server_key_file: write("server.key", &server_key.serialize_pem()),
        }
    }
}
