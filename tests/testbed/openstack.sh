#!/usr/bin/env bash
# A real Keystone, Placement and nova-api (OpenStack Zed, Debian 12 packages) on loopback, for
# the tests that speak OpenStack. One per machine: a private MariaDB on a unix socket (sqlite
# leaves keystone's database locked: a connection freed in another thread cannot roll back), one
# uwsgi worker each, no
# RabbitMQ (nova-api starts without it; only RPC casts would need it), no nova-compute.
#   openstack.sh up     bring it up (the first time: databases, keys, bootstrap, users, about a
#                       minute; afterwards from the cached state in seconds); idempotent
#   openstack.sh down   stop the three services (the state stays, for a fast next `up`)
#   openstack.sh reset  stop and forget the state (the next `up` starts from nothing)
#   openstack.sh env    shell lines: OS_* for the admin, and the URLs, ports and ids the tests use
#   openstack.sh status whether each service answers
# The packages: tests/testbed/install.sh --openstack. The recipe is written up in docs/testbed.md.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OSDIR=${MEMSCALE_OPENSTACK_DIR:-/var/tmp/memscale-openstack}
# Loopback ports away from the usual ones (5000, 8774, 8778), so a real OpenStack elsewhere on
# the machine is left alone; the test bed's namespaces (10.77.0.0/24) never see them.
KS_PORT=${MEMSCALE_KEYSTONE_PORT:-15000}
PL_PORT=${MEMSCALE_PLACEMENT_PORT:-18778}
NV_PORT=${MEMSCALE_NOVA_PORT:-18774}
ADDR=127.0.0.1
KS_URL=http://$ADDR:$KS_PORT/v3
PL_URL=http://$ADDR:$PL_PORT
NV_URL=http://$ADDR:$NV_PORT/v2.1
PASS=testbed-secret   # every user's password: a private test bed on loopback
SERVICES=(keystone placement nova)

die() { echo "openstack: $*" >&2; exit 1; }
log() { echo "openstack: $*" >&2; }

need_packages() {
  local p
  for p in keystone placement-api nova-api uwsgi-core uwsgi-plugin-python3 mariadb-server python3-pymysql python3-openstackclient; do
    dpkg -s "$p" >/dev/null 2>&1 || die "package $p is missing: run tests/testbed/install.sh --openstack"
  done
}

port_of() { case $1 in keystone) echo "$KS_PORT" ;; placement) echo "$PL_PORT" ;; nova) echo "$NV_PORT" ;; esac; }
wsgi_of() { case $1 in keystone) echo /usr/bin/keystone-wsgi-public ;; placement) echo /usr/bin/placement-api ;; nova) echo /usr/bin/nova-api-wsgi ;; esac; }
# Each service reads its own config directory, named through the variable its WSGI app knows.
envvar_of() { case $1 in keystone) echo OS_KEYSTONE_CONFIG_DIR ;; placement) echo OS_PLACEMENT_CONFIG_DIR ;; nova) echo OS_NOVA_CONFIG_DIR ;; esac; }

SOCK_DB() { echo "$OSDIR/run/mysqld.sock"; }
db_url() { echo "mysql+pymysql://os:$PASS@localhost/$1?unix_socket=$(SOCK_DB)&charset=utf8"; }
sql() { mariadb --no-defaults -S "$(SOCK_DB)" -u root "$@"; }

# MariaDB of its own: its own data directory and socket, no TCP, no fsync per commit.
start_db() {
  local pidf=$OSDIR/run/mysqld.pid i
  if [[ -s $pidf ]] && kill -0 "$(cat "$pidf")" 2>/dev/null; then return 0; fi
  mkdir -p "$OSDIR/run" "$OSDIR/log"
  if [[ ! -d $OSDIR/mysql/mysql ]]; then
    mariadb-install-db --no-defaults --datadir="$OSDIR/mysql" --user=root \
      --auth-root-authentication-method=normal --skip-test-db >"$OSDIR/log/mysql-install.log" 2>&1 ||
      die "mariadb-install-db failed: see $OSDIR/log/mysql-install.log"
  fi
  setsid mariadbd --no-defaults --datadir="$OSDIR/mysql" --socket="$(SOCK_DB)" --skip-networking \
    --user=root --pid-file="$pidf" --log-error="$OSDIR/log/mysqld.log" \
    --innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=0 --max-connections=200 \
    </dev/null >/dev/null 2>&1 9>&- &
  for ((i = 0; i < 300; i++)); do
    sql -e 'select 1' >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -20 "$OSDIR/log/mysqld.log" >&2 || true
  die "MariaDB did not start: see $OSDIR/log/mysqld.log"
}

