//! The node's config file: the documented example parses, unknown fields and
//! a PIN in the config are refused by name, missing fields are named, relative
//! paths follow the config file, and settings that do not work together are
//! refused with what to fix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vaultfleet_node::config::{
    ConfigError, HsmConfig, Invalid, NodeConfig, Runtime, WitnessLogSource,
};
use vaultfleet_node::logging::LogFormat;
use vaultfleet_node::testbed::{ClientCosigner, ClientFile, ClientFileError};

/// The documented example (docs/node.toml.example).
fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/node.toml.example");
    std::fs::read_to_string(path).expect("docs/node.toml.example")
}

/// Writes `text` as `node.toml` in a new folder and loads it.
fn load(text: &str) -> (tempfile::TempDir, Result<NodeConfig, ConfigError>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, text).unwrap();
    let r = NodeConfig::load(&path);
    (dir, r)
}

/// `e` and all its causes, one string.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(" / ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// `text` with the first occurrence of `from` replaced by `to` (which must
/// occur).
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the example holds {from:?}");
    text.replacen(from, to, 1)
}

fn invalid(text: &str) -> Invalid {
    match load(text).1 {
        Err(ConfigError::Invalid { source, .. }) => source,
        other => panic!("expected an invalid setting, got {other:?}"),
    }
}

#[test]
fn the_documented_example_parses_with_every_field_and_paths_resolved() {
    let (dir, r) = load(&example());
    let c = r.expect("the documented example is a valid config");
    let base = dir.path();
    assert_eq!(c.fleet_id, "example-fleet");
    assert_eq!((c.group, c.replica_id), (1, 1));
    assert_eq!(c.datacenter, "dc-a");
    assert_eq!(c.data_dir, base.join("data"));
    assert_eq!(c.transport_key, base.join("transport.key"));
    assert_eq!(c.listen.peer, "0.0.0.0:7100".parse().unwrap());
    assert_eq!(c.listen.vault, "0.0.0.0:7200".parse().unwrap());
    assert_eq!(c.listen.metrics, Some("127.0.0.1:7300".parse().unwrap()));
    match &c.hsm {
        HsmConfig::Pkcs11 {
            module,
            token_label,
            pin_file,
            pin_env,
        } => {
            // An absolute path stays as it is.
            assert_eq!(module, &PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
            assert_eq!(token_label, "vaultfleet-node-1");
            assert_eq!(pin_file.as_deref(), Some(base.join("hsm.pin").as_path()));
            assert_eq!(pin_env, &None);
        }
        other => panic!("pkcs11 expected, got {other:?}"),
    }
    assert_eq!(c.vault.opaque_setup, base.join("opaque-setup.sealed"));
    assert_eq!(c.vault.evidence, base.join("evidence.bin"));
    assert_eq!(
        c.vault.witness_log,
        Some(base.join("witness/witness.state"))
    );
    assert_eq!(c.vault.witness_log_url, None);
    assert_eq!(c.vault.namespace, "example.vault.fleet_keys.v1");
    assert_eq!(c.peers.len(), 3);
    assert_eq!(c.peers[1].id, 2);
    assert!(!c.peers[0].learner);
    assert_eq!(c.admin_keys.len(), 1);
    assert_eq!(c.admin_keys[0].name, "operator-alice");
    assert_eq!(c.log.format, LogFormat::Text);
    assert!(!c.join);
    // The timing maps onto the engine's settings.
    let node = c.node_config();
    assert_eq!(node.tick_interval, Duration::from_millis(100));
    assert_eq!(node.replica.heartbeat_ticks, 3);
    assert_eq!(node.replica.election_ticks, 15);
    assert_eq!((node.replica.id, node.replica.group), (1, 1));
    let fleet = c.fleet_config();
    assert_eq!(fleet.members.len(), 3);
}

#[test]
fn optional_tables_take_their_defaults_and_a_soft_hsm_parses() {
    let text = example();
    let start = text.find("[timing]").unwrap();
    let end = text.find("# Operators allowed").unwrap();
    let mut text = format!("{}{}", &text[..start], &text[end..]);
    text = edit(&text, "group = 1\n", "");
    text = edit(&text, "runtime = \"pool\"\n", "");
    text = edit(&text, "metrics = \"127.0.0.1:7300\"\n", "");
    let hsm_start = text.find("kind = \"pkcs11\"").unwrap();
    let hsm_end = text.find("[vault]").unwrap();
    text.replace_range(
        hsm_start..hsm_end,
        "kind = \"soft\"\nfile = \"hsm.soft\"\n\n",
    );
    let (dir, r) = load(&text);
    let c = r.unwrap();
    assert_eq!(c.group, 1);
    assert_eq!(c.listen.metrics, None);
    assert_eq!(
        c.hsm,
        HsmConfig::Soft {
            file: dir.path().join("hsm.soft")
        }
    );
    assert_eq!(c.timing.tick_ms, 100);
    assert_eq!(c.timing.heartbeat_ticks, 3);
    assert_eq!(c.timing.election_ticks, 15);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.runtime, Runtime::Pool, "the pool by default");
}

