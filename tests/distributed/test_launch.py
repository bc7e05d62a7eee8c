"""The launcher: real dist_sync jobs on loopback, failures, signals, timeout, ssh (through a
fake ssh that runs the remote command locally), host files and the command line."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mxprivacy.cli import main
from mxprivacy.distributed import Host, free_port, launch_local, launch_ssh, read_hostfile
from mxprivacy.distributed.hosts import parse_host, place, remote_command, scheduler_address
from mxprivacy.errors import InvalidParameterError

PY = sys.executable
LAUNCH = [PY, "-m", "mxprivacy.cli", "launch"]

# A dist_sync worker: rank r pushes (r + 1) * [1, 2, 3]; every worker pulls the sum.
# mode "die": rank 1 SIGKILLs itself after init, so rank 0 blocks in its pull forever.
KV_WORKER = """\
import json, os, signal, sys, time
out, mode = sys.argv[1], sys.argv[2]
open(os.path.join(out, "pid-%d" % os.getpid()), "w").close()
import mxnet as mx
kv = mx.kv.create("dist_sync")
kv.init(7, mx.nd.zeros((3,)))
if mode == "die" and kv.rank == 1:
    with open(os.path.join(out, "killed-at"), "w") as f:
        f.write(repr(time.time()))
    os.kill(os.getpid(), signal.SIGKILL)
kv.push(7, mx.nd.array([1, 2, 3]) * (kv.rank + 1))
total = mx.nd.zeros((3,))
kv.pull(7, out=total)
result = {"rank": kv.rank, "workers": kv.num_workers, "sum": total.asnumpy().tolist(),
          "argv": sys.argv[3:], "cwd": os.getcwd(),
          "env": {k: v for k, v in os.environ.items() if k.startswith(("DMLC_", "EXTRA"))}}
with open(os.path.join(out, "result-%d.json" % kv.rank), "w") as f:
    json.dump(result, f)
print(json.dumps(result))
"""

# A plain worker (no MXNet): records its pid, then acts by its DMLC-free index file.
PLAIN_WORKER = """\
import os, signal, sys, time
out, first, second = sys.argv[1], sys.argv[2], sys.argv[3]
claim = os.path.join(out, "first")
try:
    os.close(os.open(claim, os.O_CREAT | os.O_EXCL))
    action = first
except FileExistsError:
    action = second
open(os.path.join(out, "pid-%d" % os.getpid()), "w").close()
if action.startswith("exit"):
    time.sleep(0.5)
    sys.exit(int(action[4:]))
if action == "kill":
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)
if action == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if action != "ok":
    time.sleep(300)
