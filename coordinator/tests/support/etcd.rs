//! A real, single-member etcd for tests: started from Debian's `etcd-server`
//! binary on free loopback ports with a temporary data dir, stopped (killed)
//! and restarted on the same ports and data, and always killed on drop, even
//! when the test panics.
//!
//! It serves clients over TLS only and demands a client certificate
//! (`--client-cert-auth`), as a deployment does: a throwaway CA made at
//! start signs its server certificate (for 127.0.0.1, localhost and the
//! addresses of [`EtcdServer::start_also_on`]) and one client certificate,
//! which [`EtcdServer::tls`] and [`EtcdServer::tls_flags`] hand to clients.
//!
//! Blocking: call it from a multi-threaded tokio test (or before the runtime
//! starts); `start` and `restart` wait until etcd answers `/health` (on a
//! plain-HTTP metrics port, which needs no client certificate).
//!
//! The binary is `$TESSERA_ETCD_BIN` if set, else `etcd` on `PATH`, else
//! `/usr/bin/etcd` or `/usr/local/bin/etcd`. When none exists, `start`
//! panics telling to run `scripts/test.sh`, which installs it: a test that
//! needs etcd fails rather than passes without it.

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tessera_coordinator::EtcdTls;

/// How long etcd may take to answer `/health` after a start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const MEMBER_NAME: &str = "tessera-test";

pub struct EtcdServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// Plain HTTP `/health` and `/metrics`.
    metrics_port: u16,
    child: Option<Child>,
    starts: u32,
    /// Further addresses the client port listens on (besides 127.0.0.1).
    also_on: Vec<IpAddr>,
}

impl EtcdServer {
    /// Starts a fresh etcd and waits until it answers. Panics (with the tail
    /// of etcd's log) if it does not.
    pub fn start() -> EtcdServer {
        EtcdServer::start_also_on(&[])
    }

