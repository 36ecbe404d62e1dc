//! A PostgreSQL of the test's own: `initdb` and `pg_ctl` from Debian's
//! `postgresql` package, in a temporary folder, on a free loopback port;
//! stopped when dropped. Never the instance a machine runs on 5432.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The role the servers connect as: it may insert and read, nothing more.
pub const APP_ROLE: &str = "rxtrack_app";
/// The database the tests use.
pub const DATABASE: &str = "rxtrack";

/// A running PostgreSQL.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// Root cannot run the server: it then runs as the `postgres` user.
    run_as_postgres_user: bool,
}

fn bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return p;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Postgres {
    /// Initialises and starts a fresh cluster, then creates the database,
    /// the application role, and the schema (`rxtrack migrate`).
    ///
    /// # Panics
    /// When any step fails (with what it printed).
    pub fn start() -> Self {
        let bin = bin_dir();
        let run_as_postgres_user = is_root();
        let dir = tempfile::Builder::new()
            .prefix("rxtrack-pg-")
            .tempdir()
            .expect("temp dir");
        if run_as_postgres_user {
            check(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path())
                    .output(),
                "chown",
            );
        }
        let pg = Self {
            dir,
            bin,
            port: free_port(),
            run_as_postgres_user,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            pg.port,
            pg.dir.path().display()
        );
        let log = pg.dir.path().join("server.log").display().to_string();
        pg.run(
            "pg_ctl",
            &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"],
        );
        pg.sql("postgres", &format!("CREATE ROLE {APP_ROLE} LOGIN"));
        pg.sql("postgres", &format!("CREATE DATABASE {DATABASE}"));
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.run_as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        check(self.command(program).args(args).output(), program)
    }

    /// The URL of a role on a database.
    #[must_use]
    pub fn url(&self, role: &str, db: &str) -> String {
        format!("postgres://{role}@127.0.0.1:{}/{db}", self.port)
    }

    /// The servers' URL: the application role on the test database.
    #[must_use]
    pub fn app_url(&self) -> String {
        self.url(APP_ROLE, DATABASE)
    }

    /// The owner's URL (migrations, verifying every chain).
    #[must_use]
    pub fn owner_url(&self) -> String {
        self.url("postgres", DATABASE)
    }

    /// Runs SQL with psql as the superuser on `db`; returns its output.
    ///
    /// # Panics
    /// When psql fails.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = self.psql("postgres", db, sql);
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs SQL with psql as `role` (tuples only, unaligned; stops at the
    /// first error); returns the whole output.
    pub fn psql(&self, role: &str, db: &str, sql: &str) -> Output {
        Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", role, "-d", db, "-c", sql])
            .output()
            .expect("run psql")
    }

    /// Creates the schema as the owner and lets [`APP_ROLE`] insert and
    /// read (`rxtrack migrate`).
    ///
    /// # Panics
    /// When the migration fails.
    pub fn migrate(&self) {
        let out = Command::new(crate::binary())
            .args([
                "migrate",
                "--postgres",
                &self.owner_url(),
                "--grant-to",
                APP_ROLE,
            ])
            .output()
            .expect("run rxtrack migrate");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server at once (as a crash would).
    pub fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }

    /// Starts it again after [`Self::stop`].
    pub fn restart(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        );
    }

    /// The folder it runs in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn check(out: std::io::Result<Output>, what: &str) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
