use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/rxtrack/rxtrack.toml"), |k| {
        (k == "ACME_JWT").then(|| "s".repeat(40))
    })
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

const TENANT: &str = "[[tenants]]\nid = \"acme\"\nhs256_secret_env = \"ACME_JWT\"\n";

#[test]
fn road_eta_keys_are_checked() {
    for (line, key) in [
        ("road_speed_factor = 9", "eta.road_speed_factor"),
        ("replan_seconds = 1", "eta.replan_seconds"),
        ("off_route_m = -1", "eta.off_route_m"),
    ] {
        assert!(
            err(&format!("{TENANT}[eta]\n{line}\n")).contains(key),
            "{line}"
        );
    }
    let c = parse(&format!(
        "{TENANT}[eta]\nroad_speed_factor = 0.7\nreplan_seconds = 120\noff_route_m = 80\n"
    ))
    .unwrap();
    assert!((c.eta.road_speed_factor - 0.7).abs() < 1e-9);
    assert_eq!(c.eta.replan_ms, 120_000);
    assert!((c.eta.off_route_m - 80.0).abs() < 1e-9);
}

#[test]
fn roads_and_display_names() {
    let c = parse(&format!("roads = \"bundled:kotka\"\n{TENANT}")).unwrap();
    assert_eq!(c.roads, Some(RoadsSource::Bundled("kotka")));
    let c = parse(&format!("roads = \"maps/city.osm.pbf\"\n{TENANT}")).unwrap();
    assert_eq!(
        c.roads,
        Some(RoadsSource::File("/etc/rxtrack/maps/city.osm.pbf".into()))
    );
    assert!(parse(TENANT).unwrap().roads.is_none());
    for bad in ["\"bundled:\"", "\"\"", "\"bundled:../etc\""] {
        assert!(
            err(&format!("roads = {bad}\n{TENANT}")).contains("`roads`"),
            "{bad}"
        );
    }
    let named = parse(&format!("{TENANT}display_name = \" Apteekki Kallio \"\n")).unwrap();
    assert_eq!(
        named.tenants[0].display_name.as_deref(),
        Some("Apteekki Kallio")
    );
    let long = "x".repeat(MAX_DISPLAY_NAME_CHARS + 1);
    for bad in ["\"\"", "\"  \"", "\"a\\nb\"", &format!("\"{long}\"")] {
        assert!(
            err(&format!("{TENANT}display_name = {bad}\n")).contains("tenants[0].display_name"),
            "{bad}"
        );
    }
}

#[test]
fn a_minimal_config_parses_with_defaults() {
    let c = parse(TENANT).unwrap();
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.data_dir, Path::new("/etc/rxtrack/rxtrack-data"));
    assert_eq!(c.tenants[0].id.as_str(), "acme");
    assert_eq!(c.limits.max_message_bytes, 192 * 1024);
}

