#!/usr/bin/env python3
"""Instructions per one-at-a-time RETR (issue 16), counted by callgrind: deterministic,
unlike wall or CPU time on a shared machine.

Starts a Dovecot of its own (like tests/support/dovecot.rs) holding MESSAGES x 10 KB,
popsift under `valgrind --tool=callgrind` in front of it (`rules: []`, log level info, as in
the relay bench), logs in, warms up with a few RETRs, then zeroes callgrind's counters,
sends N RETRs one at a time (each waits for the whole reply, like poplib or fetchmail) and
dumps. The dump holds exactly those N commands (plus a handful of NOOPs that wake the idle
process so it sees the zero/dump requests; they are counted and reported), so total Ir / N
is the cost of one RETR.

Usage (as root; needs dovecot-pop3d and valgrind):
    tests/benches/retr_instructions.py BINARY [BINARY ...]
Environment: RETRS (default 1000), MESSAGES (default 200), OUT (default /tmp/retr-callgrind),
BATCH (default 1: one at a time; N > 1: pipelined in bursts of N, as the relay bench's
pipelined cell).
A binary whose name contains `haproxy` is run as HAProxy in TCP mode (the relay bench's
config) instead, for comparison. Prints, per binary, total Ir of the window and Ir per RETR; the dump files stay in OUT for
`callgrind_annotate`.
"""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

RETRS = int(os.environ.get("RETRS", "1000"))
MESSAGES = int(os.environ.get("MESSAGES", "200"))
OUT = os.environ.get("OUT", "/tmp/retr-callgrind")
# BATCH > 1: the RETRs are pipelined (RFC 2449 §6.6) in bursts of BATCH commands.
BATCH = int(os.environ.get("BATCH", "1"))
MAIL_USER = "popsift-mail"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(what, cond, limit=120.0):
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.05)


