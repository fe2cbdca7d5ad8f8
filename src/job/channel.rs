//! The authenticated channel between a job's launcher and its node agents (jobs across
//! nodes): TCP on the nodes' addresses, and on every connection a challenge-response
//! with a random per-job secret (HMAC-SHA-256) before anything else is read or done.
//! The launcher hands the secret to its agents through `srun`'s environment, never on
//! a command line. Both sides prove that they hold it (each answers the other's
//! nonce), so an agent never serves a stranger either.
//!
//! After the handshake every message is a frame: its length (4 bytes, big-endian), its
//! JSON, and HMAC-SHA-256 under a key of this connection alone (from the secret and both
//! nonces) over the direction, the message's sequence number in that direction, the
//! length and the JSON. The tag is checked before the JSON is parsed: a forged,
//! replayed, reordered, truncated or foreign frame ends the connection, with a warning
//! naming the peer. Nothing is encrypted.

use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// The environment variable that carries the job's secret (hex) to the agents.
pub(crate) const SECRET_VARIABLE: &str = "OPALCRS_JOB_SECRET";
/// How long each side has for its part of the handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
const SECRET_BYTES: usize = 32;
/// The longest line of the handshake (hex nonce, space, hex MAC).
const HANDSHAKE_LINE: u64 = 200;
/// The longest message: a longer length is refused before anything is read into memory.
const MAX_MESSAGE: usize = 1 << 20;
const TAG_BYTES: usize = 32;

/// A random job secret, hex.
pub(crate) fn new_secret() -> std::io::Result<String> {
    random(SECRET_BYTES).map(|bytes| hex(&bytes))
}

fn random(len: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        // SAFETY: writes at most `len - filled` bytes into the buffer's free part.
        let got = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), len - filled, 0) };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        filled += got as usize;
    }
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The MAC of `label`, then each part, under `secret`.
fn mac(secret: &str, label: &str, parts: &[&str]) -> String {
    let mut message = label.as_bytes().to_vec();
    for part in parts {
        message.push(b' ');
        message.extend_from_slice(part.as_bytes());
    }
    hex(&hmac_sha256(secret.as_bytes(), &message))
}

/// Equal without an early exit, so the time taken tells nothing of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Which way a frame goes: part of what its tag covers, so that a frame cannot be
/// reflected back to its sender.
#[derive(Clone, Copy)]
enum Direction {
    ToAgent,
    ToLauncher,
}

impl Direction {
    fn label(self) -> &'static [u8] {
        match self {
            Direction::ToAgent => b"to-agent",
            Direction::ToLauncher => b"to-launcher",
        }
    }
}

/// What both handles of a connection share: the connection's key and its peer.
struct Session {
    key: [u8; 32],
    peer: String,
    outgoing: Direction,
    incoming: Direction,
}

impl Session {
    /// The key of the connection whose handshake had `challenge` and `nonce`.
    fn new(secret: &str, challenge: &str, nonce: &str, stream: &TcpStream, launcher: bool) -> Self {
        let key = hmac_sha256(secret.as_bytes(), format!("session {challenge} {nonce}").as_bytes());
        let peer = stream.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
        let (outgoing, incoming) = if launcher {
            (Direction::ToAgent, Direction::ToLauncher)
        } else {
            (Direction::ToLauncher, Direction::ToAgent)
        };
        Session { key, peer, outgoing, incoming }
    }

    fn tag(&self, direction: Direction, seq: u64, body: &[u8]) -> [u8; 32] {
        let mut covered = direction.label().to_vec();
        covered.extend_from_slice(&seq.to_be_bytes());
        covered.extend_from_slice(&(body.len() as u32).to_be_bytes());
        covered.extend_from_slice(body);
        hmac_sha256(&self.key, &covered)
    }
}

/// The sending side: the socket and the sequence number of the next frame.
struct Sender {
    stream: TcpStream,
    seq: u64,
}

/// The receiving side: the buffered socket and the sequence number expected next.
struct Receiver {
    reader: BufReader<TcpStream>,
    seq: u64,
}

/// What the next frame on a connection was.
enum Frame {
    Body(Vec<u8>),
    /// The peer closed the connection between frames.
    End,
    /// Not the peer's next frame, intact: why.
    Refused(String),
}

