#!/usr/bin/env bash
# Set up everything the tunmesh test suite needs on a fresh Debian machine, then run all of it:
# Debian tools for the namespace tests, a virtualenv in .venv with the package and its dev extras,
# ruff, mypy, and the trial suite. As root, the network-namespace and privilege tests are required
# (TUNMESH_REQUIRE_NETNS=1): they fail instead of skipping when they cannot run.
set -euo pipefail
cd "$(dirname "$0")/../.."
root_dir=$(pwd)

if [ "$(id -u)" = 0 ]; then
    missing=()
    # podman, runc and debootstrap: the real-container test builds the image (contrib/container/build.sh);
    # faketime: the wall-clock step test; groff: the man page test; promtool (prometheus): the alert rules
    # and dashboard checks; nebula, wireguard-go, wg, openvpn: the peer VPNs of contrib/bench/bench.py --peers
    # (test_bench_peers_processes); sockperf: the bench's request/response figure.
    for pair in ip:iproute2 iperf3:iperf3 nft:nftables ping:iputils-ping curl:curl openssl:openssl \
                podman:podman runc:runc debootstrap:debootstrap faketime:faketime groff:groff-base \
                promtool:prometheus nebula:nebula wireguard-go:wireguard-go wg:wireguard-tools \
                openvpn:openvpn sockperf:sockperf; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    export TUNMESH_REQUIRE_NETNS=1 TUNMESH_REQUIRE_ROOT_TESTS=1
fi

venv=${TUNMESH_VENV:-$root_dir/.venv}
# Debian's own Python when there is one: nodes drop to an unprivileged uid, which must still be able
# to read the interpreter and its stdlib (a Python under /root, e.g. pyenv, is not readable then).
base_python=$(command -v /usr/bin/python3 || command -v python3)
if ! "$base_python" -m venv --help >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
[ -x "$venv/bin/python" ] || "$base_python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e ".[dev]"

echo "== ruff"
"$venv/bin/ruff" check tunmesh twisted tests contrib

echo "== mypy"
"$venv/bin/mypy" tunmesh tests

echo "== trial"
export PYTHONPATH="$root_dir${PYTHONPATH:+:$PYTHONPATH}"
log=$(mktemp)
set +e
# The trial directory must be traversable by the unprivileged uids the privilege-drop tests switch to
# (mktemp -d makes it 0700).
trial_dir=$(mktemp -d)
chmod 755 "$trial_dir"
"$venv/bin/python" -m twisted.trial --temp-directory="$trial_dir/_trial_temp" "${@:-tests}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# A closing line any CI reader understands: "N passed, N failed, N skipped".
"$venv/bin/python" - "$log" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
m = re.findall(r"^(PASSED|FAILED) \((.*)\)\s*$", text, re.M)
counts = dict(re.findall(r"(\w+)=(\d+)", m[-1][1])) if m else {}
passed = int(counts.get("successes", 0))
failed = sum(int(counts.get(k, 0)) for k in ("failures", "errors", "unexpectedSuccesses"))
skipped = int(counts.get("skips", 0)) + int(counts.get("expectedFailures", 0))
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
PY
exit "$status"
