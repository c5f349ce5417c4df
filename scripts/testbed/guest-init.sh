#!/bin/busybox sh
# shellcheck shell=dash disable=SC3045 # busybox ash: read -t
# /init of the memscale test guest (busybox only). It loads the virtio drivers, then holds a
# memory demand as files in a tmpfs (tmpfs pages cannot be reclaimed without swap, so they
# are real demand) and prints once a second on the console (ttyS0):
#   MSTAT t=<uptime s> demand_mib=<held> target_mib=<target> memtotal_kib=.. memavail_kib=..
#         memfree_kib=.. oom_kill=<from /proc/vmstat>          (all on one line)
# Demand comes from
#   * the kernel command line: memscale.demand=T:MIB[@RATE],...  (T = guest uptime in s,
#     RATE in MiB/s, default as fast as possible; entries in time order), and
#   * the control port ttyS1, one command a line, one reply line each:
#       demand MIB [RATE]   -> "ok demand MIB RATE"
#       rmmod-balloon       -> "ok rmmod-balloon" | "err rmmod-balloon ..."
#       insmod-balloon      -> "ok insmod-balloon" | "err insmod-balloon ..."
#       status              -> the current MSTAT line
#       ping                -> "ok pong"
# The latest of the two wins; later schedule entries still apply at their time.
# memscale.noballoon=1 on the command line: virtio_balloon is not loaded.
# The rate applies both ways (growing and shrinking); 0 means as fast as possible.

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /run
CMDLINE=$(cat /proc/cmdline)

noballoon=0
SCHED=""
for w in $CMDLINE; do
  case $w in
    memscale.noballoon=1) noballoon=1 ;;
    memscale.demand=*) SCHED=${w#memscale.demand=} ;;
  esac
done
SCHED_WORDS=$(echo "$SCHED" | tr ',' ' ')

while read -r m; do
  if [ "$m" = virtio_balloon ] && [ "$noballoon" = 1 ]; then
    echo "MEVENT virtio_balloon not loaded (memscale.noballoon=1)"
    continue
  fi
  insmod "/lib/modules/$m.ko" || echo "MEVENT insmod $m failed"
done </lib/modules/order

# Absolute size, far above RAM: demand can exceed memory and cause a real OOM.
mount -t tmpfs -o size=64g,mode=0755 tmpfs /hog

CH=16 # MiB per chunk file; file i holds min(CH, held - CH*i) MiB
echo "0 0" >/run/target
echo 0 >/run/held
echo 0 >/run/sched_next
mkfifo /run/tick

# Only the generator's dd and its ballast (below) are for the OOM killer to take: everything
# else runs at oom_score_adj -1000.
echo -1000 >/proc/self/oom_score_adj

# ---- status printer: builtins only (no fork), so it keeps going under memory pressure ----
printer() {
  exec 3<>/run/tick
  held=0 target=0
  while :; do
    read -r up _ </proc/uptime
    read -r h </run/held && [ -n "$h" ] && held=$h
    read -r tg _ </run/target && [ -n "$tg" ] && target=$tg
    mt=0 ma=0 mf=0 oom=0
    while read -r k v _; do
      case $k in
        MemTotal:) mt=$v ;;
        MemFree:) mf=$v ;;
        MemAvailable:)
          ma=$v
          break
          ;;
      esac
    done </proc/meminfo
    while read -r k v; do
      if [ "$k" = oom_kill ]; then
        oom=$v
        break
      fi
    done </proc/vmstat
    line="MSTAT t=${up%%.*} demand_mib=$held target_mib=$target memtotal_kib=$mt memavail_kib=$ma memfree_kib=$mf oom_kill=$oom"
    echo "$line" >/run/mstat
    echo "$line"
    read -r -t 1 _ <&3
  done
}

