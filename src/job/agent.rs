//! Jobs across nodes: inside a Slurm allocation of more than one node
//! (`SLURM_JOB_ID` set and `SLURM_JOB_NUM_NODES` > 1) the launcher does not start the
//! ranks itself. It starts one node agent per node with `srun` (`opal-run --node-agent`),
//! so Slurm places, tracks and signals them; each agent starts its node's ranks and
//! relays the launcher's job checkpoint to them over their own control sockets, which
//! only processes on that node can reach. Ranks are laid out in blocks: node `i` of `n`
//! runs ranks `i*N/n ..`, the first `N mod n` nodes one more.
//!
//! The agents connect back to the launcher over TCP (`SLURM_LAUNCH_NODE_IPADDR`, the
//! port in `OPALCRS_JOB_PORT`) on the authenticated `channel`; what the listener gets
//! from anyone else is refused before it is read.

use super::channel::{self, Channel};
use super::endpoint::{self, Outcome, Release};
use super::launcher;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The launcher's port, for the agents.
const PORT_VARIABLE: &str = "OPALCRS_JOB_PORT";
/// The job's size, for the agents.
const SIZE_VARIABLE: &str = "OPALCRS_JOB_SIZE";
/// The global snapshot a restarting job's agents restart their ranks from.
const RESTART_VARIABLE: &str = "OPALCRS_JOB_RESTART";
/// Handshakes served at once; more connections are closed at once.
const MAX_HANDSHAKES: usize = 16;
/// How long the launcher waits for every node's agent to report.
const AGENT_DEADLINE: Duration = Duration::from_secs(60);

/// Whether `opal-run -np N` runs its ranks across the nodes of a Slurm allocation.
pub fn across_nodes() -> bool {
    across_nodes_in(&|name| std::env::var(name).ok())
}

fn across_nodes_in(env: &dyn Fn(&str) -> Option<String>) -> bool {
    env("SLURM_JOB_ID").is_some_and(|job| !job.is_empty())
        && env("SLURM_JOB_NUM_NODES").and_then(|n| n.parse::<usize>().ok()).is_some_and(|n| n > 1)
}

/// The ranks node `node` of `nodes` runs, of a job of `size`.
fn block(size: usize, nodes: usize, node: usize) -> std::ops::Range<usize> {
    let (base, extra) = (size / nodes, size % nodes);
    let start = node * base + node.min(extra);
    start..start + base + usize::from(node < extra)
}

#[derive(Serialize, Deserialize)]
enum ToLauncher {
    /// The agent of node `node` runs `ranks` (rank, PID).
    Hello { node: usize, ranks: Vec<(usize, i32)> },
    /// Phase one on the agent's node is over.
    Held { outcomes: Vec<Outcome> },
}

#[derive(Serialize, Deserialize)]
enum ToAgent {
    /// Every rank checkpoints into its place in the global snapshot `dir` and holds.
    Hold { dir: String },
    /// The held ranks go on.
    Go,
}

/// A node agent as the launcher knows it: its channel and the ranks (rank, PID) it runs.
type Link = (Channel, Vec<(usize, i32)>);

/// The launcher's side: the link to each node's agent.
pub struct Agents {
    links: Mutex<Vec<Link>>,
}

impl Agents {
    /// Phase one through every agent: the outcomes, by rank; an agent that cannot be
    /// reached fails its ranks.
    pub(super) fn hold(&self, dir: &str) -> (Vec<Outcome>, Release) {
        let mut links = self.links.lock();
        let asked: Vec<std::io::Result<()>> = links
            .iter()
            .map(|(channel, _)| channel.send(&ToAgent::Hold { dir: dir.to_string() }))
            .collect();
        let mut outcomes = Vec::new();
        let mut held = Vec::new();
        for ((channel, ranks), asked) in links.iter_mut().zip(asked) {
            let answer = asked.and_then(|()| channel.receive::<ToLauncher>());
            match answer {
                Ok(ToLauncher::Held { outcomes: theirs }) => {
                    outcomes.extend(theirs);
                    if let Ok(clone) = channel.try_clone() {
                        held.push(clone);
                    }
                }
                other => {
                    let why = match other {
                        Err(e) => format!("its node agent is unreachable: {e}"),
                        Ok(_) => "its node agent answered out of turn".to_string(),
                    };
                    outcomes.extend(ranks.iter().map(|&(rank, _)| (rank, Err(why.clone()))));
                }
            }
        }
        outcomes.sort_by_key(|(rank, _)| *rank);
        (outcomes, Release::Agents(held))
    }
}

