"""`python -m node --id n1 --data DIR --listen ... --switchboard ... --peers n1,n2,n3`."""
import sys

from node.server import main

sys.exit(main())
