#!/bin/busybox sh
# /init of the test guest: load the virtio drivers, then hold a memory demand in a tmpfs
# (tmpfs pages cannot be reclaimed without swap, so they are real demand) and report once a
# second on the console. Demand comes from the kernel command line schedule
# memscale.demand=T:MIB[@RATE],... and from the control port ttyS1 ("demand MIB [RATE]",
# "rmmod-balloon", "status", "liar", "online-kernel", "slab N", "cpus", "burn N").
# New CPUs are brought online as a udev rule would (not with memscale.nocpuonline=1).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=16m tmpfs /run
CMDLINE=$(cat /proc/cmdline)
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci; do
  insmod /lib/modules/$m.ko 2>/dev/null
done
case " $CMDLINE " in
  *" memscale.noballoon=1 "*) echo "MEVENT balloon driver not loaded" ;;
  *) insmod /lib/modules/virtio_balloon.ko ;;
esac
insmod /lib/modules/virtio_mem.ko 2>/dev/null
mount -t tmpfs -o size=64g,mode=0755 tmpfs /hog
echo "0 0" > /run/demand
# The reporter and the control loop must outlive any OOM kill of the writers.
echo -1000 > /proc/self/oom_score_adj

SCHED=""
for w in $CMDLINE; do
  case $w in memscale.demand=*) SCHED=${w#memscale.demand=} ;; esac
done

control() {
  stty -F /dev/ttyS1 raw -echo 2>/dev/null
  while true; do
    while read -r cmd a b; do
      cmd=$(echo "$cmd" | tr -d '\r')
      case $cmd in
        demand) echo "$a ${b:-0}" > /run/demand.new && mv /run/demand.new /run/demand; echo "ok demand $a ${b:-0}" ;;
        rmmod-balloon) if rmmod virtio_balloon; then echo "ok rmmod-balloon"; echo "MEVENT balloon driver unloaded" > /dev/console; else echo "err rmmod-balloon"; fi ;;
        status) cat /run/mstat 2>/dev/null ;;
        cpus) echo "ok cpus $(cat /sys/devices/system/cpu/online)" ;;
        burn)
          # N busy loops: N vCPUs' worth of CPU demand (0 stops them).
          for p in $(cat /run/burn.pids 2>/dev/null); do kill "$p" 2>/dev/null; done
          : > /run/burn.pids
          i=0; while [ "$i" -lt "${a:-0}" ]; do ( while :; do :; done ) & echo $! >> /run/burn.pids; i=$((i + 1)); done
          echo "ok burn ${a:-0}" ;;
        online-kernel)
          # Memory plugged from now on is onlined to ZONE_NORMAL, where kernel allocations
          # (unmovable) may land: such memory cannot be unplugged once they have.
          if echo online_kernel > /sys/devices/system/memory/auto_online_blocks; then echo "ok online-kernel"; else echo "err online-kernel"; fi ;;
        slab)
          # N empty files: inodes and dentries are slab, unmovable, and go to the highest
          # zone first (ZONE_NORMAL: hot-plugged memory above 4 GiB onlined as kernel memory).
          mkdir -p /pin; mountpoint -q /pin || mount -t tmpfs -o size=1m,nr_inodes=0 tmpfs /pin
          ( i=0; while [ "$i" -lt "${a:-10000}" ]; do : > /pin/f$$.$i; i=$((i + 1)); done
            echo "MEVENT slab done $i" > /dev/console ) &
          echo "ok slab $a" ;;
        liar)
          # Claim every free page as used, forever: keep the hugepage pool as large as free
          # memory allows. The pages are reserved, never touched (boot with init_on_alloc=0),
          # so the host sees none of this "use" in the guest's RSS.
          ( while true; do
              f=$(awk '/^MemFree:/ {print $2}' /proc/meminfo)
              c=$(cat /proc/sys/vm/nr_hugepages)
              a=$(( f / 2048 - 24 ))
              [ "$a" -gt 0 ] && echo $((c + a)) > /proc/sys/vm/nr_hugepages
              sleep 1
            done ) &
          echo "ok liar" ;;
        balloon-actual)
          # A hostile kernel: write the balloon's `actual` (the pages the guest says it has
          # given back; the host reads the guest's size as RAM minus those) straight into the
          # device's config space, again every second so that the driver's own honest writes
          # are overwritten. /dev/mem cannot reach a BAR a driver holds, so this goes through
          # the virtio PCI configuration-access capability (VIRTIO_PCI_CAP_PCI_CFG): a window
          # in PCI config space through which the device performs the BAR write itself.
          # "balloon-actual off" stops.
          for p in $(cat /run/actual.pid 2>/dev/null); do kill "$p" 2>/dev/null; done
          rm -f /run/actual.pid
          if [ "$a" = off ]; then echo "ok balloon-actual off"; continue; fi
          rb() { od -An -tu1 -j "$1" -N 1 "$cfg" | tr -d ' '; }
          rd() { od -An -tu4 -j "$1" -N 4 "$cfg" | tr -d ' '; }
          le() { v=$1; n=$2; o=""; while [ "$n" -gt 0 ]; do o="$o\\$(printf %03o $((v & 255)))"; v=$((v >> 8)); n=$((n - 1)); done; printf "$o"; }
          wr() { le "$2" "$3" | dd of="$cfg" bs="$3" seek=$(($1 / $3)) count=1 conv=notrunc 2>/dev/null; }
          # Found and written in the background: the reply must come within the control
          # port's few seconds, and a walk of the capability list takes longer under TCG.
          ( cfg=""; devbar=""; devoff=""; win=""
            for d in /sys/bus/pci/devices/*; do
              [ "$(cat "$d/vendor")" = 0x1af4 ] || continue
              case $(cat "$d/device") in 0x1002|0x1045) cfg=$d/config ;; esac
            done
            p=$([ -n "$cfg" ] && rb 52); guard=0
            while [ -n "$p" ] && [ "$p" -ne 0 ] && [ "$guard" -lt 48 ]; do
              if [ "$(rb "$p")" -eq 9 ]; then
                case $(rb $((p + 3))) in
                  4) devbar=$(rb $((p + 4))); devoff=$(rd $((p + 8))) ;;
                  5) win=$p ;;
                esac
              fi
              p=$(rb $((p + 1))); guard=$((guard + 1))
            done
            if [ -z "$devbar" ] || [ -z "$win" ]; then
              echo "MEVENT balloon-actual: no virtio config window" > /dev/console; exit 1
            fi
            echo "MEVENT balloon-actual $a: bar $devbar offset $((devoff + 4))" > /dev/console
            # `actual` is the second 32-bit field of the balloon's device config.
            while true; do
              wr $((win + 4)) "$devbar" 1
              wr $((win + 8)) $((devoff + 4)) 4
              wr $((win + 12)) 4 4
              wr $((win + 16)) "$a" 4
              sleep 1
            done ) &
          echo $! > /run/actual.pid
          echo "ok balloon-actual $a" ;;
        run)
          # A shell command, its output on one line: for looking around a guest by hand.
          echo "ok run $(eval "$a $b" 2>&1 | tr '\n' ' ')" ;;
        "") ;;
        *) echo "err unknown $cmd" ;;
      esac
    done < /dev/ttyS1 > /dev/ttyS1
    sleep 1
  done
}
[ -e /dev/ttyS1 ] && control &

CPUONLINE=1
seen=""
case " $CMDLINE " in *" memscale.nocpuonline=1 "*) CPUONLINE=0 ;; esac

CHUNK=4
n=0            # chunks held
applied=""     # schedule entries already applied
budget=0       # MiB the rate allows to add now
# The loop runs no program but `sleep` (and dd/rm when the demand moves): under emulation each
# fork and exec costs the host milliseconds, and a guest spawning 25 a second used a sixth of
# a host core while idle, which a suite running a dozen guests on two cores could not spare.
# cs: centiseconds since boot, into CS (read /proc/uptime "123.45 ...", drop the dot; the
# leading digit is never 0 past the first second, so the shell never reads it as octal).
cs() { read -r CS _ < /proc/uptime; CS=${CS%.*}${CS#*.}; }
cs; start=$CS
last=$start
lastprint=0
OIFS=$IFS
while true; do
  cs; now=$CS
  t=$(( (now - start) / 100 ))
  # schedule: apply each entry once when its time has come
  i=0
  IFS=,
  for e in $SCHED; do
    IFS=$OIFS
    i=$((i + 1))
    at=${e%%:*}; rest=${e#*:}; mib=${rest%@*}; rate=0
    case $rest in *@*) rate=${rest#*@} ;; esac
    case " $applied " in *" $i "*) continue ;; esac
    if [ "$t" -ge "$at" ]; then echo "$mib $rate" > /run/demand; applied="$applied $i"; fi
  done
  IFS=$OIFS
  read target rate < /run/demand
  held=$((n * CHUNK))
  # The rate is kept over wall time, however long each write takes under emulation.
  if [ "$rate" -gt 0 ]; then
    budget=$((budget + rate * (now - last) / 100))
    [ "$budget" -gt $((rate * 2)) ] && budget=$((rate * 2))
  else
    budget=1000000
  fi
  last=$now
  if [ "$held" -lt "$target" ]; then
    while [ "$held" -lt "$target" ] && [ "$budget" -ge "$CHUNK" -o "$rate" -eq 0 ]; do
      if dd if=/dev/zero of=/hog/c$n bs=1M count=$CHUNK 2>/dev/null; then
        n=$((n + 1)); held=$((n * CHUNK)); budget=$((budget - CHUNK))
      else
        rm -f /hog/c$n; break
      fi
    done
  elif [ "$held" -gt "$target" ]; then
    budget=0
    k=$(( (held - target) / CHUNK ))
    while [ "$k" -gt 0 ] && [ "$n" -gt 0 ]; do n=$((n - 1)); rm -f /hog/c$n; k=$((k - 1)); done
  else
    budget=0
  fi
  if [ $((now - lastprint)) -ge 100 ]; then
    lastprint=$now
    # Like a udev rule on "add": a CPU that appeared since the last look is brought online
    # once (never one the kernel took offline itself, as it does before an eject).
    present=""
    for c in /sys/devices/system/cpu/cpu[0-9]*/online; do
      [ -e "$c" ] || continue
      present="$present ${c%/online}"
      case " $seen " in *" ${c%/online} "*) continue ;; esac
      read -r v < "$c"
      [ -n "$seen" ] && [ "$CPUONLINE" = 1 ] && [ "$v" = 0 ] && echo 1 > "$c" 2>/dev/null && echo "MEVENT onlined ${c%/online}"
    done
    seen="$present "
    # Online CPUs (as /proc/cpuinfo lists them): those without an online switch, and those
    # whose switch says 1.
    cpus=0
    for c in /sys/devices/system/cpu/cpu[0-9]*; do
      v=1
      [ -e "$c/online" ] && read -r v < "$c/online"
      [ "$v" = 1 ] && cpus=$((cpus + 1))
    done
    while read -r k v _; do
      case $k in MemTotal:) mt=$v ;; MemAvailable:) ma=$v ;; MemFree:) mf=$v ;; esac
    done < /proc/meminfo
    oom=0
    while read -r k v; do
      [ "$k" = oom_kill ] && oom=$v && break
    done < /proc/vmstat
    line="MSTAT t=$t demand_mib=$((n * CHUNK)) target_mib=$target memtotal_kib=$mt memavail_kib=$ma memfree_kib=$mf oom_kill=${oom:-0} cpus=$cpus"
    echo "$line" > /run/mstat
    echo "$line"
  fi
  sleep 0.25
done
