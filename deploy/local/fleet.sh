#!/usr/bin/env bash
# A fleet of `inferneo serve` replicas on this machine behind the real HAProxy (default) or
# nginx, for trying a deployment's behaviour on one box (docs/DEPLOY.md).
#
#   fleet.sh up --replicas N --port P [--threads-per-replica T] [--model NAME=DIR ...] [--front haproxy|nginx] [-- SERVE_FLAGS...]
#   fleet.sh status        prints $FLEET_DIR/fleet.json
#   fleet.sh down          stops everything `up` started, by PID
#
# Replicas listen on free loopback ports, each pinned to its own cores (taskset; numactl too
# where there is more than one NUMA node); with more replicas than cores they share cores
# round-robin. With several --model, each model gets its own N replicas and the front routes
# by the request body's "model" field. State and logs live in $FLEET_DIR (default: .).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
FLEET_DIR="${FLEET_DIR:-$PWD}"
BIN="${INFERNEO_BIN:-$root/target/release/inferneo}"
[ -x "$BIN" ] || BIN="$(command -v inferneo || true)"

die() { echo "fleet.sh: $*" >&2; exit 1; }

# Reads fleet.json's PIDs (python3 is on every machine this runs on).
pids() { python3 -c 'import json,sys; f=json.load(open(sys.argv[1])); print(f["front"]["pid"], *[r["pid"] for r in f["replicas"]])' "$FLEET_DIR/fleet.json"; }

down() {
  [ -f "$FLEET_DIR/fleet.json" ] || die "no fleet.json in $FLEET_DIR"
  for pid in $(pids); do kill -TERM "$pid" 2>/dev/null || true; done
  # Replicas drain their requests; give them the drain timeout, then insist.
  for _ in $(seq 1 350); do
    alive=0
    for pid in $(pids); do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in $(pids); do kill -KILL "$pid" 2>/dev/null || true; done
  rm -f "$FLEET_DIR/fleet.json"
}

# Waits until GET http://127.0.0.1:$1$2 answers 200 (at most $3 seconds).
wait_http() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys, time, urllib.request
port, path, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.time() + limit
while time.time() < end:
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).status == 200:
            sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(1)
PY
}

