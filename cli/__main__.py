"""`python -m cli`: the `semipd` command (as `python -m cli.main`)."""

import sys

from cli.main import main

sys.exit(main())
