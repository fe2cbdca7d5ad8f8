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

const SHA256_K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// SHA-256 (FIPS 180-4); small inputs only, so no streaming.
fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut padded = data.to_vec();
    padded.push(0x80);
    while padded.len() % 64 != 56 {
        padded.push(0);
    }
    padded.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in padded.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 =
                hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(SHA256_K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (state, add) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *state = state.wrapping_add(add);
        }
    }
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// HMAC-SHA-256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&sha256(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(message);
    let mut outer: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn sha256_and_hmac_match_the_published_vectors() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha256(&[b'a'; 1000])),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
        );
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
