#!/bin/sh
# Builds the dom0 RPM from the gated artefacts in dist/ (`make dom0-bin`, `make wheel`; `make rpm`
# builds those first):
#
#     RPM_RELEASE=N packaging/build-rpm.sh [OUTDIR]
#
# writes OUTDIR/vgpu-registry-<workspace version>-<N>.x86_64.rpm (OUTDIR: dist/, RPM_RELEASE: 1) and
# prints its path last. VGPU_CONF names another vgpu.conf to ship than packaging/vgpu.conf (the
# tests build a release whose shipped file changed). Needs rpmbuild (Debian's `rpm` package),
# python3 and gzip.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
release=${RPM_RELEASE:-1}
out=${1:-$repo/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

case "$release" in
    ''|*[!0-9A-Za-z._+]*|[!0-9A-Za-z]*)
        echo "build-rpm: RPM_RELEASE \"$release\": letters, digits, '.', '_' and '+' only" >&2
        exit 2 ;;
esac

# The workspace version: `version` of [workspace.package] in the top Cargo.toml.
version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$repo/Cargo.toml")
[ -n "$version" ] || { echo "build-rpm: no version in [workspace.package] of Cargo.toml" >&2; exit 1; }

wheel=$repo/dist/vgpu_registry-$version-cp36-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
for f in "$repo/dist/vgpu-admin" "$wheel"; do
    [ -f "$f" ] || { echo "build-rpm: $f is missing: run make dom0-bin and make wheel (make rpm does)" >&2; exit 1; }
done

command -v rpmbuild >/dev/null || { echo "build-rpm: no rpmbuild: apt-get install rpm (make rpm does)" >&2; exit 1; }

top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
mkdir -p "$top/SOURCES"
# By name: a test run leaves __pycache__ and *.pyc in plugin/.
cp "$repo/dist/vgpu-admin" "$wheel" "$repo/plugin/vgpu" "$repo/plugin/vgpu_plugin.py" \
    "$repo/plugin/README.md" "$repo/LICENSE" "$repo/packaging/vgpu-registry-refresh.service" \
    "$repo/packaging/vgpu-registry-refresh.timer" "$top/SOURCES/"
cp "${VGPU_CONF:-$repo/packaging/vgpu.conf}" "$top/SOURCES/vgpu.conf"

rpmbuild -bb --quiet --target x86_64 \
    --define "_topdir $top" \
    --define "_sourcedir $top/SOURCES" \
    --define "_rpmdir $out" \
    --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    --define "vgpu_version $version" \
    --define "rpm_release $release" \
    "$repo/packaging/vgpu-registry.spec"

rpm=$out/vgpu-registry-$version-$release.x86_64.rpm
[ -f "$rpm" ] || { echo "build-rpm: rpmbuild did not write $rpm" >&2; exit 1; }
echo "$rpm"
