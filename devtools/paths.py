"""Where things are in the repository."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
