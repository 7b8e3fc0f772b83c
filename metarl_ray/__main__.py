import sys

from metarl_ray.cli.main import main

sys.exit(main())
