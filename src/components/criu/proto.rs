//! The part of CRIU's RPC protocol (`criu/images/rpc.proto`, proto2) that the criu
//! component speaks, encoded by hand: a request is a `criu_req` with its `criu_opts`, the
//! answer a `criu_resp`. Field numbers are those of rpc.proto; the decoder skips every
//! field it does not know, so newer CRIU versions that add fields still work.
//!
//! The `Reader` is also used for CRIU's image files (`pstree.img`), which hold the same
//! kind of messages.

use crate::error::{Error, Result};

/// `criu_req_type`, kept as the raw number so that an unknown type in an answer is not
/// an error by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReqType(pub i32);

impl ReqType {
    pub(crate) const EMPTY: ReqType = ReqType(0);
    pub(crate) const DUMP: ReqType = ReqType(1);
    pub(crate) const RESTORE: ReqType = ReqType(2);
    pub(crate) const CHECK: ReqType = ReqType(3);
    /// A notification of CRIU (`notify_scripts`) in an answer; its acknowledgement in a
    /// request.
    pub(crate) const NOTIFY: ReqType = ReqType(6);
    #[cfg(test)]
    pub(crate) const VERSION: ReqType = ReqType(10);
}

/// `inherit_fd`: on restore, the file the image knows by `key` (e.g. `pipe:[1234]`) is
/// replaced by descriptor `fd` of the `criu swrk` process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritFd {
    pub key: String,
    pub fd: i32,
}

/// `criu_network_lock_method`: how CRIU keeps the peers of TCP connections quiet while
/// it dumps them (its own default is iptables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NetworkLock {
    Iptables = 1,
    Nftables = 2,
    /// No lock: the caller keeps the network quiet itself.
    Skip = 3,
}

/// `criu_opts`, restricted to the options the component sets. The images directory is
/// always given by path (`images_dir`), so `images_dir_fd` (required) is sent as -1.
/// Booleans are sent only when true: false is CRIU's default for all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opts {
    pub images_dir: Option<String>,
    pub pid: Option<i32>,
    pub leave_running: bool,
    pub ext_unix_sk: bool,
    pub tcp_established: bool,
    pub shell_job: bool,
    /// Dump and restore the file locks the tasks hold (CRIU refuses a task with locks
    /// otherwise).
    pub file_locks: bool,
    pub log_level: i32,
    /// Name of the log file inside the images directory (CRIU refuses subdirectories).
    pub log_file: Option<String>,
    /// Restore the root task as a sibling of `criu swrk`, i.e. as the caller's child.
    pub rst_sibling: bool,
    pub inherit_fd: Vec<InheritFd>,
    pub external: Vec<String>,
    /// CRIU runs with CAP_CHECKPOINT_RESTORE instead of as root.
    pub unprivileged: bool,
    /// CRIU tells us each step of its work (`pre-resume`: the restored tasks exist and
    /// have not run yet) and waits for our acknowledgement.
    pub notify_scripts: bool,
    /// None leaves CRIU's default (iptables); a restore uses what the dump recorded.
    pub network_lock: Option<NetworkLock>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            images_dir: None,
            pid: None,
            leave_running: false,
            ext_unix_sk: false,
            tcp_established: false,
            shell_job: false,
            file_locks: false,
            log_level: DEFAULT_LOG_LEVEL,
            log_file: None,
            rst_sibling: false,
            inherit_fd: Vec::new(),
            external: Vec::new(),
            unprivileged: false,
            notify_scripts: false,
            network_lock: None,
        }
    }
}

/// `criu_cg_mode.IGNORE` (rpc.proto): CRIU leaves cgroups alone.
pub(crate) const CG_MODE_IGNORE: i32 = 0;

/// rpc.proto's default for `criu_opts.log_level`.
pub(crate) const DEFAULT_LOG_LEVEL: i32 = 2;

/// `criu_req` without the fields the component never sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: ReqType,
    pub opts: Option<Opts>,
}

/// `criu_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub major: i32,
    pub minor: i32,
    pub sublevel: Option<i32>,
}

