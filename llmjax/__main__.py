"""`python -m llmjax` runs the command line."""

import sys

from llmjax.cli import main

sys.exit(main())