up() {
  local replicas=1 port="" threads=1 front=haproxy models=() extra=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --replicas) replicas="$2"; shift 2 ;;
      --port) port="$2"; shift 2 ;;
      --threads-per-replica) threads="$2"; shift 2 ;;
      --model) models+=("$2"); shift 2 ;;
      --front) front="$2"; shift 2 ;;
      # Everything after -- goes to every replica's `inferneo serve`.
      --) shift; extra=("$@"); break ;;
      *) die "unknown argument '$1' (see the top of this script)" ;;
    esac
  done
  [[ "$replicas" =~ ^[1-9][0-9]*$ ]] || die "--replicas '$replicas': expected a positive integer"
  [[ "$threads" =~ ^[1-9][0-9]*$ ]] || die "--threads-per-replica '$threads': expected a positive integer"
  [[ "$port" =~ ^[0-9]+$ ]] || die "--port: required, a port number"
  [ "$front" = haproxy ] || [ "$front" = nginx ] || die "--front '$front': expected haproxy or nginx"
  command -v "$front" >/dev/null || die "$front is not installed (Debian: apt-get install $front)"
  [ -n "$BIN" ] && [ -x "$BIN" ] || die "no inferneo binary (build it with cargo build --release, or set INFERNEO_BIN)"
  [ -f "$FLEET_DIR/fleet.json" ] && die "$FLEET_DIR/fleet.json exists: run 'fleet.sh down' first"
  mkdir -p "$FLEET_DIR/logs"
  [ ${#models[@]} -gt 0 ] || models=("")

  local ncpu numa=0; ncpu=$(nproc)
  [ -d /sys/devices/system/node/node1 ] && command -v numactl >/dev/null && numa=1
  local entries=() i=0
  for m in "${models[@]}"; do
    for _ in $(seq 1 "$replicas"); do
      # Cores i*T .. i*T+T-1, wrapping round the machine.
      local cores=() c
      for c in $(seq 0 $((threads - 1))); do cores+=($(( (i * threads + c) % ncpu ))); done
      local list; list=$(printf '%s\n' "${cores[@]}" | sort -un | paste -sd, -)
      local log="$FLEET_DIR/logs/replica-$i.log"
      # The drain delay outlasts HAProxy's check window (fall 2 x inter 1 s): a replica told to
      # stop is out of rotation before it stops accepting.
      local args=(serve --host 127.0.0.1 --port 0 --drain-delay 3)
      [ -n "$m" ] && args+=(--model "$m")
      args+=("${extra[@]}")
      local launch=(taskset -c "$list")
      [ "$numa" = 1 ] && launch=(numactl --cpunodebind="$(cat /sys/devices/system/cpu/cpu"${cores[0]}"/topology/physical_package_id 2>/dev/null || echo 0)" taskset -c "$list")
      RAYON_NUM_THREADS="$threads" "${launch[@]}" "$BIN" "${args[@]}" >"$log" 2>&1 &
      local pid=$!
      # The replica picks a free port and says which.
      local rport=""
      for _ in $(seq 1 600); do
        rport=$(sed -n 's#^listening on http://127.0.0.1:\([0-9]*\).*#\1#p' "$log" | head -1)
        [ -n "$rport" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "replica $i exited"; }
        sleep 0.1
      done
      [ -n "$rport" ] || die "replica $i did not start listening (see $log)"
      entries+=("$pid $rport $list ${m%%=*}")
      i=$((i + 1))
    done
  done
  for e in "${entries[@]}"; do
    set -- $e
    wait_http "$2" /ready 300 || die "replica on port $2 never became ready (see $FLEET_DIR/logs)"
  done

  local cfg front_pid
  if [ "$front" = haproxy ]; then
    cfg="$FLEET_DIR/haproxy.cfg"
    python3 - "$here/../haproxy/haproxy.cfg" "$cfg" "$port" "${entries[@]}" <<'PY'
import sys
template, out, port, entries = sys.argv[1], sys.argv[2], sys.argv[3], [e.split() for e in sys.argv[4:]]
text = open(template).read().replace("${FRONT_ADDR}", f"127.0.0.1:{port}")
servers = lambda rs: "".join(f"    server r{i} 127.0.0.1:{e[1]}\n" for i, e in rs)
indexed = list(enumerate(entries))
text = text.replace("    # FLEET_REPLICAS\n", servers(indexed))
models = sorted({e[3] for e in entries if len(e) > 3})
routes, backends = "", ""
checks = "    option httpchk GET /ready\n    http-check expect status 200\n    default-server check inter 1s fall 2 rise 2\n"
for m in models:
    own = servers([(i, e) for i, e in indexed if len(e) > 3 and e[3] == m])
    # Per model as for the whole fleet: by session when the header is there, else leastconn.
    routes += f"    use_backend model_{m}_by_session if {{ var(txn.model) -m str {m} }} {{ req.hdr(x-session-id) -m found }}\n"
    routes += f"    use_backend model_{m} if {{ var(txn.model) -m str {m} }}\n"
    backends += f"\nbackend model_{m}\n    balance leastconn\n" + checks + own
    backends += f"\nbackend model_{m}_by_session\n    balance hdr(x-session-id)\n    hash-type consistent\n" + checks + own
text = text.replace("    # FLEET_MODEL_ROUTES\n", routes) + backends
open(out, "w").write(text)
PY
    haproxy -c -q -f "$cfg" || die "haproxy rejected $cfg"
    haproxy -db -f "$cfg" >"$FLEET_DIR/logs/haproxy.log" 2>&1 &
    front_pid=$!
  else
    cfg="$FLEET_DIR/nginx.conf"
    mkdir -p "$FLEET_DIR/nginx"
    python3 - "$here/../nginx/nginx.conf" "$cfg" "$port" "$FLEET_DIR/nginx" "${entries[@]}" <<'PY'
import sys
template, out, port, prefix, entries = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], [e.split() for e in sys.argv[5:]]
servers = "".join(f"        server 127.0.0.1:{e[1]} max_fails=2 fail_timeout=5s;\n" for e in entries)
text = open(template).read().replace("        # FLEET_REPLICAS\n", servers)
text = text.replace("${FRONT_ADDR}", f"127.0.0.1:{port}").replace("${PREFIX}", prefix)
open(out, "w").write(text)
PY
    nginx -t -q -p "$FLEET_DIR/nginx" -c "$cfg" -g 'daemon off;' 2>"$FLEET_DIR/logs/nginx-check.log" || { cat "$FLEET_DIR/logs/nginx-check.log" >&2; die "nginx rejected $cfg"; }
    nginx -p "$FLEET_DIR/nginx" -c "$cfg" -g 'daemon off;' >"$FLEET_DIR/logs/nginx.log" 2>&1 &
    front_pid=$!
  fi

  python3 - "$FLEET_DIR/fleet.json" "$front" "$front_pid" "$port" "${entries[@]}" <<'PY'
import json, sys
out, kind, pid, port, entries = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), [e.split() for e in sys.argv[5:]]
replicas = [{"pid": int(e[0]), "port": int(e[1]), "cores": [int(c) for c in e[2].split(",")],
             **({"model": e[3]} if len(e) > 3 else {})} for e in entries]
json.dump({"front": {"kind": kind, "pid": pid, "port": port}, "replicas": replicas}, open(out, "w"), indent=2)
PY
  wait_http "$port" /ready 30 || { down; die "the $front front never answered /ready on port $port"; }
  echo "fleet up: $front on 127.0.0.1:$port, ${#entries[@]} replicas ($FLEET_DIR/fleet.json)"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  status) cat "$FLEET_DIR/fleet.json" ;;
  down) down ;;
  *) die "usage: fleet.sh up --replicas N --port P [--threads-per-replica T] [--model NAME=DIR ...] [--front haproxy|nginx] [-- SERVE_FLAGS] | status | down" ;;
esac