/// `criu_resp`, flattened: `dump.restored`, `restore.pid` and `version` are the only
/// parts of the sub-messages that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub kind: ReqType,
    pub success: bool,
    /// `dump.restored`: true in the restored copy of a self-dumped process.
    pub restored: Option<bool>,
    /// `restore.pid`: the restored root task as CRIU sees it.
    pub restore_pid: Option<i32>,
    pub cr_errno: Option<i32>,
    pub cr_errmsg: Option<String>,
    pub version: Option<Version>,
    /// `notify.script`: the step a notification names, e.g. `pre-resume`.
    pub notify_script: Option<String>,
}

// Field numbers, from rpc.proto.
mod field {
    pub(crate) const REQ_TYPE: u32 = 1;
    pub(crate) const REQ_OPTS: u32 = 2;
    pub(crate) const REQ_NOTIFY_SUCCESS: u32 = 3;

    pub(crate) const OPTS_IMAGES_DIR_FD: u32 = 1;
    pub(crate) const OPTS_PID: u32 = 2;
    pub(crate) const OPTS_LEAVE_RUNNING: u32 = 3;
    pub(crate) const OPTS_EXT_UNIX_SK: u32 = 4;
    pub(crate) const OPTS_TCP_ESTABLISHED: u32 = 5;
    pub(crate) const OPTS_SHELL_JOB: u32 = 7;
    pub(crate) const OPTS_FILE_LOCKS: u32 = 8;
    pub(crate) const OPTS_LOG_LEVEL: u32 = 9;
    pub(crate) const OPTS_LOG_FILE: u32 = 10;
    pub(crate) const OPTS_NOTIFY_SCRIPTS: u32 = 12;
    pub(crate) const OPTS_RST_SIBLING: u32 = 26;
    pub(crate) const OPTS_INHERIT_FD: u32 = 27;
    pub(crate) const OPTS_MANAGE_CGROUPS_MODE: u32 = 34;
    pub(crate) const OPTS_EXTERNAL: u32 = 37;
    pub(crate) const OPTS_NETWORK_LOCK: u32 = 64;
    pub(crate) const OPTS_UNPRIVILEGED: u32 = 67;
    pub(crate) const OPTS_IMAGES_DIR: u32 = 68;

    pub(crate) const INHERIT_FD_KEY: u32 = 1;
    pub(crate) const INHERIT_FD_FD: u32 = 2;

    pub(crate) const RESP_TYPE: u32 = 1;
    pub(crate) const RESP_SUCCESS: u32 = 2;
    pub(crate) const RESP_DUMP: u32 = 3;
    pub(crate) const RESP_RESTORE: u32 = 4;
    pub(crate) const RESP_NOTIFY: u32 = 5;
    pub(crate) const RESP_CR_ERRNO: u32 = 7;
    pub(crate) const RESP_CR_ERRMSG: u32 = 9;
    pub(crate) const RESP_VERSION: u32 = 10;

    pub(crate) const DUMP_RESTORED: u32 = 1;
    pub(crate) const RESTORE_PID: u32 = 1;
    pub(crate) const NOTIFY_SCRIPT: u32 = 1;

    pub(crate) const VERSION_MAJOR: u32 = 1;
    pub(crate) const VERSION_MINOR: u32 = 2;
    pub(crate) const VERSION_SUBLEVEL: u32 = 4;
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// Appends proto2 fields to a buffer.
#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.buf.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.buf.push(value as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }

    /// int32: negative values are sign-extended to ten bytes, as protobuf requires.
    fn int32(&mut self, field: u32, value: i32) {
        self.key(field, WIRE_VARINT);
        self.varint(i64::from(value) as u64);
    }

    fn flag(&mut self, field: u32, value: bool) {
        if value {
            self.key(field, WIRE_VARINT);
            self.varint(1);
        }
    }

