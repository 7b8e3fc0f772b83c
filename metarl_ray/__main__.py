import sys

from metarl_ray.cli import main

sys.exit(main())
