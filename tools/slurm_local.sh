#!/usr/bin/env bash
# tools/slurm_local.sh - a one-node Slurm cluster on this machine, for running the workflow's
# Slurm profile for real (profiles/slurm-ci, tests/test_slurm.py). Debian 12 (Slurm 22.05 and
# munge from Debian's archive), run as root; no systemd needed: the daemons are started directly
# and their PIDs recorded, and `down` stops only those.
#
#   tools/slurm_local.sh up       install slurm-wlm + munge if missing, write /etc/slurm configs,
#                                 start munged, slurmctld, slurmd (+ MariaDB/slurmdbd with
#                                 ACCOUNTING=1), wait until the node is idle. Idempotent.
#   tools/slurm_local.sh down     stop the daemons this script started (recorded PIDs only);
#                                 `down --purge` also wipes the controller state / accounting DB
#   tools/slurm_local.sh status   which of our daemons run, and sinfo; exit 0 iff the node answers
#
# The cluster: partitions `cpu` (default) and `gpu` on the one node, which advertises
# Gres=gpu:h100:1 (a fake GPU: gres.conf points it at /dev/null, so jobs asking for
# --gpus/--gres=gpu are scheduled and get CUDA_VISIBLE_DEVICES, but there is no device);
# SelectType=select/cons_tres with CR_Core_Memory and DefMemPerCPU, so jobs share the node.
#
# Knobs (environment):
#   ACCOUNTING=0     0 (default): accounting_storage/none - no database, `sacct` cannot answer, so
#                    Snakemake's Slurm plugin must use `slurm-status-command: squeue` (its default,
#                    sacct, never sees the jobs finish). Any -A account string is accepted.
#                    1: MariaDB (unix socket) + slurmdbd; account $SLURM_ACCOUNT is created and
#                    root (and $SUDO_USER) get an association, so `sacct` and -A are real.
#   SLURM_ACCOUNT=reasonflow   account created with ACCOUNTING=1 (and used by profiles/slurm-ci)
#   GPU_TYPE=h100    type of the fake GPU
#   DEF_MEM_PER_CPU=1000       MB a job gets per CPU when it asks for no memory
#   STATE_DIR=/run/reasonflow-slurm   where the PIDs of the daemons started here are recorded
set -euo pipefail

ACCOUNTING=${ACCOUNTING:-0}
SLURM_ACCOUNT=${SLURM_ACCOUNT:-reasonflow}
GPU_TYPE=${GPU_TYPE:-h100}
DEF_MEM_PER_CPU=${DEF_MEM_PER_CPU:-1000}
STATE_DIR=${STATE_DIR:-/run/reasonflow-slurm}
CLUSTER=reasonflow-local
DB_PASS=reasonflow-slurmdbd
ETC=/etc/slurm
NODE=$(hostname -s)
DAEMONS="munged mariadbd slurmdbd slurmctld slurmd"   # start order; `down` stops in reverse

START=$(date +%s%N)
say() { printf '[slurm_local %5.1fs] %s\n' "$(( ($(date +%s%N) - START) / 1000000 ))e-3" "$*" >&2; }
fail() { say "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------------------- helpers
# ours NAME: the PID recorded for NAME is alive and its command name is NAME
ours() {
    local pidfile="$STATE_DIR/$1.pid" pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ -d /proc/$pid && $(</proc/"$pid"/comm) == "$1" ]]
}

# remember NAME DAEMON_PIDFILE: wait for the daemon's own pid file, copy it to STATE_DIR
remember() {
    for _ in $(seq 50); do [[ -s $2 ]] && break; sleep 0.1; done
    [[ -s $2 ]] || fail "$1 did not write $2 (see /var/log/slurm/)"
    cp "$2" "$STATE_DIR/$1.pid"
    say "started $1 (pid $(<"$STATE_DIR/$1.pid"))"
}

# until_ok SECONDS NAME CMD...: poll CMD every 0.25 s; give up early if daemon NAME died
until_ok() {
    local secs=$1 name=$2
    shift 2
    for _ in $(seq $((secs * 4))); do
        "$@" >/dev/null 2>&1 && return 0
        if [[ -s $STATE_DIR/$name.pid ]] && ! ours "$name"; then break; fi
        sleep 0.25
    done
    [[ -f /var/log/slurm/$name.log ]] && tail -n 5 "/var/log/slurm/$name.log" >&2
    if ours "$name" || [[ ! -s $STATE_DIR/$name.pid ]]; then fail "gave up after ${secs}s waiting for $name"; fi
    fail "$name exited (log above, /var/log/slurm/$name.log); clean up with: $0 down"
}

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1; }

preflight() {
    [[ $(id -u) == 0 ]] || fail "run as root (installs packages, writes /etc/slurm, starts daemons)"
    if [[ ! -r /etc/debian_version ]] || ! command -v apt-get >/dev/null; then fail "needs Debian (apt-get)"; fi
    mkdir -p "$STATE_DIR"
}

