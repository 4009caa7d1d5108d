//! Certificates for TLS tests, made per test with rcgen: a CA, server and client
//! certificates signed by it, and ones that are wrong in one way each (expired, for another
//! name, from another CA).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// A certificate and its private key, PEM, and the certificate's DER.
#[derive(Debug, Clone)]
pub struct TestIdentity {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The certificate (DER), as a peer sees it.
    pub cert_der: Vec<u8>,
}

/// A test certificate authority.
#[derive(Debug)]
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// How a leaf certificate is made.
struct Leaf<'a> {
    names: &'a [&'a str],
    common_name: &'a str,
    client: bool,
    expired: bool,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// The CA's certificate (PEM), what a peer trusts.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> TestIdentity {
        self.leaf(Leaf {
            names,
            common_name: names.first().copied().unwrap_or("server"),
            client: false,
            expired: false,
        })
    }

    /// A server certificate for `names` that expired in 2001.
    pub fn expired_server(&self, names: &[&str]) -> TestIdentity {
        self.leaf(Leaf {
            names,
            common_name: names.first().copied().unwrap_or("server"),
            client: false,
            expired: true,
        })
    }

    /// A client certificate whose subject's common name is `name`.
    pub fn client(&self, name: &str) -> TestIdentity {
        self.leaf(Leaf {
            names: &[],
            common_name: name,
            client: true,
            expired: false,
        })
    }

    fn leaf(&self, leaf: Leaf<'_>) -> TestIdentity {
        let names: Vec<String> = leaf.names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, leaf.common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if leaf.client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if leaf.expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        TestIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        }
    }
}