/// One authenticated connection. Its handles (`try_clone`) share the sequence numbers
/// and the read buffer.
pub(crate) struct Channel {
    session: Arc<Session>,
    sender: Arc<Mutex<Sender>>,
    receiver: Arc<Mutex<Receiver>>,
}

fn refused(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, why.to_string())
}

fn read_handshake_line(reader: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = String::new();
    std::io::Read::take(&mut *reader, HANDSHAKE_LINE).read_line(&mut line)?;
    if !line.ends_with('\n') {
        return Err(refused("no handshake"));
    }
    Ok(line.trim_end().to_string())
}

impl Channel {
    /// The launcher's side of a new connection: its challenge, the agent's proof, its
    /// own proof. Err (and the connection dropped) for anyone without the secret.
    pub(crate) fn accept(stream: TcpStream, secret: &str) -> std::io::Result<Channel> {
        stream.set_read_timeout(Some(HANDSHAKE_DEADLINE))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let challenge = hex(&random(16)?);
        (&stream).write_all(format!("{challenge}\n").as_bytes())?;
        let answer = read_handshake_line(&mut reader)?;
        let (their_nonce, proof) = answer.split_once(' ').ok_or_else(|| refused("bad answer"))?;
        if their_nonce.len() != 32
            || !same(proof.as_bytes(), mac(secret, "agent", &[&challenge, their_nonce]).as_bytes())
        {
            return Err(refused("wrong answer to the challenge"));
        }
        let own = mac(secret, "launcher", &[their_nonce, &challenge]);
        (&stream).write_all(format!("{own}\n").as_bytes())?;
        stream.set_read_timeout(None)?;
        let session = Session::new(secret, &challenge, their_nonce, &stream, true);
        Ok(Channel::over(stream, reader, session))
    }

    /// The agent's side: answers the launcher's challenge and checks its proof.
    pub(crate) fn connect(address: &str, secret: &str) -> std::io::Result<Channel> {
        let stream = TcpStream::connect(address)?;
        stream.set_read_timeout(Some(HANDSHAKE_DEADLINE))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let challenge = read_handshake_line(&mut reader)?;
        let nonce = hex(&random(16)?);
        let proof = mac(secret, "agent", &[&challenge, &nonce]);
        (&stream).write_all(format!("{nonce} {proof}\n").as_bytes())?;
        let theirs = read_handshake_line(&mut reader)?;
        if !same(theirs.as_bytes(), mac(secret, "launcher", &[&nonce, &challenge]).as_bytes()) {
            return Err(refused("the launcher does not know the job's secret"));
        }
        stream.set_read_timeout(None)?;
        let session = Session::new(secret, &challenge, &nonce, &stream, false);
        Ok(Channel::over(stream, reader, session))
    }

    fn over(stream: TcpStream, reader: BufReader<TcpStream>, session: Session) -> Channel {
        Channel {
            session: Arc::new(session),
            sender: Arc::new(Mutex::new(Sender { stream, seq: 0 })),
            receiver: Arc::new(Mutex::new(Receiver { reader, seq: 0 })),
        }
    }

    pub(crate) fn send<T: Serialize>(&self, message: &T) -> std::io::Result<()> {
        let mut sender = self.sender.lock();
        let frame = self.seal(&mut sender, message)?;
        (&sender.stream).write_all(&frame)
    }

    /// The frame that carries `message` as the next one `sender` sends, counted as sent.
    fn seal<T: Serialize>(&self, sender: &mut Sender, message: &T) -> std::io::Result<Vec<u8>> {
        let frame = self.frame(sender.seq, &serde_json::to_vec(message)?)?;
        sender.seq += 1;
        Ok(frame)
    }

