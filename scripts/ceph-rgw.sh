#!/usr/bin/env bash
# A single-node Ceph cluster (mon + one memstore OSD + radosgw) answering S3 on 127.0.0.1, for tests and
# benchmarks. Everything (config, keys, data, logs, pids) lives under DIR; nothing is started by systemd and
# nothing listens beyond loopback.
#
#   ceph-rgw.sh start DIR      start (or leave running) the cluster; prints the endpoint and the env lines
#   ceph-rgw.sh stop DIR       stop by recorded pid: rgw, then osd, then mon (SIGKILL after 10 s each)
#   ceph-rgw.sh stop-rgw DIR   stop only radosgw (the data stays; `start` brings it back on the same port)
#   ceph-rgw.sh env DIR [admin|readonly]
#                              AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION lines;
#                              without a user: the admin's as AWS_*, then RGW_HTTPS_ENDPOINT (https with a
#                              self-signed certificate) and RGW_CERT_SHA256 (its fingerprint), then the read-only
#                              user's as READONLY_AWS_*
#   ceph-rgw.sh bucket DIR NAME...
#                              create buckets (owned by the admin) whose policy lets the read-only user
#                              GetObject and ListBucket; idempotent
#   ceph-rgw.sh status DIR     exit 0 when all three daemons run
#
# In a shell: eval "$(scripts/ceph-rgw.sh env DIR admin | sed 's/^/export /')"
#
# Users: `restorefs-admin` (full access) and `restorefs-readonly` (op mask "read": every write answers 403; no
# bucket of its own; reads what a bucket policy grants it). Keys are made at the first start and kept in
# DIR/keys, so a rebuilt cluster has the same keys. Memstore keeps objects in the OSD's memory: stopping the
# OSD loses them and the next `start` builds a fresh cluster; stopping only rgw keeps them.
# Packages: ceph-mon ceph-osd radosgw ceph-common curl openssl (scripts/install-deps.sh).
set -euo pipefail

REGION=${CEPH_RGW_REGION:-us-east-1}

die() { echo "ceph-rgw: $*" >&2; exit 1; }

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 2 ] || usage
cmd=$1
DIR=$2
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
CONF=$DIR/ceph.conf

# A daemon counts as running when /proc/PID exists, is not a zombie and runs the expected binary.
alive() { # NAME
  local pidfile=$DIR/pids/$1.pid pid state exe
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -r "/proc/$pid/status" ] || return 1
  state=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ] || return 1
  exe=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
  case $1 in
    mon) [[ $exe == *ceph-mon* ]] ;;
    osd) [[ $exe == *ceph-osd* ]] ;;
    rgw) [[ $exe == *radosgw* ]] ;;
  esac
}

stop_one() { # NAME
  local pidfile=$DIR/pids/$1.pid pid i
  if alive "$1"; then
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
      alive "$1" || break
      sleep 0.05
    done
    if alive "$1"; then
      echo "ceph-rgw: $1 (pid $pid) ignored SIGTERM for 10 s; SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do alive "$1" || break; sleep 0.05; done
    fi
  fi
  rm -f "$pidfile"
}

port_free() { # PORT: nothing listens or is connected on it (a connected socket would make the bind fail too). Sockets
  # on their way out do not count: TIME-WAIT, and the closing halves a stopped gateway leaves behind while a client
  # still holds its end (FIN-WAIT, CLOSING, LAST-ACK): the daemons bind with SO_REUSEADDR, and a gateway restarted by
  # `start` must get its old port back, or every client that knows the port is cut off.
  [ -z "$(ss -Htan exclude time-wait exclude fin-wait-1 exclude fin-wait-2 exclude closing exclude last-ack "sport = :$1" 2>/dev/null)" ]
}

