//! Reading the mails bantin writes: headers (with RFC 2047 words decoded) and the text part.

use base64::Engine as _;

/// The raw value of header `name` (unfolded), if present.
pub fn raw_header(data: &str, name: &str) -> Option<String> {
    let head = data.split("\r\n\r\n").next().unwrap_or(data);
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Header `name` with encoded words decoded.
pub fn header(data: &str, name: &str) -> Option<String> {
    raw_header(data, name).map(|v| decode_words(&v))
}

/// Decodes `=?utf-8?b?...?=` and `=?utf-8?q?...?=` words.
pub fn decode_words(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let between = &rest[..start];
        if !(last_was_word && between.trim().is_empty()) {
            out.push_str(between);
        }
        let word = &rest[start + 2..];
        let parts: Vec<&str> = word.splitn(3, '?').collect();
        if parts.len() < 3 {
            out.push_str(&rest[start..]);
            return out;
        }
        let end = parts[2].find("?=").unwrap();
        let text = &parts[2][..end];
        let bytes = if parts[1].eq_ignore_ascii_case("b") {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap()
        } else {
            qp(&text.replace('_', " "))
        };
        out.push_str(&String::from_utf8(bytes).unwrap());
        rest = &parts[2][end + 2..];
        last_was_word = true;
    }
    out.push_str(rest);
    out
}

fn qp(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes.get(i + 1) == Some(&b'\r') && bytes.get(i + 2) == Some(&b'\n') {
                i += 3;
                continue;
            }
            if bytes.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            if let Some(hex) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(hex);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The decoded body of the first part whose Content-Type starts with `media`.
pub fn part(data: &str, media: &str) -> Option<String> {
    let ctype = raw_header(data, "Content-Type").unwrap_or_default();
    let boundary = ctype
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .expect("a multipart mail");
    for chunk in data.split(&format!("\r\n--{boundary}")) {
        let Some((head, body)) = chunk.split_once("\r\n\r\n") else {
            continue;
        };
        let ctype = raw_header(&format!("{head}\r\n\r\n"), "Content-Type").unwrap_or_default();
        if ctype.to_ascii_lowercase().starts_with("multipart/") {
            // A nested multipart (an alternative inside a mixed one): look inside.
            if let Some(found) = part(&format!("{head}\r\n\r\n{body}"), media) {
                return Some(found);
            }
            continue;
        }
        if !ctype.to_ascii_lowercase().starts_with(media) {
            continue;
        }
        let encoding = raw_header(&format!("{head}\r\n\r\n"), "Content-Transfer-Encoding")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let bytes = match encoding.as_str() {
            "base64" => base64::engine::general_purpose::STANDARD
                .decode(body.split_whitespace().collect::<String>())
                .unwrap(),
            "quoted-printable" => qp(body),
            _ => body.as_bytes().to_vec(),
        };
        return Some(String::from_utf8(bytes).unwrap());
    }
    None
}

/// The first link in the text part that contains `needle`.
pub fn link(data: &str, needle: &str) -> String {
    let text = part(data, "text/plain").expect("a text part");
    text.split_whitespace()
        .find(|w| w.starts_with("http") && w.contains(needle))
        .unwrap_or_else(|| panic!("no link with {needle} in\n{text}"))
        .to_string()
}

/// The path and query of a URL.
pub fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/')
        .map_or("/".to_string(), |i| rest[i..].to_string())
}
