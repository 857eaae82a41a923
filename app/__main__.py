import sys

from infergate.app.cli import main

sys.exit(main())
