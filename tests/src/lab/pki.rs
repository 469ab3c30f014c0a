//! Certificates for the lab's servers, issued by the fake internet's test CA (fakenet writes its
//! key with `--ca-key-out`), so that every client and the agent's `upstream_ca` trust one CA.

use std::path::Path;

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// The test CA's common name (fakenet issues its CA with it). A leaf names its issuer by this
/// distinguished name and by the key identifier of the CA's public key, so the CA's key and this
/// name are all an [`Issuer`] needs (rcgen parses a CA certificate only with its `x509-parser`
/// feature, which this crate does not enable).
pub const TEST_CA_NAME: &str = "egress-tests fake internet CA";

/// The CA's key usages, as fakenet sets them.
pub fn test_ca_key_usages() -> Vec<KeyUsagePurpose> {
    vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ]
}

/// Writes a leaf certificate for `names` (PEM, to `cert`) and its key (PEM, to `key`), signed by
/// the test CA whose key is in `ca_key`.
pub fn issue_leaf(ca_key: &Path, names: &[&str], cert: &Path, key: &Path) {
    issue_leaf_with(ca_key, names, cert, key, |_| {});
}

/// [`issue_leaf`], with `customise` applied to the leaf's parameters before signing (extra
/// extensions such as Authority Information Access or CRL distribution points).
pub fn issue_leaf_with(
    ca_key: &Path,
    names: &[&str],
    cert: &Path,
    key: &Path,
    customise: impl FnOnce(&mut CertificateParams),
) {
    let pem = std::fs::read_to_string(ca_key)
        .unwrap_or_else(|e| panic!("read {}: {e}", ca_key.display()));
    let ca_key = KeyPair::from_pem(&pem).expect("the test CA's key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, TEST_CA_NAME);
    ca.key_usages = test_ca_key_usages();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut p = CertificateParams::new(sans).expect("leaf names");
    p.distinguished_name.push(DnType::CommonName, names[0]);
    p.is_ca = IsCa::NoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    customise(&mut p);
    let leaf = p.signed_by(&leaf_key, &issuer).expect("sign the leaf");
    std::fs::write(cert, leaf.pem()).unwrap();
    std::fs::write(key, leaf_key.serialize_pem()).unwrap();
}
