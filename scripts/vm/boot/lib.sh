# lib.sh - checks for the boot test jobs (sourced).
fails=0
check() {  # check WHAT CMD... : run CMD quietly, print ok/FAIL
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi
}
checkv() {  # like check, but shows CMD's output
  local what=$1; shift
  if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi
}
section() { echo; echo "=== $* ==="; }
run() { echo "+ $*"; "$@"; }
finish() { section "result"; echo "$fails failed checks"; exit "$fails"; }
wait_for() {  # wait_for SECS CMD... : poll every 0.2 s
  local n=$(( $1 * 5 )); shift
  while ! "$@" >/dev/null 2>&1; do n=$((n - 1)); [ $n -gt 0 ] || return 1; sleep 0.2; done
}
resolves_to() { [ "$(readlink -f "$1")" = "$2" ]; }
nbd_of() { readlink -f "$1"; }
prop() { udevadm info --query=property --name="$1" | sed -n "s/^$2=//p"; }
device_unit() { systemd-escape -p --suffix=device "$1"; }
# The state every boot must reach: running, nothing failed.
boot_is_clean() {
  local state
  state=$(systemctl is-system-running)
  echo "is-system-running: $state"
  check "system state is running" test "$state" = running
  systemctl list-units --failed --no-pager --plain --no-legend
  check "no failed units" test -z "$(systemctl list-units --failed --plain --no-legend)"
}
