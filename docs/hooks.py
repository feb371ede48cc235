"""MkDocs hook of the attnzoo site: its navigation is generated with its pages.

``python -m attnzoo.docsite --out DIR`` writes the pages into ``DIR`` (the ``docs_dir`` of
``mkdocs.yml``) and their navigation into ``DIR/.nav.json`` (a dot file: MkDocs does not publish it);
this hook hands that navigation to MkDocs, whose strict validation then fails on a page missing from
the navigation and on a navigation entry without a page.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

NAV_FILE = ".nav.json"


def on_config(config: Any) -> Any:
    """Set ``config["nav"]`` from the generated navigation file; refuse to build without it."""
    path = Path(config["docs_dir"]) / NAV_FILE
    if not path.is_file():
        raise PluginError(
            f"{path} is missing: generate the pages first "
            f"(python -m attnzoo.docsite --out {config['docs_dir']})"
        )
    config["nav"] = json.loads(path.read_text())
    return config
