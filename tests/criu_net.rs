//! Network sockets and file locks through the criu component, with unmodified programs
//! from Debian packages (python3, curl, sqlite3; `scripts/install-deps.sh` installs them)
//! started with the library preloaded: checkpointed by `opal-checkpoint` in the middle
//! of their work, killed, restored by `opal-restart`, and their result compared with
//! what an uninterrupted run gives. Every test needs root and CRIU >= 4 (4.1.1 cannot
//! dump an INET socket on current kernels: these tests fail with it); without them it
//! says why on stderr and passes. Servers bind 127.0.0.1 or ::1 on ephemeral ports.

mod common;
use common::*;
use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

/// A program of a Debian package the test command installs.
fn program(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(path.is_file(), "{} is missing: run scripts/install-deps.sh", path.display());
    path
}

/// `program` in the sandbox with the library preloaded and criu selected.
fn preloaded(sb: &Sandbox, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = sb.command(program);
    command.env("LD_PRELOAD", lib_dir().join("libopalcrs.so")).env("OMPI_MCA_crs", "criu");
    command
}

/// SIGKILLs a tree through its process group (`root` leads it), reaps its root (our
/// child) and waits a moment for the others (reaped by init) to leave /proc. One signal
/// to the group, not one per process: a server killed first would close its connections
/// while its client still runs, and the client would end on that.
fn kill_tree(root: &mut Child) {
    let tree = process_tree(root.id());
    // SAFETY: a plain kill of the process group this test started (Sandbox::spawn makes
    // the child a session and group leader).
    unsafe { libc::kill(-(root.id() as i32), libc::SIGKILL) };
    kill_and_reap(root);
    wait_until(Duration::from_secs(10), || {
        tree.iter().all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    });
}

/// Bytes the server sends: a fixed pseudo-random sequence (xorshift), `len` long.
fn payload(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// An HTTP/1.0 server for one download: it sends the file in 16 KiB pieces, 20 ms
/// apart (about 0.8 MB/s, 8 s for 6 MiB), so that a checkpoint lands in the middle of
/// the transfer even on a loaded machine.
/// SO_REUSEADDR as servers set it (python's http.server does): the killed original's
/// connection may leave the port in TIME_WAIT, which blocks the restored listening
/// socket's bind otherwise, as it would block a plain restart of the server.
const DOWNLOAD_SERVER: &str = r#"
import os, socket, sys, time
host, path, port_file = sys.argv[1:4]
listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((host, 0))
listener.listen(1)
with open(port_file + ".tmp", "w") as f:
    f.write(str(listener.getsockname()[1]))
os.rename(port_file + ".tmp", port_file)
conn, _ = listener.accept()
conn.recv(4096)
with open(path, "rb") as f:
    data = f.read()
conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data))
for at in range(0, len(data), 16384):
    conn.sendall(data[at:at + 16384])
    time.sleep(0.02)
conn.close()
"#;

/// A download in one tree: bash starts the server and `curl | sha256sum > sum`.
struct Download {
    shell: Child,
    port: u16,
    expected: String,
}

impl Download {
    fn start(sb: &Sandbox, host: &str, env: &[(&str, &str)]) -> Download {
        let blob = sb.path("blob");
        std::fs::write(&blob, payload(6 << 20)).unwrap();
        std::fs::write(sb.path("server.py"), DOWNLOAD_SERVER).unwrap();
        let url_host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
        let script = format!(
            "{python} server.py {host} blob port &\n\
             while [ ! -s port ]; do sleep 0.05; done\n\
             {curl} -sSfg \"http://{url_host}:$(cat port)/blob\" | sha256sum > sum\n\
             wait\n",
            python = program("python3").display(),
            curl = program("curl").display(),
        );
        let mut command = preloaded(sb, "bash");
        command.arg("-c").arg(script);
        for (name, value) in env {
            command.env(name, value);
        }
        let shell = sb.spawn(command, "tree");
        assert!(wait_until(LONG, || !sb.read("port").is_empty()), "{}", sb.read("tree.out"));
        let port = sb.read("port").trim().parse().unwrap();
        let download = Download { shell, port, expected: sha256(&blob) };
        download.wait_for_progress(sb);
        download
    }

    /// Waits until curl has passed on 1 MiB of the 6 (it receives with recvfrom, which
    /// `rchar` does not count).
    fn wait_for_progress(&self, sb: &Sandbox) {
        let curl_read = || {
            let curl = process_tree(self.shell.id()).into_iter().find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "curl\n")
            });
            let io = curl.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/io")).ok());
            io.and_then(|io| {
                io.lines().find_map(|l| l.strip_prefix("wchar: ")).and_then(|n| n.parse().ok())
            })
            .unwrap_or(0u64)
        };
        assert!(
            wait_until(LONG, || curl_read() >= 1 << 20),
            "no transfer: {}",
            sb.read("tree.out")
        );
        assert!(sb.read("sum").is_empty(), "the download ended before the checkpoint");
    }

    /// The sha256 the pipeline wrote, once it has.
    fn wait_for_sum(&self, sb: &Sandbox) -> String {
        assert!(
            wait_until(LONG, || sb.read("sum").ends_with('\n')),
            "no sum; tree output: {}",
            sb.read("tree.out")
        );
        sb.read("sum").split_whitespace().next().unwrap().to_string()
    }
}

