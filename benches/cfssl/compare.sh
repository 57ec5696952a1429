#!/usr/bin/env bash
# Side by side: cfssl's signing API (P-256 CA, driven by wrk at 16 connections) and medid's
# enrollment over persistent mTLS connections (medid bench), on this machine, one after the
# other. Needs Debian's golang-cfssl and wrk (installed here when missing) and a release build.
#
#   bash benches/cfssl/compare.sh [seconds] [medid-count]
#
# cfssl does no mTLS, stores nothing and audits nothing in this setup: `cfssl serve` signs
# whatever CSR is posted to /api/v1/cfssl/sign. medid authenticates each call by mTLS, checks
# policy, writes the certificate and its audit event in one durable commit, then answers.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-20}"
count="${2:-20000}"
need() { command -v "$1" >/dev/null 2>&1; }
if ! need cfssl || ! need cfssljson || ! need wrk; then
  apt-get update -qq && apt-get install -y -qq golang-cfssl wrk >/dev/null
fi
[ -x target/release/medid ] || cargo build --release

work="$(mktemp -d)"
trap 'kill "${cfssl_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
cat > ca-csr.json <<'JSON'
{"CN": "cfssl bench CA", "key": {"algo": "ecdsa", "size": 256}, "names": [{"O": "bench"}]}
JSON
cat > config.json <<'JSON'
{"signing": {"default": {"expiry": "168h", "usages": ["digital signature", "client auth", "server auth"]}}}
JSON
cfssl gencert -initca ca-csr.json 2>/dev/null | cfssljson -bare ca
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout dev.key \
  -subj "/serialNumber=PUMP-0001" -out dev.csr 2>/dev/null
python3 - <<'PY'
import json
csr = open("dev.csr").read()
body = json.dumps({"certificate_request": csr})
open("sign.lua", "w").write(
    'wrk.method = "POST"\n'
    'wrk.headers["Content-Type"] = "application/json"\n'
    "wrk.body = " + json.dumps(body) + "\n"
)
PY
cfssl serve -address 127.0.0.1 -port 18888 -ca ca.pem -ca-key ca-key.pem -config config.json \
  >cfssl.log 2>&1 &
cfssl_pid=$!
for _ in $(seq 50); do
  curl -s -o /dev/null -X POST -d @<(python3 -c 'import json;print(json.dumps({"certificate_request": open("dev.csr").read()}))') \
    http://127.0.0.1:18888/api/v1/cfssl/sign && break
  sleep 0.2
done
# The response must hold a certificate, or the figure means nothing.
curl -s -X POST -H 'Content-Type: application/json' \
  -d "$(python3 -c 'import json;print(json.dumps({"certificate_request": open("dev.csr").read()}))')" \
  http://127.0.0.1:18888/api/v1/cfssl/sign | grep -q 'BEGIN CERTIFICATE' \
  || { echo "cfssl did not sign; see $work/cfssl.log" >&2; exit 1; }

# Server CPU (user + system, every thread) from /proc/<pid>/stat, in clock ticks.
ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"

echo "== cfssl serve: POST /api/v1/cfssl/sign, wrk -t2 -c16 -d${secs}s"
before="$(ticks "$cfssl_pid")"
wrk -t2 -c16 -d"${secs}s" --latency -s sign.lua http://127.0.0.1:18888/api/v1/cfssl/sign | tee wrk.out
after="$(ticks "$cfssl_pid")"
kill "$cfssl_pid"; wait "$cfssl_pid" 2>/dev/null || true
cfssl_ops="$(awk '/requests in/ {print $1}' wrk.out)"
cfssl_rate="$(awk '/^Requests\/sec/ {print $2}' wrk.out)"
cfssl_cpu_us="$(awk -v t=$((after - before)) -v hz="$hz" -v n="$cfssl_ops" 'BEGIN {printf "%.0f", t / hz * 1e6 / n}')"
non2xx="$(awk '/Non-2xx/ {print $NF}' wrk.out)"
[ -z "$non2xx" ] || { echo "cfssl answered $non2xx requests with an error; the figure means nothing" >&2; exit 1; }

cd - >/dev/null
echo "== medid bench: enrollments over 16 persistent mTLS connections (one worker each)"
./target/release/medid bench --scenario enroll --count "$count" --concurrency 16 --json > "$work/medid.json"
python3 - "$work/medid.json" "$cfssl_rate" "$cfssl_cpu_us" "$cfssl_ops" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))[0]
cfssl_rate, cfssl_cpu, cfssl_ops = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
print(f"medid: {m['ops']} enrollments, {m['per_second']:.0f} /s, p50 {m['p50_ms']:.2f} ms, "
      f"p99 {m['p99_ms']:.2f} ms, server CPU {m['server_cpu_us_per_op']:.0f} us/enrollment")
print(f"cfssl: {cfssl_ops} signatures, {cfssl_rate:.0f} /s, server CPU {cfssl_cpu:.0f} us/signature")
print(f"throughput medid/cfssl: {m['per_second'] / cfssl_rate:.2f}x; "
      f"server CPU per operation cfssl/medid: {cfssl_cpu / m['server_cpu_us_per_op']:.2f}x "
      "(above 1: medid spends less per certificate)")
PY
