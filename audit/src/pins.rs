//! The pins file: the keys an auditor pins out of band (the namespace, the
//! witness keys, the operator's countersigning key, vendor roots, ceremony
//! officers and their threshold, independent cosigners), one `kind fields...`
//! line each. `vaultfleet audit pins` writes it; `audit verify`, `audit log`
//! and `audit bundle` read it with [`Pins::parse`]. It comes from outside (a
//! file an auditor was handed), so the parser takes any text and answers a
//! typed error, never a panic (fuzz target `pins`).
//!
//! ```text
//! namespace NS
//! witness NAME NOT_BEFORE HEX32      (one or more)
//! operator HEX32
//! vendor NAME HEX32                  (any number)
//! officer NAME HEX32                 (any number)
//! threshold N                        (N >= 1)
//! cosigner NAME HEX32                (any number; then a `cosigners K` line)
//! cosigners K
//! ```
//!
//! Fields are separated by whitespace; empty lines are skipped. A
//! `namespace`, `operator`, `threshold` or `cosigners` line may appear once
//! (a second one, which a reader of the top of the file would miss, is
//! refused), keys are exactly 64 hex digits, and the cosigners obey the rules
//! of [`FleetVerifier::require_cosigners`](crate::FleetVerifier::require_cosigners)
//! ([`check_cosigner_pins`]) when the file is read, so every reader of the file
//! counts the same cosigners.

use std::num::ParseIntError;

use crate::bundle::{check_cosigner_pins, CosignerPinError};
use crate::fleet::evidence::AuditPins;
use crate::{CosignerKey, WitnessKey};

/// A parsed pins file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    /// The log's namespace.
    pub namespace: String,
    /// The witness keys, in the file's order.
    pub witness: Vec<WitnessKey>,
    /// The operator's countersigning key (all zero when the file has no
    /// `operator` line).
    pub operator: [u8; 32],
    /// Vendor roots, officers and the officer threshold.
    pub audit: AuditPins,
    /// Independent witnesses that cosign the log's checkpoints.
    pub cosigners: Vec<CosignerKey>,
    /// How many of them a bundle's checkpoint needs (0: none).
    pub cosigners_required: usize,
}

/// What is wrong in a pins file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinsError {
    /// A line is none of the known kinds.
    #[error("line {line}: unknown line")]
    UnknownLine {
        /// The line, from 1.
        line: usize,
    },
    /// A number does not parse.
    #[error("line {line}: not a number")]
    NotANumber {
        /// The line, from 1.
        line: usize,
        /// Why.
        #[source]
        source: ParseIntError,
    },
    /// A key is not 32 bytes of hex.
    #[error("line {line}: a key is not 32 bytes of hex")]
    BadKey {
        /// The line, from 1.
        line: usize,
    },
    /// The file lacks a namespace, a witness key or a threshold.
    #[error("pins need a namespace, at least one witness key and a threshold")]
    Incomplete,
    /// Cosigners are pinned but no `cosigners K` line says how many to require.
    #[error("cosigner lines need a `cosigners K` line (K from 1 to their number): without it no cosignature would be checked")]
    CosignersUnused,
    /// A line that may appear once appears again.
    #[error("line {line}: a second `{kind}` line (it may appear once)")]
    Repeated {
        /// The line, from 1.
        line: usize,
        /// Its kind: `namespace`, `operator`, `threshold` or `cosigners`.
        kind: &'static str,
    },
    /// The cosigner pins break a rule of
    /// [`FleetVerifier::require_cosigners`](crate::FleetVerifier::require_cosigners):
    /// `cosigners K` above their number, a name or key pinned twice, a
    /// witness key pinned as a cosigner.
    #[error("the cosigner pins are refused")]
    Cosigners(#[from] CosignerPinError),
}

