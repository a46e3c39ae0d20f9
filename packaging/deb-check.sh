#!/usr/bin/env bash
# Builds the .deb (cargo-deb) and checks it: the files and fields it should have, then, where
# this runs as root on a Debian-family system (a container is fine), installs it, makes an
# image with the installed binary on the embedded model from an unrelated folder, checks the
# systemd unit (systemd-analyze, when present) and removes it again.
#
#   packaging/deb-check.sh [--no-build] [--no-install]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=1 INSTALL=1
for a in "$@"; do
  case $a in
    --no-build) BUILD=0 ;;
    --no-install) INSTALL=0 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done
command -v cargo-deb >/dev/null || { echo "cargo install cargo-deb first" >&2; exit 2; }
if [ $BUILD = 1 ]; then
  cargo deb -p latent-studio --locked
else
  cargo deb -p latent-studio --no-build
fi
DEB=$(ls -t target/debian/latent-studio_*.deb | head -1)
echo "== $DEB ($(du -h "$DEB" | cut -f1))"
dpkg-deb -f "$DEB" Package Version Architecture Depends Section | sed 's/^/   /'
fail=0
contents=$(dpkg-deb -c "$DEB")
for f in ./usr/bin/latent-studio \
         ./usr/share/latent-studio/models/latent-studio-default.safetensors \
         ./usr/share/latent-studio/loras/outline.safetensors \
         ./usr/share/applications/latent-studio.desktop \
         ./usr/share/icons/hicolor/256x256/apps/latent-studio.png \
         ./usr/share/doc/latent-studio/copyright \
         ./usr/share/doc/latent-studio/clip-LICENSE \
         ./usr/lib/systemd/system/latent-studio.service \
         ./etc/default/latent-studio; do
  grep -q " $f\$" <<<"$contents" && echo "   has $f" || { echo "FAIL: no $f"; fail=1; }
done
dpkg-deb --ctrl-tarfile "$DEB" | tar -tf - | grep -q conffiles && echo "   /etc/default/latent-studio is a conffile" || { echo "FAIL: no conffiles"; fail=1; }

if [ $INSTALL = 1 ] && [ "$(id -u)" = 0 ] && command -v dpkg >/dev/null; then
  echo "== install"
  dpkg -i "$DEB" >/dev/null || apt-get install -f -y -q >/dev/null
  command -v systemd-analyze >/dev/null && systemd-analyze verify /usr/lib/systemd/system/latent-studio.service && echo "   systemd-analyze verify: ok"
  tmp=$(mktemp -d)
  (cd "$tmp" && /usr/bin/latent-studio generate --prompt "a red star on a black background" --steps 8 --seed 3 --out "$tmp/star.png") | sed 's/^/   /'
  [ -s "$tmp/star.png" ] && echo "   the installed binary found its model in /usr/share/latent-studio" || { echo "FAIL: no image"; fail=1; }
  rm -rf "$tmp"
  dpkg -r latent-studio >/dev/null
  [ -e /usr/bin/latent-studio ] && { echo "FAIL: still installed"; fail=1; } || echo "   removed (dpkg -r); /etc/default/latent-studio kept until purge: $([ -f /etc/default/latent-studio ] && echo yes || echo no)"
  dpkg -P latent-studio >/dev/null
fi
[ $fail = 0 ] && echo "OK"
exit $fail
