#!/bin/sh
# Login scan latency through popsift vs a naive serial TOP scan (issue 6).
# Needs Dovecot (dovecot-pop3d) and root (test mail belongs to an unprivileged user).
# Knobs: SCAN_BENCH_SIZES=1000,10000 SCAN_BENCH_RTT_MS=50 SCAN_BENCH_REPEAT=3
#        SCAN_BENCH_WINDOW=<scan.window> SCAN_BENCH_NAIVE_PREFIX=200 SCAN_BENCH_NOPIPE_MAX=1000
set -eu
cd "$(dirname "$0")/../.."
exec cargo bench --bench scan_latency "$@"