# ------------------------------------------------------------------------------- install
install_packages() {
    local pkgs="slurm-wlm munge" need="" p policy=""
    [[ $ACCOUNTING == 1 ]] && pkgs+=" slurmdbd mariadb-server"
    for p in $pkgs; do
        dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || need+=" $p"
    done
    if [[ -z $need ]]; then say "packages present ($(dpkg-query -W -f='${Version}' slurmctld))"; return; fi
    say "apt-get install$need"
    # no init scripts may start daemons during the install: this script starts them itself
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        policy=/usr/sbin/policy-rc.d
    fi
    # shellcheck disable=SC2086
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null; } \
        || { [[ -n $policy ]] && rm -f "$policy"; fail "apt-get install$need failed"; }
    [[ -n $policy ]] && rm -f "$policy"
    say "installed slurm $(dpkg-query -W -f='${Version}' slurmctld)"
}

# ------------------------------------------------------------------------------- configs
write_configs() {
    local hw mem acct
    mkdir -p "$ETC" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
    chown slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm
    # the node's CPU layout as slurmd detects it (CPUs, sockets, cores, threads), minus its memory
    hw=$(slurmd -C | head -1 | sed -E 's/^NodeName=[^ ]+ //; s/ ?RealMemory=[0-9]+//; s/ ?UpTime=.*//')
    # advertise 90% of RAM: a node advertising more than slurmd measures is drained
    mem=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    if [[ $ACCOUNTING == 1 ]]; then
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
# GPUs as a TRES: sacct shows gres/gpu (slurmctld refuses this without slurmdbd)
AccountingStorageTRES=gres/gpu
AccountingStorageEnforce=associations
JobAcctGatherType=jobacct_gather/linux"
    else
        acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    fi
    cat >"$ETC/slurm.conf" <<EOF
# Written by tools/slurm_local.sh (reasonflow): one-node test cluster on $NODE.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroup plugins: works in containers and VMs without systemd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job that asks for no memory would otherwise get the whole node (and run alone)
DefMemPerCPU=$DEF_MEM_PER_CPU
# finished jobs stay visible to squeue/scontrol for an hour (the plugin's squeue mode needs
# MinJobAge >= 3 x slurm-init-seconds-before-status-checks; tests/test_slurm.py reads the GPU job's
# record with scontrol after the whole run: 5 min was too short on CI's loaded cores)
MinJobAge=3600
$acct
# finished jobs, one line each (partition, account, state) - readable without accounting
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 $hw RealMemory=$mem Gres=gpu:$GPU_TYPE:1 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
    # a gres/gpu needs a device file, otherwise slurmd reports 0 GPUs and the node is INVALID
    cat >"$ETC/gres.conf" <<EOF
# Written by tools/slurm_local.sh: one fake $GPU_TYPE backed by /dev/null
NodeName=$NODE Name=gpu Type=$GPU_TYPE File=/dev/null
EOF
    if [[ $ACCOUNTING == 1 ]]; then
        cat >"$ETC/slurmdbd.conf" <<EOF
# Written by tools/slurm_local.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
EOF
        chown slurm:slurm "$ETC/slurmdbd.conf" && chmod 600 "$ETC/slurmdbd.conf"   # slurmdbd insists
    fi
    say "wrote $ETC/slurm.conf + gres.conf: $NODE $hw RealMemory=$mem Gres=gpu:$GPU_TYPE:1 (accounting=$ACCOUNTING)"
}

# ------------------------------------------------------------------------------- daemons
start_munged() {
    ours munged && { say "munged already running (ours)"; return; }
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then say "using the munged already running"; return; fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
            || head -c 1024 /dev/urandom >/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 755 /run/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    remember munged /run/munge/munged.pid
    until_ok 10 munged bash -c 'munge -n | unmunge'
}