/// Checkpoints a download in the middle, kills the tree, restores it, and checks that
/// the download completes with the bytes the server sent.
fn download_survives_a_restore(name: &str, host: &str) {
    let sb = Sandbox::new(name);
    let mut download = Download::start(&sb, host, &[]);
    let pid = download.shell.id();
    let started = Instant::now();
    let (_, snapshot) = checkpoint_ok(&sb, &[&pid.to_string()]);
    let checkpoint_time = started.elapsed();
    kill_tree(&mut download.shell);
    assert!(
        sb.read("sum").is_empty(),
        "the download ended before the kill: {}",
        sb.read("tree.out")
    );

    let started = Instant::now();
    let (restored, stderr) = restart_fork(&sb, &[snapshot.to_str().unwrap()]);
    let restore_time = started.elapsed();
    for pid in process_tree(restored) {
        sb.adopt(pid);
    }
    eprintln!(
        "{name}: checkpoint {checkpoint_time:?}, restore {restore_time:?} (tree {:?}) {stderr}",
        process_tree(restored)
    );
    assert_eq!(download.wait_for_sum(&sb), download.expected, "{}", sb.read("tree.out"));
}

#[test]
fn a_download_over_ipv4_tcp_completes_after_checkpoint_kill_and_restore() {
    require_criu!();
    download_survives_a_restore("net-download4", "127.0.0.1");
}

#[test]
fn a_download_over_ipv6_tcp_completes_after_checkpoint_kill_and_restore() {
    require_criu!();
    download_survives_a_restore("net-download6", "::1");
}

#[test]
fn with_tcp_established_0_a_connection_is_refused_by_its_addresses() {
    require_criu!();
    let sb = Sandbox::new("net-refused");
    let mut download =
        Download::start(&sb, "127.0.0.1", &[("OMPI_MCA_crs_criu_tcp_established", "0")]);
    let pid = download.shell.id();
    let started = Instant::now();
    let out = sb.checkpoint(&[&pid.to_string()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5), "slow refusal: {:?}", started.elapsed());
    let server = format!("127.0.0.1:{}", download.port);
    assert!(
        stderr.contains(&format!("{server} -> 127.0.0.1:"))
            && stderr.contains(&format!("-> {server} "))
            && stderr.contains("set crs_criu_tcp_established=1"),
        "{stderr}"
    );
    let series = sb.path(&format!("opal_snapshot_{pid}.ckpt"));
    assert!(!series.join("0").exists(), "a refused checkpoint published a snapshot");
    // The program is left alone and finishes its work.
    assert_eq!(download.wait_for_sum(&sb), download.expected);
    assert!(wait_exit(&mut download.shell, LONG).is_some_and(|s| s.success()));
}

