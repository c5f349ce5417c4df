#!/usr/bin/env bash
# Test guests on a test bed host: tiny TCG guests booting the test bed kernel and initramfs.
#   guest.sh define HOST NAME [options]   write the XML, define, and with --start start it
#     --mem MiB (boot RAM, default 512)  --current MiB (balloon at start, the plain-libvirt floor)
#      --vmem MiB (virtio-mem size, 0 = none, default 1024)
#     --block MiB (default 2)  --numa N (default 1)  --vcpus N (default 1)  --slots N (default 4)
#     --stats-period S (default 2; 0 = no <stats>)  --no-balloon-driver  --no-balloon-device
#     --max-vcpus N (hot-pluggable up to N)  --threads N (per core, default 1)  --pin (vcpupin)
#     --acpi (needed for DIMM and vCPU hotplug)  --memhp STATE (default online_movable)
#     --nova FLAVOR:MEM_MIB[:MAX_MIB]  --nova-spec KEY=VALUE (repeatable)
#     --nova-old FLAVOR  --nova-project NAME  --nova-project-id ID (default p-1)
#     --nova-flavor-id ID (default a random UUID)
#     --demand SCHEDULE (T:MIB[@RATE],...)  --cmdline "extra args"  --start
#   guest.sh xml HOST NAME [options]      print the XML only
#   guest.sh demand HOST NAME MIB [RATE]  drive the demand generator over the control port
#   guest.sh rmmod-balloon HOST NAME      unload the balloon driver inside the guest
#   guest.sh liar HOST NAME               the guest claims all its free memory as used, forever
#   guest.sh run HOST NAME CMD...         a shell command in the guest, its output on one line
#   guest.sh balloon-actual HOST NAME PAGES|off  the guest writes a false balloon `actual` (its size
#                                         claim: RAM minus PAGES x 4 KiB), again every second
#   guest.sh online-kernel HOST NAME      memory plugged from now on goes to ZONE_NORMAL
#   guest.sh slab HOST NAME N             N inodes of unmovable slab (pins ZONE_NORMAL memory)
#   guest.sh cpus HOST NAME               the guest's online CPU list (e.g. 0-2)
#   guest.sh burn HOST NAME N             N busy loops in the guest (0 stops them)
#   guest.sh stat HOST NAME               the last MSTAT line of the console
#   guest.sh oom HOST NAME                exit 0 (and print it) if the console shows an OOM kill or panic
#   guest.sh wait-boot HOST NAME [SECS]   wait for the first MSTAT line
#   guest.sh console HOST NAME            path of the console log
#   guest.sh destroy HOST NAME
set -euo pipefail
. "$(dirname "$0")/common.sh"

console() { echo "$HOSTS/$1/log/qemu/$2.console.log"; }
ctl_sock() { echo "$HOSTS/$1/lib/qemu/$2.ctl.sock"; }

xml() {
  local host=$1 name=$2; shift 2
  local mem=512 cur="" vmem=1024 block=2 numa=1 vcpus=1 slots=4 period=2 noballoon=0 nodevice=0
  local nova="" novaold="" project="demo" demand="" extra="" maxv="" threads=1 pin=0 acpi=0
  local memhp=online_movable novaspecs="" projid=p-1 flavorid=""
  while (($#)); do
    case $1 in
      --mem) mem=$2; shift ;;
      --current) cur=$2; shift ;;
      --vmem) vmem=$2; shift ;;
      --block) block=$2; shift ;;
      --numa) numa=$2; shift ;;
      --vcpus) vcpus=$2; shift ;;
      --slots) slots=$2; shift ;;
      --max-vcpus) maxv=$2; shift ;;
      --threads) threads=$2; shift ;;
      --pin) pin=1 ;;
      --acpi) acpi=1 ;;
      --memhp) memhp=$2; shift ;;
      --nova-spec) novaspecs+="<nova:extraSpec name=\"${2%%=*}\">${2#*=}</nova:extraSpec>"; shift ;;
      --stats-period) period=$2; shift ;;
      --no-balloon-driver) noballoon=1 ;;
      --no-balloon-device) nodevice=1 ;;
      --nova) nova=$2; shift ;;
      --nova-old) novaold=$2; shift ;;
      --nova-project) project=$2; shift ;;
      --nova-project-id) projid=$2; shift ;;
      --nova-flavor-id) flavorid=$2; shift ;;
      --demand) demand=$2; shift ;;
      --cmdline) extra=$2; shift ;;
      --start) ;;
      *) die "unknown option $1" ;;
    esac
    shift
  done
  local total=$((mem + vmem)) maxmem=$((mem + vmem + 4096))
  local cells="" devs="" i cpu0 cpu1 top=${maxv:-$vcpus} per
  per=$((top / numa))
  ((per >= 1)) || die "--vcpus must be at least --numa"
  ((top % (numa * threads) == 0)) || die "vCPUs must split into whole cores per NUMA node"
  for ((i = 0; i < numa; i++)); do
    cpu0=$((i * per)); cpu1=$((cpu0 + per - 1))
    cells+="<cell id='$i' cpus='$cpu0-$cpu1' memory='$((mem / numa))' unit='MiB'/>"
    if ((vmem > 0)); then
      devs+="<memory model='virtio-mem'><target><size unit='MiB'>$((vmem / numa))</size><node>$i</node><block unit='MiB'>$block</block><requested unit='MiB'>0</requested></target></memory>"
    fi
  done
  local cmd="console=ttyS0 quiet memhp_default_state=$memhp panic=0 $extra"
  ((noballoon)) && cmd+=" memscale.noballoon=1"
  [[ -n $demand ]] && cmd+=" memscale.demand=$demand"
  local stats=""; ((period > 0)) && stats="<stats period='$period'/>"
  local balloon="<memballoon model='virtio'>$stats</memballoon>"
  ((nodevice)) && balloon="<memballoon model='none'/>"
  local meta=""
  if [[ -n $nova ]]; then
    IFS=: read -r fl fm fx <<<"$nova"
    local specs="$novaspecs"
    [[ -n ${fx:-} ]] && specs+="<nova:extraSpec name=\"hw:mem_max_mb\">$fx</nova:extraSpec><nova:extraSpec name=\"hw:numa_nodes\">$numa</nova:extraSpec>"
    [[ -n $specs ]] && specs="<nova:extraSpecs>$specs</nova:extraSpecs>"
    meta="<metadata><nova:instance xmlns:nova=\"http://openstack.org/xmlns/libvirt/nova/1.1\"><nova:package version=\"32.0.0\"/><nova:name>$name</nova:name><nova:flavor name=\"$fl\" id=\"${flavorid:-$(cat /proc/sys/kernel/random/uuid)}\"><nova:memory>$fm</nova:memory><nova:disk>1</nova:disk><nova:swap>0</nova:swap><nova:ephemeral>0</nova:ephemeral><nova:vcpus>$vcpus</nova:vcpus>$specs</nova:flavor><nova:owner><nova:user uuid=\"u-1\">demo</nova:user><nova:project uuid=\"$projid\">$project</nova:project></nova:owner></nova:instance></metadata>"
  elif [[ -n $novaold ]]; then
    meta="<metadata><nova:instance xmlns:nova=\"http://openstack.org/xmlns/libvirt/nova/1.1\"><nova:name>$name</nova:name><nova:flavor name=\"$novaold\"/><nova:owner><nova:user uuid=\"u-1\">demo</nova:user><nova:project uuid=\"p-1\">$project</nova:project></nova:owner></nova:instance></metadata>"
  fi
  local vcpu_el="<vcpu placement='static'>$vcpus</vcpu>" features="" cputune=""
  [[ -n $maxv ]] && vcpu_el="<vcpu placement='static' current='$vcpus'>$maxv</vcpu>"
  ((acpi)) && features="<features><acpi/></features>"
  ((pin)) && cputune="<cputune><vcpupin vcpu='0' cpuset='0'/></cputune>"
  cat <<XML