#[test]
fn the_runtime_is_pool_or_threads_and_anything_else_is_refused_by_name() {
    let text = example();
    assert_eq!(load(&text).1.unwrap().runtime, Runtime::Pool);
    let threads = edit(&text, "runtime = \"pool\"", "runtime = \"threads\"");
    assert_eq!(load(&threads).1.unwrap().runtime, Runtime::Threads);
    let line = text[..text.find("runtime = \"pool\"").unwrap()]
        .matches('\n')
        .count()
        + 1;
    for bad in ["\"fibers\"", "\"Pool\"", "\"\"", "2"] {
        let (_dir, r) = load(&edit(
            &text,
            "runtime = \"pool\"",
            &format!("runtime = {bad}"),
        ));
        match r {
            Err(ConfigError::Parse { source, .. }) => {
                let message = source.to_string();
                assert_eq!(source.line(), line, "{message}");
                if bad.starts_with('"') {
                    assert!(
                        message.contains(&format!("runtime = {bad} is not a runtime"))
                            && message.contains("\"pool\"")
                            && message.contains("\"threads\""),
                        "{message}"
                    );
                }
            }
            other => panic!("runtime = {bad}: expected a parse error, got {other:?}"),
        }
    }
}

#[test]
fn unknown_fields_are_refused_by_name_in_every_table() {
    for (from, to, name) in [
        ("group = 1\n", "group = 1\ncolour = \"blue\"\n", "colour"),
        ("[listen]\n", "[listen]\nadmin = \"0.0.0.0:1\"\n", "admin"),
        ("[vault]\n", "[vault]\nbundle = \"b.bin\"\n", "bundle"),
        ("[timing]\n", "[timing]\ntick_seconds = 1\n", "tick_seconds"),
        ("[log]\n", "[log]\nlevel = \"debug\"\n", "level"),
        (
            "learner = false\n",
            "learner = false\nweight = 2\n",
            "weight",
        ),
        (
            "name = \"operator-alice\"\n",
            "name = \"operator-alice\"\nrole = \"root\"\n",
            "role",
        ),
        (
            "token_label = \"vaultfleet-node-1\"\n",
            "token_label = \"vaultfleet-node-1\"\nslot = 0\n",
            "slot",
        ),
    ] {
        let (_dir, r) = load(&edit(&example(), from, to));
        match r {
            Err(e @ ConfigError::Parse { .. }) => {
                let text = chain(&e);
                assert!(
                    text.contains(&format!("unknown field `{name}`")),
                    "{name}: {text}"
                );
                // toml names the line.
                assert!(text.contains("line"), "{text}");
            }
            other => panic!("{name}: expected a parse error, got {other:?}"),
        }
    }
}

