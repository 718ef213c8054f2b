"""``python -m yolo <tool> ...``: the same dispatcher as the ``darknet-yolo`` console script."""
import sys

from .cli.main import main

sys.exit(main())
