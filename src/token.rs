//! Unforgeable tokens for the confirmation and unsubscribe links: the address and purpose,
//! signed with HMAC-SHA256 under a secret kept in the state folder. The address is
//! enciphered in the token, so that a link in a proxy's log, a browser's history or a
//! forwarded mail does not say whose it is.

use std::io::{Read, Write};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The first part of the tokens made now (the address enciphered); older forms, which links
/// in mails already sent carry, have no such part.
const SEALED: &str = "2";
/// Length of a generated secret, in bytes.
const SECRET_BYTES: usize = 32;
/// File name of the generated secret inside the state folder.
pub const SECRET_FILE: &str = "token.key";

/// Lowercase hexadecimal digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Confirm,
    Unsubscribe,
    Preferences,
}

impl Purpose {
    fn tag(self) -> &'static str {
        match self {
            Purpose::Confirm => "confirm",
            Purpose::Unsubscribe => "unsubscribe",
            Purpose::Preferences => "preferences",
        }
    }
}

/// What a genuine token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub email: String,
    /// When it was issued (unix seconds); `None` for tokens made before tokens carried it
    /// (unsubscribe links of old mails, which keep working).
    pub issued: Option<i64>,
}

#[derive(Clone)]
pub struct Signer {
    /// The MAC keyed with the secret once: every token starts from a copy of it, instead of
    /// hashing the key again (two of the four SHA-256 blocks of a token's MAC).
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub fn new(secret: Vec<u8>) -> Signer {
        Signer {
            keyed: Hmac::<Sha256>::new_from_slice(&secret).expect("any key length"),
        }
    }