impl Pins {
    /// Parses a pins file's text.
    pub fn parse(text: &str) -> Result<Self, PinsError> {
        let mut p = Self {
            namespace: String::new(),
            witness: Vec::new(),
            operator: [0; 32],
            audit: AuditPins::default(),
            cosigners: Vec::new(),
            cosigners_required: 0,
        };
        let mut seen: Vec<&'static str> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let mut once = |kind: &'static str| {
                if seen.contains(&kind) {
                    return Err(PinsError::Repeated {
                        line: line_no,
                        kind,
                    });
                }
                seen.push(kind);
                Ok(())
            };
            let key = |s: &str| unhex32(s).ok_or(PinsError::BadKey { line: line_no });
            let number = |source| PinsError::NotANumber {
                line: line_no,
                source,
            };
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["namespace", ns] => {
                    once("namespace")?;
                    p.namespace = ns.to_string();
                }
                ["witness", name, nb, k] => p.witness.push(WitnessKey {
                    name: name.to_string(),
                    not_before: nb.parse().map_err(number)?,
                    public_key: key(k)?,
                }),
                ["operator", k] => {
                    once("operator")?;
                    p.operator = key(k)?;
                }
                ["vendor", name, k] => p.audit.vendor_roots.push((name.to_string(), key(k)?)),
                ["officer", name, k] => p.audit.officers.push((name.to_string(), key(k)?)),
                ["threshold", n] => {
                    once("threshold")?;
                    p.audit.threshold = n.parse().map_err(number)?;
                }
                ["cosigner", name, k] => p.cosigners.push(CosignerKey {
                    name: name.to_string(),
                    public_key: key(k)?,
                }),
                ["cosigners", n] => {
                    once("cosigners")?;
                    p.cosigners_required = n.parse().map_err(number)?;
                }
                [] => {}
                _ => return Err(PinsError::UnknownLine { line: line_no }),
            }
        }
        if p.namespace.is_empty() || p.witness.is_empty() || p.audit.threshold == 0 {
            return Err(PinsError::Incomplete);
        }
        // R1-5: cosigners pinned but none required would check nothing.
        if !p.cosigners.is_empty() && p.cosigners_required == 0 {
            return Err(PinsError::CosignersUnused);
        }
        // S1/S2 (review of this parser): `cosigners K` above their number, or
        // a cosigner pinned twice, would count differently in different
        // readers; the verifier's rules hold for the file itself.
        if p.cosigners_required > 0 {
            check_cosigner_pins(p.cosigners_required, &p.cosigners, &p.witness)?;
        }
        Ok(p)
    }

    /// The pins as a file's text, one line per pin in the order of
    /// [`Pins::parse`]'s format (keys as lowercase hex; no `cosigners` line
    /// when none are required): parsing it gives these pins back, for pins
    /// that [`Pins::parse`] accepted. The fields are written as they are: a
    /// name with whitespace in it, set by hand, would not read back.
    pub fn to_text(&self) -> String {
        let mut text = format!("namespace {}\n", self.namespace);
        for w in &self.witness {
            let key = hex(&w.public_key);
            text.push_str(&format!("witness {} {} {key}\n", w.name, w.not_before));
        }
        text.push_str(&format!("operator {}\n", hex(&self.operator)));
        for (name, key) in &self.audit.vendor_roots {
            text.push_str(&format!("vendor {name} {}\n", hex(key)));
        }
        for (name, key) in &self.audit.officers {
            text.push_str(&format!("officer {name} {}\n", hex(key)));
        }
        text.push_str(&format!("threshold {}\n", self.audit.threshold));
        for c in &self.cosigners {
            text.push_str(&format!("cosigner {} {}\n", c.name, hex(&c.public_key)));
        }
        if self.cosigners_required > 0 {
            text.push_str(&format!("cosigners {}\n", self.cosigners_required));
        }
        text
    }
}

