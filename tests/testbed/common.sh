# Shared settings of the test bed scripts (sourced, not run).
# State: cache/ holds the guest kernel and initramfs; hosts/NAME/ each private host's dirs.
STATE=${MEMSCALE_TESTBED_DIR:-/var/tmp/memscale-testbed}
CACHE=$STATE/cache
HOSTS=$STATE/hosts
# QEMU capabilities probed by one host's libvirtd, for the next (host.sh)
CAPS=$STATE/qemu-caps
BRIDGE=msbr0
NET=10.77.0
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { echo "testbed: $*" >&2; exit 1; }
host_dir() { echo "$HOSTS/$1"; }
host_sock() { echo "$HOSTS/$1/run/libvirt/libvirt-sock"; }
host_uri() { echo "qemu+unix:///system?socket=$(host_sock "$1")"; }
host_ip() { cat "$HOSTS/$1/index" 2>/dev/null | awk -v n="$NET" '{print n "." 10+$1}'; }
vsh() { local h=$1; shift; virsh -q -c "$(host_uri "$h")" "$@"; }
