#!/usr/bin/env bash
# Tiny test guests on a test bed host (see host.sh): TCG QEMU, direct kernel boot of the
# cached cloud kernel and busybox initramfs (install.sh), no disk, a virtio balloon, virtio-mem.
#
# usage:
#   guest.sh define HOST NAME [options]   write the domain XML, define it (and --start it)
#       --mem MiB          boot memory, split evenly over the NUMA nodes (default 512)
#       --vmem MiB         virtio-mem size, one device per NUMA node, 0 = none (default 1024)
#       --block MiB        virtio-mem block size (default 2)
#       --requested MiB    virtio-mem requested size at start, total (default 0)
#       --current MiB      <currentMemory> (balloon target at start; default --mem)
#       --max-mem MiB      <maxMemory> (default mem + vmem + 4096)
#       --dimm-slots N     <maxMemory slots> (default 4)
#       --numa N           NUMA nodes (default 1)
#       --vcpus N          vCPUs at start (default: --numa)
#       --max-vcpus N      maximum vCPUs (default: --vcpus)
#       --stats-period S   <memballoon><stats period=S> (default 2; 0 = no <stats>)
#       --no-balloon-driver   the guest does not load virtio_balloon (memscale.noballoon=1)
#       --no-balloon-device   <memballoon model='none'/>
#       --nova FLAVOR:MEM_MIB[:MAX_MB]  Nova metadata (with hw:mem_max_mb when MAX_MB given)
#       --nova-old FLAVOR  Nova metadata of an older Nova: the flavor name only
#       --nova-project P   the Nova project name (default demo)
#       --demand SCHEDULE  T:MIB[@RATE],... demand schedule (T = guest uptime in s, RATE MiB/s)
#       --cmdline ARGS     more kernel command line
#       --start            start it after defining
#   guest.sh xml HOST NAME [options]      print that XML, define nothing
#   guest.sh start HOST NAME              start a defined guest (console log truncated)
#   guest.sh demand HOST NAME MIB [RATE]  set the demand over the control port; prints the reply
#   guest.sh rmmod-balloon HOST NAME      unload virtio_balloon in the guest (its stats freeze)
#   guest.sh insmod-balloon HOST NAME     load it again
#   guest.sh ctl HOST NAME LINE           send any control line, print the reply
#   guest.sh stat HOST NAME               the last complete MSTAT line of the console
#   guest.sh wait-stat HOST NAME FIELD OP VALUE [TIMEOUT]  wait until the MSTAT FIELD OP VALUE
#                                         (OP: lt le gt ge eq ne); prints that line
#   guest.sh oom HOST NAME                exit 0 and print the line if the console shows an OOM
#                                         kill or a kernel panic (or MSTAT oom_kill > 0), else 1
#   guest.sh wait-boot HOST NAME [TIMEOUT]   wait for the first MSTAT line (default 90 s)
#   guest.sh console-path HOST NAME       the console log (ttyS0) as seen from the root namespace
#   guest.sh ctl-path HOST NAME           the control socket (ttyS1)
#   guest.sh migrate HOST NAME DSTHOST    live migration over TCP between test bed hosts
#   guest.sh destroy HOST NAME            destroy and undefine (quiet if it is not there)
# Console lines: MSTAT t=<uptime s> demand_mib=.. target_mib=.. memtotal_kib=.. memavail_kib=..
#                memfree_kib=.. oom_kill=..   (one line, once a second), MEVENT <text>.
set -euo pipefail
# shellcheck source=scripts/testbed/common.sh
. "$(dirname "$0")/common.sh"

usage() { sed -n '2,45p' "$0" | sed 's/^# \{0,1\}//'; }

num() { [[ $2 =~ ^[0-9]+$ ]] || die "$1 needs a whole number, not '$2'"; }

# A stable UUID from a text (Nova's ids are UUIDs; tests only need them to be stable).
uuid_of() {
  local h
  h=$(printf '%s' "$1" | md5sum | cut -c1-32)
  echo "${h:0:8}-${h:8:4}-${h:12:4}-${h:16:4}-${h:20:12}"
}