start_mariadbd() {
    ours mariadbd && { say "mariadbd already running (ours)"; return; }
    if mariadb -e 'select 1' >/dev/null 2>&1; then say "using the MariaDB already running"; else
        [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
        install -d -o mysql -g mysql -m 755 /run/mysqld
        rm -f /run/mysqld/mysqld.pid
        setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --skip-networking \
            --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid \
            --innodb-lock-wait-timeout=900 </dev/null >>/var/log/slurm/mariadbd.log 2>&1 &
        remember mariadbd /run/mysqld/mysqld.pid
        until_ok 60 mariadbd mariadb -e 'select 1'
    fi
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

start_slurmdbd() {
    local u
    if ! ours slurmdbd; then
        rm -f /run/slurmdbd.pid
        /usr/sbin/slurmdbd
        remember slurmdbd /run/slurmdbd.pid
    fi
    until_ok 60 slurmdbd sacctmgr -n list cluster
    # `sacctmgr -i add` exits non-zero when there is nothing new to add
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    sacctmgr -n -P list account format=account | grep -qx "$SLURM_ACCOUNT" \
        || sacctmgr -i add account "$SLURM_ACCOUNT" Cluster="$CLUSTER" Description=reasonflow Organization=reasonflow >/dev/null
    for u in root ${SUDO_USER:-}; do
        sacctmgr -n -P list assoc user="$u" account="$SLURM_ACCOUNT" format=account | grep -q . \
            || sacctmgr -i add user "$u" Account="$SLURM_ACCOUNT" DefaultAccount="$SLURM_ACCOUNT" Cluster="$CLUSTER" >/dev/null
    done
    say "accounting: cluster $CLUSTER, account $SLURM_ACCOUNT"
}

start_slurmctld() {
    if ours slurmctld; then say "slurmctld already running (ours): scontrol reconfigure"; scontrol reconfigure; return; fi
    if scontrol ping 2>/dev/null | grep -q 'is UP'; then
        fail "a slurmctld this script did not start is running (scontrol ping); stop it first"
    fi
    rm -f /run/slurmctld.pid
    /usr/sbin/slurmctld
    remember slurmctld /run/slurmctld.pid
    until_ok 30 slurmctld bash -c 'scontrol ping | grep -q "is UP"'
}

start_slurmd() {
    ours slurmd && { say "slurmd already running (ours)"; return; }
    rm -f /run/slurmd.pid
    /usr/sbin/slurmd
    remember slurmd /run/slurmd.pid
}

wait_idle() {
    local st
    for _ in $(seq 240); do
        st=$(node_state)
        case $st in
            idle* | mixed* | alloc*) say "node $NODE is $st"; return 0 ;;
            drain* | down* | inval* | fail*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.25
    done
    scontrol show node "$NODE" >&2 || true
    fail "node $NODE is '${st:-?}', not idle, after 60 s (see /var/log/slurm/slurmd.log, slurmctld.log)"
}

# ------------------------------------------------------------------------------- commands
cmd_up() {
    local want=none
    preflight
    [[ $ACCOUNTING == 1 ]] && want=slurmdbd
    if ours slurmctld && ! grep -qx "AccountingStorageType=accounting_storage/$want" "$ETC/slurm.conf"; then
        fail "the running cluster was started with another ACCOUNTING setting: run '$0 down' first"
    fi
    install_packages
    write_configs
    start_munged
    if [[ $ACCOUNTING == 1 ]]; then start_mariadbd; start_slurmdbd; fi
    start_slurmctld
    start_slurmd
    wait_idle
    # end to end: slurmd registered and runs a job step (also one on the fake GPU)
    timeout 60 srun -N1 -t 1 true || fail "srun probe failed (see /var/log/slurm/slurmd.log, slurmctld.log)"
    timeout 60 srun -p gpu --gpus="$GPU_TYPE":1 -t 1 true || fail "srun probe on the gpu partition failed"
    sinfo -o '%P %a %D %T %c %m %G' >&2
    say "up (accounting=$ACCOUNTING). Stop with: $0 down"
}

cmd_down() {
    local name pid stopped=0
    [[ -d $STATE_DIR ]] || { say "nothing recorded in $STATE_DIR: nothing to stop"; return 0; }
    for name in $(echo "$DAEMONS" | tr ' ' '\n' | tac); do
        if ours "$name"; then
            pid=$(<"$STATE_DIR/$name.pid")
            kill -TERM "$pid"
            for _ in $(seq 80); do [[ -d /proc/$pid ]] || break; sleep 0.25; done
            if [[ -d /proc/$pid ]]; then say "$name ($pid) still alive after 20 s: SIGKILL"; kill -KILL "$pid" || true; fi
            say "stopped $name ($pid)"
            stopped=$((stopped + 1))
            # stale pid files confuse the packages' maintainer scripts later
            case $name in
                munged) rm -f /run/munge/munged.pid ;;
                mariadbd) rm -f /run/mysqld/mysqld.pid ;;
                *) rm -f "/run/$name.pid" ;;
            esac
        fi
        rm -f "$STATE_DIR/$name.pid"
    done
    if [[ ${1:-} == --purge ]]; then
        rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/* /var/lib/mysql/slurm_acct_db
        say "purged controller state and accounting database"
    fi
    say "down ($stopped daemons stopped)"
}

cmd_status() {
    local name
    for name in $DAEMONS; do
        if ours "$name"; then echo "$name: running, pid $(<"$STATE_DIR/$name.pid")"; else echo "$name: not started by $0"; fi
    done
    if command -v sinfo >/dev/null && sinfo -o '%P %a %D %T %c %m %G' 2>/dev/null; then
        [[ $(node_state) =~ ^(idle|mixed|alloc) ]]
    else
        echo "no Slurm controller answers"; return 1
    fi
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down "${2:-}" ;;
    status) cmd_status ;;
    *) echo "usage: $0 up | down [--purge] | status" >&2; exit 2 ;;
esac