"""

FAKE_SSH = """\
#!{python}
# Records its argv, then runs the remote command with bash in a new session, relaying
# stdin like a connection: killing this process closes the remote side's stdin.
import json, os, subprocess, sys, threading
with open(os.environ["FAKE_SSH_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
while args[0] == "-o":
    args = args[2:]
child = subprocess.Popen(["bash", "-c", " ".join(args[1:])], stdin=subprocess.PIPE,
                         start_new_session=True)
def relay():
    while True:
        data = os.read(0, 4096)
        if not data:
            break
        child.stdin.write(data)
        child.stdin.flush()
    child.stdin.close()
threading.Thread(target=relay, daemon=True).start()
code = child.wait()
sys.exit(code if code >= 0 else 255)
"""


def _script(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _alive(pid):
    """A live process (zombies, which only wait for their parent to reap them, are dead)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def _job_processes(port):
    """Live processes whose environment names this job's scheduler port."""
    marker = f"DMLC_PS_ROOT_PORT={port}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as env:
                    if marker in env.read() and _alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _pids(out):
    return [int(p.name[4:]) for p in out.glob("pid-*")]


def _assert_nothing_survives(out, port, within=3.0):
    """No recorded worker pid and no process of the job is alive (after ``within`` s)."""
    until = time.monotonic() + within
    while time.monotonic() < until and (_job_processes(port) or any(map(_alive, _pids(out)))):
        time.sleep(0.1)
    assert [p for p in _pids(out) if _alive(p)] == []
    assert _job_processes(port) == []


@pytest.fixture
def out(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    return path


def test_two_workers_sum_through_dist_sync(tmp_path, out):
    """Two workers push (1, 2, 3) and 2 * (1, 2, 3): both pull (3, 6, 9), and both saw the
    DMLC variables of a 1-server, 2-worker job on 127.0.0.1 and the given port."""
    port = free_port()
    worker = _script(tmp_path, "kv.py", KV_WORKER)
    code = launch_local([PY, worker, str(out), "sum"], 2, 1, port=port, timeout=60, grace=3,
                        env={"EXTRA": "x y"}, cwd=str(tmp_path))
    assert code == 0
    results = [json.loads((out / f"result-{r}.json").read_text()) for r in (0, 1)]
    for rank, result in enumerate(results):
        assert result["rank"] == rank and result["workers"] == 2
        assert result["sum"] == [3.0, 6.0, 9.0]
        assert result["env"] == {"DMLC_ROLE": "worker", "DMLC_PS_ROOT_URI": "127.0.0.1",
                                 "DMLC_PS_ROOT_PORT": str(port), "DMLC_NUM_SERVER": "1",
                                 "DMLC_NUM_WORKER": "2", "DMLC_NODE_HOST": "127.0.0.1",
                                 "EXTRA": "x y"}
        assert result["cwd"] == str(tmp_path)
    _assert_nothing_survives(out, port)


def test_worker_exit_code_is_the_jobs_and_the_rest_is_stopped(tmp_path, out, capfd):
    port = free_port()
    worker = _script(tmp_path, "plain.py", PLAIN_WORKER)
    start = time.monotonic()
    code = launch_local([PY, worker, str(out), "exit3", "sleep"], 2, port=port, grace=2)
    elapsed = time.monotonic() - start
    assert code == 3 and elapsed < 6
    assert re.fullmatch(r"mxprivacy launch: worker [01] \(pid \d+\) exited with code 3; "
                        r"stopping the other 3 processes\n", capfd.readouterr().err)
    assert len(_pids(out)) == 2
    _assert_nothing_survives(out, port, within=0)


def test_sigkilled_worker_stops_a_worker_blocked_in_pull(tmp_path, out, capfd):
    """Rank 1 dies by SIGKILL after kv.init; rank 0 would wait in pull forever. The job
    ends with 137 within grace + 5 s of the kill, leaving nothing."""
    port, grace = free_port(), 2.0
    worker = _script(tmp_path, "kv.py", KV_WORKER)
    code = launch_local([PY, worker, str(out), "die"], 2, port=port, grace=grace, timeout=60)
    ended = time.time()
    assert code == 128 + signal.SIGKILL
    assert 0 < ended - float((out / "killed-at").read_text()) < grace + 5
    err = capfd.readouterr().err
    assert "was killed by SIGKILL; stopping the other 3 processes" in err
    assert not list(out.glob("result-*"))
    _assert_nothing_survives(out, port, within=0)


def test_sigterm_ignored_is_escalated_to_sigkill_after_grace(tmp_path, out):
    port, grace = free_port(), 1.5
    worker = _script(tmp_path, "plain.py", PLAIN_WORKER)
    start = time.monotonic()
    code = launch_local([PY, worker, str(out), "exit5", "stubborn"], 2, port=port,
                        grace=grace)
    elapsed = time.monotonic() - start
    assert code == 5 and grace <= elapsed < grace + 4
    _assert_nothing_survives(out, port, within=0)


def test_timeout_stops_everything_with_124(tmp_path, out, capfd):
    """The workers are grandchildren (bash runs them, then echo): stopping a worker stops
    its whole process group, not just the bash that the launcher started."""
    port = free_port()
    worker = _script(tmp_path, "plain.py", PLAIN_WORKER)
    script = " ".join(map(shlex.quote, [PY, worker, str(out), "sleep", "sleep"])) + "; echo"
    start = time.monotonic()
    code = launch_local(["bash", "-c", script], 2, port=port, timeout=1.5, grace=1)
    assert code == 124 and 1.5 <= time.monotonic() - start < 5
    assert "exceeded its timeout of 1.5 s" in capfd.readouterr().err
    _assert_nothing_survives(out, port, within=0)


def test_scheduler_and_servers_are_stopped_after_the_workers_succeed(tmp_path, out, capfd):
    """Workers that never join the kvstore leave the scheduler and server waiting forever:
    the job still ends, with 0 (every worker exited 0), once grace has passed."""
    port = free_port()
    worker = _script(tmp_path, "plain.py", PLAIN_WORKER)
    start = time.monotonic()
    assert launch_local([PY, worker, str(out), "ok", "ok"], 2, port=port, grace=1) == 0
    assert time.monotonic() - start < 5
    assert "all workers finished; stopping scheduler, server 0" in capfd.readouterr().err
    _assert_nothing_survives(out, port, within=0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_to_the_launcher_stops_the_job(tmp_path, out, sig):
    port = free_port()
    worker = _script(tmp_path, "plain.py", PLAIN_WORKER)
    proc = subprocess.Popen(LAUNCH + ["-n", "2", "--grace", "2", "--port", str(port), "--",
                                      PY, worker, str(out), "sleep", "sleep"],
                            stderr=subprocess.PIPE, text=True)
    until = time.monotonic() + 20
    while len(_pids(out)) < 2 and time.monotonic() < until:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 128 + sig
    assert f"received {signal.Signals(sig).name}" in err
    _assert_nothing_survives(out, port, within=0)


def _fake_ssh(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(FAKE_SSH.format(python=PY))
    ssh.chmod(0o755)
    log = tmp_path / "ssh.log"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               FAKE_SSH_LOG=str(log))
    return env, log


def test_ssh_job_runs_through_ssh_with_exact_quoting(tmp_path, out):
    """Scheduler on the first host, server and workers round-robin with slots; each remote
    process is `ssh -o BatchMode=yes HOST 'cd DIR && env ... COMMAND'`; arguments with
    spaces, quotes and shell characters arrive unchanged; the kvstore sum is right."""
    env, log = _fake_ssh(tmp_path)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# cluster\n127.0.0.1   # scheduler here\n\nalice@127.0.0.2:2\n")
    port = free_port()
    worker = _script(tmp_path, "kv.py", KV_WORKER)
    tricky = ["a b", "it's $HOME;*", '"q"']
    proc = subprocess.run(LAUNCH + ["-n", "2", "--hostfile", str(hostfile), "--port",
                                    str(port), "--grace", "2", "--timeout", "60", "--env",
                                    "EXTRA=x y", "--", PY, worker, str(out), "sum", *tricky],
                          env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=90)
    assert proc.returncode == 0, proc.stderr
    printed = [json.loads(line) for line in proc.stdout.splitlines()]  # passed through
    assert sorted(r["rank"] for r in printed) == [0, 1]
    placed = []  # (role, ssh options and host), in any order: the ssh calls race
    for call in (json.loads(line) for line in log.read_text().splitlines()):
        assert len(call) == 4
        words = shlex.split(call[3])
        assert words[:4] == ["cd", str(tmp_path), "&&", "env"]
        env_words = dict(w.split("=", 1) for w in words[4:10])
        assert env_words == {"EXTRA": "x y", "DMLC_ROLE": env_words["DMLC_ROLE"],
                             "DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": str(port),
                             "DMLC_NUM_SERVER": "1", "DMLC_NUM_WORKER": "2"}
        assert words[10:12] == [PY, "-c"] and words[13] == "2"  # guard, grace, command
        assert words[14:] == ([PY, worker, str(out), "sum", *tricky] if env_words[
            "DMLC_ROLE"] == "worker" else [PY, "-c", "import mxnet"])
        placed.append((env_words["DMLC_ROLE"], tuple(call[:3])))
    first, second = ("-o", "BatchMode=yes", "127.0.0.1"), ("-o", "BatchMode=yes",
                                                           "alice@127.0.0.2")
    assert sorted(placed) == [("scheduler", first), ("server", first), ("worker", second),
                              ("worker", second)]
    for rank in (0, 1):
        result = json.loads((out / f"result-{rank}.json").read_text())
        assert result["sum"] == [3.0, 6.0, 9.0] and result["argv"] == tricky
        assert result["env"]["DMLC_ROLE"] == "worker" and result["env"]["EXTRA"] == "x y"
        assert result["cwd"] == str(tmp_path)
    _assert_nothing_survives(out, port)


def test_ssh_failure_stops_the_remote_processes(tmp_path, out):
    """Worker 1 dies by SIGKILL; worker 0 ignores SIGTERM. Stopping the local ssh processes
    closes the remote sides' stdin, and the guard there kills the remote groups."""
    env, _ = _fake_ssh(tmp_path)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("127.0.0.1\n")
    port = free_port()
    worker = _script(tmp_path, "plain.py", PLAIN_WORKER)
    proc = subprocess.run(LAUNCH + ["-n", "2", "--hostfile", str(hostfile), "--port",
                                    str(port), "--grace", "1", "--", PY, worker, str(out),
                                    "stubborn", "kill"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 137, proc.stderr
    assert re.fullmatch(r"mxprivacy launch: worker [01] on 127\.0\.0\.1 \(pid \d+\) was "
                        r"killed by SIGKILL; stopping the other 3 processes\n", proc.stderr)
    _assert_nothing_survives(out, port, within=4)


def test_remote_command_round_trips_through_a_shell(tmp_path):
    text = remote_command(["printf", "%s\\n", "a b", "$X", "'"], {"K": "v w"}, tmp_path,
                          "/opt/py", 3)
    words = shlex.split(text)
    assert words[:5] == ["cd", str(tmp_path), "&&", "env", "K=v w"]
    assert words[5:7] == ["/opt/py", "-c"] and words[8:] == ["3", "printf", "%s\\n", "a b",
                                                             "$X", "'"]


def test_host_entries_and_placement(tmp_path):
    assert parse_host("node1") == Host("node1")
    assert parse_host("bob@node2:3") == Host("node2", "bob", 3)
    assert parse_host("[fe80::1]:2") == Host("fe80::1", None, 2)
    assert parse_host("ann@fe80::1") == Host("fe80::1", "ann")
    for bad in ("node:0", "node:x", "a b", "node:"):
        with pytest.raises(InvalidParameterError):
            parse_host(bad)
    a, b = Host("a", slots=2), Host("b")
    assert place([a, b], 1, 4) == ([a], [a, b, a, a])
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n   \n")
    with pytest.raises(InvalidParameterError, match="lists no host"):
        read_hostfile(str(empty))
    bad = tmp_path / "bad"
    bad.write_text("ok\nx:0\n")
    with pytest.raises(InvalidParameterError, match="line 2"):
        read_hostfile(str(bad))


def test_scheduler_address_refuses_loopback_for_remote_hosts():
    assert scheduler_address([Host("127.0.0.1"), Host("127.0.0.2")]) == "127.0.0.1"
    assert scheduler_address([Host("192.0.2.7"), Host("127.0.0.1")]) == "192.0.2.7"
    with pytest.raises(InvalidParameterError, match="--scheduler-host"):
        scheduler_address([Host("127.0.0.1"), Host("192.0.2.7")])
    with pytest.raises(InvalidParameterError, match="scheduler_host"):
        launch_ssh(["true"], [Host("127.0.0.1")], 1, local_scheduler=True)


@pytest.mark.parametrize("argv, message", [
    (["-n", "2", "--"], "command after --"),
    (["-n", "2"], "command after --"),
    (["-n", "0", "--", "true"], "--num-workers"),
    (["-n", "1", "-s", "0", "--", "true"], "--num-servers"),
    (["-n", "1", "--timeout", "0", "--", "true"], "--timeout"),
    (["-n", "1", "--port", "70000", "--", "true"], "--port"),
    (["-n", "1", "--env", "NOEQUALS", "--", "true"], "NAME=VALUE"),
    (["-n", "1", "--env", "DMLC_ROLE=server", "--", "true"], "DMLC_ROLE"),
    (["-n", "1", "--hostfile", "/no/such/file", "--", "true"], "Cannot read host file"),
    (["-n", "1", "--python", "/x", "--", "true"], "only applies with --hostfile"),
])
def test_malformed_launch_is_one_line_and_exit_2(capfd, argv, message):
    assert main(["launch"] + argv) == 2
    err = capfd.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("mxprivacy: error:")


def test_empty_hostfile_exits_2(tmp_path, capfd):
    hosts = tmp_path / "hosts"
    hosts.write_text("# none yet\n")
    assert main(["launch", "-n", "1", "--hostfile", str(hosts), "--", "true"]) == 2
    assert "lists no host" in capfd.readouterr().err


def test_launch_returns_the_exit_code_and_never_imports_mxnet(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from mxprivacy.cli import main
        rc = main(["launch", "-n", "1", "--grace", "0", "--", {PY!r}, "-c",
                   "import sys; sys.exit(7)"])
        assert "mxnet" not in sys.modules, "mxnet imported"
        sys.exit(rc)
    """)
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 7, proc.stderr
    assert "worker 0" in proc.stderr and "exited with code 7" in proc.stderr
