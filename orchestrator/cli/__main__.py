"""`python -m orchestrator.cli`: the same command as `cutover`."""
from orchestrator.cli import main

if __name__ == "__main__":
    main()