xml_escape() {
  local s=$1
  s=${s//&/&amp;}
  s=${s//</&lt;}
  s=${s//>/&gt;}
  s=${s//\"/&quot;}
  s=${s//\'/&apos;}
  printf '%s' "$s"
}

make_xml() {
  local host=$1 name=$2
  shift 2
  valid_host "$host"
  valid_guest "$name"
  local mem=512 vmem=1024 block=2 requested=0 current="" maxmem="" slots=4 numa=1
  local vcpus="" maxv="" period=2 nodriver=0 nodevice=0 nova="" novaold="" project=demo
  local demand="" extra=""
  while (($#)); do
    case $1 in
      --mem | --vmem | --block | --requested | --current | --max-mem | --dimm-slots | --slots | \
        --numa | --vcpus | --max-vcpus | --stats-period | --nova | --nova-old | --nova-project | \
        --demand | --cmdline)
        (($# >= 2)) || die "$1 needs a value"
        ;;
    esac
    case $1 in
      --mem) mem=$2 ;;
      --vmem) vmem=$2 ;;
      --block) block=$2 ;;
      --requested) requested=$2 ;;
      --current) current=$2 ;;
      --max-mem) maxmem=$2 ;;
      --dimm-slots | --slots) slots=$2 ;;
      --numa) numa=$2 ;;
      --vcpus) vcpus=$2 ;;
      --max-vcpus) maxv=$2 ;;
      --stats-period) period=$2 ;;
      --nova) nova=$2 ;;
      --nova-old) novaold=$2 ;;
      --nova-project) project=$2 ;;
      --demand) demand=$2 ;;
      --cmdline) extra=$2 ;;
      --no-balloon-driver) nodriver=1 ;;
      --no-balloon-device) nodevice=1 ;;
      --start) ;;
      *) die "unknown option $1 (see --help)" ;;
    esac
    case $1 in --no-balloon-driver | --no-balloon-device | --start) shift ;; *) shift 2 ;; esac
  done
  vcpus=${vcpus:-$numa}
  maxv=${maxv:-$vcpus}
  for v in mem vmem block requested slots numa vcpus maxv period; do num "--$v" "${!v}"; done
  current=${current:-$mem}
  num --current "$current"
  ((numa >= 1)) || die "--numa must be at least 1"
  ((mem % numa == 0)) || die "--mem $mem does not split evenly over $numa NUMA nodes"
  ((vcpus >= 1 && maxv >= vcpus)) || die "need 1 <= --vcpus <= --max-vcpus"
  ((maxv >= numa)) || die "each NUMA node needs a vCPU: --max-vcpus >= --numa"
  ((block >= 2)) || die "--block must be at least 2 MiB"
  local pervmem=0
  if ((vmem > 0)); then
    ((vmem % (numa * block) == 0)) || die "--vmem $vmem must split into $numa devices of whole $block MiB blocks"
    pervmem=$((vmem / numa))
    ((requested % (numa * block) == 0)) || die "--requested $requested must split into $numa devices of whole $block MiB blocks"
    ((requested <= vmem)) || die "--requested exceeds --vmem"
  fi
  maxmem=${maxmem:-$((mem + vmem + 4096))}
  num --max-mem "$maxmem"
  ((maxmem >= mem + vmem)) || die "--max-mem must be at least mem + vmem"
  [[ -s $TB_CACHE/vmlinuz && -s $TB_CACHE/initrd.gz ]] || die "no kernel/initrd in $TB_CACHE: run install.sh"
  [[ -z $demand || $demand =~ ^[0-9]+:[0-9]+(@[0-9]+)?(,[0-9]+:[0-9]+(@[0-9]+)?)*$ ]] ||
    die "--demand must look like T:MIB[@RATE],..."

  # NUMA cells: memory split evenly, vCPUs (all max-vcpus) in contiguous ranges
  local cells="" devs="" i c0 c1 per=$((maxv / numa)) left=$((maxv % numa)) next=0
  for ((i = 0; i < numa; i++)); do
    c0=$next
    c1=$((c0 + per - 1 + (i < left ? 1 : 0)))
    next=$((c1 + 1))
    local cpus=$c0
    ((c1 > c0)) && cpus="$c0-$c1"
    cells+="
      <cell id='$i' cpus='$cpus' memory='$((mem / numa))' unit='MiB'/>"
    if ((vmem > 0)); then
      devs+="
    <memory model='virtio-mem'>
      <target>
        <size unit='MiB'>$pervmem</size>
        <node>$i</node>
        <block unit='MiB'>$block</block>
        <requested unit='MiB'>$((requested / numa))</requested>
      </target>
    </memory>"
    fi
  done

  local cmd="console=ttyS0 quiet memhp_default_state=online_movable"
  ((nodriver)) && cmd+=" memscale.noballoon=1"
  [[ -n $demand ]] && cmd+=" memscale.demand=$demand"
  [[ -n $extra ]] && cmd+=" $extra"

  local balloon="<memballoon model='virtio'/>"
  ((period > 0)) && balloon="<memballoon model='virtio'>
      <stats period='$period'/>
    </memballoon>"
  ((nodevice)) && balloon="<memballoon model='none'/>"

  local vcpu="<vcpu placement='static'>$maxv</vcpu>"
  ((maxv > vcpus)) && vcpu="<vcpu placement='static' current='$vcpus'>$maxv</vcpu>"

  local meta="" ns='xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1"'
  local owner
  owner="<nova:owner><nova:user uuid=\"$(uuid_of user:demo)\">demo</nova:user><nova:project uuid=\"$(uuid_of "project:$project")\">$(xml_escape "$project")</nova:project></nova:owner>"
  if [[ -n $nova ]]; then
    local fl fm fx="" specs=""
    IFS=: read -r fl fm fx <<<"$nova"
    [[ -n $fl ]] || die "--nova FLAVOR:MEM_MIB[:MAX_MB]"
    num "--nova memory" "${fm:-}"
    if [[ -n $fx ]]; then
      num "--nova max" "$fx"
      specs="<nova:extraSpecs><nova:extraSpec name=\"hw:mem_max_mb\">$fx</nova:extraSpec></nova:extraSpecs>"
    fi
    meta="<metadata><nova:instance $ns><nova:name>$name</nova:name><nova:flavor name=\"$(xml_escape "$fl")\" id=\"$(uuid_of "flavor:$fl")\"><nova:memory>$fm</nova:memory><nova:disk>1</nova:disk><nova:swap>0</nova:swap><nova:ephemeral>0</nova:ephemeral><nova:vcpus>$vcpus</nova:vcpus>$specs</nova:flavor>$owner</nova:instance></metadata>"
  elif [[ -n $novaold ]]; then
    meta="<metadata><nova:instance $ns><nova:name>$name</nova:name><nova:flavor name=\"$(xml_escape "$novaold")\"/>$owner</nova:instance></metadata>"
  fi

  cat <<XML
