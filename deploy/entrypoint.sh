#!/bin/bash
# The image's entrypoint (deploy/Dockerfile): makes what a privileged Kubernetes container
# gets from the kernel usable by execbox, then execs `execbox "$@"` as the container's
# pid 1. deploy/README.md ("What the entrypoint does") says why each step is needed.
# Variables the operator sets in the pod are never overridden.
set -u

log() { echo "entrypoint: $*" >&2; }

# 1. cgroup v2: a subtree of this container's own cgroup for the sandboxes.
#
# A privileged container on cgroup v2 gets no cgroup namespace from containerd, so
# /sys/fs/cgroup is the host's whole tree; execbox's default prefix (execbox/<pid>) would
# put sandboxes outside the pod, uncounted by its limits, where pods on one machine (all
# with a small pid) would share and sweep each other's cgroups. Instead: move this
# container's processes into a leaf ("init"), enable memory, pids and cpu for the
# container's children (cgroup v2 allows that only in a cgroup without processes) and
# give execbox a prefix below the container's cgroup. With a cgroup namespace (0::/) the
# container's cgroup is /sys/fs/cgroup itself and the same applies. On cgroup v1 nothing
# is needed: the runtime mounts the container's own cgroups.
prepare_cgroup_v2() {
  local mnt=/sys/fs/cgroup rel cg ctrls try pid
  [ "$(stat -f -c %T "$mnt" 2>/dev/null)" = cgroup2fs ] || return 0
  [ -z "${EXECBOX_CGROUP_PREFIX:-}" ] || return 0
  rel=$(sed -n 's/^0:://p' /proc/self/cgroup)
  rel=${rel#/}
  cg=$mnt${rel:+/$rel}
  if [ ! -f "$cg/cgroup.controllers" ]; then
    log "warning: this container's cgroup ($cg) is not visible under $mnt"
    return 0
  fi
  ctrls=$(cat "$cg/cgroup.controllers")
  for c in memory pids cpu; do
    case " $ctrls " in
      *" $c "*) ;;
      *) log "warning: cgroup $cg lacks the $c controller; execbox will refuse to start"
         return 0 ;;
    esac
  done
  if ! mkdir -p "$cg/init" 2>/dev/null; then
    log "warning: $cg is not writable (is the container privileged?)"
    return 0
  fi
  # bash builtins only, so that no child process lands in $cg behind our back; the kernel
  # may answer EBUSY for a moment after the last process has left, hence the retries
  for try in 1 2 3 4 5 6 7 8 9 10; do
    while read -r pid; do
      echo "$pid" >"$cg/init/cgroup.procs" 2>/dev/null
    done <"$cg/cgroup.procs"
    if echo "+memory +pids +cpu" >"$cg/cgroup.subtree_control" 2>/dev/null; then
      export EXECBOX_CGROUP_PREFIX="${rel:+$rel/}execbox"
      log "sandbox cgroups below $cg/execbox"
      return 0
    fi
    sleep 0.1
  done
  log "warning: could not enable memory, pids and cpu below $cg; execbox doctor says more"
}

# 2. Loop devices for the session workspaces. A privileged container's /dev is a copy of
# the host's device nodes when it started: a loop device the kernel creates later (one per
# session workspace, allocated through /dev/loop-control) has no node here, and
# `mount -o loop` fails. Create the nodes up front (block major 7; the minor is shifted
# when the loop module has partitions enabled).
prepare_loop_devices() {
  local count=${LOOP_DEVICES:-256} max_part shift=0 i
  if [ ! -c /dev/loop-control ]; then
    log "warning: no /dev/loop-control: sessions will fail (load the loop module on the host)"
    return 0
  fi
  max_part=$(cat /sys/module/loop/parameters/max_part 2>/dev/null || echo 0)
  while [ $((max_part >> shift)) -gt 0 ]; do shift=$((shift + 1)); done
  for ((i = 0; i < count; i++)); do
    [ -e "/dev/loop$i" ] || mknod -m 0660 "/dev/loop$i" b 7 $((i << shift)) 2>/dev/null
  done
}

# 3. Outside uid ranges per pod. execbox derives its sandboxes' outside uids from its pid,
# which is the same small number in every container: pods on one machine would share
# uids. Derive them from the pod's name instead, far from the ranges a host install uses.
prepare_uid_ranges() {
  local h
  [ -n "${POD_NAME:-}" ] || return 0
  h=$(printf %s "$POD_NAME" | cksum | cut -d' ' -f1)
  h=$((h % 4096))
  # 4 zygotes x 4096 uids each; 100000 session uids (EXECBOX_SESSION_UID_COUNT's default)
  export EXECBOX_UID_BASE="${EXECBOX_UID_BASE:-$((100000000 + h * 16384))}"
  export EXECBOX_SESSION_UID_BASE="${EXECBOX_SESSION_UID_BASE:-$((200000000 + h * 100000))}"
}

main() {
  if [ "$(id -u)" = 0 ]; then
    prepare_cgroup_v2
    prepare_loop_devices
    prepare_uid_ranges
  else
    log "warning: not root; execbox will refuse to start (it needs root, deploy/README.md)"
  fi
  exec /opt/execbox/venv/bin/execbox "$@"
}

# sourced (by a test, say): define the functions only
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
