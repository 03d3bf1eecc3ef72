"""Pretraining text that every machine with Python has: the interpreter's own documentation.

The offline mode (``jaxchat.data.offline``) pretrains on this when no ``--from_text=DIR`` is given
and FineWeb-Edu cannot be downloaded. It is built from the running interpreter only, never from the
network, and is the same on every run with the same Python installation:

- the Python Language Reference and the help topics behind ``help("if")``, ``help("FORMATTING")``…
  (``pydoc_data.topics``, one document per topic);
- the docstrings of every pure-Python standard-library module, read with ``ast`` (nothing is
  imported, so no module's import side effects run), one document per module: the module's
  docstring, then each documented class, function and method with its signature, in source order;
  test packages are left out;
- the docstrings of the compiled standard-library modules (``builtins``, ``math``, ``itertools``…),
  read from the imported module (only the standard library's own extension modules, minus test,
  GUI and terminal modules), one document per module.

A docstring that already appeared (inherited, or the same text in a C and a Python version) is
kept once. The documents are ordered by the CRC-32 of their names (a fixed shuffle), so the last
~10 % that ``from_text`` holds out for validation are a sample of the whole, not the end of the
alphabet. ``/usr/share/doc`` is not used: it is absent from many installations (minimal container
images strip it) and where present it is mostly changelogs, copyright files and HTML.

Also here: ``measure`` (size and English-prose statistics of a corpus) and ``repetition_warning``
(how many epochs a base run would make over its train shards; one line when it is many).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import sys
import sysconfig
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxchat.data.cache import read_corpus_marker

CORPUS_NAME = "python-docs"
MIN_DOC_CHARS = 200  # smaller modules (an empty __init__'s one-liner) are not worth a document
MAX_SIGNATURE_CHARS = 160
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "pydoc_data"})
# Extension modules never imported: test helpers, and modules whose import touches a terminal or a display.
SKIP_EXTENSIONS = ("_test", "xx", "_xx", "_ctypes_test", "readline", "_curses", "_tkinter", "_msi", "winreg",
                   "_winapi", "msvcrt", "_overlapped")
# The commonest English function words: their share of the words of a text says how much of it is prose.
FUNCTION_WORDS = frozenset(
    "the of and to a in is it that for as with be on this are by or an not from if at which can was will "
    "when you has have but its may all one should any used use than other also then so into".split()
)
WARN_EPOCHS = 10.0  # repetition_warning speaks above this many epochs


@dataclass(frozen=True)
class Document:
    name: str  # e.g. "help:FORMATTING", "module:json.decoder", "extension:math"
    text: str


# ---- the three sources ---------------------------------------------------------------------------


def language_reference() -> list[Document]:
    """The help topics of ``pydoc_data.topics`` (the Language Reference sections ``help()`` shows)."""
    try:
        from pydoc_data.topics import topics  # lazy: 460 KB of text, only the corpus needs it
    except ImportError:  # a stripped-down Python without pydoc_data
        return []
    return [Document(f"help:{name}", text.strip() + "\n") for name, text in sorted(topics.items()) if text.strip()]


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    text = ast.unparse(node.args)
    return text if len(text) <= MAX_SIGNATURE_CHARS else text[: MAX_SIGNATURE_CHARS - 4].rstrip() + ", ..."


def _class_header(node: ast.ClassDef) -> str:
    bases = ", ".join(ast.unparse(b) for b in node.bases)
    return f"class {node.name}({bases})" if bases else f"class {node.name}"


def _documented(body: Sequence[ast.stmt], prefix: str, seen: set[str]) -> list[str]:
    """Header + docstring of each documented class/function in ``body``, methods after their class."""
    parts: list[str] = []
    for node in body:
        if isinstance(node, ast.ClassDef):
            doc = ast.get_docstring(node)
            if doc and doc not in seen:
                seen.add(doc)
                parts.append(f"{_class_header(node)}\n{doc}")
            parts += _documented(node.body, f"{prefix}{node.name}.", seen)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and doc not in seen:
                seen.add(doc)
                parts.append(f"{prefix}{node.name}({_signature(node)})\n{doc}")
    return parts


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stdlib_python_files(stdlib: Path | None = None) -> list[Path]:
    """The standard library's ``.py`` files, test packages and site-packages left out, sorted."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]) and p.is_file())


