"""``python -m actimesh``: the ``actimesh`` command without its console script.

The drills start engines this way, with the interpreter they run under, so a child
always runs the same code as its parent, installed or not.
"""

import sys

from actimesh.cli import main

sys.exit(main())
