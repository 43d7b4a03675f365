#!/usr/bin/env bash
# Regenerates the module graph in docs/architecture.md from the sources (every `use` and
# inline crate::/super:: path, resolved to files; see tests/architecture.rs), and checks it:
# no import cycles, layers pointing down only, no source file over 600 lines.
set -euo pipefail
cd "$(dirname "$0")/.."
UPDATE_ARCHITECTURE=1 cargo test --quiet --test architecture
sed -n '/module-graph:begin/,/module-graph:end/p' docs/architecture.md