# ---- control port ------------------------------------------------------------------------
control() {
  [ -e /dev/ttyS1 ] || return 0
  stty -F /dev/ttyS1 raw -echo 2>/dev/null
  cr=$(printf '\r')
  exec 4<>/dev/ttyS1
  while :; do
    if ! read -r line <&4; then
      sleep 1
      continue
    fi
    line=${line%"$cr"}
    # shellcheck disable=SC2086 # split the command into words
    set -- $line
    case ${1:-} in
      demand)
        case "${2:-x} ${3:-0}" in
          *[!0-9\ ]* | *" "*" "*) echo "err demand: usage demand MIB [RATE] (whole numbers)" >&4 ;;
          *)
            echo "$2 ${3:-0}" >/run/target.new && mv /run/target.new /run/target
            echo "ok demand $2 ${3:-0}" >&4
            ;;
        esac
        ;;
      rmmod-balloon)
        if out=$(rmmod virtio_balloon 2>&1); then
          echo "ok rmmod-balloon" >&4
          echo "MEVENT virtio_balloon unloaded"
        else
          echo "err rmmod-balloon $out" >&4
        fi
        ;;
      insmod-balloon)
        if out=$(insmod /lib/modules/virtio_balloon.ko 2>&1); then
          echo "ok insmod-balloon" >&4
          echo "MEVENT virtio_balloon loaded"
        else
          echo "err insmod-balloon $out" >&4
        fi
        ;;
      status) cat /run/mstat >&4 ;;
      ping) echo "ok pong" >&4 ;;
      "") ;;
      *) echo "err unknown command $1" >&4 ;;
    esac
  done
}

# ---- demand generator ---------------------------------------------------------------------
# tmpfs pages are not freed when a process dies, so an OOM kill of the writer alone would
# leave the guest with nothing left to kill and the kernel would panic ("System is deadlocked
# on memory"). A ballast process (16 MiB of anonymous memory, oom_score_adj 1000, blocked
# writing into a pipe nobody reads) is what the OOM killer takes first; the generator sees
# oom_kill go up, gives back its last chunk (builtins only), waits 3 s, re-arms the ballast
# and tries again. So demand above memory means repeated real OOM kills, not a dead guest.
BALLAST=16