    /// Reads the secret from `file` when one is configured; otherwise from the state folder,
    /// creating it there (mode 0600) on first start.
    pub fn load(state_dir: &Path, file: Option<&Path>) -> std::io::Result<Signer> {
        if let Some(file) = file {
            let secret = std::fs::read(file).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot read mail.token_secret_file '{}': {e}",
                        file.display()
                    ),
                )
            })?;
            if secret.len() < 16 {
                return Err(std::io::Error::other(format!(
                    "mail.token_secret_file '{}' holds fewer than 16 bytes",
                    file.display()
                )));
            }
            return Ok(Signer::new(secret));
        }
        let path = state_dir.join(SECRET_FILE);
        match std::fs::read(&path) {
            Ok(secret) if secret.len() >= 16 => return Ok(Signer::new(secret)),
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "'{}' is too short; remove it to make a new one (old links stop working)",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(state_dir)?;
        let secret = random_bytes(SECRET_BYTES)?;
        use std::os::unix::fs::OpenOptionsExt;
        let temp = state_dir.join(format!(".{SECRET_FILE}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        f.write_all(&secret)?;
        f.sync_all()?;
        std::fs::rename(&temp, &path)?;
        Ok(Signer::new(secret))
    }

    fn mac(&self, purpose: Purpose, payload: &str) -> Vec<u8> {
        let mut mac = self.keyed.clone();
        mac.update(purpose.tag().as_bytes());
        mac.update(b"\0");
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Enciphers or deciphers `data` (the same operation) with a key stream drawn from the
    /// secret and the token's MAC, which differs for every address, purpose and time: HMAC
    /// as a pseudorandom function in counter mode, the MAC as a synthetic nonce (SIV).
    fn seal(&self, mac: &[u8], data: &mut [u8]) {
        for (n, chunk) in data.chunks_mut(32).enumerate() {
            let mut block = self.keyed.clone();
            block.update(b"address\0");
            block.update(mac);
            block.update(&(n as u32).to_be_bytes());
            for (byte, key) in chunk.iter_mut().zip(block.finalize().into_bytes()) {
                *byte ^= key;
            }
        }
    }

    /// A token for `email` issued at `issued` (unix seconds):
    /// `2.base64(sealed email).issued.base64(mac)`, the MAC over the email and the time.
    pub fn sign(&self, purpose: Purpose, email: &str, issued: i64) -> String {
        let mac = self.mac(purpose, &format!("{email}\0{issued}"));
        let mut sealed = email.as_bytes().to_vec();
        self.seal(&mac, &mut sealed);
        format!(
            "{SEALED}.{}.{issued}.{}",
            B64.encode(sealed),
            B64.encode(mac)
        )
    }

    /// What a token says, if it is genuine and for `purpose`. Tokens of the older forms,
    /// with the address in clear (`base64(email).issued.mac`, and `base64(email).mac` from
    /// before tokens carried a time), still verify: mails already sent carry them.
    pub fn verify(&self, purpose: Purpose, token: &str) -> Option<Verified> {
        let parts: Vec<&str> = token.trim().split('.').collect();
        let (email, issued, mac, sealed) = match parts[..] {
            [email, mac] => (email, None, mac, false),
            [email, issued, mac] => (email, Some(issued.parse::<i64>().ok()?), mac, false),
            [SEALED, email, issued, mac] => (email, Some(issued.parse::<i64>().ok()?), mac, true),
            _ => return None,
        };
        let given = B64.decode(mac).ok()?;
        let mut email = B64.decode(email).ok()?;
        if sealed {
            self.seal(&given, &mut email);
        }
        let email = String::from_utf8(email).ok()?;
        let payload = match issued {
            Some(t) => format!("{email}\0{t}"),
            None => email.clone(),
        };
        let mut check = self.keyed.clone();
        check.update(purpose.tag().as_bytes());
        check.update(b"\0");
        check.update(payload.as_bytes());
        check.verify_slice(&given).ok()?;
        Some(Verified { email, issued })
    }

    /// A short signed name for `id` (hex), fit for the local part of an address:
    /// `id-mac` with 10 hex digits of MAC.
    pub fn sign_short(&self, id: &str) -> String {
        let mac = self.mac(Purpose::Unsubscribe, &format!("verp\0{id}"));
        format!("{id}-{}", hex(&mac[..5]))
    }

    /// The `id` of a [`Signer::sign_short`] token, if genuine.
    pub fn verify_short(&self, token: &str) -> Option<String> {
        let (id, _) = token.rsplit_once('-')?;
        (self.sign_short(id) == token.to_ascii_lowercase()).then(|| id.to_owned())
    }
}

/// Random bytes from the kernel.
pub fn random_bytes(n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_for_their_purpose_and_secret() {
        let signer = Signer::new(b"0123456789abcdef".to_vec());
        let t = signer.sign(Purpose::Unsubscribe, "dan@example.vn", 1_700_000_000);
        let v = signer.verify(Purpose::Unsubscribe, &t).unwrap();
        assert_eq!(v.email, "dan@example.vn");
        assert_eq!(v.issued, Some(1_700_000_000));
        assert_eq!(signer.verify(Purpose::Confirm, &t), None);
        let other = Signer::new(b"fedcba9876543210".to_vec());
        assert_eq!(other.verify(Purpose::Unsubscribe, &t), None);
        // Neither the address nor the time can be changed.
        let parts: Vec<&str> = t.split('.').collect();
        let mut flipped = B64.decode(parts[1]).unwrap();
        flipped[0] ^= 1;
        let forged = format!("2.{}.{}.{}", B64.encode(flipped), parts[2], parts[3]);
        assert_eq!(signer.verify(Purpose::Unsubscribe, &forged), None);
        let later = t.replace(".1700000000.", ".1800000000.");
        assert_eq!(signer.verify(Purpose::Unsubscribe, &later), None);
        assert_eq!(signer.verify(Purpose::Unsubscribe, "garbage"), None);
        assert_eq!(signer.verify(Purpose::Unsubscribe, &format!("x{t}")), None);
    }

    #[test]
    fn a_token_does_not_show_its_address() {
        let signer = Signer::new(b"0123456789abcdef".to_vec());
        let dan = signer.sign(Purpose::Unsubscribe, "dan@example.vn", 1_700_000_000);
        let sealed = B64.decode(dan.split('.').nth(1).unwrap()).unwrap();
        assert_eq!(sealed.len(), "dan@example.vn".len());
        assert_ne!(sealed, b"dan@example.vn");
        // Two addresses issued at the same second: no shared key stream (their XOR is not
        // the addresses' XOR).
        let dao = signer.sign(Purpose::Unsubscribe, "dao@example.vn", 1_700_000_000);
        let other = B64.decode(dao.split('.').nth(1).unwrap()).unwrap();
        let xor = |a: &[u8], b: &[u8]| a.iter().zip(b).map(|(x, y)| x ^ y).collect::<Vec<u8>>();
        assert_ne!(
            xor(&sealed, &other),
            xor(b"dan@example.vn", b"dao@example.vn")
        );
        // A long address crosses the key stream's blocks.
        let long = format!("{}@example.vn", "a".repeat(100));
        let t = signer.sign(Purpose::Confirm, &long, 5);
        assert_eq!(signer.verify(Purpose::Confirm, &t).unwrap().email, long);
        assert!(!t.contains("YWFh"), "no base64 of the address: {t}");
    }

    #[test]
    fn links_of_mails_sent_before_addresses_were_sealed_still_verify() {
        let signer = Signer::new(b"0123456789abcdef".to_vec());
        let issued = 1_700_000_000;
        let clear = format!(
            "{}.{issued}.{}",
            B64.encode("dan@example.vn"),
            B64.encode(signer.mac(Purpose::Unsubscribe, &format!("dan@example.vn\0{issued}")))
        );
        let v = signer.verify(Purpose::Unsubscribe, &clear).unwrap();
        assert_eq!(
            (v.email.as_str(), v.issued),
            ("dan@example.vn", Some(issued))
        );
    }

    #[test]
    fn unsubscribe_links_of_old_mails_still_verify() {
        // The form before tokens carried their time: base64(email).base64(mac over email).
        let signer = Signer::new(b"0123456789abcdef".to_vec());
        let old = format!(
            "{}.{}",
            B64.encode("dan@example.vn"),
            B64.encode(signer.mac(Purpose::Unsubscribe, "dan@example.vn"))
        );
        let v = signer.verify(Purpose::Unsubscribe, &old).unwrap();
        assert_eq!((v.email.as_str(), v.issued), ("dan@example.vn", None));
    }

    #[test]
    fn short_tokens_for_addresses() {
        let signer = Signer::new(b"0123456789abcdef".to_vec());
        let t = signer.sign_short("0a1b2c3d4e5f6a7b");
        assert_eq!(t.len(), 16 + 1 + 10);
        assert_eq!(signer.verify_short(&t).as_deref(), Some("0a1b2c3d4e5f6a7b"));
        assert_eq!(signer.verify_short(&t.replace("0a1b", "0a1c")), None);
    }

    #[test]
    fn the_secret_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Signer::load(dir.path(), None).unwrap();
        let b = Signer::load(dir.path(), None).unwrap();
        // The second reads the first's secret: what one signs, the other verifies.
        let t = a.sign(Purpose::Unsubscribe, "dan@example.vn", 1);
        assert!(b.verify(Purpose::Unsubscribe, &t).is_some());
        let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
