#!/usr/bin/python3
"""Private, throw-away "clusters" on one machine for plugpool's remote-worker tests.

Usage:
  cluster.py slurm [--nodes N] [--timeout SECONDS] [--no-alloc] -- CMD ARGS...
      Starts a private munged, one slurmctld and N slurmd's (nodes n1..nN, 2 CPUs each,
      all on 127.0.0.1 with ports picked at run time), waits until every node is idle, then
      runs `salloc -N N -n 2N --quiet CMD ARGS...`. CMD runs on this machine with
      SLURM_JOB_ID, SLURM_CONF and PLUGPOOL_TEST_SLURM_DIR (the private directory, with
      every daemon's log) set, and may start job steps with `srun --exact -n1 -N1 ...`.
      With --no-alloc, CMD runs outside any allocation instead (SLURM_CONF set), to submit
      jobs of its own with sbatch.

  cluster.py netns [--timeout SECONDS] -- CMD ARGS...
      Creates two network namespaces, a "host" and a "worker", joined directly by one veth
      pair (pph0 10.77.K.1/24 <-> ppw0 10.77.K.2/24), and runs CMD in the root namespace with
      PLUGPOOL_NS_HOST, PLUGPOOL_NS_WORKER, PLUGPOOL_NS_HOST_ADDR, PLUGPOOL_NS_WORKER_ADDR
      and PLUGPOOL_NS_WORKER_LINK set. CMD enters them with `ip netns exec NAME ...` and
      can cut the link with `ip -n $PLUGPOOL_NS_WORKER link set $PLUGPOOL_NS_WORKER_LINK down`.

  cluster.py probe          self-check, to be run as the CMD of `cluster.py slurm`
  cluster.py probe-netns    self-check, to be run as the CMD of `cluster.py netns`

Exit status: CMD's status (128+N if a signal N killed it); 1 if the cluster could not be set
up, or if something could not be cleaned up (then CMD's status if that was non-zero); 124 if
CMD ran past --timeout; 128+N if this script got signal N.

Guarantees: slurm mode writes only inside its private temporary directory (its own munge
key and socket, its own slurm.conf; nothing under /etc or /run). netns mode changes only its
two namespaces (`ip netns` keeps their names in /run/netns) and uses no address but theirs.
Slurm's daemons (and srun) listen on 127.0.0.1 only, on ports that were free when the run
started.

On every way out (normal end, error, --timeout, SIGINT, SIGTERM, SIGHUP) everything started
is stopped: Slurm jobs are cancelled; CMD's session, every process whose command line or
environment refers to the private directory (job steps, slurmstepd's, stragglers) and then
the daemons get SIGTERM, and SIGKILL after a grace period; the directory is removed, or the
namespaces' processes are killed and the namespaces deleted. Then the script checks that
nothing is left and, if something is, prints it and exits non-zero. Only a SIGKILL of this
script itself defeats that.

Inside `slurm`: steps run as root, in the caller's working directory, with srun's
environment (so SLURM_CONF and PLUGPOOL_TEST_SLURM_DIR too). The allocation has 2 CPUs per
node; `srun --exact -n1` steps beyond that wait ("step creation temporarily disabled")
unless given --overlap. srun forwards its stdin to task 0 (use --input=none if unwanted).
"""

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

GRACE_SECONDS = 5.0
NODE_CPUS = 2
EXIT_SETUP_FAILED = 1
EXIT_TIMEOUT = 124


# --------------------------------------------------------------------------- signals

class Interrupted(Exception):
    """Raised by the signal handler so that `finally` blocks run."""

    def __init__(self, signum):
        super().__init__(f"got signal {signum}")
        self.signum = signum


class SignalGuard:
    """Turns SIGINT/SIGTERM/SIGHUP into Interrupted; while `deferred`, only records them.

    This object is the only state the signal handler touches.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.deferred = False
        self.received = None
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum, _frame):
        if self.received is None:
            self.received = signum
        if not self.deferred:
            self.deferred = True  # a second signal must not interrupt the cleanup
            raise Interrupted(signum)


# --------------------------------------------------------------------------- processes

def log(message):
    print(f"cluster.py: {message}", file=sys.stderr, flush=True)


def child_env(extra):
    """The caller's environment without any Slurm job variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SALLOC_", "SRUN_", "SBATCH_", "PLUGPOOL_NS_"))}
    env.update(extra)
    return env


