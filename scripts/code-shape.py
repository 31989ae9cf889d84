#!/usr/bin/env python3
"""The shape of the code: for each crate, its largest source file and its longest function.

Files are measured whole, in lines (as `wc -l` counts them); functions only outside a
`#[cfg(test)]` module, under crates/*/src.
A function runs from its `fn` line to its closing brace; braces inside strings, character
literals and comments are not counted.

Usage: scripts/code-shape.py [ROOT]   (default: the repository this script is in)
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
FN = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+(\w+)")


def code_only(text):
    """The text with strings, character literals and comments blanked (newlines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = '"' + hashes
            j = text.find(end, i + 2 + len(hashes))
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:i + 4])
            out.append(" " * len(m.group(0)))
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def block_end(lines, start):
    """The index of the line that closes the first brace opened at or after `start`."""
    depth, opened = 0, False
    for k in range(start, len(lines)):
        for ch in lines[k]:
            if ch == "{":
                depth, opened = depth + 1, True
            elif ch == "}":
                depth -= 1
                if opened and depth == 0:
                    return k
        if not opened and lines[k].rstrip().endswith(";"):
            return k  # a declaration without a body
    return len(lines) - 1


def shape(path):
    lines = code_only(path.read_text()).split("\n")
    skip = set()
    for k, line in enumerate(lines):
        if line.strip().startswith("#[cfg(test)]"):
            body = next((m for m in range(k + 1, len(lines)) if lines[m].strip()), None)
            if body is not None and re.match(r"\s*(pub\s+)?mod\s", lines[body]):
                skip.update(range(k, block_end(lines, body) + 1))
    counted = len(path.read_text().split("\n")) - 1
    functions = []
    for k, line in enumerate(lines):
        m = FN.match(line)
        if m and k not in skip:
            functions.append((block_end(lines, k) - k + 1, m.group(1)))
    return counted, functions


def main():
    print(f"{'crate':<16} {'largest file (lines)':<52} longest function (lines)")
    for crate in sorted((ROOT / "crates").iterdir()):
        src = crate / "src"
        if not src.is_dir():
            continue
        files, functions = [], []
        for path in sorted(src.rglob("*.rs")):
            counted, fns = shape(path)
            rel = path.relative_to(crate)
            files.append((counted, str(rel)))
            functions += [(length, f"{rel}:{name}") for length, name in fns]
        big = max(files)
        long = max(functions) if functions else (0, "-")
        print(f"{crate.name:<16} {big[1] + ' ' + str(big[0]):<52} {long[1]} {long[0]}")


if __name__ == "__main__":
    main()
