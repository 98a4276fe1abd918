import sys

if sys.argv[1:2] == ["gpu"]:  # the GPU rows need neither the CPU peers nor their image libraries
    from .gpu import main

    sys.exit(main(sys.argv[2:]))

from .cli import main

sys.exit(main())
