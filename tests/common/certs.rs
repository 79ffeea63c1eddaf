//! Certificates for the TLS tests, made with rcgen in a temp directory
//! (removed when dropped): a CA; a server certificate for localhost and
//! 127.0.0.1 signed by it; client certificates signed by it (one whose CN
//! names a user, one whose CN names nobody); and a client certificate with
//! the same CN signed by another CA, which the broker must not trust.
//! Self-contained (no other test helper), so the pika suite's runner can
//! include it alone.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// The CN of the client certificate that names no user.
pub const STRANGER_CN: &str = "no-such-user";

pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// Writes, in a fresh directory: `ca.pem`; `server.pem`, `server.key`;
    /// `client.pem`, `client.key` (CN = `user_cn`); `stranger.pem`,
    /// `stranger.key` (CN = [`STRANGER_CN`]); `dn.pem`, `dn.key` (subject
    /// C=GB, O=Test, CN = `user_cn`, in that order: see [`dn_of`]); `rogue.pem`, `rogue.key`
    /// (CN = `user_cn`, another CA); `rogue-ca.pem`.
    pub fn generate(user_cn: &str) -> Certs {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "warren-test-certs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let certs = Certs { dir };
        let ca = certs.ca("ca", "Warren test CA");
        let server = leaf(
            &["localhost", "127.0.0.1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        certs.sign("server", server, &ca);
        let client = |cn: &str| leaf(&[], cn, ExtendedKeyUsagePurpose::ClientAuth);
        certs.sign("client", client(user_cn), &ca);
        certs.sign("stranger", client(STRANGER_CN), &ca);
        let mut dn = client(user_cn);
        dn.distinguished_name = rcgen::DistinguishedName::new();
        dn.distinguished_name.push(DnType::CountryName, "GB");
        dn.distinguished_name.push(DnType::OrganizationName, "Test");
        dn.distinguished_name.push(DnType::CommonName, user_cn);
        certs.sign("dn", dn, &ca);
        let rogue_ca = certs.ca("rogue-ca", "Not the broker's CA");
        certs.sign("rogue", client(user_cn), &rogue_ca);
        certs
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file of the set, by name (`"ca.pem"`, `"client.key"`...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A file's text.
    pub fn pem(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).expect("read a generated PEM file")
    }

    fn ca(&self, name: &str, cn: &str) -> Issuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        self.write(&format!("{name}.pem"), &cert.pem());
        Issuer::new(params, key)
    }

    fn sign(&self, name: &str, params: CertificateParams, issuer: &Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        self.write(&format!("{name}.pem"), &cert.pem());
        self.write(&format!("{name}.key"), &key.serialize_pem());
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join(name), text).expect("write a generated PEM file");
    }
}

fn leaf(sans: &[&str], cn: &str, usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params
}

/// The subject of `dn.pem` as RabbitMQ writes it, which is the user an
/// EXTERNAL login with it names under `ssl_cert_login_from =
/// distinguished_name`.
pub fn dn_of(user_cn: &str) -> String {
    format!("CN={user_cn},O=Test,C=GB")
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
