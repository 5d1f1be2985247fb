"""The Lava backend: a program bundle as a Lava process graph, run in Lava's fixed-point simulation.

Runs only in the Lava environment (Python 3.10, lava-nc 0.10.0; `mmfree lava setup`), in a
subprocess of its own (`mmfree.loihi.backend`): importing lava changes multiprocessing globally,
and a failed Lava run must be killed with its workers. Imports numpy, lava and the numpy-only
modules of `mmfree.loihi`. Lava's model discovery executes every module of this package: keep
them free of side effects (and never name one `__main__`).
"""