def proc_stat(pid):
    """(state, parent pid, session id) of pid, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[1]), int(fields[3])


def alive(pid):
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def all_pids():
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def read_proc(pid, name):
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def describe(pid):
    cmdline = read_proc(pid, "cmdline").replace(b"\0", b" ").strip()
    return f"pid {pid}: {cmdline.decode(errors='replace')}"


def refers_to(data, needle):
    return needle + b"/" in data or needle + b"\0" in data or data.endswith(needle)


def processes_referring_to(path):
    """Live processes (not this one) whose command line or environment names `path`."""
    needle = os.fsencode(path)
    me = os.getpid()
    return [pid for pid in all_pids()
            if pid != me and alive(pid)
            and (refers_to(read_proc(pid, "cmdline"), needle)
                 or refers_to(read_proc(pid, "environ"), needle))]


def session_members(sid):
    me = os.getpid()
    return [pid for pid in all_pids()
            if pid != me and (stat := proc_stat(pid)) is not None and stat[2] == sid
            and stat[0] not in ("Z", "X")]


def stop_pids(pids, grace=GRACE_SECONDS):
    """SIGTERM, wait up to `grace` seconds, SIGKILL; returns the pids still alive after."""
    pids = [p for p in set(pids) if alive(p)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = [p for p in pids if alive(p)]
        if not pids:
            break
    return pids


def stop_children(children, grace=GRACE_SECONDS):
    """Stops and reaps our own Popen children (a dict name -> Popen)."""
    stop_pids([c.pid for c in children.values() if c.poll() is None], grace)
    for name, child in children.items():
        try:
            child.wait(timeout=2)
        except subprocess.TimeoutExpired:
            log(f"{name} (pid {child.pid}) survived SIGKILL")


def become_subreaper():
    """Orphaned descendants (slurmstepd's, daemonized strays) become our children.

    So they are reaped here, not left as zombies under a pid 1 that may never reap them."""
    pr_set_child_subreaper = 36
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def reap_orphans():
    """Reaps adopted zombies; call only when no Popen child of ours is still unreaped."""
    me = os.getpid()
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is not None and stat[1] == me and stat[0] == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def exit_status(returncode):
    return 128 - returncode if returncode < 0 else returncode


# --------------------------------------------------------------------------- slurm

def free_ports(count):
    """`count` distinct TCP ports that were free on 127.0.0.1 just now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))  # where slurmctld and slurmd listen
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_munge_key(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(1024))


def slurm_conf_text(tmp, hostname, nodes, ctld_port, node_ports):
    lines = [
        "ClusterName=plugpool",
        f"SlurmctldHost={hostname}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={tmp}/munge.sock",
        "SlurmUser=root",
        "SlurmdUser=root",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "ReturnToService=2",
        # Daemons and srun bind to their node's address (127.0.0.1), never the wildcard.
        "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
        f"StateSaveLocation={tmp}/state",
        f"SlurmdSpoolDir={tmp}/spool-%n",
        f"SlurmctldPidFile={tmp}/slurmctld.pid",
        f"SlurmdPidFile={tmp}/slurmd-%n.pid",
        f"SlurmctldLogFile={tmp}/slurmctld.log",
        f"SlurmdLogFile={tmp}/slurmd-%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        # Short timeouts: fast teardown of ended jobs, quick notice of a dead daemon.
        "KillWait=2",
        "MinJobAge=10",
        "InactiveLimit=0",
        "MessageTimeout=10",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "UnkillableStepTimeout=20",
    ]
    for name, port in zip(nodes, node_ports):
        lines.append(f"NodeName={name} NodeHostname={hostname} NodeAddr=127.0.0.1 "
                     f"Port={port} CPUs={NODE_CPUS} State=UNKNOWN")
    lines.append(f"PartitionName=debug Nodes={','.join(nodes)} Default=YES "
                 "OverSubscribe=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def start_daemon(children, name, argv, tmp, env):
    """Starts a foreground daemon with stdout/stderr in tmp/NAME.out; records it in children."""
    with open(os.path.join(tmp, f"{name}.out"), "wb") as out:
        children[name] = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)


