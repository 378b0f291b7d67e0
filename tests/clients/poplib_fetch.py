#!/usr/bin/env python3
"""Fetch a POP3 mailbox with Python's stdlib poplib and print what was seen as JSON.

Used by the Rust test harness (tests/support/clients.rs, `poplib_fetch`). One JSON object
with the arguments is read from argv[1]:

  {"host": "127.0.0.1", "port": 1110, "user": "alice", "pass": "...",
   "tls": "none" | "stls" | "implicit", "ca": "/path/ca.pem" | null,
   "delete": false, "quit": true, "apop": false, "top_lines": null | N}

poplib does the connection, TLS (POP3_SSL / stls()), USER/PASS or APOP, STAT, LIST and
UIDL. Message retrieval does NOT use poplib.retr(): poplib strips line ends and only
un-stuffs lines starting with "..", so it cannot show byte-exact content. Instead the
script sends RETR n (or TOP n k) itself and reads the raw multi-line response from
poplib's socket file: every line keeps its line end exactly as received, a leading "."
is removed per RFC 1939 section 3, and lines that start with "." but are neither the
terminator nor stuffed ("..") are counted in "stuffing_violations" (a server or proxy
that forgot to dot-stuff).

Output on stdout: {"greeting", "capa" (list or null), "stat": [n, octets],
"list": [[n, octets]...], "uidl": [[n, uid]...], "messages": [base64...],
"quit_reply": str | null, "stuffing_violations": int}.
Errors: a JSON object {"error": "..."} on stdout and exit code 2.
"""
import base64
import json
import poplib
import ssl
import sys


def tls_context(ca):
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    return ctx


def read_multiline(pop):
    """Read a multi-line response body after a +OK status line, byte-exact."""
    out = bytearray()
    violations = 0
    while True:
        line = pop.file.readline()
        if not line:
            raise poplib.error_proto("connection closed inside a multi-line response")
        if line in (b".\r\n", b".\n"):
            return bytes(out), violations
        if line.startswith(b"."):
            if not line.startswith(b".."):
                violations += 1
            line = line[1:]
        out += line


def main():
    args = json.loads(sys.argv[1])
    host, port = args["host"], int(args["port"])
    tls = args.get("tls", "none")
    ca = args.get("ca")
    timeout = float(args.get("timeout", 60))
    # Large messages have lines longer than poplib's _MAXLINE check only matters for
    # poplib's own readers; ours use file.readline() without a limit.
    if tls == "implicit":
        pop = poplib.POP3_SSL(host, port, timeout=timeout, context=tls_context(ca))
    else:
        pop = poplib.POP3(host, port, timeout=timeout)
    greeting = pop.getwelcome().decode("utf-8", "replace")
    capa = None
    try:
        capa = sorted(pop.capa().keys())
    except poplib.error_proto:
        capa = None
    if tls == "stls":
        pop.stls(context=tls_context(ca))
    if args.get("apop"):
        pop.apop(args["user"], args["pass"])
    else:
        pop.user(args["user"])
        pop.pass_(args["pass"])
    count, octets = pop.stat()
    _, listing, _ = pop.list()
    lst = []
    for entry in listing:
        n, size = entry.split()
        lst.append([int(n), int(size)])
    uidl = []
    try:
        _, uids, _ = pop.uidl()
        for entry in uids:
            n, uid = entry.split(None, 1)
            uidl.append([int(n), uid.decode("utf-8", "replace")])
    except poplib.error_proto:
        uidl = []
    messages = []
    violations = 0
    top_lines = args.get("top_lines")
    for n, _size in lst:
        if top_lines is None:
            pop._putcmd("RETR %d" % n)
        else:
            pop._putcmd("TOP %d %d" % (n, int(top_lines)))
        pop._getresp()  # raises error_proto on -ERR
        body, v = read_multiline(pop)
        violations += v
        messages.append(base64.b64encode(body).decode("ascii"))
        if args.get("delete"):
            pop.dele(n)
    quit_reply = None
    if args.get("quit", True):
        quit_reply = pop.quit().decode("utf-8", "replace")
    else:
        # Drop the connection without QUIT: RFC 1939 section 6 says nothing is deleted.
        pop.sock.close()
        pop.file.close()
    json.dump(
        {
            "greeting": greeting,
            "capa": capa,
            "stat": [count, octets],
            "list": lst,
            "uidl": uidl,
            "messages": messages,
            "quit_reply": quit_reply,
            "stuffing_violations": violations,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report every failure to the harness
        json.dump({"error": "%s: %s" % (type(e).__name__, e)}, sys.stdout)
        sys.exit(2)
