"""Every repo path the docs, docstrings and comments name exists: a reader following one never
lands on a file the repo does not have (README.md, docs/, csrc/README.md, and the sources)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = ("phide", "tests", "profiling", "docs", "csrc", "scripts", ".ci")
SOURCE_EXT = ("py", "md", "sh", "cpp", "cu", "h", "cuh", "toml")
# a path under a top-level folder (phide/ops/__init__.py, docs/measured.md, profiling/), or a bare
# source file name (kernels.md, bindings.cpp)
PATH = re.compile(r"(?<![\w./~$<>-])((?:%s)/[\w./-]*|[\w-]+\.(?:%s))(?![\w/-])" % ("|".join(map(re.escape, TOP)),
                                                                            "|".join(SOURCE_EXT)))
# where benchmarks write their rows (a CSV named there may not have been written yet)
OUTPUTS = "profiling/results/"


def _documents():
    yield from [ROOT / "README.md", ROOT / "csrc" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("phide", "profiling", "scripts", "csrc", "tests"):
        for ext in ("py", "cpp", "cu", "h", "sh"):
            yield from sorted((ROOT / folder).rglob(f"*.{ext}"))


def _exists(ref: str, where: Path) -> bool:
    ref = ref.rstrip(".")
    if "/" in ref:
        return (ROOT / ref).exists()
    # a bare file name: next to the document, or anywhere in the repo
    return (where.parent / ref).exists() or any(ROOT.glob(f"**/{ref}"))


def refs(line: str, doc: Path):
    """The repo paths `line` of `doc` names: not templates (`csrc/<op>.h`, `bench_*.py`), not a
    system include, not attribute access in code (`self.h`)."""
    if line.lstrip().startswith("#include <"):
        return
    for m in PATH.finditer(line):
        ref = m.group(1)
        if line[m.end():m.end() + 1] in ("<", "*", "{"):
            continue
        if "/" not in ref and doc.suffix == ".py" and ref.endswith((".h", ".py")):
            continue  # `attn.h`, `module.py`-like words in code; paths there carry their folder
        yield ref


def missing_paths():
    missing = []
    for doc in _documents():
        if "build" in doc.relative_to(ROOT).parts or doc.name == Path(__file__).name:
            continue
        for lineno, line in enumerate(doc.read_text(errors="replace").splitlines(), 1):
            for ref in refs(line, doc):
                if not (ref.startswith(OUTPUTS) or _exists(ref, doc)):
                    missing.append(f"{doc.relative_to(ROOT)}:{lineno}: {ref}")
    return missing


def test_every_named_repo_path_exists():
    assert missing_paths() == []


def test_the_check_sees_a_missing_file(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("see kernels.md 5.3 and docs/nowhere.md, but phide/engine.py is real; csrc/<op>.h is a template\n")
    found = [ref for line in doc.read_text().splitlines() for ref in refs(line, doc) if not _exists(ref, doc)]
    assert found == ["kernels.md", "docs/nowhere.md"]
