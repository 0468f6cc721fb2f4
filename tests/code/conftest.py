"""code/ runs outside the serving package (SageMaker training containers, AWS's toolkit): its
tests import it the way those do, with code/ itself on the path (where code/train.py's
``training`` package lives)."""

import sys

from tests.support import REPO

if str(REPO / "code") not in sys.path:
    sys.path.insert(0, str(REPO / "code"))
