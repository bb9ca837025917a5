#!/usr/bin/env bash
# Vendors the watch page's JavaScript libraries (`make web`): installs the exact versions
# of package-lock.json from the npm registry and copies their minified dist files, with
# their licences, into p2pgame/watch_static/vendor/.  The copies are committed: they ship
# inside the Python package, so neither `make test` nor the page needs npm or a network.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --ignore-scripts --no-audit --no-fund
vendor=../p2pgame/watch_static/vendor
rm -rf "$vendor"
mkdir -p "$vendor"
copy() {  # package, dist files...
    local pkg=$1; shift
    local version
    version=$(node -p "require('./node_modules/$pkg/package.json').version")
    for f in "$@"; do cp "node_modules/$pkg/dist/$f" "$vendor/$f"; done
    cp "node_modules/$pkg/LICENSE" "$vendor/LICENSE-$pkg"
    echo "$pkg $version" >> "$vendor/VERSIONS"
}
copy cytoscape cytoscape.min.js
copy uplot uPlot.iife.min.js uPlot.min.css
echo "vendored into $(cd "$vendor" && pwd):"
ls -l "$vendor"