<domain type='qemu'>
  <name>$name</name>
  ${meta}
  <maxMemory slots='$slots' unit='MiB'>$maxmem</maxMemory>
  <memory unit='MiB'>$((mem + vmem))</memory>
  <currentMemory unit='MiB'>$current</currentMemory>
  $vcpu
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$TB_CACHE/vmlinuz</kernel>
    <initrd>$TB_CACHE/initrd.gz</initrd>
    <cmdline>$(xml_escape "$cmd")</cmdline>
  </os>
  <cpu>
    <numa>$cells
    </numa>
  </cpu>
  <features>
    <acpi/>
    <apic/>
  </features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='/var/log/libvirt/qemu/$name.console.log'/>
      <target port='0'/>
    </serial>
    <serial type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/$name.ctl.sock'/>
      <target port='1'/>
    </serial>
    $balloon$devs
  </devices>
</domain>
XML
}

start_guest() { # HOST NAME
  local log
  log=$(guest_console "$1" "$2")
  mkdir -p "$(dirname "$log")"
  : >"$log"
  vsh "$1" start "$2" >/dev/null
}

# One line to the control port (ttyS1 via the unix socket QEMU listens on), print the reply.
ctl() { # HOST NAME LINE
  local s
  s=$(guest_ctl_sock "$1" "$2")
  [[ -S $s ]] || die "no control socket $s (is guest $2 running on host $1?)"
  python3 - "$s" "$3" <<'PY'
import socket, sys, time
path, line = sys.argv[1], sys.argv[2]
word = line.split()[0] if line.split() else ""
deadline = time.monotonic() + 20
# QEMU serves one client at a time; a line sent before the guest's control loop runs is
# lost, so send again every 3 s until a reply comes.
while time.monotonic() < deadline:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect(path)
        s.sendall(line.encode() + b"\n")
        buf = b""
        end = time.monotonic() + 3
        while time.monotonic() < end:
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for l in lines:
                l = l.strip(b"\r").decode(errors="replace")
                if l.startswith("MSTAT ") and word == "status":
                    print(l); sys.exit(0)
                if l.startswith(("ok ", "err ")):
                    print(l); sys.exit(0 if l.startswith("ok ") else 1)
        s.close()
    except OSError as e:
        time.sleep(0.5)
print("no reply from the guest's control port", file=sys.stderr)
sys.exit(2)
PY
}

MSTAT_RE='^MSTAT t=[0-9]+ demand_mib=[0-9]+ target_mib=[0-9]+ memtotal_kib=[0-9]+ memavail_kib=[0-9]+ memfree_kib=[0-9]+ oom_kill=[0-9]+$'
last_stat() { # HOST NAME
  local log
  log=$(guest_console "$1" "$2")
  [[ -f $log ]] || return 1
  tr -d '\r' <"$log" | grep -a -E "$MSTAT_RE" | tail -1 | grep .
}

field() { # LINE KEY
  local kv
  for kv in $1; do
    [[ $kv == "$2="* ]] && echo "${kv#*=}" && return 0
  done
  return 1
}

cmp_op() { # A OP B
  case $2 in
    lt) (($1 < $3)) ;;
    le) (($1 <= $3)) ;;
    gt) (($1 > $3)) ;;
    ge) (($1 >= $3)) ;;
    eq) (($1 == $3)) ;;
    ne) (($1 != $3)) ;;
  esac
}

