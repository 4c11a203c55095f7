"""`python -m specc` is the `specc` command."""
from specc.cli import main

if __name__ == "__main__":
    main()
