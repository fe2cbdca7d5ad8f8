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
//!
//! A fresh agent does not start its ranks itself: a forked child of it, the *node
//! launcher*, runs the one-node launcher code (ranks as its children, its own control
//! socket). So a criu job has, on each node, a tree without the agent (whose channel
//! must not be in an image, and whose restored copy would be useless): on the job
//! checkpoint the agent asks its node launcher to dump its tree into
//! `opal_node_<node>.ckpt` in the global snapshot, and a restarting agent restores that
//! image as its child. self ranks are asked by the agent directly, as on one node.

use super::channel::{self, Channel};
use super::endpoint::{self, Outcome, Release};
use super::global::{self, GlobalMetadata};
use super::launcher;
use crate::framework::RestartOutcome;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::FromRawFd;
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
    /// The agent of node `node` could not start or restore its ranks (it says why on
    /// its own output) and ends with `status`: the job's status, rather than srun's once
    /// it has killed the other agents.
    Failed { node: usize, status: i32 },
}

/// What the agents reported before the job runs: each node's link, and the first
/// node that failed (node, status).
#[derive(Default)]
struct Reports {
    links: Vec<Link>,
    failed: Option<(usize, i32)>,
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

    /// The ranks each node holds, by node, of a job of `size`.
    pub(super) fn layout(&self, size: usize) -> Vec<std::ops::Range<usize>> {
        let nodes = self.links.lock().len();
        (0..nodes).map(|node| block(size, nodes, node)).collect()
    }
}

/// The number of nodes of the Slurm allocation this process runs in (1 outside one).
pub(super) fn allocated_nodes() -> usize {
    if !across_nodes() {
        return 1;
    }
    std::env::var("SLURM_JOB_NUM_NODES").ok().and_then(|n| n.parse().ok()).unwrap_or(1)
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
    // The agents are opal-run, installed next to this tool (opal-restart restarts jobs
    // too, and has no --node-agent).
    let agent = std::env::current_exe()?.with_file_name("opal-run");
    srun.arg(agent).arg("--node-agent").arg("--").args(&launch.command);
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

    let reported = Arc::new((Mutex::new(Reports::default()), Condvar::new()));
    let accepting = reported.clone();
    std::thread::Builder::new()
        .name("opalcrs-agents".into())
        .spawn(move || accept_agents(listener, &secret, nodes, &accepting))?;
    let until = Instant::now() + AGENT_DEADLINE;
    let links = loop {
        let (list, changed) = &*reported;
        let mut list = list.lock();
        if list.links.len() == nodes {
            break std::mem::take(&mut list.links);
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
            if ended && list.failed.is_none() {
                // A failing agent reports before it exits; its report may still be on
                // its way.
                changed.wait_for(&mut list, Duration::from_secs(1));
            }
            let failed = list.failed;
            drop(list);
            if !ended {
                eprintln!(
                    "opal-run: the node agents did not all report within {}s: ending the job",
                    AGENT_DEADLINE.as_secs()
                );
                launcher::end_all(&[srun_pid], &[libc::SIGTERM, libc::SIGTERM]);
            }
            let status = launcher::supervise(&[srun_pid], &srun_named, &mut |_| {});
            return Ok(failed.map_or(status, |(_, status)| status));
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
    Ok(super::serve_and_supervise(job, &[srun_pid], &srun_named, signal))
}

/// Names the launcher's child across nodes.
fn srun_named(_: usize) -> String {
    "srun of the node agents".to_string()
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
    reported: &Arc<(Mutex<Reports>, Condvar)>,
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
                                list.lock().links.push((channel, ranks));
                                changed.notify_all();
                                None
                            }
                        }
                        Ok(ToLauncher::Failed { node, status }) if node < nodes => {
                            let (list, changed) = &*reported;
                            list.lock().failed.get_or_insert((node, status));
                            changed.notify_all();
                            None
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
    let port = var(PORT_VARIABLE)?;
    let size: usize = var(SIZE_VARIABLE)?.parse().map_err(|_| "bad job size".to_string())?;
    let restart = std::env::var_os(RESTART_VARIABLE).map(PathBuf::from);
    let node: usize = var("SLURM_NODEID")?.parse().map_err(|_| "bad SLURM_NODEID".to_string())?;
    let nodes: usize = var("SLURM_STEP_NUM_NODES")
        .or_else(|_| var("SLURM_NNODES"))?
        .parse()
        .map_err(|_| "bad node count".to_string())?;
    let host = var("SLURM_LAUNCH_NODE_IPADDR")?;
    let mine = block(size, nodes, node);
    let criu_restart = match &restart {
        Some(global) => {
            let metadata = GlobalMetadata::read(global).map_err(|e| e.message().to_string())?;
            (!metadata.nodes.is_empty()).then_some(metadata)
        }
        None => None,
    };
    // A fresh node launcher is forked before the secret is read and the channel exists,
    // so that its tree (an image, for criu) has neither.
    let fresh = restart.is_none().then(|| start_node_launcher(command, mine.clone(), size, params));
    let secret =
        forget_agent_variables().ok_or(format!("{} is not set", channel::SECRET_VARIABLE))?;
    let address = format!("{host}:{port}");
    let failed = |why: String| {
        report_failure(&address, &secret, node);
        why
    };
    let fresh = fresh.transpose().map_err(failed)?;
    launcher::install_signal_handlers(&[]);
    // The tree of the node launcher (its PID), if the ranks are below one; the ranks.
    // All started before the launcher is reached, so that a node that cannot start
    // them reports nothing.
    let (tree, pids) = match (&restart, fresh, criu_restart) {
        (_, Some((tree, pids)), _) => (Some(tree), pids),
        (Some(global), None, Some(metadata)) => {
            let (tree, pids) =
                restore_node(global, &metadata, node, &mine, params, verbose).map_err(failed)?;
            (Some(tree), pids)
        }
        (Some(global), None, None) => {
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
                        return Err(failed(format!("rank {rank}: {e}")));
                    }
                }
            }
            (None, pids)
        }
        (None, None, _) => unreachable!("a fresh start has its node launcher"),
    };
    let children = tree.map_or_else(|| pids.clone(), |pid| vec![pid]);
    let channel = Channel::connect(&address, &secret).map_err(|e| {
        launcher::end_all(&children, &[]);
        format!("cannot reach the launcher at {address}: {e}")
    })?;
    let ranks: Vec<(usize, i32)> = mine.zip(pids.iter().copied()).collect();
    channel
        .send(&ToLauncher::Hello { node, ranks: ranks.clone() })
        .map_err(|e| format!("cannot report to the launcher: {e}"))?;
    let serving = ranks.clone();
    std::thread::Builder::new()
        .name("opalcrs-agent".into())
        .spawn(move || serve_launcher(channel, &serving, tree.map(|pid| (pid, node))))
        .map_err(|e| format!("cannot serve the launcher: {e}"))?;
    let first = ranks.first().map_or(0, |&(rank, _)| rank);
    let name = move |index: usize| match tree {
        Some(_) => format!("the node launcher of ranks {first}-{}", first + ranks.len() - 1),
        None => format!("rank {}", first + index),
    };
    Ok(launcher::supervise(&children, &name, &mut |_| {}))
}

