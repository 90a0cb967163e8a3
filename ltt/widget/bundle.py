"""The page's ES modules joined into one script, in memory: what anywidget, ``ltt serve`` and the
report load as ``graph.js``.

The view's source lives in ``static/page/*.js``, one role a file (:data:`MODULES`, in dependency
order); each imports what it uses from the earlier ones with a one-line ``import { ... } from
"./x.js";``. anywidget loads a widget's ``_esm`` as one module (a blob, where relative imports do
not resolve), so the modules are joined the way the report's inliner joins its modules: one after
the other, the local imports dropped, sharing one scope. There is no build step and no generated
file: :func:`script` joins them when first asked (the widget's ``_esm``, serve's
``/static/graph.js``, the report's inliner) and keeps the text. Only ``static/page/schema.js`` is
written from :mod:`ltt.widget.state` (``python -m ltt.widget.bundle``), so that the page's modules
import it as they stand; the join refuses a stale one.

>>> from ltt.widget.bundle import script
>>> "export function render(" in script()
True
"""

from __future__ import annotations

import functools
import pathlib
import re
import sys

from ltt.widget import state

__all__ = ["MODULES", "PAGE", "join", "script", "write"]

PAGE = pathlib.Path(__file__).parent / "static" / "page"
MODULES = ("schema", "layout", "state", "axes", "drawing", "interaction", "maps", "panels", "controls", "view")
_IMPORT = re.compile(r'^import \{([^}]*)\} from "\./([\w]+)\.js";[ \t]*\n', re.M)
_TOP = re.compile(r"^(?:export )?(?:async )?(?:function\*?|const|let|var|class) (\w+)", re.M)
HEADER = ("// The ltt graph view (anywidget's render({ model, el })) as one ES module, joined in memory by\n"
          "// ltt/widget/bundle.py from ltt/widget/static/page/*.js: the modules in dependency order, their\n"
          "// local imports dropped (they share one scope).\n")


def join() -> str:
    """The page's modules joined into one ES module, read afresh. A module importing one that is
    not joined before it, or anything not local, or two modules defining the same top-level name,
    is an error."""
    parts, seen, names = [], [], {}
    for name in MODULES:
        text = (PAGE / f"{name}.js").read_text(encoding="utf-8")
        if name == "schema" and text != state.js_module():
            raise RuntimeError("static/page/schema.js differs from ltt/widget/state.py: run python -m ltt.widget.bundle")
        for m in _IMPORT.finditer(text):
            if m.group(2) not in seen:
                raise RuntimeError(f"page/{name}.js imports {m.group(2)!r}, which is not joined before it")
        body = _IMPORT.sub("", text)
        if re.search(r"^\s*import[\s{]", body, re.M):
            raise RuntimeError(f"page/{name}.js has an import that cannot be joined")
        for top in _TOP.findall(body):
            if top in names:
                raise RuntimeError(f"page/{name}.js and page/{names[top]}.js both define {top!r}")
            names[top] = name
        parts.append(f"// --- page/{name}.js ---\n{body}")
        seen.append(name)
    return HEADER + "\n" + "\n".join(parts)


@functools.lru_cache(maxsize=1)
def script() -> str:
    """:func:`join`'s text, joined once per process (``script.cache_clear()`` re-reads the files)."""
    return join()


def write() -> None:
    """Rewrite ``static/page/schema.js`` from :mod:`ltt.widget.state`."""
    (PAGE / "schema.js").write_text(state.js_module(), encoding="utf-8")
    script.cache_clear()


if __name__ == "__main__":
    write()
    sys.stdout.write("wrote ltt/widget/static/page/schema.js\n")