write_configs() {
  mkdir -p "$OSDIR"/{keystone,placement,nova,run,log,fernet-keys,credential-keys}
  chmod 700 "$OSDIR/fernet-keys" "$OSDIR/credential-keys"
  cat > "$OSDIR/keystone/keystone.conf" <<EOF
[DEFAULT]
log_file = $OSDIR/log/keystone.log
[database]
connection = $(db_url keystone)
[fernet_tokens]
key_repository = $OSDIR/fernet-keys
[credential]
key_repository = $OSDIR/credential-keys
[token]
expiration = 86400
EOF
  local authtoken
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
  cat > "$OSDIR/placement/placement.conf" <<EOF
[DEFAULT]
log_file = $OSDIR/log/placement.log
[placement_database]
connection = $(db_url placement)
[api]
auth_strategy = keystone
$(authtoken placement)
EOF
  cat > "$OSDIR/nova/nova.conf" <<EOF
[DEFAULT]
log_file = $OSDIR/log/nova-api.log
# No RabbitMQ: nothing here casts to a conductor or a compute service.
transport_url = rabbit://guest:guest@$ADDR:1/
my_ip = $ADDR
state_path = $OSDIR/nova
[api]
auth_strategy = keystone
[api_database]
connection = $(db_url nova_api)
[database]
connection = $(db_url nova_cell0)
[oslo_concurrency]
lock_path = $OSDIR/nova/lock
[wsgi]
api_paste_config = /etc/nova/api-paste.ini
[placement]
auth_type = password
auth_url = $KS_URL
project_domain_name = Default
user_domain_name = Default
project_name = service
username = placement
password = $PASS
region_name = RegionOne
[glance]
api_servers = http://$ADDR:1
[neutron]
auth_type = none
[cinder]
os_region_name = RegionOne
$(authtoken nova)
EOF
  cp /etc/nova/api-paste.ini "$OSDIR/nova/" 2>/dev/null || true
}

answers() {
  case $1 in
    keystone) curl -fsS -m 5 -o /dev/null "$KS_URL" ;;
    placement) curl -fsS -m 5 -o /dev/null "$PL_URL/" ;;
    # nova's root answers without a token
    nova) curl -fsS -m 5 -o /dev/null "http://$ADDR:$NV_PORT/" ;;
  esac
}

start_one() {
  local s=$1 pidf=$OSDIR/run/$1.pid
  if [[ -s $pidf ]] && kill -0 "$(cat "$pidf")" 2>/dev/null; then return 0; fi
  # `Connection: close`: uwsgi's plain HTTP socket closes every connection after its answer
  # without saying so, and a client that sends its next request on it (the openstack client,
  # keystoneauth in every service) now and then gets "Connection reset by peer".
  # tests/testbed/nova-compute.sh layers a compute cloud on this one: its nova-api settings
  # (RabbitMQ, Glance, Neutron) are in nova/extra.conf, read after nova.conf.
  local files=()
  [[ $s == nova && -f $OSDIR/nova/extra.conf ]] && files=("OS_NOVA_CONFIG_FILES=api-paste.ini;nova.conf;extra.conf")
  env "$(envvar_of "$s")=$OSDIR/$s" "${files[@]}" uwsgi --plugin python3 --master --processes 1 --threads 4 \
    --http-socket "$ADDR:$(port_of "$s")" --wsgi-file "$(wsgi_of "$s")" \
    --die-on-term --lazy-apps --need-app --enable-threads --no-orphans --buffer-size 65535 \
    --add-header "Connection: close" \
    --pidfile "$pidf" --daemonize "$OSDIR/log/$s-uwsgi.log" >/dev/null 2>&1 9>&- ||
    die "uwsgi for $s did not start: see $OSDIR/log/$s-uwsgi.log"
}

