#!/usr/bin/env bash
# tunmesh local demo: a 3-node mesh in 3 network namespaces ("pods") on one machine.
#
#   bash contrib/demo/run.sh          set up, start 3 nodes, wait for the mesh, ping + transfer, clean up
#   bash contrib/demo/run.sh --keep   same, but leave the mesh running (logs and configs stay)
#   bash contrib/demo/run.sh down     stop a kept mesh and remove everything
#
# Underlay: bridge in namespace tmd-u, nodes tmd-n1..3 at 198.18.0.11-13/24 (benchmarking range).
# Overlay:  100.64.0.0/24 (node i at 100.64.0.i) and fd7e:7e57::/64 (node i at fd7e:7e57::i), via TUN tun1.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
work=${TUNMESH_DEMO_DIR:-$repo/demo-run}
nodes=(1 2 3)
keep=0
action=up
for arg in "$@"; do
    case "$arg" in
        --keep) keep=1 ;;
        down) action=down ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" != 0 ]; then
    echo "the demo creates network namespaces and TUN devices: run it as root (sudo)" >&2
    exit 1
fi

teardown() {
    for i in "${nodes[@]}"; do
        pidfile="$work/node$i/twistd.pid"
        if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
    done
    sleep 0.5
    for i in "${nodes[@]}"; do
        ip netns pids "tmd-n$i" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "tmd-n$i" 2>/dev/null || true
    done
    ip netns del tmd-u 2>/dev/null || true
}

if [ "$action" = down ]; then
    teardown
    echo "demo mesh stopped; logs and configs kept in $work"
    exit 0
fi

say() { printf '\n== %s\n' "$*"; }

say "installing what the demo needs (Debian packages, virtualenv in .venv)"
missing=()
for pair in ip:iproute2 iperf3:iperf3 ping:iputils-ping curl:curl openssl:openssl; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
venv=${TUNMESH_VENV:-$repo/.venv}
# Debian's own Python when there is one: nodes drop to an unprivileged uid, which must still be able
# to read the interpreter and its stdlib (a Python under /root, e.g. pyenv, is not readable then).
base_python=$(command -v /usr/bin/python3 || command -v python3)
if ! "$base_python" -m venv --help >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
[ -x "$venv/bin/python" ] || "$base_python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e .

teardown
if [ "$keep" = 0 ]; then trap 'say "cleaning up"; teardown' EXIT; fi
trap 'exit 130' INT TERM

say "creating the underlay: bridge in tmd-u, namespaces tmd-n1..3"
ip netns add tmd-u
ip -n tmd-u link add br0 type bridge
ip -n tmd-u link set br0 up
ip -n tmd-u link set lo up
for i in "${nodes[@]}"; do
    ip netns add "tmd-n$i"
    ip link add "tmd-v$i" type veth peer name eth0 netns "tmd-n$i"
    ip link set "tmd-v$i" netns tmd-u
    ip -n tmd-u link set "tmd-v$i" master br0 up
    ip -n "tmd-n$i" addr add "198.18.0.1$i/24" dev eth0
    ip -n "tmd-n$i" link set eth0 up
    ip -n "tmd-n$i" link set lo up
done

say "generating a cluster secret and a self-signed certificate in $work"
rm -rf "$work"; mkdir -p "$work"
"$venv/bin/tunmesh" gen-secret > "$work/cluster.secret"
chmod 0644 "$work/cluster.secret"
"$venv/bin/tunmesh" gen-cert --cert "$work/cert.pem" --key "$work/key.pem" --hostname tunmesh.local
chmod 0644 "$work/key.pem"   # the nodes drop to uid 65534 and still need to read it (demo only)
for i in "${nodes[@]}"; do
    mkdir -p "$work/node$i"
    cat > "$work/node$i/config.yaml" <<YAML
tun_mesh:
  config_version: 1.1
  clustering:
    control_api_advertise_url: https://198.18.0.1$i:4567/
    node_name: demo-$i
    bootstrap_groups:
      demo:
        bootstrap_node_urls:
          - https://198.18.0.11:4567/
    auth:
      secret_file: ../cluster.secret
  control_api:
    listen_port: 4567
    ssl:
      cert_file_path: ../cert.pem
      key_file_path: ../key.pem
  logging:
    level: info
  monitoring:
    method: prometheus
    prometheus:
      base_labels:
        env_name: local_demo
  networking:
    tun_device_id: tun1
    ipv4:
      network_cidr: 100.64.0.0/24
      node_address_cidr: 100.64.0.$i/24
    ipv6:
      network_cidr: fd7e:7e57::/64
      node_address_cidr: fd7e:7e57::$i/64
  process:
    uid: 65534
    # One socket per node: the three demo nodes share this machine's filesystem.
    admin_socket: $work/node$i/admin.sock
    timing:
      registrations:
        groom_interval: 1
YAML
done

say "starting 3 nodes with twistd (logs in $work/nodeN/node.log)"
for i in "${nodes[@]}"; do
    (cd "$work/node$i" && ip netns exec "tmd-n$i" "$venv/bin/twistd" \
        --pidfile "$work/node$i/twistd.pid" --logfile "$work/node$i/node.log" \
        tunmesh --config "$work/node$i/config.yaml")
done

say "waiting for every node to be ready (GET /ready)"
deadline=$((SECONDS + 60))
for i in "${nodes[@]}"; do
    until ip netns exec "tmd-n$i" curl -ksf -o /dev/null "https://198.18.0.1$i:4567/ready"; do
        if [ $SECONDS -ge $deadline ]; then
            echo "node $i did not become ready; last log lines:" >&2
            tail -n 30 "$work/node$i/node.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "node $i ready"
done

say "pinging every pair over the overlay (IPv4 and IPv6)"
for i in "${nodes[@]}"; do
    for j in "${nodes[@]}"; do
        [ "$i" = "$j" ] && continue
        ip netns exec "tmd-n$i" ping -c 3 -i 0.2 -W 2 "100.64.0.$j" | tail -n 1 | sed "s/^/n$i -> 100.64.0.$j: /"
        ip netns exec "tmd-n$i" ping -6 -c 3 -i 0.2 -W 2 "fd7e:7e57::$j" | tail -n 1 | sed "s/^/n$i -> fd7e:7e57::$j: /"
    done
done

say "a 5 second TCP transfer from node 2 to node 1 over the overlay (iperf3)"
ip netns exec tmd-n1 iperf3 -s -1 -B 100.64.0.1 >/dev/null 2>&1 &
sleep 0.5
ip netns exec tmd-n2 iperf3 -c 100.64.0.1 -t 5 | tail -n 4

say "mesh view of node 1 (tunmesh peers: the cluster-authenticated GET /tunmesh/control/v0/peers)"
ip netns exec tmd-n1 "$venv/bin/tunmesh" peers --config "$work/node1/config.yaml"

say "node 1's status (tunmesh status: the local admin socket, no cluster secret)"
ip netns exec tmd-n1 "$venv/bin/tunmesh" status --config "$work/node1/config.yaml"

say "done"
echo "configs and logs: $work/node{1,2,3}/ (config.yaml, node.log)"
if [ "$keep" = 1 ]; then
    echo "the mesh is still running; try: ip netns exec tmd-n1 ping 100.64.0.2"
    echo "or watch node 1: $venv/bin/tunmesh status --watch --config $work/node1/config.yaml"
    echo "stop it with: bash contrib/demo/run.sh down"
fi
