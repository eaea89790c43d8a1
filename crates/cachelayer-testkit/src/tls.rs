//! A throw-away certificate authority and a server certificate for `localhost`, for TLS tests.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};

/// Certificate parameters with their own subject: OpenSSL (inside redis-server) treats a
/// certificate whose subject equals its issuer's as self-signed and rejects it.
fn params(common_name: &str, alt_names: &[&str]) -> CertificateParams {
    let names: Vec<String> = alt_names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("certificate params");
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, common_name);
    params.distinguished_name = subject;
    params
}

/// PEM files of a test CA, a server certificate for `localhost` and `127.0.0.1`, and a
/// client certificate (for mutual TLS), both signed by the CA and written into a directory.
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
    /// A client certificate signed by the CA, PEM.
    pub client_cert_pem: String,
    /// The client certificate's private key, PEM.
    pub client_key_pem: String,
}

impl TestCertificates {
    /// Generate a CA and a server certificate and write them into `dir`.
    ///
    /// # Panics
    /// If key generation or writing the files fails (a broken test environment).
    pub fn generate(dir: &Path) -> Self {
        let mut ca_params = params("cachelayer test CA", &[]);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
            .expect("self-signed ca");

        let server_params = params("localhost", &["localhost", "127.0.0.1"]);
        let server_key = KeyPair::generate().expect("server key");
        let server_cert = server_params
            .signed_by(&server_key, &ca)
            .expect("server certificate");

        let client_params = CertificateParams::new(vec!["cachelayer-test-client".to_owned()])
            .expect("client params");
        let client_key = KeyPair::generate().expect("client key");
        let client_cert = client_params
            .signed_by(&client_key, &ca)
            .expect("client certificate");

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
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }
}
