import sys

from yolo.cli.detect import main

sys.exit(main())