#[test]
fn a_pin_in_the_config_itself_is_refused_and_never_echoed() {
    for (from, to) in [
        ("pin_file = \"hsm.pin\"\n", "pin = \"secret-pin-1234\"\n"),
        ("group = 1\n", "group = 1\npin = \"secret-pin-1234\"\n"),
    ] {
        let (_dir, r) = load(&edit(&example(), from, to));
        let e = r.unwrap_err();
        let ConfigError::Parse { source, .. } = &e else {
            panic!("a parse error expected: {e:?}");
        };
        assert!(source.line() > 0 && source.column() > 0, "{source}");
        let text = chain(&e);
        assert!(text.contains("unknown field `pin`"), "{text}");
        // The refused value is not echoed back (toml's own display quotes the
        // offending line).
        assert!(!text.contains("secret-pin-1234"), "{text}");
        assert!(!format!("{e:?}").is_empty());
    }
}

#[test]
fn a_missing_field_is_named() {
    for (line, name) in [
        ("datacenter = \"dc-a\"\n", "datacenter"),
        ("replica_id = 1\n", "replica_id"),
        ("namespace = \"example.vault.fleet_keys.v1\"\n", "namespace"),
        ("token_label = \"vaultfleet-node-1\"\n", "token_label"),
    ] {
        let (_dir, r) = load(&edit(&example(), line, ""));
        let e = r.unwrap_err();
        let text = chain(&e);
        assert!(
            matches!(e, ConfigError::Parse { .. })
                && text.contains(&format!("missing field `{name}`")),
            "{name}: {text}"
        );
    }
}

