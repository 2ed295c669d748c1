import sys

from verl.pipeline.cli import main

sys.exit(main())
