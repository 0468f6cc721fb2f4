"""``python -m serving.convert``: the CTranslate2 conversion command, kept at its documented path.

The conversion itself lives in serving/models/convert.py (the server converts at start-up too);
this module only runs its command line.
"""

import sys

from serving.models.convert import main

if __name__ == "__main__":
    sys.exit(main())
