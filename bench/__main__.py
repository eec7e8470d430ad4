"""`python -m bench [--quick]`."""

from bench.runner import main

# The guard matters: client and writer processes are started with "spawn",
# which re-imports this module as __mp_main__ in every child.
if __name__ == "__main__":
    main()