# A free loopback port: the one recorded before when it is still free, else a random one below the kernel's ephemeral
# range (outgoing connections take ports from that range at any moment, so a port picked there can be gone by the time
# the daemon binds it; two clusters started side by side by the tests make such collisions likelier).
pick_port() { # RECORDED
  local p=${1:-} lo=32768 rest base span
  read -r lo rest </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || lo=32768
  base=10000 span=$((lo - 10000))
  if [ "$span" -lt 2000 ]; then base=1024 span=$((lo - 1024)); fi   # an unusually low ephemeral range
  if [ "$span" -lt 2000 ]; then base=20000 span=12000; fi           # none below it worth using: best effort
  if [ -n "$p" ] && port_free "$p"; then echo "$p"; return; fi
  for _ in $(seq 1 200); do
    p=$((base + (RANDOM * 32768 + RANDOM) % span))
    port_free "$p" && { echo "$p"; return; }
  done
  die "no free port found"
}

write_ports() {
  printf 'MON_V2=%s\nMON_V1=%s\nRGW_PORT=%s\nTLS_PORT=%s\n' "$MON_V2" "$MON_V1" "$RGW_PORT" "$TLS_PORT" >"$DIR/ports"
}

read_ports() {
  MON_V2=; MON_V1=; RGW_PORT=; TLS_PORT=
  # shellcheck disable=SC1091
  [ -f "$DIR/ports" ] && . "$DIR/ports"
  return 0
}

ensure_keys() {
  if [ ! -s "$DIR/keys" ]; then
    local rnd
    rnd() { tr -dc 'A-Za-z0-9' </dev/urandom | head -c "$1"; }
    {
      echo "ADMIN_ACCESS=RFSADM$(tr -dc 'A-Z0-9' </dev/urandom | head -c 14)"
      echo "ADMIN_SECRET=$(rnd 40)"
      echo "RO_ACCESS=RFSRO$(tr -dc 'A-Z0-9' </dev/urandom | head -c 15)"
      echo "RO_SECRET=$(rnd 40)"
    } >"$DIR/keys.tmp"
    chmod 600 "$DIR/keys.tmp"
    mv "$DIR/keys.tmp" "$DIR/keys"
  fi
  # shellcheck disable=SC1091
  . "$DIR/keys"
}

print_env() { # admin|readonly|both
  read_ports
  ensure_keys
  [ -n "$RGW_PORT" ] || die "no cluster was started in $DIR"
  local url=http://127.0.0.1:$RGW_PORT
  case $1 in
    admin | both)
      echo "AWS_ENDPOINT_URL=$url"
      echo "AWS_ACCESS_KEY_ID=$ADMIN_ACCESS"
      echo "AWS_SECRET_ACCESS_KEY=$ADMIN_SECRET"
      echo "AWS_REGION=$REGION"
      ;;
  esac
  if [ "$1" = both ] && [ -n "$TLS_PORT" ] && [ -s "$DIR/tls/cert.pem" ]; then
    echo "RGW_HTTPS_ENDPOINT=https://127.0.0.1:$TLS_PORT"
    echo "RGW_CERT_SHA256=$(openssl x509 -in "$DIR/tls/cert.pem" -noout -fingerprint -sha256 | cut -d= -f2)"
  fi
  case $1 in
    readonly) local p= ;;
    both) local p=READONLY_ ;;
    *) return 0 ;;
  esac
  echo "${p}AWS_ENDPOINT_URL=$url"
  echo "${p}AWS_ACCESS_KEY_ID=$RO_ACCESS"
  echo "${p}AWS_SECRET_ACCESS_KEY=$RO_SECRET"
  echo "${p}AWS_REGION=$REGION"
}

# A self-signed certificate for the https listener (kept across rebuilds, like the keys).
ensure_cert() {
  [ -s "$DIR/tls/cert.pem" ] && [ -s "$DIR/tls/key.pem" ] && return 0
  mkdir -p "$DIR/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$DIR/tls/key.pem" -out "$DIR/tls/cert.pem" >/dev/null 2>&1 ||
    die "openssl could not make a certificate"
  chmod 600 "$DIR/tls/key.pem"
}

gen_cephx_key() {
  { printf '\x01\x00'; head -c 8 /dev/zero; printf '\x10\x00'; head -c 16 /dev/urandom; } | base64 -w0
}

ceph_cli() { timeout 30 ceph -c "$CONF" --connect-timeout 10 "$@"; }

