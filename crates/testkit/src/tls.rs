//! The one place tests get TLS certificates: a throwaway CA, a server certificate for
//! `127.0.0.1` / `localhost` and a client certificate, written as PEM files into a directory
//! that is removed on drop. A second, unrelated CA signs a "stranger" client certificate, for
//! asserting that mutual TLS refuses certificates it did not issue.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A CA with a server and a client certificate, as files. See the module docs.
#[derive(Debug)]
pub struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    /// Generates everything into a fresh directory under the system temp dir.
    pub fn generate(name: &str) -> anyhow::Result<TestPki> {
        Self::generate_for(name, &[])
    }

    /// [`TestPki::generate`] with a server certificate that also covers `extra_names` (DNS
    /// names, wildcards such as `*.gw.example.com` allowed): for a TLS endpoint reached under
    /// public host names, like the local Kubernetes runner's ingress.
    pub fn generate_for(name: &str, extra_names: &[&str]) -> anyhow::Result<TestPki> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "switchyard-pki-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pki = TestPki { dir };

        let ca = issuer("Switchyard test CA")?;
        pki.write("ca.pem", &ca.pem())?;
        let mut names = vec!["localhost".to_owned()];
        names.extend(extra_names.iter().map(|n| (*n).to_owned()));
        let mut server = CertificateParams::new(names)?;
        server
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        pki.leaf("server", server, &ca)?;
        let mut client = CertificateParams::new(vec!["gateway.switchyard.test".to_owned()])?;
        client
            .distinguished_name
            .push(DnType::CommonName, "switchyard test client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        pki.leaf("client", client.clone(), &ca)?;
        let stranger_ca = issuer("Somebody else's CA")?;
        pki.leaf("stranger", client, &stranger_ca)?;
        Ok(pki)
    }

    fn write(&self, file: &str, pem: &str) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))
    }

    /// Signs `params` with `ca` and writes `<name>.pem` and `<name>-key.pem`.
    fn leaf(
        &self,
        name: &str,
        params: CertificateParams,
        ca: &CertifiedIssuer<'_, KeyPair>,
    ) -> anyhow::Result<()> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, ca)?;
        self.write(&format!("{name}.pem"), &cert.pem())?;
        self.write(&format!("{name}-key.pem"), &key.serialize_pem())
    }

    fn path(&self, file: &str) -> String {
        self.file(file).display().to_string()
    }

    /// One of the files: `ca.pem`, `server.pem`, `server-key.pem`, `client.pem`,
    /// `client-key.pem`, `stranger.pem`, `stranger-key.pem`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CA certificate (PEM file) that signed the server and client certificates.
    pub fn ca(&self) -> String {
        self.path("ca.pem")
    }

    /// The CA certificate's PEM bytes.
    pub fn ca_pem(&self) -> anyhow::Result<Vec<u8>> {
        Ok(std::fs::read(self.dir.join("ca.pem"))?)
    }

    /// Service flags serving TLS with the server certificate.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path("server.pem"),
            "--tls-key".into(),
            self.path("server-key.pem"),
        ]
    }

    /// [`TestPki::server_args`] plus `--tls-client-ca`: gRPC clients need a certificate.
    pub fn mutual_server_args(&self) -> Vec<String> {
        let mut args = self.server_args();
        args.extend(["--tls-client-ca".into(), self.ca()]);
        args
    }

    /// Client flags trusting the CA and presenting the certificate `name` (`client`,
    /// `stranger`), or none with `None`.
    pub fn client_args(&self, name: Option<&str>) -> Vec<String> {
        let mut args = vec!["--tls-ca".into(), self.ca()];
        if let Some(name) = name {
            args.extend([
                "--tls-client-cert".into(),
                self.path(&format!("{name}.pem")),
                "--tls-client-key".into(),
                self.path(&format!("{name}-key.pem")),
            ]);
        }
        args
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A self-signed CA able to sign leaves.
fn issuer(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}
