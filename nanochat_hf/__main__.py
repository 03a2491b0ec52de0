import sys

from nanochat_hf.cli import main

sys.exit(main())
