import sys

from yolo.cli.test import main

sys.exit(main())
