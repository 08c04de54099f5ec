#!/usr/bin/env bash
# Builds Catch2 3.x into build/catch2-v3/prefix, for proving that the tests
# compile and pass with 3.x as well as with Debian 12's 2.x. The source comes
# from Debian's own archive (trixie ships 3.x), fetched with a private apt
# configuration under build/catch2-v3: the system's package lists and sources
# are never touched. Prints the prefix on its last line.
#   usage: bash .ci/catch2-v3.sh
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD/build/catch2-v3
prefix=$top/prefix
if [ -e "$prefix/include/catch2/catch_all.hpp" ]; then
  echo "$prefix"
  exit 0
fi
rm -rf "$top"
mkdir -p "$top"/{etc,lists/partial,cache/archives/partial,src}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || { echo "catch2-v3: $keyring is missing (apt-get install debian-archive-keyring)" >&2; exit 1; }
# The same Debian mirror the system already uses (its main archive, not the
# security one), with trixie's source packages instead of bookworm's.
mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' | awk '$2 !~ /-/ { print $1; exit }')
[ -n "$mirror" ] || { echo "catch2-v3: no Debian archive found in the system's apt sources" >&2; exit 1; }
echo "deb-src [signed-by=$keyring] $mirror trixie main" > "$top/etc/sources.list"
apt_private=(
  -o "Dir::Etc::SourceList=$top/etc/sources.list"
  -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$top/lists"
  -o "Dir::Cache=$top/cache"
  -o APT::Get::List-Cleanup=0
  -o APT::Sandbox::User=root
)
apt-get "${apt_private[@]}" -qq update >&2
(cd "$top/src" && apt-get "${apt_private[@]}" -qq source --download-only catch2 >&2)
orig=$(ls "$top"/src/catch2_3.*.orig.tar.* 2>/dev/null | head -n 1)
[ -n "$orig" ] || { echo "catch2-v3: Debian's archive offered no Catch2 3.x source" >&2; exit 1; }
tar -xf "$orig" -C "$top/src"
source_dir=$(find "$top/src" -maxdepth 1 -type d -name 'Catch2-3.*' | head -n 1)
cmake -S "$source_dir" -B "$top/cmake" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$prefix" \
  -DBUILD_TESTING=OFF -DCATCH_INSTALL_DOCS=OFF -DCATCH_INSTALL_EXTRAS=OFF >&2
cmake --build "$top/cmake" -j"$(nproc)" >&2
cmake --install "$top/cmake" >&2
echo "$prefix"