def wait_for_munge(tmp, child, deadline):
    sock = os.path.join(tmp, "munge.sock")
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return False
        if os.path.exists(sock):
            probe = subprocess.run(["munge", "-S", sock, "-n"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, timeout=10)
            if probe.returncode == 0:
                return True
        time.sleep(0.1)
    return False


def node_states(env):
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=env, timeout=15,
                             capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {}
    if out.returncode != 0:
        return {}
    return dict(line.split(None, 1) for line in out.stdout.splitlines() if line.strip())


def wait_for_idle_nodes(nodes, env, children, deadline):
    while time.monotonic() < deadline:
        dead = [name for name, c in children.items() if c.poll() is not None]
        if dead:
            log(f"daemon(s) exited early: {', '.join(dead)}")
            return False
        states = node_states(env)
        if all(states.get(n) == "idle" for n in nodes):
            return True
        time.sleep(0.25)
    log(f"nodes not idle in time: {node_states(env)}")
    return False


def dump_logs(tmp):
    for name in sorted(os.listdir(tmp)):
        if name.endswith((".log", ".out")):
            with open(os.path.join(tmp, name), errors="replace") as f:
                text = f.read()
            print(f"----- {name} -----\n{text[-20000:]}", file=sys.stderr)
    sys.stderr.flush()


def cancel_jobs(env):
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, timeout=15,
                             capture_output=True, text=True)
        jobs = out.stdout.split()
        if jobs:
            subprocess.run(["scancel", "--quiet", *jobs], env=env, timeout=15)
    except (subprocess.TimeoutExpired, OSError) as e:
        log(f"could not cancel jobs: {e}")


def start_slurm(tmp, nodes, env, children):
    """Starts munged, slurmctld and one slurmd per node; False (logs dumped) on failure."""
    deadline = time.monotonic() + 60
    # --force: run even if a directory above tmp (a private $TMPDIR) is not searchable by
    # all, which munged otherwise refuses for its socket; it would only warn then.
    start_daemon(children, "munged",
                 ["munged", "--foreground", "--force", f"--key-file={tmp}/munge.key",
                  f"--socket={tmp}/munge.sock", f"--pid-file={tmp}/munged.pid",
                  f"--log-file={tmp}/munged.log", f"--seed-file={tmp}/munged.seed"], tmp, env)
    if not wait_for_munge(tmp, children["munged"], deadline):
        log("munged did not start")
        return False
    conf = env["SLURM_CONF"]
    start_daemon(children, "slurmctld", ["slurmctld", "-D", "-i", "-f", conf], tmp, env)
    for node in nodes:
        start_daemon(children, f"slurmd-{node}", ["slurmd", "-D", "-f", conf, "-N", node],
                     tmp, env)
    return wait_for_idle_nodes(nodes, env, children, deadline)


def cleanup_slurm(tmp, env, children, cmd_sid):
    """Stops everything that refers to tmp, then the daemons; removes tmp.

    Returns the descriptions of processes that could not be stopped."""
    salloc = children.pop("salloc", None)
    daemons = {c.pid for c in children.values()}
    if children.get("slurmctld") and children["slurmctld"].poll() is None:
        cancel_jobs(env)
    # Not the daemons nor their own helpers (slurmctld's slurmscriptd ends with it);
    # slurmstepd's are not the slurmd's children (slurmd forks them twice).
    strays = {p for p in processes_referring_to(tmp)
              if p not in daemons and (proc_stat(p) or (0, 0))[1] not in daemons}
    if cmd_sid is not None:
        strays |= set(session_members(cmd_sid))
    if strays:
        log("stopping what the command left running:\n  "
            + "\n  ".join(describe(p) for p in sorted(strays)))
    stop_pids(strays)
    if salloc is not None:
        stop_children({"salloc": salloc})
    # slurmd's first (they leave running steps alone), then the controller, munged last.
    order = [n for n in children if n.startswith("slurmd-")]
    order += [n for n in ("slurmctld", "munged") if n in children]
    for name in order:
        stop_children({name: children[name]})
    stop_pids(processes_referring_to(tmp))
    reap_orphans()
    shutil.rmtree(tmp, ignore_errors=True)
    left = [describe(p) for p in processes_referring_to(tmp)]
    if os.path.exists(tmp):
        left.append(f"directory {tmp} could not be removed")
    return left


