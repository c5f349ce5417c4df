#!/usr/bin/env bash
# A compute cloud on the test bed, layered on openstack.sh's Keystone, Placement and nova-api
# (OpenStack Zed, Debian 12 packages): a private RabbitMQ, nova-conductor, nova-scheduler,
# glance-api (file store), a neutron-server without agents (Nova asks Neutron's API when it
# boots and live-migrates, even an instance with no ports) and one nova-compute (libvirt
# driver, virt_type qemu) per test-bed host, each speaking to that host's private libvirtd
# over TCP. Every service is a plain process of this machine; the guests run in the hosts.
#   nova-compute.sh up     bring it up (openstack.sh up first); idempotent, cached state
#   nova-compute.sh down   stop this layer's services and its hosts' guests (openstack.sh's
#                          services and the state stay)
#   nova-compute.sh env    shell lines: openstack.sh env, plus the compute hosts
#   nova-compute.sh status the services, Nova's compute services and hypervisors
# Settings (environment): MEMSCALE_OPENSTACK_DIR and the ports of openstack.sh, plus
# MEMSCALE_GLANCE_PORT (19292), MEMSCALE_NEUTRON_PORT (19696), MEMSCALE_RABBIT_PORT (15673),
# MEMSCALE_COMPUTE_HOSTS ("nc1:195 nc2:196": test-bed host NAME:INDEX pairs, one nova-compute
# each, Nova's host name = NAME). The packages: tests/testbed/install.sh --openstack-compute.
# The recipe and what it shows: docs/testbed.md.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OSDIR=${MEMSCALE_OPENSTACK_DIR:-/var/tmp/memscale-openstack}
KS_PORT=${MEMSCALE_KEYSTONE_PORT:-15000}
PL_PORT=${MEMSCALE_PLACEMENT_PORT:-18778}
NV_PORT=${MEMSCALE_NOVA_PORT:-18774}
GL_PORT=${MEMSCALE_GLANCE_PORT:-19292}
NE_PORT=${MEMSCALE_NEUTRON_PORT:-19696}
MQ_PORT=${MEMSCALE_RABBIT_PORT:-15673}
read -r -a COMPUTES <<<"${MEMSCALE_COMPUTE_HOSTS:-nc1:195 nc2:196}"
ADDR=127.0.0.1
KS_URL=http://$ADDR:$KS_PORT/v3
GL_URL=http://$ADDR:$GL_PORT
NE_URL=http://$ADDR:$NE_PORT
PASS=testbed-secret
CD=$OSDIR/cloud                     # this layer's state
MQ_NODE=memscale$MQ_PORT@localhost  # the RabbitMQ node, named by its port: one per OpenStack
MQ_URL=rabbit://nova:$PASS@$ADDR:$MQ_PORT/
SOCK_DB=$OSDIR/run/mysqld.sock
# Each compute's instances (disks, kernels, console logs) at one path, /var/lib/libvirt/
# nova-instances, that is a different directory on each host: the host's private
# /var/lib/libvirt (host.sh), seen by its libvirtd and by its nova-compute, which runs in the
# host's mount namespace (in the machine's network namespace, for Keystone and RabbitMQ on
# loopback). Nova keeps a disk's path when it moves an instance, so the path must be the same
# on every host. Tried first: one shared directory (Nova takes it for shared storage and asks
# for a plain live migration, which libvirt refuses: "Migration without shared storage is
# unsafe": a local ext4 is not shared storage to it, and Nova never passes
# VIR_MIGRATE_UNSAFE); then a directory per compute at different paths (Nova block-migrates,
# but the destination's QEMU opens the source's path: "Block node is read-only").
TB_HOSTS=${MEMSCALE_TESTBED_DIR:-/var/tmp/memscale-testbed}/hosts
INSTANCES_PATH=/var/lib/libvirt/nova-instances
instances_of() { echo "$TB_HOSTS/$1/lib/nova-instances"; }   # as this machine sees it

