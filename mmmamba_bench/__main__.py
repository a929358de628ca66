"""``python -m mmmamba_bench ...``: the CLI, for launchers that start a module (``accelerate launch -m``)."""

from mmmamba_bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
