#!/usr/bin/env bash
# Container smoke test: builds the image of deploy/Dockerfile and checks what a user relies on.
#   - The default command serves the embedded model on 0.0.0.0:8000: `/ready`, then a greedy
#     completion equal to the same request against the host build (target/release/inferneo).
#   - The server runs as uid 65532 and the image is FROM scratch.
#   - A model directory mounted read-only under /models serves, equal to the host build on the
#     same directory.
#   - `docker stop` (SIGTERM) ends the server cleanly: exit status 0.
#
#   deploy/smoke-image.sh     (needs Debian's docker.io, curl, and a release build)
#
# Runs a private dockerd (vfs storage, no bridge, no iptables: what works inside a sandbox)
# on its own socket unless DOCKER_HOST already answers, and uses host networking. The last line
# is `container smoke: passed`, `container smoke: skipped: REASON` or `... failed: REASON`; the
# exit status is 0 for passed and skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
host_bin=$PWD/target/release/inferneo
fail() { echo "container smoke: failed: $*"; exit 1; }
skip() { echo "container smoke: skipped: $*"; exit 0; }

[ -x "$host_bin" ] || fail "$host_bin is missing (cargo build --release first)"
command -v docker >/dev/null || skip "no docker client (Debian's docker.io)"

work=$(mktemp -d)   # models and logs
dk=$(mktemp -d)     # the private dockerd's state
dockerd_pid=
containers=()
cleanup() {
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
  docker image rm -f inferneo:smoke >/dev/null 2>&1 || true
  [ -n "${host_pid:-}" ] && kill "$host_pid" 2>/dev/null || true
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done
    # dockerd leaves its network namespace bind-mounted.
    umount "$dk/exec/netns/default" 2>/dev/null || true
  fi
  rm -rf "$work" "$dk"
}
trap cleanup EXIT

if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || skip "no Docker daemon answers and dockerd is not installed"
  export DOCKER_HOST=unix://$dk/docker.sock
  dockerd --storage-driver=vfs --iptables=false --bridge=none \
    --data-root "$dk/data" --exec-root "$dk/exec" -H "$DOCKER_HOST" \
    --pidfile "$dk/docker.pid" >"$dk/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 ||
    skip "dockerd did not start here: $(grep -m1 -iE 'error|fail' "$dk/dockerd.log" || tail -1 "$dk/dockerd.log")"
fi

bash deploy/build-image.sh inferneo:smoke
# FROM scratch: nothing but the binary, so not even a shell to start.
if docker run --rm --network none --entrypoint /bin/sh inferneo:smoke -c true >/dev/null 2>&1; then
  fail "the image has a shell (not FROM scratch?)"
fi

# Waits until http://127.0.0.1:$1/ready answers 200 (bounded: 60 s).
wait_ready() {
  for _ in $(seq 120); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/ready")" = 200 ] && return 0
    sleep 0.5
  done
  return 1
}
# A greedy completion's text from port $1, model $2.
complete() {
  curl -sS --max-time 60 "http://127.0.0.1:$1/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$2\", \"prompt\": \"The container test says\", \"max_tokens\": 12, \"temperature\": 0}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["text"])'
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# 1. The image as shipped: default command, embedded model, 0.0.0.0:8000.
port_free 8000 || fail "port 8000 is in use; the default command listens there"
c=inferneo-smoke-$$
containers+=("$c")
docker run -d --name "$c" --network host inferneo:smoke >/dev/null
wait_ready 8000 || fail "the default command never became ready: $(docker logs "$c" 2>&1 | tail -3)"
uid=$(ps -o uid= -p "$(docker inspect -f '{{.State.Pid}}' "$c")" | tr -d ' ')
[ "$uid" = 65532 ] || fail "the server runs as uid $uid, not 65532"
got=$(complete 8000 gpt2)

hport=18720
port_free $hport || fail "port $hport is in use"
"$host_bin" serve --host 127.0.0.1 --port $hport >"$work/host.log" 2>&1 &
host_pid=$!
wait_ready $hport || fail "the host build never became ready"
want=$(complete $hport gpt2)
[ -n "$want" ] && [ "$got" = "$want" ] || fail "embedded model: container said '$got', host build said '$want'"
echo "embedded model: the container's greedy completion equals the host build's: '$got'"

docker stop -t 30 "$c" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
[ "$code" = 0 ] || fail "SIGTERM: the server exited with $code"
echo "docker stop: exit status 0"

# 2. A model directory mounted read-only at /models.
"$host_bin" init --preset tiny --seed 7 --out "$work/tiny" >/dev/null 2>&1
chmod -R a+rX "$work"
mport=18721
port_free $mport || fail "port $mport is in use"
c=inferneo-smoke-model-$$
containers+=("$c")
docker run -d --name "$c" --network host -v "$work/tiny:/models/tiny:ro" inferneo:smoke \
  serve --host 127.0.0.1 --port $mport --model tiny=/models/tiny >/dev/null
wait_ready $mport || fail "the mounted model never became ready: $(docker logs "$c" 2>&1 | tail -3)"
got=$(complete $mport tiny)
kill "$host_pid"; wait "$host_pid" 2>/dev/null || true
"$host_bin" serve --host 127.0.0.1 --port $hport --model "tiny=$work/tiny" >"$work/host.log" 2>&1 &
host_pid=$!
wait_ready $hport || fail "the host build never became ready on the tiny model"
want=$(complete $hport tiny)
[ -n "$want" ] && [ "$got" = "$want" ] || fail "mounted model: container said '$got', host build said '$want'"
echo "mounted model: the container's greedy completion equals the host build's"

echo "image: $(docker image inspect -f '{{.Size}}' inferneo:smoke | awk '{ printf "%.1f MB", $1 / 1e6 }'), user $(docker image inspect -f '{{.Config.User}}' inferneo:smoke)"
echo "container smoke: passed"