/// Phase two through one agent.
pub(super) fn go(channel: &Channel) {
    let _ = channel.send(&ToAgent::Go);
}

/// What the launcher of a job across nodes starts: fresh (`command` with `env`), or
/// from the global snapshot `restart`.
pub struct Launch {
    pub size: usize,
    pub command: Vec<OsString>,
    pub env: Vec<(String, OsString)>,
    pub restart: Option<PathBuf>,
    /// The job, its ranks not yet known.
    pub job: endpoint::Job,
}

/// The launcher of a job across nodes: starts the agents with `srun`, waits until each
/// has reported its ranks, then serves the job's checkpoints and waits for `srun`: the
/// job's status.
pub fn launch(launch: &Launch) -> std::io::Result<i32> {
    let nodes: usize =
        std::env::var("SLURM_JOB_NUM_NODES").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
    let secret = channel::new_secret()?;
    let listener = listener()?;
    let port = listener.local_addr()?.port();
    let signal = super::checkpoint_signal(&launch.job.params);
    launcher::install_signal_handlers(&signal.into_iter().collect::<Vec<_>>());

    let mut srun = Command::new("srun");
    srun.args([
        format!("--nodes={nodes}"),
        format!("--ntasks={nodes}"),
        "--ntasks-per-node=1".to_string(),
        "--kill-on-bad-exit=1".to_string(),
    ]);
    srun.arg(std::env::current_exe()?).arg("--node-agent").arg("--").args(&launch.command);
    srun.envs(launch.env.iter().map(|(k, v)| (k, v)));
    srun.env(channel::SECRET_VARIABLE, &secret)
        .env(PORT_VARIABLE, port.to_string())
        .env(SIZE_VARIABLE, launch.size.to_string());
    if let Some(dir) = &launch.restart {
        srun.env(RESTART_VARIABLE, dir);
    }
    let launcher_pid = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes system calls.
    unsafe { srun.pre_exec(move || crate::framework::end_with_parent(launcher_pid)) };
    let srun_pid = srun.spawn()?.id() as i32;

    let reported = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
    let accepting = reported.clone();
    std::thread::Builder::new()
        .name("opalcrs-agents".into())
        .spawn(move || accept_agents(listener, &secret, nodes, &accepting))?;
    let until = Instant::now() + AGENT_DEADLINE;
    let links = loop {
        let (list, changed) = &*reported;
        let mut list = list.lock();
        if list.len() == nodes {
            break std::mem::take(&mut *list);
        }
        // SAFETY: looks whether srun ended, without reaping it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let ended = unsafe {
            libc::waitid(
                libc::P_PID,
                srun_pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        } == 0
            && unsafe { info.si_pid() } == srun_pid;
        if ended || Instant::now() >= until {
            drop(list);
            if !ended {
                eprintln!(
                    "opal-run: the node agents did not all report within {}s: ending the job",
                    AGENT_DEADLINE.as_secs()
                );
                launcher::end_all(&[srun_pid], &[libc::SIGTERM, libc::SIGTERM]);
            }
            return Ok(launcher::supervise(&[srun_pid], &mut |_| {}));
        }
        changed.wait_for(&mut list, Duration::from_millis(100));
    };
    let mut ranks = vec![0; launch.size];
    for (_, theirs) in &links {
        for &(rank, pid) in theirs {
            if let Some(slot) = ranks.get_mut(rank) {
                *slot = pid;
            }
        }
    }
    let job = endpoint::Job {
        launcher_pid: launch.job.launcher_pid,
        ranks,
        base: launch.job.base.clone(),
        name: launch.job.name.clone(),
        params: launch.job.params.clone(),
        agents: Some(Arc::new(Agents { links: Mutex::new(links) })),
    };
    Ok(super::serve_and_supervise(job, &[srun_pid], signal))
}

