"""The kernels sit at the bottom of the house: phide's Triton kernels (triton_kernels/, installed
as phide.triton_kernels, outside import-linter's view of the phide folder) import nothing of
phide but their own package. The rest of the layering is import-linter's (`lint-imports`,
pyproject.toml), run by `make test`."""

import ast
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[1] / "triton_kernels"


def _phide_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return [n for n in names if n == "phide" or n.startswith("phide.")]


def test_kernels_import_only_their_own_package():
    files = sorted(KERNELS.glob("*.py"))
    assert len(files) >= 5  # the kernels and their shared formats
    for f in files:
        bad = [n for n in _phide_imports(f) if not n.startswith("phide.triton_kernels")]
        assert not bad, f"{f.name} imports {bad}: kernels sit below phide.ops"
