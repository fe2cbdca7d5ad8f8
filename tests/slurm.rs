//! Batch jobs that outlive their time limit, on a real Slurm: a private cluster
//! (munged, slurmctld and one slurmd per node of Debian's slurm-wlm 22.05, started here
//! with their own configuration, key, state directories and ports, with Slurm's cgroup
//! plugins, and stopped by PID at the end; see [`Cluster`]) runs the job scripts of
//! examples/slurm/ on the example programs. One node runs on localhost; two nodes each
//! in network and UTS namespaces of their own, where requeued jobs move from one node to
//! the other (`requeued_jobs_restart_on_another_node_inside_the_new_jobs_cgroups`).
//!
//! On one node, four jobs run at once, each for a computation whose result the test knows:
//! - self and criu, each warned twice by `scancel --signal=USR1 --batch` (what
//!   `--signal=B:USR1@N` does, without waiting for a time limit), so each finishes in
//!   its third run after two automatic requeues;
//! - self and criu with a real one-minute time limit and `--signal=B:USR1@10`, whose
//!   work (120 s) needs several runs.
//!
//! Every job must end COMPLETED with the exact result; the test prints the requeues,
//! the work lost per requeue and the durations (`--nocapture` shows them). It takes
//! about 2.5 minutes (the time-limit jobs); `OPALCRS_SLURM_SHORT=1` leaves those out
//! (about 35 s). It needs root (Slurm's daemons and CRIU); it installs Slurm with
//! scripts/install-slurm.sh, and says why on stderr and passes when it cannot. The
//! criu jobs need CRIU >= 4 and are left out without it.
//!
//! A job of 4 ranks over 2 nodes (`opal-run -np 4` starting node agents with srun) is
//! checkpointed, requeued and restarted on another placement; a stranger on its
//! launcher's port is refused; a rank failing a checkpoint across nodes is named; a job
//! whose node is killed is requeued by Slurm and restarts on the nodes left.
//!
//! The other tests run `opal-run` alone, as the job scripts do: fresh start,
//! checkpoint on USR1 with exit status 85, restart, for self and criu; series names
//! from the Slurm job; exit codes. And what a restore on another node needs: a tree
//! restored into the cgroups of whoever restores it; a criu snapshot of another kernel
//! or executable refused.

mod common;
use common::*;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Steps of the jobs warned by scancel, and after how many steps of a run they are warned.
const SHORT_STEPS: u64 = 300;
const SHORT_WARN_AFTER: usize = 100;
const SHORT_WARNINGS: usize = 2;
/// Steps of the jobs with a real time limit (50 ms each: 120 s for a 60 s limit).
const LONG_STEPS: u64 = 2400;
const STEP_MS: u64 = 50;
/// The whole test, cluster included, must end within this.
const DEADLINE: Duration = Duration::from_secs(270);
/// A run may lose at most this many steps (1 s of work) to its checkpoint.
const MAX_LOST_STEPS: u64 = 20;

/// The example programs' computation.
fn expected_value(steps: u64) -> u64 {
    (1..=steps).fold(0u64, |value, step| {
        value
            .wrapping_mul(6364136223846793005)
            .wrapping_add(step.wrapping_mul(1442695040888963407))
            .wrapping_add(1)
    })
}

/// Says why and returns true when this machine cannot run a private Slurm.
fn skipped_without_slurm() -> bool {
    let missing = slurm_missing();
    if let Some(why) = &missing {
        eprintln!("skipped: Slurm test: {why}");
    }
    missing.is_some()
}

/// A private Slurm of `nodes` nodes in the sandbox (see [`Cluster::start`]).
fn start_private_cluster(sb: &Sandbox, nodes: usize) -> Cluster {
    Cluster::start(&sb.path("slurm"), nodes)
        .unwrap_or_else(|e| panic!("cannot start the private Slurm cluster: {e}"))
}

fn slurm_missing() -> Option<String> {
    if !is_root() {
        return Some("needs root to run Slurm's daemons".into());
    }
    let script = repo().join("scripts/install-slurm.sh");
    match Command::new("bash").arg(&script).stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "scripts/install-slurm.sh failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run scripts/install-slurm.sh: {e}")),
    }
}

fn criu_missing() -> Option<String> {
    match opalcrs::components::criu::binary::find(None) {
        Ok(found) if found.version.0 >= 4 => None,
        Ok(found) => Some(format!("{} is CRIU {:?}", found.path.display(), found.version)),
        Err(e) => Some(e.to_string()),
    }
}

fn opal_run() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_opal-run"))
}

/// `count` different TCP ports that nothing listens on right now, for a cluster's
/// daemons: below the ephemeral range, so that no outgoing connection takes one before
/// its daemon binds it, and never handed out twice in this run (tests start clusters at
/// the same time, and a port bound and closed can be handed out again).
fn free_ports(count: usize) -> Vec<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10000u16, ephemeral.max(10100));
    let span = u32::from(high - low);
    let mut given = GIVEN.lock().unwrap();
    // Test binaries running at once start at different places.
    let start = std::process::id() % span;
    let mut ports = Vec::with_capacity(count);
    for offset in 0..span {
        if ports.len() == count {
            break;
        }
        let port = low + ((start + offset) % span) as u16;
        if !given.contains(&port) && TcpListener::bind(("0.0.0.0", port)).is_ok() {
            given.push(port);
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), count, "no {count} free ports below {high}");
    ports
}

fn short_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    assert_eq!(unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) }, 0);
    let name =
        String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())])
            .into_owned();
    name.split('.').next().unwrap().to_string()
}

/// A cgroup directory of one v1 hierarchy, removed when dropped with what is below it
/// (the processes in it, the test's own, are ended first).
struct CgroupDir {
    dir: PathBuf,
}

impl CgroupDir {
    /// `/sys/fs/cgroup/<controller>/<name>`, made; None when the hierarchy is not there.
    fn create(controller: &str, name: &str) -> Option<CgroupDir> {
        let hierarchy = Path::new("/sys/fs/cgroup").join(controller);
        if !hierarchy.join("cgroup.procs").exists() {
            return None;
        }
        let dir = hierarchy.join(name);
        fs::create_dir_all(&dir).ok()?;
        Some(CgroupDir { dir })
    }

    fn sub(&self, name: &str) -> PathBuf {
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The cgroup of `pid` in this hierarchy, relative to this directory.
    fn of(&self, pid: u32) -> Option<String> {
        let hierarchy = self.dir.parent()?.file_name()?.to_str()?.to_string();
        let name = self.dir.file_name()?.to_str()?.to_string();
        let path = cgroup_of(pid, &hierarchy)?;
        Some(path.strip_prefix(&format!("/{name}")).unwrap_or(&path).to_string())
    }
}

/// The cgroup of `pid` in the v1 hierarchy of `controller`, from /proc/PID/cgroup.
fn cgroup_of(pid: u32, controller: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == controller).then(|| path.to_string())
    })
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        // Deepest first: a cgroup directory is removed by rmdir once it is empty.
        let mut dirs = vec![self.dir.clone()];
        let mut next = 0;
        while next < dirs.len() {
            if let Ok(entries) = fs::read_dir(&dirs[next]) {
                dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
            next += 1;
        }
        for dir in dirs.iter().rev() {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
                kill(pid);
            }
            wait_until(Duration::from_secs(5), || fs::remove_dir(dir).is_ok() || !dir.exists());
        }
    }
}

/// The v1 hierarchies Slurm's cgroup plugins use here (proctrack: freezer; task:
/// memory, and cpuset and devices when asked; jobacct_gather: cpuacct, memory).
const SLURM_CGROUP_CONTROLLERS: [&str; 6] =
    ["freezer", "memory", "cpuset", "devices", "cpuacct", "pids"];

/// A private bridge with one network namespace per node, each joined to it by a veth
/// pair; all removed when dropped.
struct Network {
    bridge: String,
    /// The first three numbers of the bridge's /24 (10.X.Y).
    subnet: String,
    namespaces: Vec<String>,
}

impl Network {
    /// The bridge at `<subnet>.1`, and `nodes` namespaces at `<subnet>.11`, `.12`, ….
    fn create(tag: &str, nodes: usize) -> Result<Network, String> {
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let used = Command::new("ip")
            .args(["-4", "-o", "addr"])
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        let used = String::from_utf8_lossy(&used.stdout).into_owned();
        // Clusters of this run that start at once would otherwise find the same subnet
        // free: two bridges at one address, and one cluster's slurmd reached the other's
        // slurmctld (nodes never idle).
        static GIVEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let mut given = GIVEN.lock().unwrap();
        let pid = std::process::id();
        let subnet = (0..250u32)
            .map(|k| format!("10.{}.{}", 200 + (pid + k) % 50, (pid / 50 + k) % 250))
            .find(|net| !used.contains(&format!(" {net}.")) && !given.contains(net))
            .ok_or("no free 10.x.y.0/24 for the bridge")?;
        given.push(subnet.clone());
        drop(given);
        let mut network = Network { bridge: format!("ocb{tag}"), subnet, namespaces: Vec::new() };
        ip(&["link", "add", &network.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}.1/24", network.subnet), "dev", &network.bridge])?;
        ip(&["link", "set", &network.bridge, "up"])?;
        for i in 0..nodes {
            let ns = format!("opalcrs-{tag}-{i}");
            ip(&["netns", "add", &ns])?;
            network.namespaces.push(ns.clone());
            let veth = format!("ocv{tag}{i}");
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &veth, "master", &network.bridge, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", network.addr(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    fn addr(&self, node: usize) -> String {
        format!("{}.{}", self.subnet, 11 + node)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // A namespace's veth goes with it; the bridge last.
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

/// One slurmd of a cluster.
struct Node {
    name: String,
    addr: String,
    port: u16,
}

/// A private Slurm cluster: munged, slurmctld and one `slurmd -N NODE` per node, with
/// Slurm's cgroup plugins (proctrack/cgroup, task/cgroup, jobacct_gather/cgroup on
/// cgroup v1). Its daemons are our children, ended by PID; the cgroups its slurmd
/// made, its namespaces and bridge are removed when it is dropped.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    nodes: Vec<Node>,
    daemons: Vec<(String, Child)>,
    /// Each node in network and UTS namespaces of its own; None: all on 127.0.0.1.
    network: Option<Network>,
}

impl Cluster {
    /// A cluster of `nodes` nodes. One node runs on 127.0.0.1 with this machine's
    /// hostname; more run each in a network and UTS namespace of its own (hostname and
    /// address on a private bridge), or, when that cannot be set up, all on 127.0.0.1
    /// (said on stderr).
    fn start(dir: &Path, nodes: usize) -> Result<Cluster, String> {
        static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Names unique on the machine: the cgroups slurmd makes are named after its node.
        let tag = format!("{}{serial}", std::process::id() % 100_000);
        for sub in ["munge", "state", "spool", "log"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let key = dir.join("munge/munge.key");
        let mut bytes = vec![0u8; 1024];
        fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
        fs::write(&key, &bytes).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
        fs::set_permissions(dir.join("munge"), fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.join("munge/munge.socket");
        let conf = dir.join("slurm.conf");
        let network = match nodes {
            1 => None,
            _ => Network::create(&tag, nodes)
                .map_err(|why| {
                    eprintln!("Slurm test: nodes share 127.0.0.1 (no namespaces: {why})")
                })
                .ok(),
        };
        let ports = free_ports(nodes + 1);
        let node_list: Vec<Node> = (0..nodes)
            .map(|i| Node {
                name: format!("oc{tag}n{}", i + 1),
                addr: network.as_ref().map_or("127.0.0.1".to_string(), |n| n.addr(i)),
                port: ports[i + 1],
            })
            .collect();
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            conf: conf.clone(),
            nodes: node_list,
            daemons: Vec::new(),
            network,
        };

        let d = |name: &str| dir.join(name).display().to_string();
        let munged = Command::new("munged")
            .args(["--foreground", "--force"])
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--pid-file={}", d("munge/munged.pid")))
            .arg(format!("--log-file={}", d("log/munged.log")))
            .arg(format!("--seed-file={}", d("munge/munged.seed")))
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("log/munged.out")).unwrap())
            .stderr(fs::File::create(dir.join("log/munged.err")).unwrap())
            .spawn()
            .map_err(|e| format!("starting munged: {e}"))?;
        cluster.daemons.push(("munged".into(), munged));
        if !wait_until(Duration::from_secs(10), || socket.exists()) {
            return Err(format!("munged did not create its socket:\n{}", cluster.logs()));
        }

        let host = short_hostname();
        let ctld_addr =
            cluster.network.as_ref().map_or("127.0.0.1".to_string(), |n| format!("{}.1", n.subnet));
        let node_lines: String = cluster
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "NodeName={} NodeHostname={} NodeAddr={} Port={} CPUs=8 RealMemory=1000 State=UNKNOWN\n",
                    n.name, n.name, n.addr, n.port
                )
            })
            .collect();
        let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
        // Slurm's floor for cred_expire is 5 s (less is refused and becomes 120 s); a
        // requeued job waits for it before it starts again. %n: each slurmd has its own
        // spool, PID and log file. SlurmdTimeout: a killed node is set DOWN (and its jobs
        // requeued) within about 30 s, not Slurm's default 5 minutes.
        let text = format!(
            "ClusterName=opalcrstest\n\
             SlurmctldHost={host}({ctld_addr})\n\
             SlurmctldPort={ctld_port}\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             AuthType=auth/munge\n\
             CredType=cred/munge\n\
             AuthInfo=socket={socket},cred_expire=5\n\
             StateSaveLocation={state}\n\
             SlurmdSpoolDir={spool}/%n\n\
             SlurmctldPidFile={ctld_pid}\n\
             SlurmdPidFile={slurmd_pid}\n\
             SlurmctldLogFile={ctld_log}\n\
             SlurmdLogFile={slurmd_log}\n\
             SlurmctldDebug=info\n\
             SlurmdDebug=info\n\
             ProctrackType=proctrack/cgroup\n\
             TaskPlugin=task/cgroup\n\
             JobAcctGatherType=jobacct_gather/cgroup\n\
             JobAcctGatherFrequency=task=1\n\
             AccountingStorageType=accounting_storage/none\n\
             JobCompType=jobcomp/none\n\
             MpiDefault=none\n\
             ReturnToService=2\n\
             SchedulerType=sched/builtin\n\
             SchedulerParameters=sched_interval=1\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\n\
             SlurmdParameters=config_overrides\n\
             MailProg=/bin/true\n\
             MinJobAge=600\n\
             KillWait=5\n\
             InactiveLimit=0\n\
             Waittime=0\n\
             SlurmdTimeout=10\n\
             {node_lines}\
             PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP\n",
            ctld_port = ports[0],
            socket = socket.display(),
            state = d("state"),
            spool = d("spool"),
            ctld_pid = d("slurmctld.pid"),
            slurmd_pid = d("slurmd-%n.pid"),
            ctld_log = d("log/slurmctld.log"),
            slurmd_log = d("log/slurmd-%n.log"),
            names = names.join(","),
        );
        fs::write(&conf, text).unwrap();
        // The cgroup plugins read cgroup.conf beside slurm.conf. Cores are not confined:
        // the nodes share this machine's cores and declare more, so that jobs run side by
        // side; memory is (task/cgroup's memory hierarchy).
        fs::write(
            dir.join("cgroup.conf"),
            "CgroupPlugin=cgroup/v1\n\
             CgroupMountpoint=/sys/fs/cgroup\n\
             ConstrainCores=no\n\
             ConstrainRAMSpace=yes\n\
             ConstrainSwapSpace=no\n\
             ConstrainDevices=no\n",
        )
        .unwrap();