wait_up() {
  local s=$1 i
  for ((i = 0; i < 600; i++)); do
    answers "$s" && return 0
    local pidf=$OSDIR/run/$s.pid
    if ((i > 20)) && { [[ ! -s $pidf ]] || ! kill -0 "$(cat "$pidf")" 2>/dev/null; }; then
      tail -20 "$OSDIR/log/$s-uwsgi.log" >&2 || true
      die "$s exited while starting: see $OSDIR/log/$s-uwsgi.log and $OSDIR/log/$s*.log"
    fi
    sleep 0.2
  done
  tail -20 "$OSDIR/log/$s-uwsgi.log" >&2 || true
  die "$s does not answer on port $(port_of "$s") after 120 s: see $OSDIR/log/"
}

stop_all() {
  local s pidf pid i
  for s in "${SERVICES[@]}"; do
    pidf=$OSDIR/run/$s.pid
    [[ -s $pidf ]] || continue
    pid=$(cat "$pidf")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidf"
  done
  pidf=$OSDIR/run/mysqld.pid
  if [[ -s $pidf ]] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
    pid=$(cat "$pidf")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
}

admin_env() {
  export OS_AUTH_URL=$KS_URL OS_IDENTITY_API_VERSION=3 OS_USERNAME=admin OS_PASSWORD=$PASS \
    OS_PROJECT_NAME=admin OS_USER_DOMAIN_NAME=Default OS_PROJECT_DOMAIN_NAME=Default \
    OS_REGION_NAME=RegionOne OS_INTERFACE=public
}

# The first bring-up: databases, keys, Keystone's bootstrap (admin, the catalog's identity
# service), the service users, the two tenant projects, the compute and placement endpoints.
bootstrap() {
  local t0=$SECONDS
  log "first bring-up in $OSDIR (databases, keys, users)"
  start_db
  sql <<EOF
CREATE DATABASE IF NOT EXISTS keystone; CREATE DATABASE IF NOT EXISTS placement;
CREATE DATABASE IF NOT EXISTS nova_api; CREATE DATABASE IF NOT EXISTS nova_cell0;
CREATE USER IF NOT EXISTS 'os'@'localhost' IDENTIFIED BY '$PASS';
GRANT ALL ON *.* TO 'os'@'localhost';
EOF
  local KM=(keystone-manage --config-dir "$OSDIR/keystone")
  "${KM[@]}" db_sync
  "${KM[@]}" fernet_setup --keystone-user root --keystone-group root
  "${KM[@]}" credential_setup --keystone-user root --keystone-group root
  "${KM[@]}" bootstrap --bootstrap-password "$PASS" --bootstrap-admin-url "$KS_URL" \
    --bootstrap-internal-url "$KS_URL" --bootstrap-public-url "$KS_URL" --bootstrap-region-id RegionOne
  placement-manage --config-dir "$OSDIR/placement" db sync
  local NM=(nova-manage --config-dir "$OSDIR/nova")
  "${NM[@]}" api_db sync
  "${NM[@]}" cell_v2 map_cell0 --database_connection "$(db_url nova_cell0)"
  "${NM[@]}" db sync
  start_one keystone
  wait_up keystone
  # Users, projects, roles and the catalog through Keystone's REST API (the packaged
  # openstack client's interactive mode fails on `role add` here, and each of its runs costs a
  # second or more); each step looks before it creates, so a half-done bootstrap can be re-run.
  KS_URL=$KS_URL PASS=$PASS NV_URL=$NV_URL PL_URL=$PL_URL OSDIR=$OSDIR python3 - <<'EOF'
import json, os, urllib.request, urllib.error
ks, pw = os.environ["KS_URL"], os.environ["PASS"]
def call(method, path, body=None, token=None, expect=(200, 201, 204)):
    req = urllib.request.Request(ks + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **({"X-Auth-Token": token} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            data = r.read()
            return r.status, r.headers, (json.loads(data) if data else None)
    except urllib.error.HTTPError as e:
        raise SystemExit(f"openstack: {method} {ks}{path}: HTTP {e.code}: {e.read()[:300]!r}")
_, h, _ = call("POST", "/auth/tokens", {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"id": "default"}, "password": pw}}}, "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
tok = h["X-Subject-Token"]
def ensure(kind, name, body, query=None):
    _, _, v = call("GET", f"/{kind}?" + (query or f"name={name}"), token=tok)
    if v[kind]:
        return v[kind][0]["id"]
    _, _, v = call("POST", f"/{kind}", {kind[:-1]: body}, token=tok)
    return v[kind[:-1]]["id"]
roles = {n: ensure("roles", n, {"name": n}) for n in ("admin", "member", "reader")}
proj = {n: ensure("projects", n, {"name": n, "domain_id": "default"}) for n in ("service", "demo", "other")}
for user, project, role in [("nova", "service", "admin"), ("placement", "service", "admin"),
                            ("memscale", "service", "admin"), ("demo", "demo", "member"),
                            ("other", "other", "member")]:
    uid = ensure("users", user, {"name": user, "domain_id": "default", "password": pw})
    call("PUT", f"/projects/{proj[project]}/users/{uid}/roles/{roles[role]}", token=tok)
for name, kind, url in [("nova", "compute", os.environ["NV_URL"]), ("placement", "placement", os.environ["PL_URL"])]:
    sid = ensure("services", name, {"name": name, "type": kind}, query=f"type={kind}")
    for iface in ("public", "internal", "admin"):
        ensure("endpoints", None, {"service_id": sid, "interface": iface, "url": url, "region_id": "RegionOne"},
               query=f"service_id={sid}&interface={iface}")
for n in ("demo", "other"):
    open(os.path.join(os.environ["OSDIR"], n + ".id"), "w").write(proj[n] + "\n")
EOF
  touch "$OSDIR/bootstrapped"
  log "bootstrapped in $((SECONDS - t0)) s"
}