two() { (($# >= 2)) || die "usage: guest.sh ${cmd:-} HOST NAME ..."; }

cmd=${1:-}
case $cmd in -h | --help | help | "")
  usage
  exit 0
  ;;
esac
shift
case $cmd in
  xml)
    two "$@"
    make_xml "$@"
    ;;
  define)
    two "$@"
    need_root
    host=$1 name=$2
    host_alive "$host" || die "host $host is not up"
    mkdir -p "$(host_dir "$host")/guests"
    f=$(host_dir "$host")/guests/$name.xml
    make_xml "$@" >"$f"
    vsh "$host" define "$f" >/dev/null
    if [[ " $* " == *" --start "* ]]; then start_guest "$host" "$name"; fi
    echo "$name"
    ;;
  start)
    two "$@"
    start_guest "$1" "$2"
    ;;
  demand)
    (($# == 3 || $# == 4)) || die "usage: guest.sh demand HOST NAME MIB [RATE]"
    num MIB "$3"
    num RATE "${4:-0}"
    ctl "$1" "$2" "demand $3 ${4:-0}"
    ;;
  rmmod-balloon | insmod-balloon | status)
    two "$@"
    ctl "$1" "$2" "$cmd"
    ;;
  ctl)
    (($# == 3)) || die "usage: guest.sh ctl HOST NAME LINE"
    ctl "$1" "$2" "$3"
    ;;
  stat)
    two "$@"
    last_stat "$1" "$2" || die "no MSTAT line from $2 on $1 yet"
    ;;
  wait-stat)
    (($# >= 5)) || die "usage: guest.sh wait-stat HOST NAME FIELD lt|le|gt|ge|eq|ne VALUE [TIMEOUT]"
    host=$1 name=$2 key=$3 op=$4 want=$5 timeout=${6:-60}
    case $op in lt | le | gt | ge | eq | ne) ;; *) die "OP must be lt le gt ge eq ne" ;; esac
    num VALUE "$want"
    end=$((SECONDS + timeout))
    line=""
    while ((SECONDS < end)); do
      if line=$(last_stat "$host" "$name") && v=$(field "$line" "$key") && cmp_op "$v" "$op" "$want"; then
        echo "$line"
        exit 0
      fi
      sleep 0.5
    done
    die "timeout after ${timeout}s waiting for $key $op $want on $name; last: ${line:-none}"
    ;;
  oom)
    two "$@"
    log=$(guest_console "$1" "$2")
    [[ -f $log ]] || exit 1
    if hit=$(tr -d '\r' <"$log" | grep -a -m1 -E 'Out of memory|oom-kill|Killed process|invoked oom-killer|Kernel panic'); then
      echo "$hit"
      exit 0
    fi
    if line=$(last_stat "$1" "$2") && (($(field "$line" oom_kill) > 0)); then
      echo "$line"
      exit 0
    fi
    exit 1
    ;;
  wait-boot)
    two "$@"
    host=$1 name=$2 timeout=${3:-90}
    num TIMEOUT "$timeout"
    end=$((SECONDS + timeout))
    next_check=$((SECONDS + 5))
    while ((SECONDS < end)); do
      last_stat "$host" "$name" >/dev/null && exit 0
      if ((SECONDS >= next_check)); then
        next_check=$((SECONDS + 5))
        state=$(vsh "$host" domstate "$name" 2>/dev/null || true)
        [[ $state == running* ]] || die "guest $name on $host is '${state:-unknown}', not running"
      fi
      sleep 0.2
    done
    tail -5 "$(guest_console "$host" "$name")" >&2 2>/dev/null || true
    die "guest $name on $host did not boot within ${timeout}s"
    ;;
  console-path | console)
    two "$@"
    guest_console "$1" "$2"
    ;;
  ctl-path)
    two "$@"
    guest_ctl_sock "$1" "$2"
    ;;
  migrate)
    (($# >= 3)) || die "usage: guest.sh migrate HOST NAME DSTHOST [virsh migrate options]"
    src=$1 name=$2 dst=$3
    shift 3
    host_alive "$dst" || die "host $dst is not up"
    vsh "$src" migrate --live --p2p --persistent --undefinesource "$@" "$name" \
      "$(host_tcp_uri "$dst")" --migrateuri "tcp://$(host_ip "$dst")"
    ;;
  destroy)
    two "$@"
    vsh "$1" destroy "$2" >/dev/null 2>&1 || true
    vsh "$1" undefine "$2" >/dev/null 2>&1 || true
    ! vsh "$1" domstate "$2" >/dev/null 2>&1 || die "guest $2 is still on $1"
    ;;
  *) die "unknown command $cmd (see --help)" ;;
esac