<domain type='qemu'>
  <name>$name</name>
  $meta
  <maxMemory slots='$slots' unit='MiB'>$maxmem</maxMemory>
  <memory unit='MiB'>$total</memory>
  <currentMemory unit='MiB'>${cur:-$mem}</currentMemory>
  $vcpu_el
  $features
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$CACHE/vmlinuz</kernel><initrd>$CACHE/initrd.gz</initrd>
    <cmdline>$cmd</cmdline></os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model><topology sockets='$numa' dies='1' cores='$((top / numa / threads))' threads='$threads'/><numa>$cells</numa></cpu>
  $cputune
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='/var/log/libvirt/qemu/$name.console.log'/><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='/var/lib/libvirt/qemu/$name.ctl.sock'/><target port='1'/></serial>
    <console type='file'><source path='/var/log/libvirt/qemu/$name.console.log'/><target type='serial' port='0'/></console>
    $balloon
    $devs
  </devices>
</domain>
XML
}

send() { # HOST NAME LINE: one command over the control port, print the reply line
  local s; s=$(ctl_sock "$1" "$2")
  [[ -S $s ]] || die "no control socket for $2 on $1"
  # QEMU drops the connection at our end-of-file, so keep writing side open until the reply.
  { printf '%s\n' "$3"; sleep 3; } | timeout 6 socat - "UNIX-CONNECT:$s" | head -1
}

case ${1:-} in
  xml) shift; xml "$@" ;;
  define)
    shift; host=$1 name=$2
    f=$HOSTS/$host/$name.xml
    xml "$@" > "$f"
    vsh "$host" define "$f" >/dev/null
    if [[ " $* " == *" --start "* ]]; then
      mkdir -p "$HOSTS/$host/log/qemu"; : > "$(console "$host" "$name")"
      vsh "$host" start "$name" >/dev/null
    fi
    echo "$name" ;;
  demand) send "$2" "$3" "demand $4 ${5:-0}" ;;
  rmmod-balloon) send "$2" "$3" "rmmod-balloon" ;;
  liar) send "$2" "$3" "liar" ;;
  balloon-actual) send "$2" "$3" "balloon-actual $4" ;;
  run) h=$2 n=$3; shift 3; send "$h" "$n" "run $*" ;;
  online-kernel) send "$2" "$3" "online-kernel" ;;
  slab) send "$2" "$3" "slab $4" ;;
  cpus) send "$2" "$3" "cpus" ;;
  burn) send "$2" "$3" "burn $4" ;;
  # Nothing yet (a guest just migrated in has a fresh console) prints an empty line.
  stat) { grep -a '^MSTAT' "$(console "$2" "$3")" 2>/dev/null || true; } | tail -1 ;;
  oom) grep -a -m1 -E 'Out of memory|oom-kill|Killed process|Kernel panic|invoked oom-killer' "$(console "$2" "$3")" ;;
  wait-boot)
    for _ in $(seq 1 $((${4:-60} * 5))); do
      grep -aq '^MSTAT' "$(console "$2" "$3")" 2>/dev/null && exit 0
      sleep 0.2
    done
    die "guest $3 on $2 did not boot" ;;
  console) console "$2" "$3" ;;
  destroy) vsh "$2" destroy "$3" >/dev/null 2>&1 || true; vsh "$2" undefine "$3" >/dev/null 2>&1 || true ;;
  -h|--help|"") sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command $1 (see --help)" ;;
esac