def stdlib_docstrings(stdlib: Path | None = None, seen: set[str] | None = None) -> list[Document]:
    """One document per pure-Python standard-library module with enough docstrings (read with ``ast``)."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    seen = set() if seen is None else seen
    docs = []
    for path in stdlib_python_files(root):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences in old modules
                tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):  # e.g. lib2to3's Python 2 fixtures
            continue
        name = _module_name(path, root)
        parts = []
        module_doc = ast.get_docstring(tree)
        if module_doc and module_doc not in seen:
            seen.add(module_doc)
            parts.append(module_doc)
        parts += _documented(tree.body, "", seen)
        text = f"Module {name}\n\n" + "\n\n".join(parts) + "\n"
        if parts and len(text) >= MIN_DOC_CHARS:
            docs.append(Document(f"module:{name}", text))
    return docs


def extension_module_names(stdlib: Path | None = None) -> list[str]:
    """The standard library's compiled modules: built into the interpreter or in ``lib-dynload``."""
    root = Path(stdlib or sysconfig.get_paths()["platstdlib"])
    names = set(sys.builtin_module_names)
    dynload = root / "lib-dynload"
    if dynload.is_dir():
        names |= {p.name.split(".")[0] for p in dynload.iterdir() if p.suffix in (".so", ".pyd")}
    names.discard("__main__")
    return sorted(n for n in names if not n.startswith(SKIP_EXTENSIONS))


def _object_doc(obj: Any) -> str | None:
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def _text_signature(obj: Any) -> str:
    sig = getattr(obj, "__text_signature__", None)
    if isinstance(sig, str):
        return sig.replace("($module, ", "(").replace("($module)", "()").replace("($self, ", "(self, ")
    return "(...)"


def extension_docstrings(names: Iterable[str] | None = None, seen: set[str] | None = None) -> list[Document]:
    """One document per compiled standard-library module: its docstring, then its public classes and
    functions (with ``__text_signature__``) and the public methods of those classes."""
    seen = set() if seen is None else seen
    docs = []
    for name in (extension_module_names() if names is None else names):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecated modules warn on import
                module = importlib.import_module(name)
        except Exception:  # not built on this platform, or refuses to load: nothing to document
            continue
        parts = []
        doc = _object_doc(module)
        if doc and doc not in seen:
            seen.add(doc)
            parts.append(doc)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", name) not in (name, "builtins"):
                continue
            if inspect.isclass(obj):
                doc = _object_doc(obj)
                if doc and doc not in seen:
                    seen.add(doc)
                    parts.append(f"class {attr}\n{doc}")
                for meth_name, meth in sorted(vars(obj).items()):
                    doc = None if meth_name.startswith("_") or not callable(meth) else _object_doc(meth)
                    if doc and doc not in seen:
                        seen.add(doc)
                        parts.append(f"{attr}.{meth_name}{_text_signature(meth)}\n{doc}")
            elif inspect.isbuiltin(obj) or inspect.isroutine(obj):
                doc = _object_doc(obj)
                if doc and doc not in seen:
                    seen.add(doc)
                    parts.append(f"{attr}{_text_signature(obj)}\n{doc}")
        text = f"Module {name} (compiled)\n\n" + "\n\n".join(parts) + "\n"
        if parts and len(text) >= MIN_DOC_CHARS:
            docs.append(Document(f"extension:{name}", text))
    return docs


def python_docs(stdlib: Path | None = None) -> list[Document]:
    """The whole default corpus (see the module docstring), in its fixed shuffled order."""
    seen: set[str] = set()
    docs = language_reference() + stdlib_docstrings(stdlib, seen) + extension_docstrings(seen=seen)
    return sorted(docs, key=lambda d: (zlib.crc32(d.name.encode("utf-8")), d.name))


def describe_source() -> str:
    """Where the default corpus comes from, for messages and the manifest."""
    return (f"the documentation of Python {sys.version.split()[0]} ({sysconfig.get_paths()['stdlib']}): "
            "help topics, standard-library docstrings")


# ---- measurements --------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z]+")


