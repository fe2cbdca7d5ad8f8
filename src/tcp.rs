//! The TCP connections of a process tree, read from /proc: before a criu dump (CRIU
//! refuses a connected socket without `tcp_established` and says only "Connected TCP
//! socket", and the network lock it needs costs time only when there is a connection to
//! lock) and before a job's node image is taken (a connection off the node cannot come
//! back on another node).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// /proc/net/tcp states (include/net/tcp_states.h) that CRIU dumps only as a connection:
/// ESTABLISHED, SYN_SENT, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING.
const CONNECTED_STATES: [u8; 7] = [0x01, 0x02, 0x04, 0x05, 0x08, 0x09, 0x0b];

/// One connected TCP socket of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub pid: i32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} (process {})", self.local, self.remote, self.pid)
    }
}

/// The connected TCP sockets (IPv4 and IPv6) that `root` and its descendants hold, in
/// the network namespace of `root`. What cannot be read (a process that ended
/// meanwhile) is left out.
pub fn connections(root: i32) -> Vec<Connection> {
    // The tables list every TCP socket of the namespace (slow to read on a busy host),
    // so they are read only when the tree holds a TCP socket at all.
    let sockets: Vec<(i32, u64)> = tree(root)
        .into_iter()
        .flat_map(|pid| tcp_socket_inodes(pid).into_iter().map(move |inode| (pid, inode)))
        .collect();
    if sockets.is_empty() {
        return Vec::new();
    }
    let table: Vec<(u64, SocketAddr, SocketAddr)> = ["tcp", "tcp6"]
        .iter()
        .filter_map(|name| std::fs::read_to_string(format!("/proc/{root}/net/{name}")).ok())
        .flat_map(|text| text.lines().skip(1).filter_map(parse_line).collect::<Vec<_>>())
        .collect();
    sockets
        .into_iter()
        .filter_map(|(pid, inode)| {
            let (_, local, remote) = table.iter().find(|(ino, ..)| *ino == inode)?;
            Some(Connection { pid, local: *local, remote: *remote })
        })
        .collect()
}

/// `root` and its descendants, parents first.
fn tree(root: i32) -> Vec<i32> {
    let mut pids = vec![root];
    let mut next = 0;
    while next < pids.len() {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", pids[next]));
        for task in tasks.into_iter().flatten().flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            pids.extend(children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
        next += 1;
    }
    pids
}

/// The inodes of the TCP sockets (IPv4 and IPv6) process `pid` has open.
fn tcp_socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    fds.flatten()
        .filter_map(|fd| {
            let inode = socket_inode(&std::fs::read_link(fd.path()).ok()?)?;
            is_tcp(&fd.path()).then_some(inode)
        })
        .collect()
}

/// Whether the socket behind the descriptor link `fd` is TCP: its protocol name, which
/// the socket file system gives as the extended attribute `system.sockprotoname`.
fn is_tcp(fd: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(fd.as_os_str().as_encoded_bytes()) else { return false };
    let mut name = [0u8; 32];
    // SAFETY: a NUL-terminated path, a name literal, and a buffer of the given length.
    let len = unsafe {
        libc::getxattr(
            path.as_ptr(),
            b"system.sockprotoname\0".as_ptr().cast(),
            name.as_mut_ptr().cast(),
            name.len(),
        )
    };
    // A name of another length, or unreadable: the tables decide, as before.
    let name = usize::try_from(len).ok().and_then(|len| name.get(..len));
    name.map_or(true, |name| matches!(name.strip_suffix(b"\0").unwrap_or(name), b"TCP" | b"TCPv6"))
}

fn socket_inode(target: &Path) -> Option<u64> {
    target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// A /proc/net/tcp{,6} line of a connected socket: its inode, local and remote address.
/// Columns: sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid
/// timeout inode ...
fn parse_line(line: &str) -> Option<(u64, SocketAddr, SocketAddr)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    if !CONNECTED_STATES.contains(&state) {
        return None;
    }
    let inode = fields.get(9)?.parse().ok()?;
    Some((inode, parse_address(fields.get(1)?)?, parse_address(fields.get(2)?)?))
}

/// `ADDR:PORT` in hex: the address as the kernel's 32-bit words in host byte order (one
/// for IPv4, four for IPv6), the port as a number.
fn parse_address(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in address.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn parses_proc_net_tcp_lines() {
        // 127.0.0.1:40000 -> 127.0.0.1:42418, established (x86: words in little endian).
        let v4 = "   0: 0100007F:9C40 0100007F:A5B2 01 00000000:00000000 00:00000000 00000000     0        0 166929 1 0000000000000000 20 4 30 10 -1";
        let (inode, local, remote) = parse_line(v4).unwrap();
        assert_eq!(inode, 166929);
        assert_eq!(local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(remote, "127.0.0.1:42418".parse().unwrap());
        // [::1]:8080 listening: not a connection.
        let listening = "   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_line(listening), None);
        let v6 = listening.replace(" 0A ", " 08 ");
        let (_, local, _) = parse_line(&v6).unwrap();
        assert_eq!(local, "[::1]:8080".parse().unwrap());
    }

    #[test]
    fn only_tcp_sockets_are_looked_up() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (unix, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode_of = |fd: i32| {
            socket_inode(&std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap()).unwrap()
        };
        use std::os::fd::AsRawFd;
        let found = tcp_socket_inodes(std::process::id() as i32);
        assert!(found.contains(&inode_of(listener.as_raw_fd())), "{found:?}");
        assert!(!found.contains(&inode_of(unix.as_raw_fd())), "{found:?}");
        assert!(!found.contains(&inode_of(udp.as_raw_fd())), "{found:?}");
    }

    #[test]
    fn finds_a_connection_of_this_process_and_not_a_listening_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let own = std::process::id() as i32;
        let before = connections(own);
        assert!(before.iter().all(|c| c.local != listener.local_addr().unwrap()), "{before:?}");
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let found = connections(own);
        for stream in [&client, &server] {
            let (local, remote) = (stream.local_addr().unwrap(), stream.peer_addr().unwrap());
            assert!(
                found.contains(&Connection { pid: own, local, remote }),
                "{local} -> {remote} not in {found:?}"
            );
        }
    }
}