spawn() { # NAME LOG CMD...
  local name=$1 log=$2 pid i
  shift 2
  setsid "$@" </dev/null >>"$log" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$DIR/pids/$name.pid"
  # Until it has exec'd, the child is a fork of this script, and `alive` (which checks the binary) would call the
  # daemon dead: on a busy machine a gateway restarted by `start` was reported as "radosgw exited" before it ran.
  for ((i = 0; i < 500; i++)); do
    [ -r "/proc/$pid/cmdline" ] || break
    [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *"$1"* ]] && break
    sleep 0.01
  done
}

write_conf() {
  cat >"$CONF.tmp" <<EOF
[global]
fsid = $FSID
mon_initial_members = a
mon_host = [v2:127.0.0.1:$MON_V2,v1:127.0.0.1:$MON_V1]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv4 = true
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = $DIR/keyring
run_dir = $DIR/run
admin_socket = $DIR/run/\$cluster-\$name.asok
log_file = $DIR/log/\$cluster-\$name.log
crash_dir = $DIR/crash
exporter_sock_dir = $DIR/run
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_max_pg_per_osd = 1000
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
mon_data_avail_crit = 1
mon_data_avail_warn = 2
mon_osd_full_ratio = .99
mon_osd_nearfull_ratio = .99
mon_osd_backfillfull_ratio = .99

[mon]
mon_data = $DIR/mon/\$cluster-\$id
keyring = $DIR/mon/\$cluster-\$id/keyring
paxos_propose_interval = 0.05

[osd]
osd_data = $DIR/osd/\$cluster-\$id
keyring = $DIR/osd/\$cluster-\$id/keyring
osd_objectstore = memstore
memstore_device_bytes = 4294967296
osd_memory_target = 1073741824

[client.rgw.a]
keyring = $DIR/rgw.keyring
rgw_data = $DIR/rgw
rgw_frontends = beast endpoint=127.0.0.1:$RGW_PORT ssl_endpoint=127.0.0.1:$TLS_PORT ssl_certificate=$DIR/tls/cert.pem ssl_private_key=$DIR/tls/key.pem tcp_nodelay=1
rgw_dns_name = localhost
rgw_enable_lc_threads = false
EOF
  mv "$CONF.tmp" "$CONF"
}

wait_rgw() { # SECONDS
  local deadline=$((SECONDS + $1))
  while ((SECONDS < deadline)); do
    alive rgw || { tail -n 20 "$DIR/log/rgw.out" "$DIR/log/ceph-client.rgw.a.log" >&2 2>/dev/null; die "radosgw exited (logs in $DIR/log)"; }
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$RGW_PORT/" && return 0
    sleep 0.05
  done
  die "radosgw did not answer on 127.0.0.1:$RGW_PORT within $1 s (logs in $DIR/log)"
}

start_rgw() {
  read_ports
  RGW_PORT=$(pick_port "$RGW_PORT")
  TLS_PORT=$(pick_port "$TLS_PORT")
  write_ports
  # The port sits in the config; rewrite only its line when it moved.
  sed -i "s|^rgw_frontends = .*|rgw_frontends = beast endpoint=127.0.0.1:$RGW_PORT ssl_endpoint=127.0.0.1:$TLS_PORT ssl_certificate=$DIR/tls/cert.pem ssl_private_key=$DIR/tls/key.pem tcp_nodelay=1|" "$CONF"
  spawn rgw "$DIR/log/rgw.out" radosgw -c "$CONF" -n client.rgw.a -f
  wait_rgw 60
}