now_cs() { # now = uptime in centiseconds (no fork)
  read -r u _ </proc/uptime
  now=${u%.*}${u#*.}
  now=${now#"${now%%[!0]*}"}
  now=${now:-0}
}

read_oom() { # oomc = oom_kill of /proc/vmstat (no fork)
  oomc=0
  while read -r k v; do
    if [ "$k" = oom_kill ]; then
      oomc=$v
      break
    fi
  done </proc/vmstat
}

pause() { read -r -t "$1" _ <&6; } # sleep without a fork

publish() { echo "$held" >/run/held; }

recount() { # held = what the chunk files really hold; only the last file may be partial
  held=0
  i=0
  while [ -e "/hog/c$i" ]; do
    s=$(stat -c %s "/hog/c$i") || return 1
    m=$((s / 1048576))
    [ $((m * 1048576)) -ne "$s" ] && truncate -s $((m * 1048576)) "/hog/c$i"
    held=$((held + m))
    i=$((i + 1))
  done
  i=0
  rest=$held
  while [ -e "/hog/c$i" ]; do
    if [ "$rest" -le 0 ]; then
      rm -f "/hog/c$i"
    else
      [ "$rest" -lt "$CH" ] && truncate -s $((rest * 1048576)) "/hog/c$i"
      rest=$((rest - CH))
    fi
    i=$((i + 1))
  done
  publish
}

ballast_up() { # is the ballast process alive (not a zombie)?
  [ -n "$bpid" ] || return 1
  st=Z
  if [ -r "/proc/$bpid/stat" ]; then
    read -r _ _ st _ <"/proc/$bpid/stat"
  fi
  if [ "$st" = Z ]; then
    wait "$bpid" 2>/dev/null
    bpid=""
    return 1
  fi
  return 0
}

arm_ballast() {
  ballast_up && return 0
  (echo 1000 >/proc/self/oom_score_adj && exec dd if=/dev/zero of=/run/ballast bs=${BALLAST}M count=1 2>/dev/null) &
  bpid=$!
}

give_back() { # after an OOM kill: free at least one chunk's worth, with builtins only
  freed=0
  while [ "$freed" -lt "$CH" ] && [ "$held" -gt 0 ]; do
    i=$(((held - 1) / CH))
    base=$((i * CH))
    : >"/hog/c$i"
    freed=$((freed + held - base))
    held=$base
  done
  publish
}

grow() { # by $1 MiB, within one chunk file
  i=$((held / CH))
  off=$((held % CH))
  k=$((CH - off))
  [ "$k" -gt "$1" ] && k=$1
  if (echo 1000 >/proc/self/oom_score_adj && exec dd if=/dev/zero of="/hog/c$i" bs=1M seek="$off" count="$k" conv=notrunc 2>/dev/null); then
    held=$((held + k))
    publish
    return 0
  fi
  # killed (or failed): drop this chunk file's content, builtins only
  : >"/hog/c$i"
  held=$((i * CH))
  publish
  return 1
}

shrink() { # by $1 MiB, within one chunk file
  i=$(((held - 1) / CH))
  base=$((i * CH))
  new=$((held - $1))
  if [ "$new" -le "$base" ]; then
    rm -f "/hog/c$i"
    held=$base
  else
    truncate -s $(((new - base) * 1048576)) "/hog/c$i"
    held=$new
  fi
  publish
}

schedule() { # apply the command-line entries whose time has come
  [ -n "$SCHED" ] || return 0
  read -r nxt </run/sched_next
  now_s=$((now / 100))
  idx=0
  for e in $SCHED_WORDS; do
    if [ "$idx" -ge "$nxt" ]; then
      at=${e%%:*}
      rest=${e#*:}
      mib=${rest%@*}
      r=0
      case $rest in *@*) r=${rest#*@} ;; esac
      [ "$now_s" -ge "$at" ] || break
      echo "$mib $r" >/run/target.new && mv /run/target.new /run/target
      nxt=$((idx + 1))
      echo "$nxt" >/run/sched_next
    fi
    idx=$((idx + 1))
  done
}

generator() {
  [ -p /run/gen.fifo ] || mkfifo /run/gen.fifo
  [ -p /run/ballast ] || mkfifo /run/ballast
  exec 6<>/run/gen.fifo 5<>/run/ballast
  recount
  bpid=""
  arm_ballast
  read_oom
  seen_oom=$oomc
  hold_until=0 # no growing before this (centiseconds of uptime), after an OOM kill
  budget=0     # centi-MiB the rate allows to move now
  now_cs
  last=$now
  dir=0
  while :; do
    now_cs
    read_oom
    if [ "$oomc" -gt "$seen_oom" ]; then
      seen_oom=$oomc
      give_back
      echo "MEVENT oom_kill=$oomc: demand back to $held MiB, growing again in 3 s"
      hold_until=$((now + 300))
    fi
    if [ "$now" -ge "$hold_until" ] && ! ballast_up; then
      arm_ballast
      pause 0.5
      continue
    fi
    schedule
    read -r target rate </run/target
    if [ -z "$target" ]; then
      pause 0.2
      continue
    fi
    rate=${rate:-0}
    d=0
    if [ "$held" -lt "$target" ]; then
      d=1
      [ "$now" -lt "$hold_until" ] && d=0
    elif [ "$held" -gt "$target" ]; then
      d=-1
    fi
    if [ "$d" -ne "$dir" ]; then
      budget=0
      dir=$d
    fi
    if [ "$d" -eq 0 ]; then
      last=$now
      pause 0.2
      continue
    fi
    if [ "$rate" -gt 0 ]; then
      budget=$((budget + rate * (now - last)))
      [ "$budget" -gt $((rate * 100)) ] && budget=$((rate * 100))
      allow=$((budget / 100))
    else
      allow=$CH
    fi
    last=$now
    if [ "$allow" -le 0 ]; then
      pause 0.2
      continue
    fi
    before=$held
    if [ "$d" -gt 0 ]; then
      need=$((target - held))
      [ "$need" -gt "$allow" ] && need=$allow
      if ! grow "$need"; then
        read_oom
        echo "MEVENT demand write failed (oom_kill=$oomc): demand back to $held MiB, growing again in 3 s"
        seen_oom=$oomc
        hold_until=$((now + 300))
        budget=0
        continue
      fi
      moved=$((held - before))
    else
      need=$((held - target))
      [ "$need" -gt "$allow" ] && need=$allow
      shrink "$need"
      moved=$((before - held))
    fi
    [ "$rate" -gt 0 ] && budget=$((budget - moved * 100))
  done
}

printer &
control &
while :; do
  (generator)
  echo "MEVENT demand generator exited ($?), restarting"
  sleep 1
done