die() { echo "nova-compute: $*" >&2; exit 1; }
log() { echo "nova-compute: $*" >&2; }
db_url() { echo "mysql+pymysql://os:$PASS@localhost/$1?unix_socket=$SOCK_DB&charset=utf8"; }
sql() { mariadb --no-defaults -S "$SOCK_DB" -u root "$@"; }
host_ip() { echo "10.77.0.$((10 + $1))"; }

need_packages() {
  local p
  for p in rabbitmq-server nova-conductor nova-scheduler nova-compute glance-api neutron-server; do
    dpkg -s "$p" >/dev/null 2>&1 || return 1
  done
}

alive() { local f=$CD/run/$1.pid; [[ -s $f ]] && kill -0 "$(cat "$f")" 2>/dev/null; }

# One service as a plain process of its own session, its PID in run/NAME.pid.
start_proc() {
  local name=$1; shift
  alive "$name" && return 0
  # (not holding the lock of `up`, fd 8: a service that did would keep the next `up` waiting)
  setsid "$@" </dev/null >>"$CD/log/$name.out" 2>&1 8>&- 9>&- &
  echo $! > "$CD/run/$name.pid"
}

stop_proc() {
  local f=$CD/run/$1.pid pid i
  [[ -s $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    # The whole session: eventlet services fork workers, privsep daemons, qemu-img.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

wait_for() { # WHAT SECS CMD...: until CMD succeeds
  local what=$1 secs=$2 i; shift 2
  for ((i = 0; i < secs * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what not ready after $secs s: see $CD/log/"
}

# RabbitMQ of its own: its own node name, port, data and cookie; loopback only.
mq_env() {
  MQ_ENV=(env HOME="$CD/rabbit" RABBITMQ_NODENAME="$MQ_NODE" RABBITMQ_NODE_IP_ADDRESS=$ADDR
    RABBITMQ_NODE_PORT="$MQ_PORT" RABBITMQ_DIST_PORT=$((MQ_PORT + 20000))
    RABBITMQ_MNESIA_BASE="$CD/rabbit/mnesia" RABBITMQ_LOG_BASE="$CD/log/rabbit"
    RABBITMQ_PID_FILE="$CD/rabbit/pid" RABBITMQ_CONF_ENV_FILE="$CD/rabbit/env.conf"
    RABBITMQ_CONFIG_FILE="$CD/rabbit/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$CD/rabbit/plugins"
    RABBITMQ_ADVANCED_CONFIG_FILE="$CD/rabbit/advanced.config")
}
mq_env
mqctl() { "${MQ_ENV[@]}" /usr/lib/rabbitmq/bin/rabbitmqctl -n "$MQ_NODE" "$@"; }

start_rabbit() {
  mkdir -p "$CD/rabbit" "$CD/log/rabbit"
  : > "$CD/rabbit/env.conf"
  echo '[].' > "$CD/rabbit/plugins"
  : > "$CD/rabbit/rabbitmq.conf"
  if ! alive rabbit; then
    start_proc rabbit "${MQ_ENV[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server
  fi
  wait_for "RabbitMQ ($MQ_NODE)" 120 mqctl await_startup --timeout 5
  if ! mqctl list_users 2>/dev/null | grep -q '^nova'; then
    mqctl add_user nova "$PASS" >/dev/null
    mqctl set_permissions -p / nova '.*' '.*' '.*' >/dev/null
  fi
}

# Keystone: the glance and neutron users, the image and network services in the catalog.
keystone_setup() {
  KS_URL=$KS_URL PASS=$PASS GL_URL=$GL_URL NE_URL=$NE_URL python3 - <<'EOF'
import json, os, urllib.request, urllib.error
ks, pw = os.environ["KS_URL"], os.environ["PASS"]
def call(method, path, body=None, token=None):
    req = urllib.request.Request(ks + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **({"X-Auth-Token": token} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            data = r.read()
            return r.headers, (json.loads(data) if data else None)
    except urllib.error.HTTPError as e:
        raise SystemExit(f"nova-compute: {method} {ks}{path}: HTTP {e.code}: {e.read()[:300]!r}")
h, _ = call("POST", "/auth/tokens", {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"id": "default"}, "password": pw}}}, "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
tok = h["X-Subject-Token"]
def ensure(kind, body, query):
    _, v = call("GET", f"/{kind}?{query}", token=tok)
    if v[kind]:
        return v[kind][0]["id"]
    _, v = call("POST", f"/{kind}", {kind[:-1]: body}, token=tok)
    return v[kind[:-1]]["id"]
admin = ensure("roles", {"name": "admin"}, "name=admin")
# Nova 26.2 (the OSSA-2023-003 fix) sends its own token as X-Service-Token to Neutron, Glance
# and Placement, whose keystonemiddleware accepts it only with the `service` role.
role_service = ensure("roles", {"name": "service"}, "name=service")
service = ensure("projects", {"name": "service", "domain_id": "default"}, "name=service")
for user in ("glance", "neutron", "nova", "placement"):
    uid = ensure("users", {"name": user, "domain_id": "default", "password": pw}, f"name={user}")
    call("PUT", f"/projects/{service}/users/{uid}/roles/{admin}", token=tok)
    call("PUT", f"/projects/{service}/users/{uid}/roles/{role_service}", token=tok)
for name, kind, url in [("glance", "image", os.environ["GL_URL"]), ("neutron", "network", os.environ["NE_URL"])]:
    sid = ensure("services", {"name": name, "type": kind}, f"type={kind}")
    for iface in ("public", "internal", "admin"):
        ensure("endpoints", {"service_id": sid, "interface": iface, "url": url, "region_id": "RegionOne"},
               f"service_id={sid}&interface={iface}")
EOF
}

authtoken() {
  cat <<EOF
[keystone_authtoken]
www_authenticate_uri = $KS_URL
auth_url = $KS_URL
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = $1
password = $PASS
service_token_roles_required = true
EOF
}

service_auth() { # SECTION USER: a password-auth section for a client of another service
  cat <<EOF
[$1]
auth_type = password
auth_url = $KS_URL
project_domain_name = Default
user_domain_name = Default
project_name = service
username = $2
password = $PASS
region_name = RegionOne
EOF
}

write_configs() {
  mkdir -p "$CD"/{glance/images,neutron,nova,run,log}
  cat > "$CD/glance/glance-api.conf" <<EOF
[DEFAULT]
bind_host = $ADDR
bind_port = $GL_PORT
workers = 1
log_file = $CD/log/glance-api.log
enabled_backends = file:file
[database]
connection = $(db_url glance)
[glance_store]
default_backend = file
[file]
filesystem_store_datadir = $CD/glance/images
[os_glance_tasks_store]
filesystem_store_datadir = $CD/glance/tasks
[os_glance_staging_store]
filesystem_store_datadir = $CD/glance/staging
[paste_deploy]
flavor = keystone
config_file = /etc/glance/glance-api-paste.ini
$(authtoken glance)
[oslo_concurrency]
lock_path = $CD/glance/lock
EOF
  cat > "$CD/neutron/neutron.conf" <<EOF
[DEFAULT]
bind_host = $ADDR
bind_port = $NE_PORT
core_plugin = ml2
# ML2 without these refers to a Port relationship they define (Port.port_forwardings): a
# 500 on every port listing.
service_plugins = router,port_forwarding
auth_strategy = keystone
transport_url = $MQ_URL
api_workers = 1
rpc_workers = 0
rpc_state_report_workers = 0
log_file = $CD/log/neutron-server.log
state_path = $CD/neutron
api_paste_config = /etc/neutron/api-paste.ini
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
[database]
connection = $(db_url neutron)
[oslo_concurrency]
lock_path = $CD/neutron/lock
$(authtoken neutron)
EOF
  cat > "$CD/neutron/ml2_conf.ini" <<EOF
[ml2]
type_drivers = flat
tenant_network_types =
mechanism_drivers =
extension_drivers = port_security
EOF
  # nova-api's additions to openstack.sh's nova.conf (read after it: openstack.sh start_one).
  local nova_clients
  nova_clients=$(
    cat <<EOF
[glance]
api_servers = $GL_URL
$(service_auth neutron neutron | sed '1a endpoint_override = '"$NE_URL")
EOF
  )
  cat > "$CD/nova-api-extra.conf" <<EOF
[DEFAULT]
transport_url = $MQ_URL
$nova_clients
EOF
  # conductor, scheduler and computes: cell1's database, the same API database as nova-api.
  cat > "$CD/nova/nova.conf" <<EOF
[DEFAULT]
transport_url = $MQ_URL
state_path = $CD/nova
compute_driver = libvirt.LibvirtDriver
log_dir = $CD/log
use_rootwrap_daemon = false
# no console, no networking of our own; the host of each compute is in compute-NAME.conf
pointer_model = ps2mouse
[conductor]
workers = 1
[scheduler]
workers = 1
discover_hosts_in_cells_interval = -1
[oslo_concurrency]
lock_path = $CD/nova/lock
[vnc]
enabled = false
[spice]
enabled = false
[libvirt]
virt_type = qemu
cpu_mode = none
mem_stats_period_seconds = 2
live_migration_scheme = tcp
live_migration_timeout_action = abort
[nova_sys_admin]
helper_command = privsep-helper --config-file $CD/nova/nova.conf
[privsep_osbrick]
helper_command = privsep-helper --config-file $CD/nova/nova.conf
$nova_clients
$(service_auth placement placement)
$(authtoken nova)
[service_user]
send_service_user_token = false
EOF
  # The databases, for the conductor, the scheduler and nova-manage only (a compute that has
  # them logs an error each time it would have used them).
  cat > "$CD/nova/db.conf" <<EOF
[api_database]
connection = $(db_url nova_api)
[database]
connection = $(db_url nova_cell1)
EOF
  local c name idx ip
  for c in "${COMPUTES[@]}"; do
    name=${c%%:*} idx=${c#*:} ip=$(host_ip "$idx")
    cat > "$CD/nova/compute-$name.conf" <<EOF
[DEFAULT]
host = $name
my_ip = $ip
instances_path = $INSTANCES_PATH
log_file = $CD/log/nova-compute-$name.log
[libvirt]
connection_uri = qemu+tcp://$ip/system
live_migration_inbound_addr = $ip
[oslo_concurrency]
lock_path = $CD/nova/lock-$name
EOF
  done
}

bootstrap() {
  local t0=$SECONDS
  log "first bring-up of the compute layer in $CD"
  sql <<EOF
DROP DATABASE IF EXISTS glance; DROP DATABASE IF EXISTS neutron; DROP DATABASE IF EXISTS nova_cell1;
CREATE DATABASE IF NOT EXISTS glance; CREATE DATABASE IF NOT EXISTS neutron;
CREATE DATABASE IF NOT EXISTS nova_cell1;
EOF
  keystone_setup
  glance-manage --config-file "$CD/glance/glance-api.conf" db_sync >"$CD/log/glance-db.log" 2>&1 ||
    die "glance-manage db_sync failed: see $CD/log/glance-db.log"
  neutron-db-manage --config-file "$CD/neutron/neutron.conf" --config-file "$CD/neutron/ml2_conf.ini" \
    upgrade heads >"$CD/log/neutron-db.log" 2>&1 || die "neutron-db-manage failed: see $CD/log/neutron-db.log"
  local NM=(nova-manage --config-file "$CD/nova/nova.conf" --config-file "$CD/nova/db.conf")
  if ! "${NM[@]}" cell_v2 list_cells 2>/dev/null | grep -q ' cell1 '; then
    "${NM[@]}" cell_v2 create_cell --name cell1 --transport-url "$MQ_URL" \
      --database_connection "$(db_url nova_cell1)" >"$CD/log/nova-cell.log" 2>&1 ||
      die "nova-manage cell_v2 create_cell failed: see $CD/log/nova-cell.log"
  fi
  "${NM[@]}" db sync >>"$CD/log/nova-cell.log" 2>&1 || die "nova-manage db sync failed: see $CD/log/nova-cell.log"
  touch "$CD/bootstrapped"
  log "compute layer bootstrapped in $((SECONDS - t0)) s"
}

answers_http() { curl -fsS -m 5 -o /dev/null "$1"; }
neutron_warm() {
  local t
  t=$(os_admin openstack token issue -f value -c id) || return 1
  curl -fsS -m 30 -o /dev/null -H "X-Auth-Token: $t" "$NE_URL/v2.0/networks"
}

os_admin() {
  env OS_AUTH_URL=$KS_URL OS_IDENTITY_API_VERSION=3 OS_USERNAME=admin OS_PASSWORD=$PASS \
    OS_PROJECT_NAME=admin OS_USER_DOMAIN_NAME=Default OS_PROJECT_DOMAIN_NAME=Default \
    OS_REGION_NAME=RegionOne OS_INTERFACE=public OS_COMPUTE_API_VERSION=2.53 "$@"
}

computes_up() { # every compute service reported up
  local out c
  out=$(os_admin openstack compute service list --service nova-compute -f value -c Host -c State)
  for c in "${COMPUTES[@]}"; do grep -q "^${c%%:*} up$" <<<"$out" || return 1; done
}

# What the state is made from: a change here rebuilds it; a change elsewhere in this script
# (starting, stopping, waiting) does not.
recipe() {
  declare -f write_configs keystone_setup bootstrap authtoken service_auth db_url start_rabbit
  echo "$ADDR $GL_PORT $NE_PORT $MQ_PORT ${COMPUTES[*]}"
  dpkg-query -W nova-compute glance-api neutron-server rabbitmq-server
}

# A test-bed host whose libvirtd runs (host.sh up would wait for the test bed's lock first).
host_alive() {
  local p
  p=$(cat "${MEMSCALE_TESTBED_DIR:-/var/tmp/memscale-testbed}/hosts/$1/run/libvirtd.pid" 2>/dev/null) &&
    kill -0 "$p" 2>/dev/null
}

up() {
  mkdir -p "$CD"
  exec 8>"$CD/.lock"
  flock 8
  if ! need_packages; then
    log "installing the compute packages"
    "$HERE/install.sh" --openstack-compute >&2
  fi
  need_packages || die "packages missing after tests/testbed/install.sh --openstack-compute"
  local t0=$SECONDS sum
  # Rebuilt when the recipe (the functions that write the state) or the packages change. Nova's API database, Placement and
  # Keystone then hold records of the old layer (cells, hosts, resource providers), so the
  # OpenStack under it is rebuilt as well (openstack.sh reset: about a minute more).
  sum=$(recipe | sha256sum | cut -c1-16)
  if [[ -e $CD/recipe.sum && $(cat "$CD/recipe.sum") != "$sum" ]]; then
    log "recipe changed: rebuilding the OpenStack in $OSDIR"
    down
    "$HERE/openstack.sh" reset 8>&-
    mkdir -p "$CD"
  fi
  "$HERE/openstack.sh" up 8>&-
  # openstack.sh rebuilds its state (databases included) when its own recipe changes.
  if [[ ! -e $CD/bootstrapped || $(cat "$CD/base.sum" 2>/dev/null) != $(cat "$OSDIR/recipe.sum") ]]; then
    down   # the hosts too: their guests were instances of the old databases
    rm -rf "$CD"/{glance,neutron,nova,rabbit,bootstrapped}
    write_configs
    start_rabbit
    bootstrap
    echo "$sum" > "$CD/recipe.sum"
    cp "$OSDIR/recipe.sum" "$CD/base.sum"
    # nova-api holds tokens issued before the roles bootstrap adds: restart it.
    rm -f "$OSDIR/nova/extra.conf"
  fi
  # nova-api must cast to the conductor through RabbitMQ: restart it when its extra settings
  # are new (openstack.sh reads them from nova/extra.conf at start).
  if ! cmp -s "$CD/nova-api-extra.conf" "$OSDIR/nova/extra.conf"; then
    cp "$CD/nova-api-extra.conf" "$OSDIR/nova/extra.conf"
    log "restarting openstack.sh's services for nova-api's RabbitMQ, Glance and Neutron settings"
    "$HERE/openstack.sh" down 8>&-
    "$HERE/openstack.sh" up 8>&-
  fi
  start_rabbit
  start_proc glance-api glance-api --config-file "$CD/glance/glance-api.conf"
  start_proc neutron-server neutron-server --config-file "$CD/neutron/neutron.conf" \
    --config-file "$CD/neutron/ml2_conf.ini"
  start_proc nova-conductor nova-conductor --config-file "$CD/nova/nova.conf" \
    --config-file "$CD/nova/db.conf" --log-file "$CD/log/nova-conductor.log"
  start_proc nova-scheduler nova-scheduler --config-file "$CD/nova/nova.conf" \
    --config-file "$CD/nova/db.conf" --log-file "$CD/log/nova-scheduler.log"
  local c name idx
  for c in "${COMPUTES[@]}"; do
    name=${c%%:*} idx=${c#*:}
    host_alive "$name" || "$HERE/host.sh" up "$name" "$idx" >/dev/null 8>&-
    mkdir -p "$(instances_of "$name")"
    start_proc "nova-compute-$name" nsenter -t "$(cat "$TB_HOSTS/$name/run/virtlogd.pid")" -m -- \
      nova-compute --config-file "$CD/nova/nova.conf" \
      --config-file "$CD/nova/compute-$name.conf"
  done
  wait_for "glance-api on $GL_URL" 120 answers_http "$GL_URL/"
  wait_for "neutron-server on $NE_URL" 180 answers_http "$NE_URL/"
  # Neutron's first query must not be a port listing: SQLAlchemy sets up the Port model's
  # relationships with the first query, and a port listing touches one before that (500).
  wait_for "neutron-server's network list" 60 neutron_warm
  wait_for "nova-compute services (${COMPUTES[*]})" 240 computes_up
  nova-manage --config-file "$CD/nova/nova.conf" --config-file "$CD/nova/db.conf" cell_v2 discover_hosts >/dev/null 2>&1 ||
    die "nova-manage cell_v2 discover_hosts failed"
  log "compute cloud up: computes ${COMPUTES[*]} ($((SECONDS - t0)) s)"
}

down_services() {
  local c s
  for c in "${COMPUTES[@]}"; do stop_proc "nova-compute-${c%%:*}"; done
  for s in nova-scheduler nova-conductor neutron-server glance-api; do stop_proc "$s"; done
  if alive rabbit; then mqctl stop >/dev/null 2>&1 || true; fi
  stop_proc rabbit
}

down() {
  [[ -d $CD ]] || return 0
  local c
  down_services
  for c in "${COMPUTES[@]}"; do "$HERE/host.sh" down "${c%%:*}"; done
}

print_env() {
  "$HERE/openstack.sh" env
  local c hosts=""
  for c in "${COMPUTES[@]}"; do hosts+="${c%%:*}=$(host_ip "${c#*:}") "; done
  # a compute's instances: ${MEMSCALE_OS_INSTANCES}NAME
  echo "export MEMSCALE_OS_GLANCE=$GL_URL MEMSCALE_OS_NEUTRON=$NE_URL MEMSCALE_OS_LOGS=$CD/log"
  echo "export MEMSCALE_OS_INSTANCES=$TB_HOSTS/ MEMSCALE_OS_INSTANCES_IN_HOST=lib/nova-instances"
  echo "export MEMSCALE_OS_COMPUTES='${hosts% }'"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  env) print_env ;;
  status)
    "$HERE/openstack.sh" status || true
    for s in rabbit glance-api neutron-server nova-conductor nova-scheduler; do
      if alive "$s"; then echo "$s: running"; else echo "$s: down"; fi
    done
    os_admin openstack compute service list
    os_admin openstack hypervisor list
    ;;
  *) echo "usage: nova-compute.sh up|down|env|status" >&2; exit 2 ;;
esac
