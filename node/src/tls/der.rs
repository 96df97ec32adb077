//! Just enough DER reading to name a certificate: its serial number and its
//! Subject common name (CN). Anything malformed reads as `None`; the
//! certificate itself has already been verified by rustls (or is being
//! inspected by a test), so this never decides trust.

const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_INTEGER: u8 = 0x02;
const TAG_OID: u8 = 0x06;
/// `[0] EXPLICIT Version` at the start of a v3 `TBSCertificate`.
const TAG_VERSION: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3.
const OID_COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];

/// One DER element: (tag, contents, what follows it).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: the low bits count the length bytes. Certificates
        // never need more than 4.
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The elements of a constructed value, in order.
fn elements(mut input: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (tag, contents, rest) = element(input)?;
        out.push((tag, contents));
        input = rest;
    }
    Some(out)
}

/// The fields of `TBSCertificate` after the optional version:
/// serialNumber, signature, issuer, validity, subject, ...
fn tbs_fields(cert_der: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let (tag, cert, _) = element(cert_der)?;
    if tag != TAG_SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(cert)?;
    if tag != TAG_SEQUENCE {
        return None;
    }
    let mut fields = elements(tbs)?;
    if fields.first().is_some_and(|(tag, _)| *tag == TAG_VERSION) {
        fields.remove(0);
    }
    Some(fields)
}

/// The certificate's serial number (the INTEGER's content bytes, big-endian).
pub fn serial(cert_der: &[u8]) -> Option<Vec<u8>> {
    match tbs_fields(cert_der)?.first() {
        Some((TAG_INTEGER, serial)) => Some(serial.to_vec()),
        _ => None,
    }
}

/// The first common name (CN) in the certificate's Subject.
pub fn common_name(cert_der: &[u8]) -> Option<String> {
    let fields = tbs_fields(cert_der)?;
    let (tag, subject) = fields.get(4)?;
    if *tag != TAG_SEQUENCE {
        return None;
    }
    for (tag, rdn) in elements(subject)? {
        if tag != TAG_SET {
            continue;
        }
        for (tag, attribute) in elements(rdn)? {
            if tag != TAG_SEQUENCE {
                continue;
            }
            let parts = elements(attribute)?;
            if let [(TAG_OID, oid), (_, value)] = parts.as_slice()
                && *oid == OID_COMMON_NAME
            {
                // UTF8String, PrintableString, IA5String, ...: all ASCII or
                // UTF-8 in practice.
                return Some(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SerialNumber};

    fn cert(cn: Option<&str>, serial: &[u8]) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "witan");
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from_slice(serial));
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn reads_serial_and_common_name() {
        let der = cert(Some("alice"), &[0x01, 0x02, 0x03]);
        assert_eq!(serial(&der), Some(vec![0x01, 0x02, 0x03]));
        assert_eq!(common_name(&der).as_deref(), Some("alice"));
        let der = cert(None, &[0x42]);
        assert_eq!(serial(&der), Some(vec![0x42]));
        assert_eq!(common_name(&der), None);
    }

    #[test]
    fn malformed_input_is_none() {
        let der = cert(Some("bob"), &[7]);
        for cut in [0, 1, 2, 10, der.len() / 2, der.len() - 1] {
            // A truncated certificate's outer length no longer fits.
            assert_eq!(serial(&der[..cut]), None, "cut at {cut}");
            assert_eq!(common_name(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(serial(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(common_name(b"not der at all"), None);
    }
}
