#!/usr/bin/env python3
"""Generates N equivalent header rules for popsift (YAML) and SpamAssassin (.cf).

usage: gen_rules.py N OUTDIR   ->  OUTDIR/popsift/rules.yaml, OUTDIR/sa/rules.cf

Every 40th rule tests a single common word (so that some rules match); of the rest, half are
regexes, half keyword lists (literal, case-insensitive), spread over
Subject, From, To, X-Mailer and Received. SpamAssassin gets each rule as a `header` rule with
the same regex (keywords become an alternation of quoted literals, `/i`). Deterministic.
"""
import os
import re
import sys

WORDS = """free money offer viagra cheap loan mortgage rate credit cash prize winner urgent
business deal save discount sale order now click here unsubscribe remove list email marketing
income work home opportunity investment stock profit million dollar bank account transfer
secret lottery casino pharmacy pills weight loss diet health insurance quote refinance debt
approved guaranteed limited time act today special bonus gift card gold silver watch replica
rolex software adobe microsoft windows office download video movie music dating singles adult
meet local hot girls boys party club vacation travel hotel flight ticket airline cruise island
report news update alert notice invoice payment receipt shipping delivery package tracking
order status account security password login verify confirm suspended locked bill overdue
final notice reminder meeting agenda project team review draft budget quarter sales lead
contract partner vendor supply chain logistics warehouse inventory product launch release
version patch server linux kernel python rust perl cpan debian ubuntu mailing thread reply
""".split()

HEADERS = ["Subject", "From", "To", "X-Mailer", "Received"]


def rule(i):
    n = len(WORDS)
    w1 = WORDS[i % n]
    w2 = WORDS[(i // n + i * 7 + 3) % n]
    w3 = WORDS[(i * 13 + 5) % n]
    header = HEADERS[i % len(HEADERS)]
    rid = f"GEN_{i:05d}"
    if i % 40 == 0:
        # Every 40th rule is a plain common word, so that some rules do match.
        return rid, header, "regex", rf"\b{w1}\b", w3
    if i % 40 == 1:
        return rid, header, "keywords", [w1], w3
    if i % 2 == 0:
        pat = rf"\b{w1}[ _-]?{w2}{i % 97}\b"
        return rid, header, "regex", pat, w3
    kws = [f"{w1} {w2} {i}", f"{w3}{w1}{i}"]
    return rid, header, "keywords", kws, w3


def main():
    n = int(sys.argv[1])
    out = sys.argv[2]
    os.makedirs(os.path.join(out, "popsift"), exist_ok=True)
    os.makedirs(os.path.join(out, "sa"), exist_ok=True)
    with open(os.path.join(out, "popsift", "rules.yaml"), "w") as y, open(
        os.path.join(out, "sa", "rules.cf"), "w"
    ) as c:
        y.write("threshold: 5.0\nrules:\n")
        c.write("required_score 5.0\n")
        for i in range(n):
            rid, header, kind, val, _ = rule(i)
            y.write(f"  - id: {rid}\n    header: {header}\n")
            if kind == "regex":
                y.write(f"    regex: '(?i){val}'\n")
                sa = val
            else:
                y.write("    keywords: [" + ", ".join(f'"{k}"' for k in val) + "]\n")
                sa = "(?:" + "|".join(re.escape(k).replace("/", "\\/") for k in val) + ")"
            y.write("    score: 0.1\n")
            c.write(f"header {rid} {header} =~ /{sa}/i\nscore {rid} 0.1\n")


if __name__ == "__main__":
    main()
