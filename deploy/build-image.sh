#!/usr/bin/env bash
# Builds the container image of deploy/Dockerfile: a static `inferneo` binary on an empty base.
#
#   deploy/build-image.sh [TAG]        (default tag: inferneo:latest)
#
# The binary is linked statically against glibc (`+crt-static`), so the image needs no libc.
# `--target` keeps RUSTFLAGS off build scripts and proc macros, and puts this build in its own
# folder (target/x86_64-unknown-linux-gnu/), apart from the ordinary dynamic one. The server
# resolves no host names (it binds to an address literal), so glibc's static-NSS caveat does not
# apply. Kernels choose their ISA at run time as usual: one image serves AVX-512 and AVX2 hosts.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-inferneo:latest}
target=x86_64-unknown-linux-gnu

RUSTFLAGS="-C target-feature=+crt-static" \
  CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build --release --locked --target "$target" -p inferneo-tools --bin inferneo
bin=target/$target/release/inferneo
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "build-image: $bin is dynamically linked; the image has no libc" >&2
  exit 1
fi

# A context holding only the binary and the Dockerfile: the repository's target/ is gigabytes.
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/inferneo"
cp deploy/Dockerfile "$ctx/Dockerfile"
# The classic builder: Debian's docker.io has no buildx, and FROM scratch needs nothing more.
if ! DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >"$ctx/build.log" 2>&1; then
  cat "$ctx/build.log" >&2
  exit 1
fi
echo "built $tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{ printf "%.1f MB", $1 / 1e6 }')"
