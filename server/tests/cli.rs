//! The `rxtrack` command line: configuration errors name their key, tokens
//! are minted with the configured secret, and `log verify` works offline.

use std::process::Command;

fn rxtrack() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rxtrack"))
}

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("rxtrack.toml");
    std::fs::write(&p, body).expect("write the config");
    p
}

#[test]
fn config_errors_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "listen = \"nowhere\"\n[[tenants]]\nid = \"a\"\nhs256_secret_env = \"X\"\n",
            "`listen`",
        ),
        (
            "[[tenants]]\nid = \"a\"\nhs256_secret_env = \"RXTRACK_TEST_UNSET\"\n",
            "RXTRACK_TEST_UNSET is not set",
        ),
        (
            "[[tenants]]\nid = \"a\"\nhs256_secret_file = \"missing.secret\"\n",
            "tenants[0].hs256_secret_file",
        ),
        ("colour = \"blue\"\n", "unknown field `colour`"),
        (
            "[[tenants]]\nid = \"a\"\nhs256_secret_env = \"X\"\n[limits]\nmax_message_kib = 0\n",
            "limits.max_message_kib",
        ),
        (
            "roads = \"bundled:atlantis\"\n[[tenants]]\nid = \"a\"\nhs256_secret_env = \"X\"\n",
            "`roads`",
        ),
        (
            "[[tenants]]\nid = \"a\"\nhs256_secret_env = \"X\"\ndisplay_name = \"A\\u0007B\"\n",
            "tenants[0].display_name",
        ),
    ];
    for (body, expected) in cases {
        let p = write_config(dir.path(), body);
        let out = rxtrack()
            .args(["serve", "--config"])
            .arg(&p)
            .env("X", "x".repeat(40))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{body}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{body}: {err}");
    }
}

#[test]
fn token_mints_with_the_configured_secret() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acme.secret"), "s".repeat(40)).unwrap();
    let p = write_config(
        dir.path(),
        "[[tenants]]\nid = \"acme\"\nhs256_secret_file = \"acme.secret\"\n",
    );
    let out = rxtrack()
        .args([
            "token", "--tenant", "acme", "--role", "driver", "--sub", "d1", "--device", "phone-7",
            "--ttl", "12h", "--config",
        ])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.trim().split('.').count(), 3);
    // A driver token without a device, an unknown role, a bad ttl: refused.
    for args in [
        vec!["token", "--role", "driver", "--sub", "d1"],
        vec!["token", "--role", "janitor", "--sub", "d1"],
        vec!["token", "--role", "admin", "--sub", "u1", "--ttl", "1y"],
    ] {
        let out = rxtrack()
            .args(&args)
            .arg("--config")
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn log_verify_on_an_empty_folder_is_ok() {
    let dir = tempfile::tempdir().unwrap();
    let out = rxtrack()
        .args(["log", "verify", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["events"], 0);
}

#[test]
fn a_road_extract_that_cannot_be_read_stops_the_start_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("not-a-map.osm.pbf"),
        b"this is not a protobuf",
    )
    .unwrap();
    for file in ["missing.osm.pbf", "not-a-map.osm.pbf"] {
        let p = write_config(
            dir.path(),
            &format!(
                "listen = \"127.0.0.1:0\"\nroads = \"{file}\"\n[[tenants]]\nid = \"a\"\nhs256_secret_env = \"X\"\n"
            ),
        );
        let out = rxtrack()
            .args(["serve", "--config"])
            .arg(&p)
            .env("X", "x".repeat(40))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{file}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("roads") && err.contains(file), "{file}: {err}");
    }
}