    /// Like [`EtcdServer::start`], with the client port also listening on
    /// `ips` (addresses of this machine, e.g. the host end of a veth pair a
    /// test created, so that a process in a network namespace can reach
    /// etcd).
    pub fn start_also_on(ips: &[IpAddr]) -> EtcdServer {
        let bin = find_etcd().unwrap_or_else(|looked| {
            panic!(
                "the etcd server binary is missing (looked at {looked}). Run scripts/test.sh, \
                 which installs it (Debian package etcd-server), or `apt-get install \
                 etcd-server`, or point TESSERA_ETCD_BIN at an etcd binary."
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("tessera-etcd-")
            .tempdir()
            .expect("create a temp dir for etcd");
        let [client_port, peer_port, metrics_port] = free_ports();
        let sans: Vec<String> = ["localhost".to_string(), "127.0.0.1".to_string()]
            .into_iter()
            .chain(ips.iter().map(|ip| ip.to_string()))
            .collect();
        write_pki(&dir.path().join("tls"), &sans);
        let mut server = EtcdServer {
            bin,
            dir,
            client_port,
            peer_port,
            metrics_port,
            child: None,
            starts: 0,
            also_on: ips.to_vec(),
        };
        server.spawn();
        server
    }

    /// The client URL, `https://127.0.0.1:<port>`.
    pub fn client_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    /// The client URL on one of the extra addresses of
    /// [`EtcdServer::start_also_on`].
    pub fn client_url_on(&self, ip: IpAddr) -> String {
        format!("https://{}", SocketAddr::new(ip, self.client_port))
    }

    /// What a client shows this etcd: the CA that signed its certificate,
    /// and a client certificate that CA signed.
    pub fn tls(&self) -> EtcdTls {
        let tls = self.dir.path().join("tls");
        EtcdTls::new(
            tls.join("ca.pem"),
            tls.join("client.pem"),
            tls.join("client-key.pem"),
        )
    }

    /// `--etcd-ca FILE --etcd-cert FILE --etcd-key FILE`: what a `tessera`
    /// process needs besides `--etcd URL` to reach this etcd.
    pub fn tls_flags(&self) -> Vec<String> {
        tls_flags(&self.tls())
    }

    /// `--etcd URL` and [`EtcdServer::tls_flags`].
    pub fn client_flags(&self, url: &str) -> Vec<String> {
        let mut flags = vec!["--etcd".to_string(), url.to_string()];
        flags.extend(self.tls_flags());
        flags
    }

    /// Another CA (made once, beside this etcd's files) and a client
    /// certificate it signed: a client this etcd must refuse, and a CA
    /// that must not trust this etcd.
    pub fn foreign_pki(&self) -> EtcdTls {
        let dir = self.dir.path().join("foreign-tls");
        if !dir.join("ca.pem").exists() {
            write_pki(&dir, &["localhost".into(), "127.0.0.1".into()]);
        }
        EtcdTls::new(
            dir.join("ca.pem"),
            dir.join("client.pem"),
            dir.join("client-key.pem"),
        )
    }

    /// A client certificate with Common Name `cn`, signed by this etcd's
    /// CA (made once per name, beside this etcd's files): with etcd's auth
    /// on, the client is etcd user `cn` (`root`, `tessera-router`, ...).
    pub fn client_tls_for(&self, cn: &str) -> EtcdTls {
        let tls = self.dir.path().join("tls");
        let dir = tls.join("users").join(cn);
        if !dir.join("client.pem").exists() {
            issue_client(&tls, cn, &dir);
        }
        EtcdTls::new(
            tls.join("ca.pem"),
            dir.join("client.pem"),
            dir.join("client-key.pem"),
        )
    }

    /// The client URL as the endpoint list `EtcdStore::connect` takes.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.client_url()]
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills etcd (SIGKILL, like a crash or a lost machine) and waits until
    /// it is gone. The data dir and ports stay for [`EtcdServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data dir (stopping it first
    /// if it runs) and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The logs of every start so far, concatenated.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for n in 1..=self.starts {
            let path = self.log_path(n);
            all.push_str(&format!("--- {}\n", path.display()));
            all.push_str(&fs::read_to_string(&path).unwrap_or_default());
        }
        all
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("etcd-{start}.log"))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = File::create(self.log_path(self.starts)).expect("create the etcd log");
        let client = self.client_url();
        let listen: Vec<String> = std::iter::once(client.clone())
            .chain(self.also_on.iter().map(|ip| self.client_url_on(*ip)))
            .collect();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let tls = self.dir.path().join("tls");
        let mut cmd = Command::new(&self.bin);
        // etcd also reads its flags from ETCD_* variables and refuses a flag
        // given both ways: only the flags below count.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(&name);
            }
        }
        // etcd 3.4 runs on arm64 (the Orange Pi boards) only when told to.
        if std::env::consts::ARCH != "x86_64" {
            let arch = match std::env::consts::ARCH {
                "aarch64" => "arm64",
                other => other,
            };
            cmd.env("ETCD_UNSUPPORTED_ARCH", arch);
        }
        cmd.arg("--name")
            .arg(MEMBER_NAME)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(listen.join(","))
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("{MEMBER_NAME}={peer}"))
            .arg("--initial-cluster-token")
            .arg("tessera-test")
            // Clients: TLS, and only with a certificate our CA signed.
            .arg("--cert-file")
            .arg(tls.join("server.pem"))
            .arg("--key-file")
            .arg(tls.join("server-key.pem"))
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(tls.join("ca.pem"))
            // `/health` without a client certificate, for `wait_ready`.
            .arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", self.metrics_port))
            .arg("--logger")
            .arg("zap")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "etcd exited during startup ({status}):\n{}",
                        self.log_tail()
                    );
                }
            }
            if healthy(self.metrics_port) {
                return;
            }
            if start.elapsed() > READY_TIMEOUT {
                let tail = self.log_tail();
                self.stop();
                panic!("etcd did not become healthy within {READY_TIMEOUT:?}:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = self.logs();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `--etcd-ca FILE --etcd-cert FILE --etcd-key FILE` for `tls`.
pub fn tls_flags(tls: &EtcdTls) -> Vec<String> {
    let client = tls.client.as_ref().expect("a client certificate");
    [
        ("--etcd-ca", &tls.ca),
        ("--etcd-cert", &client.cert),
        ("--etcd-key", &client.key),
    ]
    .into_iter()
    .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
    .collect()
}

/// Asks etcd's `/health` endpoint (HTTP/1.1 on the metrics port); true
/// once the member has a leader and serves requests.
fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") && answer.contains("\"health\":\"true\"")
}

