//! The launcher's own work: starting the ranks with their place in the job, passing
//! signals on to them, and ending the job when one fails, as `mpirun` does: the others
//! get SIGTERM, SIGKILL after a grace period, and the launcher exits with the failed
//! rank's status (0 when every rank exits 0).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The signals passed on to every rank.
pub(crate) const FORWARDED: &[libc::c_int] =
    &[libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGUSR2, libc::SIGTERM, libc::SIGCONT];

/// How long the other ranks have to end after SIGTERM when one failed.
const GRACE: Duration = Duration::from_secs(2);

/// Signals received and not yet acted on, one bit per signal number.
static PENDING: AtomicU64 = AtomicU64::new(0);

/// The environment that places a rank in the job (the names MPI-style programs read).
/// `local` is its number among the ranks of its node.
pub fn rank_environment(rank: usize, local: usize, size: usize) -> [(&'static str, String); 3] {
    [
        ("OMPI_COMM_WORLD_RANK", rank.to_string()),
        ("OMPI_COMM_WORLD_SIZE", size.to_string()),
        ("OMPI_COMM_WORLD_LOCAL_RANK", local.to_string()),
    ]
}

/// Starts the ranks `ranks` of a job of `size` ranks of `argv`, each with `env` (and
/// without the variables `removed`) and its place in the job. Rank 0 gets the
/// launcher's standard input, the others none. A rank that cannot be started ends the ones already started. Each rank ends
/// when the launcher dies; the caller is the launcher's main thread.
pub fn start(
    argv: &[OsString],
    ranks: std::ops::Range<usize>,
    size: usize,
    env: &[(String, OsString)],
    removed: &[String],
) -> std::io::Result<Vec<i32>> {
    let first = ranks.start;
    let mut started = Vec::with_capacity(ranks.len());
    for rank in ranks {
        let mut command = Command::new(&argv[0]);
        for name in removed {
            command.env_remove(name);
        }
        command.args(&argv[1..]).envs(env.iter().map(|(k, v)| (k, v)));
        command.envs(rank_environment(rank, rank - first, size));
        if rank > 0 {
            command.stdin(Stdio::null());
        }
        let launcher = std::process::id() as libc::pid_t;
        // SAFETY: the closure only makes system calls.
        unsafe { command.pre_exec(move || crate::framework::end_with_parent(launcher)) };
        match command.spawn() {
            Ok(child) => started.push(child.id() as i32),
            Err(e) => {
                end_all(&started, &[]);
                return Err(e);
            }
        }
    }
    Ok(started)
}

/// Exec'ing a rank resets these handlers; the launcher keeps them.
pub fn install_signal_handlers(extra: &[libc::c_int]) {
    for &signal in FORWARDED.iter().chain(extra) {
        // SAFETY: installing a handler that only sets an atomic. Without SA_RESTART, so
        // that the launcher's wait returns to act on it.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

extern "C" fn on_signal(signal: libc::c_int) {
    PENDING.fetch_or(1 << signal, Ordering::SeqCst);
}

/// Signals received since the last call.
fn take_pending() -> Vec<libc::c_int> {
    let pending = PENDING.swap(0, Ordering::SeqCst);
    (1..64).filter(|s| pending & (1 << s) != 0).collect()
}

/// How a rank ended, as an exit status (code, or 128+N for signal N).
fn exit_status(status: libc::c_int) -> Option<i32> {
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(128 + libc::WTERMSIG(status))
    } else {
        None
    }
}

fn describe(status: i32) -> String {
    if status > 128 {
        format!("was killed by signal {}", status - 128)
    } else {
        format!("exited with status {status}")
    }
}

/// Waits for every rank and returns the job's status: that of the first rank to fail,
/// or 0; 128+N when the launcher passed on a terminating signal N and a rank failed
/// (which rank ends first is then chance: a rank whose neighbour went first may fail
/// in its own way). `on_signal` gets each signal that is not passed on (e.g. the
/// checkpoint signal). `name` says what the child at each index is, for the message
/// on a failure (`rank R`, or the node launcher or srun that stands for ranks).
pub fn supervise(
    ranks: &[i32],
    name: &dyn Fn(usize) -> String,
    on_signal: &mut dyn FnMut(libc::c_int),
) -> i32 {
    let mut live: Vec<bool> = vec![true; ranks.len()];
    let mut failed: Option<i32> = None;
    let mut ended_by: Option<libc::c_int> = None;
    let mut kill_at: Option<Instant> = None;
    while live.iter().any(|&l| l) {
        for signal in take_pending() {
            if FORWARDED.contains(&signal) {
                if [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM].contains(&signal) {
                    ended_by.get_or_insert(signal);
                }
                for (pid, _) in ranks.iter().zip(&live).filter(|(_, l)| **l) {
                    // SAFETY: plain kill of a rank we started and have not reaped.
                    unsafe { libc::kill(*pid, signal) };
                }
            } else {
                on_signal(signal);
            }
        }
        if kill_at.is_some_and(|at| Instant::now() >= at) {
            end_all(ranks_alive(ranks, &live).as_slice(), &[libc::SIGKILL]);
            kill_at = None;
        }
        // Once the job is failing, poll so that the SIGKILL comes on time.
        let Some(reaped) = (match next_rank_exit(ranks, kill_at.is_some()) {
            Ok(reaped) => reaped,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => break,
        }) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let (reaped, status) = reaped;
        let Some(rank) = ranks.iter().position(|&pid| pid == reaped) else { continue };
        let Some(code) = exit_status(status) else { continue };
        live[rank] = false;
        if code != 0 && failed.is_none() {
            failed = Some(code);
            eprintln!("opal-run: {} (PID {reaped}) {}: ending the job", name(rank), describe(code));
            end_all(&ranks_alive(ranks, &live), &[libc::SIGTERM]);
            kill_at = Some(Instant::now() + GRACE);
        }
    }
    match (failed, ended_by) {
        (Some(_), Some(signal)) => 128 + signal,
        (failed, _) => failed.unwrap_or(0),
    }
}

/// Waits for a rank to end (with `poll`, only looks) and reaps it: its PID and wait
/// status; None when none has ended, or when the child that ended is not a rank. Other
/// children (CRIU's helpers, `criu --version`) belong to the thread that started them,
/// which reaps them itself: they are only looked at, never reaped here.
fn next_rank_exit(ranks: &[i32], poll: bool) -> std::io::Result<Option<(i32, libc::c_int)>> {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOWAIT | if poll { libc::WNOHANG } else { 0 };
    // SAFETY: info is a valid out-pointer.
    if unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: waitid succeeded, so si_pid is set (0 when nothing ended under WNOHANG).
    let pid = unsafe { info.si_pid() };
    if pid == 0 || !ranks.contains(&pid) {
        return Ok(None);
    }
    let mut status = 0;
    // SAFETY: reaps the rank that waitid reported; status is a valid out-pointer.
    match unsafe { libc::waitpid(pid, &mut status, 0) } {
        reaped if reaped == pid => Ok(Some((pid, status))),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn ranks_alive(ranks: &[i32], live: &[bool]) -> Vec<i32> {
    ranks.iter().zip(live).filter(|(_, l)| **l).map(|(p, _)| *p).collect()
}

/// Sends each of `signals` to each of `pids`; with none, ends them at once (SIGKILL)
/// and reaps them (a rank that failed to start leaves no one running).
pub(crate) fn end_all(pids: &[i32], signals: &[libc::c_int]) {
    for &pid in pids {
        if signals.is_empty() {
            // SAFETY: kill and waitpid of our own children.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        for &signal in signals {
            // SAFETY: plain kill of our own child.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rank_learns_its_place() {
        let env = rank_environment(3, 1, 4);
        assert_eq!(
            env,
            [
                ("OMPI_COMM_WORLD_RANK", "3".to_string()),
                ("OMPI_COMM_WORLD_SIZE", "4".to_string()),
                ("OMPI_COMM_WORLD_LOCAL_RANK", "1".to_string()),
            ]
        );
    }

    #[test]
    fn a_status_names_the_signal() {
        assert_eq!(describe(3), "exited with status 3");
        assert_eq!(describe(137), "was killed by signal 9");
    }
}