    /// The frame that carries `body` as message `seq` of this side.
    fn frame(&self, seq: u64, body: &[u8]) -> std::io::Result<Vec<u8>> {
        if body.len() > MAX_MESSAGE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a message of {} bytes (at most {MAX_MESSAGE})", body.len()),
            ));
        }
        let mut frame = Vec::with_capacity(4 + body.len() + TAG_BYTES);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body);
        frame.extend_from_slice(&self.session.tag(self.session.outgoing, seq, body));
        Ok(frame)
    }

    /// The next message; UnexpectedEof when the other side is gone. A frame that is not
    /// the peer's next one, intact, ends the connection (InvalidData, naming the peer).
    pub(crate) fn receive<T: DeserializeOwned>(&mut self) -> std::io::Result<T> {
        let mut receiver = self.receiver.lock();
        let body = match self.next_frame(&mut receiver)? {
            Frame::Body(body) => body,
            Frame::End => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Frame::Refused(why) => {
                let warning = format!("closed the job channel with {}: {why}", self.session.peer);
                eprintln!("opal-run: warning: {warning}");
                let _ = receiver.reader.get_ref().shutdown(Shutdown::Both);
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, warning));
            }
        };
        receiver.seq += 1;
        Ok(serde_json::from_slice(&body)?)
    }

    /// The next frame, its tag checked.
    fn next_frame(&self, receiver: &mut Receiver) -> std::io::Result<Frame> {
        if receiver.reader.fill_buf()?.is_empty() {
            return Ok(Frame::End);
        }
        // The peer closed the connection inside a frame: refused, not a clean end.
        let truncated = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Ok(Frame::Refused("a truncated message".into())),
            _ => Err(e),
        };
        let mut length = [0u8; 4];
        if let Err(e) = receiver.reader.read_exact(&mut length) {
            return truncated(e);
        }
        let length = u32::from_be_bytes(length) as usize;
        if length > MAX_MESSAGE {
            return Ok(Frame::Refused(format!(
                "a message of {length} bytes (at most {MAX_MESSAGE})"
            )));
        }
        let mut body = vec![0u8; length];
        let mut tag = [0u8; TAG_BYTES];
        let read = receiver.reader.read_exact(&mut body);
        if let Err(e) = read.and_then(|()| receiver.reader.read_exact(&mut tag)) {
            return truncated(e);
        }
        let expected = self.session.tag(self.session.incoming, receiver.seq, &body);
        if !same(&tag, &expected) {
            return Ok(Frame::Refused(format!(
                "message {} fails its MAC (forged, replayed, out of order or of another connection)",
                receiver.seq
            )));
        }
        Ok(Frame::Body(body))
    }

    /// A second handle on the same connection (one side reads, the other writes).
    pub(crate) fn try_clone(&self) -> std::io::Result<Channel> {
        Ok(Channel {
            session: self.session.clone(),
            sender: self.sender.clone(),
            receiver: self.receiver.clone(),
        })
    }
}