fresh_cluster() {
  local d
  for d in mon osd rgw run log crash pids; do rm -rf "${DIR:?}/$d"; done
  rm -f "$DIR"/*.keyring "$DIR/keyring" "$DIR/monmap" "$DIR/ceph.conf"
  mkdir -p "$DIR"/{mon,osd/ceph-0,rgw,run,log,crash,pids}
  ensure_keys
  read_ports
  MON_V2=$(pick_port "$MON_V2")
  MON_V1=$(pick_port "$MON_V1")
  [ "$MON_V1" != "$MON_V2" ] || MON_V1=$(pick_port "")
  RGW_PORT=$(pick_port "$RGW_PORT")
  while [ "$RGW_PORT" = "$MON_V1" ] || [ "$RGW_PORT" = "$MON_V2" ]; do RGW_PORT=$(pick_port ""); done
  TLS_PORT=$(pick_port "$TLS_PORT")
  while [ "$TLS_PORT" = "$MON_V1" ] || [ "$TLS_PORT" = "$MON_V2" ] || [ "$TLS_PORT" = "$RGW_PORT" ]; do TLS_PORT=$(pick_port ""); done
  write_ports
  ensure_cert
  FSID=$(cat /proc/sys/kernel/random/uuid)
  local osd_uuid
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  write_conf

  # Keys made here (a cephx key is base64 of: type 1 = AES, a creation time, length 16, 16 random bytes);
  # mon., client.admin, client.rgw.a and osd.0 go into the mon's initial auth database.
  local k_mon k_admin k_rgw k_osd
  k_mon=$(gen_cephx_key); k_admin=$(gen_cephx_key); k_rgw=$(gen_cephx_key); k_osd=$(gen_cephx_key)
  printf '[client.admin]\n\tkey = %s\n' "$k_admin" >"$DIR/keyring"
  printf '[client.rgw.a]\n\tkey = %s\n' "$k_rgw" >"$DIR/rgw.keyring"
  printf '[osd.0]\n\tkey = %s\n' "$k_osd" >"$DIR/osd/ceph-0/keyring"
  cat >"$DIR/mon.keyring" <<EOK
[mon.]
	key = $k_mon
	caps mon = "allow *"
[client.admin]
	key = $k_admin
	caps mon = "allow *"
	caps osd = "allow *"
	caps mgr = "allow *"
[client.rgw.a]
	key = $k_rgw
	caps mon = "allow rw"
	caps osd = "allow rwx"
	caps mgr = "allow rw"
[osd.0]
	key = $k_osd
	caps mon = "allow profile osd"
	caps osd = "allow *"
	caps mgr = "allow profile osd"
EOK
  chmod 600 "$DIR"/*.keyring "$DIR/keyring" "$DIR/osd/ceph-0/keyring"
  monmaptool --create --addv a "[v2:127.0.0.1:$MON_V2,v1:127.0.0.1:$MON_V1]" --fsid "$FSID" "$DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring" >>"$DIR/log/mkfs.out" 2>&1 ||
    die "ceph-mon --mkfs failed (see $DIR/log/mkfs.out)"
  spawn mon "$DIR/log/mon.out" ceph-mon -c "$CONF" -i a -f

  # Registering osd.0 with the mon (python CLI, the slowest step) and the OSD's mkfs run side by side.
  ceph_cli osd new "$osd_uuid" >"$DIR/osd-id" 2>>"$DIR/log/mkfs.out" &
  local osd_new=$!
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" --no-mon-config >>"$DIR/log/mkfs.out" 2>&1 ||
    die "ceph-osd --mkfs failed (see $DIR/log/mkfs.out)"
  wait "$osd_new" || die "the mon did not register osd.0 (see $DIR/log/mkfs.out and $DIR/log)"
  [ "$(cat "$DIR/osd-id")" = 0 ] || die "unexpected osd id '$(cat "$DIR/osd-id")'"
  spawn osd "$DIR/log/osd.out" ceph-osd -c "$CONF" -i 0 -f

  # radosgw waits for the OSD by itself and creates its pools.
  spawn rgw "$DIR/log/rgw.out" radosgw -c "$CONF" -n client.rgw.a -f
  wait_rgw 60

  # The two users are made side by side. The read-only one: op mask "read" (any write answers 403), no bucket
  # creation (max-buckets -1), and reads only what a bucket policy grants it (`bucket` below).
  radosgw-admin -c "$CONF" user create --uid restorefs-admin --display-name "RestoreFs test admin" \
    --access-key "$ADMIN_ACCESS" --secret-key "$ADMIN_SECRET" >/dev/null 2>>"$DIR/log/mkfs.out" &
  local admin_pid=$!
  radosgw-admin -c "$CONF" user create --uid restorefs-readonly --display-name "RestoreFs test read-only" \
    --op-mask read --max-buckets -1 \
    --access-key "$RO_ACCESS" --secret-key "$RO_SECRET" >/dev/null 2>>"$DIR/log/mkfs.out" ||
    die "radosgw-admin user create restorefs-readonly failed (see $DIR/log/mkfs.out)"
  wait "$admin_pid" || die "radosgw-admin user create restorefs-admin failed (see $DIR/log/mkfs.out)"
}

do_start() {
  command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null && command -v radosgw >/dev/null &&
    command -v ceph >/dev/null || die "ceph is not installed (ceph-mon ceph-osd radosgw ceph-common; run scripts/install-deps.sh)"
  local t0=$SECONDS
  if alive mon && alive osd && alive rgw; then
    :
  elif alive mon && alive osd && [ -s "$DIR/ready" ]; then
    start_rgw
  else
    stop_one rgw; stop_one osd; stop_one mon
    rm -f "$DIR/ready"
    # A start that fails half-way leaves nothing running.
    trap 'stop_one rgw; stop_one osd; stop_one mon' EXIT
    fresh_cluster
    trap - EXIT
    date -u +%FT%TZ >"$DIR/ready"
  fi
  read_ports
  echo "ceph-rgw: S3 on http://127.0.0.1:$RGW_PORT and https://127.0.0.1:$TLS_PORT (mon $MON_V2/$MON_V1, data in $DIR, $((SECONDS - t0)) s)" >&2
  print_env both
}

# S3 request signed with the admin's keys (curl's SigV4; RGW wants the payload hash header).
admin_curl() { # METHOD PATH [BODY-FILE]
  local method=$1 path=$2 body=${3:-/dev/null} hash
  hash=$(sha256sum <"$body" | cut -d' ' -f1)
  curl -sS --max-time 20 -o "$DIR/curl.out" -w '%{http_code}' --aws-sigv4 "aws:amz:$REGION:s3" \
    --user "$ADMIN_ACCESS:$ADMIN_SECRET" -X "$method" -H "x-amz-content-sha256: $hash" \
    --data-binary "@$body" "http://127.0.0.1:$RGW_PORT$path"
}

do_bucket() { # NAME
  local name=$1 code
  [[ $name =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] || die "not a bucket name: '$name'"
  read_ports
  ensure_keys
  status >/dev/null || die "the cluster in $DIR is not running"
  code=$(admin_curl PUT "/$name" /dev/null)
  case $code in
    200 | 409) ;;
    *) die "creating bucket $name answered HTTP $code: $(cat "$DIR/curl.out")" ;;
  esac
  cat >"$DIR/policy.json" <<EOP
{"Version":"2012-10-17","Statement":[{"Sid":"restorefs-readonly","Effect":"Allow",
"Principal":{"AWS":["arn:aws:iam:::user/restorefs-readonly"]},
"Action":["s3:GetObject","s3:ListBucket"],
"Resource":["arn:aws:s3:::$name","arn:aws:s3:::$name/*"]}]}
EOP
  code=$(admin_curl PUT "/$name?policy=" "$DIR/policy.json")
  [ "$code" = 204 ] || [ "$code" = 200 ] || die "setting the policy of bucket $name answered HTTP $code: $(cat "$DIR/curl.out")"
  echo "ceph-rgw: bucket $name (read-only user: GetObject, ListBucket)" >&2
}

status() { alive mon && alive osd && alive rgw; }

case $cmd in
  start | stop | stop-rgw)
    exec 9>"$DIR/.lock"
    flock -w 120 9 || die "another ceph-rgw.sh holds $DIR/.lock"
    case $cmd in
      start) do_start ;;
      stop) stop_one rgw; stop_one osd; stop_one mon; rm -f "$DIR/ready" ;;
      stop-rgw) stop_one rgw ;;
    esac
    ;;
  env) print_env "${3:-both}" ;;
  bucket)
    [ $# -ge 3 ] || usage
    shift 2
    for b in "$@"; do do_bucket "$b"; done
    ;;
  status) status ;;
  *) usage ;;
esac
