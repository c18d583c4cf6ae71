import sys

from nas_asc.fidelity import main

sys.exit(main())