def measure(texts: Iterable[str]) -> dict[str, Any]:
    """Size and prose statistics of a corpus: documents, characters, words, the share of the words
    that are common English function words (≈ 0.35–0.5 in English prose, ≈ 0.05–0.15 in code), the
    share of lines that look like code or doctest, the share of non-ASCII characters, and the 15
    commonest words."""
    n_docs = chars = non_ascii = lines = code_lines = 0
    words: Counter[str] = Counter()
    for text in texts:
        n_docs += 1
        chars += len(text)
        non_ascii += sum(1 for c in text if ord(c) > 127) if not text.isascii() else 0
        for line in text.splitlines():
            stripped = line.strip()
            if not stripped:
                continue
            lines += 1
            if stripped.startswith((">>>", "...", "def ", "class ", "import ", "return ", "#")) or \
                    stripped.endswith((":", ")", "]", "}", ",")) and not stripped.endswith(".)"):
                code_lines += 1
        words.update(w.lower() for w in _WORD.findall(text))
    total_words = sum(words.values())
    function_words = sum(count for word, count in words.items() if word in FUNCTION_WORDS)
    return {
        "documents": n_docs,
        "characters": chars,
        "words": total_words,
        "distinct_words": len(words),
        "function_word_share": round(function_words / total_words, 4) if total_words else 0.0,
        "code_like_line_share": round(code_lines / lines, 4) if lines else 0.0,
        "non_ascii_share": round(non_ascii / chars, 5) if chars else 0.0,
        "top_words": [w for w, _ in words.most_common(15)],
    }


# ---- how often a base run repeats its corpus -----------------------------------------------------


def train_characters(paths: Sequence[Path]) -> int:
    """Characters of text in FineWeb-format shards: exact from a ``from_text`` marker when the
    directory has one, else estimated from the parquet footers (uncompressed size of ``text``)."""
    paths = [Path(p) for p in paths]
    if not paths:
        return 0
    marker = read_corpus_marker(paths[0].parent)
    counts = {s["name"]: s["characters"] for s in (marker or {}).get("shards", [])
              if isinstance(s, dict) and "name" in s and "characters" in s}
    if all(p.name in counts for p in paths):
        return sum(int(counts[p.name]) for p in paths)
    import pyarrow.parquet as pq  # lazy: only the estimate needs it

    total = 0
    for path in paths:
        meta = pq.ParquetFile(path).metadata
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            for c in range(group.num_columns):
                column = group.column(c)
                if column.path_in_schema == "text":
                    # PLAIN byte arrays: 4 length bytes + the UTF-8 bytes per value (bytes ≥ characters).
                    total += max(0, column.total_uncompressed_size - 4 * group.num_rows)
    return total


def describe_shards(paths: Sequence[Path]) -> str:
    """Where the shards of ``paths`` come from, for the base stage's plan and report: the source and
    size recorded in their ``corpus.json``, or FineWeb-Edu (downloaded shards have none)."""
    paths = [Path(p) for p in paths]
    marker = read_corpus_marker(paths[0].parent) if paths else None
    if marker is None:
        return "FineWeb-Edu shards (downloaded)"
    size = f"{marker.get('documents', 0):,} documents, {marker.get('characters', 0):,} characters"
    return f"{marker.get('source', '?')} ({size} in all; made by `{marker['command']}`)"


def characters_per_token(paths: Sequence[Path], tokenizer: Any, sample_chars: int = 200_000) -> float:
    """Characters per token of ``tokenizer`` on the first ``sample_chars`` characters of ``paths``."""
    from jaxchat.data.shards import iter_texts  # lazy: reads parquet, only this estimate needs it

    texts = list(iter_texts(paths, max_chars=sample_chars))
    n_chars = sum(len(t) for t in texts)
    n_tokens = sum(len(ids) + 1 for ids in tokenizer.encode(texts)) if texts else 0  # +1: each <|bos|>
    return n_chars / n_tokens if n_tokens else 1.0


def repetition_warning(train_paths: Sequence[Path], tokens_needed: int, tokenizer: Any,
                       threshold: float = WARN_EPOCHS) -> str | None:
    """One line when a base run of ``tokens_needed`` tokens would read its train shards more than
    ``threshold`` times (the pretraining stream starts over after the last shard); None otherwise.

    Meant for the start of base training (after the tokenizer is loaded)."""
    chars = train_characters(train_paths)
    if chars <= 0:
        return None
    per_token = characters_per_token(train_paths, tokenizer)
    corpus_tokens = chars / per_token
    epochs = tokens_needed / corpus_tokens
    if epochs <= threshold:
        return None
    return (f"warning: the train shards hold about {corpus_tokens:,.0f} tokens ({chars:,} characters), so "
            f"{tokens_needed:,} tokens of base training repeat them about {epochs:,.0f} times; the model will "
            f"memorise them rather than learn. Give more text (python -m jaxchat.data.download --from_text=DIR) "
            f"or fewer steps (--base.num_iterations)")


def manifest_line(stats: dict[str, Any]) -> str:
    """``measure``'s numbers on one line, for logs."""
    return json.dumps({k: v for k, v in stats.items() if k != "top_words"})
