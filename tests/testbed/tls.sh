#!/usr/bin/env bash
# x509 certificates for libvirt's TLS migration transport (VIR_MIGRATE_TLS) on a test-bed
# host: one CA for the test bed, and for the host a server certificate naming its address
# (the destination's QEMU presents it; the source checks it against the migration URI's
# host) and a client certificate (the source's QEMU presents it; migrate_tls_x509_verify).
#   tls.sh enable NAME   write the certificates, point the host's qemu.conf at them
#                        (migrate_tls_x509_cert_dir), take migrations only over TLS
#                        (migrate_tls_force) and restart its libvirtd
set -euo pipefail
. "$(dirname "$0")/common.sh"

ca() {
  local c=$STATE/tls-ca
  mkdir -p "$c"
  # Made once and kept with the test bed's cache; made again a day before it would expire.
  if ! openssl x509 -checkend 86400 -noout -in "$c/ca-cert.pem" >/dev/null 2>&1; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=memscale test bed CA" \
      -keyout "$c/ca-key.pem" -out "$c/ca-cert.pem" 2>/dev/null
  fi
  echo "$c"
}

# cert CA DIR NAME SAN EXT: a key and a certificate signed by the CA.
cert() {
  local c=$1 dir=$2 name=$3 san=$4 usage=$5
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$san" \
    -keyout "$dir/$name-key.pem" -out "$dir/$name.csr" 2>/dev/null
  printf 'subjectAltName=IP:%s\nextendedKeyUsage=%s\nkeyUsage=digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n' \
    "$san" "$usage" > "$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$c/ca-cert.pem" -CAkey "$c/ca-key.pem" \
    -CAcreateserial -days 30 -extfile "$dir/$name.ext" -out "$dir/$name-cert.pem" 2>/dev/null
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}

enable() {
  local name=$1 d=$HOSTS/$1 c ip
  [[ -f $d/index ]] || die "no host $name (host.sh up first)"
  ip=$(host_ip "$name")
  c=$(ca)
  mkdir -p "$d/tls"
  cp "$c/ca-cert.pem" "$d/tls/ca-cert.pem"
  cert "$c" "$d/tls" server "$ip" serverAuth
  cert "$c" "$d/tls" client "$ip" clientAuth
  if ! grep -q '^migrate_tls_x509_cert_dir' "$d/etc/qemu.conf"; then
    echo "migrate_tls_x509_cert_dir = \"$d/tls\"" >> "$d/etc/qemu.conf"
    echo "migrate_tls_force = 1" >> "$d/etc/qemu.conf"
  fi
  "$HERE/host.sh" kill-libvirtd "$name"
  # The pid file of the killed daemon would stop the new one.
  for _ in $(seq 1 50); do
    kill -0 "$(cat "$d/run/libvirtd.pid" 2>/dev/null)" 2>/dev/null || break
    sleep 0.1
  done
  "$HERE/host.sh" start-libvirtd "$name"
}

case ${1:-} in
  enable) [[ $# -eq 2 ]] || die "usage: tls.sh enable NAME"; enable "$2" ;;
  *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' ;;
esac
