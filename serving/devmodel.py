"""``python -m serving.devmodel``: the random dev/bench model builder, kept at its documented path.

The builder moved to tools/devmodel.py with the other offline tools, which a checkout of the
repository has and the image does not; this shim finds it beside serving/ from any directory.
"""

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if (_REPO / "tools" / "devmodel.py").is_file() and str(_REPO) not in sys.path:
    sys.path.append(str(_REPO))

try:
    from tools.devmodel import *  # noqa: F403 - the old import path keeps its names
    from tools.devmodel import main
except ImportError:
    if __name__ != "__main__":
        raise
    sys.exit("serving.devmodel: the dev model builder is tools/devmodel.py in a checkout of the repository; "
             "the image ships serving/ and code/ only")

if __name__ == "__main__":
    sys.exit(main())
