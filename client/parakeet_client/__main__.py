import sys

from parakeet_client.cli import main

sys.exit(main())