def message(i, size=10 * 1024):
    head = (
        "From: Bench <bench@example.net>\r\nTo: alice@example.org\r\n"
        f"Subject: bench message {i}\r\nMessage-ID: <bench-{i}@popsift.test>\r\n\r\n"
    )
    line = f"line of message {i} with some text to fill it up to the size wanted ok\r\n"
    body = line * (size // len(line) + 1)
    return (head + body[:size]).encode()


def start_dovecot(root):
    pw = pwd.getpwnam(MAIL_USER)
    os.chmod(root, 0o755)
    with open(f"{root}/passwd", "w") as f:
        f.write("small:small-pw::::::\n")
    os.chmod(f"{root}/passwd", 0o644)
    for sub in ["", "/small", "/small/tmp", "/small/new", "/small/cur"]:
        d = f"{root}/mail{sub}"
        os.mkdir(d)
        os.chown(d, pw.pw_uid, pw.pw_gid)
    for i in range(MESSAGES):
        path = f"{root}/mail/small/new/{100000 + i}.bench"
        with open(path, "wb") as f:
            f.write(message(i))
        os.chown(path, pw.pw_uid, pw.pw_gid)
    port = free_port()
    conf = f"""base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = {pw.pw_uid}
first_valid_gid = {pw.pw_gid}
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={pw.pw_uid} gid={pw.pw_gid} home={root}/mail/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""
    with open(f"{root}/dovecot.conf", "w") as f:
        f.write(conf)
    child = subprocess.Popen(["dovecot", "-F", "-c", f"{root}/dovecot.conf"], stdin=subprocess.DEVNULL)
    wait_for("dovecot", lambda: connectable(port))
    return child, port


def connectable(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Pop:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        assert self.line().startswith(b"+OK")

    def fill(self):
        data = self.sock.recv(1 << 16)
        if not data:
            sys.exit("connection closed")
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        status = self.line()
        assert status.startswith(b"+OK"), status
        return status

    def retr(self, n):
        self.sock.sendall(f"RETR {n}\r\n".encode())
        self.retr_reply()

    def retr_reply(self):
        status = self.line()
        assert status.startswith(b"+OK"), status
        while True:
            end = self.buf.find(b"\r\n.\r\n")
            if end >= 0:
                self.buf = self.buf[end + 5 :]
                return
            self.fill()


def control(pid, flag, pop, counter):
    """Runs `callgrind_control FLAG PID` while NOOPs wake the process until it answered."""
    done = threading.Event()

    def run():
        subprocess.run(["callgrind_control", flag, str(pid)], check=True, stdout=subprocess.DEVNULL)
        done.set()

    t = threading.Thread(target=run)
    t.start()
    while not done.wait(0.2):
        pop.cmd("NOOP")
        counter[0] += 1
    t.join()


def measure(binary, dovecot_port, root):
    tag = os.path.basename(binary.rstrip("/")) or "popsift"
    work = tempfile.mkdtemp(prefix="popsift-", dir=root)
    os.mkdir(f"{work}/rules")
    with open(f"{work}/rules/test.yaml", "w") as f:
        f.write("rules: []\n")
    port, metrics = free_port(), free_port()
    with open(f"{work}/popsift.yaml", "w") as f:
        f.write(
            f"listeners:\n  - listen: '127.0.0.1:{port}'\n    upstream: 127.0.0.1:{dovecot_port}\n"
            f"    upstream_tls: none\nrules: {work}/rules\nstate_dir: {work}/state\n"
            f"metrics: 127.0.0.1:{metrics}\n"
        )
    out = f"{OUT}/{tag}.%p"
    log = open(f"{work}/popsift.log", "w")
    argv = [binary, "--log-level", "info", "serve", "--config", f"{work}/popsift.yaml"]
    if "haproxy" in tag:
        # HAProxy in TCP mode as the relay bench runs it, for comparison.
        with open(f"{work}/haproxy.cfg", "w") as f:
            f.write(
                "global\n    maxconn 1024\n\ndefaults\n    mode tcp\n    timeout connect 10s\n"
                "    timeout client 300s\n    timeout server 300s\n\nlisten pop3\n"
                f"    bind 127.0.0.1:{port}\n    server dovecot 127.0.0.1:{dovecot_port}\n"
            )
        argv = [binary, "-f", f"{work}/haproxy.cfg", "-db"]
    child = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + argv,
        cwd=work, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )
    wait_for("popsift under valgrind", lambda: connectable(port), 300)
    pop = Pop(port)
    pop.cmd("USER small")
    pop.cmd("PASS small-pw")
    for n in range(1, 51):
        pop.retr(n)
    noops = [0]
    control(child.pid, "-z", pop, noops)
    zero_noops = noops[0]
    if BATCH > 1:
        for start in range(0, RETRS, BATCH):
            nums = [i % MESSAGES + 1 for i in range(start, min(start + BATCH, RETRS))]
            pop.sock.sendall(b"".join(f"RETR {n}\r\n".encode() for n in nums))
            for _ in nums:
                pop.retr_reply()
    else:
        for i in range(RETRS):
            pop.retr(i % MESSAGES + 1)
    control(child.pid, "-d", pop, noops)
    pop.cmd("QUIT")
    child.terminate()
    child.wait()
    dumps = sorted(glob.glob(f"{OUT}/{tag}.{child.pid}.*"))
    if not dumps:
        sys.exit(f"no dump for {binary} in {OUT}")
    total = 0
    with open(dumps[0]) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
                break
    noop_count = noops[0] - zero_noops
    print(f"{binary}: {total} Ir over {RETRS} RETRs (+{noop_count} NOOPs in the window): "
          f"{total / RETRS:.0f} Ir per RETR; dump {dumps[0]}", flush=True)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    os.makedirs(OUT, exist_ok=True)
    root = tempfile.mkdtemp(prefix="popsift-retr-")
    dovecot, port = start_dovecot(root)
    try:
        for binary in sys.argv[1:]:
            measure(os.path.abspath(binary), port, root)
    finally:
        dovecot.terminate()
        dovecot.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