/// The launcher's TCP listener, on this node's address in Slurm (`NodeAddr` of
/// `SLURMD_NODENAME`): srun's connections to the nodes come from it, so it is what the
/// agents are told (`SLURM_LAUNCH_NODE_IPADDR`, which the batch step itself does not
/// have). On every address of the node, with a warning, when that address cannot be
/// learnt or bound.
fn listener() -> std::io::Result<TcpListener> {
    let node = std::env::var("SLURMD_NODENAME").unwrap_or_default();
    let shown = (!node.is_empty())
        .then(|| {
            Command::new("scontrol")
                .args(["show", "node", "-o", &node])
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .ok()
                .filter(|out| out.status.success())
        })
        .flatten();
    let text = shown.map(|out| String::from_utf8_lossy(&out.stdout).into_owned());
    let address = text
        .as_deref()
        .and_then(|t| t.split_whitespace().find_map(|w| w.strip_prefix("NodeAddr=")));
    let why = match address.map(|address| (address, TcpListener::bind((address, 0)))) {
        Some((_, Ok(listener))) => return Ok(listener),
        Some((address, Err(e))) => format!("cannot listen on {address}: {e}"),
        None => format!("no NodeAddr of node '{node}' from scontrol"),
    };
    eprintln!("opal-run: warning: {why}: the job's port listens on every address");
    TcpListener::bind(("0.0.0.0", 0))
}

