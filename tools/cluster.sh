#!/usr/bin/env bash
# A test cluster of "hosts" on one machine, for multi-host runs without the hosts (root only):
#
#   tools/cluster.sh up --hosts N [--dcs D] [--gbps G] [--slots S] [--name NAME] [--subnet A.B.C]
#   tools/cluster.sh down [--name NAME]
#   tools/cluster.sh status [--name NAME]
#
# Each host is a network namespace NAME-h<i> with one interface, dleth0, at A.B.C.<i+1>/24. Hosts
# are split into D datacentres in order (h0.. in dc0 first); the hosts of a datacentre share a
# bridge NAME-b<d>, and every datacentre reaches the core bridge NAME-x (this machine's address
# A.B.C.254, where mpirun runs) through its uplink, a veth pair NAME-u<d> / NAME-c<d> shaped with
# tc tbf to G Gbit/s each way. So traffic between datacentres crosses two shaped links' worth of
# one bottleneck, and traffic inside one does not.
#
# `up` writes, in the state folder /tmp/diloco-cluster-NAME:
#   hostfile   NAME-h<i> slots=S, one line a host (mpirun --hostfile)
#   launcher   an rsh agent (mpirun --mca plm_rsh_agent): runs a command in a host's namespace
#              under the host's own hostname (unshare --uts), as ssh would run it on the host.
#              Open MPI tells nodes apart by the name each daemon reports, so every host needs its own.
#   mpirun.args  the options a run over this cluster needs (see docs/distributed.md)
#   state      what up made, one object a line; down removes exactly those, and nothing else
set -euo pipefail

die() { echo "cluster.sh: $*" >&2; exit 1; }

NAME=diloco HOSTS="" DCS=1 GBPS=1 SLOTS=2 SUBNET=10.77.0
CMD=${1:-}
[[ -n $CMD ]] || die "usage: cluster.sh up --hosts N [--dcs D] [--gbps G] [--slots S] [--name NAME] [--subnet A.B.C] | down | status"
shift
while (($#)); do
    [[ $# -ge 2 ]] || die "$1 needs a value"
    case $1 in
        --hosts) HOSTS=$2 ;;
        --dcs) DCS=$2 ;;
        --gbps) GBPS=$2 ;;
        --slots) SLOTS=$2 ;;
        --name) NAME=$2 ;;
        --subnet) SUBNET=$2 ;;
        *) die "unknown option $1" ;;
    esac
    shift 2