/// Distinct free loopback ports: bound at once, then released.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local address").port())
}

/// A throwaway PKI in `dir`: `ca.pem` (and its key), `server.pem` and
/// `server-key.pem` for `names` (IP addresses or DNS names; usable as a
/// server and, as etcd's gateway uses it, a client), and `client.pem` and
/// `client-key.pem` for a client.
fn write_pki(dir: &Path, names: &[String]) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    fs::create_dir_all(dir).expect("create the TLS dir");
    let ca_params = || {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        p.distinguished_name
            .push(DnType::CommonName, "tessera test etcd CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p
    };
    let ca_key = KeyPair::generate().expect("a CA key");
    let ca = ca_params().self_signed(&ca_key).expect("self-sign the CA");
    let issuer = Issuer::new(ca_params(), &ca_key);
    let write = |name: &str, pem: String| {
        fs::write(dir.join(name), pem).unwrap_or_else(|e| panic!("write {name}: {e}"))
    };
    write("ca.pem", ca.pem());
    write("ca-key.pem", ca_key.serialize_pem());
    let issue = |cn: &str, names: &[String], usages: Vec<ExtendedKeyUsagePurpose>, file: &str| {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(names.to_vec()).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = usages;
        let cert = params.signed_by(&key, &issuer).expect("sign a certificate");
        write(&format!("{file}.pem"), cert.pem());
        write(&format!("{file}-key.pem"), key.serialize_pem());
    };
    issue(
        "etcd",
        names,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        "server",
    );
    issue(
        "tessera test client",
        &[],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        "client",
    );
}

/// Writes `client.pem` and `client-key.pem` with Common Name `cn` into
/// `out`, signed by the CA of [`write_pki`] in `tls`.
fn issue_client(tls: &Path, cn: &str, out: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    fs::create_dir_all(out).expect("create the client certificate's dir");
    let ca_pem = fs::read_to_string(tls.join("ca-key.pem")).expect("read the test CA's key");
    let ca_key = KeyPair::from_pem(&ca_pem).expect("the test CA's key");
    // The CA's parameters as `write_pki` made them: the issuer's name and key.
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.distinguished_name
        .push(DnType::CommonName, "tessera test etcd CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("certificate parameters");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).expect("sign a certificate");
    fs::write(out.join("client.pem"), cert.pem()).expect("write client.pem");
    fs::write(out.join("client-key.pem"), key.serialize_pem()).expect("write client-key.pem");
}

/// The etcd binary, or where it was looked for.
fn find_etcd() -> Result<PathBuf, String> {
    let mut looked = Vec::new();
    if let Some(bin) = std::env::var_os("TESSERA_ETCD_BIN") {
        let bin = PathBuf::from(bin);
        if is_file(&bin) {
            return Ok(bin);
        }
        looked.push(format!("$TESSERA_ETCD_BIN={}", bin.display()));
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(bin) = std::env::split_paths(&path)
            .map(|dir| dir.join("etcd"))
            .find(|bin| is_file(bin))
        {
            return Ok(bin);
        }
    }
    looked.push("`etcd` on PATH".into());
    for fixed in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if is_file(Path::new(fixed)) {
            return Ok(PathBuf::from(fixed));
        }
        looked.push(fixed.into());
    }
    Err(looked.join(", "))
}

fn is_file(path: &Path) -> bool {
    path.metadata().is_ok_and(|m| m.is_file())
}