/// Tells the launcher at `address` that this node's ranks could not be started, so
/// that the job ends with the agent's status; best effort: the agent says why on its
/// own output and ends either way.
fn report_failure(address: &str, secret: &str, node: usize) {
    let status = crate::tools::restart::EXIT_CANNOT_RESTART;
    if let Ok(channel) = Channel::connect(address, secret) {
        let _ = channel.send(&ToLauncher::Failed { node, status });
    }
}

/// Forks the node launcher: it leads a session of its own (as the root of a tree that
/// CRIU dumps must), ends with the agent, starts the ranks `mine` as its children and
/// serves its control socket as a one-node launcher does. Its PID and the ranks'.
/// Called while the agent has one thread.
fn start_node_launcher(
    command: &[OsString],
    mine: std::ops::Range<usize>,
    size: usize,
    params: &crate::params::Params,
) -> Result<(i32, Vec<i32>), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("no pipe for the node launcher: {}", std::io::Error::last_os_error()));
    }
    let agent = std::process::id() as libc::pid_t;
    // SAFETY: the agent has one thread; the child goes on in Rust and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("cannot fork the node launcher: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: the pipe's ends are this process's own.
        let report = unsafe {
            libc::close(fds[0]);
            std::fs::File::from_raw_fd(fds[1])
        };
        run_node_launcher(command, mine, size, params, agent, report);
    }
    // SAFETY: as above.
    let mut answer = unsafe {
        libc::close(fds[1]);
        std::fs::File::from_raw_fd(fds[0])
    };
    let mut said = String::new();
    let _ = answer.read_to_string(&mut said);
    let pids: Option<Vec<i32>> =
        said.strip_prefix("ok").map(|rest| rest.split_whitespace().flat_map(str::parse).collect());
    match pids {
        Some(pids) if pids.len() == mine.len() => Ok((pid, pids)),
        _ => {
            launcher::end_all(&[pid], &[]);
            Err(said.strip_prefix("error ").map_or_else(
                || "the node launcher did not start".to_string(),
                |why| why.trim().to_string(),
            ))
        }
    }
}

