#!/usr/bin/env bash
# Compares per-message header-rule evaluation time of popsift and SpamAssassin 4 (in-process
# via Mail::SpamAssassin) on the same messages, with ~700 and 10,000 equivalent generated
# header rules (tests/benches/gen_rules.py), and prints both times and the ratio.
#
# usage: tests/benches/spamassassin_compare.sh [MESSAGE_DIR] [COUNT]
#   MESSAGE_DIR defaults to ../shared/corpus/dev (first COUNT=200 messages), else the fixtures.
# Needs: spamassassin (Debian package), python3, cargo. Not a test: run it by hand.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
MSGDIR=${1:-}
COUNT=${2:-200}
if [[ -z "$MSGDIR" ]]; then
    for d in ../shared/corpus/dev /work/shared/corpus/dev tests/fixtures/rules/msgs; do
        if [[ -d "$d" ]]; then MSGDIR=$d; break; fi
    done
fi
command -v spamassassin >/dev/null || { echo "spamassassin not installed (apt-get install spamassassin)"; exit 1; }
perl -MMail::SpamAssassin -e1 || exit 1

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/msgs"
find "$MSGDIR" -maxdepth 1 -type f -name '*.eml' | sort | head -n "$COUNT" | while read -r f; do cp "$f" "$WORK/msgs/"; done
NMSG=$(ls "$WORK/msgs" | wc -l)
echo "messages: $NMSG from $MSGDIR"

cargo build --release -q
BIN=$ROOT/target/release/popsift

run() {
    local n=$1 sa_repeat=$2 ps_repeat=$3
    python3 tests/benches/gen_rules.py "$n" "$WORK/r$n"
    local cf=$WORK/r$n/sa
    mkdir -p "$cf/site-empty" "$cf/state"
    printf 'loadplugin Mail::SpamAssassin::Plugin::Check\n' > "$cf/init.pre"
    : > "$cf/site-empty/user_prefs"
    local ps sa
    ps=$("$BIN" scan --rules "$WORK/r$n/popsift" --timing --repeat "$ps_repeat" "$WORK/msgs" | grep '^timing:')
    sa=$(perl tests/benches/sa_time.pl "$cf" "$sa_repeat" "$WORK"/msgs/* 2>/dev/null | grep '^sa:')
    local ps_us sa_us ps_ms
    ps_us=$(sed -E 's/.* ([0-9.]+) µs\/message.*/\1/' <<<"$ps")
    ps_ms=$(sed -E 's/.*compiled in ([0-9.]+) ms.*/\1/' <<<"$ps")
    sa_us=$(sed -E 's/.* ([0-9.]+) us\/message.*/\1/' <<<"$sa")
    local ps_hits
    ps_hits=$("$BIN" scan --rules "$WORK/r$n/popsift" --json "$WORK/msgs" 2>/dev/null | grep -vc '"rules":\[\]' || true)
    echo "== $n rules"
    echo "messages with a rule hit: popsift $ps_hits, SpamAssassin $(sed -E 's/.*; ([0-9]+) with hits.*/\1/' <<<"$sa")"
    echo "popsift: $ps"
    echo "$sa"
    python3 -c "print(f'per message: popsift {float(\"$ps_us\"):.1f} µs, SpamAssassin {float(\"$sa_us\"):.1f} µs, ratio {float(\"$sa_us\")/float(\"$ps_us\"):.0f}x; popsift compile {float(\"$ps_ms\"):.0f} ms')"
}

# Shipped rules (popsift only: they have no SpamAssassin twin).
echo "== shipped rules"
"$BIN" scan --rules rules --timing --repeat 20 "$WORK/msgs" | grep '^timing:'
run 700 3 20
run 10000 1 10