/// Accepts the agents' connections, each handshake on a thread of its own (a silent
/// stranger holds up no agent): each that proves it holds the secret and reports a
/// node not yet reported is added; any other connection is closed, nothing done.
fn accept_agents(
    listener: TcpListener,
    secret: &str,
    nodes: usize,
    reported: &Arc<(Mutex<Vec<Link>>, Condvar)>,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let peer = stream.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
        if handshakes.load(std::sync::atomic::Ordering::SeqCst) >= MAX_HANDSHAKES {
            eprintln!("opal-run: warning: refused a connection from {peer}: too many at once");
            continue;
        }
        handshakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (secret, seen, reported, open) =
            (secret.to_string(), seen.clone(), reported.clone(), handshakes.clone());
        let spawned =
            std::thread::Builder::new().name("opalcrs-agent-auth".into()).spawn(move || {
                let why = match Channel::accept(stream, &secret) {
                    Err(e) => Some(e.to_string()),
                    Ok(mut channel) => match channel.receive::<ToLauncher>() {
                        Ok(ToLauncher::Hello { node, ranks }) if node < nodes => {
                            let mut seen = seen.lock();
                            if seen.contains(&node) {
                                Some(format!("node {node} reported already"))
                            } else {
                                seen.push(node);
                                let (list, changed) = &*reported;
                                list.lock().push((channel, ranks));
                                changed.notify_all();
                                None
                            }
                        }
                        _ => Some("no report of a node".to_string()),
                    },
                };
                if let Some(why) = why {
                    eprintln!("opal-run: warning: refused a connection from {peer}: {why}");
                }
                open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        if spawned.is_err() {
            handshakes.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// `opal-run --node-agent -- COMMAND`, started by the launcher through `srun` on each
/// node: starts (or restarts) this node's ranks, relays the job's checkpoints to them
/// and waits for them: their status.
pub fn node_agent(command: &[OsString], params: &crate::params::Params, verbose: bool) -> i32 {
    match run_agent(command, params, verbose) {
        Ok(status) => status,
        Err(why) => {
            eprintln!("opal-run --node-agent: {why}");
            crate::tools::restart::EXIT_CANNOT_RESTART
        }
    }
}

fn run_agent(
    command: &[OsString],
    params: &crate::params::Params,
    verbose: bool,
) -> Result<i32, String> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let secret = var(channel::SECRET_VARIABLE)?;
    let port = var(PORT_VARIABLE)?;
    let size: usize = var(SIZE_VARIABLE)?.parse().map_err(|_| "bad job size".to_string())?;
    let restart = std::env::var_os(RESTART_VARIABLE).map(PathBuf::from);
    let node: usize = var("SLURM_NODEID")?.parse().map_err(|_| "bad SLURM_NODEID".to_string())?;
    let nodes: usize = var("SLURM_STEP_NUM_NODES")
        .or_else(|_| var("SLURM_NNODES"))?
        .parse()
        .map_err(|_| "bad node count".to_string())?;
    let host = var("SLURM_LAUNCH_NODE_IPADDR")?;
    // Single-threaded here: the ranks get none of the agent's own variables.
    for name in [channel::SECRET_VARIABLE, PORT_VARIABLE, SIZE_VARIABLE, RESTART_VARIABLE] {
        std::env::remove_var(name);
    }
    let channel = Channel::connect(&format!("{host}:{port}"), &secret)
        .map_err(|e| format!("cannot reach the launcher at {host}:{port}: {e}"))?;
    launcher::install_signal_handlers(&[]);
    let mine = block(size, nodes, node);
    let pids = match &restart {
        None => {
            launcher::start(command, mine.clone(), size, &[], &super::launcher_only_variables())
                .map_err(|e| format!("cannot start {}: {e}", command[0].to_string_lossy()))?
        }
        Some(global) => {
            let mut pids = Vec::with_capacity(mine.len());
            for rank in mine.clone() {
                let started =
                    super::prepare_rank(global, rank, params, verbose).and_then(|prepared| {
                        super::start_rank(&prepared, rank, rank - mine.start, size)
                    });
                match started {
                    Ok(pid) => pids.push(pid),
                    Err(e) => {
                        launcher::end_all(&pids, &[]);
                        return Err(format!("rank {rank}: {e}"));
                    }
                }
            }
            pids
        }
    };
    let ranks: Vec<(usize, i32)> = mine.zip(pids.iter().copied()).collect();
    channel
        .send(&ToLauncher::Hello { node, ranks: ranks.clone() })
        .map_err(|e| format!("cannot report to the launcher: {e}"))?;
    let serving = ranks.clone();
    std::thread::Builder::new()
        .name("opalcrs-agent".into())
        .spawn(move || serve_launcher(channel, &serving))
        .map_err(|e| format!("cannot serve the launcher: {e}"))?;
    Ok(launcher::supervise(&pids, &mut |_| {}))
}

/// Relays the launcher's requests to this node's ranks; once the launcher is gone the
/// ranks are ended.
fn serve_launcher(mut channel: Channel, ranks: &[(usize, i32)]) {
    let mut held = Vec::new();
    loop {
        match channel.receive::<ToAgent>() {
            Ok(ToAgent::Hold { dir }) => {
                endpoint::release_local(&held);
                let (outcomes, streams) = endpoint::hold_local(ranks, &dir);
                held = streams;
                if channel.send(&ToLauncher::Held { outcomes }).is_err() {
                    break;
                }
            }
            Ok(ToAgent::Go) => endpoint::release_local(&std::mem::take(&mut held)),
            Err(_) => break,
        }
    }
    endpoint::release_local(&held);
    let pids: Vec<i32> = ranks.iter().map(|&(_, pid)| pid).collect();
    eprintln!("opal-run --node-agent: the launcher is gone: ending this node's ranks");
    launcher::end_all(&pids, &[libc::SIGTERM]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_laid_out_in_blocks_over_the_nodes() {
        assert_eq!((0..2).map(|n| block(4, 2, n)).collect::<Vec<_>>(), vec![0..2, 2..4]);
        assert_eq!((0..3).map(|n| block(5, 3, n)).collect::<Vec<_>>(), vec![0..2, 2..4, 4..5]);
        assert_eq!(block(1, 2, 1), 1..1);
    }

    #[test]
    fn only_an_allocation_of_several_nodes_goes_across_nodes() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert!(across_nodes_in(&env(&[("SLURM_JOB_ID", "7"), ("SLURM_JOB_NUM_NODES", "2")])));
        assert!(!across_nodes_in(&env(&[("SLURM_JOB_ID", "7"), ("SLURM_JOB_NUM_NODES", "1")])));
        assert!(!across_nodes_in(&env(&[("SLURM_JOB_NUM_NODES", "2")])));
    }
}