        let start = |name: &str, command: &mut Command, log: &str| -> Result<Child, String> {
            command
                .arg("-D")
                .arg("-f")
                .arg(&conf)
                // Not in their environment: it marks the processes of the jobs alone.
                .env_remove("SLURM_CONF")
                .stdin(Stdio::null())
                .stdout(fs::File::create(dir.join(format!("log/{log}.out"))).unwrap())
                .stderr(fs::File::create(dir.join(format!("log/{log}.err"))).unwrap())
                .spawn()
                .map_err(|e| format!("starting {name}: {e}"))
        };
        let ctld = start("slurmctld", &mut Command::new("slurmctld"), "slurmctld")?;
        cluster.daemons.push(("slurmctld".into(), ctld));
        for (i, node) in cluster.nodes.iter().enumerate() {
            fs::create_dir_all(dir.join("spool").join(&node.name)).unwrap();
            // In its namespaces: nsenter and unshare exec, the shell sets the hostname
            // and execs slurmd, so the child we hold is slurmd.
            let mut command = match &cluster.network {
                Some(network) => {
                    let mut command = Command::new("nsenter");
                    command
                        .arg(format!("--net=/run/netns/{}", network.namespaces[i]))
                        .args(["unshare", "--uts", "--", "sh", "-c"])
                        .arg("hostname \"$0\" && exec slurmd -N \"$0\" \"$@\"")
                        .arg(&node.name);
                    command
                }
                None => {
                    let mut command = Command::new("slurmd");
                    command.args(["-N", &node.name]);
                    command
                }
            };
            let slurmd = start("slurmd", &mut command, &format!("slurmd-{}", node.name))?;
            cluster.daemons.push((format!("slurmd {}", node.name), slurmd));
        }
        let idle = wait_until(Duration::from_secs(30), || {
            cluster.slurm("sinfo", &["-h", "-N", "-o", "%T"]).is_ok_and(|out| {
                out.lines().filter(|state| state.trim() == "idle").count() == nodes
            })
        });
        if !idle {
            return Err(format!("the nodes did not become idle:\n{}", cluster.logs()));
        }
        Ok(cluster)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", &self.conf).stdin(Stdio::null());
        command
    }

    /// Runs a Slurm command; its stdout, or why it failed.
    fn slurm(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out =
            self.command(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{program} {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `scontrol update nodename=NODE state=STATE` (e.g. `drain`, `resume`).
    fn set_node_state(&self, node: &str, state: &str) {
        let mut args =
            vec!["update".to_string(), format!("nodename={node}"), format!("state={state}")];
        if state == "drain" {
            args.push("reason=opalcrs-test".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.slurm("scontrol", &args).unwrap();
    }

    /// `scontrol show job -o ID` as key=value pairs.
    fn job(&self, id: &str) -> Option<Vec<(String, String)>> {
        let out = self.slurm("scontrol", &["show", "job", "-o", id]).ok()?;
        Some(
            out.split_whitespace()
                .filter_map(|word| word.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The ends of the daemons' logs, for a failure message.
    fn logs(&self) -> String {
        let mut names: Vec<String> =
            ["munged.err", "munged.log", "slurmctld.err", "slurmctld.log"].map(String::from).into();
        for node in &self.nodes {
            names.push(format!("slurmd-{}.err", node.name));
            names.push(format!("slurmd-{}.log", node.name));
        }
        let mut text = String::new();
        for name in names {
            let log = fs::read_to_string(self.dir.join("log").join(&name)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().filter(|l| !l.contains("pmix")).collect();
            let tail = &tail[tail.len().saturating_sub(15)..];
            text.push_str(&format!("--- {name}\n{}\n", tail.join("\n")));
        }
        text
    }

    /// Processes of this cluster's jobs that are still there: every process whose
    /// environment names our configuration (the job steps and the programs).
    fn job_processes(&self) -> Vec<i32> {
        let marker = format!("SLURM_CONF={}", self.conf.display());
        let own = std::process::id() as i32;
        let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != own && !self.daemons.iter().any(|(_, c)| c.id() as i32 == pid))
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/environ"))
                    .map(|env| env.split(|&b| b == 0).any(|var| var == marker.as_bytes()))
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first, while the daemons can still end them; then the daemons, by PID.
        if let Ok(ids) = self.slurm("squeue", &["-h", "-o", "%i"]) {
            for id in ids.split_whitespace() {
                let _ = self.slurm("scancel", &[id]);
            }
            wait_until(Duration::from_secs(15), || {
                self.slurm("squeue", &["-h", "-o", "%i"]).map_or(true, |s| s.trim().is_empty())
            });
        }
        for pid in self.job_processes() {
            // SAFETY: kill of a leftover process of this cluster's jobs, by PID.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // slurmctld first: stopped after slurmd, it waits for it for 10 s.
        self.daemons.sort_by_key(|(name, _)| {
            ["slurmctld", "slurmd", "munged"].iter().position(|n| name.starts_with(n))
        });
        for (_, child) in self.daemons.iter_mut() {
            // SAFETY: SIGTERM to a daemon this test started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            stop(child);
        }
        // The cgroups each slurmd made (`slurm_<node>` in every hierarchy); the
        // namespaces and bridge go with `network`.
        for node in &self.nodes {
            for controller in SLURM_CGROUP_CONTROLLERS {
                let dir = Path::new("/sys/fs/cgroup")
                    .join(controller)
                    .join(format!("slurm_{}", node.name));
                if dir.exists() {
                    drop(CgroupDir { dir });
                }
            }
        }
    }
}

/// One run of a job, as its output shows it.
#[derive(Debug, Default, Clone, PartialEq)]
struct Run {
    /// Steps printed in this run, first and last.
    first: Option<u64>,
    last: Option<u64>,
    /// The run ended with a checkpoint (`=== checkpointed`).
    checkpointed: bool,
    /// What opal-run said it did.
    started: Option<String>,
    /// The node it ran on (`hostname` in the job script).
    host: Option<String>,
    /// When the job script began and ended this run (seconds since the epoch).
    began_at: Option<f64>,
    ended_at: Option<f64>,
}

/// The time at the end of `=== … at <seconds>[: …]`.
fn time_of(line: &str) -> Option<f64> {
    let (_, rest) = line.rsplit_once(" at ")?;
    rest.split(':').next()?.trim().parse().ok()
}

/// The runs of a job, from its output: each begins with `=== job <id> run <n>`.
fn runs(output: &str) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for line in output.lines() {
        if line.starts_with("=== job ") {
            let host = line.split(" on ").nth(1).and_then(|rest| rest.split(" at ").next());
            runs.push(Run {
                began_at: time_of(line),
                host: host.map(str::to_string),
                ..Run::default()
            });
            continue;
        }
        let Some(run) = runs.last_mut() else { continue };
        if let Some(step) =
            line.strip_prefix("step ").and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        {
            run.first.get_or_insert(step);
            run.last = Some(step);
        } else if line.starts_with("=== ") {
            run.checkpointed = line.starts_with("=== checkpointed");
            run.ended_at = time_of(line);
        } else if line.starts_with("opal-run: ") && run.started.is_none() {
            run.started = Some(line.to_string());
        }
    }
    runs
}

/// Steps done in each run after its checkpoint and done again by the next run.
fn lost_per_requeue(runs: &[Run]) -> Vec<u64> {
    runs.windows(2)
        .map(|pair| {
            let resumed_after = pair[1].first.map_or(0, |first| first - 1);
            pair[0].last.unwrap_or(0).saturating_sub(resumed_after)
        })
        .collect()
}

/// Seconds from the end of each run (its checkpoint) to the start of the next.
fn requeue_gaps(runs: &[Run]) -> Vec<f64> {
    runs.windows(2).filter_map(|pair| Some(pair[1].began_at? - pair[0].ended_at?)).collect()
}

/// Seconds each run lasted.
fn run_lengths(runs: &[Run]) -> Vec<f64> {
    runs.iter().filter_map(|run| Some(run.ended_at? - run.began_at?)).collect()
}

fn seconds(list: &[f64]) -> String {
    let items: Vec<String> = list.iter().map(|s| format!("{s:.1}")).collect();
    format!("[{}] s", items.join(", "))
}

struct Job {
    label: &'static str,
    component: &'static str,
    steps: u64,
    /// Warned by scancel (after SHORT_WARN_AFTER steps of each run) this many times,
    /// rather than by Slurm.
    warnings: usize,
    id: String,
    output: PathBuf,
    result: PathBuf,
    warnings_sent: usize,
    submitted: Instant,
    finished: Option<(Instant, Vec<(String, String)>)>,
}

impl Job {
    fn field<'a>(&'a self, name: &str) -> Option<&'a str> {
        self.finished.as_ref()?.1.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn runs(&self) -> Vec<Run> {
        runs(&fs::read_to_string(&self.output).unwrap_or_default())
    }
}

/// The example programs, built as a user would: `sum_self` (self) and `sum` (criu).
fn example_programs(sb: &Sandbox) -> (PathBuf, PathBuf) {
    let bin = sb.path("bin");
    fs::create_dir_all(&bin).unwrap();
    let sum_self = cc("../examples/slurm/sum_self.c", "sum_self", &["-O2", "-pthread"]);
    let sum = bin.join("sum");
    let status = Command::new("cc")
        .args(["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&sum)
        .arg(repo().join("examples/slurm/sum.c"))
        .status()
        .unwrap();
    assert!(status.success(), "cc sum.c failed");
    (sum_self, sum)
}

/// What to submit: the example job script of `component` on a computation of `steps`.
struct Plan {
    label: &'static str,
    component: &'static str,
    steps: u64,
    /// Warnings the test sends; 0: the job has a real one-minute time limit.
    warnings: usize,
}

/// `sbatch` of the example job script for `plan`, as a user would submit it.
fn submit(cluster: &Cluster, sb: &Sandbox, programs: &(PathBuf, PathBuf), plan: Plan) -> Job {
    let tag = format!(
        "{}-{}",
        plan.component,
        if plan.warnings > 0 { format!("scancel{}", plan.warnings) } else { "timelimit".into() }
    );
    let result = sb.path(&format!("{tag}.result"));
    let output = sb.path(&format!("{tag}.out"));
    let (script, program) = match plan.component {
        "self" => ("self.sbatch", &programs.0),
        _ => ("criu.sbatch", &programs.1),
    };
    let mut sbatch = sb.command("sbatch");
    sbatch
        .env("SLURM_CONF", &cluster.conf)
        .env("OPAL_RUN", opal_run())
        .env("OPALCRS_LIB", lib_dir().join("libopalcrs.so"))
        .env("CKPT_DIR", sb.path("checkpoints"))
        .arg("--parsable")
        .arg(format!("--job-name={tag}"))
        .arg(format!("--output={}", output.display()));
    if plan.warnings == 0 {
        sbatch.args(["--time=1", "--signal=B:USR1@10"]);
    }
    let plan = (plan.label, plan.component, plan.steps, plan.warnings);
    sbatch_example(cluster, sbatch, script, program, plan, (result, output))
}

/// Runs `sbatch` (options and environment set) on `script` of examples/slurm with the
/// arguments `program STEPS STEP_MS RESULT`: the job, as the test follows it.
fn sbatch_example(
    cluster: &Cluster,
    mut sbatch: Command,
    script: &str,
    program: &Path,
    (label, component, steps, warnings): (&'static str, &'static str, u64, usize),
    (result, output): (PathBuf, PathBuf),
) -> Job {
    let out = sbatch
        .arg(repo().join("examples/slurm").join(script))
        .arg(program)
        .arg(steps.to_string())
        .arg(STEP_MS.to_string())
        .arg(&result)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "sbatch failed: {stdout}{stderr}\n{}", cluster.logs());
    Job {
        label,
        component,
        steps,
        warnings,
        id: stdout.trim().split(';').next().unwrap().to_string(),
        output,
        result,
        warnings_sent: 0,
        submitted: Instant::now(),
        finished: None,
    }
}

/// One look at the jobs: a job that ended is marked finished; a job the test warns is
/// warned (`scancel --signal=USR1 --batch`, what `--signal=B:USR1@N` does without
/// waiting for a time limit) once its current run has done SHORT_WARN_AFTER steps.
fn poll(cluster: &Cluster, jobs: &mut [Job]) {
    for job in jobs.iter_mut().filter(|j| j.finished.is_none()) {
        let info = cluster.job(&job.id).unwrap_or_default();
        let state = info.iter().find(|(k, _)| k == "JobState").map_or("", |(_, v)| v.as_str());
        if matches!(
            state,
            "COMPLETED"
                | "FAILED"
                | "CANCELLED"
                | "TIMEOUT"
                | "NODE_FAIL"
                | "OUT_OF_MEMORY"
                | "BOOT_FAIL"
                | "DEADLINE"
        ) {
            job.finished = Some((Instant::now(), info));
            continue;
        }
        if state == "RUNNING" && job.warnings_sent < job.warnings {
            let runs = job.runs();
            let current = runs.len().saturating_sub(1);
            let done = match (runs.last().and_then(|r| r.first), runs.last().and_then(|r| r.last)) {
                // Ranks restored from images of different nodes print from slightly
                // different steps: the last line may be below the first.
                (Some(first), Some(last)) => (last + 1).saturating_sub(first) as usize,
                _ => 0,
            };
            if current == job.warnings_sent && done >= SHORT_WARN_AFTER {
                cluster.slurm("scancel", &["--signal=USR1", "--batch", &job.id]).unwrap();
                job.warnings_sent += 1;
            }
        }
    }
}

/// The figures of a job (its lines of the report) and what is wrong with it: it must
/// end COMPLETED with the exact result, requeued as often as warned, every run but the
/// last ending with a checkpoint and the next restarting from it.
fn assess(job: &Job) -> (String, Vec<String>) {
    let output = fs::read_to_string(&job.output).unwrap_or_default();
    let runs = runs(&output);
    let lost = lost_per_requeue(&runs);
    let requeues = runs.len().saturating_sub(1);
    let expected = format!("steps {} value {}\n", job.steps, expected_value(job.steps));
    let result = fs::read_to_string(&job.result).unwrap_or_default();
    let duration =
        job.finished.as_ref().map(|(at, _)| at.duration_since(job.submitted).as_secs_f64());
    let hosts: Vec<&str> = runs.iter().map(|r| r.host.as_deref().unwrap_or("?")).collect();
    let report = format!(
        "  {} (job {}): {}, {} steps ({:.0} s of work) in {}\n    \
         {requeues} requeues (Slurm: Restarts={}); work lost per requeue {lost:?} steps of {STEP_MS} ms; \
         checkpoint to next start {}; runs {} on {hosts:?}\n",
        job.label,
        job.id,
        job.field("JobState").unwrap_or("not finished"),
        job.steps,
        (job.steps * STEP_MS) as f64 / 1000.0,
        duration.map_or("-".to_string(), |d| format!("{d:.1} s")),
        job.field("Restarts").unwrap_or("?"),
        seconds(&requeue_gaps(&runs)),
        seconds(&run_lengths(&runs)),
    );
    let mut problems = Vec::new();
    if job.finished.is_none() {
        problems.push(format!("did not finish within {DEADLINE:?}"));
    } else if (job.field("JobState"), job.field("ExitCode")) != (Some("COMPLETED"), Some("0:0")) {
        problems.push(format!(
            "ended {:?} with exit code {:?}",
            job.field("JobState"),
            job.field("ExitCode")
        ));
    }
    if result != expected {
        problems.push(format!("result {result:?}, expected {expected:?}"));
    }
    if job.warnings > 0 && requeues != job.warnings {
        problems.push(format!("{requeues} requeues, expected {}", job.warnings));
    }
    if job.warnings == 0 && requeues < 1 {
        problems.push("never requeued: the work fits in the limit?".to_string());
    }
    if job.field("Restarts").is_some_and(|r| r != requeues.to_string()) {
        problems.push(format!(
            "Slurm counts {:?} restarts, the output {requeues} runs after the first",
            job.field("Restarts")
        ));
    }
    for (i, run) in runs.iter().enumerate() {
        let last_run = i + 1 == runs.len();
        if run.checkpointed == last_run {
            problems.push(format!(
                "run {i}: checkpointed={} (every run but the last must end with a checkpoint)",
                run.checkpointed
            ));
        }
        let said = run.started.as_deref().unwrap_or("");
        let wanted = if i == 0 {
            "opal-run: no snapshot in series".to_string()
        } else {
            format!("opal-run: restarting from snapshot {} of series", i - 1)
        };
        if !said.starts_with(&wanted)
            || (i > 0 && !said.ends_with(&format!("(component {})", job.component)))
        {
            problems.push(format!("run {i}: opal-run said {said:?}, expected {wanted:?}…"));
        }
    }
    if let Some(too_many) = lost.iter().find(|&&l| l > MAX_LOST_STEPS) {
        problems.push(format!("a requeue lost {too_many} steps (more than {MAX_LOST_STEPS})"));
    }
    (report, problems)
}

/// A failure message for `job` with its `problems` and its output without step lines.
fn failure(job: &Job, problems: &[String]) -> String {
    let output = fs::read_to_string(&job.output).unwrap_or_default();
    let lines: Vec<&str> = output.lines().filter(|l| !l.starts_with("step ")).collect();
    format!(
        "{} (job {}): {}\n  output without step lines:\n    {}",
        job.label,
        job.id,
        problems.join("; "),
        lines.join("\n    ")
    )
}

#[test]
fn batch_jobs_finish_correctly_across_requeues() {
    let started = Instant::now();
    if skipped_without_slurm() {
        return;
    }
    let criu = criu_missing();
    if let Some(why) = &criu {
        eprintln!("Slurm test: the criu jobs are left out: needs CRIU >= 4 ({why})");
    }
    let sb = Sandbox::new("slurm");
    let programs = example_programs(&sb);
    let cluster = start_private_cluster(&sb, 1);
    let cluster_ready = started.elapsed();

    let short = std::env::var_os("OPALCRS_SLURM_SHORT").is_some();
    let plans = [
        Plan {
            label: "self, warned by scancel",
            component: "self",
            steps: SHORT_STEPS,
            warnings: SHORT_WARNINGS,
        },
        Plan {
            label: "criu, warned by scancel",
            component: "criu",
            steps: SHORT_STEPS,
            warnings: SHORT_WARNINGS,
        },
        Plan { label: "self, 1-minute limit", component: "self", steps: LONG_STEPS, warnings: 0 },
        Plan { label: "criu, 1-minute limit", component: "criu", steps: LONG_STEPS, warnings: 0 },
    ];
    let mut jobs: Vec<Job> = plans
        .into_iter()
        .filter(|plan| {
            let left_out =
                (short && plan.warnings == 0) || (plan.component == "criu" && criu.is_some());
            !left_out
        })
        .map(|plan| submit(&cluster, &sb, &programs, plan))
        .collect();
    while jobs.iter().any(|j| j.finished.is_none()) && started.elapsed() < DEADLINE {
        poll(&cluster, &mut jobs);
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut failures = Vec::new();
    let mut report =
        format!("Slurm test: cluster ready after {:.1} s\n", cluster_ready.as_secs_f64());
    for job in &jobs {
        let (figures, problems) = assess(job);
        report.push_str(&figures);
        if !problems.is_empty() {
            failures.push(failure(job, &problems));
        }
    }
    report.push_str(&format!("  total {:.1} s", started.elapsed().as_secs_f64()));
    eprintln!("{report}");
    if !failures.is_empty() {
        panic!("{}\n{report}\n{}", failures.join("\n"), cluster.logs());
    }
    drop(cluster);
}

/// `opal-run` outside Slurm, as a job script uses it: a fresh start, a checkpoint on
/// USR1 that ends the program with status 85, a restart, again, then the end. For
/// criu the second and third runs are restored children of opal-run, which passes the
/// signal on and relays the status.
fn start_checkpoint_restart(sb: &Sandbox, component: &str, program: &[&std::ffi::OsStr]) {
    let steps = 200u64;
    let result = sb.path("result");
    let run = || {
        let mut command = sb.command(opal_run());
        command
            .args(["-n", "series", "-w"])
            .arg(sb.path("ckpt"))
            .args(["-mca", "opal_cr_signal_exit", "1", "--"])
            .args(program)
            .args([&steps.to_string(), "10"])
            .arg(&result);
        if component == "criu" {
            command.env("OMPI_MCA_crs", "criu");
        }
        sb.spawn(command, "runs")
    };
    for n in 0..3 {
        // One output file for all runs: a restored program writes where it wrote before.
        let before = sb.read("runs.out").len();
        let mut child = run();
        let log = |sb: &Sandbox| sb.read("runs.out")[before..].to_string();
        let said = if n == 0 {
            format!(
                "opal-run: no snapshot in series {}: starting",
                sb.path("ckpt/series").display()
            )
        } else {
            format!(
                "opal-run: restarting from snapshot {} of series {} (component {component})",
                n - 1,
                sb.path("ckpt/series").display()
            )
        };
        // Let it work, then warn it as Slurm would (the first two runs).
        let working = wait_until(Duration::from_secs(20), || {
            log(sb).lines().filter(|l| l.starts_with("step ")).count() >= 20
        });
        assert!(working, "run {n} does not work:\n{}", log(sb));
        assert!(log(sb).contains(&said), "run {n}: expected {said:?} in:\n{}", log(sb));
        if n < 2 {
            // SAFETY: a signal to the opal-run this test started (the program itself for
            // a fresh start and for self, which opal-run became).
            unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
        }
        let status = child.wait().unwrap();
        let expected = if n < 2 { 85 } else { 0 };
        assert_eq!(status.code(), Some(expected), "run {n}:\n{}", log(sb));
    }
    let expected = format!("steps {steps} value {}\n", expected_value(steps));
    assert_eq!(fs::read_to_string(&result).unwrap_or_default(), expected);
    let published: Vec<String> = fs::read_dir(sb.path("ckpt/series"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(published.len(), 2, "{published:?}");
}

#[test]
fn opal_run_starts_then_restarts_a_self_program() {
    let sb = Sandbox::new("opal-run-self");
    let program = cc("../examples/slurm/sum_self.c", "sum_self-opal-run", &["-O2", "-pthread"]);
    start_checkpoint_restart(&sb, "self", &[program.as_os_str()]);
}

#[test]
fn opal_run_starts_then_restores_a_criu_program_and_passes_signals_on() {
    if !is_root() || criu_missing().is_some() {
        eprintln!(
            "skipped: needs root and CRIU >= 4 ({})",
            criu_missing().unwrap_or_else(|| "not root".into())
        );
        return;
    }
    let sb = Sandbox::new("opal-run-criu");
    let sum = sb.path("sum");
    let status = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&sum)
        .arg(repo().join("examples/slurm/sum.c"))
        .status()
        .unwrap();
    assert!(status.success());
    let preload = format!("LD_PRELOAD={}", lib_dir().join("libopalcrs.so").display());
    start_checkpoint_restart(&sb, "criu", &["env".as_ref(), preload.as_ref(), sum.as_os_str()]);
}

#[test]
fn opal_run_names_the_series_after_the_slurm_job_and_reports_errors() {
    let sb = Sandbox::new("opal-run-errors");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = sb.command(opal_run());
        command
            .args(args)
            .env_remove("SLURM_JOB_ID")
            .env_remove("SLURM_ARRAY_JOB_ID")
            .env_remove("SLURM_ARRAY_TASK_ID");
        command.envs(env.iter().copied());
        let out = command.output().unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.code(), stdout, stderr)
    };
    let show = "echo $OMPI_MCA_crs_base_snapshot_name $OMPI_MCA_crs_base_snapshot_dir $OMPI_MCA_x";
    let (code, stdout, stderr) =
        run(&["-w", "ckpt", "-mca", "x", "1", "sh", "-c", show], &[("SLURM_JOB_ID", "42")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, format!("slurm_42.ckpt {} 1\n", sb.path("ckpt").display()));
    assert!(
        stderr.contains(&format!(
            "no snapshot in series {}: starting sh fresh",
            sb.path("ckpt/slurm_42.ckpt").display()
        )),
        "{stderr}"
    );
    let env = [("SLURM_JOB_ID", "43"), ("SLURM_ARRAY_JOB_ID", "40"), ("SLURM_ARRAY_TASK_ID", "3")];
    assert_eq!(run(&["sh", "-c", show], &env).1, "slurm_40_3.ckpt\n");
    assert_eq!(run(&["-n", "mine", "--", "sh", "-c", show], &env).1, "mine\n");
    assert_eq!(run(&["sh", "-c", "exit 7"], &env).0, Some(7));

    let (code, _, stderr) = run(&["true"], &[]);
    assert_eq!(code, Some(125));
    assert!(stderr.contains("no series: give -n SERIES"), "{stderr}");
    assert_eq!(run(&["-n", "s"], &[]).0, Some(125));
    assert_eq!(run(&["-n", "a/b", "true"], &[]).0, Some(125));
    assert_eq!(run(&["--bogus", "true"], &[]).0, Some(125));
    let (code, stdout, _) = run(&["-h"], &[]);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("Usage: opal-run"), "{stdout}");
    let (code, _, stderr) = run(&["-n", "s", "/nonexistent/program"], &[]);
    assert_eq!(code, Some(127), "{stderr}");
    fs::write(sb.path("not-executable"), "").unwrap();
    assert_eq!(run(&["-n", "s", "./not-executable"], &[]).0, Some(126));
    // A series whose snapshots are all unusable: said, and a fresh start.
    fs::create_dir_all(sb.path("broken.ckpt/0")).unwrap();
    let (code, stdout, stderr) = run(&["-n", "broken.ckpt", "echo", "fresh"], &[]);
    assert_eq!((code, stdout.as_str()), (Some(0), "fresh\n"), "{stderr}");
    assert!(stderr.contains("has no good snapshot (1 skipped: 0: incomplete"), "{stderr}");
    assert!(stderr.contains("no good snapshot in series"), "{stderr}");
    // A series that is not a directory is an error, not a fresh start.
    fs::write(sb.path("file.ckpt"), "").unwrap();
    let (code, _, stderr) = run(&["-n", "file.ckpt", "true"], &[]);
    assert_eq!(code, Some(125), "{stderr}");
}

#[test]
fn figures_from_a_job_output() {
    let output = "=== job 7 run 0 on n at 100.000\nopal-run: no snapshot in series /c/slurm_7.ckpt: starting x fresh\n\
                  step 1 pid 5\nstep 2 pid 5\ncheckpoint after step 1\nstep 3 pid 5\n=== checkpointed at 130.500: requeueing\n\
                  === job 7 run 1 on n at 137.000\nopal-run: restarting from snapshot 0 of series /c/slurm_7.ckpt (component self)\n\
                  restarted after step 2\nstep 3 pid 6\nstep 4 pid 6\n=== finished at 140.000\n";
    let runs = runs(output);
    assert_eq!(runs.len(), 2);
    assert_eq!((runs[0].first, runs[0].last, runs[0].checkpointed), (Some(1), Some(3), true));
    assert_eq!((runs[1].first, runs[1].last, runs[1].checkpointed), (Some(3), Some(4), false));
    assert!(runs[1].started.as_deref().unwrap().contains("component self"));
    assert_eq!((runs[0].host.as_deref(), runs[1].host.as_deref()), (Some("n"), Some("n")));
    assert_eq!(lost_per_requeue(&runs), [1]);
    assert_eq!(requeue_gaps(&runs), [6.5]);
    assert_eq!(run_lengths(&runs), [30.5, 3.0]);
    assert_eq!(seconds(&[6.5, 3.04]), "[6.5, 3.0] s");
    assert_eq!(expected_value(0), 0);
    assert_eq!(expected_value(2400), 12371230527612661168);
}

/// `srun --export=ALL,LD_PRELOAD=…`: the job step's program is preloaded (not srun), is
/// checkpointed by its PID on the node (self and criu), killed, and restarts to the
/// end of an uninterrupted run. The same with LD_PRELOAD in srun's own environment
/// (srun is preloaded then, and passes it on).
#[test]
fn srun_with_the_preload_on_its_command_line_preloads_the_step_program() {
    if skipped_without_slurm() {
        return;
    }
    let sb = Sandbox::new("slurm-srun");
    let cluster = start_private_cluster(&sb, 1);
    let self_app = cc_without_library("preload_app.c", "preload-app", &["-rdynamic"]);
    let mut cases = vec![("self", self_app.clone(), true), ("self", self_app, false)];
    if criu_missing().is_none() {
        let plain = cc_without_library("preload_app.c", "preload-app-plain", &["-DNO_CALLBACKS"]);
        cases.push(("criu", plain, true));
    }
    let limit = 60;
    let library = lib_dir().join("libopalcrs.so");
    for (component, exe, on_command_line) in cases {
        let tag = format!("{component}-{}", if on_command_line { "export" } else { "env" });
        let (log, state) = (sb.path(&format!("{tag}.log")), sb.path(&format!("{tag}.state")));
        let mut srun = sb.command("srun");
        srun.env("SLURM_CONF", &cluster.conf);
        if on_command_line {
            srun.arg(format!("--export=ALL,LD_PRELOAD={}", library.display()));
        } else {
            srun.env("LD_PRELOAD", &library);
        }
        srun.arg(&exe).args([&log, &state]).args(["--limit", &limit.to_string()]);
        let mut srun = sb.spawn(srun, &format!("srun-{tag}"));
        let logged_pid = || {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("main pid="))
                .and_then(|p| p.parse::<u32>().ok())
        };
        assert!(
            wait_until(Duration::from_secs(30), || logged_pid().is_some()),
            "{tag}: the step did not start: {}\n{}",
            sb.read(&format!("srun-{tag}.out")),
            cluster.logs()
        );
        let pid = logged_pid().unwrap();
        sb.adopt(pid);
        let maps = fs::read_to_string(format!("/proc/{}/maps", srun.id())).unwrap_or_default();
        assert_eq!(maps.contains("libopalcrs"), !on_command_line, "{tag}: srun's own preload");
        assert!(wait_until(Duration::from_secs(10), || {
            last_count(&fs::read_to_string(&log).unwrap_or_default()).unwrap_or(0) >= 8
        }));
        let (_, snapshot) = checkpoint_ok(&sb, &[&pid.to_string()]);
        let meta = fs::read_to_string(snapshot.join("snapshot_meta.data")).unwrap();
        assert!(meta.contains(&format!("# OPAL CRS Component: {component}")), "{meta}");
        kill(pid);
        assert!(wait_until(Duration::from_secs(10), || !alive(pid)));
        assert!(wait_exit(&mut srun, Duration::from_secs(20)).is_some(), "srun did not end");
        let done = fs::read_to_string(&log).unwrap_or_default();
        assert!(!done.contains("done"), "{tag}: ended before it was killed");
        let (status, _, stderr) = run_restart(&sb, &[snapshot.to_str().unwrap()]);
        assert!(status.success(), "{tag}: restart {status:?}: {stderr}");
        let expected = format!("done count={limit} sum={}", limit * (limit + 1) / 2);
        let log_text = fs::read_to_string(&log).unwrap_or_default();
        assert!(log_text.contains(&expected), "{tag}: {log_text}");
    }
}

/// What a requeued job's restore must do with cgroups (Slurm's proctrack/cgroup and
/// task/cgroup): the restored tree lives in the cgroups of the process that restores
/// it (the new job's step), never in those it was dumped from. A tree whose child was
/// in another cgroup than its root (so CRIU records the cgroups) is dumped, that cgroup
/// is removed with its job, and the tree is restored by an opal-restart placed in a
/// cgroup of its own: parent and child must come back there.
#[test]
fn a_restored_tree_lives_in_the_cgroups_of_the_process_that_restores_it() {
    if !is_root() || criu_missing().is_some() {
        eprintln!("skipped: needs root and CRIU >= 4 ({:?})", criu_missing());
        return;
    }
    let sb = Sandbox::new("slurm-cgroups");
    let Some(cgroup) =
        CgroupDir::create("freezer", &format!("opalcrs-test-{}", std::process::id()))
    else {
        eprintln!("skipped: no cgroup v1 freezer hierarchy at /sys/fs/cgroup/freezer");
        return;
    };
    let (old_job, new_job) = (cgroup.sub("old_job"), cgroup.sub("new_job"));
    let mut command = sb.command(cc("soak_tree.c", "soak_tree", &[]));
    command.arg(sb.path("parent")).arg(sb.path("child")).env("OMPI_MCA_crs", "criu");
    let mut app = sb.spawn(command, "app");
    let pid = app.id();
    let child_pid =
        || sb.read("child").lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse().ok());
    assert!(
        wait_until(Duration::from_secs(20), || child_pid().is_some()),
        "soak_tree did not start: {}",
        sb.read("app.out")
    );
    let child: u32 = child_pid().unwrap();
    sb.adopt(child);
    fs::write(old_job.join("cgroup.procs"), child.to_string()).unwrap();
    assert_eq!(cgroup.of(child).as_deref(), Some("/old_job"));
    let (_, snapshot) = checkpoint_ok(&sb, &[&pid.to_string()]);
    kill(child);
    kill_and_reap(&mut app);
    assert!(wait_until(Duration::from_secs(10), || !Path::new(&format!("/proc/{child}")).exists()));
    fs::remove_dir(&old_job).unwrap();

    // opal-restart --fork, moved into the new job's cgroup before it runs.
    let procs = std::ffi::CString::new(new_job.join("cgroup.procs").as_os_str().as_encoded_bytes())
        .unwrap();
    let mut restart = sb.command(restart_tool());
    restart.args(["--fork", snapshot.to_str().unwrap()]);
    // SAFETY: open/write/close of a prepared path, async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut restart, move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            let written = fd >= 0 && libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            if fd >= 0 {
                libc::close(fd);
            }
            if written {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let out = restart.output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "opal-restart: {stdout}{stderr}");
    let restored: u32 = stdout.trim().parse().unwrap();
    sb.adopt(restored);
    assert_eq!(restored, pid);
    assert!(wait_until(Duration::from_secs(10), || children(restored).contains(&child)));
    sb.adopt(child);
    let places = (cgroup.of(restored), cgroup.of(child));
    kill(child);
    kill(restored);
    assert_eq!(
        places,
        (Some("/new_job".to_string()), Some("/new_job".to_string())),
        "the restored parent and child (the child was in /old_job at the dump; {}) ",
        if old_job.exists() { "CRIU made /old_job again" } else { "/old_job is gone" }
    );
}

/// The PID in the last `step N pid P` line of a job's output.
fn last_step_pid(output: &str) -> Option<u32> {
    let line = output.lines().rev().find(|l| l.starts_with("step "))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Requeued jobs on a private Slurm of two nodes, each node in namespaces of its own
/// (hostname, address), with Slurm's cgroup plugins. The jobs' first runs are on the
/// first node (the second is drained meanwhile); then the first node is drained, and
/// every later run restarts on the second: self anywhere, criu there because kernel,
/// executable and libraries are the same. Self and criu, each warned twice (work three
/// times what a run gets), and self and criu with a real one-minute time limit and
/// 120 s of work (left out with `OPALCRS_SLURM_SHORT=1`), end COMPLETED with the exact
/// result. Every run's program is
/// in its own job's step cgroup on the node it ran on (a criu program too, restored
/// into the new job's cgroups). A third job (criu), once restored on the second node,
/// is seen by `sstat`, stays RUNNING while its program works, and `scancel` ends the
/// restored program.
#[test]
fn requeued_jobs_restart_on_another_node_inside_the_new_jobs_cgroups() {
    let started = Instant::now();
    if skipped_without_slurm() {
        return;
    }
    let criu = criu_missing();
    if let Some(why) = &criu {
        eprintln!("Slurm test: the criu jobs are left out: needs CRIU >= 4 ({why})");
    }
    let sb = Sandbox::new("slurm-nodes");
    let programs = example_programs(&sb);
    let cluster = start_private_cluster(&sb, 2);
    let cluster_ready = started.elapsed();
    let (first, second) = (cluster.nodes[0].name.clone(), cluster.nodes[1].name.clone());
    cluster.set_node_state(&second, "drain");

    const CANCELLED: &str = "criu, cancelled once restored";
    let mut plans = vec![Plan {
        label: "self, moved by a drain",
        component: "self",
        steps: SHORT_STEPS,
        warnings: SHORT_WARNINGS,
    }];
    if criu.is_none() {
        plans.push(Plan {
            label: "criu, moved by a drain",
            component: "criu",
            steps: SHORT_STEPS,
            warnings: SHORT_WARNINGS,
        });
        plans.push(Plan { label: CANCELLED, component: "criu", steps: LONG_STEPS, warnings: 1 });
    }
    if std::env::var_os("OPALCRS_SLURM_SHORT").is_none() {
        plans.push(Plan {
            label: "self, 1-minute limit, moved by a drain",
            component: "self",
            steps: LONG_STEPS,
            warnings: 0,
        });
        if criu.is_none() {
            plans.push(Plan {
                label: "criu, 1-minute limit, moved by a drain",
                component: "criu",
                steps: LONG_STEPS,
                warnings: 0,
            });
        }
    }
    let mut jobs: Vec<Job> =
        plans.into_iter().map(|plan| submit(&cluster, &sb, &programs, plan)).collect();
    let mut drained = false;
    // (job, run, node, PID, its freezer cgroup), once per run that has done 5 steps.
    let mut placements: Vec<(String, usize, String, u32, Option<String>)> = Vec::new();
    // The cancelled job: its state and sstat's line before scancel, and whether its
    // restored program was gone within 10 s.
    let mut cancel: Option<(String, Result<String, String>, u32, bool)> = None;
    while jobs.iter().any(|j| j.finished.is_none()) && started.elapsed() < DEADLINE {
        poll(&cluster, &mut jobs);
        if !drained && jobs.iter().all(|j| j.runs().first().is_some_and(|r| r.first.is_some())) {
            cluster.set_node_state(&first, "drain");
            cluster.set_node_state(&second, "resume");
            drained = true;
        }
        for job in jobs.iter().filter(|j| j.finished.is_none()) {
            let output = fs::read_to_string(&job.output).unwrap_or_default();
            let runs = runs(&output);
            let Some(run) = runs.last() else { continue };
            let (Some(first_step), Some(last_step)) = (run.first, run.last) else { continue };
            let index = runs.len() - 1;
            if last_step < first_step + 5 || run.ended_at.is_some() {
                continue;
            }
            if !placements.iter().any(|(id, i, ..)| *id == job.id && *i == index) {
                let pid = last_step_pid(&output).unwrap();
                let node = run.host.clone().unwrap_or_default();
                placements.push((job.id.clone(), index, node, pid, cgroup_of(pid, "freezer")));
            }
            if job.label == CANCELLED
                && index == 1
                && cancel.is_none()
                && last_step >= first_step + 20
            {
                let pid = last_step_pid(&output).unwrap();
                let info = cluster.job(&job.id).unwrap_or_default();
                let state = info.iter().find(|(k, _)| k == "JobState").map_or("", |(_, v)| v);
                let sstat = cluster.slurm(
                    "sstat",
                    &["-n", "-P", "-a", "-j", &job.id, "-o", "JobID,NTasks,MaxRSS,AveCPU"],
                );
                let state = state.to_string();
                cluster.slurm("scancel", &[&job.id]).unwrap();
                let gone = wait_until(Duration::from_secs(10), || !alive(pid));
                cancel = Some((state, sstat, pid, gone));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut failures = Vec::new();
    let mut report = format!(
        "Slurm test, 2 nodes ({}): cluster ready after {:.1} s\n",
        if cluster.network.is_some() { "network and UTS namespaces" } else { "on 127.0.0.1" },
        cluster_ready.as_secs_f64()
    );
    for job in &jobs {
        let runs = job.runs();
        let (figures, mut problems) = assess(job);
        if job.label == CANCELLED {
            report.push_str(&format!(
                "  {} (job {}): {}, runs on {:?}\n",
                job.label,
                job.id,
                job.field("JobState").unwrap_or("not finished"),
                runs.iter().map(|r| r.host.clone().unwrap_or_default()).collect::<Vec<_>>()
            ));
            problems.clear();
            match &cancel {
                None => problems.push("its restored run was never seen working".into()),
                Some((state, sstat, pid, gone)) => {
                    report.push_str(&format!("    before scancel: {state}; sstat: {sstat:?}\n"));
                    if state != "RUNNING" {
                        problems.push(format!("{state} while its restored program worked"));
                    }
                    if !sstat.as_ref().is_ok_and(|s| s.contains(&format!("{}.batch", job.id))) {
                        problems.push(format!("sstat does not see its batch step: {sstat:?}"));
                    }
                    if !gone {
                        problems.push(format!("scancel left its restored program {pid} running"));
                    }
                    if job.field("JobState") != Some("CANCELLED") {
                        problems.push(format!("ended {:?}, not CANCELLED", job.field("JobState")));
                    }
                }
            }
        } else {
            report.push_str(&figures);
        }
        let hosts: Vec<Option<&str>> = runs.iter().map(|r| r.host.as_deref()).collect();
        if hosts.first() != Some(&Some(first.as_str()))
            || hosts.iter().skip(1).any(|h| *h != Some(second.as_str()))
        {
            problems.push(format!(
                "ran on {hosts:?}: the first run belongs on {first}, every later one on {second}"
            ));
        }
        for (index, _) in runs.iter().enumerate() {
            match placements.iter().find(|(id, i, ..)| *id == job.id && *i == index) {
                None => problems.push(format!("run {index}: its program was never seen working")),
                Some((_, _, node, pid, cgroup)) => {
                    let step = format!("/slurm_{node}/uid_0/job_{}/step_batch", job.id);
                    if !cgroup.as_deref().is_some_and(|c| c.starts_with(&step)) {
                        problems.push(format!(
                            "run {index}: its program {pid} is in freezer cgroup {cgroup:?}, not in {step}"
                        ));
                    }
                }
            }
        }
        if !problems.is_empty() {
            failures.push(failure(job, &problems));
        }
    }
    report.push_str(&format!("  total {:.1} s", started.elapsed().as_secs_f64()));
    eprintln!("{report}");
    if !failures.is_empty() {
        panic!("{}\n{report}\n{}", failures.join("\n"), cluster.logs());
    }
    drop(cluster);
}

/// A criu snapshot restores only on a node with the kernel, executable and libraries
/// it was dumped with. Its record (`criu-compat.json`, kept in agreement with the
/// manifest here, as a snapshot of another node would be) names another kernel, then
/// another executable hash: opal-restart refuses each with exit 126, naming what
/// differs and where the snapshot was dumped, and restores nothing; with the record
/// as dumped, the same snapshot restores.
#[test]
fn a_criu_snapshot_of_another_kernel_or_executable_is_refused_by_name() {
    if !is_root() || criu_missing().is_some() {
        eprintln!("skipped: needs root and CRIU >= 4 ({:?})", criu_missing());
        return;
    }
    let sb = Sandbox::new("slurm-compat");
    let program = cc("plain_counter.c", "plain_counter", &[]);
    let mut command = sb.command(&program);
    command.arg(sb.path("count"));
    let mut app = sb.spawn(command, "app");
    assert!(
        wait_until(Duration::from_secs(20), || sb.read("count").lines().count() >= 2),
        "plain_counter did not start: {}",
        sb.read("app.out")
    );
    let (_, snapshot) = checkpoint_ok(&sb, &[&app.id().to_string()]);
    kill_and_reap(&mut app);
    let record = snapshot.join("criu-compat.json");
    let dumped = fs::read_to_string(&record).unwrap();
    let recorded: serde_json::Value = serde_json::from_str(&dumped).unwrap();
    let release = recorded["kernel"]["release"].as_str().unwrap().to_string();
    assert!(
        recorded["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == program.to_str().unwrap()),
        "{dumped}"
    );
    let host = opalcrs::snapshot::Manifest::read(&snapshot).unwrap().host;
    let forge = |text: String| {
        fs::write(&record, text).unwrap();
        let mut manifest = opalcrs::snapshot::Manifest::read(&snapshot).unwrap();
        let entry = manifest.files.iter_mut().find(|f| f.path == "criu-compat.json").unwrap();
        (entry.size, entry.hash) = opalcrs::snapshot::hash_file(&record).unwrap();
        manifest.write_to(&snapshot).unwrap();
    };
    let exe_hash = recorded["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == program.to_str().unwrap())
        .unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let cases = [
        (
            dumped.replace(&format!("\"{release}\""), "\"2.6.32-other\""),
            "the image needs kernel 2.6.32-other".to_string(),
        ),
        (
            dumped.replace(&exe_hash, &"0".repeat(32)),
            format!("{} differs from the file the image maps", program.display()),
        ),
    ];
    for (text, why) in cases {
        forge(text);
        // --verify refuses what a restart refuses, with the same message.
        let out = sb.restart(&["--verify", snapshot.to_str().unwrap()]);
        let (stdout, stderr) = self::text(&out);
        assert_eq!(out.status.code(), Some(3), "--verify: {stdout}{stderr}");
        let refused = format!("Restorable here: no: cannot restore {} here: ", snapshot.display());
        assert!(stdout.contains(&refused) && stdout.contains(&why), "--verify: {stdout}");
        let (status, stdout, stderr) = run_restart(&sb, &["--fork", snapshot.to_str().unwrap()]);
        if let Ok(restored) = stdout.trim().parse() {
            sb.adopt(restored);
        }
        assert_eq!(status.code(), Some(126), "{stdout}{stderr}");
        assert!(stderr.contains(&why), "{stderr}");
        assert!(stderr.contains(&format!("(it was dumped on {host})")), "{stderr}");
        assert!(
            stderr.contains(&format!("cannot restore {} here", snapshot.display())),
            "{stderr}"
        );
        assert!(stdout.trim().is_empty(), "{stdout}");
    }
    forge(dumped);
    let out = sb.restart(&["--verify", snapshot.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "--verify: {stdout}{stderr}");
    assert!(stdout.contains("\nRestorable here: yes ("), "--verify: {stdout}");
    let (pid, _) = restart_fork(&sb, &[snapshot.to_str().unwrap()]);
    let lines = sb.read("count").lines().count();
    assert!(wait_until(Duration::from_secs(10), || sb.read("count").lines().count() > lines));
    kill(pid);
}

/// The port the process `pid` listens on over TCP (in its own network namespace).
fn tcp_listen_port(pid: u32) -> Option<u16> {
    tcp_listener(pid).map(|address| address.port())
}

/// The address and port the process `pid` listens on over TCP (IPv4).
fn tcp_listener(pid: u32) -> Option<std::net::SocketAddrV4> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let listening = fields.get(3) == Some(&"0A");
        let ours = fields.get(9).is_some_and(|inode| inodes.iter().any(|i| i == inode));
        // ADDR:PORT in hex, the address's bytes read as one number of this host's order.
        let (address, port) = fields.get(1)?.split_once(':')?;
        let address = u32::from_str_radix(address, 16).ok()?.to_ne_bytes();
        let port = u16::from_str_radix(port, 16).ok()?;
        (listening && ours).then(|| std::net::SocketAddrV4::new(address.into(), port))
    })
}

/// The node (by its slurmd's network namespace) each running copy of `program` of the
/// cluster's jobs is on.
fn nodes_running(cluster: &Cluster, program: &Path) -> Vec<String> {
    copies_running(cluster, program).into_iter().map(|(node, _)| node).collect()
}

/// Each running copy of `program` of the cluster's jobs: its node (as [`nodes_running`])
/// and its PID.
fn copies_running(cluster: &Cluster, program: &Path) -> Vec<(String, u32)> {
    let net = |pid: u32| fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    cluster
        .job_processes()
        .into_iter()
        .filter(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == program))
        .filter_map(|pid| {
            let ns = net(pid as u32)?;
            cluster.daemons.iter().find_map(|(name, child)| {
                let node = name.strip_prefix("slurmd ")?;
                (net(child.id()) == Some(ns.clone())).then(|| (node.to_string(), pid as u32))
            })
        })
        .collect()
}

/// A job of 4 ranks over 2 nodes (examples/slurm/job4x2.sbatch; `opal-run -np 4` starts
/// one node agent per node with srun) on a private Slurm of three namespaced nodes,
/// warned twice, so that it needs three runs: each warning takes one global snapshot of
/// the 4 ranks and the job is requeued. Its first run is on the first two nodes (the
/// third drained); then the first node is drained and the third resumed, so the
/// later runs restart every rank on another placement. Meanwhile a connection to the
/// launcher's TCP port without the job's secret is refused and changes nothing. The
/// job ends COMPLETED, each rank with the exact result.
#[test]
fn a_job_of_four_ranks_over_two_nodes_restarts_on_another_placement() {
    if skipped_without_slurm() {
        return;
    }
    four_ranks_over_two_nodes_on_another_placement("self");
}

/// The same with criu (`sum`, no checkpoint code, its state in memory): each node's two
/// ranks are dumped as one image per node, and each later run restores the images on
/// another placement, node image 0 on the first node's successor.
#[test]
fn a_criu_job_of_four_ranks_over_two_nodes_restarts_on_another_placement() {
    if skipped_without_slurm() {
        return;
    }
    if let Some(why) = criu_missing() {
        eprintln!("skipped: {why}");
        return;
    }
    four_ranks_over_two_nodes_on_another_placement("criu");
}

/// Job states of a job not yet ended: COMPLETING too, whose exit code may not be final.
const UNFINISHED: [&str; 3] = ["PENDING", "RUNNING", "COMPLETING"];

/// The body of the two tests above, for `component` (`self`: `sum_self`; `criu`: `sum`).
/// Submits examples/slurm/job4x2.sbatch (4 ranks of `program` over 2 nodes, `component`,
/// checkpoints into `checkpoints`); output and result files named after `tag`.
fn submit_4x2(
    cluster: &Cluster,
    sb: &Sandbox,
    program: &Path,
    component: &'static str,
    checkpoints: &Path,
    (label, warnings, tag): (&'static str, usize, &str),
) -> Job {
    let (result, output) = (sb.path(&format!("{tag}.result")), sb.path(&format!("{tag}.out")));
    let mut sbatch = sb.command("sbatch");
    sbatch
        .env("SLURM_CONF", &cluster.conf)
        .env("OPAL_RUN", opal_run())
        .env("OPAL_CHECKPOINT", checkpoint_tool())
        .env("CKPT_DIR", checkpoints)
        .env("COMPONENT", component)
        .env("OPALCRS_LIB", lib_dir().join("libopalcrs.so"))
        .arg("--parsable")
        .arg(format!("--output={}", output.display()));
    let plan = (label, component, SHORT_STEPS, warnings);
    sbatch_example(cluster, sbatch, "job4x2.sbatch", program, plan, (result, output))
}

/// What is wrong with how a 4-rank job ended: it must be COMPLETED with exit code 0:0
/// and every rank's result exact.
fn ended_exact(job: &Job) -> Vec<String> {
    let mut problems = Vec::new();
    if (job.field("JobState"), job.field("ExitCode")) != (Some("COMPLETED"), Some("0:0")) {
        problems.push(format!(
            "ended {:?} with exit code {:?}",
            job.field("JobState"),
            job.field("ExitCode")
        ));
    }
    let expected = format!("steps {SHORT_STEPS} value {}\n", expected_value(SHORT_STEPS));
    for rank in 0..4 {
        let got =
            fs::read_to_string(format!("{}.{rank}", job.result.display())).unwrap_or_default();
        if got != expected {
            problems.push(format!("rank {rank}: result {got:?}, expected {expected:?}"));
        }
    }
    problems
}

fn four_ranks_over_two_nodes_on_another_placement(component: &'static str) {
    let started = Instant::now();
    let sb = Sandbox::new(&format!("slurm-job4x2-{component}"));
    let programs = example_programs(&sb);
    let program = if component == "criu" { &programs.1 } else { &programs.0 };
    let cluster = start_private_cluster(&sb, 3);
    assert!(cluster.network.is_some(), "the nodes need namespaces of their own");
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    cluster.set_node_state(&names[2], "drain");

    let checkpoints = sb.path("checkpoints");
    let what = ("4 ranks over 2 nodes", SHORT_WARNINGS, "job4x2");
    let mut jobs = vec![submit_4x2(&cluster, &sb, program, component, &checkpoints, what)];
    let series = checkpoints.join(format!("slurm_{}.ckpt", jobs[0].id));
    let listing = || {
        fs::read_dir(&series).map_or(Vec::new(), |d| {
            let mut names: Vec<String> =
                d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            names
        })
    };
    let mut moved = false;
    // Where each run's ranks were seen working: the node of each rank, sorted.
    let mut placements: Vec<Vec<String>> = Vec::new();
    // Ranks seen outside their node's job step cgroups.
    let mut outside: Vec<String> = Vec::new();
    // The stranger's connection: what it read, and the series before and after.
    let mut stranger: Option<(String, Vec<String>, Vec<String>)> = None;
    while jobs[0].finished.is_none() && started.elapsed() < DEADLINE {
        poll(&cluster, &mut jobs);
        let runs = jobs[0].runs();
        if stranger.is_none() && runs.len() == 1 && runs[0].last.is_some_and(|l| l >= 20) {
            let launcher = job_launcher(&cluster);
            let port = launcher.and_then(|pid| tcp_listen_port(pid as u32));
            let host = runs[0].host.clone().unwrap_or_default();
            let node = cluster.nodes.iter().find(|n| host.starts_with(&n.name));
            if let (Some(port), Some(node)) = (port, node) {
                let before = listing();
                let mut read = String::new();
                if let Ok(mut stream) = std::net::TcpStream::connect((node.addr.as_str(), port)) {
                    use std::io::Write;
                    let _ = stream.write_all(b"{\"Hold\":{\"dir\":\"/tmp\"}}\n\"Go\"\n");
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = stream.read_to_string(&mut read);
                }
                std::thread::sleep(Duration::from_secs(1));
                stranger = Some((read, before, listing()));
            }
        }
        if let Some(run) = runs.last().filter(|r| r.ended_at.is_none()) {
            let working = run.first.zip(run.last).is_some_and(|(f, l)| l >= f + 10);
            if working && placements.len() < runs.len() {
                let running = copies_running(&cluster, program);
                if running.len() == 4 {
                    // Started or restored by an agent: in a job step's cgroup on its node.
                    for (node, pid) in &running {
                        let step = format!("/slurm_{node}/uid_0/job_{}/step_", jobs[0].id);
                        let cgroup = cgroup_of(*pid, "freezer");
                        if !cgroup
                            .as_deref()
                            .is_some_and(|c| c.starts_with(&step) && !c.contains("batch"))
                        {
                            outside.push(format!("run {}: rank PID {pid} in freezer cgroup {cgroup:?}, not in {step}*", runs.len() - 1));
                        }
                    }
                    let mut nodes: Vec<String> =
                        running.into_iter().map(|(node, _)| node).collect();
                    nodes.sort();
                    placements.push(nodes);
                }
            }
        }
        // The first run checkpointed: its requeue waits 5 s (cred_expire) to start.
        if !moved && runs.first().is_some_and(|r| r.checkpointed) {
            cluster.set_node_state(&names[0], "drain");
            cluster.set_node_state(&names[2], "resume");
            moved = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let job = &jobs[0];
    let runs = job.runs();
    let lost = lost_per_requeue(&runs);
    let places: Vec<String> = runs.iter().map(|r| r.host.clone().unwrap_or_default()).collect();
    let report = format!(
        "Slurm test, {component}, 4 ranks over 2 of 3 nodes: job {} {} after {:.1} s; {} requeues; work lost per requeue {lost:?} steps of {STEP_MS} ms; runs on {places:?}; ranks on {placements:?}",
        job.id,
        job.field("JobState").unwrap_or("not finished"),
        started.elapsed().as_secs_f64(),
        runs.len().saturating_sub(1),
    );
    eprintln!("{report}");
    let mut problems = ended_exact(job);
    if runs.len() != SHORT_WARNINGS + 1 {
        problems.push(format!("{} runs, expected {}", runs.len(), SHORT_WARNINGS + 1));
    }
    let text = fs::read_to_string(&job.output).unwrap_or_default();
    for (i, run) in runs.iter().enumerate().skip(1) {
        let said = run.started.as_deref().unwrap_or("");
        if !said.starts_with("opal-run: restarting the job of 4 ranks from global snapshot") {
            problems.push(format!("run {i}: opal-run said {said:?}, not a job restart"));
        }
    }
    if places.first().is_some_and(|p| !p.starts_with(&names[0]))
        || places.iter().skip(1).any(|p| !p.starts_with(&names[1]))
    {
        problems.push(format!(
            "ran on {places:?}: the first run belongs on {} and {}, the later ones on {} and {}",
            names[0], names[1], names[1], names[2]
        ));
    }
    if let Some(too_many) = lost.iter().find(|&&l| l > MAX_LOST_STEPS) {
        problems.push(format!("a requeue lost {too_many} steps (more than {MAX_LOST_STEPS})"));
    }
    let two_each =
        |a: &str, b: &str| vec![a.to_string(), a.to_string(), b.to_string(), b.to_string()];
    let mut wanted = vec![two_each(&names[0], &names[1])];
    wanted.resize(SHORT_WARNINGS + 1, two_each(&names[1], &names[2]));
    if placements != wanted {
        problems.push(format!("the ranks ran on {placements:?}, not {wanted:?}"));
    }
    problems.extend(outside);
    match &stranger {
        None => problems.push("the launcher's TCP port was never found".into()),
        Some((read, before, after)) => {
            if read.contains('{') || read.lines().count() > 1 {
                problems.push(format!("the stranger got more than a challenge: {read:?}"));
            }
            if before != after {
                problems.push(format!("the stranger changed the series: {before:?} -> {after:?}"));
            }
            if !text.contains("opal-run: warning: refused a connection from") {
                problems.push("the launcher did not say that it refused the stranger".into());
            }
        }
    }
    if !problems.is_empty() {
        panic!("{}\n{report}\n{}", failure(job, &problems), cluster.logs());
    }
    drop(cluster);
}

/// For a criu test across nodes: its sandbox, the example programs and a private
/// cluster of 2 namespaced nodes; None (said why) without Slurm or CRIU.
fn criu_cluster(tag: &str) -> Option<(Sandbox, (PathBuf, PathBuf), Cluster)> {
    if skipped_without_slurm() {
        return None;
    }
    if let Some(why) = criu_missing() {
        eprintln!("skipped: {why}");
        return None;
    }
    let sb = Sandbox::new(tag);
    let programs = example_programs(&sb);
    let cluster = start_private_cluster(&sb, 2);
    assert!(cluster.network.is_some(), "the nodes need namespaces of their own");
    Some((sb, programs, cluster))
}

/// A criu job of 4 ranks over 2 nodes, checkpointed with `--term` (one image per node),
/// is restarted with `opal-restart <series>` in an allocation of 1 node: refused with
/// exit 125, naming both node counts. Then node 1's image gets a compatibility record
/// of another kernel (kept in agreement with both manifests, as an image of another
/// node would be): its restart in an allocation of 2 nodes fails (the agent of node 1
/// exits 126, naming the node, the image and the kernel), and nothing of the job
/// goes on running. With the record as dumped, `opal-restart` in 2 nodes restores the
/// job, which ends with the exact result.
#[test]
fn a_criu_job_across_nodes_is_refused_on_another_node_count_or_an_incompatible_node() {
    let Some((sb, programs, cluster)) = criu_cluster("slurm-criu-refused") else { return };
    let (result, checkpoints) = (sb.path("refused.result"), sb.path("checkpoints"));
    let series = checkpoints.join("refused.ckpt");
    let script = format!(
        "export OMPI_MCA_crs=criu; exec {} -np 4 -w {} -n refused.ckpt -- env LD_PRELOAD={} /bin/sh -c 'exec \"$@\".\"$OMPI_COMM_WORLD_RANK\"' sh {} {SHORT_STEPS} {STEP_MS} {}",
        opal_run().display(),
        checkpoints.display(),
        lib_dir().join("libopalcrs.so").display(),
        programs.1.display(),
        result.display()
    );
    // Submits `args` and waits until the job has ended: its output and state.
    let run_job = |name: &str, args: &[&str], until_working: bool| {
        let output = sb.path(&format!("{name}.out"));
        let out = sb
            .command("sbatch")
            .env("SLURM_CONF", &cluster.conf)
            .arg("--parsable")
            .arg(format!("--output={}", output.display()))
            .args(args)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "sbatch failed: {stdout}{stderr}\n{}", cluster.logs());
        let id = stdout.trim().split(';').next().unwrap().to_string();
        if until_working {
            let working = wait_until(Duration::from_secs(60), || {
                fs::read_to_string(&output).is_ok_and(|o| o.matches("step 10 ").count() == 4)
            });
            assert!(working, "the job's ranks did not start:\n{}", sb.read(&format!("{name}.out")));
            let launcher = job_launcher(&cluster).expect("no launcher");
            let out = checkpoint_launcher(launcher, &["--term"]);
            let (stdout, stderr) = text(&out);
            assert!(
                out.status.success(),
                "opal-checkpoint: {stdout}{stderr}\n{}",
                sb.read(&format!("{name}.out"))
            );
        }
        let ended = wait_until(Duration::from_secs(60), || {
            cluster.job(&id).is_some_and(|info| {
                info.iter().any(|(k, v)| k == "JobState" && !UNFINISHED.contains(&v.as_str()))
            })
        });
        let state = cluster.job(&id).unwrap_or_default();
        let field = |name: &str| state.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let said = fs::read_to_string(&output).unwrap_or_default();
        let said: Vec<&str> = said.lines().filter(|l| !l.starts_with("step ")).collect();
        assert!(ended, "job {name} did not end: {said:?}");
        (said.join("\n"), field("ExitCode").unwrap_or_default())
    };
    let wrap = format!("--wrap={script}");
    run_job("job", &["--nodes=2", "--ntasks-per-node=2", &wrap], true);
    let snapshot = series.join("0");
    assert!(snapshot.join("opal_node_1.ckpt/0/criu-compat.json").is_file(), "{snapshot:?}");

    let restart = format!("--wrap=exec {} {}", restart_tool().display(), series.display());
    let (said, code) = run_job("one-node", &["--nodes=1", &restart], false);
    assert_eq!(code, "125:0", "{said}");
    assert!(
        said.contains(&format!(
            "global snapshot {}: a criu job of 2 nodes (one image each) restarts on 2 nodes, not on the 1 of this allocation",
            snapshot.display()
        )),
        "{said}"
    );

    let image = snapshot.join("opal_node_1.ckpt/0");
    let record = image.join("criu-compat.json");
    let dumped = fs::read_to_string(&record).unwrap();
    let recorded: serde_json::Value = serde_json::from_str(&dumped).unwrap();
    let release = recorded["kernel"]["release"].as_str().unwrap().to_string();
    // The record as `text`, both manifests in agreement with it.
    let forge = |text: String| {
        fs::write(&record, text).unwrap();
        for (dir, path) in [
            (&image, "criu-compat.json".to_string()),
            (&snapshot, "opal_node_1.ckpt/0/criu-compat.json".to_string()),
            (&snapshot, "opal_node_1.ckpt/0/opalcrs_manifest.json".to_string()),
        ] {
            let mut manifest = opalcrs::snapshot::Manifest::read(dir).unwrap();
            let entry = manifest.files.iter_mut().find(|f| f.path == path).unwrap();
            (entry.size, entry.hash) = opalcrs::snapshot::hash_file(&dir.join(&path)).unwrap();
            manifest.write_to(dir).unwrap();
        }
    };
    forge(dumped.replace(&format!("\"{release}\""), "\"2.6.32-other\""));
    let (said, code) = run_job("other-kernel", &["--nodes=2", &restart], false);
    // The agent's status (cannot restart), not srun's after it killed the other agent.
    assert_eq!(code, "126:0", "{said}");
    assert!(said.contains("opal-run --node-agent: node 1: "), "{said}");
    assert!(said.contains(&format!("cannot restore {} here", image.display())), "{said}");
    assert!(said.contains("the image needs kernel 2.6.32-other"), "{said}");
    let gone = wait_until(Duration::from_secs(10), || cluster.job_processes().is_empty());
    assert!(gone, "still running: {:?}: {said}", cluster.job_processes());
    eprintln!(
        "Slurm test, criu job of 2 nodes restarted on an incompatible node 1: exit {code}:\n{said}"
    );

    // With the record as dumped, opal-restart in 2 nodes restores the job, which ends
    // with every rank's exact result.
    forge(dumped);
    let (said, code) = run_job("restored", &["--nodes=2", &restart], false);
    assert_eq!(code, "0:0", "{said}");
    let expected = format!("steps {SHORT_STEPS} value {}\n", expected_value(SHORT_STEPS));
    for rank in 0..4 {
        let got = fs::read_to_string(format!("{}.{rank}", result.display())).unwrap_or_default();
        assert_eq!(got, expected, "rank {rank}: {said}");
    }
    drop(cluster);
}

/// A job checkpoint across nodes in which one rank (rank 2, on the second node, not the
/// launcher's; its component `none` by `OMPI_MCA_crs=none`) cannot checkpoint:
/// `opal-checkpoint` of the launcher (run in the launcher's node's network namespace,
/// where its control socket is) fails with exit 6 naming rank 2 and its PID, nothing
/// is published, and every rank goes on to the exact result.
#[test]
fn a_rank_failing_a_checkpoint_across_nodes_publishes_nothing_and_is_named() {
    if skipped_without_slurm() {
        return;
    }
    let sb = Sandbox::new("slurm-job-fail");
    let programs = example_programs(&sb);
    let cluster = start_private_cluster(&sb, 2);
    rank_two_fails_the_job_checkpoint(
        &sb,
        &cluster,
        &programs.0,
        "",
        "export OMPI_MCA_crs=none",
        &["not checkpointable"],
    );
}

/// The same with criu: rank 2 (with rank 3 on the second node) holds a TCP connection
/// off its node (to a listener of the test's on the bridge, as to another node), which
/// CRIU does not dump: the job checkpoint fails naming rank 2 with its PID, its node
/// and host, and CRIU's cause; nothing is published, and every rank goes on.
#[test]
fn a_criu_node_with_a_tcp_connection_off_the_node_fails_the_job_checkpoint_by_name() {
    let Some((sb, programs, cluster)) = criu_cluster("slurm-criu-tcp") else { return };
    let bridge = format!("{}.1", cluster.network.as_ref().expect("no namespaces").subnet);
    let listener = std::net::TcpListener::bind((bridge.as_str(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::thread::spawn(move || listener.accept().map(|(stream, _)| stream));
    let preload = format!(
        "export OMPI_MCA_crs=criu; env LD_PRELOAD={} ",
        lib_dir().join("libopalcrs.so").display()
    );
    let expected = [
        "node 1 (".to_string(),
        format!(":{port} (process "),
        ", rank 2), which an image restored on another node cannot have".to_string(),
    ];
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    rank_two_fails_the_job_checkpoint(
        &sb,
        &cluster,
        &programs.1,
        &preload,
        &format!("exec 3<>/dev/tcp/{bridge}/{port}"),
        &expected,
    );
    // The connection stays open until here.
    assert!(accepted.join().unwrap().is_ok(), "rank 2 did not connect");
}

/// A job of 4 ranks of `program` over the 2 nodes of `cluster` in which rank 2 runs
/// `setup` (bash) before it becomes `program`; `launch` goes before the launcher
/// (`export …;`) and its ranks' command (`env …`). Rank 2's checkpoint fails: the job
/// checkpoint fails naming rank 2, its PID and each of `causes`.
fn rank_two_fails_the_job_checkpoint(
    sb: &Sandbox,
    cluster: &Cluster,
    program: &Path,
    launch: &str,
    setup: &str,
    causes: &[&str],
) {
    assert!(cluster.network.is_some(), "the nodes need namespaces of their own");
    let (result, output, checkpoints) =
        (sb.path("fail.result"), sb.path("fail.out"), sb.path("checkpoints"));
    let steps = 300u64;
    let (before, ranks_before) = launch.split_once(';').unwrap_or(("", launch));
    let script = format!(
        "{before}{} exec {} -np 4 -w {} -n fail.ckpt -- {ranks_before} /bin/bash -c '[ \"$OMPI_COMM_WORLD_RANK\" = 2 ] && {setup}; exec \"$@\".\"$OMPI_COMM_WORLD_RANK\"' sh {} {steps} {STEP_MS} {}",
        if before.is_empty() { "" } else { ";" },
        opal_run().display(),
        checkpoints.display(),
        program.display(),
        result.display()
    );
    let out = sb
        .command("sbatch")
        .env("SLURM_CONF", &cluster.conf)
        .args(["--parsable", "--nodes=2", "--ntasks-per-node=2"])
        .arg(format!("--output={}", output.display()))
        .arg(format!("--wrap={script}"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "sbatch failed: {stdout}{stderr}\n{}", cluster.logs());
    let id = stdout.trim().split(';').next().unwrap().to_string();
    let rank_pid = |rank: usize| {
        let marker = format!("OMPI_COMM_WORLD_RANK={rank}");
        cluster.job_processes().into_iter().find(|pid| {
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == program)
                && fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == marker.as_bytes()))
        })
    };
    let working = wait_until(Duration::from_secs(60), || {
        (0..4).all(|rank| rank_pid(rank).is_some())
            && fs::read_to_string(&output).is_ok_and(|o| o.matches("step 10 ").count() == 4)
    });
    assert!(working, "the job's ranks did not start:\n{}", sb.read("fail.out"));
    let launcher = job_launcher(cluster).expect("no launcher");
    let rank2 = rank_pid(2).unwrap();
    let net = |pid: i32| fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    assert_ne!(net(rank2), net(launcher), "rank 2 runs on the launcher's node");
    let out = checkpoint_launcher(launcher, &[]);
    let (stdout, stderr) = text(&out);
    let series = checkpoints.join("fail.ckpt");
    let published: Vec<String> = fs::read_dir(&series)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let finished = wait_until(Duration::from_secs(60), || {
        cluster.job(&id).is_some_and(|info| {
            info.iter().any(|(k, v)| k == "JobState" && !UNFINISHED.contains(&v.as_str()))
        })
    });
    let state = cluster.job(&id).unwrap_or_default();
    let field = |name: &str| state.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let expected = format!("steps {steps} value {}\n", expected_value(steps));
    let results: Vec<String> = (0..4)
        .map(|rank| fs::read_to_string(format!("{}.{rank}", result.display())).unwrap_or_default())
        .collect();
    let context = format!(
        "opal-checkpoint: {:?}\n{stdout}{stderr}\njob: {:?}\n{}",
        out.status,
        field("JobState"),
        fs::read_to_string(&output)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("step "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(out.status.code(), Some(6), "{context}");
    assert!(
        stderr
            .contains(&format!("job checkpoint failed, nothing published: rank 2 (PID {rank2}): "))
            && causes.iter().all(|cause| stderr.contains(cause)),
        "{context}"
    );
    assert!(published.iter().all(|name| name.parse::<u64>().is_err()), "published: {published:?}");
    assert!(finished, "the job did not finish: {context}");
    assert_eq!(
        (field("JobState").as_deref(), field("ExitCode").as_deref()),
        (Some("COMPLETED"), Some("0:0")),
        "{context}"
    );
    assert!(results.iter().all(|r| *r == expected), "results {results:?}: {context}");
    eprintln!("Slurm test, rank 2 failing a job checkpoint: {}", stderr.trim());
}

/// The processes of `node` of `cluster`: its slurmd and every process in its network
/// namespace (its slurmstepds, the job steps and programs on it).
fn processes_on_node(cluster: &Cluster, node: &str) -> Vec<i32> {
    let net = |pid: i32| fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    let Some(slurmd) = cluster
        .daemons
        .iter()
        .find(|(name, _)| name.strip_prefix("slurmd ") == Some(node))
        .map(|(_, child)| child.id() as i32)
    else {
        return Vec::new();
    };
    let Some(ns) = net(slurmd) else { return Vec::new() };
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let mut pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != slurmd && net(pid).as_ref() == Some(&ns))
        .collect();
    pids.insert(0, slurmd);
    pids
}

/// What a crashed node looks like: its slurmd and everything running on it killed with
/// SIGKILL, by PID, until nothing is left (a dying process may have forked). The PIDs
/// killed.
fn crash_node(cluster: &Cluster, node: &str) -> Vec<i32> {
    let mut killed = Vec::new();
    let gone = wait_until(Duration::from_secs(10), || {
        let left: Vec<i32> = processes_on_node(cluster, node)
            .into_iter()
            // The slurmd is our child: dead, it stays a zombie until the cluster reaps it.
            .filter(|pid| !killed.contains(pid))
            .collect();
        for &pid in &left {
            // SAFETY: SIGKILL to a process of this test's cluster, found by its node.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        killed.extend(&left);
        left.is_empty()
    });
    assert!(gone, "node {node} still runs processes after SIGKILL");
    killed
}

/// The launcher (`opal-run -np`) of the cluster's job.
/// `opal-checkpoint ARGS LAUNCHER`, run in the launcher's node (network namespace).
fn checkpoint_launcher(launcher: i32, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/proc/{launcher}/ns/net"))
        .arg(checkpoint_tool())
        .args(args)
        .arg(launcher.to_string())
        .output()
        .unwrap()
}

fn job_launcher(cluster: &Cluster) -> Option<i32> {
    cluster.job_processes().into_iter().find(|&pid| {
        fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|&b| b == 0).any(|w| w == b"-np"))
    })
}

fn epoch_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A job of 4 ranks over 2 of 3 nodes (examples/slurm/job4x2.sbatch, submitted with
/// --requeue) is checkpointed once (`opal-checkpoint` of its launcher, the job goes on),
/// then its first node, where the launcher runs, crashes: its slurmd and everything on
/// it killed with SIGKILL. Slurm finds the node not responding (SlurmdTimeout), sets it
/// DOWN and requeues the job, which restarts every rank from the global snapshot on the
/// two nodes left and finishes COMPLETED with the exact result; the steps done after the
/// checkpoint are done again.
#[test]
fn a_job_whose_node_is_killed_restarts_from_its_global_snapshot_on_the_nodes_left() {
    let started = Instant::now();
    if skipped_without_slurm() {
        return;
    }
    let sb = Sandbox::new("slurm-node-killed");
    let programs = example_programs(&sb);
    let cluster = start_private_cluster(&sb, 3);
    assert!(cluster.network.is_some(), "the nodes need namespaces of their own");
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();

    let what = ("self, 4 ranks over 2 nodes, a node killed", 0, "killed");
    let checkpoints = sb.path("checkpoints");
    let mut jobs = vec![submit_4x2(&cluster, &sb, &programs.0, "self", &checkpoints, what)];
    let output = jobs[0].output.clone();
    let context = |jobs: &[Job]| {
        let text = fs::read_to_string(&output).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("step ")).collect();
        format!("job {}: output:\n{}\n{}", jobs[0].id, lines.join("\n"), cluster.logs())
    };

    // The first run works on nodes 1 and 2; one job checkpoint, and it goes on.
    let working = wait_until(Duration::from_secs(60), || {
        jobs[0].runs().first().and_then(|r| r.last).is_some_and(|l| l >= 60)
    });
    assert!(working, "the job did not start working: {}", context(&jobs));
    let launcher = job_launcher(&cluster).expect("no launcher");
    let listening = tcp_listener(launcher as u32);
    let out = checkpoint_launcher(launcher, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "opal-checkpoint: {stdout}{stderr}\n{}", context(&jobs));
    let checkpointed_at = jobs[0].runs()[0].last.unwrap_or(0);
    let mut placements = vec![nodes_running(&cluster, &programs.0)];
    placements[0].sort();

    // Then the launcher's node crashes, a second of work after the checkpoint.
    let host = jobs[0].runs()[0].host.clone().unwrap_or_default();
    let crashed = names.iter().find(|n| host.starts_with(n.as_str())).expect("no node").clone();
    std::thread::sleep(Duration::from_secs(1));
    let killed_at = (Instant::now(), epoch_seconds());
    let killed = crash_node(&cluster, &crashed);
    let mut down_after = None;
    while jobs[0].finished.is_none() && started.elapsed() < DEADLINE {
        poll(&cluster, &mut jobs);
        // DOWN+COMPLETING while the requeued job is cleaned up (sinfo says "completing").
        if down_after.is_none()
            && cluster
                .slurm("scontrol", &["show", "node", "-o", &crashed])
                .is_ok_and(|s| s.split_whitespace().any(|w| w.starts_with("State=DOWN")))
        {
            down_after = Some(killed_at.0.elapsed().as_secs_f64());
        }
        let runs = jobs[0].runs();
        if let Some(run) =
            runs.get(1).filter(|r| r.first.zip(r.last).is_some_and(|(f, l)| l >= f + 10))
        {
            if placements.len() == 1 && run.ended_at.is_none() {
                let mut nodes = nodes_running(&cluster, &programs.0);
                nodes.sort();
                placements.push(nodes);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let job = &jobs[0];
    let runs = job.runs();
    let lost = lost_per_requeue(&runs);
    let restarted_after = runs.get(1).and_then(|r| r.began_at).map(|at| at - killed_at.1);
    let places: Vec<String> = runs.iter().map(|r| r.host.clone().unwrap_or_default()).collect();
    let report = format!(
        "Slurm test, a node killed: job {} {} after {:.1} s; {} killed ({} processes) after step {:?} (checkpoint at step {checkpointed_at}); DOWN after {:?} s; requeued run began {:?} s after the kill; {} requeues; work lost per requeue {lost:?} steps of {STEP_MS} ms; runs on {places:?}; ranks on {placements:?}",
        job.id,
        job.field("JobState").unwrap_or("not finished"),
        started.elapsed().as_secs_f64(),
        crashed,
        killed.len(),
        runs.first().and_then(|r| r.last),
        down_after.map(|s| (s * 10.0).round() / 10.0),
        restarted_after.map(|s| (s * 10.0).round() / 10.0),
        runs.len().saturating_sub(1),
    );
    eprintln!("{report}");
    let mut problems = ended_exact(job);
    // The launcher listens on its node's address alone, the one its agents are told.
    let node_addr = cluster.nodes.iter().find(|n| n.name == crashed).map(|n| n.addr.clone());
    if listening.map(|l| l.ip().to_string()) != node_addr {
        problems.push(format!("the launcher listened on {listening:?}, not on {node_addr:?}"));
    }
    if runs.len() != 2 {
        problems.push(format!("{} runs, expected 2 (one requeue, after the crash)", runs.len()));
    }
    if down_after.is_none() {
        problems.push(format!("Slurm never set {crashed} DOWN"));
    }
    match runs.get(1) {
        Some(run) => {
            let said = run.started.as_deref().unwrap_or("");
            if !said.starts_with("opal-run: restarting the job of 4 ranks from global snapshot") {
                problems.push(format!("the requeued run said {said:?}, not a job restart"));
            }
            // It resumed from the checkpoint (the last step printed when opal-checkpoint
            // returned, give or take the output's delay), not from the start.
            let resumed = run.first.unwrap_or(0);
            if resumed.abs_diff(checkpointed_at) > MAX_LOST_STEPS {
                problems.push(format!(
                    "the requeued run began at step {resumed}, the checkpoint was taken at step {checkpointed_at}"
                ));
            }
        }
        None => problems.push("the job was never requeued".into()),
    }
    let two_each =
        |a: &str, b: &str| vec![a.to_string(), a.to_string(), b.to_string(), b.to_string()];
    let wanted = vec![two_each(&names[0], &names[1]), two_each(&names[1], &names[2])];
    if crashed != names[0] || placements != wanted {
        problems.push(format!(
            "{crashed} crashed and the ranks ran on {placements:?}, not {} and {wanted:?}",
            names[0]
        ));
    }
    if !problems.is_empty() {
        panic!("{}\n{report}\n{}", failure(job, &problems), cluster.logs());
    }
    drop(cluster);
}
