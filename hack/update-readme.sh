#!/usr/bin/env bash
# Regenerates the sidecar's and the operator's option tables in README.md from the code (tests check they agree).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python - <<'PY'
from pathlib import Path

from streamgroup_operator.config import options_markdown as operator_options
from streamgroup_sidecar.config import options_markdown as sidecar_options

readme = Path("README.md")
text = readme.read_text()
for header, table in (("| Flag | Environment |", sidecar_options()), ("| Operator flag | Environment |", operator_options())):
    start = text.index(header)
    end = text.index("\n\n", start) + 1
    text = text[:start] + table + text[end:]
readme.write_text(text)
PY
