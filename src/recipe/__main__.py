"""``python -m recipe``: the command line lives in :mod:`recipe.cli.main`."""

from recipe.cli.main import main

if __name__ == "__main__":
    main()
