"""`python -m console` is `gridtui`."""

from console.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
