import sys

from yolo.cli.train import main

sys.exit(main())
