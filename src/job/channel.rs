//! The authenticated channel between a job's launcher and its node agents (jobs across
//! nodes): TCP on the nodes' addresses, and on every connection a challenge-response
//! with a random per-job secret (HMAC-SHA-256) before anything else is read or done.
//! The launcher hands the secret to its agents through `srun`'s environment, never on
//! a command line. Both sides prove that they hold it (each answers the other's
//! nonce), so an agent never serves a stranger either. After the handshake the two
//! sides exchange JSON messages, one a line.

use serde::{de::DeserializeOwned, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The environment variable that carries the job's secret (hex) to the agents.
pub(crate) const SECRET_VARIABLE: &str = "OPALCRS_JOB_SECRET";
/// How long each side has for its part of the handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
const SECRET_BYTES: usize = 32;
/// The longest line of the handshake (hex nonce, space, hex MAC).
const HANDSHAKE_LINE: u64 = 200;

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
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One authenticated connection.
pub(crate) struct Channel {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
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
            || !same(proof, &mac(secret, "agent", &[&challenge, their_nonce]))
        {
            return Err(refused("wrong answer to the challenge"));
        }
        let own = mac(secret, "launcher", &[their_nonce, &challenge]);
        (&stream).write_all(format!("{own}\n").as_bytes())?;
        stream.set_read_timeout(None)?;
        Ok(Channel { reader, stream })
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
        if !same(&theirs, &mac(secret, "launcher", &[&nonce, &challenge])) {
            return Err(refused("the launcher does not know the job's secret"));
        }
        stream.set_read_timeout(None)?;
        Ok(Channel { reader, stream })
    }

    pub(crate) fn send<T: Serialize>(&self, message: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(message)?;
        line.push(b'\n');
        (&self.stream).write_all(&line)
    }

    /// The next message; UnexpectedEof when the other side is gone.
    pub(crate) fn receive<T: DeserializeOwned>(&mut self) -> std::io::Result<T> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// A second handle on the same connection (one side reads, the other writes).
    pub(crate) fn try_clone(&self) -> std::io::Result<Channel> {
        Ok(Channel {
            reader: BufReader::new(self.stream.try_clone()?),
            stream: self.stream.try_clone()?,
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
}