/// Listens on TCP over IPv4 and IPv6 and answers UDP over both: each TCP client gets
/// "tcp <what it sent>", each datagram "udp <its text>". The client closes first: the
/// side that closes first keeps the port in TIME_WAIT, and a listening socket without
/// SO_REUSEADDR cannot be bound again (restored) while that lasts.
const ECHO_SERVER: &str = r#"
import os, select, socket, sys
sockets = []
for family, kind, host in [(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1"),
                           (socket.AF_INET6, socket.SOCK_STREAM, "::1"),
                           (socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1"),
                           (socket.AF_INET6, socket.SOCK_DGRAM, "::1")]:
    s = socket.socket(family, kind)
    s.bind((host, 0))
    if kind == socket.SOCK_STREAM:
        s.listen(8)
    sockets.append(s)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(" ".join(str(s.getsockname()[1]) for s in sockets))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    for s in select.select(sockets, [], [])[0]:
        if s.type == socket.SOCK_STREAM:
            conn, _ = s.accept()
            conn.sendall(b"tcp " + conn.recv(100))
            conn.recv(1)
            conn.close()
        else:
            data, peer = s.recvfrom(100)
            s.sendto(b"udp " + data, peer)
"#;

/// Asks every socket of the echo server once; panics naming the one that fails.
fn ask_echo_server(ports: &[u16], word: &str) {
    for (i, host) in ["127.0.0.1", "::1"].iter().enumerate() {
        let addr = std::net::SocketAddr::new(host.parse().unwrap(), ports[i]);
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("tcp {addr}: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(word.as_bytes()).unwrap();
        let mut answer = vec![0u8; 4 + word.len()];
        std::io::Read::read_exact(&mut stream, &mut answer)
            .unwrap_or_else(|e| panic!("tcp {addr}: {e}"));
        assert_eq!(answer, format!("tcp {word}").as_bytes(), "tcp {addr}");
        drop(stream);

        let addr = std::net::SocketAddr::new(host.parse().unwrap(), ports[i + 2]);
        let local = if i == 0 { "127.0.0.1:0" } else { "[::1]:0" };
        let socket = UdpSocket::bind(local).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        socket.send_to(word.as_bytes(), addr).unwrap();
        let mut buf = [0u8; 128];
        let len = socket.recv(&mut buf).unwrap_or_else(|e| panic!("udp {addr}: {e}"));
        assert_eq!(&buf[..len], format!("udp {word}").as_bytes(), "udp {addr}");
    }
}

#[test]
fn listening_tcp_and_udp_sockets_over_ipv4_and_ipv6_answer_after_a_restore() {
    require_criu!();
    let sb = Sandbox::new("net-listen");
    std::fs::write(sb.path("echo.py"), ECHO_SERVER).unwrap();
    let mut command = preloaded(&sb, program("python3"));
    command.arg("echo.py").arg("ports");
    let mut server = sb.spawn(command, "echo");
    assert!(wait_until(LONG, || !sb.read("ports").is_empty()), "{}", sb.read("echo.out"));
    let ports: Vec<u16> = sb.read("ports").split_whitespace().map(|p| p.parse().unwrap()).collect();
    ask_echo_server(&ports, "before");

    let started = Instant::now();
    let (_, snapshot) = checkpoint_ok(&sb, &[&server.id().to_string()]);
    let checkpoint_time = started.elapsed();
    ask_echo_server(&ports, "after-checkpoint");
    kill_and_reap(&mut server);
    let started = Instant::now();
    let (_, stderr) = restart_fork(&sb, &[snapshot.to_str().unwrap()]);
    eprintln!(
        "python3 echo server: checkpoint {checkpoint_time:?}, restore {:?} {stderr}",
        started.elapsed()
    );
    ask_echo_server(&ports, "restored");
}

/// sqlite3 fed through a pipe: a transaction that inserts `rows` rows (enough to spill
/// pages to the database file and its journal) and says "inserted" when done.
fn sqlite_insert(rows: u32) -> String {
    format!(
        "PRAGMA cache_size = 50;\n\
         CREATE TABLE t (n INTEGER PRIMARY KEY, filler BLOB);\n\
         BEGIN;\n\
         WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < {rows})\n\
         INSERT INTO t SELECT n, randomblob(200) FROM c;\n\
         SELECT 'inserted', count(*) FROM t;\n"
    )
}

const SQLITE_COMMIT: &str = "INSERT INTO t (filler) VALUES ('after the restore');\n\
     COMMIT;\n\
     SELECT 'committed', count(*) FROM t;\n\
     PRAGMA integrity_check;\n\
     .quit\n";

#[test]
fn sqlite3_in_the_middle_of_a_transaction_restores_and_commits() {
    require_criu!();
    let sb = Sandbox::new("net-sqlite");
    let sqlite3 = program("sqlite3");
    let rows = 20_000;
    let mut command = preloaded(&sb, &sqlite3);
    command.arg("data.db").stdin(Stdio::piped());
    let mut app = sb.spawn(command, "sqlite");
    let mut input = app.stdin.take().unwrap();
    input.write_all(sqlite_insert(rows).as_bytes()).unwrap();
    let inserted = format!("inserted|{rows}\n");
    assert!(
        wait_until(LONG, || sb.read("sqlite.out").contains(&inserted)),
        "{}",
        sb.read("sqlite.out")
    );
    assert!(sb.path("data.db-journal").exists(), "no transaction in progress");

    let started = Instant::now();
    let (_, snapshot) = checkpoint_ok(&sb, &[&app.id().to_string()]);
    let checkpoint_time = started.elapsed();
    kill_and_reap(&mut app);
    drop(input);

    // The restored sqlite3 reads opal-restart's stdin in place of the pipe it had.
    let (out_file, err_file) = (sb.path("restart.stdout"), sb.path("restart.stderr"));
    let started = Instant::now();
    let mut restart = sb
        .command(restart_tool())
        .args(["--fork", snapshot.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let mut restored_input = restart.stdin.take().unwrap();
    let status = wait_exit(&mut restart, LONG).expect("opal-restart --fork did not return");
    let restore_time = started.elapsed();
    assert!(status.success(), "{status:?}: {}", sb.read("restart.stderr"));
    let pid: u32 = sb.read("restart.stdout").trim().parse().unwrap();
    sb.adopt(pid);
    eprintln!("sqlite3: checkpoint {checkpoint_time:?}, restore {restore_time:?}");
    restored_input.write_all(SQLITE_COMMIT.as_bytes()).unwrap();
    drop(restored_input);
    let committed = format!("committed|{}\nok\n", rows + 1);
    assert!(
        wait_until(LONG, || sb.read("sqlite.out").contains(&committed)),
        "{}",
        sb.read("sqlite.out")
    );
    assert!(wait_until(LONG, || !alive(pid)), "sqlite3 did not quit");

    // A fresh sqlite3 (no library) sees the committed database.
    let out = sb
        .command(&sqlite3)
        .args(["data.db", "SELECT count(*) FROM t; PRAGMA integrity_check;"])
        .output()
        .unwrap();
    assert_eq!(text(&out).0, format!("{}\nok\n", rows + 1), "{:?}", text(&out));
}