def cmd_slurm(opts, cmd, guard):
    nodes = [f"n{i}" for i in range(1, opts.nodes + 1)]
    tmp = None
    children = {}
    cmd_sid = None
    status = EXIT_SETUP_FAILED
    env = {}
    try:
        tmp = tempfile.mkdtemp(prefix="plugpool-slurm-")
        # munged wants search permission for everyone on the directories of its socket
        # (mkdtemp makes it 0700): others may enter, not list.
        os.chmod(tmp, 0o711)
        os.mkdir(os.path.join(tmp, "state"), 0o700)
        for node in nodes:
            os.mkdir(os.path.join(tmp, f"spool-{node}"), 0o700)
        write_munge_key(os.path.join(tmp, "munge.key"))
        conf = os.path.join(tmp, "slurm.conf")
        ports = free_ports(1 + len(nodes))
        with open(conf, "w") as f:
            f.write(slurm_conf_text(tmp, socket.gethostname().split(".")[0], nodes,
                                    ports[0], ports[1:]))
        env = child_env({"SLURM_CONF": conf, "PLUGPOOL_TEST_SLURM_DIR": tmp})
        if not start_slurm(tmp, nodes, env, children):
            dump_logs(tmp)
            return EXIT_SETUP_FAILED
        # salloc exits 0 when its command is killed by SIGKILL, SIGINT, SIGHUP or SIGQUIT
        # (and 1 for other signals): a shell in between turns a signal N into 128+N.
        salloc = ["salloc", "-N", str(len(nodes)), "-n", str(NODE_CPUS * len(nodes)),
                  "--quiet"] if opts.alloc else []
        salloc += ["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd]
        # salloc (in a session of its own) is stopped, if need be, by cleanup_slurm along
        # with its session: SIGTERM alone does not end salloc while CMD runs.
        children["salloc"] = subprocess.Popen(salloc, env=env, start_new_session=True)
        cmd_sid = children["salloc"].pid
        try:
            status = exit_status(children["salloc"].wait(timeout=opts.timeout))
        except subprocess.TimeoutExpired:
            log(f"command still running after {opts.timeout} s: stopping it")
            status = EXIT_TIMEOUT
    except OSError as e:
        log(f"could not start the cluster: {e}")
    except Interrupted:
        pass  # main() turns guard.received into the exit status
    finally:
        guard.deferred = True
        left = cleanup_slurm(tmp, env, children, cmd_sid) if tmp else []
        if left:
            log("left behind after cleanup:\n  " + "\n  ".join(left))
            status = status or 1
    return status


# --------------------------------------------------------------------------- netns

def ip(*args, check=True):
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def netns_names():
    return {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}


def pick_netns_names():
    existing = netns_names()
    pid = os.getpid()
    for suffix in ["", *"abcdefghij"]:
        host, worker = f"pph{pid}{suffix}", f"ppw{pid}{suffix}"
        if host not in existing and worker not in existing:
            return host, worker
    raise RuntimeError("no free namespace names")


def create_netns_pair(host, worker, k, created):
    """Two namespaces joined by one veth pair; names are appended to `created` as made."""
    for ns in (host, worker):
        created.append(ns)  # first: a signal right after the add must not leak it
        ip("netns", "add", ns)
    # The pair is born inside the host namespace with its peer in the worker's, so nothing
    # ever appears in the root namespace and concurrent runs cannot clash on link names.
    ip("-n", host, "link", "add", "pph0", "type", "veth", "peer", "name", "ppw0",
       "netns", worker)
    for ns, link, last in ((host, "pph0", 1), (worker, "ppw0", 2)):
        ip("-n", ns, "addr", "add", f"10.77.{k}.{last}/24", "dev", link)
        ip("-n", ns, "link", "set", link, "up")
        ip("-n", ns, "link", "set", "lo", "up")
    # The operational state lags `link set up` a little: do not hand over a link still down.
    deadline = time.monotonic() + 10
    while not all(" UP " in ip("-n", ns, "-br", "link", "show", "dev", link) + " "
                  for ns, link in ((host, "pph0"), (worker, "ppw0"))):
        if time.monotonic() > deadline:
            raise RuntimeError("veth pair did not come up")
        time.sleep(0.02)


def cleanup_netns(created, child):
    """Stops CMD with its session, whatever has our namespace names in its environment and
    every process in the namespaces, then deletes them; returns what is left."""
    marks = [f"PLUGPOOL_NS_HOST={ns}" for ns in created[:1]]
    strays = [p for mark in marks for p in processes_referring_to(mark)]
    if child is not None:
        strays += [child.pid] + session_members(child.pid)
    stop_pids(strays)
    if child is not None:
        child.wait()
    for ns in created:
        stop_pids([int(p) for p in ip("netns", "pids", ns, check=False).split()])
        ip("netns", "del", ns, check=False)
    reap_orphans()
    existing = netns_names()
    left = [f"namespace {ns} still exists" for ns in created if ns in existing]
    if child is not None:
        left += [describe(p) for p in session_members(child.pid)]
    left += [describe(p) for mark in marks for p in processes_referring_to(mark)]
    return left


def cmd_netns(opts, cmd, guard):
    k = os.getpid() % 250 + 1
    created = []
    child = None
    status = EXIT_SETUP_FAILED
    try:
        host, worker = pick_netns_names()
        create_netns_pair(host, worker, k, created)
        env = child_env({"PLUGPOOL_NS_HOST": host, "PLUGPOOL_NS_WORKER": worker,
                         "PLUGPOOL_NS_HOST_ADDR": f"10.77.{k}.1",
                         "PLUGPOOL_NS_WORKER_ADDR": f"10.77.{k}.2",
                         "PLUGPOOL_NS_WORKER_LINK": "ppw0"})
        child = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            status = exit_status(child.wait(timeout=opts.timeout))
        except subprocess.TimeoutExpired:
            log(f"command still running after {opts.timeout} s: stopping it")
            status = EXIT_TIMEOUT
    except (RuntimeError, OSError) as e:
        log(str(e))
    except Interrupted:
        pass  # main() turns guard.received into the exit status
    finally:
        guard.deferred = True
        left = cleanup_netns(created, child)
        if left:
            log("left behind after cleanup:\n  " + "\n  ".join(left))
            status = status or 1
    return status


# --------------------------------------------------------------------------- self-checks

def cmd_probe():
    """Inside `cluster.py slurm`: a step lands on each node; time a trivial step."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        log("probe: SLURM_JOB_ID is not set (run me under `cluster.py slurm --`)")
        return 1
    nodes = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
                           capture_output=True, text=True, check=True).stdout.split()
    ok = True
    for node in nodes:
        out = subprocess.run(["srun", "--exact", "-n1", "-N1", "-w", node,
                              "printenv", "SLURMD_NODENAME"],
                             capture_output=True, text=True, timeout=60)
        got = out.stdout.strip()
        print(f"probe: step on {node}: SLURMD_NODENAME={got!r} status={out.returncode}")
        ok &= out.returncode == 0 and got == node
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        subprocess.run(["srun", "--exact", "-n1", "-N1", "true"], check=True, timeout=60)
        times.append(time.monotonic() - t0)
    print("probe: `srun --exact -n1 -N1 true`: "
          + " ".join(f"{t:.3f}" for t in times) + " s")
    print(f"probe: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


KEEPALIVE = ((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
             (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1),
             (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1),
             (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
             (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 4000))


def wait_for_close(conn, role):
    """Prints 'ready', blocks on recv, prints how long after 'ready' it failed."""
    for level, opt, value in KEEPALIVE:
        conn.setsockopt(level, opt, value)
    print(f"{role} ready", flush=True)
    t0 = time.monotonic()
    try:
        data = conn.recv(1)
        result = f"end of stream ({data!r})"
    except OSError as e:
        result = f"{type(e).__name__}: {e.strerror}"
    print(f"{role} {result} after {time.monotonic() - t0:.2f} s", flush=True)


def cmd_tcp_role(role, addr, port):
    """Helper run through `ip netns exec` by probe-netns."""
    if role == "server":
        srv = socket.create_server((addr, port))
        print("server listening", flush=True)
        conn, _ = srv.accept()
    else:
        conn = socket.create_connection((addr, port), timeout=5)
        conn.settimeout(None)
    wait_for_close(conn, role)
    return 0


def cmd_probe_netns():
    """Inside `cluster.py netns`: TCP across the pair; a cut link is seen within ~5 s."""
    env = os.environ
    me = [sys.executable, os.path.abspath(__file__)]
    port = 7007
    server = subprocess.Popen(["ip", "netns", "exec", env["PLUGPOOL_NS_WORKER"], *me,
                               "tcp-role", "server", env["PLUGPOOL_NS_WORKER_ADDR"], str(port)],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "server listening"
    client = subprocess.Popen(["ip", "netns", "exec", env["PLUGPOOL_NS_HOST"], *me,
                               "tcp-role", "client", env["PLUGPOOL_NS_WORKER_ADDR"], str(port)],
                              stdout=subprocess.PIPE, text=True)
    ready = [client.stdout.readline().strip(), server.stdout.readline().strip()]
    print(f"probe-netns: {ready}")
    t0 = time.monotonic()
    subprocess.run(["ip", "-n", env["PLUGPOOL_NS_WORKER"], "link", "set",
                    env["PLUGPOOL_NS_WORKER_LINK"], "down"], check=True)
    results = []
    for proc in (client, server):
        try:
            results.append(proc.communicate(timeout=15)[0].strip())
        except subprocess.TimeoutExpired:
            proc.kill()
            results.append("no error within 15 s")
    print(f"probe-netns: link cut; {results[0]}; {results[1]}; "
          f"both done {time.monotonic() - t0:.2f} s after the cut")
    ok = ready == ["client ready", "server ready"] and all(
        "TimeoutError" in r for r in results)
    print(f"probe-netns: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


# --------------------------------------------------------------------------- main

def parse(argv):
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1:]
    else:
        cmd = []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    slurm = sub.add_parser("slurm", help="private Slurm cluster, then salloc CMD")
    slurm.add_argument("--nodes", type=int, default=2)
    slurm.add_argument("--timeout", type=float, default=600)
    slurm.add_argument("--no-alloc", dest="alloc", action="store_false",
                       help="run CMD outside any allocation (to submit jobs with sbatch)")
    netns = sub.add_parser("netns", help="two joined network namespaces, then CMD")
    netns.add_argument("--timeout", type=float, default=600)
    sub.add_parser("probe", help="self-check, run as CMD of `slurm`")
    sub.add_parser("probe-netns", help="self-check, run as CMD of `netns`")
    role = sub.add_parser("tcp-role", help=argparse.SUPPRESS)
    role.add_argument("role", choices=["server", "client"])
    role.add_argument("addr")
    role.add_argument("port", type=int)
    opts = parser.parse_args(argv)
    if opts.mode in ("slurm", "netns") and not cmd:
        parser.error(f"{opts.mode}: give the command after --")
    if opts.mode == "slurm" and opts.nodes < 1:
        parser.error("--nodes must be at least 1")
    return opts, cmd


def main(argv):
    opts, cmd = parse(argv)
    if opts.mode == "probe":
        return cmd_probe()
    if opts.mode == "probe-netns":
        return cmd_probe_netns()
    if opts.mode == "tcp-role":
        return cmd_tcp_role(opts.role, opts.addr, opts.port)
    guard = SignalGuard()
    become_subreaper()
    run = cmd_slurm if opts.mode == "slurm" else cmd_netns
    status = run(opts, cmd, guard)
    if guard.received is not None:
        log(f"stopped by signal {guard.received}")
        return 128 + guard.received
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
