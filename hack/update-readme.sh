#!/usr/bin/env bash
# Regenerates the sidecar's option table in README.md from the code (a test checks they agree).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python - <<'PY'
from pathlib import Path

from streamgroup_sidecar.config import options_markdown

readme = Path("README.md")
text = readme.read_text()
start = text.index("| Flag | Environment |")
end = text.index("\n\n", start) + 1
readme.write_text(text[:start] + options_markdown() + text[end:])
PY
