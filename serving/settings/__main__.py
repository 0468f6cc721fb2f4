"""``python -m serving.settings``: the effective settings and their sources; with
``--markdown``, docs/configuration.md (``make docs``)."""

import sys

from serving.settings.doc import main

main(sys.argv[1:])
