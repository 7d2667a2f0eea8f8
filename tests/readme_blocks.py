"""The README's fenced code blocks, read the way the tests that run them need:
language tag, text, where the block starts and the section it sits in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

README = Path(__file__).resolve().parent.parent / "README.md"


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # of the opening fence, counted from 1
    section: str  # the nearest heading above the block

    @property
    def first_line(self) -> str:
        return self.text.strip().splitlines()[0].strip()


def readme_blocks() -> list[Block]:
    """Every fenced code block of README.md, in order."""
    tokens = MarkdownIt().parse(README.read_text(encoding="utf-8"))
    blocks, section = [], ""
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            section = tokens[i + 1].content
        elif token.type == "fence":
            assert token.map is not None
            blocks.append(Block(token.info.strip(), token.content, token.map[0] + 1, section))
    return blocks


def section_block(section: str, lang: str = "sh") -> Block:
    """The one ``lang`` block of the section headed ``section``."""
    [block] = [b for b in readme_blocks() if b.section == section and b.lang == lang]
    return block


def shell_commands(block: Block) -> list[str]:
    """The block's commands: continuation lines joined, comment-only lines dropped."""
    commands, pending = [], ""
    for raw in block.text.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line.strip() and not line.strip().startswith("#"):
            commands.append(line.strip())
    return commands