/// 64 hex digits as 32 bytes.
fn unhex32(s: &str) -> Option<[u8; 32]> {
    // Hex digits only: `from_str_radix` alone would take a `+` in a pair (S4).
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..32)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    bytes?.try_into().ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";

    fn minimal() -> String {
        format!("namespace ns\nwitness w1 0 {KEY}\nthreshold 1\n")
    }

    #[test]
    fn a_minimal_file_parses_and_round_trips() {
        let p = Pins::parse(&minimal()).unwrap();
        assert_eq!(p.namespace, "ns");
        assert_eq!(p.witness[0].public_key, [1; 32]);
        assert_eq!(p.audit.threshold, 1);
        assert_eq!(Pins::parse(&p.to_text()).unwrap(), p);
    }

    #[test]
    fn errors_name_their_line() {
        let bad = |text: &str| Pins::parse(text).unwrap_err().to_string();
        assert_eq!(bad("namespace a b\n"), "line 1: unknown line");
        assert_eq!(bad("\nthreshold x\n"), "line 2: not a number");
        assert_eq!(bad("operator 00\n"), "line 1: a key is not 32 bytes of hex");
        // A multi-byte character across a hex pair is a bad key, not a panic.
        let odd = format!("operator é{}\n", &KEY[2..]);
        assert_eq!(bad(&odd), "line 1: a key is not 32 bytes of hex");
        assert!(matches!(Pins::parse(""), Err(PinsError::Incomplete)));
        let unused = format!("{}cosigner c {KEY2}\n", minimal());
        assert!(matches!(
            Pins::parse(&unused),
            Err(PinsError::CosignersUnused)
        ));
        assert!(Pins::parse(&format!("{unused}cosigners 1\n")).is_ok());
    }

    const KEY2: &str = "0202020202020202020202020202020202020202020202020202020202020202";

    #[test]
    fn s1_cosigners_k_above_their_number_is_refused() {
        let none = format!("{}cosigners 2\n", minimal());
        assert!(matches!(
            Pins::parse(&none),
            Err(PinsError::Cosigners(CosignerPinError::Threshold {
                need: 2,
                pinned: 0
            }))
        ));
        let one = format!("{}cosigner c {KEY2}\ncosigners 2\n", minimal());
        assert!(matches!(
            Pins::parse(&one),
            Err(PinsError::Cosigners(CosignerPinError::Threshold {
                need: 2,
                pinned: 1
            }))
        ));
    }

    #[test]
    fn s2_a_cosigner_pinned_twice_is_refused() {
        let same_line = format!(
            "{}cosigner c {KEY2}\ncosigner c {KEY2}\ncosigners 2\n",
            minimal()
        );
        assert!(matches!(
            Pins::parse(&same_line),
            Err(PinsError::Cosigners(CosignerPinError::DuplicateName(_)))
        ));
        let same_key = format!(
            "{}cosigner a {KEY2}\ncosigner b {KEY2}\ncosigners 2\n",
            minimal()
        );
        assert!(matches!(
            Pins::parse(&same_key),
            Err(PinsError::Cosigners(CosignerPinError::DuplicateKey { .. }))
        ));
        // The witness's own key as a cosigner.
        let witness = format!("{}cosigner c {KEY}\ncosigners 1\n", minimal());
        assert!(matches!(
            Pins::parse(&witness),
            Err(PinsError::Cosigners(CosignerPinError::WitnessKey { .. }))
        ));
    }

    #[test]
    fn s3_a_second_singleton_line_is_refused() {
        for (line, kind) in [
            ("namespace other", "namespace"),
            ("threshold 1", "threshold"),
        ] {
            let text = format!("{}{line}\n", minimal());
            match Pins::parse(&text) {
                Err(PinsError::Repeated { line: 4, kind: k }) => assert_eq!(k, kind),
                other => panic!("{line}: {other:?}"),
            }
        }
        let operator = format!("operator {KEY2}\noperator {KEY2}\n{}", minimal());
        assert!(matches!(
            Pins::parse(&operator),
            Err(PinsError::Repeated {
                line: 2,
                kind: "operator"
            })
        ));
        let cosigners = format!("{}cosigner c {KEY2}\ncosigners 1\ncosigners 1\n", minimal());
        assert!(matches!(
            Pins::parse(&cosigners),
            Err(PinsError::Repeated {
                line: 6,
                kind: "cosigners"
            })
        ));
    }

    #[test]
    fn s4_a_key_is_hex_digits_only() {
        let plus = "+1".repeat(32);
        assert!(matches!(
            Pins::parse(&format!("operator {plus}\n")),
            Err(PinsError::BadKey { line: 1 })
        ));
        assert!(Pins::parse(&format!("operator {}\n{}", KEY.to_uppercase(), minimal())).is_ok());
    }
}
