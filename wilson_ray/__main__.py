import sys

from wilson_ray.cli import main

sys.exit(main())
