//! Scanning captured logs for secrets in every form a log line could carry
//! them: raw (as lossy UTF-8), lowercase and uppercase hex, standard and
//! URL-safe base64 (at each of the three byte alignments, so a needle inside a
//! larger encoded buffer is found too), and Rust's `Debug` byte lists (`[1, 2,
//! 3]`, and the same run inside a longer list). Shared by the log-redaction
//! tests of the vault (in process) and of the node daemon (its JSON logs).

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

/// Base64 (RFC 4648) of `bytes`, full 3-byte groups only: what any encoding of a
/// larger buffer holding `bytes` at this alignment contains.
fn base64_groups(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    bytes
        .chunks_exact(3)
        .flat_map(|c| {
            let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
            [18, 12, 6, 0].map(|s| char::from(alphabet[((n >> s) & 63) as usize]))
        })
        .collect()
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Every form of `needle` the scan looks for, with its name.
pub fn forms(needle: &[u8]) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "raw".to_string(),
            String::from_utf8_lossy(needle).into_owned(),
        ),
        ("lowercase hex".to_string(), hex(needle, false)),
        ("uppercase hex".to_string(), hex(needle, true)),
        ("Debug byte list".to_string(), format!("{needle:?}")),
    ];
    // The same bytes inside a longer Debug list: "1, 2, 3" without brackets.
    let list = format!("{needle:?}");
    out.push((
        "Debug byte run".to_string(),
        list.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    ));
    for skip in 0..3 {
        for (name, alphabet) in [("standard", STANDARD), ("URL-safe", URL_SAFE)] {
            out.push((
                format!("{name} base64 (alignment {skip})"),
                base64_groups(&needle[skip..], alphabet),
            ));
        }
    }
    out
}

/// Every place in `text` where one of `needles` (named) shows, in any of its
/// [`forms`], with the line it is on (cut to 300 characters).
pub fn leaks(text: &str, needles: &[(&str, &[u8])]) -> Vec<String> {
    let mut found = Vec::new();
    for &(what, needle) in needles {
        for (form, pattern) in forms(needle) {
            if pattern.is_empty() {
                continue;
            }
            if let Some(at) = text.find(&pattern) {
                let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                let line: String = text[line_start..line_end].chars().take(300).collect();
                found.push(format!("{what} as {form}: {line}"));
            }
        }
    }
    found
}