/// HMAC-SHA-256 (RFC 2104), from the RustCrypto crates.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn hmac_matches_the_published_vectors() {
        // RFC 4231, test cases 2 and 6 (a key longer than the block).
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    fn launcher(secret: &str) -> (String, std::thread::JoinHandle<std::io::Result<u32>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let secret = secret.to_string();
        let served = std::thread::spawn(move || {
            let (stream, _) = listener.accept()?;
            let mut channel = Channel::accept(stream, &secret)?;
            let asked: u32 = channel.receive()?;
            channel.send(&(asked + 1))?;
            Ok(asked)
        });
        (address, served)
    }

    #[test]
    fn both_sides_with_the_secret_talk() {
        let secret = new_secret().unwrap();
        assert_eq!(secret.len(), 64);
        let (address, served) = launcher(&secret);
        let mut agent = Channel::connect(&address, &secret).unwrap();
        agent.send(&41u32).unwrap();
        assert_eq!(agent.receive::<u32>().unwrap(), 42);
        assert_eq!(served.join().unwrap().unwrap(), 41);
    }

    #[test]
    fn a_wrong_secret_or_a_stranger_is_refused_before_anything_is_read() {
        let secret = new_secret().unwrap();
        let (address, served) = launcher(&secret);
        let wrong = Channel::connect(&address, &new_secret().unwrap());
        assert!(wrong.is_err(), "the agent with a wrong secret got through");
        let refused = served.join().unwrap().unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied, "{refused}");

        // A stranger sends a message at once instead of answering the challenge.
        let (address, served) = launcher(&secret);
        let mut stranger = TcpStream::connect(&address).unwrap();
        stranger.write_all(b"41\n").unwrap();
        assert!(served.join().unwrap().is_err(), "a message without a handshake was read");

        // An agent is refused by a launcher that does not know the secret.
        let (address, served) = launcher(&new_secret().unwrap());
        assert!(Channel::connect(&address, &secret).is_err());
        assert!(served.join().unwrap().is_err());
    }

    /// A launcher's and an agent's ends of one new connection.
    fn connected(secret: &str) -> (Channel, Channel) {
        let (address, served) = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap().to_string();
            let secret = secret.to_string();
            let served = std::thread::spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                Channel::accept(stream, &secret).unwrap()
            });
            (address, served)
        };
        let agent = Channel::connect(&address, secret).unwrap();
        (served.join().unwrap(), agent)
    }

    /// The agent's socket, to write forged bytes on.
    fn raw(agent: &Channel) -> TcpStream {
        agent.sender.lock().stream.try_clone().unwrap()
    }

    /// The frame `agent.send(message)` would write next, counted as sent.
    fn seal(agent: &Channel, message: u32) -> Vec<u8> {
        agent.seal(&mut agent.sender.lock(), &message).unwrap()
    }

    /// What the launcher receives after `bytes` came from the agent, which then stops
    /// sending; the error must name the agent.
    fn refused_after(launcher: &mut Channel, agent: &Channel, bytes: &[&[u8]]) -> String {
        let mut stream = raw(agent);
        let peer = stream.local_addr().unwrap().to_string();
        for part in bytes {
            stream.write_all(part).unwrap();
        }
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        loop {
            match launcher.receive::<u32>() {
                Ok(value) => got.push(value),
                Err(e) => {
                    assert_ne!(e.kind(), std::io::ErrorKind::UnexpectedEof, "after {got:?}: {e}");
                    assert!(e.to_string().contains(&peer), "{e} does not name {peer}");
                    return format!("{got:?} then {e}");
                }
            }
        }
    }

    #[test]
    fn a_message_with_a_flipped_byte_is_refused() {
        let secret = new_secret().unwrap();
        let whole = {
            let (_launcher, agent) = connected(&secret);
            seal(&agent, 41).len()
        };
        // In its length, its JSON, its tag; the middle one.
        for at in [3, 5, whole / 2, whole - 1] {
            let (mut launcher, agent) = connected(&secret);
            let mut forged = seal(&agent, 41);
            forged[at] ^= 1;
            let seen = refused_after(&mut launcher, &agent, &[&forged]);
            assert!(seen.starts_with("[] then"), "byte {at}: {seen}");
            // The connection is over: the agent's next message does not arrive either.
            agent.send(&42u32).ok();
            assert!(launcher.receive::<u32>().is_err());
        }
    }

    #[test]
    fn a_replayed_or_reordered_message_is_refused() {
        let secret = new_secret().unwrap();
        let (mut launcher, agent) = connected(&secret);
        let first = seal(&agent, 41);
        let seen = refused_after(&mut launcher, &agent, &[&first, &first]);
        assert!(seen.starts_with("[41] then"), "{seen}");

        let (mut launcher, agent) = connected(&secret);
        let (first, second) = (seal(&agent, 1), seal(&agent, 2));
        let seen = refused_after(&mut launcher, &agent, &[&second, &first]);
        assert!(seen.starts_with("[] then"), "{seen}");
    }

    #[test]
    fn a_message_sealed_for_another_connection_is_refused() {
        let secret = new_secret().unwrap();
        let (mut launcher, agent) = connected(&secret);
        let (_other_launcher, other_agent) = connected(&secret);
        let theirs = seal(&other_agent, 41);
        let seen = refused_after(&mut launcher, &agent, &[&theirs]);
        assert!(seen.starts_with("[] then"), "{seen}");
    }

    #[test]
    fn a_truncated_message_is_refused() {
        let secret = new_secret().unwrap();
        let (mut launcher, agent) = connected(&secret);
        let whole = seal(&agent, 41);
        let seen = refused_after(&mut launcher, &agent, &[&whole[..whole.len() - 1]]);
        assert!(seen.starts_with("[] then") && seen.contains("a truncated message"), "{seen}");
    }

    #[test]
    fn a_message_longer_than_the_limit_is_refused_before_it_is_read() {
        let secret = new_secret().unwrap();
        let (mut launcher, agent) = connected(&secret);
        let seen = refused_after(&mut launcher, &agent, &[&u32::MAX.to_be_bytes()]);
        assert!(seen.contains(&format!("a message of {} bytes", u32::MAX)), "{seen}");
    }
}