/// Removes the agent's own variables from the environment, so that no rank gets them:
/// the secret, which is also wiped where the environment held it (a node launcher's
/// memory goes into its node's image). Called while the process has one thread.
fn forget_agent_variables() -> Option<String> {
    let secret = std::env::var(channel::SECRET_VARIABLE).ok();
    let name = std::ffi::CString::new(channel::SECRET_VARIABLE).expect("a plain name");
    // SAFETY: getenv's string is this process's own, writable; one thread runs.
    unsafe {
        let value = libc::getenv(name.as_ptr());
        if !value.is_null() {
            std::ptr::write_bytes(value, 0, libc::strlen(value));
        }
    }
    for name in [channel::SECRET_VARIABLE, PORT_VARIABLE, SIZE_VARIABLE, RESTART_VARIABLE] {
        std::env::remove_var(name);
    }
    secret
}

/// The node launcher's life (see [`start_node_launcher`]); its status is its ranks'.
fn run_node_launcher(
    command: &[OsString],
    mine: std::ops::Range<usize>,
    size: usize,
    params: &crate::params::Params,
    agent: libc::pid_t,
    mut report: std::fs::File,
) -> ! {
    forget_agent_variables();
    // SAFETY: plain system call.
    unsafe { libc::setsid() };
    if crate::framework::end_with_parent(agent).is_err() {
        std::process::exit(crate::tools::restart::EXIT_CANNOT_RESTART);
    }
    launcher::install_signal_handlers(&[]);
    let first = mine.start;
    let started = launcher::start(command, mine, size, &[], &super::launcher_only_variables());
    let pids = match started {
        Ok(pids) => pids,
        Err(e) => {
            let _ = writeln!(report, "error cannot start {}: {e}", command[0].to_string_lossy());
            std::process::exit(crate::tools::restart::EXIT_CANNOT_RESTART);
        }
    };
    let listed: Vec<String> = pids.iter().map(i32::to_string).collect();
    let _ = writeln!(report, "ok {}", listed.join(" "));
    drop(report);
    // The job's interval checkpoints are the launcher's, not each node's.
    let mut params = params.clone();
    let _ = params.set("opal_cr_checkpoint_interval", "0", crate::params::Source::Default);
    let own = std::process::id() as i32;
    let job = endpoint::Job {
        launcher_pid: own,
        ranks: pids.clone(),
        base: crate::runtime::snapshot_base_dir(&params),
        name: global::default_series_name(own),
        params,
        agents: None,
    };
    std::process::exit(super::serve_and_supervise(job, &pids, &super::rank_named(first), None))
}

/// Restores node `node`'s image of the criu global snapshot `global` (`metadata` its
/// metadata) as the agent's child, after checking that this job has as many nodes
/// and that the image holds the ranks `mine`: the restored node launcher's PID and
/// its ranks'. Its compatibility with this node is checked by the restore.
fn restore_node(
    global: &std::path::Path,
    metadata: &GlobalMetadata,
    node: usize,
    mine: &std::ops::Range<usize>,
    params: &crate::params::Params,
    verbose: bool,
) -> Result<(i32, Vec<i32>), String> {
    let image = global::node_snapshot(global, node);
    let recorded = GlobalMetadata::read(&image).map_err(|e| e.message().to_string())?;
    if metadata.nodes.get(node) != Some(mine) || recorded.ranks.len() != mine.len() {
        return Err(format!(
            "node {node}: {} does not hold ranks {}-{} of a job of {} nodes",
            image.display(),
            mine.start,
            mine.end.saturating_sub(1),
            metadata.nodes.len()
        ));
    }
    let target = crate::restart::Target::path(image.clone());
    match crate::restart::run(&target, params, verbose, &mut |_| true) {
        Ok(RestartOutcome::Spawned { pid, .. }) => match restored_ranks(pid, &recorded.ranks) {
            Ok(pids) => Ok((pid, pids)),
            Err(why) => {
                launcher::end_all(&[pid], &[]);
                Err(format!("node {node}: {why}"))
            }
        },
        Ok(RestartOutcome::Rejected(why)) => Err(format!("node {node}: {why}")),
        Ok(RestartOutcome::Exited(status)) => {
            Err(format!("node {node}: the restore of {} ended ({status})", image.display()))
        }
        Err((_, e)) => Err(format!("node {node}: {}", e.message())),
    }
}

