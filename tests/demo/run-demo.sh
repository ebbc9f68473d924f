#!/usr/bin/env bash
# The seed workflow on the bundled XAPI simulator: scan, register three VMs (one chosen id, two
# automatic), a vm_id conflict, set-vm-id, and a scan showing everything configured; then the
# registry file is lost and rebuilt from the copy in XAPI's database.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=${VGPU_ADMIN_BIN:-$repo/target/debug/vgpu-admin}
python=${PYTHON:-python3}
work=$(mktemp -d)  # honours TMPDIR
sim_pid=
cleanup() {
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

PYTHONPATH="$repo/tests" "$python" -m xapi_sim serve \
  --fixture "$repo/tests/xapi_sim/fixtures/sample_pool.json" --unix "$work/xapi.sock" \
  > "$work/sim.out" 2> "$work/sim.err" &
sim_pid=$!
for _ in $(seq 100); do
  grep -q '^LISTENING' "$work/sim.out" 2>/dev/null && break
  sleep 0.1
done
grep -q '^LISTENING' "$work/sim.out" || { echo "simulator did not start:"; cat "$work/sim.err"; exit 1; }

export VGPU_XAPI="unix:$work/xapi.sock" VGPU_DB="$work/vgpu_config.db" VGPU_CONFIG="$work/vgpu.conf"
export NO_COLOR=1

step() { printf '\n# %s\n' "$1"; }
run() {
  printf '$ vgpu-admin %s\n' "$*"
  "$bin" "$@"
}
expect_fail() {
  printf '$ vgpu-admin %s\n' "$*"
  local code=0
  "$bin" "$@" || code=$?
  if [ "$code" -eq 0 ]; then echo "(unexpected success)"; exit 1; fi
  echo "(exit status $code, as expected)"
}

echo "XAPI simulator: pool lab-pool, 2 hosts, 10 VMs ($VGPU_XAPI)"
step "1. What is in the pool, and what is registered?"
run scan-vms

step "2. Register cuda-dev with a chosen vm_id"
run register-vm --vm-uuid 48df46e9-31b9-4aea-b4b8-678e9a3c70d6 --vm-name cuda-dev --pool A --priority high --vm-id 1

step "3. Register two more with automatic ids (the lowest free id)"
run register-vm --vm-name render-01 --pool A --priority medium
run register-vm --vm-name legacy-stub --pool B --priority low

step "4. A vm_id that is already taken is refused, with the next free id"
expect_fail register-vm --vm-name ml-train-a --pool B --priority high --vm-id 1

step "5. Give render-01 a meaningful id"
run set-vm-id --vm-name render-01 --vm-id 100

step "6. Everything registered is configured"
run scan-vms
run list-pools
run show-vm --vm-name legacy-stub

step "7. Every change is also in XAPI's replicated database: lose the registry file, rebuild it"
printf '$ xe vm-param-get uuid=48df46e9-31b9-4aea-b4b8-678e9a3c70d6 param-name=other-config param-key=XenCenter.CustomFields.vgpu\n'
XE_SIM_URL="$VGPU_XAPI" "$python" "$repo/tests/xapi_sim/xe" vm-param-get uuid=48df46e9-31b9-4aea-b4b8-678e9a3c70d6 \
  param-name=other-config param-key=XenCenter.CustomFields.vgpu
printf '$ rm %s\n' "$VGPU_DB"
rm -f "$VGPU_DB" "$VGPU_DB-wal" "$VGPU_DB-shm"
run rebuild
run list-vms
run status

echo
echo "Demo finished: the registry was at $VGPU_DB (removed again)."
