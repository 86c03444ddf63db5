#!/bin/bash
# scenario-discovery-chap.sh - inside the VM: discovery CHAP against LIO (tgt cannot bind an account to
# discovery sessions, LIO can: configfs discovery_auth). Discovery without credentials is refused, with
# the wrong secret it fails with "authentication failed", and with discovery.sendtargets.auth.* from
# iscsid.conf it lists the target; the node credentials (node.session.auth.*) are not used for it.
# Credentials without an authmethod line (or with authmethod = None) still mean CHAP, one-way and
# mutual, as in open-iscsi.
# Run:  scripts/vm/run-in-vm.sh scripts/vm/scenario-discovery-chap.sh
# vm-apt: python3
set -u
. "$(dirname "${VM_SCRIPT:-$0}")/lib.sh"
BIN=${ISCSI_NBD:-$PWD/.build/debug/iscsi-nbd}
export ISCSI_NBD_CONFIG_DIR=/tmp/iscsi-conf-disco
IQN=iqn.2026-11.org.iscsi-nbd.vm:disco PORT=3262 DA=$LIO/iscsi/discovery_auth
mkdir -p "$ISCSI_NBD_CONFIG_DIR"
trap '[ -d $LIO/iscsi/$IQN ] && { echo 0 > $DA/enforce_discovery_auth; : > $DA/userid_mutual; : > $DA/password_mutual; lio_teardown $IQN $PORT; }' EXIT
conf() { printf '%s\n' "$@" > "$ISCSI_NBD_CONFIG_DIR/iscsid.conf"; }
disco() { "$BIN" -m discovery -t st -p 127.0.0.1:$PORT >"$VM_RESULTS/disco.out" 2>"$VM_RESULTS/disco.err"; }

step "LIO target" eval "truncate -s 64M /tmp/disco.img && lio_setup $IQN /tmp/disco.img $((64 << 20)) $PORT"
step "discovery CHAP enforced (configfs)" eval "printf %s disco-user > $DA/userid && printf %s disco-secret-12 > $DA/password && echo 1 > $DA/enforce_discovery_auth"
step "no credentials: refused" eval '! disco'
conf "discovery.sendtargets.auth.authmethod = CHAP" "discovery.sendtargets.auth.username = disco-user" \
     "discovery.sendtargets.auth.password = wrong-secret-99"
step "wrong discovery secret: authentication failed" eval '! disco && grep -qi "authentication failed" "$VM_RESULTS/disco.err" && ! grep -q wrong-secret-99 "$VM_RESULTS/disco.err"'
conf "node.session.auth.authmethod = CHAP" "node.session.auth.username = disco-user" \
     "node.session.auth.password = disco-secret-12"
step "node credentials are not used for discovery" eval '! disco'
conf "discovery.sendtargets.auth.authmethod = CHAP" "discovery.sendtargets.auth.username = disco-user" \
     "discovery.sendtargets.auth.password = disco-secret-12"
step "discovery credentials: target listed" eval 'disco && grep -q "127.0.0.1:$PORT,1 $IQN" "$VM_RESULTS/disco.out"'
# open-iscsi's rule: authmethod is ignored, credentials mean CHAP (the guide writes no authmethod line).
conf "discovery.sendtargets.auth.username = disco-user" "discovery.sendtargets.auth.password = disco-secret-12"
step "credentials without an authmethod line (the guide): target listed" eval 'disco && grep -q "127.0.0.1:$PORT,1 $IQN" "$VM_RESULTS/disco.out"'
conf "discovery.sendtargets.auth.authmethod = None" "discovery.sendtargets.auth.username = disco-user" \
     "discovery.sendtargets.auth.password = disco-secret-12"
step "authmethod = None with credentials: CHAP anyway, as open-iscsi" eval 'disco && grep -q "127.0.0.1:$PORT,1 $IQN" "$VM_RESULTS/disco.out"'
step "mutual discovery CHAP (configfs)" eval "printf %s disco-target > $DA/userid_mutual && printf %s disco-tsecret-34 > $DA/password_mutual"
conf "discovery.sendtargets.auth.username = disco-user" "discovery.sendtargets.auth.password = disco-secret-12" \
     "discovery.sendtargets.auth.username_in = disco-target" "discovery.sendtargets.auth.password_in = disco-tsecret-34"
step "mutual, no authmethod line: target listed" eval 'disco && grep -q "127.0.0.1:$PORT,1 $IQN" "$VM_RESULTS/disco.out"'
conf "discovery.sendtargets.auth.username = disco-user" "discovery.sendtargets.auth.password = disco-secret-12" \
     "discovery.sendtargets.auth.username_in = disco-target" "discovery.sendtargets.auth.password_in = not-the-target-1"
step "mutual with a wrong incoming secret: refused, secret not shown" eval '! disco && ! grep -q not-the-target-1 "$VM_RESULTS/disco.err"'
cat "$VM_RESULTS/disco.out"
log "OK"