/// The PIDs, as seen here, of the ranks the restored node launcher `tree` has as its
/// children, by the PIDs `recorded` at the dump (the same, unless the restore went
/// into a PID namespace of its own: the innermost of a child's `NSpid` is recorded).
fn restored_ranks(tree: i32, recorded: &[i32]) -> Result<Vec<i32>, String> {
    let children: Vec<i32> = std::fs::read_dir(format!("/proc/{tree}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<i32>>()
        })
        .collect();
    let innermost = |pid: i32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
        line.split_whitespace().last()?.parse::<i32>().ok()
    };
    recorded
        .iter()
        .map(|&was| {
            children.iter().copied().find(|&child| innermost(child) == Some(was)).ok_or_else(|| {
                format!("no rank of PID {was} below the restored node launcher {tree}")
            })
        })
        .collect()
}

/// Refuses a node's tree (the node launcher `root` and `ranks`) that holds a TCP
/// connection to an address other than loopback: its image could not be restored on
/// another node (the address is this node's), and CRIU, which dumps connections
/// (`crs_criu_tcp_established=1`, the default), would not say so.
fn leaves_the_node(root: i32, ranks: &[(usize, i32)]) -> Result<(), String> {
    let off: Vec<String> = crate::tcp::connections(root)
        .into_iter()
        .filter(|c| !c.remote.ip().is_loopback())
        .map(|c| match ranks.iter().find(|&&(_, pid)| pid == c.pid) {
            Some((rank, _)) => format!("{c}, rank {rank}"),
            None => c.to_string(),
        })
        .collect();
    if off.is_empty() {
        return Ok(());
    }
    Err(format!(
        "TCP connections off the node ({}), which an image restored on another node cannot have",
        off.join("; ")
    ))
}

/// Relays the launcher's requests to this node's ranks (criu ranks below the node
/// launcher `tree` (PID, node) as one dump of its tree); once the launcher is gone the
/// ranks are ended.
fn serve_launcher(mut channel: Channel, ranks: &[(usize, i32)], tree: Option<(i32, usize)>) {
    let mut held = Vec::new();
    loop {
        match channel.receive::<ToAgent>() {
            Ok(ToAgent::Hold { dir }) => {
                endpoint::release_local(&held);
                let criu = endpoint::components_of(ranks)
                    .is_ok_and(|c| !c.is_empty() && c.iter().all(|c| c == "criu"));
                let outcomes = match tree {
                    Some((pid, node)) if criu => {
                        held = Vec::new();
                        let outcome = leaves_the_node(pid, ranks)
                            .and_then(|()| {
                                endpoint::checkpoint_tree_of(
                                    pid,
                                    &global::node_series_name(node),
                                    &dir,
                                )
                            })
                            .map(|()| "criu".to_string())
                            .map_err(|why| {
                                format!("node {node} ({}): {why}", crate::output::hostname())
                            });
                        ranks.iter().map(|&(rank, _)| (rank, outcome.clone())).collect()
                    }
                    _ => {
                        let (outcomes, streams) = endpoint::hold_local(ranks, &dir);
                        held = streams;
                        outcomes
                    }
                };
                if channel.send(&ToLauncher::Held { outcomes }).is_err() {
                    break;
                }
            }
            Ok(ToAgent::Go) => endpoint::release_local(&std::mem::take(&mut held)),
            Err(_) => break,
        }
    }
    endpoint::release_local(&held);
    let mut pids: Vec<i32> = tree.map(|(pid, _)| pid).into_iter().collect();
    pids.extend(ranks.iter().map(|&(_, pid)| pid));
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
    fn restored_ranks_are_found_among_the_children_by_their_recorded_pids() {
        let mut children: Vec<std::process::Child> =
            (0..2).map(|_| Command::new("sleep").arg("10").spawn().unwrap()).collect();
        let pids: Vec<i32> = children.iter().map(|c| c.id() as i32).collect();
        let own = std::process::id() as i32;
        let reversed: Vec<i32> = pids.iter().rev().copied().collect();
        let found = restored_ranks(own, &reversed);
        let missing = restored_ranks(own, &[pids[0], i32::MAX]);
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(found, Ok(reversed));
        assert_eq!(
            missing,
            Err(format!("no rank of PID {} below the restored node launcher {own}", i32::MAX))
        );
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