#[test]
fn errors_name_the_key() {
    assert!(err(&format!("listen = \"nowhere\"\n{TENANT}")).contains("`listen`"));
    assert!(err(&format!("public_url = \"ftp://x\"\n{TENANT}")).contains("`public_url`"));
    assert!(err("").contains("`tenants`"));
    assert!(err("lisen = \"127.0.0.1:1\"").contains("lisen"));
    assert!(
        err(&format!(
            "{TENANT}[[tenants]]\nid = \"acme\"\nhs256_secret_env = \"ACME_JWT\"\n"
        ))
        .contains("listed twice")
    );
    assert!(err("[[tenants]]\nid = \"acme\"\n").contains("has no key"));
    assert!(
        err("[[tenants]]\nid = \"a b\"\nhs256_secret_env = \"ACME_JWT\"\n")
            .contains("tenants[0].id")
    );
    assert!(
        err("[[tenants]]\nid = \"acme\"\nhs256_secret_env = \"MISSING\"\n")
            .contains("MISSING is not set")
    );
    assert!(
        err("[[tenants]]\nid = \"acme\"\ned25519_public_keys = [\"AAAA\"]\n")
            .contains("ed25519_public_keys[0]")
    );
    assert!(
        err(&format!("{TENANT}[limits]\nmax_message_kib = 100000\n"))
            .contains("limits.max_message_kib")
    );
    assert!(
        err(&format!("{TENANT}[limits]\npings_per_second = -1\n"))
            .contains("limits.pings_per_second")
    );
    assert!(err(&format!("{TENANT}[eta]\ncircuity = 0.5\n")).contains("eta.circuity"));
    assert!(
        err(&format!(
            "{TENANT}[eta]\nmin_speed_kmh = 90\nmax_speed_kmh = 50\n"
        ))
        .contains("eta.min_speed_kmh")
    );
    assert!(err(&format!("{TENANT}[eta]\nwindow_minutes = 0\n")).contains("eta.window_minutes"));
    assert!(err(&format!("{TENANT}[eta]\nwarp = 9\n")).contains("warp"));
    let c = parse(&format!(
        "{TENANT}[eta]\ncircuity = 1.2\nwindow_minutes = 10\nmax_speed_kmh = 72\n"
    ))
    .unwrap();
    assert!(
        (c.eta.circuity - 1.2).abs() < 1e-9
            && c.eta.round_ms == 600_000
            && (c.eta.max_speed_mps - 20.0).abs() < 1e-9
    );
    assert!(err(&format!("{TENANT}[limits]\nheartbeat_ms = 1\n")).contains("limits.heartbeat_ms"));
    assert!(err(&format!("{TENANT}[limits]\nlink_grace_s = -1\n")).contains("limits.link_grace_s"));
    assert!(
        err(&format!("{TENANT}[limits]\nlink_lookup_burst = 0\n"))
            .contains("limits.link_lookup_burst")
    );
    assert!(
        err(&format!(
            "{TENANT}[limits]\nheader_timeout_ms = 999999999\n"
        ))
        .contains("limits.header_timeout_ms")
    );
    // [redis] names one Redis or a cluster's seed nodes, not both.
    assert!(err(&format!("{TENANT}[redis]\nurl = \"http://127.0.0.1\"\n")).contains("`redis.url`"));
    assert!(
        err(&format!(
            "{TENANT}[redis]\ncluster = [\"redis://h1:7000\", \"h2:7001\"]\n"
        ))
        .contains("`redis.cluster`")
    );
    assert!(err(&format!("{TENANT}[redis]\ncluster = []\n")).contains("`redis.cluster`"));
    assert!(
        err(&format!(
            "{TENANT}[redis]\nurl = \"redis://a:1\"\ncluster = [\"redis://h1:7000\"]\n"
        ))
        .contains("not both")
    );
    assert!(err(&format!("{TENANT}[redis]\n")).contains("`redis`"));
    assert!(err("listen = 5").contains("rxtrack.toml"));
    assert!(
        err(&format!(
            "map_tile_url = \"ftp://x/{{z}}/{{x}}/{{y}}\"\n{TENANT}"
        ))
        .contains("map_tile_url")
    );
    assert!(
        err(&format!(
            "map_tile_url = \"https://t.example/a.png\"\n{TENANT}"
        ))
        .contains("{z}")
    );
    assert!(
        err(&format!(
            "map_tile_url = \"https://t.example/{{z}}/{{x}}/{{y}}.png?a=<b>\"\n{TENANT}"
        ))
        .contains("plain URL")
    );
    let c = parse(&format!(
        "map_tile_url = \"https://tile.example.org:8443/{{z}}/{{x}}/{{y}}.png\"\n{TENANT}"
    ))
    .unwrap();
    assert_eq!(c.map_tiles.unwrap().origin, "https://tile.example.org:8443");
}

#[test]
fn short_secrets_are_refused() {
    let e = Config::parse(
        "[[tenants]]\nid = \"acme\"\nhs256_secret_env = \"S\"\n",
        Path::new("x.toml"),
        |_| Some("short".into()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("at least 32 bytes"), "{e}");
}

#[test]
fn demo_creates_its_secret_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = Config::demo(dir.path()).unwrap();
    let b = Config::demo(dir.path()).unwrap();
    assert_eq!(a.tenants[0].hs256_secret, b.tenants[0].hs256_secret);
    assert_eq!(a.tenants[0].hs256_secret.as_ref().unwrap().len(), 64);
}

#[test]
fn the_postgres_log_is_named_by_a_url_that_never_prints() {
    let base = "[[tenants]]\nid = \"acme\"\nhs256_secret_env = \"S\"\n";
    let env = |k: &str| match k {
        "S" => Some("0123456789abcdef0123456789abcdef".to_owned()),
        "PG" => Some("postgres://app:hunter2@db:5432/rxtrack".to_owned()),
        _ => None,
    };
    let at = Path::new("/etc/rxtrack/rxtrack.toml");
    let c = Config::parse(
        &format!("{base}[postgres]\nurl = \"postgres://app:hunter2@db/rxtrack\"\n"),
        at,
        env,
    )
    .unwrap();
    assert_eq!(
        c.postgres.as_ref().unwrap().expose(),
        "postgres://app:hunter2@db/rxtrack"
    );
    assert!(
        !format!("{c:?}").contains("hunter2"),
        "the password printed"
    );
    let c = Config::parse(&format!("{base}[postgres]\nurl_env = \"PG\"\n"), at, env).unwrap();
    assert!(c.postgres.is_some());
    for (bad, why) in [
        ("[postgres]\n", "give url or url_env"),
        (
            "[postgres]\nurl = \"mysql://x\"\n",
            "must start with postgres://",
        ),
        ("[postgres]\nurl_env = \"NOPE\"\n", "NOPE is not set"),
        (
            "[postgres]\nurl = \"postgres://x\"\nurl_env = \"PG\"\n",
            "one of them",
        ),
    ] {
        let e = Config::parse(&format!("{base}{bad}"), at, env)
            .unwrap_err()
            .to_string();
        assert!(e.contains(why) && e.contains("postgres"), "{bad}: {e}");
    }
}
