#!/usr/bin/env bash
# Server CPU per OCSP answer for one client, in one run: requests with a nonce (each must be
# signed afresh, which is what every request cost before answers were reused) against the
# same request without one (answered from the cache after the first). Needs a release build
# and ab (Debian apache2-utils, installed here when missing).
#
#   bash benches/ocsp/cpu.sh [requests]
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:-20000}"
command -v ab >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq apache2-utils >/dev/null; }
[ -x target/release/medid ] || cargo build --release
bin="$PWD/target/release/medid"

work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc=$(port); http=$(port); est=$(port)
cat > "$work/medid.toml" <<TOML
listen = "127.0.0.1:$grpc"
http_listen = "127.0.0.1:$http"
est_listen = "127.0.0.1:$est"
database_url = "sqlite://$work/medid.db"
pki_dir = "$work/pki"
create_dev_pki = true
# Every nonce answered with a fresh signature, however fast they come: this measures what a
# signature costs, not the budget that bounds it in production.
ocsp_signatures_per_second = 1000000
TOML
MEDID_LOG=warn "$bin" serve --config "$work/medid.toml" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done

url="http://127.0.0.1:$http/ocsp/operational"
openssl ocsp -issuer "$work/pki/operational-ca.pem" -serial 0x1234 -reqout "$work/nonce.der" >/dev/null 2>&1 || true
openssl ocsp -issuer "$work/pki/operational-ca.pem" -serial 0x1234 -no_nonce -reqout "$work/plain.der" >/dev/null 2>&1 || true
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }   # utime + stime, in 1/100 s

for kind in nonce plain; do
  before=$(cpu)
  out=$(ab -q -k -c 1 -n "$n" -p "$work/$kind.der" -T application/ocsp-request "$url" 2>&1)
  after=$(cpu)
  rate=$(awk '/Requests per second/ {print $4}' <<<"$out")
  # ab counts a body of another length as failed; ECDSA signatures vary by a byte or two, so
  # only connection, receive and exception failures and non-2xx answers count here.
  failed=$(python3 -c 'import re,sys; t=sys.stdin.read(); m=re.search(r"Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)", t); n=re.search(r"Non-2xx responses:\s+(\d+)", t); print((sum(map(int, m.groups())) if m else 0) + (int(n.group(1)) if n else 0))' <<<"$out")
  python3 - "$kind" "$n" "$before" "$after" "$rate" "$failed" <<'PY'
import sys
kind, n, before, after, rate, failed = sys.argv[1:]
us = (int(after) - int(before)) * 10_000 / int(n)
label = "nonce (signed each time)" if kind == "nonce" else "no nonce (reused answer)"
print(f"{label:28} {int(n):>7} requests  {float(rate):>9.0f}/s  server CPU {us:6.1f} µs/answer  failed {failed}")
PY
done
