#!/usr/bin/env bash
# install-slurm.sh - puts Debian's Slurm (slurm-wlm 22.05: slurmctld, slurmd, the
# client commands) and MUNGE on this machine, for tests/slurm.rs and the examples in
# examples/slurm/. Idempotent and quiet: with everything there it exits 0 at once,
# printing nothing.
#
# Only the programs are installed: no daemon is started and none is configured. The
# test starts its own munged, slurmctld and one slurmd per node with a private
# configuration, key, state directories and ports (several nodes on this machine: the
# package is built with --enable-multiple-slurmd; each node in namespaces of its own
# made with ip, nsenter and unshare, from iproute2 and util-linux, when they are there). When this script has to install, it keeps Debian's
# maintainer scripts from starting the packaged services (a temporary policy-rc.d that
# denies every start, unless the machine already has one).
#
# Exit status: 0 when the programs are there, 1 otherwise (not root, apt failed).
set -euo pipefail

log() { echo "install-slurm: $*" >&2; }

have_all() {
    local tool
    for tool in slurmctld slurmd sbatch squeue scontrol scancel sinfo munged; do
        [ -x "/usr/sbin/$tool" ] || [ -x "/usr/bin/$tool" ] || return 1
    done
    # The plugins the test's configuration names (cgroup v1 and the cgroup plugins).
    local plugin
    for plugin in cgroup_v1 proctrack_cgroup task_cgroup jobacct_gather_cgroup; do
        [ -e "/usr/lib/x86_64-linux-gnu/slurm-wlm/$plugin.so" ] ||
            [ -n "$(find /usr/lib -name "$plugin.so" -print -quit 2>/dev/null)" ] || return 1
    done
}

have_all && exit 0

if [ "$(id -u)" != 0 ]; then
    log "need root to install slurm-wlm and munge (apt-get)"
    exit 1
fi
command -v apt-get >/dev/null || { log "apt-get not found: install Slurm and MUNGE by hand"; exit 1; }

# Keep the packages' maintainer scripts from starting daemons while installing.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    own_policy=1
fi
cleanup() { [ $own_policy = 1 ] && rm -f "$policy"; return 0; }
trap cleanup EXIT

log "installing slurm-wlm and munge (apt-get)"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    if ! apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; then
        log "apt-get install slurm-wlm munge failed"
        exit 1
    fi
fi
have_all || { log "slurm-wlm installed, but a program or plugin is still missing"; exit 1; }