    fn bytes(&mut self, field: u32, value: &[u8]) {
        self.key(field, WIRE_LEN);
        self.varint(value.len() as u64);
        self.buf.extend_from_slice(value);
    }
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.int32(field::REQ_TYPE, self.kind.0);
        if let Some(opts) = &self.opts {
            w.bytes(field::REQ_OPTS, &opts.encode());
        }
        w.buf
    }
}

/// The acknowledgement of a notification: CRIU goes on (`success`) or fails the step.
pub fn notify_answer(success: bool) -> Vec<u8> {
    let mut w = Writer::default();
    w.int32(field::REQ_TYPE, ReqType::NOTIFY.0);
    w.int32(field::REQ_NOTIFY_SUCCESS, i32::from(success));
    w.buf
}

impl Opts {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.int32(field::OPTS_IMAGES_DIR_FD, -1);
        if let Some(pid) = self.pid {
            w.int32(field::OPTS_PID, pid);
        }
        w.flag(field::OPTS_LEAVE_RUNNING, self.leave_running);
        w.flag(field::OPTS_EXT_UNIX_SK, self.ext_unix_sk);
        w.flag(field::OPTS_TCP_ESTABLISHED, self.tcp_established);
        w.flag(field::OPTS_SHELL_JOB, self.shell_job);
        w.flag(field::OPTS_FILE_LOCKS, self.file_locks);
        w.int32(field::OPTS_LOG_LEVEL, self.log_level);
        if let Some(log_file) = &self.log_file {
            w.bytes(field::OPTS_LOG_FILE, log_file.as_bytes());
        }
        w.flag(field::OPTS_RST_SIBLING, self.rst_sibling);
        for inherit in &self.inherit_fd {
            let mut entry = Writer::default();
            entry.bytes(field::INHERIT_FD_KEY, inherit.key.as_bytes());
            entry.int32(field::INHERIT_FD_FD, inherit.fd);
            w.bytes(field::OPTS_INHERIT_FD, &entry.buf);
        }
        // Never: a dump records no cgroups, and a restored tree stays in the cgroups of
        // whoever restores it (a batch job's new step under Slurm's proctrack/cgroup),
        // instead of going back to, or making anew, those it was dumped from.
        w.int32(field::OPTS_MANAGE_CGROUPS_MODE, CG_MODE_IGNORE);
        for external in &self.external {
            w.bytes(field::OPTS_EXTERNAL, external.as_bytes());
        }
        if let Some(lock) = self.network_lock {
            w.int32(field::OPTS_NETWORK_LOCK, lock as i32);
        }
        w.flag(field::OPTS_UNPRIVILEGED, self.unprivileged);
        if let Some(dir) = &self.images_dir {
            w.bytes(field::OPTS_IMAGES_DIR, dir.as_bytes());
        }
        w.flag(field::OPTS_NOTIFY_SCRIPTS, self.notify_scripts);
        w.buf
    }
}

/// One field's value as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

impl Value<'_> {
    /// The value of an integer or bool field (int32 keeps the low 32 bits, as protobuf).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Varint(v) | Value::Fixed64(v) => Some(v),
            Value::Fixed32(v) => Some(u64::from(v)),
            Value::Bytes(_) => None,
        }
    }

    pub fn as_i32(&self) -> Option<i32> {
        self.as_u64().map(|v| v as i32)
    }
}

/// Walks the fields of one encoded message without copying.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn malformed(what: &str) -> Error {
    Error::msg(format!("malformed CRIU protobuf message: {what}"))
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or_else(|| malformed("truncated varint"))?;
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(malformed("varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("varint longer than 10 bytes"))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(len).filter(|&end| end <= self.buf.len());
        let end = end.ok_or_else(|| malformed("field runs past the end"))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// The next field number and value, or None at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| malformed("bad field number"))?;
        let value = match (key & 7) as u8 {
            WIRE_VARINT => Value::Varint(self.varint()?),
            WIRE_FIXED64 => {
                let bytes = self.take(8)?;
                Value::Fixed64(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
            }
            WIRE_LEN => {
                let len = usize::try_from(self.varint()?).map_err(|_| malformed("huge length"))?;
                Value::Bytes(self.take(len)?)
            }
            WIRE_FIXED32 => {
                let bytes = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
            }
            other => return Err(malformed(&format!("unsupported wire type {other}"))),
        };
        Ok(Some((number, value)))
    }
}

fn expect_int(value: &Value<'_>, name: &str) -> Result<i32> {
    value.as_i32().ok_or_else(|| malformed(&format!("{name} is not an integer")))
}

fn expect_bytes<'a>(value: &Value<'a>, name: &str) -> Result<&'a [u8]> {
    match *value {
        Value::Bytes(bytes) => Ok(bytes),
        _ => Err(malformed(&format!("{name} is not length-delimited"))),
    }
}

