"""`python -m emgroup ...` (also what `torchrun -m emgroup train ...` runs)."""

from emgroup.cli.main import main

if __name__ == "__main__":
    main()