#[test]
fn a_missing_or_unreadable_file_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = NodeConfig::load(&dir.path().join("absent.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    let (_dir, r) = load("this is [not toml");
    assert!(matches!(r, Err(ConfigError::Parse { .. })));
}

#[test]
fn settings_that_do_not_work_together_are_refused_with_what_to_fix() {
    let text = example();
    assert!(matches!(
        invalid(&edit(&text, "replica_id = 1\n", "replica_id = 9\n")),
        Invalid::NotAPeer { id: 9 }
    ));
    assert!(matches!(
        invalid(&edit(&text, "replica_id = 1\n", "replica_id = 0\n")),
        Invalid::Zero { .. }
    ));
    assert!(matches!(
        invalid(&edit(
            &text,
            "datacenter = \"dc-a\"\n",
            "datacenter = \"dc-z\"\n"
        )),
        Invalid::DatacenterMismatch { .. }
    ));
    assert!(matches!(
        invalid(&edit(&text, "id = 3\n", "id = 2\n")),
        Invalid::DuplicatePeer { id: 2 }
    ));
    let bad_key =
        "transport_key = \"0303030303030303030303030303030303030303030303030303030303030303\"";
    let e = invalid(&edit(&text, bad_key, "transport_key = \"03\""));
    assert!(matches!(e, Invalid::Key { .. }), "{e:?}");
    assert!(chain(&e).contains("64 hex digits"), "{}", chain(&e));
    assert!(matches!(
        invalid(&edit(
            &text,
            "0303030303030303030303030303030303030303030303030303030303030303",
            "0202020202020202020202020202020202020202020202020202020202020202"
        )),
        Invalid::DuplicateKey { .. }
    ));
    assert!(matches!(
        invalid(&edit(
            &text,
            "# pin_env = \"VAULTFLEET_HSM_PIN\"",
            "pin_env = \"VAULTFLEET_HSM_PIN\""
        )),
        Invalid::PinSource
    ));
    assert!(matches!(
        invalid(&edit(&text, "pin_file = \"hsm.pin\"\n", "")),
        Invalid::PinSource
    ));
    assert!(matches!(
        invalid(&edit(
            &text,
            "election_ticks = 15\n",
            "election_ticks = 5\n"
        )),
        Invalid::Timing { .. }
    ));
    assert!(matches!(
        invalid(&edit(&text, "tick_ms = 100\n", "tick_ms = 0\n")),
        Invalid::Timing { .. }
    ));
    assert!(matches!(
        invalid(&edit(
            &text,
            "fleet_id = \"example-fleet\"",
            "fleet_id = \"\""
        )),
        Invalid::FleetId
    ));
    // Every peer a learner: no voters, the engine's own check says so.
    let all_learners = text
        .replace("learner = false\n", "learner = true\n")
        .replace(
            "\n[[peer]]\nid = 2\n",
            "\n[[peer]]\nlearner = true\nid = 2\n",
        )
        .replace(
            "\n[[peer]]\nid = 3\n",
            "\n[[peer]]\nlearner = true\nid = 3\n",
        );
    assert!(matches!(invalid(&all_learners), Invalid::Fleet(_)));
}

#[test]
fn init_needs_only_the_ids_and_the_pin_source() {
    // A config whose [[peer]] tables do not hold this node's key yet.
    let text = edit(
        &example(),
        "transport_key = \"0101010101010101010101010101010101010101010101010101010101010101\"",
        "transport_key = \"to be filled in after node init\"",
    );
    let (dir, r) = load(&text);
    assert!(matches!(r, Err(ConfigError::Invalid { .. })));
    let c = NodeConfig::load_for_init(&dir.path().join("node.toml")).unwrap();
    assert_eq!(c.transport_key, dir.path().join("transport.key"));
    let (dir, _) = load(&edit(&text, "pin_file = \"hsm.pin\"\n", ""));
    assert!(matches!(
        NodeConfig::load_for_init(&dir.path().join("node.toml")),
        Err(ConfigError::Invalid {
            source: Invalid::PinSource,
            ..
        })
    ));
}

#[test]
fn cosigners_are_pinned_k_of_n_and_refused_with_what_to_fix() {
    use vaultfleet_audit::CosignerPinError;
    const REQUIRED: &str = "cosigners_required = 1\n";
    const W1: &str = "name = \"witness.example.com/w1\"\n";
    const W1_KEY: &str = "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f";
    const W2_KEY: &str = "9f9e9d9c9b9a999897969594939291908f8e8d8c8b8a89888786858483828180";
    let text = example();
    let (_dir, r) = load(&text);
    let c = r.unwrap();
    assert_eq!(c.vault.cosigners_required, 1);
    assert_eq!(c.vault.cosigners.len(), 2);
    assert_eq!(c.vault.cosigners[1].name, "witness.example.org/w2");
    assert_eq!(c.fleet_verifier().unwrap().cosigners_required(), 1);
    // 2 of 2 is fine too.
    let (_dir, r) = load(&edit(&text, REQUIRED, "cosigners_required = 2\n"));
    assert_eq!(r.unwrap().fleet_verifier().unwrap().cosigners_required(), 2);

    // Both optional: no cosigner, no cosignature needed.
    let start = text.find("# Optional (at most 32)").unwrap();
    let end = text.find("# Optional. Rule:").unwrap();
    let none = edit(&format!("{}{}", &text[..start], &text[end..]), REQUIRED, "");
    let (_dir, r) = load(&none);
    let c = r.unwrap();
    assert_eq!(c.vault.cosigners_required, 0);
    assert!(c.vault.cosigners.is_empty());
    assert_eq!(c.fleet_verifier().unwrap().cosigners_required(), 0);
    // Required with none listed.
    assert!(matches!(
        invalid(&edit(
            &none,
            "\n[vault]\n",
            "\n[vault]\ncosigners_required = 1\n"
        )),
        Invalid::CosignersRequired {
            required: 1,
            count: 0
        }
    ));

    // K above n, or tables that K = 0 would ignore.
    assert!(matches!(
        invalid(&edit(&text, REQUIRED, "cosigners_required = 3\n")),
        Invalid::CosignersRequired {
            required: 3,
            count: 2
        }
    ));
    let e = invalid(&edit(&text, REQUIRED, "cosigners_required = 0\n"));
    assert!(matches!(e, Invalid::CosignersUnused { count: 2 }), "{e:?}");
    assert!(e.to_string().contains("cosigners_required"), "{e}");
    // Names unique and non-empty, keys 64 hex digits.
    assert!(matches!(
        invalid(&edit(&text, "name = \"witness.example.org/w2\"\n", W1)),
        Invalid::DuplicateCosigner { name } if name == "witness.example.com/w1"
    ));
    assert!(matches!(
        invalid(&edit(&text, W1, "name = \"\"\n")),
        Invalid::Empty {
            field: "[[vault.cosigner]] name"
        }
    ));
    let e = invalid(&edit(&text, W1_KEY, "8081"));
    assert!(
        matches!(&e, Invalid::Key { owner, .. } if owner.contains("vault.cosigner")),
        "{e:?}"
    );
    assert!(chain(&e).contains("64 hex digits"), "{}", chain(&e));
    // What the verifier refuses: a name that cannot sign notes, one key for
    // two cosigners, a witness key as a cosigner.
    assert!(matches!(
        invalid(&edit(&text, W1, "name = \"witness w1\"\n")),
        Invalid::Cosigners(CosignerPinError::Name { .. })
    ));
    assert!(matches!(
        invalid(&edit(&text, W2_KEY, W1_KEY)),
        Invalid::Cosigners(CosignerPinError::DuplicateKey { .. })
    ));
    let e = invalid(&edit(
        &text,
        W1_KEY,
        "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
    ));
    assert!(
        matches!(&e, Invalid::Cosigners(CosignerPinError::WitnessKey { witness, .. }) if witness == "witness-1"),
        "{e:?}"
    );
    // At most COSIGNERS_MAX tables.
    let many = (0..=vaultfleet_node::config::COSIGNERS_MAX)
        .map(|i| {
            format!(
                "[[vault.cosigner]]\nname = \"w{i}\"\npublic_key = \"{:064x}\"\n",
                i + 1
            )
        })
        .collect::<String>();
    let end = text.find("# Optional. Rule:").unwrap();
    let too_many = format!("{}{many}\n{}", &text[..start], &text[end..]);
    assert!(matches!(
        invalid(&too_many),
        Invalid::TooMany {
            table: "vault.cosigner",
            count: 33,
            max: 32
        }
    ));
    // Unknown fields in the table are refused by name.
    let (_dir, r) = load(&edit(&text, W1, &format!("{W1}not_before = 0\n")));
    assert!(
        matches!(&r, Err(e @ ConfigError::Parse { .. }) if chain(e).contains("unknown field `not_before`")),
        "{r:?}"
    );
}

/// The example's witness log file line.
const LOG_FILE: &str = "witness_log = \"witness/witness.state\"\n";

#[test]
fn the_witness_log_is_a_file_or_a_served_url_exactly_one_of_them() {
    let text = example();
    // The served log instead of the file (a path prefix is kept).
    for url in [
        "http://127.0.0.1:8740",
        "http://witness.example.com:80/logs/",
    ] {
        let (_dir, r) = load(&edit(
            &text,
            LOG_FILE,
            &format!("witness_log_url = \"{url}\"\n"),
        ));
        let c = r.unwrap();
        assert_eq!(c.vault.witness_log, None);
        assert_eq!(c.vault.witness_log_url.as_deref(), Some(url));
        match c.witness_log_source().unwrap() {
            WitnessLogSource::Url { url: given, base } => {
                assert_eq!(given, url);
                assert_eq!(base.as_string(), url.trim_end_matches('/'));
            }
            other => panic!("the URL expected, got {other:?}"),
        }
    }
    // The file, resolved against the config's folder.
    let (dir, r) = load(&text);
    assert_eq!(
        r.unwrap().witness_log_source().unwrap(),
        WitnessLogSource::File(dir.path().join("witness/witness.state"))
    );
    // Both: refused, naming the two fields.
    let e = invalid(&edit(
        &text,
        LOG_FILE,
        &format!("{LOG_FILE}witness_log_url = \"http://127.0.0.1:8740\"\n"),
    ));
    assert!(matches!(e, Invalid::WitnessLogBoth), "{e:?}");
    assert!(
        e.to_string().contains("witness_log and witness_log_url"),
        "{e}"
    );
    // Neither: refused, naming the two fields.
    let e = invalid(&edit(&text, LOG_FILE, ""));
    assert!(matches!(e, Invalid::NoWitnessLog), "{e:?}");
    assert!(
        e.to_string().contains("witness_log (") && e.to_string().contains("witness_log_url ("),
        "{e}"
    );
}

#[test]
fn a_witness_log_url_that_is_not_http_host_port_is_refused_at_validation() {
    let text = example();
    for bad in [
        "https://witness.example.com:8740",
        "witness.example.com:8740",
        "ftp://witness.example.com:21",
        "http://witness.example.com",
        "http://:8740",
        "http://witness.example.com:0",
        "http://witness.example.com:8740/log?x=1",
        "",
    ] {
        let e = invalid(&edit(
            &text,
            LOG_FILE,
            &format!("witness_log_url = \"{bad}\"\n"),
        ));
        assert!(
            matches!(&e, Invalid::WitnessLogUrl { url, .. } if url == bad),
            "{bad:?}: {e:?}"
        );
        // The cause is kept, nested.
        assert!(chain(&e).contains("http://HOST:PORT"), "{}", chain(&e));
    }
    // A path where the URL belongs is a type error, not a URL.
    let (_dir, r) = load(&edit(&text, LOG_FILE, "witness_log_url = 8740\n"));
    assert!(matches!(r, Err(ConfigError::Parse { .. })), "{r:?}");
}

/// A testbed client file (`client.toml`) as `vaultfleet node testbed` writes it.
const CLIENT: &str =
    "fleet_id = \"testbed\"\ngroup = 1\nnamespace = \"example.vault.fleet_keys.v1\"\n\
witness_key_name = \"witness-1\"\n\
witness_key = \"e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff\"\n\
operator_key = \"c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf\"\n\n\
[[endpoint]]\nid = 1\naddress = \"127.0.0.1:7200\"\n";

const C1_KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101";
const C2_KEY: &str = "0202020202020202020202020202020202020202020202020202020202020202";

/// `CLIENT` with `cosigners_required = k` (if given) and the `cosigners`.
fn client_text(k: Option<usize>, cosigners: &[(&str, &str)]) -> String {
    let mut text = CLIENT.to_string();
    if let Some(k) = k {
        text = text.replacen(
            "operator_key",
            &format!("cosigners_required = {k}\noperator_key"),
            1,
        );
    }
    for (name, key) in cosigners {
        text.push_str(&format!(
            "\n[[cosigner]]\nname = \"{name}\"\npublic_key = \"{key}\"\n"
        ));
    }
    text
}

fn load_client(text: &str) -> (tempfile::TempDir, Result<ClientFile, ClientFileError>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.toml");
    std::fs::write(&path, text).unwrap();
    let r = ClientFile::load(&path);
    (dir, r)
}

fn client_verifier(text: &str) -> Result<vaultfleet_audit::FleetVerifier, ClientFileError> {
    let (dir, r) = load_client(text);
    r.unwrap().verifier(&dir.path().join("client.toml"))
}

#[test]
fn a_client_file_pins_k_of_n_cosigners_and_old_files_still_parse() {
    // An old file: no cosigner, none required.
    assert_eq!(client_verifier(CLIENT).unwrap().cosigners_required(), 0);
    assert_eq!(
        client_verifier(&client_text(Some(0), &[]))
            .unwrap()
            .cosigners_required(),
        0
    );
    // 1 of 2, 2 of 2.
    let two = [("c1.example/w", C1_KEY), ("c2.example/w", C2_KEY)];
    for k in [1, 2] {
        let v = client_verifier(&client_text(Some(k), &two)).unwrap();
        assert_eq!(v.cosigners_required(), k);
    }
    // K above n (none listed, or fewer than K).
    for (k, listed) in [(1, &two[..0]), (3, &two[..])] {
        let e = client_verifier(&client_text(Some(k), listed)).unwrap_err();
        assert!(
            matches!(e, ClientFileError::CosignersRequired { required, count, .. } if required == k && count == listed.len()),
            "{e:?}"
        );
    }
    // Tables that K = 0 would ignore: refused (default 0 too).
    for k in [None, Some(0)] {
        let e = client_verifier(&client_text(k, &two)).unwrap_err();
        assert!(
            matches!(e, ClientFileError::CosignersUnused { count: 2, .. }),
            "{e:?}"
        );
    }
    // A key that is not 64 hex digits, its cause nested.
    let e = client_verifier(&client_text(Some(1), &[("c1.example/w", "0101zz")])).unwrap_err();
    assert!(
        matches!(&e, ClientFileError::CosignerKey { name, .. } if name == "c1.example/w"),
        "{e:?}"
    );
    assert!(chain(&e).contains("64 hex digits"), "{}", chain(&e));
    // What the verifier refuses: one key for two cosigners, the witness's
    // key as a cosigner's, a name that cannot sign notes.
    for cosigners in [
        [("c1.example/w", C1_KEY), ("c2.example/w", C1_KEY)],
        [
            ("c1.example/w", C1_KEY),
            (
                "c2.example/w",
                "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
            ),
        ],
        [("c1.example/w", C1_KEY), ("c2 w", C2_KEY)],
    ] {
        let e = client_verifier(&client_text(Some(1), &cosigners)).unwrap_err();
        assert!(matches!(e, ClientFileError::Cosigners { .. }), "{e:?}");
    }
    // An unknown field in a [[cosigner]] table is refused.
    let (_dir, r) = load_client(&format!(
        "{}not_before = 0\n",
        client_text(Some(1), &two[..1])
    ));
    assert!(matches!(r, Err(ClientFileError::Parse { .. })), "{r:?}");
}

#[test]
fn a_client_file_with_cosigners_round_trips_and_one_without_them_writes_no_new_field() {
    let (_dir, r) = load_client(CLIENT);
    let old = r.unwrap();
    let written = toml::to_string(&old).unwrap();
    assert!(!written.contains("cosigner"), "{written}");
    let mut file = old;
    file.cosigners_required = 1;
    file.cosigners = vec![ClientCosigner {
        name: "c1.example/w".into(),
        public_key: C1_KEY.into(),
    }];
    let (dir, r) = load_client(&toml::to_string(&file).unwrap());
    let back = r.unwrap();
    assert_eq!(back.cosigners_required, 1);
    assert_eq!(back.cosigners.len(), 1);
    assert_eq!(back.cosigners[0].public_key, C1_KEY);
    assert_eq!(
        back.verifier(&dir.path().join("client.toml"))
            .unwrap()
            .cosigners_required(),
        1
    );
}

#[test]
fn streamed_snapshots_is_true_or_false_off_by_default_and_anything_else_is_refused_by_name() {
    let text = example();
    assert!(!load(&text).1.unwrap().streamed_snapshots);
    let on = edit(
        &text,
        "streamed_snapshots = false",
        "streamed_snapshots = true",
    );
    assert!(load(&on).1.unwrap().streamed_snapshots);
    let absent = edit(&text, "streamed_snapshots = false\n", "");
    assert!(
        !load(&absent).1.unwrap().streamed_snapshots,
        "off by default"
    );
    let line = text[..text.find("streamed_snapshots = false").unwrap()]
        .matches('\n')
        .count()
        + 1;
    for bad in ["\"yes\"", "\"true\"", "1", "\"\""] {
        let (_dir, r) = load(&edit(
            &text,
            "streamed_snapshots = false",
            &format!("streamed_snapshots = {bad}"),
        ));
        match r {
            Err(ConfigError::Parse { source, .. }) => {
                let message = source.to_string();
                assert_eq!(source.line(), line, "{message}");
                assert!(
                    message.contains(&format!("streamed_snapshots = {bad} is not a boolean"))
                        && message.contains("use true or false"),
                    "{message}"
                );
            }
            other => panic!("streamed_snapshots = {bad}: expected a parse error, got {other:?}"),
        }
    }
}