impl Response {
    pub fn decode(buf: &[u8]) -> Result<Response> {
        let mut response = Response {
            kind: ReqType::EMPTY,
            success: false,
            restored: None,
            restore_pid: None,
            cr_errno: None,
            cr_errmsg: None,
            version: None,
            notify_script: None,
        };
        let mut reader = Reader::new(buf);
        while let Some((number, value)) = reader.next_field()? {
            match number {
                field::RESP_TYPE => response.kind = ReqType(expect_int(&value, "type")?),
                field::RESP_SUCCESS => response.success = expect_int(&value, "success")? != 0,
                field::RESP_DUMP => {
                    let mut dump = Reader::new(expect_bytes(&value, "dump")?);
                    while let Some((number, value)) = dump.next_field()? {
                        if number == field::DUMP_RESTORED {
                            response.restored = Some(expect_int(&value, "dump.restored")? != 0);
                        }
                    }
                }
                field::RESP_RESTORE => {
                    let mut restore = Reader::new(expect_bytes(&value, "restore")?);
                    while let Some((number, value)) = restore.next_field()? {
                        if number == field::RESTORE_PID {
                            response.restore_pid = Some(expect_int(&value, "restore.pid")?);
                        }
                    }
                }
                field::RESP_NOTIFY => {
                    let mut notify = Reader::new(expect_bytes(&value, "notify")?);
                    while let Some((number, value)) = notify.next_field()? {
                        if number == field::NOTIFY_SCRIPT {
                            let text = expect_bytes(&value, "notify.script")?;
                            response.notify_script = Some(String::from_utf8_lossy(text).into());
                        }
                    }
                }
                field::RESP_CR_ERRNO => response.cr_errno = Some(expect_int(&value, "cr_errno")?),
                field::RESP_CR_ERRMSG => {
                    let text = expect_bytes(&value, "cr_errmsg")?;
                    response.cr_errmsg = Some(String::from_utf8_lossy(text).into_owned());
                }
                field::RESP_VERSION => {
                    response.version = Some(decode_version(expect_bytes(&value, "version")?)?)
                }
                _ => {}
            }
        }
        Ok(response)
    }
}

