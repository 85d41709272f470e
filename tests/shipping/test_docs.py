"""What the docs tell people to type, and what they say the code exports, agree with the code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.shipping.test_chart import CHART, helm

REPO = Path(__file__).resolve().parents[2]
PROSE = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "tests" / "README.md",
         CHART / "templates" / "NOTES.txt", CHART / "values.yaml"]

# `--set` and the shell word after it, as written (quotes included); a backtick ends inline code.
HELM_SET = re.compile(r"--set(?:\s+|=)((?:'[^']*'|\"[^\"]*\"|[^\s`'\"])+)")


def documented_sets() -> list[tuple[str, str]]:
    """(file, word) for every `--set WORD` in the docs."""
    return [(path.relative_to(REPO).as_posix(), word)
            for path in PROSE for word in HELM_SET.findall(path.read_text())]


def shell_words(word: str) -> list[str]:
    """The arguments bash makes of ``word`` (brace expansion, quote removal): what helm would receive."""
    result = subprocess.run(["bash", "-c", f"printf '%s\\0' {word}"], capture_output=True, text=True,
                            timeout=10, check=True)
    return result.stdout.split("\0")[:-1]


class TestHelmCommandsInTheDocs:
    def test_every_documented_set_reaches_helm_as_one_argument(self) -> None:
        sets = documented_sets()
        assert any("watchNamespaces" in word for _, word in sets), "the namespaced install is documented"
        split = {f"{where}: --set {word}": shell_words(word) for where, word in sets if len(shell_words(word)) != 1}
        assert not split, f"the shell splits these (quote them): {split}"

    def test_the_chart_renders_with_every_documented_set_as_the_shell_passes_it(self) -> None:
        args = [arg for _, word in documented_sets() for arg in ("--set", *shell_words(word))]
        rendered = helm("template", "sg", str(CHART), "--namespace", "streamgroup-system", *args).stdout
        for namespace in ("team-a", "team-b"):
            assert re.search(rf"kind: Role\n(?:.*\n)*?  namespace: {namespace}\n", rendered), namespace