done
# interface names have at most 15 characters: NAME-h<i> must fit
[[ $NAME =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "--name must be 1-8 lower-case letters or digits, starting with a letter"
[[ $SUBNET =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "--subnet takes the first three numbers of a /24, e.g. 10.77.0"
DIR=/tmp/diloco-cluster-$NAME
STATE=$DIR/state

need_root() {
    [[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, veth pairs, tc)"
    command -v ip > /dev/null || die "needs ip (iproute2)"
    command -v tc > /dev/null || die "needs tc (iproute2)"
    command -v unshare > /dev/null || die "needs unshare (util-linux)"
}

link_exists() { ip link show dev "$1" > /dev/null 2>&1; }
netns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

# Removes what the state file lists, newest first. Deleting a veth end deletes its peer and the
# qdiscs on both; processes left in a namespace (a run's daemons) are ended with it.
teardown() {
    [[ -f $STATE ]] || return 0
    local kind obj
    tac "$STATE" | while read -r kind obj; do
        case $kind in
            link) link_exists "$obj" && ip link del dev "$obj" ;;
            netns)
                if netns_exists "$obj"; then
                    local pids
                    pids=$(ip netns pids "$obj" || true)
                    [[ -z $pids ]] || kill $pids 2> /dev/null || true
                    ip netns del "$obj"
                fi ;;
        esac
    done
    rm -f "$STATE" "$DIR/config" "$DIR/hostfile" "$DIR/launcher" "$DIR/mpirun.args"
    rmdir "$DIR" 2> /dev/null || true
}

record() { echo "$1 $2" >> "$STATE"; }

# tbf at G Gbit/s; the bucket holds at least 256 KiB so that a GSO packet (64 KiB) always fits
shape() {
    local dev=$1 kbit burst
    kbit=$(awk -v g="$GBPS" 'BEGIN { printf "%d", g * 1e6 }')
    burst=$(awk -v g="$GBPS" 'BEGIN { b = g * 1e9 / 8 / 100; if (b < 262144) b = 262144; printf "%d", b }')
    tc qdisc add dev "$dev" root tbf rate "${kbit}kbit" burst "$burst" latency 100ms
}

new_bridge() {
    ip link add name "$1" type bridge
    record link "$1"
    ip link set dev "$1" up
}

make_datacentre() {
    local d=$1
    new_bridge "$NAME-b$d"
    ip link add name "$NAME-u$d" type veth peer name "$NAME-c$d"
    record link "$NAME-u$d"
    ip link set dev "$NAME-u$d" master "$NAME-b$d" up
    ip link set dev "$NAME-c$d" master "$NAME-x" up
    if [[ $GBPS != 0 ]]; then
        shape "$NAME-u$d"
        shape "$NAME-c$d"
    fi
}

make_host() {
    local i=$1 d=$2 ns=$NAME-h$1
    ip netns add "$ns"
    record netns "$ns"
    ip link add name "$ns" type veth peer name dleth0 netns "$ns"
    record link "$ns"
    ip link set dev "$ns" master "$NAME-b$d" up
    ip -n "$ns" link set dev lo up
    ip -n "$ns" addr add "$SUBNET.$((i + 1))/24" dev dleth0
    ip -n "$ns" link set dev dleth0 up
}

write_launcher() {
    local hosts=$1
    cat > "$DIR/launcher" << EOF
#!/bin/sh
# rsh agent of the test cluster $NAME (tools/cluster.sh): mpirun calls it as it would call ssh,
#   launcher [ssh options] HOST COMMAND...
# and it runs COMMAND with sh in HOST's network namespace, under the hostname HOST.
while [ \$# -gt 0 ] && [ "\${1#-}" != "\$1" ]; do shift; done
[ \$# -ge 2 ] || { echo "launcher: usage: launcher HOST COMMAND..." >&2; exit 2; }
host=\$1; shift
case " $hosts " in *" \$host "*) ;; *) echo "launcher: \$host is not a host of the test cluster $NAME" >&2; exit 2 ;; esac
exec ip netns exec "\$host" unshare --uts /bin/sh -c 'hostname "\$0" && exec /bin/sh -c "\$1"' "\$host" "\$*"
EOF
    chmod +x "$DIR/launcher"
}

up() {
    need_root
    [[ $HOSTS =~ ^[1-9][0-9]*$ && $HOSTS -le 200 ]] || die "--hosts takes 1..200"
    [[ $DCS =~ ^[1-9][0-9]*$ && $DCS -le $HOSTS ]] || die "--dcs takes 1..hosts"
    [[ $SLOTS =~ ^[1-9][0-9]*$ ]] || die "--slots takes a positive integer"
    awk -v g="$GBPS" 'BEGIN { exit !(g ~ /^[0-9]*\.?[0-9]+$/) }' || die "--gbps takes a number (0: unshaped)"
    local config="hosts=$HOSTS dcs=$DCS gbps=$GBPS slots=$SLOTS subnet=$SUBNET"
    if [[ -f $STATE ]]; then
        [[ $(cat "$DIR/config" 2> /dev/null) == "$config" ]] ||
            die "cluster $NAME is up with other settings ($(cat "$DIR/config" 2> /dev/null)): run down first"
        echo "cluster $NAME is already up ($config)"
        return 0
    fi
    # names taken by anything else: stop before making anything
    local i d
    for obj in "$NAME-x" $(for ((d = 0; d < DCS; d++)); do echo "$NAME-b$d $NAME-u$d $NAME-c$d"; done) \
        $(for ((i = 0; i < HOSTS; i++)); do echo "$NAME-h$i"; done); do
        link_exists "$obj" && die "an interface $obj exists and is not this cluster's: choose another --name"
    done
    for ((i = 0; i < HOSTS; i++)); do
        netns_exists "$NAME-h$i" && die "a namespace $NAME-h$i exists and is not this cluster's: choose another --name"
    done
    mkdir -p "$DIR"
    : > "$STATE"
    # from here on, any way out but success (an error, die, ^C) removes what up made
    UP_OK=0
    trap '[[ $UP_OK == 1 ]] || { echo "cluster.sh: up failed; removing what it made" >&2; teardown; }' EXIT
    trap 'exit 130' INT TERM
    new_bridge "$NAME-x"
    ip addr add "$SUBNET.254/24" dev "$NAME-x"
    for ((d = 0; d < DCS; d++)); do make_datacentre "$d"; done
    local hosts="" dc
    : > "$DIR/hostfile"
    for ((i = 0; i < HOSTS; i++)); do
        dc=$((i * DCS / HOSTS))
        make_host "$i" "$dc"
        hosts+="$NAME-h$i "
        echo "$NAME-h$i slots=$SLOTS" >> "$DIR/hostfile"
    done
    write_launcher "${hosts% }"
    cat > "$DIR/mpirun.args" << EOF
--hostfile $DIR/hostfile --mca plm_rsh_agent $DIR/launcher --mca plm_rsh_no_tree_spawn 1 --mca btl tcp,vader,self --mca btl_tcp_if_include $SUBNET.0/24 --mca oob_tcp_if_include $SUBNET.0/24 --mca oob_tcp_keepalive_time 2 --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3 -x NCCL_SOCKET_IFNAME=dleth0
EOF
    echo "$config" > "$DIR/config"
    UP_OK=1
    echo "cluster $NAME up: $HOSTS hosts in $DCS datacentre(s), uplinks at $GBPS Gbit/s; mpirun $(cat "$DIR/mpirun.args")"
}

status() {
    if [[ ! -f $STATE ]]; then
        echo "no cluster $NAME"
        return 0
    fi
    echo "cluster $NAME ($(cat "$DIR/config")), state in $DIR"
    local kind obj
    while read -r kind obj; do
        case $kind in
            link) link_exists "$obj" && echo "  link  $obj: $(tc qdisc show dev "$obj" | grep -o 'tbf.*' || echo unshaped)" ||
                echo "  link  $obj: MISSING" ;;
            netns) netns_exists "$obj" && echo "  netns $obj: $(ip -n "$obj" -br addr show dev dleth0 | awk '{print $3}')" ||
                echo "  netns $obj: MISSING" ;;
        esac
    done < "$STATE"
}

case $CMD in
    up) up ;;
    down)
        need_root
        if [[ -f $STATE ]]; then teardown && echo "cluster $NAME down"; else echo "no cluster $NAME"; fi ;;
    status) status ;;
    *) die "unknown command $CMD (up, down or status)" ;;
esac