up() {
  mkdir -p "$OSDIR"
  exec 9>"$OSDIR/.lock"
  # (the services it starts must not inherit this descriptor: they would hold the lock)
  flock 9
  # The packages first, under the lock: scripts/test.sh starts this in the background on a
  # fresh machine (minutes of downloads), and a test's own `up` waits here until it is done.
  if ! need_packages 2>/dev/null; then
    log "installing the OpenStack packages"
    "$(dirname "${BASH_SOURCE[0]}")/install.sh" --openstack >&2
  fi
  need_packages
  local t0=$SECONDS sum
  # The state is reused while the recipe (this script) and the packages are what made it.
  sum=$( (cat "${BASH_SOURCE[0]}"; dpkg-query -W keystone placement-api nova-api) | sha256sum | cut -c1-16)
  if [[ ! -e $OSDIR/bootstrapped || $(cat "$OSDIR/recipe.sum" 2>/dev/null) != "$sum" ]]; then
    stop_all
    rm -rf "$OSDIR"/{keystone,placement,nova,fernet-keys,credential-keys,mysql,bootstrapped}
    write_configs
    bootstrap
    echo "$sum" > "$OSDIR/recipe.sum"
  fi
  start_db
  local s
  for s in "${SERVICES[@]}"; do start_one "$s"; done
  for s in "${SERVICES[@]}"; do wait_up "$s"; done
  log "keystone $KS_URL, placement $PL_URL, nova $NV_URL up ($((SECONDS - t0)) s)"
}

print_env() {
  cat <<EOF
export OS_AUTH_URL=$KS_URL OS_IDENTITY_API_VERSION=3 OS_USERNAME=admin OS_PASSWORD=$PASS OS_PROJECT_NAME=admin OS_USER_DOMAIN_NAME=Default OS_PROJECT_DOMAIN_NAME=Default OS_REGION_NAME=RegionOne OS_INTERFACE=public
export MEMSCALE_OS_KEYSTONE=$KS_URL MEMSCALE_OS_PLACEMENT=$PL_URL MEMSCALE_OS_NOVA=$NV_URL MEMSCALE_OS_PASSWORD=$PASS
export MEMSCALE_OS_DEMO_PROJECT=$(cat "$OSDIR/demo.id" 2>/dev/null) MEMSCALE_OS_OTHER_PROJECT=$(cat "$OSDIR/other.id" 2>/dev/null)
EOF
}

case ${1:-} in
  up) up ;;
  down) stop_all ;;
  reset) stop_all; rm -rf "$OSDIR" ;;
  env) print_env ;;
  status)
    rc=0
    for s in "${SERVICES[@]}"; do
      if answers "$s"; then echo "$s: up on $ADDR:$(port_of "$s")"; else echo "$s: down"; rc=1; fi
    done
    exit $rc
    ;;
  *) echo "usage: openstack.sh up|down|reset|env|status" >&2; exit 2 ;;
esac