fn decode_version(buf: &[u8]) -> Result<Version> {
    let mut version = Version { major: 0, minor: 0, sublevel: None };
    let mut reader = Reader::new(buf);
    while let Some((number, value)) = reader.next_field()? {
        match number {
            field::VERSION_MAJOR => version.major = expect_int(&value, "major_number")?,
            field::VERSION_MINOR => version.minor = expect_int(&value, "minor_number")?,
            field::VERSION_SUBLEVEL => version.sublevel = Some(expect_int(&value, "sublevel")?),
            _ => {}
        }
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a request the way CRIU would (only for the round trip tests).
    fn decode_request(buf: &[u8]) -> Result<Request> {
        let mut request = Request { kind: ReqType::EMPTY, opts: None };
        let mut reader = Reader::new(buf);
        while let Some((number, value)) = reader.next_field()? {
            match number {
                field::REQ_TYPE => request.kind = ReqType(expect_int(&value, "type")?),
                field::REQ_OPTS => request.opts = Some(decode_opts(expect_bytes(&value, "opts")?)?),
                _ => panic!("unexpected request field {number}"),
            }
        }
        Ok(request)
    }

    fn decode_opts(buf: &[u8]) -> Result<Opts> {
        let mut opts = Opts::default();
        let mut reader = Reader::new(buf);
        let text = |v: &Value<'_>| -> Result<String> {
            Ok(String::from_utf8(expect_bytes(v, "string")?.to_vec()).expect("utf-8"))
        };
        let flag = |v: &Value<'_>| -> Result<bool> { Ok(expect_int(v, "bool")? != 0) };
        while let Some((number, value)) = reader.next_field()? {
            match number {
                field::OPTS_IMAGES_DIR_FD => assert_eq!(expect_int(&value, "fd")?, -1),
                field::OPTS_PID => opts.pid = Some(expect_int(&value, "pid")?),
                field::OPTS_LEAVE_RUNNING => opts.leave_running = flag(&value)?,
                field::OPTS_EXT_UNIX_SK => opts.ext_unix_sk = flag(&value)?,
                field::OPTS_TCP_ESTABLISHED => opts.tcp_established = flag(&value)?,
                field::OPTS_SHELL_JOB => opts.shell_job = flag(&value)?,
                field::OPTS_FILE_LOCKS => opts.file_locks = flag(&value)?,
                field::OPTS_LOG_LEVEL => opts.log_level = expect_int(&value, "log_level")?,
                field::OPTS_LOG_FILE => opts.log_file = Some(text(&value)?),
                field::OPTS_RST_SIBLING => opts.rst_sibling = flag(&value)?,
                field::OPTS_NOTIFY_SCRIPTS => opts.notify_scripts = flag(&value)?,
                field::OPTS_INHERIT_FD => {
                    let mut entry = Reader::new(expect_bytes(&value, "inherit_fd")?);
                    let mut inherit = InheritFd { key: String::new(), fd: -1 };
                    while let Some((number, value)) = entry.next_field()? {
                        match number {
                            field::INHERIT_FD_KEY => inherit.key = text(&value)?,
                            field::INHERIT_FD_FD => inherit.fd = expect_int(&value, "fd")?,
                            _ => panic!("unexpected inherit_fd field {number}"),
                        }
                    }
                    opts.inherit_fd.push(inherit);
                }
                field::OPTS_EXTERNAL => opts.external.push(text(&value)?),
                field::OPTS_NETWORK_LOCK => {
                    opts.network_lock = Some(match expect_int(&value, "network_lock")? {
                        1 => NetworkLock::Iptables,
                        2 => NetworkLock::Nftables,
                        3 => NetworkLock::Skip,
                        other => panic!("unexpected network_lock {other}"),
                    })
                }
                field::OPTS_MANAGE_CGROUPS_MODE => {
                    assert_eq!(expect_int(&value, "manage_cgroups_mode")?, CG_MODE_IGNORE)
                }
                field::OPTS_UNPRIVILEGED => opts.unprivileged = flag(&value)?,
                field::OPTS_IMAGES_DIR => opts.images_dir = Some(text(&value)?),
                _ => panic!("unexpected opts field {number}"),
            }
        }
        Ok(opts)
    }

    /// Encodes a response the way CRIU would (only for the round trip tests).
    fn encode_response(response: &Response) -> Vec<u8> {
        let mut w = Writer::default();
        w.int32(field::RESP_TYPE, response.kind.0);
        w.int32(field::RESP_SUCCESS, i32::from(response.success));
        if let Some(restored) = response.restored {
            let mut dump = Writer::default();
            dump.int32(field::DUMP_RESTORED, i32::from(restored));
            w.bytes(field::RESP_DUMP, &dump.buf);
        }
        if let Some(pid) = response.restore_pid {
            let mut restore = Writer::default();
            restore.int32(field::RESTORE_PID, pid);
            w.bytes(field::RESP_RESTORE, &restore.buf);
        }
        if let Some(errno) = response.cr_errno {
            w.int32(field::RESP_CR_ERRNO, errno);
        }
        if let Some(script) = &response.notify_script {
            let mut notify = Writer::default();
            notify.bytes(field::NOTIFY_SCRIPT, script.as_bytes());
            w.bytes(field::RESP_NOTIFY, &notify.buf);
        }
        if let Some(msg) = &response.cr_errmsg {
            w.bytes(field::RESP_CR_ERRMSG, msg.as_bytes());
        }
        if let Some(version) = response.version {
            let mut v = Writer::default();
            v.int32(field::VERSION_MAJOR, version.major);
            v.int32(field::VERSION_MINOR, version.minor);
            v.bytes(3, b"gitid");
            if let Some(sublevel) = version.sublevel {
                v.int32(field::VERSION_SUBLEVEL, sublevel);
            }
            w.bytes(field::RESP_VERSION, &v.buf);
        }
        w.buf
    }

    fn full_opts() -> Opts {
        Opts {
            images_dir: Some("/var/tmp/snap/0".into()),
            pid: Some(4_000_000),
            leave_running: true,
            ext_unix_sk: true,
            tcp_established: true,
            shell_job: true,
            file_locks: true,
            log_level: 4,
            log_file: Some("dump.log".into()),
            rst_sibling: true,
            inherit_fd: vec![
                InheritFd { key: "pipe:[1234]".into(), fd: 1 },
                InheritFd { key: "tmp/out.log".into(), fd: 2 },
            ],
            external: vec!["unix[77]".into(), "unix[78]".into()],
            unprivileged: true,
            notify_scripts: true,
            network_lock: Some(NetworkLock::Nftables),
        }
    }

    #[test]
    fn request_round_trips() {
        let cases = [
            Request { kind: ReqType::DUMP, opts: Some(full_opts()) },
            Request {
                kind: ReqType::RESTORE,
                opts: Some(Opts { log_level: -3, ..Opts::default() }),
            },
            Request { kind: ReqType::CHECK, opts: Some(Opts::default()) },
            Request { kind: ReqType::VERSION, opts: None },
        ];
        for request in cases {
            let bytes = request.encode();
            assert_eq!(decode_request(&bytes).unwrap(), request);
        }
    }

    #[test]
    fn a_notification_is_acknowledged_with_its_verdict() {
        // criu_req { type: NOTIFY (6), notify_success (3): verdict }
        assert_eq!(notify_answer(true), [0x08, 6, 0x18, 1]);
        assert_eq!(notify_answer(false), [0x08, 6, 0x18, 0]);
    }

    #[test]
    fn response_round_trips() {
        let cases = [
            Response {
                kind: ReqType::DUMP,
                success: true,
                restored: Some(true),
                restore_pid: None,
                cr_errno: None,
                cr_errmsg: None,
                version: None,
                notify_script: None,
            },
            Response {
                kind: ReqType::RESTORE,
                success: false,
                restored: None,
                restore_pid: Some(-1),
                cr_errno: Some(libc::EBADRQC),
                cr_errmsg: Some("Can't fork for 23257: File exists".into()),
                version: None,
                notify_script: None,
            },
            Response {
                kind: ReqType::VERSION,
                success: true,
                restored: None,
                restore_pid: None,
                cr_errno: None,
                cr_errmsg: None,
                version: Some(Version { major: 4, minor: 1, sublevel: Some(1) }),
                notify_script: None,
            },
            Response {
                kind: ReqType::NOTIFY,
                success: true,
                restored: None,
                restore_pid: None,
                cr_errno: None,
                cr_errmsg: None,
                version: None,
                notify_script: Some("pre-resume".into()),
            },
        ];
        for response in cases {
            assert_eq!(Response::decode(&encode_response(&response)).unwrap(), response);
        }
    }

    #[test]
    fn small_dump_request_matches_hand_derived_bytes() {
        let request = Request {
            kind: ReqType::DUMP,
            opts: Some(Opts {
                images_dir: Some("/i".into()),
                pid: Some(1234),
                leave_running: true,
                log_level: 4,
                ..Opts::default()
            }),
        };
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x08, 0x01,             // type (1, varint) = DUMP
            0x12, 0x1a,             // opts (2, length-delimited), 26 bytes:
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, // images_dir_fd = -1
            0x10, 0xd2, 0x09,       // pid = 1234 (0x4d2 = 0x52 | 0x80, 0x09)
            0x18, 0x01,             // leave_running = true
            0x48, 0x04,             // log_level (9) = 4
            0x90, 0x02, 0x00,       // manage_cgroups_mode (34 << 3 = 0x110) = IGNORE
            0xa2, 0x04, 0x02, b'/', b'i', // images_dir: key 68 << 3 | 2 = 546 = 0xa2 0x04
        ];
        assert_eq!(request.encode(), expected);
    }

    #[test]
    fn file_locks_and_network_lock_use_rpc_proto_numbers() {
        let opts = Opts {
            file_locks: true,
            network_lock: Some(NetworkLock::Nftables),
            log_level: 2,
            ..Opts::default()
        };
        let bytes = opts.encode();
        // file_locks = 8: key 8 << 3 = 0x40; network_lock = 64: key 512 = 0x80 0x04, NFTABLES = 2.
        assert!(bytes.windows(2).any(|w| w == [0x40, 0x01]), "{bytes:02x?}");
        assert!(bytes.ends_with(&[0x80, 0x04, 0x02]), "{bytes:02x?}");
    }

    #[test]
    fn version_request_is_two_bytes() {
        assert_eq!(Request { kind: ReqType::VERSION, opts: None }.encode(), [0x08, 0x0a]);
    }

    #[test]
    fn decoder_skips_unknown_fields_of_every_wire_type() {
        let mut w = Writer::default();
        w.int32(field::RESP_TYPE, ReqType::RESTORE.0);
        w.key(50, WIRE_FIXED64);
        w.buf.extend_from_slice(&[1; 8]);
        w.key(51, WIRE_FIXED32);
        w.buf.extend_from_slice(&[2; 4]);
        w.bytes(52, b"future");
        w.int32(53, 7);
        w.int32(field::RESP_SUCCESS, 1);
        let response = Response::decode(&w.buf).unwrap();
        assert_eq!(response.kind, ReqType::RESTORE);
        assert!(response.success);
    }

    #[test]
    fn decoder_rejects_truncated_and_bad_input() {
        let good = encode_response(&Response {
            kind: ReqType::DUMP,
            success: false,
            restored: Some(false),
            restore_pid: None,
            cr_errno: Some(3),
            cr_errmsg: Some("no such process".into()),
            version: None,
            notify_script: None,
        });
        for len in 1..good.len() {
            // Every strict prefix either fails or decodes to something: never panics.
            let _ = Response::decode(&good[..len]);
        }
        assert!(Response::decode(&[0x08]).is_err(), "truncated varint");
        assert!(Response::decode(&[0x4a, 0x05, b'a']).is_err(), "string past the end");
        assert!(Response::decode(&[0x0b]).is_err(), "group wire type");
        assert!(Response::decode(&[0x00, 0x01]).is_err(), "field number 0");
        let too_long = [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(Response::decode(&too_long).is_err(), "varint overflow");
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_input() {
        // xorshift64: deterministic pseudo-random buffers of every small length, plus
        // mutations of a valid message (the interesting part of the input space).
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid = encode_response(&Response {
            kind: ReqType::VERSION,
            success: true,
            restored: Some(true),
            restore_pid: Some(42),
            cr_errno: Some(1),
            cr_errmsg: Some("x".into()),
            version: Some(Version { major: 4, minor: 1, sublevel: Some(1) }),
            notify_script: Some("pre-resume".into()),
        });
        for round in 0..20_000 {
            let buf: Vec<u8> = if round % 2 == 0 {
                (0..next() % 64).map(|_| next() as u8).collect()
            } else {
                let mut buf = valid.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % buf.len();
                    buf[at] = next() as u8;
                }
                buf.truncate((next() as usize) % (buf.len() + 1));
                buf
            };
            let _ = Response::decode(&buf);
        }
    }
}
